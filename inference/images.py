"""PNG files as users keep them: A1111-style metadata, grids, and fitting an upload limit."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from inference.operations import effective_strength
from inference.types import GenerationRequest

GENERATOR_NAME = "imagine-bot"


def parameters_text(
    request: GenerationRequest,
    seed: int,
    size: tuple[int, int] | None = None,
    extras: Mapping[str, str] | None = None,
) -> str:
    """The "parameters" text A1111 writes, which most image sites and tools parse.

    The format is prompt, then "Negative prompt: ...", then one line of "Key: value" pairs.
    `size`: the file's own size when it is not one image of the request (a grid). `extras`:
    what only the engine knows (A1111's "Clip skip", "Lora hashes"), before "Version".
    """
    width, height = size or (request.width, request.height)
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    settings: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "CFG scale": f"{request.guidance:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": request.model,
    }
    source = request.source
    if source is not None:
        # A1111's keys for img2img and the hires fix, which its readers (and ours) parse back.
        settings["Denoising strength"] = f"{effective_strength(source):g}"
        if source.operation == "upscale":
            settings["Hires upscale"] = f"{source.scale:g}"
            settings["Hires upscaler"] = _quote(source.upscaler or "Lanczos")
        elif source.operation == "zoom_out":
            settings["Zoom out"] = f"{source.scale:g}"
    settings |= {key: _quote(value) for key, value in (extras or {}).items()}
    settings["Version"] = GENERATOR_NAME
    lines.append(", ".join(f"{key}: {value}" for key, value in settings.items()))
    return "\n".join(lines)


def _quote(value: str) -> str:
    """A value as A1111 writes it: JSON-quoted if it holds a comma, colon or newline."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def encode_png(image: Image.Image, parameters: str | None, *, compress_level: int = 6) -> bytes:
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def read_parameters(png: bytes) -> str | None:
    with Image.open(io.BytesIO(png)) as image:
        return image.info.get("parameters")


def make_grid(images: list[Image.Image]) -> Image.Image:
    """Near-square grid, row-major, so image i sits where users expect it (2x2 for four)."""
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "black")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * cell_w, (i // columns) * cell_h))
    return grid


@dataclass(frozen=True)
class FittedImage:
    data: bytes
    filename: str
    note: str | None  # what was changed to fit, for the message; None if unchanged


def fit_to_limit(png: bytes, limit_bytes: int, filename: str) -> FittedImage:
    """Make an image fit an upload limit, keeping its metadata.

    First recompress losslessly at the highest level; then scale down in steps until it fits.
    """
    if len(png) <= limit_bytes:
        return FittedImage(png, filename, None)
    with Image.open(io.BytesIO(png)) as opened:
        opened.load()
        image = opened.convert("RGB")
        parameters = opened.info.get("parameters")
    data = encode_png(image, parameters, compress_level=9)
    if len(data) <= limit_bytes:
        return FittedImage(data, filename, "recompressed to fit the upload limit")
    scale = 1.0
    while len(data) > limit_bytes and scale > 0.05:
        # PNG size is roughly proportional to the pixel count: aim just under the limit.
        scale *= min(0.9, math.sqrt(limit_bytes / len(data)) * 0.95)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        data = encode_png(
            image.resize(size, Image.Resampling.LANCZOS), parameters, compress_level=9
        )
    if len(data) > limit_bytes:
        raise ValueError(f"cannot fit {filename} into {limit_bytes} bytes")
    return FittedImage(
        data,
        filename,
        f"scaled down to {round(scale * 100)}% ({size[0]}x{size[1]}) to fit the upload limit",
    )
