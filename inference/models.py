"""From a model spec (diffusers folder, single-file checkpoint or hub id) to a pipeline.

`inspect_model` answers "what is this model?" from configs and file headers only, so the bot
can check its config at start-up in milliseconds. `load_pipeline` does the slow part. Single
files load against the architecture configs shipped in `inference/configs/` (or the folder
named by `config`), with tokenizers built from the CLIP merges shipped beside them, so
loading never touches the network; their weights are read one tensor at a time straight into
the target dtype, so a load needs little more memory than the loaded model.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from inference.checkpoints import (
    CONFIGS_DIR,
    FAMILY_NAMES,
    INPAINTING_CHANNELS,
    CheckpointHeader,
    check_components,
    check_shapes,
    classify_source,
    detect_family,
    guess_sd2_prediction,
    guess_variant,
    is_inpainting_checkpoint,
    load_config_json,
    load_pickle_state_dict,
    missing_weights,
    read_checkpoint_header,
    variant_from_text,
)
from inference.errors import CheckpointError, HubUnavailableError, InferenceError, ModelError
from inference.ldm_keys import LDM_PREFIXES, KeyNamer
from inference.tokens import tokenizer_for
from inference.types import (
    ModelFamily,
    ModelInfo,
    ModelSpec,
    ModelVariant,
    PredictionType,
    SourceKind,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    Pipeline: TypeAlias = StableDiffusionPipeline | StableDiffusionXLPipeline

logger = logging.getLogger(__name__)


# Inpainting folders (9-channel UNet) load with the text-to-image class too: the generator
# makes their inpainting pipeline with from_pipe, like every other model's.
_SD_PIPELINES = frozenset(
    {"StableDiffusionPipeline", "LatentConsistencyModelPipeline", "StableDiffusionInpaintPipeline"}
)
_SDXL_PIPELINES = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline"})
_NATIVE_SIZE: dict[ModelFamily, int] = {"sd1": 512, "sd2": 768, "sdxl": 1024}

# (steps, guidance, sampler) per family and variant.
_BASE_DEFAULTS: dict[ModelFamily, tuple[int, float, str]] = {
    "sd1": (25, 7.0, "DPM++ 2M Karras"),
    "sd2": (25, 7.0, "DPM++ 2M Karras"),
    "sdxl": (30, 6.0, "DPM++ 2M Karras"),
}
_VARIANT_DEFAULTS: dict[ModelVariant, tuple[int, float, str]] = {
    "turbo": (4, 0.0, "Euler a"),
    "lcm": (6, 1.5, "LCM"),
}


def generation_defaults(family: ModelFamily, variant: ModelVariant) -> tuple[int, float, str]:
    """Default (steps, guidance, sampler) for a model family and variant."""
    return _VARIANT_DEFAULTS.get(variant) or _BASE_DEFAULTS[family]


def shipped_config_dir(family: ModelFamily) -> Path:
    return CONFIGS_DIR / family


# --- resolving a spec ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything loading needs, found without loading weights."""

    info: ModelInfo
    location: Path | str
    pipeline_class: str  # "StableDiffusionPipeline" | "StableDiffusionXLPipeline"
    config_dir: Path | None = None  # single files: the architecture configs
    header: CheckpointHeader | None = None  # single files
    prediction_type: PredictionType | None = None  # None keeps the scheduler's own
    latent_size: int | None = None  # overrides unet.sample_size when the config's is wrong
    unet_in_channels: int | None = None  # single files: overrides the config's (inpainting)


def inspect_model(spec: ModelSpec, *, allow_pickle: bool = False) -> ModelInfo:
    """What the model is (family, variant, native size, defaults) without loading weights."""
    return _plan(spec, allow_pickle).info


def _plan(spec: ModelSpec, allow_pickle: bool) -> _Plan:
    kind, location = classify_source(spec.source)
    if kind == "folder":
        assert isinstance(location, Path)
        return _plan_folder(spec, location)
    if kind == "single_file":
        assert isinstance(location, Path)
        return _plan_single_file(spec, location, allow_pickle)
    return _plan_hub(spec, str(location))


def _info(
    spec: ModelSpec,
    family: ModelFamily,
    variant: ModelVariant,
    kind: SourceKind,
    native_size: int,
    inpainting: bool = False,
) -> ModelInfo:
    steps, guidance, sampler = generation_defaults(family, variant)
    return ModelInfo(
        name=spec.name,
        family=family,
        variant=variant,
        source_kind=kind,
        native_size=native_size,
        default_steps=steps,
        default_guidance=guidance,
        default_sampler=sampler,
        inpainting=inpainting,
    )


def family_from_configs(pipeline_class: str, unet: dict[str, Any]) -> ModelFamily:
    """The family of a diffusers-layout model from its pipeline class and UNet config."""
    if pipeline_class in _SDXL_PIPELINES or unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    cross = unet.get("cross_attention_dim")
    if cross == 1024:
        return "sd2"
    if cross == 768:
        return "sd1"
    # Scaled-down models: SD 2.x switched the attention projections from 1x1 convs to linear.
    return "sd2" if unet.get("use_linear_projection") else "sd1"


def _pipeline_class(index: dict[str, Any], where: Path | str) -> str:
    name = str(index.get("_class_name", ""))
    if name in _SDXL_PIPELINES:
        return "StableDiffusionXLPipeline"
    if name in _SD_PIPELINES:
        return "StableDiffusionPipeline"
    raise CheckpointError(
        f"{where} is a {name or 'unknown'} model; imagine-bot runs text-to-image and "
        "inpainting Stable Diffusion models (StableDiffusion(XL)Pipeline or "
        "StableDiffusion(XL)InpaintPipeline layouts)."
    )


def _native_size(unet: dict[str, Any], vae: dict[str, Any]) -> int:
    sample = unet.get("sample_size") or 64
    if isinstance(sample, list | tuple):
        sample = sample[0]
    scale = 2 ** (len(vae.get("block_out_channels", (0, 0, 0, 0))) - 1)
    return int(sample) * scale


def _is_inpainting_unet(unet: dict[str, Any]) -> bool:
    return unet.get("in_channels") == INPAINTING_CHANNELS


def _folder_variant(name: str, unet: dict[str, Any], scheduler: dict[str, Any]) -> ModelVariant:
    if scheduler.get("_class_name") == "LCMScheduler" or unet.get("time_cond_proj_dim"):
        return "lcm"
    return variant_from_text(name) or "base"


def _plan_folder(spec: ModelSpec, folder: Path) -> _Plan:
    index = _read_json(folder / "model_index.json")
    pipeline_class = _pipeline_class(index, folder)
    unet = load_config_json(folder, "unet")
    vae = load_config_json(folder, "vae")
    scheduler = _optional_json(folder / "scheduler" / "scheduler_config.json")
    family = spec.family or family_from_configs(pipeline_class, unet)
    variant = spec.variant or _folder_variant(folder.name, unet, scheduler)
    native = _native_size(unet, vae)
    info = _info(spec, family, variant, "folder", native, _is_inpainting_unet(unet))
    return _Plan(info, folder, pipeline_class, prediction_type=spec.prediction_type)


def _plan_single_file(spec: ModelSpec, path: Path, allow_pickle: bool) -> _Plan:
    header = read_checkpoint_header(path, allow_pickle=allow_pickle)
    family = detect_family(header)
    if spec.family and spec.family != family:
        raise CheckpointError(
            f"model {spec.name!r} says family = {spec.family!r} but {path.name} is "
            f"{FAMILY_NAMES[family]}: remove `family` from its config or fix the path."
        )
    check_components(header, family)
    shipped = spec.config is None
    config_dir = shipped_config_dir(family) if spec.config is None else Path(spec.config)
    if not (config_dir / "model_index.json").is_file():
        raise CheckpointError(
            f"model {spec.name!r}: config {config_dir} is not a diffusers-layout folder (it has "
            "no model_index.json). Point `config` at a folder with model_index.json, unet/, "
            "vae/ and text_encoder/ configs."
        )
    pipeline_class = _pipeline_class(_read_json(config_dir / "model_index.json"), config_dir)
    if (pipeline_class == "StableDiffusionXLPipeline") != (family == "sdxl"):
        raise CheckpointError(
            f"model {spec.name!r}: {path.name} is {FAMILY_NAMES[family]} but config "
            f"{config_dir} describes a {pipeline_class}: point `config` at a matching folder."
        )
    # An inpainting file is its family's architecture with a 9-channel UNet input: the same
    # configs (shipped or given), with in_channels from the file.
    inpainting = is_inpainting_checkpoint(header)
    in_channels = INPAINTING_CHANNELS if inpainting else None
    check_shapes(header, family, config_dir, shipped=shipped, unet_in_channels=in_channels)
    variant = spec.variant or guess_variant(header)

    prediction = spec.prediction_type
    latent_size = None
    if shipped:
        native = _NATIVE_SIZE[family]
        if family == "sd2":
            prediction = prediction or guess_sd2_prediction(header)
            # SD 2.x "base" (epsilon) and SD-Turbo are 512-px models; 2.x v-prediction is 768.
            if prediction == "epsilon" or variant == "turbo":
                native = 512
        # SDXL Turbo merges are used at 1024 px in practice, so SDXL keeps 1024.
        latent_size = native // 8
    else:
        native = _native_size(
            load_config_json(config_dir, "unet"), load_config_json(config_dir, "vae")
        )
    info = _info(spec, family, variant, "single_file", native, inpainting)
    return _Plan(
        info,
        path,
        pipeline_class,
        config_dir=config_dir,
        header=header,
        prediction_type=prediction,
        latent_size=latent_size,
        unet_in_channels=in_channels,
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _not_a_local_folder(hub_id: str) -> str:
    return (
        f"(If you meant a local folder: there is no ./{hub_id}; write local paths with ./ "
        "or in full.)"
    )


def _hub_unavailable(hub_id: str, reason: str) -> HubUnavailableError:
    # `hf` is huggingface_hub's CLI; it replaced `huggingface-cli`, which it no longer ships.
    folder = f"models/{hub_id.rpartition('/')[2]}"
    return HubUnavailableError(
        f"model {hub_id} is a Hugging Face hub id, but the hub cannot be reached ({reason}) and "
        "the model is not in the local cache. Download it on a machine with network access "
        f"(`hf download {hub_id} --local-dir {folder}`), copy that folder here and set "
        f"`source` to ./{folder}; or point `source` at a local .safetensors file. "
        + _not_a_local_folder(hub_id)
    )


def _hub_json(hub_id: str, filename: str) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        return _read_json(Path(hf_hub_download(hub_id, filename)))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        reason = "HF_HUB_OFFLINE is set" if _hub_offline() else "no network connection"
        raise _hub_unavailable(hub_id, reason) from exc
    except GatedRepoError as exc:
        raise ModelError(
            f"hub model {hub_id} is gated: accept its licence on huggingface.co and log in "
            "(`hf auth login`), or download it and point `source` at the files."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelError(
            f"hub model {hub_id} does not exist (or is private): check the id in `source`. "
            + _not_a_local_folder(hub_id)
        ) from exc
    except EntryNotFoundError as exc:
        raise CheckpointError(
            f"hub model {hub_id} has no {filename}: it is not a diffusers-layout model. "
            "Download its .safetensors file and point `source` at it."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise _hub_unavailable(hub_id, type(exc).__name__) from exc


def _plan_hub(spec: ModelSpec, hub_id: str) -> _Plan:
    index = _hub_json(hub_id, "model_index.json")
    pipeline_class = _pipeline_class(index, hub_id)
    unet = _hub_json(hub_id, "unet/config.json")
    vae = _hub_json(hub_id, "vae/config.json")
    scheduler = _hub_json(hub_id, "scheduler/scheduler_config.json")
    family = spec.family or family_from_configs(pipeline_class, unet)
    variant = spec.variant or _folder_variant(hub_id, unet, scheduler)
    native = _native_size(unet, vae)
    info = _info(spec, family, variant, "hub", native, _is_inpainting_unet(unet))
    return _Plan(info, hub_id, pipeline_class, prediction_type=spec.prediction_type)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}.") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object.")
    return data


def _optional_json(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.is_file() else {}


# --- loading -------------------------------------------------------------------------------


def load_pipeline(
    spec: ModelSpec, *, torch_dtype: torch.dtype = torch.float32, allow_pickle: bool = False
) -> Pipeline:
    """Load the model's pipeline on the CPU, without safety checker or progress bars.

    Raises ModelError subclasses whose message says what is wrong and what to do.
    """
    plan = _plan(spec, allow_pickle)
    try:
        if plan.info.source_kind == "single_file":
            with _quiet_loading():
                pipe = _load_single_file(plan, torch_dtype)
        elif plan.info.source_kind == "folder":
            with _quiet_loading():
                pipe = _load_pretrained(plan, torch_dtype)
        else:  # hub downloads keep their progress bars (stderr): they can take minutes
            logger.info(
                "model %r: fetching %s from the Hugging Face hub (the first time this downloads "
                "the weights, about 2-7 GB, into the hub cache; progress bars follow)",
                spec.name,
                plan.location,
            )
            pipe = _load_pretrained(plan, torch_dtype)
    except InferenceError:
        raise
    except MemoryError as exc:
        raise ModelError(f"not enough memory to load model {spec.name!r}.") from exc
    except Exception as exc:  # diffusers/transformers/safetensors raise many types
        logger.exception("loading model %r from %s failed", spec.name, plan.location)
        raise _load_error(spec, plan, exc) from exc

    if (
        plan.prediction_type
        and pipe.scheduler.config.get("prediction_type") != plan.prediction_type
    ):
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, prediction_type=plan.prediction_type
        )
    if plan.latent_size and pipe.unet.config.sample_size != plan.latent_size:
        pipe.unet.register_to_config(sample_size=plan.latent_size)
    pipe.set_progress_bar_config(disable=True)
    logger.info(
        "loaded model %r (%s %s, %s) from %s",
        spec.name,
        FAMILY_NAMES[plan.info.family],
        plan.info.variant,
        plan.info.source_kind,
        plan.location,
    )
    return pipe


def _load_error(spec: ModelSpec, plan: _Plan, exc: Exception) -> ModelError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if "out of memory" in reason.lower() or "can't allocate memory" in reason.lower():
        return ModelError(f"not enough memory to load model {spec.name!r}: {reason}")
    if plan.info.source_kind == "hub" and isinstance(exc, OSError):
        return _hub_unavailable(str(plan.location), reason)
    fix = (
        "Check that the file is a complete, uncorrupted checkpoint, or set `config` to the "
        "diffusers folder of its architecture."
        if plan.info.source_kind == "single_file"
        else "Check that the folder is a complete diffusers model (all weights present)."
    )
    return CheckpointError(
        f"model {spec.name!r} could not be loaded from {plan.location}: {reason}. {fix}"
    )


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading pipeline components" / "Loading weights" bars on the bot's stderr."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_on = diffusers_logging.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if diffusers_on:
            diffusers_logging.enable_progress_bar()
        if transformers_on:
            transformers_logging.enable_progress_bar()


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    if dtype == torch.float32:
        return {}  # diffusers' default; passing it only adds a cast and a warning
    from diffusers.pipelines import pipeline_utils

    # diffusers renamed torch_dtype to dtype (0.36-ish); the old name now warns.
    return {"dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _pipeline_type(name: str) -> type[Pipeline]:
    import diffusers

    return getattr(diffusers, name)


def _no_extras(pipeline_class: str) -> dict[str, Any]:
    # Never load (or download) the safety checker, image encoder or CLIP image processor.
    extras: dict[str, Any] = {"feature_extractor": None, "image_encoder": None}
    if pipeline_class == "StableDiffusionPipeline":
        extras |= {"safety_checker": None, "requires_safety_checker": False}
    return extras


def _load_pretrained(plan: _Plan, torch_dtype: torch.dtype) -> Pipeline:
    cls = _pipeline_type(plan.pipeline_class)
    kwargs = _no_extras(plan.pipeline_class)
    if plan.info.source_kind == "folder":
        kwargs["local_files_only"] = True
    # With accelerate (a dependency) diffusers builds each network without initialising it
    # and loads the weights straight in `torch_dtype` (low_cpu_mem_usage, its default).
    return cls.from_pretrained(str(plan.location), **_dtype_kwargs(torch_dtype), **kwargs)


# --- single files, one tensor at a time ----------------------------------------------------

_FILE_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}

# read(original name, part): the tensor, or for `part` 0/1/2 the q/k/v third of a fused one.
_Reader = Callable[[str, int | None], torch.Tensor]


def _load_single_file(plan: _Plan, torch_dtype: torch.dtype) -> Pipeline:
    """Build the networks from the architecture configs without memory (meta device), then
    read the file one tensor at a time, each straight into its final dtype.

    The peak is about the loaded model plus one tensor: no whole-file state dict, no converted
    copy of it, no random initialisation (diffusers' from_single_file holds the file's
    tensors until every component is built: about 3.2 x the file size for an fp16 file loaded
    in fp32). Original names come from `inference.ldm_keys`, which also proves completeness.
    """
    assert plan.config_dir is not None and plan.header is not None
    modules = _modules_on_meta(plan)
    _check_complete(modules, plan)  # before reading a byte, naming what is missing
    with _tensor_reader(plan.header) as read:
        for component, module in modules.items():
            _fill(module, component, plan.info.family, read, torch_dtype)
    return _assemble(plan, modules)


def _modules_on_meta(plan: _Plan) -> dict[str, Any]:
    """The plan's networks built from its configs with their weights on the meta device: the
    names and shapes, no memory, no random initialisation. (Buffers the file does not hold,
    such as CLIP's position ids, are real.)"""
    import importlib

    from accelerate import init_empty_weights

    assert plan.config_dir is not None
    index = _read_json(plan.config_dir / "model_index.json")
    modules: dict[str, Any] = {}
    with init_empty_weights():
        for component in LDM_PREFIXES[plan.info.family]:
            library, class_name = index[component]
            cls = getattr(importlib.import_module(library), class_name)
            folder = plan.config_dir / component
            if library == "diffusers":
                config = cls.load_config(folder)
                if component == "unet" and plan.unet_in_channels is not None:
                    config["in_channels"] = plan.unet_in_channels
                modules[component] = cls.from_config(config)
            else:
                modules[component] = cls(cls.config_class.from_pretrained(folder))
    return modules


def _check_complete(modules: dict[str, Any], plan: _Plan) -> None:
    """Fail if the file lacks any weight the networks have (one would keep no value)."""
    assert plan.header is not None
    family = plan.info.family
    for component, module in modules.items():
        config = dict(module.config) if component in ("unet", "vae") else None
        namer = KeyNamer(family, component, config)
        missing = missing_weights(plan.header, namer, module.state_dict().keys())
        if missing:
            shown = ", ".join(missing[:3])
            raise CheckpointError(
                f"{plan.header.path.name} lacks {len(missing)} {component} weights "
                f"(e.g. {shown}): it is incomplete or of another architecture. Use a complete "
                "checkpoint, or set `config` to the diffusers folder of its architecture."
            )


@contextmanager
def _tensor_reader(header: CheckpointHeader) -> Iterator[_Reader]:
    """Tensors by original name. What `read` returns is only valid until the next call: it
    lives in one reused scratch buffer, so that loading allocates nothing but the weights
    themselves (a fresh buffer per tensor, freed after its cast, fragments the heap: +0.2 x
    the file size that stays after loading)."""
    if header.data_start < 0:  # an allowed pickle: no byte offsets; torch maps it instead
        tensors: dict[str, torch.Tensor] | None = load_pickle_state_dict(header.path)

        def read_pickled(name: str, part: int | None) -> torch.Tensor:
            assert tensors is not None
            tensor = tensors[name]
            return tensor if part is None else _third(tensor, part, name)

        try:
            yield read_pickled
        finally:
            tensors = None  # unmap the file
        return

    scratch = torch.empty(0, dtype=torch.uint8)
    with header.path.open("rb", buffering=0) as file:

        def read(name: str, part: int | None) -> torch.Tensor:
            nonlocal scratch
            entry = header.tensors[name]
            dtype = _FILE_DTYPES.get(entry.dtype)
            if dtype is None:
                raise ValueError(f"{name} is stored as {entry.dtype}, not as floating point")
            start, end, shape = entry.start, entry.end, entry.shape
            if part is not None:  # q, k and v are thirds of the fused tensor: read just one
                if not shape or shape[0] % 3:
                    raise ValueError(f"{name} of shape {list(shape)} is not q, k and v fused")
                third = (end - start) // 3
                start, end = start + part * third, start + (part + 1) * third
                shape = (shape[0] // 3, *shape[1:])
            if end - start > scratch.numel():
                scratch = torch.empty(0, dtype=torch.uint8)  # free the old one first
                scratch = torch.empty(end - start, dtype=torch.uint8)
            raw = scratch[: end - start]
            file.seek(header.data_start + start)
            view = raw.numpy().data
            done = 0
            while done < len(view):  # an unbuffered read may return less than asked
                count = file.readinto(view[done:])
                if not count:
                    raise ValueError(f"{header.path.name} ended inside {name}")
                done += count
            return raw.view(dtype).reshape(shape)

        yield read


def _third(tensor: torch.Tensor, part: int, name: str) -> torch.Tensor:
    if tensor.ndim == 0 or tensor.shape[0] % 3:
        raise ValueError(f"{name} of shape {list(tensor.shape)} is not q, k and v fused")
    return tensor.chunk(3)[part]


def _fill(
    module: Any, component: str, family: ModelFamily, read: _Reader, dtype: torch.dtype
) -> None:
    """Give every weight of a meta-device network its value from the file, in `dtype`."""
    config = dict(module.config) if component in ("unet", "vae") else None
    namer = KeyNamer(family, component, config)
    keep_fp32 = _fp32_modules(module, dtype)
    weights: dict[str, torch.Tensor] = {}
    for key, empty in module.state_dict().items():
        name = namer(key)
        # The inverse of what the original layouts do (see inference.testing.ldm_state_dict).
        part = None
        if name.endswith((".in_proj_weight", ".in_proj_bias")):  # OpenCLIP's fused q/k/v
            part = "qkv".index(key.rsplit(".", 2)[-2][0])
        tensor = read(name, part)
        if namer.openclip and key == "text_projection.weight":
            tensor = tensor.T  # OpenCLIP multiplies x @ P; a Linear stores P transposed
        tensor = _fit(tensor, tuple(empty.shape), name)
        wanted = torch.float32 if keep_fp32.intersection(key.split(".")) else dtype
        # Always a copy, contiguous, in memory of its own: `tensor` is the reader's scratch.
        weights[key] = tensor.to(
            wanted if tensor.is_floating_point() else tensor.dtype,
            copy=True,
            memory_format=torch.contiguous_format,
        )
    module.load_state_dict(weights, strict=True, assign=True)
    module.eval()


def _fit(tensor: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """The tensor in the network's shape: the same, or differing only by size-1 dimensions (an
    attention weight stored as a 1x1 convolution, or the reverse)."""
    if tuple(tensor.shape) == shape:
        return tensor
    if [d for d in tensor.shape if d != 1] == [d for d in shape if d != 1]:
        return tensor.reshape(shape)
    raise ValueError(
        f"{name} has shape {list(tensor.shape)} but the architecture expects {list(shape)}"
    )


def _fp32_modules(module: Any, dtype: torch.dtype) -> frozenset[str]:
    """Sub-modules kept in float32 when loading in float16, as diffusers does."""
    names = getattr(module, "_keep_in_fp32_modules", None)
    if dtype != torch.float16 or not names:
        return frozenset()
    return frozenset([names] if isinstance(names, str) else names)


def _assemble(plan: _Plan, modules: dict[str, Any]) -> Pipeline:
    """The pipeline from loaded networks, local tokenizers and the configured scheduler."""
    import diffusers

    assert plan.config_dir is not None
    config_dir = plan.config_dir
    scheduler_cfg = load_config_json(config_dir, "scheduler", "scheduler_config.json")
    scheduler_cls = getattr(diffusers, str(scheduler_cfg.get("_class_name")), None)
    if scheduler_cls is None:
        raise CheckpointError(
            f"{config_dir}/scheduler names an unknown scheduler {scheduler_cfg.get('_class_name')}."
        )
    overrides = {"prediction_type": plan.prediction_type} if plan.prediction_type else {}
    parts: dict[str, Any] = {
        "scheduler": scheduler_cls.from_config(scheduler_cfg, **overrides),
        "tokenizer": tokenizer_for(config_dir, "tokenizer"),
    }
    if plan.pipeline_class == "StableDiffusionXLPipeline":
        parts["tokenizer_2"] = tokenizer_for(config_dir, "tokenizer_2")
    cls = _pipeline_type(plan.pipeline_class)
    # Pipeline options the config folder sets (SDXL's force_zeros_for_empty_prompt), as
    # diffusers' from_single_file passes them.
    accepted = inspect.signature(cls.__init__).parameters
    index = _read_json(config_dir / "model_index.json")
    options = {
        k: v
        for k, v in index.items()
        if k in accepted and not k.startswith("_") and not isinstance(v, list)
    }
    return cls(**{**options, **parts, **modules, **_no_extras(plan.pipeline_class)})
