"""Where the pipeline runs, and with which number format and memory options."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from inference.errors import ModelError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTypeName = Literal["auto", "float16", "bfloat16", "float32"]


@dataclass(frozen=True)
class RuntimeOptions:
    """Operator switches for how models run (the [inference] table of the config)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: DTypeName = "auto"  # auto: fp16 on CUDA/MPS; on CPU bf16 where native, else fp32
    vae_tiling: bool = False  # decode large images in tiles: less memory, a little slower
    vae_slicing: bool = False  # decode a batch one image at a time
    cpu_offload: bool = False  # CUDA: keep idle sub-models in RAM (accelerate hooks)
    compile: bool = False  # torch.compile the UNet: slow first run, faster after
    allow_pickle: bool = False  # .ckpt/.pt/.bin can run arbitrary code when loaded
    max_resident_models: int = 1  # pipelines kept loaded at once
    preview_interval_s: float = 1.0  # at most one preview per this many seconds per batch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def describe(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


_DEVICE_NAMES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def check_device(name: str) -> torch.device:
    """The torch device `inference.device` names, if this machine has it.

    Raises ModelError with what to change otherwise, so that a bad setting stops the bot at
    start-up (the generator's warm-up) rather than failing every job.
    """
    import torch

    setting = f"inference.device is {name!r}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"{setting}, which is not a device name: use {_DEVICE_NAMES}.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = (
                " (this PyTorch is a CPU-only build: install a CUDA build of torch for the GPU)"
                if torch.version.cuda is None
                else ""
            )
            raise ModelError(
                f"{setting} but this machine has no CUDA GPU (torch.cuda.is_available() is "
                f"false){build}; use 'auto' or 'cpu'."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            which = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise ModelError(
                f"{setting} but this machine has {count} CUDA GPU{'s' * (count != 1)} "
                f"({which}); use one of those, or 'cuda' or 'auto'."
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelError(
                f"{setting} but Apple's Metal backend is not available here "
                "(torch.backends.mps.is_available() is false); use 'auto' or 'cpu'."
            )
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86 AVX512_BF16 or AMX), where bf16
    generates 1.6-2.4 x faster than fp32. Other CPUs (including AVX512 ones without those
    extensions, where oneDNN only emulates bf16) keep fp32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    native = False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        try:
            native = native or bool(check is not None and check())
        except Exception:  # private torch API: a torch without it just means "no"
            logger.debug("torch.cpu.%s failed", probe, exc_info=True)
    if not native:
        return False
    try:  # the kernels that run bf16 fast (convolutions, matmuls) are oneDNN's
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        logger.debug("torch.ops.mkldnn._is_mkldnn_bf16_supported failed", exc_info=True)
        return False


def choose_placement(options: RuntimeOptions) -> Placement:
    """CUDA if present, then Apple MPS, else CPU; half precision wherever it is fast.

    Raises ModelError when `options.device` names a device this machine lacks.
    """
    import torch

    name = options.device
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = check_device(name)
    dtype_name = options.dtype
    if dtype_name == "auto":
        if device.type != "cpu":
            dtype_name = "float16"
        else:
            # fp16 is slow on CPUs and unsupported by some kernels; bf16 (fp32's range, fewer
            # digits) is fast on CPUs that have it in hardware.
            dtype_name = "bfloat16" if cpu_has_native_bf16() else "float32"
    return Placement(device, getattr(torch, dtype_name))


def prepare_pipeline(pipe: Any, placement: Placement, options: RuntimeOptions) -> Any:
    """Move a freshly loaded pipeline to its device and apply the memory/speed switches."""
    import torch

    if placement.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if options.cpu_offload and placement.device.type == "cuda":
        pipe.enable_model_cpu_offload(device=placement.device)
    else:
        pipe.to(placement.device)
    if placement.device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if options.vae_slicing:
        pipe.vae.enable_slicing()
    if options.compile:
        pipe.unet = torch.compile(pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_accelerator_memory() -> None:
    """Collect dropped objects (pipelines hold reference cycles), then hand the allocator's
    cached blocks back so the next model, or another process, can use them."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        torch.mps.empty_cache()
