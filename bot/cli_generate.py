"""`imagine-bot generate`: one request through the same engine the bot uses, no Discord.

With `--image`, the picture is the starting point (image-to-image at `--strength`): it is read
as /imagine reads an attachment (PNG, JPEG or WebP, within [limits] and
images.max_attachment_bytes) and kept as a normalised PNG while the job runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.flags import FLAGS, flag_for, parse_inline_flags
from bot.settings import Settings
from inference.errors import InvalidRequestError
from inference.generator import DiffusersGenerator
from inference.image_input import load_input_image
from inference.requests import RequestOptions, resolve_request
from inference.types import GenerationRequest, ImageOperation, ImageSource, Progress


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


def read_input_file(path: Path) -> bytes:
    """The bytes of a picture named on the command line; a missing file is a one-line error."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidRequestError("image", f"cannot read {path}: {error.strerror}") from error


@contextmanager
def saved_source(
    data: bytes,
    settings: Settings,
    *,
    operation: ImageOperation,
    strength: float,
    scale: float = 1.0,
    upscaler: str | None = None,
) -> Iterator[ImageSource]:
    """The picture checked and normalised as the bot does an attachment, saved as a PNG in a
    temporary folder for as long as the block runs (the job reads it from there)."""
    limits = settings.limits
    picture = load_input_image(
        data,
        max_bytes=settings.images.max_attachment_bytes,
        max_pixels=limits.max_pixels,
        max_side=limits.max_side,
    )
    with tempfile.TemporaryDirectory(prefix="imagine-bot-") as folder:
        path = Path(folder) / "source.png"
        picture.image.save(path, format="PNG")
        yield ImageSource(
            str(path),
            picture.width,
            picture.height,
            operation=operation,
            strength=strength,
            scale=scale,
            upscaler=upscaler,
        )


def make_generator(settings: Settings) -> DiffusersGenerator:
    return DiffusersGenerator(
        settings.model_specs(),
        settings.runtime,
        settings.upscaler_specs(),
        loras=settings.lora_specs(),
        embeddings=settings.embedding_specs(),
    )


def generate_to_files(args: argparse.Namespace, settings: Settings) -> list[Path]:
    generator = make_generator(settings)
    options = options_from_args(args, settings.default_model)
    image: Path | None = getattr(args, "image", None)
    strength: float | None = getattr(args, "strength", None)
    if image is None:
        if strength is not None:
            raise InvalidRequestError("strength", "needs --image (the picture to start from)")
        return run_request(generator, options, settings, args.out, no_progress=args.no_progress)
    data = read_input_file(image)
    with saved_source(
        data,
        settings,
        operation="img2img",
        strength=settings.images.image_strength if strength is None else strength,
    ) as source:
        return run_request(
            generator,
            dataclasses.replace(options, source=source),
            settings,
            args.out,
            no_progress=args.no_progress,
        )


def run_request(
    generator: DiffusersGenerator,
    options: RequestOptions,
    settings: Settings,
    out: Path,
    *,
    no_progress: bool,
) -> list[Path]:
    """Resolve as the bot does (limits, styles, LoRAs), run with a progress bar, and write
    the images to `out`."""
    info = generator.model_info(options.model or settings.default_model)
    request = resolve_request(
        options,
        info,
        settings.limits,
        styles=settings.style_specs(),
        loras=settings.lora_specs(),
    )
    return write_results(generator, request, out, no_progress=no_progress)


def write_results(
    generator: DiffusersGenerator, request: GenerationRequest, out: Path, *, no_progress: bool
) -> list[Path]:
    from tqdm import tqdm

    generator.load(request.model)  # before the bar, so the bar times only the steps
    bar = tqdm(total=request.steps, unit="step", disable=no_progress, desc="generating")

    def on_progress(_index: int, progress: Progress) -> None:
        bar.total = progress.total
        bar.n = progress.step
        bar.refresh()

    try:
        [result] = generator.generate([request], on_progress)
    finally:
        bar.close()
    assert result is not None  # nothing can cancel a CLI run
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for path, image in zip(output_paths(out, request.count), result.images, strict=True):
        path.write_bytes(image.png)
        written.append(path)
    if result.grid_png is not None:
        out.write_bytes(result.grid_png)
        written.append(out)
    return written
