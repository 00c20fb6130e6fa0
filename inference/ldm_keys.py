"""The original (LDM/CompVis) name of every diffusers weight in a single-file checkpoint.

Loading uses it to check that a file holds every weight a component expects, and
`inference.testing` uses it to write original-format single files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from inference.types import ModelFamily

# Where each component's weights live in an original-format checkpoint.
LDM_PREFIXES: Mapping[ModelFamily, Mapping[str, str]] = {
    "sd1": {
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": "cond_stage_model.transformer.",
    },
    "sd2": {
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": "cond_stage_model.model.",
    },
    "sdxl": {
        "unet": "model.diffusion_model.",
        "vae": "first_stage_model.",
        "text_encoder": "conditioner.embedders.0.transformer.",
        "text_encoder_2": "conditioner.embedders.1.model.",
    },
}
# Text encoders stored in OpenCLIP's own layout (fused qkv, resblocks) rather than HF CLIP's.
OPENCLIP_COMPONENTS = frozenset({("sd2", "text_encoder"), ("sdxl", "text_encoder_2")})


# --- diffusers key -> original key ---------------------------------------------------------

_RESNET_RENAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
_VAE_RESNET_RENAMES = (("conv_shortcut.", "nin_shortcut."),)
_VAE_ATTN_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)

_PrefixTable = list[tuple[str, str, tuple[tuple[str, str], ...]]]


def _unet_table(cfg: Mapping[str, Any]) -> _PrefixTable:
    per = int(cfg["layers_per_block"])
    downs, ups = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    table: _PrefixTable = [
        ("conv_in.", "input_blocks.0.0.", ()),
        ("time_embedding.linear_1.", "time_embed.0.", ()),
        ("time_embedding.linear_2.", "time_embed.2.", ()),
        ("add_embedding.linear_1.", "label_emb.0.0.", ()),
        ("add_embedding.linear_2.", "label_emb.0.2.", ()),
        ("conv_norm_out.", "out.0.", ()),
        ("conv_out.", "out.2.", ()),
        ("mid_block.resnets.0.", "middle_block.0.", _RESNET_RENAMES),
        ("mid_block.attentions.0.", "middle_block.1.", ()),
        ("mid_block.resnets.1.", "middle_block.2.", _RESNET_RENAMES),
    ]
    for b in range(len(downs)):
        for i in range(per):
            n = 1 + b * (per + 1) + i
            table.append((f"down_blocks.{b}.resnets.{i}.", f"input_blocks.{n}.0.", _RESNET_RENAMES))
            table.append((f"down_blocks.{b}.attentions.{i}.", f"input_blocks.{n}.1.", ()))
        n = 1 + b * (per + 1) + per
        table.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{n}.0.op.", ()))
    for b, kind in enumerate(ups):
        for i in range(per + 1):
            n = b * (per + 1) + i
            table.append((f"up_blocks.{b}.resnets.{i}.", f"output_blocks.{n}.0.", _RESNET_RENAMES))
            table.append((f"up_blocks.{b}.attentions.{i}.", f"output_blocks.{n}.1.", ()))
        # The upsampler follows the last layer's attention, if the block has attention.
        slot = 2 if "CrossAttn" in kind else 1
        n = b * (per + 1) + per
        table.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{n}.{slot}.conv.", ()))
    return table


def _vae_table(cfg: Mapping[str, Any]) -> _PrefixTable:
    levels = len(cfg["down_block_types"])
    table: _PrefixTable = [
        ("encoder.conv_norm_out.", "encoder.norm_out.", ()),
        ("decoder.conv_norm_out.", "decoder.norm_out.", ()),
    ]
    for part in ("encoder", "decoder"):
        table += [
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET_RENAMES),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET_RENAMES),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTN_RENAMES),
        ]
    for b in range(levels):
        table.append(
            (f"encoder.down_blocks.{b}.resnets.", f"encoder.down.{b}.block.", _VAE_RESNET_RENAMES)
        )
        table.append(
            (f"encoder.down_blocks.{b}.downsamplers.0.", f"encoder.down.{b}.downsample.", ())
        )
        # The decoder's up blocks are numbered from the other end in the original layout.
        r = levels - 1 - b
        table.append(
            (f"decoder.up_blocks.{b}.resnets.", f"decoder.up.{r}.block.", _VAE_RESNET_RENAMES)
        )
        table.append((f"decoder.up_blocks.{b}.upsamplers.0.", f"decoder.up.{r}.upsample.", ()))
    return table


def _apply(table: _PrefixTable, key: str) -> str:
    best: tuple[str, str, tuple[tuple[str, str], ...]] | None = None
    for entry in table:
        if key.startswith(entry[0]) and (best is None or len(entry[0]) > len(best[0])):
            best = entry
    if best is None:
        return key  # same name in both layouts (e.g. quant_conv, encoder.conv_in)
    rest = key[len(best[0]) :]
    for old, new in best[2]:
        # renames apply to one name segment: "norm1." or "<index>.conv_shortcut."
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
        if "." + old in rest:
            rest = rest.replace("." + old, "." + new, 1)
            break
    return best[1] + rest


_OPENCLIP_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_OPENCLIP_LAYER_PARTS = {
    "self_attn.q_proj.": "attn.in_proj_",
    "self_attn.k_proj.": "attn.in_proj_",
    "self_attn.v_proj.": "attn.in_proj_",
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
}


def _openclip_name(key: str) -> str:
    key = key.removeprefix("text_model.")
    if key in _OPENCLIP_TOP:
        return _OPENCLIP_TOP[key]
    m = _OPENCLIP_LAYER.fullmatch(key)
    if m:
        for old, new in _OPENCLIP_LAYER_PARTS.items():
            if m.group(2).startswith(old):
                # q/k/v are one fused tensor in OpenCLIP: in_proj_weight / in_proj_bias
                return f"transformer.resblocks.{m.group(1)}.{new}{m.group(2)[len(old) :]}"
    raise KeyError(f"no OpenCLIP name for text encoder weight {key!r}")


def _clip_name(key: str) -> str:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` level); files keep it.
    if key.startswith("text_model.") or key == "text_projection.weight":
        return key
    return "text_model." + key


class KeyNamer:
    """Maps a component's diffusers weight names to the file's original names."""

    def __init__(
        self, family: ModelFamily, component: str, config: Mapping[str, Any] | None = None
    ) -> None:
        self.prefix = LDM_PREFIXES[family][component]
        self.openclip = (family, component) in OPENCLIP_COMPONENTS
        self.component = component
        self._table: _PrefixTable = []
        if component == "unet":
            self._table = _unet_table(config or {})
        elif component == "vae":
            self._table = _vae_table(config or {})

    def __call__(self, key: str) -> str:
        if self.component in ("unet", "vae"):
            return self.prefix + _apply(self._table, key)
        return self.prefix + (_openclip_name(key) if self.openclip else _clip_name(key))
