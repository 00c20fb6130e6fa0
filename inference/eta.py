"""How long a job will take, learned from how long jobs took on this machine."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.types import GenerationRequest


def work_units(request: GenerationRequest) -> float:
    """UNet cost grows with steps, images and pixels: one unit = one step of one megapixel."""
    return request.steps * request.count * request.width * request.height / 1_000_000


@dataclass
class SpeedModel:
    """Seconds per work unit for each model, as an exponential moving average."""

    smoothing: float = 0.3
    default_seconds_per_unit: float | None = None  # None: no ETA until something was measured
    _rates: dict[str, float] = field(default_factory=dict)

    def record(self, requests: list[GenerationRequest], seconds: float) -> None:
        units = sum(work_units(r) for r in requests)
        if units <= 0 or seconds <= 0:
            return
        model = requests[0].model
        rate = seconds / units
        previous = self._rates.get(model)
        self._rates[model] = (
            rate if previous is None else previous + self.smoothing * (rate - previous)
        )

    def estimate(self, request: GenerationRequest) -> float | None:
        rate = self._rates.get(request.model)
        if rate is None and self._rates:
            rate = max(self._rates.values())  # another model's speed beats no estimate
        if rate is None:
            rate = self.default_seconds_per_unit
        return None if rate is None else rate * work_units(request)
