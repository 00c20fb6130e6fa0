"""`imagine-bot generate`: one request through the same engine the bot uses, no Discord."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.flags import FLAGS, flag_for, parse_inline_flags
from bot.settings import Settings
from inference.errors import InvalidRequestError
from inference.generator import DiffusersGenerator
from inference.requests import RequestOptions, resolve_request
from inference.tokens import count_prompt_tokens
from inference.types import Progress


def options_from_args(args: argparse.Namespace, default_model: str) -> RequestOptions:
    """The command line's options plus the prompt's inline flags (`"a fox --ar 16:9"`), as
    /imagine reads them; the same option given both ways is an error naming both. Every inline
    flag (bot/flags.py) has a command-line option too."""
    given = {flag.option: getattr(args, flag.option) for flag in FLAGS}
    text, inline = parse_inline_flags(args.prompt)
    for field in inline:
        if given.get(field) is not None:
            raise InvalidRequestError(
                field,
                f"given both as a command-line option and as the inline flag {flag_for(field)};"
                " keep one",
            )
    merged = {k: v for k, v in given.items() if v is not None} | inline
    merged.setdefault("model", default_model)
    return RequestOptions(prompt=text, **merged)


def output_paths(out: Path, count: int) -> list[Path]:
    """One image: `out`. Several: out-0.png … plus the grid at `out`."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def generate_to_files(args: argparse.Namespace, settings: Settings) -> list[Path]:
    from tqdm import tqdm

    generator = DiffusersGenerator(settings.model_specs(), settings.runtime)
    options = options_from_args(args, settings.default_model)
    info = generator.model_info(options.model or settings.default_model)
    request = resolve_request(options, info, settings.limits, count_tokens=count_prompt_tokens)

    generator.load(request.model)  # before the bar, so the bar times only the steps
    bar = tqdm(total=request.steps, unit="step", disable=args.no_progress, desc="generating")

    def on_progress(_index: int, progress: Progress) -> None:
        bar.total = progress.total
        bar.n = progress.step
        bar.refresh()

    try:
        [result] = generator.generate([request], on_progress)
    finally:
        bar.close()
    assert result is not None  # nothing can cancel a CLI run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for path, image in zip(output_paths(args.out, request.count), result.images, strict=True):
        path.write_bytes(image.png)
        written.append(path)
    if result.grid_png is not None:
        args.out.write_bytes(result.grid_png)
        written.append(args.out)
    return written
