"""Where the pipeline runs, and with which number format and memory options."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTypeName = Literal["auto", "float16", "bfloat16", "float32"]


@dataclass(frozen=True)
class RuntimeOptions:
    """Operator switches for how models run (the [inference] table of the config)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: DTypeName = "auto"  # auto: fp16 on CUDA/MPS, fp32 on CPU
    vae_tiling: bool = False  # decode large images in tiles: less memory, a little slower
    vae_slicing: bool = False  # decode a batch one image at a time
    cpu_offload: bool = False  # keep idle sub-models in RAM (needs `accelerate`)
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


def choose_placement(options: RuntimeOptions) -> Placement:
    """CUDA if present, then Apple MPS, else CPU; half precision wherever it is fast."""
    import torch

    name = options.device
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("inference.device is 'cuda' but PyTorch sees no CUDA GPU")
    dtype_name = options.dtype
    if dtype_name == "auto":
        # fp32 on CPU: half precision there is slow and unsupported by some kernels.
        dtype_name = "float32" if device.type == "cpu" else "float16"
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
