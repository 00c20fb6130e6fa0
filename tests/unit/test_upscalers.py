"""Upscaler models: loading with spandrel, refusing pickles, and their metadata."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from inference.a1111_params import parse_parameters
from inference.errors import CheckpointError, ModelError, UnsafeCheckpointError
from inference.images import parameters_text
from inference.testing import import_spandrel_for_tests, save_tiny_upscaler, write_fake_checkpoint
from inference.types import GenerationRequest, ImageSource, UpscalerSpec
from inference.upscalers import INSTALL_HINT, load_upscaler, upscale_image


@pytest.fixture(scope="module")
def spandrel_available() -> None:
    try:
        import_spandrel_for_tests()
    except ImportError:
        pytest.skip("spandrel is not installed (pip install 'imagine-bot[upscalers]')")


@pytest.mark.parametrize("scale", [2, 4])
def test_tiny_upscaler_loads_and_enlarges_by_its_own_factor(
    spandrel_available: None, tmp_path: Path, scale: int
) -> None:
    path = save_tiny_upscaler(tmp_path / f"x{scale}.safetensors", scale=scale)
    upscaler = load_upscaler(UpscalerSpec("tiny", str(path)))
    assert upscaler.scale == scale and upscaler.name == "tiny"
    out = upscale_image(upscaler, Image.new("RGB", (24, 16), (200, 30, 60)))
    assert out.size == (24 * scale, 16 * scale) and out.mode == "RGB"


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt", ".bin"])
def test_pickle_upscalers_are_refused_before_reading(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"4x-old{suffix}"
    path.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(UnsafeCheckpointError, match="arbitrary code"):
        load_upscaler(UpscalerSpec("old", str(path)))


def test_missing_or_foreign_files_are_clear_errors(
    spandrel_available: None, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_upscaler(UpscalerSpec("gone", str(tmp_path / "gone.safetensors")))
    with pytest.raises(CheckpointError, match=r"not a \.safetensors"):
        load_upscaler(UpscalerSpec("onnx", str(tmp_path / "model.onnx")))
    other = write_fake_checkpoint(tmp_path / "sd.safetensors", {"some.weight": (4, 4)})
    with pytest.raises(CheckpointError, match="not an upscaler architecture"):
        load_upscaler(UpscalerSpec("sd", str(other)))


def test_without_spandrel_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x2.safetensors"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "spandrel", None)  # import spandrel -> ImportError
    with pytest.raises(ModelError, match="spandrel") as error:
        load_upscaler(UpscalerSpec("x2", str(path)))
    assert INSTALL_HINT in str(error.value)


def request(source: ImageSource) -> GenerationRequest:
    return GenerationRequest("a fox", "", 128, 128, 20, 7.0, 5, "Euler", 1, "m", source)


@pytest.mark.parametrize(
    ("source", "strength", "upscale", "upscaler"),
    [
        (ImageSource("p.png", 64, 64, "img2img", 0.35), 0.35, None, None),
        (ImageSource("p.png", 64, 64, "upscale", 0.3, 2.0), 0.3, 2.0, "Lanczos"),
        (ImageSource("p.png", 64, 64, "upscale", 0.3, 2.5, "4x: Ultra, v2"), 0.3, 2.5, None),
        (ImageSource("p.png", 64, 64, "zoom_out", 0.6, 1.5), 1.0, None, None),
    ],
)
def test_source_metadata_reads_back(
    source: ImageSource, strength: float, upscale: float | None, upscaler: str | None
) -> None:
    text = parameters_text(request(source), 5)
    parsed = parse_parameters(text)
    assert parsed.denoising_strength == strength
    assert parsed.hires_upscale == upscale
    assert parsed.extras.get("Hires upscaler") == (upscaler or source.upscaler)
    assert (parsed.seed, parsed.steps, parsed.model, parsed.width) == (5, 20, "m", 128)
    assert parsed.extras["Version"] == "imagine-bot"


def test_text_to_image_metadata_has_no_source_keys() -> None:
    request_ = GenerationRequest("a fox", "", 64, 64, 20, 7.0, 5, "Euler", 1, "m")
    assert "Denoising" not in parameters_text(request_, 5)
