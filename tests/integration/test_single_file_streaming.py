"""Single files are read one tensor at a time into networks built without memory: no
whole-file state dict, no diffusers from_single_file, each weight straight in its dtype; and
bf16 (what `dtype = "auto"` picks on CPUs with native bf16) generates close to fp32."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from inference import models
from inference.device import RuntimeOptions
from inference.errors import CheckpointError
from inference.generator import DiffusersGenerator
from inference.testing import TinyModel
from inference.types import GenerationRequest, ModelSpec

_WEIGHT_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
    "text_encoder_2": "text_encoder_2/model.safetensors",
}


def spec_of(tiny: TinyModel, path: Path | None = None) -> ModelSpec:
    return ModelSpec("m", str(path or tiny.single_file), config=tiny.folder)


def assert_weights_in(pipe: object, tiny: TinyModel, dtype: torch.dtype) -> None:
    """Every weight equals the saved one cast to `dtype`, and none is left on the meta device."""
    components = ["unet", "vae", "text_encoder"] + (
        ["text_encoder_2"] if tiny.family == "sdxl" else []
    )
    for component in components:
        module = getattr(pipe, component)
        saved = load_file(tiny.folder / _WEIGHT_FILES[component])
        loaded = module.state_dict()
        assert set(loaded) == set(saved), component
        for key, tensor in saved.items():
            assert loaded[key].dtype == dtype, f"{component}.{key}"
            assert torch.equal(loaded[key], tensor.to(dtype)), f"{component}.{key}"
        assert not any(p.is_meta for p in module.parameters())
        assert not module.training


@pytest.mark.parametrize("which", ["tiny_model", "tiny_model_sd2", "tiny_model_sdxl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loads_straight_in_the_target_dtype(
    which: str, dtype: torch.dtype, request: pytest.FixtureRequest
) -> None:
    tiny: TinyModel = request.getfixturevalue(which)
    assert_weights_in(models.load_pipeline(spec_of(tiny), torch_dtype=dtype), tiny, dtype)


def test_no_whole_file_state_dict_and_no_from_single_file(
    tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import diffusers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole file was loaded at once")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_single_file", refuse)
    pipe = models.load_pipeline(spec_of(tiny_model))
    assert type(pipe).__name__ == "StableDiffusionPipeline"


def test_a_failure_while_reading_keeps_its_reason(
    tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")

    monkeypatch.setattr(models, "_fill", fail)
    with pytest.raises(CheckpointError, match=r"could not be loaded.*Cannot copy out of meta"):
        models.load_pipeline(spec_of(tiny_model))


def rewritten(tiny: TinyModel, tmp_path: Path, name: str, tensor: torch.Tensor) -> Path:
    tensors = load_file(tiny.single_file)
    tensors[name] = tensor
    path = tmp_path / "changed.safetensors"
    save_file(tensors, str(path))
    return path


def test_attention_weights_as_linear_or_as_1x1_conv(tiny_model: TinyModel, tmp_path: Path) -> None:
    """The original VAE stores mid-block attention as 1x1 convolutions; some files store the
    linear layer's 2-D weight instead: both load to the same weights."""
    name = "first_stage_model.encoder.mid.attn_1.q.weight"
    squeezed = load_file(tiny_model.single_file)[name][:, :, 0, 0].contiguous()
    pipe = models.load_pipeline(
        spec_of(tiny_model, rewritten(tiny_model, tmp_path, name, squeezed))
    )
    assert_weights_in(pipe, tiny_model, torch.float32)


def test_a_weight_stored_as_integers_is_a_checkpoint_error(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    name = "model.diffusion_model.out.2.bias"
    ints = torch.zeros(load_file(tiny_model.single_file)[name].shape, dtype=torch.int32)
    path = rewritten(tiny_model, tmp_path, name, ints)
    with pytest.raises(CheckpointError, match="stored as I32, not as floating point"):
        models.load_pipeline(spec_of(tiny_model, path))


def test_a_file_cut_inside_a_tensor_is_a_checkpoint_error(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    """The header check catches truncation before loading; if the file shrinks after it (an
    upload still running), reading still fails cleanly."""
    plan = models._plan(spec_of(tiny_model), allow_pickle=False)
    assert plan.header is not None
    cut = tmp_path / "cut.safetensors"
    data = tiny_model.single_file.read_bytes()
    cut.write_bytes(data)
    plan = dataclasses.replace(plan, header=dataclasses.replace(plan.header, path=cut))
    with cut.open("r+b") as f:
        f.truncate(len(data) // 2)
    with pytest.raises(ValueError, match="ended inside"):
        models._load_single_file(plan, torch.float32)


# --- bf16 against fp32 -------------------------------------------------------------------------


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_bf16_generates_close_to_fp32(tiny_model: TinyModel) -> None:
    spec = ModelSpec("tiny", str(tiny_model.single_file), config=tiny_model.folder)
    request = GenerationRequest(
        "a lighthouse at dusk", "fog", 64, 64, 8, 7.0, 42, "Euler", 2, "tiny"
    )
    images = {}
    for dtype in ("float32", "bfloat16"):
        generator = DiffusersGenerator({"tiny": spec}, RuntimeOptions(device="cpu", dtype=dtype))
        [result] = generator.generate([request])
        assert result is not None
        assert generator.load("tiny").pipe.unet.dtype == getattr(torch, dtype)
        images[dtype] = [pixels(image.png) for image in result.images]
    for fp32, bf16 in zip(images["float32"], images["bfloat16"], strict=True):
        assert bf16.std() > 1  # an image, not a flat (NaN-zeroed) square
        difference = np.abs(fp32 - bf16)
        assert difference.mean() < 3, difference.mean()  # measured: about 0.6 levels of 255
        assert difference.max() < 48, difference.max()
