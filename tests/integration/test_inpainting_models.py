"""Dedicated inpainting checkpoints (9-channel UNet) on the tiny random models: loading both
ways with every weight from the file, zoom out routed to the model a spec's `inpainting` names,
and text-to-image on an inpainting model refused clearly."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from inference.canvas import DEFAULT_FEATHER
from inference.device import RuntimeOptions
from inference.errors import CheckpointError, InvalidRequestError, ModelError
from inference.generator import DiffusersGenerator
from inference.models import inspect_model, load_pipeline
from inference.requests import RequestOptions, resolve_request
from inference.testing import TinyModel, save_tiny_model
from inference.types import GenerationRequest, ImageSource, ModelSpec
from tests.integration.test_models import assert_same_weights

SIZE = 64
_WEIGHT_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
    "text_encoder_2": "text_encoder_2/model.safetensors",
}


@pytest.fixture(scope="module")
def inpainting_sd1(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    # Another seed than the text-to-image tiny model: its weights differ everywhere.
    return save_tiny_model(tmp_path_factory.mktemp("inpaint-sd1"), "sd1", 1, inpainting=True)


@pytest.fixture(scope="module")
def inpainting_sdxl(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return save_tiny_model(tmp_path_factory.mktemp("inpaint-sdxl"), "sdxl", 1, inpainting=True)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def zoom_request(picture: Path, model: str, **changes: Any) -> GenerationRequest:
    source = ImageSource(str(picture), SIZE, SIZE, "zoom_out", scale=1.5)
    base = GenerationRequest(
        "a lighthouse at dusk", "fog", 96, 96, 3, 7.5, 42, "Euler a", 1, model, source
    )
    return dataclasses.replace(base, **changes)


# --- loading ---------------------------------------------------------------------------------


def test_the_tiny_inpainting_model_has_nine_input_channels(inpainting_sd1: TinyModel) -> None:
    header = load_file(inpainting_sd1.single_file)
    assert header["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9
    assert inpainting_sd1.folder.name == "tiny-sd1-inpainting"
    index = (inpainting_sd1.folder / "model_index.json").read_text()
    assert "StableDiffusionInpaintPipeline" in index  # as inpainting models are published


def test_folder_loads_with_nine_channels(inpainting_sd1: TinyModel) -> None:
    spec = ModelSpec("fill", str(inpainting_sd1.folder))
    assert inspect_model(spec).inpainting is True
    pipe = load_pipeline(spec)
    assert pipe.unet.config.in_channels == 9
    assert_same_weights(pipe, inpainting_sd1)


@pytest.mark.parametrize("architecture", ["own", "text-to-image"])
def test_single_file_loads_with_nine_channels(
    inpainting_sd1: TinyModel, tiny_model: TinyModel, architecture: str
) -> None:
    """With its own config folder (9 channels), and with the text-to-image architecture of its
    family (4 channels, like the shipped configs): the file's UNet input decides."""
    config = inpainting_sd1.folder if architecture == "own" else tiny_model.folder
    spec = ModelSpec("fill", str(inpainting_sd1.single_file), config=config)
    info = inspect_model(spec)
    assert (info.family, info.source_kind, info.inpainting) == ("sd1", "single_file", True)
    pipe = load_pipeline(spec)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.config.in_channels == 9
    assert_same_weights(pipe, inpainting_sd1)


def test_sdxl_single_file_inpainting_loads(
    inpainting_sdxl: TinyModel, tiny_model_sdxl: TinyModel
) -> None:
    spec = ModelSpec("fill", str(inpainting_sdxl.single_file), config=tiny_model_sdxl.folder)
    assert inspect_model(spec).inpainting is True
    pipe = load_pipeline(spec)
    assert pipe.unet.config.in_channels == 9
    assert_same_weights(pipe, inpainting_sdxl)


def test_text_to_image_models_are_not_inpainting(tiny_model: TinyModel) -> None:
    for spec in (
        ModelSpec("t", str(tiny_model.folder)),
        ModelSpec("t", str(tiny_model.single_file), config=tiny_model.folder),
    ):
        assert inspect_model(spec).inpainting is False


def test_an_incomplete_inpainting_file_is_refused(
    inpainting_sd1: TinyModel, tiny_model: TinyModel, tmp_path: Path
) -> None:
    tensors = load_file(inpainting_sd1.single_file)
    del tensors["model.diffusion_model.out.0.bias"]
    partial = tmp_path / "partial-inpainting.safetensors"
    save_file(tensors, str(partial))
    with pytest.raises(CheckpointError, match=r"lacks 1 unet weights"):
        load_pipeline(ModelSpec("fill", str(partial), config=tiny_model.folder))


# --- zoom out through the generator ------------------------------------------------------------


@pytest.fixture
def generator(tiny_model: TinyModel, inpainting_sd1: TinyModel) -> DiffusersGenerator:
    base = ModelSpec("tiny", str(tiny_model.single_file), config=tiny_model.folder)
    specs = {
        "tiny": dataclasses.replace(base, inpainting="fill"),
        "plain": base,  # the same weights, no inpainting model
        "fill": ModelSpec("fill", str(inpainting_sd1.single_file), config=tiny_model.folder),
    }
    return DiffusersGenerator(specs, RuntimeOptions(max_resident_models=1))


def test_zoom_out_runs_on_the_named_inpainting_model(
    generator: DiffusersGenerator, picture: Path
) -> None:
    [plain] = generator.generate([zoom_request(picture, "plain")])
    assert list(generator._loaded) == ["plain"]

    fill = generator.load("fill")
    widths: list[int] = []
    hook = fill.pipe.unet.register_forward_pre_hook(
        lambda module, args: widths.append(int(args[0].shape[1]))
    )
    try:
        [zoomed] = generator.generate([zoom_request(picture, "tiny")])
    finally:
        hook.remove()
    # diffusers' inpainting pipeline fed the 9-channel UNet latents + mask + masked picture.
    assert widths and set(widths) == {9}
    assert list(generator._loaded) == ["fill"]  # loaded through the LRU: "tiny" never was
    assert set(generator._loaded["fill"].derived) == {"inpaint"}
    inpaint = generator._loaded["fill"].derived["inpaint"]
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    assert inpaint.unet is generator._loaded["fill"].pipe.unet  # from_pipe: no copy

    image = zoomed.images[0]
    assert (image.width, image.height) == (96, 96)
    assert zoomed.request.model == "tiny"  # the result is the asked model's zoom out
    out, other = pixels(image.png), pixels(plain.images[0].png)
    assert out.shape == (96, 96, 3)
    assert np.abs(out - other).mean() > 1  # another model painted the border
    inner = slice(16 + DEFAULT_FEATHER, 80 - DEFAULT_FEATHER)
    assert np.abs(out[inner, inner] - other[inner, inner]).mean() < 1  # the picture is kept


def test_zoom_out_evicts_the_asked_model_within_the_cap(
    generator: DiffusersGenerator, picture: Path
) -> None:
    generator.load("tiny")
    [result] = generator.generate([zoom_request(picture, "tiny", steps=2)])
    assert list(generator._loaded) == ["fill"]
    assert (result.images[0].width, result.images[0].height) == (96, 96)


def test_the_inpainting_model_zooms_out_when_asked_directly(
    generator: DiffusersGenerator, picture: Path
) -> None:
    request = resolve_request(
        RequestOptions(
            "a lighthouse",
            steps=2,
            seed=1,
            model="fill",
            source=ImageSource(str(picture), SIZE, SIZE, "zoom_out", scale=1.5),
        ),
        generator.model_info("fill"),
    )
    [result] = generator.generate([request])
    assert (result.images[0].width, result.images[0].height) == (96, 96)


@pytest.mark.parametrize("operation", [None, "img2img", "upscale"])
def test_other_requests_on_an_inpainting_model_are_refused(
    generator: DiffusersGenerator, picture: Path, operation: str | None
) -> None:
    info = generator.model_info("fill")
    source = None
    if operation is not None:
        source = ImageSource(str(picture), SIZE, SIZE, operation, scale=2.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError) as error:
        resolve_request(RequestOptions("a fox", model="fill", source=source), info)
    assert error.value.field == "model"
    assert "fill is an inpainting model, for zoom out only" in str(error.value)
    # The text-to-image models of the same generator are not affected.
    resolve_request(RequestOptions("a fox", source=source), generator.model_info("tiny"))


def test_the_generator_refuses_text_to_image_on_an_inpainting_model(
    generator: DiffusersGenerator,
) -> None:
    """A request that skipped validation (e.g. resumed from an older store) still fails
    clearly, before anything loads."""
    request = GenerationRequest("a fox", "", 64, 64, 2, 7.0, 1, "Euler a", 1, "fill")
    with pytest.raises(ModelError, match="'fill' is an inpainting model"):
        generator.generate([request])
    assert not generator._loaded


def test_an_unconfigured_inpainting_model_is_named(tiny_model: TinyModel, picture: Path) -> None:
    spec = ModelSpec("tiny", str(tiny_model.folder), inpainting="gone")
    generator = DiffusersGenerator({"tiny": spec}, RuntimeOptions())
    with pytest.raises(ModelError, match="inpainting model 'gone' is not configured"):
        generator.generate([zoom_request(picture, "tiny")])
