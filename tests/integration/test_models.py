"""The tiny random models through the real loading code: diffusers folder and single file.

diffusers loads single files with strict=False, so every test that loads compares every
tensor (and the key sets) with the weights that were saved: a weight that silently kept its
random initial value fails here.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from inference.checkpoints import CONFIGS_DIR, read_safetensors_header
from inference.errors import CheckpointError, HubUnavailableError, UnsafeCheckpointError
from inference.models import inspect_model, load_pipeline
from inference.testing import (
    TINY_NATIVE_SIZE,
    TinyModel,
    build_tiny_pipeline,
    ldm_state_dict,
    tiny_model_spec_toml,
    write_fake_checkpoint,
)
from inference.types import ModelSpec

_WEIGHT_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
    "text_encoder_2": "text_encoder_2/model.safetensors",
}


def assert_same_weights(pipe: object, tiny: TinyModel) -> None:
    """Every tensor of every network equals what save_pretrained wrote, and nothing else."""
    components = ["unet", "vae", "text_encoder"]
    if tiny.family == "sdxl":
        components.append("text_encoder_2")
    for component in components:
        saved = load_file(tiny.folder / _WEIGHT_FILES[component])
        loaded = getattr(pipe, component).state_dict()
        assert set(loaded) == set(saved), component
        for key, tensor in saved.items():
            assert torch.equal(loaded[key], tensor), f"{component}.{key}"


def generate(pipe: object) -> np.ndarray:
    out = pipe(  # type: ignore[operator]
        "a watercolor fox in the snow",
        height=TINY_NATIVE_SIZE,
        width=TINY_NATIVE_SIZE,
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    )
    return out.images


def assert_real_image(images: np.ndarray) -> None:
    assert images.shape == (1, TINY_NATIVE_SIZE, TINY_NATIVE_SIZE, 3)
    assert np.isfinite(images).all()
    assert images.std() > 0.01  # not a flat (all equal, black or NaN-zeroed) image


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (other than loopback-free local work) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --- folder and single file ----------------------------------------------------------------


def test_inspect_tiny_model(tiny_model: TinyModel) -> None:
    folder = inspect_model(ModelSpec(name="tiny", source=str(tiny_model.folder)))
    single = inspect_model(
        ModelSpec(name="tiny", source=str(tiny_model.single_file), config=tiny_model.folder)
    )
    assert (folder.source_kind, single.source_kind) == ("folder", "single_file")
    for info in (folder, single):
        assert (info.family, info.variant, info.native_size) == ("sd1", "base", TINY_NATIVE_SIZE)


def test_load_folder(tiny_model: TinyModel, no_network: None) -> None:
    pipe = load_pipeline(ModelSpec(name="tiny", source=str(tiny_model.folder)))
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    assert_same_weights(pipe, tiny_model)
    assert_real_image(generate(pipe))


def test_load_single_file(tiny_model: TinyModel, no_network: None) -> None:
    spec = ModelSpec(name="tiny", source=str(tiny_model.single_file), config=tiny_model.folder)
    pipe = load_pipeline(spec)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77
    assert_same_weights(pipe, tiny_model)
    assert_real_image(generate(pipe))


def test_single_file_has_the_original_layout(tiny_model: TinyModel) -> None:
    header = read_safetensors_header(tiny_model.single_file)
    prefixes = {key.split(".")[0] for key in header.tensors}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in header.tensors
    assert header.shape("first_stage_model.encoder.mid.attn_1.q.weight") == (32, 32, 1, 1)
    assert header.metadata["modelspec.architecture"] == "stable-diffusion-v1"


def test_tiny_model_is_deterministic(tiny_model: TinyModel) -> None:
    again = build_tiny_pipeline("sd1", seed=0)
    assert_same_weights(again, tiny_model)
    other = build_tiny_pipeline("sd1", seed=1).unet.state_dict()
    saved = load_file(tiny_model.folder / _WEIGHT_FILES["unet"])
    assert not torch.equal(other["conv_in.weight"], saved["conv_in.weight"])


def test_spec_toml(tiny_model: TinyModel) -> None:
    entry = tomllib.loads(tiny_model_spec_toml(tiny_model))["models"][0]
    assert entry["name"] == "tiny"
    spec = ModelSpec(name=entry["name"], source=entry["source"], config=Path(entry["config"]))
    assert inspect_model(spec).native_size == TINY_NATIVE_SIZE


def test_sdxl_folder_and_single_file(tiny_model_sdxl: TinyModel, no_network: None) -> None:
    tiny = tiny_model_sdxl
    header = read_safetensors_header(tiny.single_file)
    assert header.has_prefix("conditioner.embedders.0.transformer.text_model.")
    assert header.has_prefix("conditioner.embedders.1.model.transformer.resblocks.0.attn.")
    for spec in (
        ModelSpec(name="xl", source=str(tiny.folder)),
        ModelSpec(name="xl", source=str(tiny.single_file), config=tiny.folder),
    ):
        assert inspect_model(spec).family == "sdxl"
        pipe = load_pipeline(spec)
        assert type(pipe).__name__ == "StableDiffusionXLPipeline"
        assert pipe.tokenizer_2.pad_token == "!"
        assert_same_weights(pipe, tiny)
        assert_real_image(generate(pipe))


def test_sd2_single_file_keeps_v_prediction(tiny_model_sd2: TinyModel) -> None:
    tiny = tiny_model_sd2
    spec = ModelSpec(name="sd2", source=str(tiny.single_file), config=tiny.folder)
    assert inspect_model(spec).family == "sd2"
    pipe = load_pipeline(spec)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.tokenizer.pad_token == "!"
    assert_same_weights(pipe, tiny)
    assert_real_image(generate(pipe))
    override = load_pipeline(
        ModelSpec(name="sd2", source=str(tiny.folder), prediction_type="epsilon")
    )
    assert override.scheduler.config.prediction_type == "epsilon"


def test_half_precision_load(tiny_model: TinyModel) -> None:
    spec = ModelSpec(name="tiny", source=str(tiny_model.single_file), config=tiny_model.folder)
    pipe = load_pipeline(spec, torch_dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16 and pipe.vae.dtype == torch.float16


# --- broken and unsafe single files ----------------------------------------------------------


def test_incomplete_single_file_is_caught(tiny_model: TinyModel, tmp_path: Path) -> None:
    """A missing weight would load silently (strict=False) and draw noise: it must not."""
    tensors = load_file(tiny_model.single_file)
    del tensors["model.diffusion_model.output_blocks.0.0.in_layers.0.weight"]
    path = tmp_path / "incomplete.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="lacks 1 unet weights") as err:
        load_pipeline(ModelSpec(name="m", source=str(path), config=tiny_model.folder))
    assert "output_blocks.0.0.in_layers.0.weight" in str(err.value)


def test_tiny_file_against_the_shipped_config(tiny_model: TinyModel) -> None:
    with pytest.raises(CheckpointError) as err:
        load_pipeline(ModelSpec(name="m", source=str(tiny_model.single_file)))
    assert "shipped SD 1.x" in str(err.value) and "config" in str(err.value)


def test_corrupt_tensor_data_is_a_checkpoint_error(tiny_model: TinyModel, tmp_path: Path) -> None:
    tensors = load_file(tiny_model.single_file)
    name = "model.diffusion_model.output_blocks.0.0.in_layers.2.weight"
    tensors[name] = tensors[name][:, :, :1, :1].contiguous()  # a shape the UNet cannot take
    path = tmp_path / "badshape.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="could not be loaded"):
        load_pipeline(ModelSpec(name="m", source=str(path), config=tiny_model.folder))


def test_pickle_only_with_allow_pickle(tiny_model: TinyModel, tmp_path: Path) -> None:
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(tiny_model.single_file)}, path)
    spec = ModelSpec(name="m", source=str(path), config=tiny_model.folder)
    with pytest.raises(UnsafeCheckpointError):
        load_pipeline(spec)
    assert_same_weights(load_pipeline(spec, allow_pickle=True), tiny_model)


def test_hub_id_offline_on_load() -> None:
    with pytest.raises(HubUnavailableError, match="local"):
        load_pipeline(ModelSpec(name="m", source="imagine-bot-tests/no-such-model"))


# --- the shipped configs against full-size layouts -----------------------------------------


def _full_size_on_meta(family: str) -> SimpleNamespace:
    """Full-size networks from the shipped configs, on the meta device (no memory used)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS_DIR / family
    with torch.device("meta"):
        parts = {
            "unet": UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(folder / "unet")
            ),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
        }
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            )
    return SimpleNamespace(**parts)


@pytest.mark.parametrize(
    ("family", "native", "params"),
    [("sd1", 512, 859_520_964), ("sd2", 768, 865_910_724), ("sdxl", 1024, 2_567_463_684)],
)
def test_shipped_configs_match_real_layouts(
    family: str, native: int, params: int, tmp_path: Path
) -> None:
    """Shipped configs build the real networks, and diffusers reads our key names back."""
    from diffusers.loaders import single_file_utils as sfu

    nets = _full_size_on_meta(family)
    assert sum(p.numel() for p in nets.unet.parameters()) == params  # the published UNet sizes
    ldm = ldm_state_dict(nets, family)  # type: ignore[arg-type]

    # diffusers' own conversion maps every original name back to the networks' names.
    conversions = {
        "unet": sfu.convert_ldm_unet_checkpoint(ldm, dict(nets.unet.config)),
        "vae": sfu.convert_ldm_vae_checkpoint(ldm, dict(nets.vae.config)),
    }
    if family == "sd2":
        conversions["text_encoder"] = sfu.convert_open_clip_checkpoint(
            nets.text_encoder, ldm, prefix="cond_stage_model.model."
        )
    else:
        conversions["text_encoder"] = sfu.convert_ldm_clip_checkpoint(ldm)
    if family == "sdxl":
        conversions["text_encoder_2"] = sfu.convert_open_clip_checkpoint(
            nets.text_encoder_2, ldm, prefix="conditioner.embedders.1.model."
        )
    for component, converted in conversions.items():
        expected = getattr(nets, component).state_dict()
        if not hasattr(getattr(nets, component), "text_model"):  # flattened CLIPTextModel
            converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        assert set(converted) == set(expected), component
        for key, tensor in expected.items():
            assert converted[key].shape == tensor.shape, f"{component}.{key}"

    # A header-only file with the full layout passes detection and the shape checks. (Its
    # weights read as zeros, which the SD 2.x v-prediction probe would call epsilon/512 px.)
    meta = {"modelspec.architecture": "stable-diffusion-v2-768-v"} if family == "sd2" else None
    path = write_fake_checkpoint(
        tmp_path / f"full-{family}.safetensors",
        {k: tuple(v.shape) for k, v in ldm.items()},
        metadata=meta,
    )
    info = inspect_model(ModelSpec(name="full", source=str(path)))
    assert (info.family, info.native_size) == (family, native)
