"""Untrusted image bytes (a Discord attachment, a file given to the CLI) to a safe RGB image.

Only the PNG, JPEG and WebP decoders ever see the bytes: other formats are named from their
magic bytes and refused without being parsed. Every refusal is an InvalidRequestError on the
"image" field, worded for the person who sent the file.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Literal, cast

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from inference.errors import InvalidRequestError

ImageFormat = Literal["PNG", "JPEG", "WEBP"]

FIELD = "image"
ALLOWED = "PNG, JPEG or WebP"
# Refused from the header, before any pixel is decoded: 64 Mpx of RGBA is 256 MB in memory,
# far more than any prompt image needs (it is scaled down to about a megapixel anyway), and a
# tiny file can declare that much (a decompression bomb).
MAX_OPEN_PIXELS = 64_000_000

# What Pillow's PNG/JPEG/WebP readers raise on malformed input (Image.open itself catches
# SyntaxError, IndexError, TypeError and struct.error from plugins).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)

_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"%PDF", "PDF"),
)
_READERS: dict[str, Callable[[IO[bytes]], ImageFile.ImageFile]] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}
_HEIF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC"}


@dataclass(frozen=True)
class InputImage:
    """An image ready for img2img: RGB, each side a multiple of the requested `multiple`."""

    image: Image.Image
    original_size: tuple[int, int]  # as displayed (after EXIF rotation), before scaling
    width: int
    height: int
    format: ImageFormat
    animated: bool  # the file had several frames; only the first was used

    @property
    def resized(self) -> bool:
        return self.original_size != (self.width, self.height)


def attachment_too_big(size: int, max_bytes: int) -> None:
    """Refuse a file from its declared size, before downloading it."""
    if size > max_bytes:
        raise InvalidRequestError(
            FIELD, f"{_format_bytes(size, up=True)} is over the {_format_bytes(max_bytes)} limit"
        )


def load_input_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_side: int,
    multiple: int = 8,
    max_open_pixels: int = MAX_OPEN_PIXELS,
) -> InputImage:
    """Decode, orient, flatten and scale down an uploaded image.

    Animated PNG and WebP files give their first frame (`animated` says so). Transparency is
    flattened onto white. The result fits `max_pixels` and `max_side`, keeps the aspect ratio
    (a sliver under `multiple` pixels is cropped from the centre rather than stretched) and is
    never scaled up; an image with a side under `multiple` pixels is refused.
    """
    if multiple < 1 or max_side < multiple or max_pixels < multiple * multiple:
        raise ValueError("max_side and max_pixels must allow at least one multiple×multiple image")
    if not data:
        raise InvalidRequestError(FIELD, "the file is empty")
    attachment_too_big(len(data), max_bytes)
    opened = open_image(data, max_open_pixels=max_open_pixels)
    try:
        return _prepare(opened, max_pixels=max_pixels, max_side=max_side, multiple=multiple)
    except Image.DecompressionBombError as error:  # a global limit set lower elsewhere
        raise _too_large(opened.size, max_open_pixels) from error
    except _DECODE_ERRORS as error:
        raise _unreadable() from error
    finally:
        opened.close()


def open_image(data: bytes, *, max_open_pixels: int = MAX_OPEN_PIXELS) -> ImageFile.ImageFile:
    """Read only the header of a PNG, JPEG or WebP file; no pixels are decoded yet.

    The plugin classes are used directly, not Image.open: Image.open applies Pillow's global
    MAX_IMAGE_PIXELS (warning above 89 Mpx, error above 179 Mpx), which any other code may
    change, and it would not tell us the size it refused. Our own limit is checked here.
    """
    kind = sniff_format(data)
    if kind not in _READERS:
        if kind is None:
            raise _unreadable()
        raise InvalidRequestError(FIELD, f"must be {ALLOWED}, not {kind}")
    if kind == "WEBP":
        if not WebPImagePlugin.SUPPORTED:
            raise InvalidRequestError(FIELD, "WebP is not supported here; send a PNG or JPEG")
        # Pillow's WebP reader allocates the whole canvas as it opens the file.
        size = _webp_canvas_size(data)
        if size is not None and size[0] * size[1] > max_open_pixels:
            raise _too_large(size, max_open_pixels)
    factory = _READERS[kind]
    try:
        image = factory(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise InvalidRequestError(FIELD, "is too large to open") from error
    except _DECODE_ERRORS as error:
        raise _unreadable() from error
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise _unreadable()
    if width * height > max_open_pixels:
        image.close()
        raise _too_large(image.size, max_open_pixels)
    return image


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's magic bytes ("PNG", "JPEG", "WEBP", "GIF", ...)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _OTHER_FORMATS:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(data[8:12])
    return None


def _prepare(
    image: ImageFile.ImageFile, *, max_pixels: int, max_side: int, multiple: int
) -> InputImage:
    kind = cast(ImageFormat, image.format)  # a class attribute of the plugin open_image chose
    animated = getattr(image, "n_frames", 1) > 1
    orientation = image.getexif().get(0x0112, 1)
    turned = orientation in (5, 6, 7, 8)  # these swap width and height
    shown = (image.height, image.width) if turned else image.size
    if min(shown) < multiple:
        raise InvalidRequestError(
            FIELD, f"{_dims(shown)} is too small (at least {multiple}×{multiple})"
        )
    target = fit_size(shown, max_pixels=max_pixels, max_side=max_side, multiple=multiple)
    if kind == "JPEG":
        # libjpeg can decode at 1/2, 1/4 or 1/8 scale: a phone photo costs a fraction of the
        # memory and time. draft() never goes below the size asked for.
        image.draft(None, (target[1], target[0]) if turned else target)
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    rgb = to_rgb(image)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, box=_cover_box(rgb.size, target))
    return InputImage(rgb, shown, target[0], target[1], kind, animated)


def fit_size(
    size: tuple[int, int], *, max_pixels: int, max_side: int, multiple: int
) -> tuple[int, int]:
    """The largest size within both limits, near `size`'s aspect, each side a multiple of
    `multiple` (at least one) and, if `size` has no side under `multiple`, never larger."""
    width, height = size
    scale = min(1.0, max_side / max(width, height), math.sqrt(max_pixels / (width * height)))

    def side(length: int) -> int:
        # round() first: 1024 / 1122 * 1122 is 1023.9999999999999, which must stay 1024.
        return max(multiple, math.floor(round(length * scale, 6)) // multiple * multiple)

    fitted_w, fitted_h = side(width), side(height)
    # A side bumped up to `multiple` (very thin images) can push the area over the limit.
    while fitted_w * fitted_h > max_pixels:
        if fitted_w >= fitted_h:
            fitted_w -= multiple
        else:
            fitted_h -= multiple
    return fitted_w, fitted_h


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency flattened onto white (not black: a transparent background is
    usually meant as "nothing there", and img2img would otherwise keep a black backdrop)."""
    if image.mode.startswith("I"):
        # 16-bit greyscale PNG ("I;16"): convert("L") clips at 255 instead of scaling 0..65535.
        image = image.convert("I").point(lambda value: value * (1 / 257)).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _cover_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred region of `size` with `target`'s aspect ratio: resized, it fills `target`."""
    width, height = size
    scale = max(target[0] / width, target[1] / height)
    box_w, box_h = target[0] / scale, target[1] / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return (left, top, left + box_w, top + box_h)


def _webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP header declares (simple lossy, lossless or extended)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8X" and len(data) >= 30:
        return (
            int.from_bytes(data[24:27], "little") + 1,
            int.from_bytes(data[27:30], "little") + 1,
        )
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _too_large(size: tuple[int, int], max_open_pixels: int) -> InvalidRequestError:
    return InvalidRequestError(
        FIELD,
        f"{_dims(size)} is too large to open (at most {max_open_pixels / 1_000_000:g} megapixels)",
    )


def _unreadable() -> InvalidRequestError:
    return InvalidRequestError(
        FIELD, f"could not be read (truncated or not an image); send a {ALLOWED} file"
    )


def _dims(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def _format_bytes(count: int, *, up: bool = False) -> str:
    """ "31.2 MB", "800 kB", "12 bytes". A size over a limit rounds up and the limit rounds
    down, so the two never print the same."""
    for unit, name in ((1_000_000, "MB"), (1_000, "kB")):
        if count >= unit:
            tenths = count * 10 / unit
            rounded = math.ceil(tenths) if up else math.floor(tenths)
            return f"{rounded / 10:.1f}".removesuffix(".0") + f" {name}"
    return f"{count} bytes"
