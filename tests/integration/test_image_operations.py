"""Image-based requests on the tiny random models: img2img, upscale (Lanczos and an upscaler
model) and zoom out, through the product's generator."""

from __future__ import annotations

import dataclasses
import gc
import io
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from inference.a1111_params import parse_parameters
from inference.canvas import DEFAULT_FEATHER, pad_for_zoom_out
from inference.device import RuntimeOptions
from inference.errors import GenerationCancelled
from inference.generator import DiffusersGenerator
from inference.images import read_parameters
from inference.testing import TinyModel, import_spandrel_for_tests, save_tiny_upscaler
from inference.types import GenerationRequest, ImageSource, ModelSpec, UpscalerSpec

SIZE = 64


@pytest.fixture(scope="module")
def upscaler_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import_spandrel_for_tests()
    except ImportError:
        pytest.skip("spandrel is not installed (pip install 'imagine-bot[upscalers]')")
    return save_tiny_upscaler(tmp_path_factory.mktemp("upscalers") / "tiny-x2.safetensors")


@pytest.fixture(scope="module")
def generator(tiny_model: TinyModel, upscaler_file: Path) -> DiffusersGenerator:
    spec = ModelSpec("tiny", str(tiny_model.single_file), config=tiny_model.folder)
    return DiffusersGenerator(
        {"tiny": spec},
        RuntimeOptions(preview_interval_s=0.0),
        {"x2": UpscalerSpec("x2", str(upscaler_file))},
    )


def source(picture: Path, operation: str = "img2img", **changes: Any) -> ImageSource:
    return dataclasses.replace(ImageSource(str(picture), SIZE, SIZE, operation), **changes)  # type: ignore[arg-type]


def request(src: ImageSource, size: int = SIZE, **changes: Any) -> GenerationRequest:
    base = GenerationRequest(
        "a lighthouse at dusk", "fog", size, size, 4, 7.5, 42, "Euler a", 1, "tiny", src
    )
    return dataclasses.replace(base, **changes)


def pixels(png: bytes | Image.Image) -> np.ndarray:
    image = png if isinstance(png, Image.Image) else Image.open(io.BytesIO(png))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def source_pixels(picture: Path) -> np.ndarray:
    return pixels(Image.open(picture))


@pytest.mark.parametrize(
    ("operation", "scale", "strength", "size", "steps_run"),
    [
        ("img2img", 1.0, 0.5, 64, 4),  # 8 steps x 0.5
        ("upscale", 2.0, 0.25, 128, 2),
        ("zoom_out", 1.5, 0.6, 96, 8),  # strength 1: every step
    ],
)
def test_result_size_progress_and_metadata(
    generator: DiffusersGenerator,
    picture: Path,
    operation: str,
    scale: float,
    strength: float,
    size: int,
    steps_run: int,
) -> None:
    src = source(picture, operation, scale=scale, strength=strength)
    seen: list[Any] = []
    [result] = generator.generate(
        [request(src, size, steps=8)], lambda i, p: seen.append((p.step, p.total))
    )
    image = result.images[0]
    assert (image.width, image.height) == (size, size)
    assert Image.open(io.BytesIO(image.png)).size == (size, size)
    assert seen == [(i, steps_run) for i in range(1, steps_run + 1)]
    parsed = parse_parameters(read_parameters(image.png) or "")
    assert (parsed.width, parsed.height, parsed.seed, parsed.steps) == (size, size, 42, 8)
    assert parsed.prompt == "a lighthouse at dusk" and parsed.negative_prompt == "fog"
    assert parsed.denoising_strength == (1.0 if operation == "zoom_out" else strength)
    if operation == "upscale":
        assert parsed.hires_upscale == 2.0 and parsed.extras["Hires upscaler"] == "Lanczos"
    else:
        assert parsed.hires_upscale is None and "Hires upscaler" not in parsed.extras


def test_same_seed_same_bytes_other_seed_other_image(
    generator: DiffusersGenerator, picture: Path
) -> None:
    src = source(picture, strength=0.75)
    [first] = generator.generate([request(src)])
    [again] = generator.generate([request(src)])
    [other] = generator.generate([request(src, seed=43)])
    assert first.images[0].png == again.images[0].png
    assert np.abs(pixels(first.images[0].png) - pixels(other.images[0].png)).mean() > 1


def test_low_strength_stays_closer_to_the_picture_than_high_strength(
    generator: DiffusersGenerator, picture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured on the latents the VAE decodes: the tiny model's random VAE decoder maps any
    latents to similar noise, so a pixel distance could not tell the strengths apart."""
    import torch

    vae = generator.load("tiny").pipe.vae
    decoded: list[torch.Tensor] = []
    real_decode = vae.decode

    def spy(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        decoded.append(latents.detach().float().clone())
        return real_decode(latents, *args, **kwargs)

    with torch.no_grad():
        tensor = generator.load("tiny").pipe.image_processor.preprocess(Image.open(picture))
        target = vae.encode(tensor.to(vae.dtype)).latent_dist.mode().float()
        target *= vae.config.scaling_factor
    monkeypatch.setattr(vae, "decode", spy)
    distances = {}
    for strength in (0.25, 1.0):
        decoded.clear()
        generator.generate([request(source(picture, strength=strength), steps=8)])
        [latents] = decoded
        distances[strength] = float((latents * vae.config.scaling_factor - target).abs().mean())
    # diffusers divides by the scaling factor before decode; undo it to compare
    assert distances[0.25] < 0.6 * distances[1.0], distances


def test_zoom_out_keeps_the_centre_and_paints_the_border(
    generator: DiffusersGenerator, picture: Path
) -> None:
    src = source(picture, "zoom_out", scale=2.0)
    [result] = generator.generate([request(src, 128, steps=3)])
    out = pixels(result.images[0].png)
    original = source_pixels(picture)
    inner = slice(32 + DEFAULT_FEATHER, 96 - DEFAULT_FEATHER)
    kept = np.abs(out[inner, inner] - original[16:48, 16:48]).mean()
    canvas, _mask = pad_for_zoom_out(Image.open(picture), 2.0)
    border = np.ones((128, 128), dtype=bool)
    border[32:96, 32:96] = False
    painted = np.abs(out[border] - pixels(canvas)[border]).mean()
    assert kept < 1.0, kept  # the picture itself comes back as it was
    assert painted > 10, painted  # the border is the model's, not the stretched edge


def test_derived_pipelines_share_the_weights_and_go_with_the_model(
    tiny_model: TinyModel, picture: Path
) -> None:
    specs = {
        "a": ModelSpec("a", str(tiny_model.folder)),
        "b": ModelSpec("b", str(tiny_model.single_file), config=tiny_model.folder),
    }
    generator = DiffusersGenerator(specs, RuntimeOptions(max_resident_models=1))
    generator.generate([request(source(picture), model="a", steps=2)])
    generator.generate([request(source(picture, "zoom_out", scale=1.5), 96, model="a", steps=2)])
    loaded = generator.load("a")
    assert set(loaded.derived) == {"img2img", "inpaint"}
    for derived in loaded.derived.values():
        for part in ("unet", "vae", "text_encoder"):
            assert getattr(derived, part) is getattr(loaded.pipe, part)
        weight = next(derived.unet.parameters())
        assert weight.data_ptr() == next(loaded.pipe.unet.parameters()).data_ptr()
    refs = [weakref.ref(p) for p in (loaded.pipe, *loaded.derived.values())]
    del loaded, derived
    generator.load("b")  # evicts "a"
    gc.collect()
    assert [ref() is None for ref in refs] == [True] * len(refs)


def test_a_batch_of_one_picture_uses_seed_plus_i(
    generator: DiffusersGenerator, picture: Path
) -> None:
    src = source(picture, strength=0.75)
    a, b = request(src, seed=7, count=2), request(src, seed=20, prompt="a red fox")
    results = generator.generate([a, b])
    assert [i.seed for i in results[0].images] == [7, 8]
    assert [i.seed for i in results[1].images] == [20]
    [alone] = generator.generate([request(src, seed=8)])
    assert np.abs(pixels(results[0].images[1].png) - pixels(alone.images[0].png)).max() <= 3
    assert np.abs(pixels(results[0].images[0].png) - pixels(alone.images[0].png)).mean() > 1


def test_cancelling_an_img2img_job(generator: DiffusersGenerator, picture: Path) -> None:
    seen: list[Any] = []
    with pytest.raises(GenerationCancelled):
        generator.generate(
            [request(source(picture, strength=0.5), steps=10)],
            lambda i, p: seen.append((p.step, p.total)),
            lambda i: len(seen) >= 2,
        )
    assert seen == [(1, 5), (2, 5)]


def test_out_of_memory_on_img2img_retries_lighter(
    generator: DiffusersGenerator, picture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    generator.generate([request(source(picture), steps=2)])  # builds the img2img pipeline
    loaded = generator.load("tiny")
    img2img = loaded.derived["img2img"]
    real_call = type(img2img).__call__
    calls = []

    def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs["image"]))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(img2img), "__call__", flaky)
    [result] = generator.generate([request(source(picture), count=2, steps=2)])
    assert calls == [2, 1, 1]
    assert len(result.images) == 2 and "out of GPU memory" in result.notes[0]
    assert not loaded.pipe.vae.use_tiling


def test_large_results_decode_with_vae_tiling_for_that_call_only(
    generator: DiffusersGenerator, picture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vae = generator.load("tiny").pipe.vae
    during: list[bool] = []
    monkeypatch.setattr(generator, "tiling_pixels", 100 * 100)
    src = source(picture, "upscale", scale=2.0, strength=0.5)
    generator.generate([request(src, 128, steps=2)], lambda i, p: during.append(vae.use_tiling))
    generator.generate(
        [request(source(picture), steps=2)], lambda i, p: during.append(vae.use_tiling)
    )
    assert during == [True, False]
    assert not vae.use_tiling


def test_upscale_with_an_upscaler_model(generator: DiffusersGenerator, picture: Path) -> None:
    src = source(picture, "upscale", scale=3.0, strength=0.25, upscaler="x2")
    [result] = generator.generate([request(src, 192, steps=4)])
    assert (result.images[0].width, result.images[0].height) == (192, 192)
    parsed = parse_parameters(read_parameters(result.images[0].png) or "")
    assert parsed.hires_upscale == 3.0 and parsed.extras["Hires upscaler"] == "x2"
    assert generator._upscaler is not None and generator._upscaler.scale == 2
    [lanczos] = generator.generate([request(dataclasses.replace(src, upscaler=None), 192, steps=4)])
    # The random ESRGAN changes the picture before img2img: the results differ.
    assert np.abs(pixels(result.images[0].png) - pixels(lanczos.images[0].png)).mean() > 1


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_other_families_run_img2img_and_zoom_out(
    request_fixture: pytest.FixtureRequest, picture: Path, family: str
) -> None:
    tiny: TinyModel = request_fixture.getfixturevalue(f"tiny_model_{family}")
    spec = ModelSpec("m", str(tiny.single_file), config=tiny.folder)
    generator = DiffusersGenerator({"m": spec}, RuntimeOptions())
    assert generator.model_info("m").family == family
    [varied] = generator.generate([request(source(picture, strength=0.5), model="m")])
    zoom = source(picture, "zoom_out", scale=1.5)
    [zoomed] = generator.generate([request(zoom, 96, model="m", steps=2)])
    assert (varied.images[0].width, zoomed.images[0].width) == (64, 96)
    assert pixels(varied.images[0].png).std() > 0 and pixels(zoomed.images[0].png).std() > 0


@pytest.fixture
def request_fixture(request: pytest.FixtureRequest) -> pytest.FixtureRequest:
    return request  # `request` is this module's request builder; pytest's under another name
