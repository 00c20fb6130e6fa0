"""`imagine-bot generate --image` and `imagine-bot upscale`, run as an operator runs them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.a1111_params import parse_parameters
from inference.images import encode_png, read_parameters
from tests.integration.test_cli import imagine_bot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # starts processes


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny model's config and a 64x48 JPEG without metadata."""
    folder = tmp_path_factory.mktemp("cli-images")
    made = imagine_bot("tiny-model", "tiny", cwd=folder)
    assert made.returncode == 0, made.stderr
    (folder / "tiny.toml").write_text(made.stdout)
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (48, 1))] * 3, axis=-1)
    Image.fromarray(pixels).save(folder / "photo.jpg", quality=95)
    return folder


def parameters(path: Path):
    return parse_parameters(read_parameters(path.read_bytes()) or "")


def test_generate_from_an_image_then_upscale_it_with_its_own_metadata(folder: Path) -> None:
    ran = imagine_bot(
        "--config", "tiny.toml", "generate", "a lighthouse", "--image", "photo.jpg",
        "--strength", "0.5", "--steps", "6", "--seed", "7", "--out", "varied.png",
        cwd=folder,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "3/3" in ran.stderr  # 6 steps x 0.5
    assert Image.open(folder / "varied.png").size == (64, 48)
    varied = parameters(folder / "varied.png")
    assert (varied.denoising_strength, varied.seed, varied.prompt) == (0.5, 7, "a lighthouse")

    ran = imagine_bot(
        "--config", "tiny.toml", "upscale", "varied.png", "--scale", "2", "--strength", "0.5",
        "--out", "big.png",
        cwd=folder,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert Image.open(folder / "big.png").size == (128, 96)
    big = parameters(folder / "big.png")
    # Prompt, seed and steps come from varied.png's metadata.
    assert (big.prompt, big.seed, big.steps) == ("a lighthouse", 7, 6)
    assert (big.denoising_strength, big.hires_upscale) == (0.5, 2.0)
    assert big.extras["Hires upscaler"] == "Lanczos"


def test_upscale_needs_a_prompt_when_the_picture_has_none(folder: Path) -> None:
    ran = imagine_bot("--config", "tiny.toml", "upscale", "photo.jpg", cwd=folder)
    assert ran.returncode == 2
    assert "--prompt" in ran.stderr and "Traceback" not in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
    ran = imagine_bot(
        "--config", "tiny.toml", "upscale", "photo.jpg", "--prompt", "a road", "--steps", "4",
        cwd=folder,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert (folder / "photo-x2.png").is_file()  # images.upscale_factor's default, 2
    assert parameters(folder / "photo-x2.png").denoising_strength == 0.35  # upscale_strength


def test_upscale_falls_back_to_the_default_model_with_a_note(folder: Path) -> None:
    picture = Image.new("RGB", (40, 40), (20, 120, 200))
    text = "a lake\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 40x40, Model: elsewhere"
    (folder / "foreign.png").write_bytes(encode_png(picture, text))
    ran = imagine_bot(
        "--config", "tiny.toml", "upscale", "foreign.png", "--scale", "1.6", "--out", "f.png",
        cwd=folder,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "'elsewhere'" in ran.stderr and "'tiny'" in ran.stderr
    assert Image.open(folder / "f.png").size == (64, 64)
    result = parameters(folder / "f.png")
    assert (result.model, result.seed, result.cfg_scale, result.sampler) == (
        "tiny",
        3,
        5.0,
        "Euler",
    )


def test_bad_image_options_are_one_line_errors(folder: Path) -> None:
    for args, expected in [
        (("generate", "x", "--image", "missing.png"), "image: cannot read missing.png"),
        (("generate", "x", "--strength", "0.5"), "strength: needs --image"),
        (("generate", "x", "--image", "photo.jpg", "--width", "64"), "the picture sets the size"),
        (("upscale", "photo.jpg", "--prompt", "p", "--scale", "9"), "scale: must be more than 1"),
    ]:
        ran = imagine_bot("--config", "tiny.toml", *args, cwd=folder)
        assert ran.returncode == 2, (args, ran.stderr)
        assert expected in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
