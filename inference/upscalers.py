"""Upscaler models ([[upscalers]]): ESRGAN-family super-resolution networks loaded by spandrel.

spandrel is an optional dependency (`pip install 'imagine-bot[upscalers]'`): it is imported
only when an upscaler model is first used, and its absence is a ModelError that says how to
install it. Like checkpoints, pickle files are refused: loading one can run arbitrary code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from inference.checkpoints import PICKLE_SUFFIXES
from inference.errors import CheckpointError, ModelError, UnsafeCheckpointError
from inference.types import UpscalerSpec

INSTALL_HINT = "pip install 'imagine-bot[upscalers]'"
UPSCALER_SUFFIXES = frozenset({".safetensors"})


@dataclass
class LoadedUpscaler:
    """An upscaler model ready to run: spandrel's ImageModelDescriptor on its device."""

    name: str
    model: Any  # spandrel.ImageModelDescriptor
    scale: int  # the network's own factor (×2, ×4), read from the file
    device: Any  # torch.device
    dtype: Any  # torch.dtype


def import_spandrel() -> Any:
    """The spandrel module, or a ModelError saying how to install it."""
    try:
        import spandrel
    except ImportError as error:
        raise ModelError(
            "upscaler models need the optional spandrel package, which is not installed "
            f"({error}): {INSTALL_HINT}, or leave images.upscaler empty to resize with Lanczos"
        ) from error
    return spandrel


def load_upscaler(spec: UpscalerSpec, device: Any = "cpu", dtype: Any = None) -> LoadedUpscaler:
    """Load `spec`'s `.safetensors` file with spandrel onto `device`.

    `dtype` (a torch dtype) is used when the architecture supports it; float32 otherwise.
    Raises UnsafeCheckpointError for pickles, CheckpointError for a missing or unrecognised
    file, ModelError if spandrel is not installed.
    """
    import torch

    path = Path(spec.source)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeCheckpointError(
            f"upscaler {spec.name!r}: {path.name} is a pickle file ({path.suffix}): loading it "
            "can run arbitrary code, so it is refused. Use a .safetensors version of the "
            "upscaler (most are published as one, or convert it once in a sandbox)."
        )
    if suffix not in UPSCALER_SUFFIXES:
        raise CheckpointError(
            f"upscaler {spec.name!r}: {path.name} is not a .safetensors file; upscaler models "
            "are loaded from .safetensors only"
        )
    if not path.is_file():
        raise CheckpointError(
            f"upscaler {spec.name!r}: {path} does not exist; check the path in its `source`"
        )
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_file(str(path))
    except spandrel.UnsupportedModelError as error:
        raise CheckpointError(
            f"upscaler {spec.name!r}: {path.name} is not an upscaler architecture spandrel "
            "recognises (ESRGAN, Real-ESRGAN, SwinIR, ...)"
        ) from error
    except Exception as error:  # safetensors and spandrel raise many types for a bad file
        raise CheckpointError(
            f"upscaler {spec.name!r}: {path.name} could not be loaded "
            f"({_first_line(error)}); download it again"
        ) from error
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.scale < 2:
        raise CheckpointError(
            f"upscaler {spec.name!r}: {path.name} is a {descriptor.architecture.name} model "
            f"for {getattr(descriptor, 'purpose', 'another task')}, not an upscaler (×2 or more)"
        )
    device = torch.device(device)
    supported = {
        torch.float16: descriptor.supports_half,
        torch.bfloat16: descriptor.supports_bfloat16,
    }
    # Half precision on CPU is slow or unsupported for convolutions: float32 there.
    use = dtype if device.type != "cpu" and supported.get(dtype, False) else torch.float32
    descriptor.to(device=device, dtype=use).eval()
    return LoadedUpscaler(spec.name, descriptor, int(descriptor.scale), device, use)


def upscale_image(upscaler: LoadedUpscaler, image: Image.Image) -> Image.Image:
    """`image` enlarged by the network's own factor (RGB in, RGB out)."""
    import numpy as np
    import torch

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
    tensor = tensor.to(device=upscaler.device, dtype=upscaler.dtype)
    with torch.inference_mode():
        output = upscaler.model(tensor)
    pixels = output[0].float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels, "RGB")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
