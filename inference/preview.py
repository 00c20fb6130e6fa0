"""A cheap preview of the image being denoised: latents -> RGB by a fixed linear map.

The four SD latent channels are close to a linear function of RGB, so a 4x3 matrix (fitted by
the community on real images; the same numbers A1111 and ComfyUI use) gives a recognisable
preview at 1/8 resolution for the cost of one tiny matmul: no VAE decode, no extra weights.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    import torch

_SD_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SD_BIAS = (0.0, 0.0, 0.0)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)

PREVIEW_MAX_SIDE = 384  # enough to see the composition form in a Discord embed


def latents_to_rgb(latents: torch.Tensor, family: str) -> Image.Image:
    """One image's latents (4, h, w) -> a small RGB picture (w*8 x h*8, capped)."""
    import torch

    xl = family == "sdxl"
    factors = torch.tensor(_SDXL_FACTORS if xl else _SD_FACTORS, dtype=torch.float32)
    bias = torch.tensor(_SDXL_BIAS if xl else _SD_BIAS, dtype=torch.float32)
    latent = latents.detach().to("cpu", torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent, factors) + bias  # roughly in [-1, 1]
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, mode="RGB")
    h, w = latent.shape[-2:]
    scale = min(8, PREVIEW_MAX_SIDE / max(h, w))
    return image.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
    )


def encode_preview(image: Image.Image) -> bytes:
    """JPEG: small, fast to encode, and a preview needs no metadata."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()
