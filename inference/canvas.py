"""Canvas sizes and padding for the image-to-image features: zoom out and upscale."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from inference.errors import InvalidRequestError

MAX_ZOOM = 4.0
# The latents are 1/8 of the image size: a ramp of two latent cells still blends after
# the mask is scaled down to them, where one of 8 px would become a hard step.
DEFAULT_FEATHER = 16


def pad_for_zoom_out(
    image: Image.Image,
    factor: float = 1.5,
    multiple: int = 8,
    feather: int = DEFAULT_FEATHER,
) -> tuple[Image.Image, Image.Image]:
    """The canvas and inpainting mask for zooming out by `factor`.

    The canvas (RGB) has each side `factor` times the image's, rounded up to `multiple`, with
    the image in the centre. The mask ("L") is white where the model paints: the whole border
    plus a ramp `feather` pixels deep into the image, so the seam is repainted and blends;
    black (kept) beyond it.
    """
    if not (math.isfinite(factor) and 1 < factor <= MAX_ZOOM):
        raise InvalidRequestError(
            "zoom", f"must be more than 1 and at most {MAX_ZOOM:g}, not {factor:g}"
        )
    if feather < 0 or multiple < 1:
        raise ValueError("feather must be >= 0 and multiple >= 1")
    rgb = image.convert("RGB")
    width, height = rgb.size
    canvas_w, canvas_h = zoom_out_size(width, height, factor, multiple)
    left, top = (canvas_w - width) // 2, (canvas_h - height) // 2

    # Inpainting starts from the canvas (noised, not replaced, at strength < 1), so the border
    # must already hold plausible colours: a black border comes back as a dark frame or vignette.
    # The edge pixels stretched outwards and blurred give the continuation the image's palette.
    pixels = np.asarray(rgb)
    padded = np.pad(
        pixels,
        ((top, canvas_h - height - top), (left, canvas_w - width - left), (0, 0)),
        mode="edge",
    )
    blur = max(1.0, max(left, top) / 2)
    canvas = Image.fromarray(padded).filter(ImageFilter.GaussianBlur(blur))
    canvas.paste(rgb, (left, top))

    mask = np.full((canvas_h, canvas_w), 255, dtype=np.uint8)
    mask[top : top + height, left : left + width] = _edge_ramp(width, height, feather)
    return canvas, Image.fromarray(mask)


def zoom_out_size(width: int, height: int, factor: float, multiple: int = 8) -> tuple[int, int]:
    """The canvas size of `pad_for_zoom_out`: each side `factor` times, rounded up."""
    return _round_up(width * factor, multiple), _round_up(height * factor, multiple)


def upscale_size(width: int, height: int, scale: float, multiple: int = 8) -> tuple[int, int]:
    """`width`×`height` times `scale`, each side rounded to the nearest `multiple` (at least
    one multiple), as the diffusion models need."""
    if not (math.isfinite(scale) and scale > 0):
        raise InvalidRequestError("scale", f"must be more than 0, not {scale:g}")
    return _round_nearest(width * scale, multiple), _round_nearest(height * scale, multiple)


def _edge_ramp(width: int, height: int, feather: int) -> np.ndarray:
    """255 on the image's outermost pixels, falling linearly to 0 `feather` pixels in."""
    if feather == 0:
        return np.zeros((height, width), dtype=np.uint8)
    xs, ys = np.arange(width), np.arange(height)
    from_x = np.minimum(xs, width - 1 - xs)
    from_y = np.minimum(ys, height - 1 - ys)
    distance = np.minimum(from_y[:, None], from_x[None, :])
    ramp = np.clip(1 - distance / feather, 0, 1) * 255
    return np.rint(ramp).astype(np.uint8)


def _round_up(length: float, multiple: int) -> int:
    # round() first: 1.1 * 400 is 440.00000000000006, which must not gain another multiple.
    return math.ceil(round(length / multiple, 6)) * multiple


def _round_nearest(length: float, multiple: int) -> int:
    return max(multiple, round(length / multiple) * multiple)
