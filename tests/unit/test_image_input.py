"""Untrusted uploads: formats, limits, bombs, corrupt files, orientation, alpha and scaling."""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from inference.errors import InvalidRequestError
from inference.image_input import (
    InputImage,
    attachment_too_big,
    fit_size,
    load_input_image,
    sniff_format,
)

LIMITS: dict[str, int] = {"max_bytes": 20_000_000, "max_pixels": 1024 * 1024, "max_side": 1024}


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def load(data: bytes, **overrides: int) -> InputImage:
    return load_input_image(data, **{**LIMITS, **overrides})


def refusal(data: bytes, **overrides: int) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        load(data, **overrides)
    assert caught.value.field == "image"
    return str(caught.value)


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims `width`×`height` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + png_chunk(b"IEND", b"")
    )


def near(pixel: object, expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


# --- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    loaded = load(encode(Image.new("RGB", (64, 48), (200, 30, 30)), fmt))
    assert loaded.format == fmt
    assert loaded.image.mode == "RGB" and loaded.image.size == (64, 48)
    assert (loaded.width, loaded.height, loaded.original_size) == (64, 48, (64, 48))
    assert not loaded.resized and not loaded.animated
    assert near(loaded.image.getpixel((10, 10)), (200, 30, 30))


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_other_formats_are_named_and_refused(fmt: str, name: str) -> None:
    data = encode(Image.new("RGB", (16, 16)), fmt)
    assert refusal(data) == f"image: must be PNG, JPEG or WebP, not {name}"


def test_format_comes_from_the_bytes_not_a_name() -> None:
    gif = encode(Image.new("RGB", (16, 16)), "GIF")
    assert sniff_format(gif) == "GIF"
    assert sniff_format(encode(Image.new("RGB", (16, 16)), "WEBP")) == "WEBP"
    assert sniff_format(b"\x00\x00\x00\x1cftypavif") == "AVIF"
    assert sniff_format(b"hello") is None


def test_empty_file() -> None:
    assert refusal(b"") == "image: the file is empty"


def test_over_the_byte_limit_is_refused_before_decoding() -> None:
    # Not an image at all: the size check comes first, so the message is about the size.
    assert refusal(b"x" * 31_200_000) == "image: 31.2 MB is over the 20 MB limit"
    data = encode(noise((64, 64)), "PNG")
    assert "is over the" in refusal(data, max_bytes=len(data) - 1)
    load(data, max_bytes=len(data))  # exactly at the limit is fine


def test_attachment_size_is_checked_before_download() -> None:
    attachment_too_big(20_000_000, 20_000_000)
    with pytest.raises(InvalidRequestError, match=r"^image: 31\.2 MB is over the 20 MB limit$"):
        attachment_too_big(31_200_000, 20_000_000)
    # Rounding never shows the size equal to the limit.
    with pytest.raises(InvalidRequestError, match=r"20\.1 MB is over the 20 MB limit"):
        attachment_too_big(20_000_001, 20_000_000)
    with pytest.raises(InvalidRequestError, match=r"26\.3 MB is over the 26\.2 MB limit"):
        attachment_too_big(25 * 1024 * 1024 + 1, 25 * 1024 * 1024)
    with pytest.raises(InvalidRequestError, match=r"1\.5 kB is over the 1 kB limit"):
        attachment_too_big(1500, 1000)


def test_text_file_is_not_an_image() -> None:
    message = refusal(b"hello, I am definitely a picture\n" * 10)
    assert message == (
        "image: could not be read (truncated or not an image); send a PNG, JPEG or WebP file"
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_files_are_refused(fmt: str) -> None:
    data = encode(noise((128, 128)), fmt)
    assert "could not be read" in refusal(data[: len(data) // 2])
    assert "could not be read" in refusal(data[:20])


def test_a_png_with_a_broken_chunk_is_refused() -> None:
    data = bytearray(encode(noise((32, 32)), "PNG"))
    data[40:60] = b"\xff" * 20  # inside IDAT: its CRC no longer matches
    assert "could not be read" in refusal(bytes(data))


# --- decompression bombs -------------------------------------------------------------------


def test_png_bomb_is_refused_from_its_header_without_allocating() -> None:
    data = png_declaring(30000, 30000)
    assert len(data) < 200
    tracemalloc.start()
    started = time.perf_counter()
    try:
        message = refusal(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message == "image: 30000×30000 is too large to open (at most 64 megapixels)"
    assert time.perf_counter() - started < 1.0
    assert peak < 5_000_000  # 30000² RGB would be 2.7 GB


def test_bomb_limit_does_not_rely_on_pillows_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    # 81 Mpx: under Pillow's own error threshold (179 Mpx) yet over ours.
    assert "9000×9000 is too large" in refusal(png_declaring(9000, 9000))
    assert "is too large" in refusal(png_declaring(100, 100), max_open_pixels=5000)


def test_a_lowered_global_limit_does_not_refuse_small_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load(encode(noise((100, 80)), "PNG")).image.size == (96, 80)


def test_webp_bomb_is_refused_before_the_decoder_allocates_its_canvas() -> None:
    # An extended-format (VP8X) header declaring a 16384×16384 canvas, and nothing else.
    payload = b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + 8 + len(payload)) + b"WEBP"
    data += b"VP8X" + struct.pack("<I", len(payload)) + payload
    tracemalloc.start()
    try:
        message = refusal(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message.startswith("image: 16384×16384 is too large to open")
    assert peak < 5_000_000


# --- colour modes, alpha, orientation, frames ----------------------------------------------


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 8, 16))
    image.paste((255, 0, 0, 128), (8, 0, 16, 8))
    loaded = load(encode(image, "PNG")).image
    assert loaded.getpixel((2, 2)) == (255, 0, 0)
    assert near(loaded.getpixel((12, 2)), (255, 127, 127), 2)
    assert loaded.getpixel((12, 12)) == (255, 255, 255)


def test_palette_transparency_and_la_are_flattened() -> None:
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.paste(1, (0, 0, 8, 16))
    loaded = load(encode(palette, "PNG", transparency=0)).image
    assert loaded.getpixel((2, 2)) == (0, 200, 0) and loaded.getpixel((12, 2)) == (255, 255, 255)

    grey_alpha = Image.new("LA", (16, 16), (0, 0))
    grey_alpha.paste((50, 255), (0, 0, 8, 16))
    loaded = load(encode(grey_alpha, "PNG")).image
    assert loaded.getpixel((2, 2)) == (50, 50, 50) and loaded.getpixel((12, 2)) == (255, 255, 255)

    webp = load(encode(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "WEBP", lossless=True))
    assert webp.image.getpixel((8, 8)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb() -> None:
    loaded = load(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert loaded.image.mode == "RGB" and near(loaded.image.getpixel((8, 8)), (255, 0, 0))


def test_greyscale_and_16_bit_become_rgb_with_the_range_scaled() -> None:
    assert load(encode(Image.new("L", (8, 8), 90), "PNG")).image.getpixel((4, 4)) == (90,) * 3
    deep = Image.new("I;16", (8, 8), 32896)  # the middle of 0..65535
    loaded = load(encode(deep, "PNG")).image
    assert loaded.getpixel((4, 4)) == (128, 128, 128)  # convert("RGB") alone gives 255
    assert load(encode(Image.new("1", (8, 8), 1), "PNG")).image.getpixel((0, 0)) == (255,) * 3


def rotated_jpeg(size: tuple[int, int], orientation: int) -> bytes:
    """Left half red, right half blue, as stored; the EXIF tag says how to display it."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(image, "JPEG", exif=exif, quality=95)


def test_exif_orientation_is_applied() -> None:
    # Orientation 6: the stored image is shown turned 90° clockwise, so its left half
    # (red) ends up on top and the width and height swap.
    loaded = load(rotated_jpeg((64, 32), 6))
    assert loaded.image.size == (32, 64) and loaded.original_size == (32, 64)
    assert near(loaded.image.getpixel((16, 5)), (255, 0, 0), 30)
    assert near(loaded.image.getpixel((16, 58)), (0, 0, 255), 30)
    upside_down = load(rotated_jpeg((64, 32), 3))  # 180°: red moves to the right
    assert upside_down.image.size == (64, 32)
    assert near(upside_down.image.getpixel((60, 16)), (255, 0, 0), 30)


def test_large_rotated_jpeg_is_decoded_at_reduced_scale_and_fits() -> None:
    data = rotated_jpeg((4000, 3000), 6)
    loaded = load(data, max_side=1024, max_pixels=1024 * 1024)
    assert loaded.original_size == (3000, 4000)
    assert (loaded.width, loaded.height) == (768, 1024) == loaded.image.size
    assert near(loaded.image.getpixel((384, 20)), (255, 0, 0), 30)
    assert near(loaded.image.getpixel((384, 1000)), (0, 0, 255), 30)


def test_animated_images_give_their_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "lime", "blue")]
    for fmt in ("PNG", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
        loaded = load(data)
        assert loaded.animated, fmt
        assert near(loaded.image.getpixel((8, 8)), (255, 0, 0), 2), fmt
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert refusal(gif).endswith("not GIF")


# --- scaling -------------------------------------------------------------------------------


def test_scaled_down_to_fit_side_and_area_in_multiples_of_8() -> None:
    loaded = load(encode(noise((1000, 500)), "PNG"), max_side=512)
    assert (loaded.width, loaded.height) == (512, 256) and loaded.resized
    loaded = load(encode(noise((1000, 500)), "PNG"), max_pixels=256 * 256)
    assert (loaded.width, loaded.height) == (360, 176) == loaded.image.size


def test_never_scaled_up_only_rounded_down() -> None:
    loaded = load(encode(noise((100, 61)), "PNG"))
    assert loaded.image.size == (96, 56) and loaded.original_size == (100, 61)
    loaded = load(encode(noise((100, 61)), "PNG"), multiple=1)
    assert loaded.image.size == (100, 61) and not loaded.resized


def test_thin_images_keep_at_least_one_multiple() -> None:
    loaded = load(encode(noise((10, 2000)), "PNG"), max_side=1024)
    assert loaded.image.size == (8, 1024)


def test_fit_size_is_not_fooled_by_floating_point() -> None:
    # 1024 / 1122 * 1122 is 1023.9999999999999: flooring that would lose a whole multiple.
    assert fit_size((1122, 561), max_pixels=2**30, max_side=1024, multiple=8) == (1024, 512)


def test_too_small_images_are_refused() -> None:
    assert refusal(encode(noise((5, 40)), "PNG")) == "image: 5×40 is too small (at least 8×8)"


def test_limits_that_allow_no_image_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        load(encode(noise((16, 16)), "PNG"), max_side=4)


@given(
    width=st.integers(8, 20000),
    height=st.integers(8, 20000),
    max_side=st.integers(64, 4096),
    max_pixels=st.integers(64 * 64, 4096 * 4096),
    multiple=st.sampled_from([1, 8, 64]),
)
def test_fit_size_respects_every_limit(
    width: int, height: int, max_side: int, max_pixels: int, multiple: int
) -> None:
    assume(width >= multiple and height >= multiple)
    fitted_w, fitted_h = fit_size(
        (width, height), max_pixels=max_pixels, max_side=max_side, multiple=multiple
    )
    assert fitted_w % multiple == 0 and fitted_h % multiple == 0
    assert multiple <= fitted_w <= min(width, max_side)
    assert multiple <= fitted_h <= min(height, max_side)
    assert fitted_w * fitted_h <= max_pixels
    if min(fitted_w, fitted_h) >= 8 * multiple:  # rounding aside, the aspect ratio is kept
        assert abs(fitted_w / fitted_h - width / height) / (width / height) < 0.3


SEEDS = {fmt: encode(noise((24, 16), 1), fmt) for fmt in ("PNG", "JPEG", "WEBP")}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10_000),
)
def test_mangled_files_load_or_are_refused_cleanly(
    fmt: str, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(SEEDS[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    try:
        loaded = load(bytes(data[: max(1, len(data) - cut % len(data))]))
    except InvalidRequestError as error:
        assert error.field == "image"
    else:
        assert loaded.image.mode == "RGB"
        assert loaded.image.size == (loaded.width, loaded.height)
