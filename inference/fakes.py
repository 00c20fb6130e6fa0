"""A fast stand-in ImageGenerator for queue load tests and benchmarks (no diffusers).

It honours the same contract as DiffusersGenerator: per-step progress, cancellation between
steps, seed + i per image, one result per request. Images are flat colours from the seed, at
the request's size: for a request with a source picture that is the result's size (upscaled,
zoomed out), and the metadata carries its denoising strength; the picture itself is not read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from inference.errors import GenerationCancelled
from inference.images import encode_png, make_grid, parameters_text
from inference.types import (
    CancelCheck,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    Progress,
    ProgressCallback,
)


@dataclass
class FakeGenerator:
    step_seconds: float = 0.0
    models: tuple[str, ...] = ("fake",)
    fail_on_prompt: str | None = None  # raise RuntimeError for prompts containing this
    calls: list[tuple[int, ...]] = field(default_factory=list)  # seeds of each batch call
    threads: set[str] = field(default_factory=set)
    step_gate: threading.Event | None = None  # when set, each step waits for the gate

    def model_info(self, name: str) -> ModelInfo:
        return ModelInfo(name, "sd1", "base", "folder", 64, 4, 7.0, "Euler a")

    def warm_up(self, model: str) -> None:
        return None

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
        want_previews: bool = False,
    ) -> list[GenerationResult | None]:
        self.threads.add(threading.current_thread().name)
        self.calls.append(tuple(s for r in requests for s in r.seeds()))
        started = time.monotonic()
        if self.fail_on_prompt and any(self.fail_on_prompt in r.prompt for r in requests):
            raise RuntimeError("simulated backend failure")
        steps = requests[0].steps
        cancelled: set[int] = set()
        for step in range(1, steps + 1):
            if self.step_gate is not None:
                self.step_gate.wait(timeout=30)
            if is_cancelled is not None:
                cancelled |= {i for i in range(len(requests)) if is_cancelled(i)}
                if len(cancelled) == len(requests):
                    raise GenerationCancelled()
            if self.step_seconds:
                time.sleep(self.step_seconds)
            if on_progress is not None:
                for i in range(len(requests)):
                    if i not in cancelled:
                        on_progress(i, Progress(step, steps, b"preview" if want_previews else None))
        elapsed = time.monotonic() - started
        results: list[GenerationResult | None] = []
        for i, request in enumerate(requests):
            if i in cancelled:
                results.append(None)
                continue
            pictures = [
                Image.new("RGB", (request.width, request.height), _colour(seed))
                for seed in request.seeds()
            ]
            images = tuple(
                GeneratedImage(
                    encode_png(p, parameters_text(request, s)), s, request.width, request.height
                )
                for p, s in zip(pictures, request.seeds(), strict=True)
            )
            grid = encode_png(make_grid(pictures), None) if len(pictures) > 1 else None
            results.append(GenerationResult(request, images, grid, elapsed))
        return results


def _colour(seed: int) -> tuple[int, int, int]:
    return (seed * 67 % 256, seed * 131 % 256, seed * 197 % 256)
