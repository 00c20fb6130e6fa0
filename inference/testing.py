"""Tiny random-weight Stable Diffusion models for tests and smoke runs.

`build_tiny_pipeline` makes a pipeline with the real SD layout (same blocks, same key names,
the real CLIP tokenizer, an 8x VAE) but widths of 32-64, so a 64x64 image takes well under a
second on a laptop CPU. `export_single_file` writes any SD 1.x / 2.x / SDXL pipeline as an
original-format (LDM/CompVis) `.safetensors` checkpoint, the reverse of diffusers' single-file
conversion, so the single-file loading path can be tested without downloading a model.
"""

from __future__ import annotations

import json
import math
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from inference.ldm_keys import LDM_PREFIXES, KeyNamer
from inference.models import family_from_configs
from inference.tokens import clip_tokenizer
from inference.types import ModelFamily

if TYPE_CHECKING:
    from inference.models import Pipeline

TINY_NATIVE_SIZE = 64  # unet sample_size 8 x VAE scale 8

_SD_BETAS: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

_TINY_UNET_COMMON: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "norm_num_groups": 32,
}
_TINY_UNETS: dict[ModelFamily, dict[str, Any]] = {
    "sd1": {
        **_TINY_UNET_COMMON,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
    },
    "sd2": {
        **_TINY_UNET_COMMON,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "upcast_attention": True,
    },
    "sdxl": {
        **_TINY_UNET_COMMON,
        # As in SDXL: no attention at the highest resolution, several transformer layers deeper.
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2),
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "cross_attention_dim": 32 + 64,  # both text encoders' hidden states, concatenated
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + 32,  # 6 size/crop numbers + pooled
    },
}
# Four levels keep SD's 8x latent downscale (latents, previews and sizes behave as in the real
# thing); eight groups let the widths stay small.
_TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (8, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": TINY_NATIVE_SIZE,
}
_TINY_TEXT: dict[str, Any] = {
    "vocab_size": 49408,  # the real CLIP vocabulary, so prompts tokenise as they would
    "max_position_embeddings": 77,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


@dataclass(frozen=True)
class TinyModel:
    """A tiny model saved both ways: a diffusers folder and an original-format single file."""

    family: ModelFamily
    folder: Path
    single_file: Path


def build_tiny_pipeline(
    family: ModelFamily = "sd1", seed: int = 0, *, inpainting: bool = False
) -> Pipeline:
    """A random-weight pipeline with real SD layout and tiny widths; same seed, same weights.

    With `inpainting`, the UNet takes 9 input channels (latents, mask, masked picture's
    latents) as in SD 1.5 / SD 2 / SDXL inpainting checkpoints; the pipeline is still the
    text-to-image class, which is how imagine-bot loads such a model."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if family not in _TINY_UNETS:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(_TINY_UNETS)}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**_TINY_UNETS[family], "in_channels": 9 if inpainting else 4})
    vae = AutoencoderKL(**_TINY_VAE, scaling_factor=0.13025 if family == "sdxl" else 0.18215)
    prediction = "v_prediction" if family == "sd2" else "epsilon"
    scheduler = EulerDiscreteScheduler(**_SD_BETAS, prediction_type=prediction)
    act = "gelu" if family == "sd2" else "quick_gelu"  # OpenCLIP uses GELU, OpenAI CLIP quick
    text_encoder = CLIPTextModel(CLIPTextConfig(**_TINY_TEXT, hidden_act=act))
    pad = "!" if family == "sd2" else "<|endoftext|>"

    if family != "sdxl":
        pipe: Pipeline = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(pad_token=pad),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        # The second encoder must differ in width from the first: diffusers tells the two
        # apart in a single file by the width of their position embeddings.
        text_2 = {**_TINY_TEXT, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3}
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_2, hidden_act="gelu")),
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(pad_token="!"),
            unet=unet,
            scheduler=scheduler,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_family(pipe: Pipeline) -> ModelFamily:
    return family_from_configs(type(pipe).__name__, dict(pipe.unet.config))


def ldm_state_dict(pipe: Pipeline, family: ModelFamily | None = None) -> dict[str, torch.Tensor]:
    """The pipeline's weights under original (LDM/CompVis, OpenCLIP) names and shapes."""
    family = family or pipeline_family(pipe)
    out: dict[str, torch.Tensor] = {}
    for component in LDM_PREFIXES[family]:
        module = getattr(pipe, component)
        config = dict(module.config) if component in ("unet", "vae") else None
        namer = KeyNamer(family, component, config)
        qkv: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        for key, tensor in module.state_dict().items():
            name = namer(key)
            tensor = tensor.detach()
            if name.endswith((".in_proj_weight", ".in_proj_bias")):
                # OpenCLIP keeps q, k and v in one tensor: "…self_attn.q_proj.weight" -> "q"
                qkv[name][key.rsplit(".", 2)[-2][0]] = tensor
                continue
            if name.endswith("text_projection"):
                tensor = tensor.T  # OpenCLIP multiplies x @ P; a Linear stores P transposed
            elif component == "vae" and ".mid.attn_1." in name and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]  # the LDM VAE's attention uses 1x1 convs
            out[name] = tensor.contiguous().clone()
        for name, parts in qkv.items():
            out[name] = torch.cat([parts["q"], parts["k"], parts["v"]]).contiguous()
    return out


_ARCHITECTURES = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}


def export_single_file(
    pipe: Pipeline,
    path: Path,
    *,
    family: ModelFamily | None = None,
    title: str | None = None,
) -> Path:
    """Write the pipeline as an original-format .safetensors checkpoint (with modelspec metadata).

    `StableDiffusion(XL)Pipeline.from_single_file(path, config=<the pipeline's
    save_pretrained folder>)` rebuilds the same weights.
    """
    from safetensors.torch import save_file

    family = family or pipeline_family(pipe)
    architecture = _ARCHITECTURES[family]
    if family == "sd2" and pipe.scheduler.config.get("prediction_type") != "v_prediction":
        architecture = "stable-diffusion-v2-512"
    metadata = {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": title or f"{family} model",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm_state_dict(pipe, family), str(path), metadata=metadata)
    return path


def save_tiny_model(
    directory: Path, family: ModelFamily = "sd1", seed: int = 0, *, inpainting: bool = False
) -> TinyModel:
    """Build a tiny model and save it as `tiny-<family>/` and `tiny-<family>.safetensors`.

    With `inpainting`, a tiny inpainting model (9-channel UNet) saved as
    `tiny-<family>-inpainting/` (a StableDiffusion(XL)InpaintPipeline folder, as inpainting
    models are published) and `tiny-<family>-inpainting.safetensors`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(family, seed, inpainting=inpainting)
    stem = f"tiny-{family}-inpainting" if inpainting else f"tiny-{family}"
    folder = directory / stem
    if inpainting:
        from diffusers import AutoPipelineForInpainting

        AutoPipelineForInpainting.from_pipe(pipe).save_pretrained(folder, safe_serialization=True)
    else:
        pipe.save_pretrained(folder, safe_serialization=True)
    kind = "inpainting " if inpainting else ""
    single_file = export_single_file(
        pipe,
        directory / f"{stem}.safetensors",
        family=family,
        title=f"imagine-bot tiny random {family} {kind}(seed {seed})",
    )
    return TinyModel(family=family, folder=folder.resolve(), single_file=single_file.resolve())


def tiny_model_spec_toml(tiny: TinyModel, name: str = "tiny") -> str:
    """A `[[models]]` config entry for the tiny model's single file."""
    # JSON string escapes are valid TOML basic-string escapes (Windows backslashes included).
    return (
        "[[models]]\n"
        f"name = {json.dumps(name)}\n"
        f"source = {json.dumps(str(tiny.single_file))}\n"
        f"config = {json.dumps(str(tiny.folder))}\n"
    )


_FAKE_DTYPES = {"F16": 2, "F32": 4}


def write_fake_checkpoint(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    metadata: Mapping[str, str] | None = None,
    values: Mapping[str, Sequence[float]] | None = None,
    dtype: str = "F16",
) -> Path:
    """A valid .safetensors file with the given tensor shapes, full-size yet almost free.

    Only the header and the tensors in `values` are written; the rest of the file is a hole
    (zeros that take no disk space on Linux), so a full-size SDXL layout costs a few KiB. Good
    for anything that reads headers: detection, shape checks, error messages.
    """
    import numpy as np

    size = _FAKE_DTYPES[dtype]
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in shapes.items():
        end = offset + math.prod(shape) * size
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors does
    path = Path(path)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, vals in (values or {}).items():
            f.seek(8 + len(raw) + header[key]["data_offsets"][0])
            f.write(np.asarray(vals, dtype="<f2" if dtype == "F16" else "<f4").tobytes())
        f.truncate(8 + len(raw) + offset)
    return path


# --- upscaler models -------------------------------------------------------------------------


def import_spandrel_for_tests() -> Any:
    """spandrel, imported even where torchvision cannot be (the CPU-only torch of CI).

    spandrel imports torchvision at start-up only for two architectures' helpers (LaMa's
    rotate, RestoreFormer's normalize); ESRGAN never calls them. Where `import torchvision`
    fails, stand-ins for those three names are visible during spandrel's import alone and
    removed right after, so nothing else (transformers checks for torchvision) sees them.
    Raises ImportError if spandrel itself is not installed.
    """
    import importlib
    import sys
    import types

    try:
        return importlib.import_module("spandrel")
    except ImportError as error:
        if not str(getattr(error, "name", "")).startswith("torchvision"):
            raise

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is not installed")

    class InterpolationMode:
        BILINEAR = "bilinear"

    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.__dict__.update(
        InterpolationMode=InterpolationMode, rotate=unavailable, normalize=unavailable
    )
    package.__dict__["transforms"] = transforms
    transforms.__dict__["functional"] = functional
    stubs = {m.__name__: m for m in (package, transforms, functional)}
    sys.modules.update(stubs)
    try:
        return importlib.import_module("spandrel")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def save_tiny_upscaler(path: Path, *, scale: int = 2, seed: int = 0) -> Path:
    """A random-weight ESRGAN (RRDBNet: 8 features, 1 block, growth 32) as `.safetensors`, in
    the classic ESRGAN key layout that spandrel recognises; ×`scale` (2 or 4). 0.9 MB."""
    from safetensors.torch import save_file

    if scale not in (2, 4):
        raise ValueError("scale must be 2 or 4")
    generator = torch.Generator().manual_seed(seed)
    features, growth, blocks = 8, 32, 1  # growth: spandrel reads ESRGAN as 32 wide
    tensors: dict[str, torch.Tensor] = {}

    def conv(name: str, inputs: int, outputs: int) -> None:
        weight = torch.randn(outputs, inputs, 3, 3, generator=generator) * 0.1
        tensors[f"{name}.weight"] = weight
        tensors[f"{name}.bias"] = torch.zeros(outputs)

    conv("model.0", 3, features)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for i in range(1, 6):
                outputs = features if i == 5 else growth
                inputs = features + (i - 1) * growth
                conv(f"model.1.sub.{block}.RDB{rdb}.conv{i}.0", inputs, outputs)
    conv(f"model.1.sub.{blocks}", features, features)
    # Each ×2 is an upsample, a conv and an activation: model.3, model.6, ...
    index = 3
    for _ in range(scale.bit_length() - 1):
        conv(f"model.{index}", features, features)
        index += 3
    conv(f"model.{index - 1}", features, features)  # the HR conv
    conv(f"model.{index + 1}", features, 3)  # the last conv, after an activation
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path
