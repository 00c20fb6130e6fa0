"""Single-file checkpoints read without loading their weights.

A `.safetensors` file starts with an 8-byte little-endian header length and a JSON header that
names every tensor with its dtype, shape and byte range. That is enough to tell SD 1.x, SD 2.x
and SDXL apart, to check the file is whole, and to check its shapes against an architecture
config before diffusers spends seconds (and gigabytes) loading it.

`missing_weights` (with `inference.ldm_keys`) proves that no weight was silently left at its
random initial value: diffusers loads single files with strict=False.

No torch import here: the bot can inspect models at start-up cheaply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import CheckpointError, UnsafeCheckpointError
from inference.ldm_keys import LDM_PREFIXES, OPENCLIP_COMPONENTS, KeyNamer
from inference.types import ModelFamily, ModelVariant, PredictionType, SourceKind

logger = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})
CHECKPOINT_SUFFIXES = frozenset({".safetensors", ".sft", *PICKLE_SUFFIXES})

FAMILY_NAMES: Mapping[ModelFamily, str] = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}

_HEADER_LIMIT = 100 * 1024 * 1024  # real headers are < 1 MiB; a bigger "length" is garbage
_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
_CONVERT_HINT = (
    "convert it to .safetensors with a tool you trust, e.g. "
    '`python -c "import torch, safetensors.torch as s; '
    "sd = torch.load('in.ckpt', weights_only=True); sd = sd.get('state_dict', sd); "
    "s.save_file({k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}, "
    "'out.safetensors')\"`"
)


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int = -1  # byte range inside the data section; -1 when not known (pickles)
    end: int = -1


@dataclass(frozen=True)
class CheckpointHeader:
    """The names, shapes and metadata of a checkpoint's tensors: no weights."""

    path: Path
    tensors: Mapping[str, TensorEntry]
    metadata: Mapping[str, str] = field(default_factory=dict)
    data_start: int = -1  # file offset of the data section (safetensors only)

    def shape(self, key: str) -> tuple[int, ...] | None:
        entry = self.tensors.get(key)
        return entry.shape if entry else None

    def has_prefix(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.tensors)


# --- what a source names ------------------------------------------------------------------

# One hub id part: letters, digits, `_`, `-`, `.`; starting and ending with a letter, digit or
# `_` (huggingface_hub's validate_repo_id; it also refuses `--` and `..`).
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")
_HUB_NAME_MAX = 96
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")


def is_hub_id(text: str) -> bool:
    """`owner/name` as the Hugging Face hub spells it: exactly one slash, dots allowed
    (`stabilityai/stable-diffusion-xl-base-1.0`). Says nothing about whether it exists."""
    return (
        _HUB_ID.fullmatch(text) is not None
        and "--" not in text
        and ".." not in text
        and len(text.partition("/")[2]) <= _HUB_NAME_MAX
    )


def _written_as_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~"))
        or text in (".", "..")
        or "\\" in text
        or _WINDOWS_DRIVE.match(text) is not None
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long for the file system
        return False


def locate_source(source: str, base: Path | None = None) -> Path | str:
    """The one place that decides what a model `source` names: a local path (returned as a
    Path; a relative one is joined to `base` when given, else left relative to the current
    folder) or a Hugging Face hub id (returned unchanged, as a str). In order:

    1. a path that exists is that path;
    2. a name ending in a checkpoint extension (.safetensors, .ckpt, .pt, .pth, .bin, .sft) is
       a file, present or not;
    3. one written as a path (starting with /, ./, ../ or ~, with a backslash, or with a
       Windows drive such as C:) is a path;
    4. `owner/name` with hub-legal characters is a hub id, dots included;
    5. anything else is a path.

    Reads nothing but whether the path exists, so the bot's settings can call it too.
    """
    path = Path(source)
    with contextlib.suppress(RuntimeError):  # "~someone" with no such user: a literal name
        path = path.expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if _exists(path):
        return path
    if source.lower().endswith(tuple(CHECKPOINT_SUFFIXES)) or _written_as_path(source):
        return path
    if is_hub_id(source):
        return source
    return path


def classify_source(source: str, base: Path | None = None) -> tuple[SourceKind, Path | str]:
    """'folder' (diffusers layout), 'single_file' or 'hub', with the path or hub id
    (`locate_source` decides which; `base` as there).

    Raises CheckpointError when `source` names a path that does not exist or is not usable.
    """
    location = locate_source(source, base)
    if isinstance(location, str):
        return "hub", location
    path = location
    try:
        if path.is_dir():
            if (path / "model_index.json").is_file():
                return "folder", path
            raise CheckpointError(
                f"{path} is a folder but not a diffusers model (it has no model_index.json): "
                "point `source` at a diffusers folder or at a .safetensors checkpoint file."
            )
        if path.is_file():
            return "single_file", path
    except OSError as exc:
        raise CheckpointError(f"model source {source}: cannot read {path}: {exc}.") from exc
    what = "file" if source.lower().endswith(tuple(CHECKPOINT_SUFFIXES)) else "folder"
    start = base if base is not None else Path.cwd()
    raise CheckpointError(
        f"model source {source}: missing {what}: {path.absolute()} does not exist. Check "
        f"the path (relative paths start from {start}), or, for a hub model, give its id as "
        "'owner/name'."
    )


# --- reading -------------------------------------------------------------------------------


def read_checkpoint_header(path: Path, *, allow_pickle: bool = False) -> CheckpointHeader:
    """Read a checkpoint's tensor names and shapes, refusing pickles unless allowed."""
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint file {path} does not exist: check the path in the model's `source`."
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path.name} is a pickle checkpoint ({path.suffix}): loading it can run "
                f"arbitrary code, so it is refused. Use a .safetensors version of the model, or "
                f"{_CONVERT_HINT}."
            )
        return read_pickle_header(path)
    return read_safetensors_header(path)


def read_safetensors_header(path: Path) -> CheckpointHeader:
    """Parse and check a safetensors header; raises CheckpointError if the file is not whole."""
    redownload = "download the file again (or re-export it)"
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path.name} is empty or truncated ({size} bytes): {redownload}."
                )
            (length,) = struct.unpack("<Q", head)
            if length > _HEADER_LIMIT or length > size - 8:
                raise CheckpointError(_not_safetensors_message(path, head, length, size))
            raw = f.read(length)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}.") from exc

    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path.name} has a corrupt safetensors header ({exc}): {redownload}."
        ) from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a corrupt safetensors header: {redownload}.")

    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorEntry] = {}
    data_size = size - 8 - length
    try:
        for key, info in header.items():
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
            expected = math.prod(shape) * _DTYPE_SIZES.get(dtype, 0)
            if _DTYPE_SIZES.get(dtype) is not None and end - start != expected:
                raise CheckpointError(
                    f"{path.name} is corrupt: tensor {key} should take {expected} bytes but its "
                    f"header says {end - start}: {redownload}."
                )
            if end > data_size or start < 0 or start > end:
                raise CheckpointError(
                    f"{path.name} is truncated: tensor {key} ends at byte {end} of the data but "
                    f"the file holds only {data_size} data bytes ({size} bytes in all): "
                    f"{redownload}."
                )
            tensors[key] = TensorEntry(dtype, shape, start, end)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path.name} has a corrupt safetensors header (bad entry: {exc}): {redownload}."
        ) from exc
    if not tensors:
        raise CheckpointError(f"{path.name} holds no tensors: {redownload}.")
    meta = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    return CheckpointHeader(path, tensors, meta, data_start=8 + length)


def _not_safetensors_message(path: Path, head: bytes, length: int, size: int) -> str:
    text = head.lstrip()[:8].lower()
    if text.startswith(b"version"):
        why = "it is a Git LFS pointer, not the weights: run `git lfs pull` where you cloned it"
    elif text.startswith((b"<", b"{")):
        why = "it is text (a web page or an error message?), not a model: download it again"
    elif length <= _HEADER_LIMIT:
        why = (
            f"its header says {length} bytes but the file has only {size}: it is truncated, "
            "download it again"
        )
    else:
        why = "it does not start with a safetensors header: download it again"
    return f"{path.name} is not a readable .safetensors checkpoint: {why}."


def read_pickle_header(path: Path) -> CheckpointHeader:
    """Shapes from a pickle checkpoint, loaded with torch's restricted (weights-only) unpickler."""
    tensors = {
        key: TensorEntry(str(value.dtype), tuple(value.shape))
        for key, value in load_pickle_state_dict(path).items()
    }
    return CheckpointHeader(path, tensors)


def load_pickle_state_dict(path: Path) -> dict[str, Any]:
    """A pickle checkpoint's tensors by name, through torch's weights-only unpickler and
    memory-mapped where the format allows (call only for explicitly allowed pickles)."""
    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # old non-zip pickles cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types; all mean "unusable"
        raise CheckpointError(
            f"{path.name} cannot be read as tensors only ({type(exc).__name__}): it may hold "
            f"Python objects besides weights, or be corrupt; {_CONVERT_HINT}."
        ) from exc
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors.")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_tensor_values(header: CheckpointHeader, key: str) -> list[float] | None:
    """One (small) tensor's values as floats, read straight from a safetensors file."""
    import numpy as np

    entry = header.tensors.get(key)
    if entry is None or header.data_start < 0 or entry.dtype not in ("F32", "F16", "BF16"):
        return None
    with header.path.open("rb") as f:
        f.seek(header.data_start + entry.start)
        raw = f.read(entry.end - entry.start)
    if entry.dtype == "BF16":  # numpy has no bfloat16: widen to float32 bit patterns
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, dtype="<f4" if entry.dtype == "F32" else "<f2")
    return [float(v) for v in values]


# --- recognising -----------------------------------------------------------------------------


def detect_family(header: CheckpointHeader) -> ModelFamily:
    """SD 1.x / SD 2.x / SDXL from the key layout; CheckpointError for anything else."""
    name = header.path.name
    if header.has_prefix("conditioner.embedders.1.model."):
        return "sdxl"
    if header.has_prefix("conditioner.embedders.0.model."):
        raise CheckpointError(
            f"{name} is an SDXL refiner, which only refines other images; imagine-bot needs a "
            "text-to-image model such as SDXL base."
        )
    if header.has_prefix("cond_stage_model.model."):
        return "sd2"
    if header.has_prefix("cond_stage_model.transformer."):
        return "sd1"
    raise CheckpointError(_unknown_layout_message(header))


def _unknown_layout_message(header: CheckpointHeader) -> str:
    keys = list(header.tensors)
    name = header.path.name
    if any("lora_" in k or ".lora." in k or "lora_A" in k for k in keys):
        return (
            f"{name} is a LoRA, not a full model: imagine-bot needs a full checkpoint as the "
            "model's `source`."
        )
    if any(k.startswith(("string_to_param", "emb_params", "clip_l", "clip_g")) for k in keys):
        return f"{name} is a textual-inversion embedding, not a full model."
    if header.has_prefix("model.diffusion_model."):
        return (
            f"{name} holds a UNet but no text encoder weights: use a full checkpoint (UNet, VAE "
            "and text encoder in one file), or a diffusers folder as the model's `source`."
        )
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return f"{name} looks like a VAE on its own, not a full model."
    sample = ", ".join(sorted(keys)[:3])
    return (
        f"{name} has a key layout imagine-bot does not recognise (e.g. {sample}). Recognised "
        "single-file layouts: SD 1.x (cond_stage_model.transformer.*), SD 2.x "
        "(cond_stage_model.model.*) and SDXL base (conditioner.embedders.0/1.*), each with "
        "model.diffusion_model.* and first_stage_model.*. For another Stable Diffusion "
        "architecture, convert the model to a diffusers folder and use that folder as `source`, "
        'or give its architecture with `config = "<diffusers folder>"`.'
    )


def check_components(header: CheckpointHeader, family: ModelFamily) -> None:
    """Every component the pipeline needs has weights in the file."""
    labels = {
        "unet": "UNet",
        "vae": "VAE",
        "text_encoder": "text encoder",
        "text_encoder_2": "second text encoder",
    }
    missing = [
        f"{labels[c]} ({prefix}*)"
        for c, prefix in LDM_PREFIXES[family].items()
        if not header.has_prefix(prefix)
    ]
    if missing:
        raise CheckpointError(
            f"{header.path.name} looks like {FAMILY_NAMES[family]} but has no "
            f"{' and no '.join(missing)} weights: it is incomplete. Use a full checkpoint or a "
            "diffusers folder as the model's `source`."
        )


TEXT_TO_IMAGE_CHANNELS = 4
# An inpainting UNet reads the noisy latents (4), the mask (1) and the masked picture's
# latents (4), stacked: its first convolution has 9 input channels.
INPAINTING_CHANNELS = 9
_UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def unet_input_channels(header: CheckpointHeader) -> int | None:
    """The number of input channels of the file's UNet (4: text-to-image; 9: inpainting), or
    None when the file has no (4-dimensional) UNet input convolution."""
    shape = header.shape(_UNET_CONV_IN)
    return shape[1] if shape is not None and len(shape) == 4 else None


def is_inpainting_checkpoint(header: CheckpointHeader) -> bool:
    """True for an inpainting checkpoint (SD 1.5 / SD 2 / SDXL inpainting): a 9-channel UNet."""
    return unet_input_channels(header) == INPAINTING_CHANNELS


def load_config_json(config_dir: Path, sub: str, filename: str = "config.json") -> dict[str, Any]:
    path = config_dir / sub / filename
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"the architecture config folder {config_dir} has no {sub}/{filename}: point "
            "`config` at a complete diffusers-layout folder."
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}.") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object.")
    return data


def check_shapes(
    header: CheckpointHeader,
    family: ModelFamily,
    config_dir: Path,
    *,
    shipped: bool,
    unet_in_channels: int | None = None,
) -> None:
    """Compare a handful of telling shapes with the architecture config in `config_dir`.

    A few tensors pin down channel widths, depth and text width; a mismatch here would
    otherwise surface as a long diffusers traceback (or worse, as a silently partial load).
    `unet_in_channels` overrides the config's (an inpainting file checked against the
    text-to-image architecture it shares everything else with).
    """
    unet_config = load_config_json(config_dir, "unet")
    if unet_in_channels is not None:
        unet_config["in_channels"] = unet_in_channels
    problems = [
        *_unet_problems(header, unet_config),
        *_vae_problems(header, load_config_json(config_dir, "vae")),
    ]
    for component, prefix in LDM_PREFIXES[family].items():
        if component.startswith("text_encoder"):
            te_config = load_config_json(config_dir, component)
            openclip = (family, component) in OPENCLIP_COMPONENTS
            problems += _text_problems(header, prefix, te_config, openclip, component)
    if not problems:
        return
    where = (
        f"the shipped {FAMILY_NAMES[family]} architecture"
        if shipped
        else f"the architecture in {config_dir}"
    )
    hint = (
        'If it is a custom or scaled-down model, set `config = "<diffusers folder with its '
        'architecture>"` for this model.'
        if shipped
        else "Point `config` at the folder of the architecture this checkpoint was made with."
    )
    channels = unet_input_channels(header)
    if channels is not None and channels not in (TEXT_TO_IMAGE_CHANNELS, INPAINTING_CHANNELS):
        hint = (
            f"Its UNet takes {channels} input channels: imagine-bot runs text-to-image (4) and "
            "inpainting (9) models, not other kinds such as InstructPix2Pix (8)."
        )
    shown = "; ".join(problems[:3]) + (
        f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    )
    raise CheckpointError(f"{header.path.name} does not match {where}: {shown}. {hint}")


def _expect(
    header: CheckpointHeader, key: str, expected: tuple[int, ...], what: str
) -> Iterable[str]:
    actual = header.shape(key)
    if actual is None:
        yield f"{what} ({key}) is missing"
    elif actual != expected:
        yield f"{what} is {list(actual)}, expected {list(expected)}"


def _unet_problems(header: CheckpointHeader, cfg: Mapping[str, Any]) -> list[str]:
    p = LDM_PREFIXES["sd1"]["unet"]
    channels = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    c0, c_last = channels[0], channels[-1]
    kernel = int(cfg.get("conv_in_kernel", 3))
    time_dim = int(cfg.get("time_embedding_dim") or c0 * 4)
    problems = [
        *_expect(
            header,
            p + "input_blocks.0.0.weight",
            (c0, int(cfg.get("in_channels", 4)), kernel, kernel),
            "UNet input conv",
        ),
        *_expect(
            header,
            p + "out.2.weight",
            (int(cfg.get("out_channels", 4)), c0, 3, 3),
            "UNet output conv",
        ),
        *_expect(header, p + "time_embed.0.weight", (time_dim, c0), "UNet time embedding"),
        *_expect(
            header,
            p + "middle_block.0.in_layers.2.weight",
            (c_last, c_last, 3, 3),
            "UNet middle block",
        ),
    ]
    if cfg.get("addition_embed_type") == "text_time":
        problems += _expect(
            header,
            p + "label_emb.0.0.weight",
            (time_dim, int(cfg.get("projection_class_embeddings_input_dim") or 0)),
            "UNet size/crop embedding",
        )
    levels = {int(m.group(1)) for k in header.tensors if (m := _INPUT_BLOCK.match(k))}
    expected_levels = len(channels) * (int(cfg.get("layers_per_block", 2)) + 1)
    if levels and len(levels) != expected_levels:
        problems.append(f"UNet has {len(levels)} input blocks, expected {expected_levels}")
    cross = cfg.get("cross_attention_dim")
    if isinstance(cross, int):
        widths = {
            entry.shape[1]
            for k, entry in header.tensors.items()
            if k.startswith(p) and k.endswith("attn2.to_k.weight") and len(entry.shape) == 2
        }
        if widths and widths != {cross}:
            problems.append(f"UNet cross-attention width is {sorted(widths)}, expected {cross}")
    return problems


_INPUT_BLOCK = re.compile(r"model\.diffusion_model\.input_blocks\.(\d+)\.")
_TEXT_LAYER = re.compile(r"(?:encoder\.layers|transformer\.resblocks)\.(\d+)\.")


def _vae_problems(header: CheckpointHeader, cfg: Mapping[str, Any]) -> list[str]:
    p = LDM_PREFIXES["sd1"]["vae"]
    channels = list(cfg.get("block_out_channels", (128, 256, 512, 512)))
    latent = int(cfg.get("latent_channels", 4))
    return [
        *_expect(
            header,
            p + "encoder.conv_in.weight",
            (channels[0], int(cfg.get("in_channels", 3)), 3, 3),
            "VAE input conv",
        ),
        *_expect(
            header,
            p + "decoder.conv_out.weight",
            (int(cfg.get("out_channels", 3)), channels[0], 3, 3),
            "VAE output conv",
        ),
        *_expect(
            header,
            p + "encoder.conv_out.weight",
            (2 * latent, channels[-1], 3, 3),
            "VAE encoder output",
        ),
        *_expect(header, p + "post_quant_conv.weight", (latent, latent, 1, 1), "VAE latent conv"),
    ]


def _text_problems(
    header: CheckpointHeader,
    prefix: str,
    cfg: Mapping[str, Any],
    openclip: bool,
    component: str,
) -> list[str]:
    label = "second text encoder" if component == "text_encoder_2" else "text encoder"
    hidden = int(cfg.get("hidden_size", 768))
    vocab = int(cfg.get("vocab_size", 49408))
    positions = int(cfg.get("max_position_embeddings", 77))
    layers = int(cfg.get("num_hidden_layers", 12))
    if openclip:
        token, position = prefix + "token_embedding.weight", prefix + "positional_embedding"
    else:
        token = prefix + "text_model.embeddings.token_embedding.weight"
        position = prefix + "text_model.embeddings.position_embedding.weight"
    problems = [
        *_expect(header, token, (vocab, hidden), f"{label} token embedding"),
        *_expect(header, position, (positions, hidden), f"{label} position embedding"),
    ]
    found = {
        int(m.group(1))
        for k in header.tensors
        if k.startswith(prefix) and (m := _TEXT_LAYER.search(k[len(prefix) :]))
    }
    # OpenCLIP files keep the final layer that SD 2.x / SDXL skip (penultimate-layer output).
    if (len(found) < layers) if openclip else (len(found) != layers):
        problems.append(f"{label} has {len(found)} layers, expected {layers}")
    if openclip and "WithProjection" in str(cfg.get("architectures", "")):
        projection = int(cfg.get("projection_dim", hidden))
        problems += _expect(
            header, prefix + "text_projection", (hidden, projection), f"{label} projection"
        )
    return problems


# --- variant and prediction type -----------------------------------------------------------

_LCM = re.compile(r"(?<![a-z])lcm(?![a-z])")


def variant_from_text(*texts: str) -> ModelVariant | None:
    """'turbo' / 'lcm' when a name or description says so."""
    for text in texts:
        low = text.lower()
        # Lightning models are few-step, guidance-free distillations like Turbo: same defaults.
        if "turbo" in low or "lightning" in low:
            return "turbo"
        if _LCM.search(low):
            return "lcm"
    return None


def guess_variant(header: CheckpointHeader) -> ModelVariant:
    meta = header.metadata
    return (
        variant_from_text(
            meta.get("modelspec.architecture", ""),
            meta.get("modelspec.title", ""),
            header.path.stem,
        )
        or "base"
    )


_SD2_V_PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def guess_sd2_prediction(header: CheckpointHeader) -> PredictionType:
    """SD 2.x comes as 768-px v-prediction and 512-px epsilon ("base") models.

    Order: safetensors metadata, the file name, then a weight statistic (the spread of one
    LayerNorm bias is much wider in v-prediction models; the same probe ComfyUI uses).
    """
    meta = header.metadata
    declared = meta.get("modelspec.prediction_type", "").lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if declared in ("epsilon", "eps"):
        return "epsilon"
    arch = meta.get("modelspec.architecture", "").lower()
    if arch.endswith("-v") or "768-v" in arch:
        return "v_prediction"
    if "v2-512" in arch:
        return "epsilon"
    stem = header.path.stem.lower()
    if "base" in stem or "512" in stem:
        return "epsilon"
    if "768" in stem or "v-pred" in stem or "vpred" in stem:
        return "v_prediction"
    values = read_tensor_values(header, _SD2_V_PROBE)
    if values:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return "v_prediction" if std > 0.09 else "epsilon"
    return "v_prediction"


def missing_weights(
    header: CheckpointHeader, namer: KeyNamer, diffusers_keys: Iterable[str]
) -> list[str]:
    """The original names of weights a loaded component expects but the file lacks."""
    return sorted({name for key in diffusers_keys if (name := namer(key)) not in header.tensors})
