"""The picture an image-based request starts from, made ready for a pipeline call.

img2img denoises the picture at the request's strength; upscale resizes it first (Lanczos or an
upscaler model, then Lanczos to the exact size) and runs img2img on the result; zoom out pads
the canvas and inpaints the border at strength 1. This module is pure PIL: the generator owns
the pipelines and the upscaler models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from inference.canvas import pad_for_zoom_out
from inference.errors import GenerationFailedError
from inference.image_input import open_image, to_rgb
from inference.types import GenerationRequest, ImageSource

# Above about a megapixel the VAE's full-frame decode (and encode) needs several GiB of
# activations: tiles keep it near the cost of a 512² image.
TILING_PIXELS = 1024 * 1024

Upscale = Callable[[Image.Image, str], Image.Image]
"""(picture, upscaler name) -> the picture enlarged by that upscaler model's own factor."""


@dataclass(frozen=True)
class PreparedSource:
    """What the pipeline call gets: the starting image at the result size, how much of it to
    repaint, and for inpainting the mask (white: paint; black: keep)."""

    task: Literal["img2img", "inpaint"]
    image: Image.Image
    strength: float
    mask: Image.Image | None = None


def effective_strength(source: ImageSource) -> float:
    """The denoising strength the pipeline runs at: zoom out repaints its border from noise."""
    return 1.0 if source.operation == "zoom_out" else source.strength


def read_source(source: ImageSource) -> Image.Image:
    """The picture at `source.path` as RGB, at its recorded size."""
    path = Path(source.path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise GenerationFailedError(
            f"the picture to work from ({path.name}) can no longer be read; send it again"
        ) from error
    with open_image(data) as opened:  # only PNG/JPEG/WebP, bounded size: InvalidRequestError
        opened.load()
        picture = to_rgb(opened)
    return resize_exact(picture, (source.width, source.height))


def resize_exact(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def prepare_source(request: GenerationRequest, upscale: Upscale) -> PreparedSource:
    """Read and transform `request.source` into the pipeline's starting image."""
    source = request.source
    if source is None:
        raise ValueError("prepare_source needs a request with a source")
    picture = read_source(source)
    size = (request.width, request.height)
    if source.operation == "img2img":
        return PreparedSource("img2img", resize_exact(picture, size), source.strength)
    if source.operation == "upscale":
        if source.upscaler:
            picture = upscale(picture, source.upscaler)
        return PreparedSource("img2img", resize_exact(picture, size), source.strength)
    canvas, mask = pad_for_zoom_out(picture, source.scale)
    if canvas.size != size:  # resolve_request computed the same size; guard a mismatch anyway
        canvas, mask = resize_exact(canvas, size), resize_exact(mask, size)
    return PreparedSource("inpaint", canvas, effective_strength(source), mask)


def overlay_kept(generated: Image.Image, prepared: PreparedSource) -> Image.Image:
    """Inpainting's result with the kept region's own pixels put back (A1111's overlay): the
    VAE's round trip would otherwise soften the original picture; the mask's feathered edge
    blends the seam."""
    if prepared.mask is None:
        return generated
    return Image.composite(generated, prepared.image, prepared.mask)


@contextmanager
def vae_tiling(vae: Any, enable: bool) -> Iterator[None]:
    """VAE tiling on for the block when `enable`, then back to what it was."""
    before = bool(getattr(vae, "use_tiling", False))
    if enable and not before:
        vae.enable_tiling()
    try:
        yield
    finally:
        if enable and not before:
            vae.disable_tiling()
