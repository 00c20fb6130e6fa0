"""Zoom-out canvases and masks, and upscale sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from inference.canvas import MAX_ZOOM, pad_for_zoom_out, upscale_size
from inference.errors import InvalidRequestError


def two_colour(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


@pytest.mark.parametrize("factor", [1.0, 0.5, -2.0, 4.01, 10.0, math.nan, math.inf])
def test_zoom_factor_must_be_over_1_and_at_most_4(factor: float) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        pad_for_zoom_out(Image.new("RGB", (64, 64)), factor)
    assert caught.value.field == "zoom"
    assert str(caught.value).startswith("zoom: must be more than 1 and at most 4, not ")


def test_zoom_limits_are_allowed() -> None:
    canvas, mask = pad_for_zoom_out(Image.new("RGB", (64, 64)), MAX_ZOOM)
    assert canvas.size == mask.size == (256, 256)
    canvas, _ = pad_for_zoom_out(Image.new("RGB", (64, 64)), 1.01)
    assert canvas.size == (72, 72)  # 64.64 rounds up to the next multiple


@pytest.mark.parametrize(
    ("size", "factor", "expected"),
    [
        ((512, 512), 1.5, (768, 768)),
        ((512, 768), 2.0, (1024, 1536)),
        ((100, 60), 1.5, (152, 96)),
        ((400, 400), 1.1, (440, 440)),  # 1.1 * 400 is 440.00000000000006 in floating point
        ((64, 48), 1.5, (96, 72)),
    ],
)
def test_canvas_size_is_factor_times_rounded_up_to_multiple(
    size: tuple[int, int], factor: float, expected: tuple[int, int]
) -> None:
    canvas, mask = pad_for_zoom_out(Image.new("RGB", size), factor)
    assert canvas.size == mask.size == expected
    assert canvas.mode == "RGB" and mask.mode == "L"


def test_original_is_centred_unchanged() -> None:
    image = two_colour((100, 60))
    canvas, _ = pad_for_zoom_out(image, 1.5)
    left, top = (152 - 100) // 2, (96 - 60) // 2
    inner = canvas.crop((left, top, left + 100, top + 60))
    assert np.array_equal(np.asarray(inner), np.asarray(image))


def test_border_continues_the_edge_colours_not_black() -> None:
    canvas, _ = pad_for_zoom_out(two_colour((64, 64)), 2.0)  # image at 32..96
    pixels = np.asarray(canvas).astype(int)
    assert (pixels.sum(axis=2) > 200).all()  # nowhere near black
    assert pixels[64, 2].tolist() == [255, 0, 0]  # far left: the red edge, stretched
    assert pixels[64, 125].tolist() == [0, 0, 255]  # far right: blue
    top_left = pixels[2, 10]
    assert top_left[0] > 200 and top_left[2] < 60


def test_solid_image_gives_a_solid_canvas() -> None:
    canvas, _ = pad_for_zoom_out(Image.new("RGB", (40, 24), (10, 120, 200)), 3.0)
    assert set(canvas.getdata()) == {(10, 120, 200)}


def test_mask_paints_the_border_and_ramps_into_the_image() -> None:
    _, mask = pad_for_zoom_out(Image.new("RGB", (64, 64)), 2.0, feather=8)  # image at 32..96
    values = np.asarray(mask)
    inside = values[32:96, 32:96]
    border = values.copy()
    border[32:96, 32:96] = 255
    assert (border == 255).all()
    assert (inside[8:-8, 8:-8] == 0).all()  # kept beyond the feather
    row = inside[32]  # a row through the middle: 255 at the edge, falling to 0, then back
    assert row[0] == 255 and row[8] == 0 and row[-1] == 255
    assert list(row[:9]) == sorted(row[:9], reverse=True)
    assert list(row[-9:]) == sorted(row[-9:])
    assert 0 < row[4] < 255


def test_feather_zero_is_a_hard_edge() -> None:
    _, mask = pad_for_zoom_out(Image.new("RGB", (48, 48)), 1.5, feather=0)  # image at 12..60
    values = np.asarray(mask)
    assert (values[12:60, 12:60] == 0).all()
    assert values.sum() == 255 * (72 * 72 - 48 * 48)


def test_any_mode_is_accepted() -> None:
    canvas, _ = pad_for_zoom_out(Image.new("RGBA", (16, 16), (0, 255, 0, 255)), 1.5)
    assert canvas.mode == "RGB" and canvas.getpixel((0, 0)) == (0, 255, 0)


def test_bad_feather_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        pad_for_zoom_out(Image.new("RGB", (16, 16)), 1.5, feather=-1)


@given(
    width=st.integers(8, 300),
    height=st.integers(8, 300),
    factor=st.floats(1.001, 4.0),
    multiple=st.sampled_from([1, 8, 64]),
)
def test_canvas_holds_the_image_in_multiples(
    width: int, height: int, factor: float, multiple: int
) -> None:
    canvas, mask = pad_for_zoom_out(Image.new("RGB", (width, height)), factor, multiple)
    canvas_w, canvas_h = canvas.size
    assert canvas_w % multiple == 0 and canvas_h % multiple == 0
    assert width * factor - 1e-6 <= canvas_w < width * factor + multiple
    assert height * factor - 1e-6 <= canvas_h < height * factor + multiple
    assert mask.size == canvas.size


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((512, 768), 2.0, (1024, 1536)),
        ((500, 333), 2.0, (1000, 664)),
        ((512, 512), 1.5, (768, 768)),
        ((3, 3), 1.0, (8, 8)),
    ],
)
def test_upscale_size(size: tuple[int, int], scale: float, expected: tuple[int, int]) -> None:
    assert upscale_size(*size, scale) == expected


def test_upscale_size_other_multiple() -> None:
    assert upscale_size(500, 333, 2.0, multiple=64) == (1024, 640)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_upscale_scale_must_be_positive(scale: float) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        upscale_size(512, 512, scale)
    assert caught.value.field == "scale"
