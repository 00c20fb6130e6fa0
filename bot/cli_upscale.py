"""`imagine-bot upscale`: a picture made larger with A1111's hires fix, no Discord.

The picture is resized `--scale` times (Lanczos, or the images.upscaler model) and then
repainted lightly (image-to-image at `--strength`) so the added pixels get real detail. The
prompt, negative prompt, seed, sampler, CFG scale, steps and model come from the picture's own
A1111 metadata when it has some (any image this bot or A1111 made); options given on the
command line win, and without metadata `--prompt` is required.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bot.cli_generate import make_generator, read_input_file, run_request, saved_source
from bot.settings import Settings
from inference.a1111_params import ParsedParameters, read_png_parameters
from inference.errors import InvalidRequestError
from inference.requests import RequestOptions
from inference.samplers import find_sampler


def default_out(image: Path, scale: float) -> Path:
    return Path(f"{image.stem}-x{scale:g}.png")


def note(text: str) -> None:
    print(f"imagine-bot: note: {text}", file=sys.stderr)


def options_for_upscale(
    args: argparse.Namespace, parsed: ParsedParameters | None, settings: Settings
) -> RequestOptions:
    """The request's options: command line first, then the picture's metadata, then defaults.

    A model or sampler named in the metadata that this bot does not have falls back to the
    default, with a note: the picture may come from another tool."""
    prompt = args.prompt if args.prompt is not None else (parsed.prompt if parsed else None)
    if not prompt:
        raise InvalidRequestError(
            "prompt",
            f"{args.image} carries no prompt in its metadata; give one with --prompt",
        )
    negative = args.negative_prompt
    if negative is None and parsed is not None:
        negative = parsed.negative_prompt
    model = args.model
    if model is None and parsed is not None and parsed.model:
        if parsed.model in settings.model_specs():
            model = parsed.model
        else:
            note(
                f"the picture was made with model {parsed.model!r}, which is not configured "
                f"here; using {settings.default_model!r}"
            )
    sampler = args.sampler
    if sampler is None and parsed is not None and parsed.sampler:
        try:
            sampler = find_sampler(parsed.sampler).name
        except InvalidRequestError:
            note(f"sampler {parsed.sampler!r} from the picture is unknown; using the default")

    steps, guidance, seed = args.steps, args.guidance, args.seed
    if parsed is not None:
        steps = parsed.steps if steps is None else steps
        guidance = parsed.cfg_scale if guidance is None else guidance
        seed = parsed.seed if seed is None else seed
    return RequestOptions(
        prompt=prompt,
        negative_prompt=negative,
        steps=steps,
        guidance=guidance,
        seed=seed,
        sampler=sampler,
        model=model or settings.default_model,
    )


def upscale_to_file(args: argparse.Namespace, settings: Settings) -> list[Path]:
    data = read_input_file(args.image)
    parsed = read_png_parameters(data)
    options = options_for_upscale(args, parsed, settings)
    scale = settings.images.upscale_factor if args.scale is None else args.scale
    strength = settings.images.upscale_strength if args.strength is None else args.strength
    generator = make_generator(settings)
    out = args.out or default_out(args.image, scale)
    with saved_source(
        data,
        settings,
        operation="upscale",
        strength=strength,
        scale=scale,
        upscaler=settings.images.upscaler or None,
    ) as source:
        options = dataclasses.replace(options, source=source)
        return run_request(generator, options, settings, out, no_progress=args.no_progress)
