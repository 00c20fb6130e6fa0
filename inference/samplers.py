"""Sampler names users know from AUTOMATIC1111, mapped to diffusers schedulers.

The mapping follows diffusers' own A1111 equivalence table. Names are matched without regard
to case or spacing, so "euler a", "Euler A" and "euler_a" all work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from inference.errors import InvalidRequestError


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # canonical A1111 name
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)


_SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler"),
    SamplerSpec("Euler", "EulerDiscreteScheduler"),
    SamplerSpec("Heun", "HeunDiscreteScheduler"),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler"),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler"),
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    SamplerSpec(
        "DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}
    ),
    SamplerSpec(
        "DPM++ 2M SDE Karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    SamplerSpec("DPM++ SDE", "DPMSolverSinglestepScheduler"),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    SamplerSpec("DDIM", "DDIMScheduler"),
    SamplerSpec("PNDM", "PNDMScheduler", {"skip_prk_steps": True}),  # as SD ships it
    SamplerSpec("UniPC", "UniPCMultistepScheduler"),
    SamplerSpec("LCM", "LCMScheduler"),
)


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


_BY_KEY = {_normalise(s.name): s for s in _SAMPLERS}


def sampler_names() -> tuple[str, ...]:
    """Canonical names, in the order users are shown them (Discord caps choices at 25)."""
    return tuple(s.name for s in _SAMPLERS)


def find_sampler(name: str) -> SamplerSpec:
    spec = _BY_KEY.get(_normalise(name))
    if spec is None:
        raise InvalidRequestError(
            "sampler", f"unknown sampler {name!r}; choose one of: {', '.join(sampler_names())}"
        )
    return spec


def make_scheduler(sampler: str, base_config: Any, *, trailing: bool = False) -> Any:
    """A fresh scheduler for `sampler`, keeping the model's betas and prediction type.

    `base_config` is the pipeline's scheduler config (`pipe.scheduler.config`). Turbo models
    need "trailing" timestep spacing to sample well in 1–4 steps.
    """
    import diffusers  # deferred: importing diffusers costs seconds

    spec = find_sampler(sampler)
    scheduler_class = getattr(diffusers, spec.scheduler)
    options = dict(spec.options)
    if trailing:
        options["timestep_spacing"] = "trailing"
    return scheduler_class.from_config(base_config, **options)
