"""Workers: where the queue's batches run. The queue (queue.py) decides what runs when; a worker
only runs the batch it is handed, on its own device, and reports back on the event loop.

`LocalWorker` runs an ImageGenerator on one dedicated thread of the bot's process (one per GPU
with several). `inference.ray_workers.RayWorker` runs one in a Ray actor, on this machine or
another. Both keep the same contract, so the queue neither knows nor cares which it has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from inference.device import RuntimeOptions
from inference.types import GenerationRequest, GenerationResult, ImageGenerator, Progress

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # progress events handed to the event loop at most this often

GeneratorFactory = Callable[[], ImageGenerator]
"""Builds a worker's generator where the worker runs (a Ray actor pickles it: no lambdas)."""

BatchProgress = Callable[[int, Progress], None]
"""Called on the event loop: (index of the request in the batch, its progress)."""

BatchCancelled = Callable[[int], bool]
"""Asked between steps: is request i of the batch cancelled? Cheap and thread-safe."""


class WorkerLostError(Exception):
    """The worker died while running a batch (its process killed, its machine gone).

    Not an InferenceError: the jobs did nothing wrong, and the queue runs them again."""


class Worker(Protocol):
    """One device's worth of generation, as the queue sees it."""

    name: str  # for logs and /queue: "gpu 0", "ray 1"

    async def start(self, warm_up_model: str | None) -> None:
        """Get ready (start the process, import, load `warm_up_model`); raises if it cannot."""
        ...

    async def run(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: BatchProgress,
        is_cancelled: BatchCancelled,
        want_previews: bool,
        job_ids: Sequence[int] = (),
    ) -> list[GenerationResult | None]:
        """ImageGenerator.generate's contract, awaited without blocking the event loop.

        Raises WorkerLostError if the worker died meanwhile; then `replace` it."""
        ...

    async def replace(self) -> None:
        """After WorkerLostError: a fresh worker in its place (raises if none can start)."""
        ...

    async def close(self) -> None:
        """Stop at the next step and release the device. Idempotent."""
        ...


class ProgressThrottle:
    """Passes a batch's progress on at most every PROGRESS_INTERVAL_S per request.

    Each hop wakes the event loop (or, over Ray, sends a message), which then competes with the
    generating thread for the GIL and the cores; nobody shows progress more often anyway. The
    last step and any step with a preview always pass."""

    def __init__(self, batch_size: int, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last_sent = [float("-inf")] * batch_size

    def should_send(self, index: int, progress: Progress) -> bool:
        now = time.monotonic()
        final = progress.step == progress.total or progress.preview is not None
        if final or now - self._last_sent[index] >= self._interval_s:
            self._last_sent[index] = now
            return True
        return False


class LocalWorker:
    """A generator on one dedicated thread: diffusers pipelines are not thread-safe, and the
    event loop (Discord's heartbeats) must never wait on the GPU."""

    def __init__(self, generator: ImageGenerator, name: str = "local") -> None:
        self.name = name
        self.generator = generator
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-worker")
        self._closed = False

    async def start(self, warm_up_model: str | None) -> None:
        if warm_up_model is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self.generator.warm_up, warm_up_model)

    async def run(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: BatchProgress,
        is_cancelled: BatchCancelled,
        want_previews: bool,
        job_ids: Sequence[int] = (),
    ) -> list[GenerationResult | None]:
        loop = asyncio.get_running_loop()
        throttle = ProgressThrottle(len(requests))

        def progress_from_thread(index: int, progress: Progress) -> None:
            if throttle.should_send(index, progress):
                loop.call_soon_threadsafe(on_progress, index, progress)

        run = functools.partial(
            self.generator.generate, requests, progress_from_thread, is_cancelled, want_previews
        )
        return await loop.run_in_executor(self._executor, run)

    async def replace(self) -> None:
        """A thread does not die on its own: nothing to replace."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)


def local_devices(device: str, count: int, cuda_devices: int) -> list[str]:
    """The device of each of `count` local workers: one GPU each where there are enough.

    Raises ValueError, written for the operator, when the GPUs cannot go round."""
    if count == 1:
        return [device]
    if device in ("auto", "cuda") and cuda_devices > 0:
        if count > cuda_devices:
            raise ValueError(
                f"workers.count is {count} but this machine has {cuda_devices} CUDA GPU"
                f"{'s' * (cuda_devices != 1)}: a local worker needs a GPU of its own. Lower "
                "workers.count, or use workers.backend = 'ray' to add other machines' GPUs."
            )
        return [f"cuda:{i}" for i in range(count)]
    if device.startswith("cuda:"):
        raise ValueError(
            f"workers.count is {count} but inference.device names one GPU ({device!r}): "
            "set inference.device to 'auto' or 'cuda' to give each worker its own GPU."
        )
    # CPU or MPS: the workers share the device (each with its own copy of the model). ("cuda"
    # on a machine without CUDA ends here too; the warm-up's device check says what is wrong.)
    return [device] * count


def local_workers(
    make_generator: Callable[..., ImageGenerator],
    options: RuntimeOptions,
    count: int,
) -> list[LocalWorker]:
    """`count` local workers, each with its own generator (`make_generator(options=…)`) on its
    own device."""
    cuda_devices = 0
    if count > 1 and options.device in ("auto", "cuda"):
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = local_devices(options.device, count, cuda_devices)
    if count > 1 and cuda_devices == 0:
        logger.warning(
            "%d local workers share %s, each with its own copy of the models; on a CPU "
            "they compete for the same cores",
            count,
            options.device,
        )
    return [
        LocalWorker(
            make_generator(options=dataclasses.replace(options, device=device)),
            name=device if device.startswith("cuda:") else f"local {index}",
        )
        for index, device in enumerate(devices)
    ]
