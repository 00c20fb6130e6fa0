"""Tiny random LoRAs and textual-inversion embeddings for the tiny models of `inference.testing`.

`save_tiny_lora` writes a LoRA whose layer names and shapes match a tiny model's attention and
text-encoder layers, in the Kohya/A1111 layout (what sd-scripts writes and what A1111 and
ComfyUI read: `lora_unet_…`, `lora_te_…`, `.lora_down/.lora_up/.alpha`; SD 1.x/2.x UNets under
diffusers' block names, SDXL's under the original `input_blocks`/`output_blocks` ones, as
sd-scripts names them) or in diffusers' PEFT layout (`unet.….lora_A.weight`). The same seed
gives the same low-rank update in both layouts, so the two files must produce the same image.

`save_tiny_embedding` writes a textual-inversion embedding as A1111 and civitai ship them as
safetensors: `emb_params` (vectors x width) for SD 1.x/2.x, `clip_l` and `clip_g` for SDXL.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Literal

import torch

from inference.testing import _TINY_TEXT, build_tiny_pipeline
from inference.types import ModelFamily

LoraFormat = Literal["kohya", "diffusers"]

# The text encoders' widths in the tiny models (the second is SDXL's OpenCLIP-G stand-in).
_TINY_TEXT_WIDTH = int(_TINY_TEXT["hidden_size"])
_TINY_TEXT_2_WIDTH = 64

_UNET_TARGET = re.compile(
    r"\.transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))$"
)
_TEXT_TARGET = re.compile(r"\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


@functools.cache
def _targets(family: ModelFamily) -> dict[str, dict[str, tuple[int, int]]]:
    """(out, in) features of each Linear a LoRA adapts, per component, in diffusers names."""
    pipe = build_tiny_pipeline(family)
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    found: dict[str, dict[str, tuple[int, int]]] = {}
    for component in components:
        pattern = _UNET_TARGET if component == "unet" else _TEXT_TARGET
        found[component] = {
            name: (module.out_features, module.in_features)
            for name, module in getattr(pipe, component).named_modules()
            if isinstance(module, torch.nn.Linear) and pattern.search(name)
        }
    return found


def _sgm_unet_name(name: str, layers_per_block: int = 1) -> str:
    """A diffusers UNet module name as the original (SGM) UNet names it, as sd-scripts writes
    SDXL LoRAs: down_blocks.1.attentions.0 -> input_blocks.3.1 (for one layer per block)."""
    per_block = layers_per_block + 1
    if match := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", name):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"input_blocks.{1 + block * per_block + layer}.1.{rest}"
    if match := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", name):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"output_blocks.{block * per_block + layer}.1.{rest}"
    if match := re.match(r"mid_block\.attentions\.0\.(.*)", name):
        return f"middle_block.1.{match[1]}"
    raise ValueError(f"no SGM name for {name}")


def _kohya_name(family: ModelFamily, component: str, name: str) -> str:
    if component == "unet":
        module = _sgm_unet_name(name) if family == "sdxl" else name
        return "lora_unet_" + module.replace(".", "_")
    if component == "text_encoder":
        prefix = "lora_te1_" if family == "sdxl" else "lora_te_"
    else:
        prefix = "lora_te2_"
    return prefix + name.replace(".", "_")


def tiny_lora_state_dict(
    family: ModelFamily = "sd1",
    *,
    rank: int = 4,
    seed: int = 0,
    format: LoraFormat = "kohya",
    alpha: float | None = None,
    strength: float = 0.3,
    text_encoders: bool = True,
) -> dict[str, torch.Tensor]:
    """The tensors of a random LoRA for the tiny `family` model (see `save_tiny_lora`)."""
    if format not in ("kohya", "diffusers"):
        raise ValueError(f"unknown LoRA format {format!r}; expected 'kohya' or 'diffusers'")
    alpha = float(rank) if alpha is None else float(alpha)
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for component, layers in _targets(family).items():
        if component != "unet" and not text_encoders:
            continue
        for name, (out_features, in_features) in sorted(layers.items()):
            down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
            up = torch.randn(out_features, rank, generator=generator) * strength / rank**0.5
            if format == "kohya":
                key = _kohya_name(family, component, name)
                out[f"{key}.lora_down.weight"] = down
                out[f"{key}.lora_up.weight"] = up
                out[f"{key}.alpha"] = torch.tensor(alpha)
            else:  # PEFT's layout has no per-layer alpha: fold alpha/rank into B
                out[f"{component}.{name}.lora_A.weight"] = down
                out[f"{component}.{name}.lora_B.weight"] = up * (alpha / rank)
    return out


def save_tiny_lora(
    path: Path,
    family: ModelFamily = "sd1",
    *,
    rank: int = 4,
    seed: int = 0,
    format: LoraFormat = "kohya",
    alpha: float | None = None,
    strength: float = 0.3,
    text_encoders: bool = True,
) -> Path:
    """Write a random LoRA for the tiny `family` model as a `.safetensors` file.

    It adapts every attention projection and feed-forward layer of the UNet's transformer
    blocks and (with `text_encoders`) every attention and MLP layer of the text encoder(s).
    `alpha` (Kohya's network alpha, default `rank`) scales the update by alpha / rank;
    `strength` scales the random up-projections (how far the LoRA moves the image).
    """
    from safetensors.torch import save_file

    tensors = tiny_lora_state_dict(
        family,
        rank=rank,
        seed=seed,
        format=format,
        alpha=alpha,
        strength=strength,
        text_encoders=text_encoders,
    )
    metadata = {"format": "pt"}
    if format == "kohya":  # what sd-scripts writes, and what A1111 reads the family from
        metadata |= {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(rank),
            "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[
                family
            ],
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def save_tiny_embedding(
    path: Path, family: ModelFamily = "sd1", *, vectors: int = 2, seed: int = 0
) -> Path:
    """Write a random textual-inversion embedding of `vectors` tokens for the tiny `family`
    model: `emb_params` for SD 1.x/2.x, `clip_l` and `clip_g` (one per text encoder) for SDXL.
    Its vectors are larger than the model's own token embeddings, so their effect shows."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)

    def vectors_of(width: int) -> torch.Tensor:
        return torch.randn(vectors, width, generator=generator) * 0.5

    if family == "sdxl":
        tensors = {"clip_g": vectors_of(_TINY_TEXT_2_WIDTH), "clip_l": vectors_of(_TINY_TEXT_WIDTH)}
    else:
        tensors = {"emb_params": vectors_of(_TINY_TEXT_WIDTH)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def tiny_lora_spec_toml(path: Path, family: ModelFamily, name: str = "tiny") -> str:
    """A `[[loras]]` config entry for a tiny LoRA (JSON strings are valid TOML strings)."""
    return (
        "[[loras]]\n"
        f"name = {json.dumps(name)}\n"
        f"source = {json.dumps(str(path))}\n"
        f"family = {json.dumps(family)}\n"
        'triggers = ["tiny"]\n'
    )


# --- a random LoRA for any loaded pipeline (full-size benchmarks) --------------------------

_RANDOM_UNET_TARGET = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_RANDOM_TEXT_TARGET = re.compile(r"\.self_attn\.(q|k|v|out)_proj$")


def random_lora_state_dict(
    pipe: object, *, rank: int = 8, seed: int = 0, strength: float = 0.3
) -> dict[str, torch.Tensor]:
    """The tensors of a random LoRA for `pipe`'s own UNet and text encoder(s) (see
    `save_random_lora`), in diffusers' PEFT layout: `unet.<module>.lora_A.weight` (rank x in)
    and `.lora_B.weight` (out x rank), likewise under `text_encoder.` and `text_encoder_2.`."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        pattern = _RANDOM_UNET_TARGET if component == "unet" else _RANDOM_TEXT_TARGET
        layers: dict[str, tuple[int, int]] = {}
        for name, layer in module.named_modules():
            # A pipeline that already has LoRAs keeps each original Linear as `.base_layer`.
            name = name.removesuffix(".base_layer")
            if isinstance(layer, torch.nn.Linear) and pattern.search(name):
                layers[name] = (layer.out_features, layer.in_features)
        if not layers:
            raise ValueError(f"{component} has no attention projections to adapt")
        for name, (out_features, in_features) in sorted(layers.items()):
            down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
            up = torch.randn(out_features, rank, generator=generator) * strength / rank**0.5
            out[f"{component}.{name}.lora_A.weight"] = down
            out[f"{component}.{name}.lora_B.weight"] = up
    return out


def save_random_lora(
    pipe: object, path: Path, *, rank: int = 8, seed: int = 0, strength: float = 0.3
) -> Path:
    """Write a random LoRA for any loaded pipeline (tiny or full size, SD 1.x/2.x or SDXL) as a
    `.safetensors` file that `load_lora_weights` (and so `AddOns`) reads.

    It adapts the attention projections the pipeline itself has: the UNet's `attn1`/`attn2`
    `to_q`/`to_k`/`to_v`/`to_out.0` and each text encoder's `self_attn` `q/k/v/out_proj`, with
    the shapes read from its modules (PEFT layout, float32). `strength` scales the random
    up-projections (how far the LoRA moves the image); the same seed gives the same file.
    The family is recognised from the keys (cross-attention width, a second text encoder).
    """
    from safetensors.torch import save_file

    tensors = random_lora_state_dict(pipe, rank=rank, seed=seed, strength=strength)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    return path
