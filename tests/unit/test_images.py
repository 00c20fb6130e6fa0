import io
import random

from PIL import Image

from inference.images import encode_png, fit_to_limit, make_grid, parameters_text, read_parameters
from inference.preview import encode_preview, latents_to_rgb
from inference.types import GenerationRequest

REQUEST = GenerationRequest("a fox", "blurry", 512, 768, 20, 7.5, 42, "Euler a", 1, "sd15")


def test_parameters_text_is_a1111_format() -> None:
    assert parameters_text(REQUEST, 42) == (
        "a fox\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x768, "
        "Model: sd15, Version: imagine-bot"
    )


def test_grid_places_images_row_major() -> None:
    colours = ["red", "green", "blue", "white"]
    grid = make_grid([Image.new("RGB", (8, 8), c) for c in colours])
    assert grid.size == (16, 16)
    assert grid.getpixel((12, 0)) == (0, 128, 0) and grid.getpixel((0, 12)) == (0, 0, 255)


def test_fit_to_limit_scales_down_and_keeps_metadata() -> None:
    rng = random.Random(0)
    noisy = Image.frombytes(
        "RGB", (256, 256), bytes(rng.randrange(256) for _ in range(256 * 256 * 3))
    )
    png = encode_png(noisy, "params")
    small = fit_to_limit(png, len(png) // 3, "x.png")
    assert len(small.data) <= len(png) // 3
    assert small.note and "scaled down" in small.note
    assert read_parameters(small.data) == "params"
    same = fit_to_limit(png, len(png), "x.png")
    assert same.data == png and same.note is None


def test_preview_turns_latents_into_a_small_jpeg() -> None:
    import torch

    latents = torch.zeros(4, 8, 12)
    latents[0] = 2.0  # channel 0 is mostly brightness
    image = latents_to_rgb(latents, "sd1")
    assert image.size == (96, 64)
    pixel = image.getpixel((0, 0))
    assert isinstance(pixel, tuple) and pixel[0] > 200
    assert Image.open(io.BytesIO(encode_preview(image))).format == "JPEG"
