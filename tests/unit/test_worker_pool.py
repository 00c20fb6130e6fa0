"""The queue with several workers: spread, model affinity, ETAs, and a worker that dies.

Fast fakes here (threads running FakeGenerator, a worker that dies on demand); the same
behaviour on real Ray actors and the tiny model is in tests/integration/test_ray_workers.py.
"""

import asyncio
import pickle
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from inference.errors import GenerationFailedError, InferenceError, InvalidRequestError
from inference.fakes import FakeGenerator
from inference.jobs import JobState, Owner
from inference.queue import JobQueue, QueueSettings
from inference.types import GenerationRequest, GenerationResult
from inference.workers import (
    BatchCancelled,
    BatchProgress,
    LocalWorker,
    WorkerLostError,
    local_devices,
)
from tests.memory_journal import MemoryJournal
from tests.unit.test_queue import request, until_running

pytestmark = pytest.mark.timeout(30)


def pool(tmp_path: Path, *workers: Any, clock: Any = None) -> tuple[JobQueue, MemoryJournal]:
    journal = MemoryJournal()
    settings = QueueSettings(output_dir=tmp_path / "out", batching=False)
    extra = {} if clock is None else {"clock": clock}
    return JobQueue(list(workers), journal, settings, **extra), journal


async def test_jobs_spread_over_both_workers_at_once(tmp_path: Path) -> None:
    gate = threading.Event()
    first, second = FakeGenerator(step_gate=gate), FakeGenerator(step_gate=gate)
    queue, journal = pool(tmp_path, LocalWorker(first, "a"), LocalWorker(second, "b"))
    async with queue:
        handles = [await queue.submit(request(seed=i), Owner(i)) for i in range(4)]
        await until_running(handles[0])
        await until_running(handles[1])
        # Two jobs run at the same time, one per worker; the others wait their turn.
        assert [h.position for h in handles] == [0, 0, 1, 2]
        assert {handles[0].worker_name, handles[1].worker_name} == {"a", "b"}
        assert len(queue) == 4
        gate.set()
        await asyncio.gather(*(h.result() for h in handles))
    assert len(first.calls) + len(second.calls) == 4
    assert first.calls and second.calls
    assert all(journal.jobs[h.job_id].state is JobState.DONE for h in handles)


async def test_each_worker_takes_the_model_it_has_loaded(tmp_path: Path) -> None:
    """Within a round, an idle worker prefers jobs for the model it last ran."""
    a, b = FakeGenerator(), FakeGenerator()
    queue, _ = pool(tmp_path, LocalWorker(a, "a"), LocalWorker(b, "b"))
    async with queue:
        # Worker a runs model x; then, while a is still the first idle worker, a model-y job
        # goes to b, which has nothing loaded, rather than make a switch.
        await (await queue.submit(request(seed=1, model="x"), Owner(1))).result()
        await (await queue.submit(request(seed=2, model="y"), Owner(1))).result()
        assert [call for call in a.calls] == [(1,)] and b.calls == [(2,)]
        # Now a has x and b has y: a y job (older) and an x job arrive together.
        y_job = await queue.submit(request(seed=3, model="y"), Owner(2))
        x_job = await queue.submit(request(seed=4, model="x"), Owner(3))
        await asyncio.gather(y_job.result(), x_job.result())
    assert (x_job.worker_name, y_job.worker_name) == ("a", "b")
    assert a.calls == [(1,), (4,)] and b.calls == [(2,), (3,)]


async def test_eta_counts_every_worker(tmp_path: Path) -> None:
    now = [100.0]
    gate = threading.Event()
    queue, _ = pool(
        tmp_path,
        LocalWorker(FakeGenerator(step_gate=gate), "a"),
        LocalWorker(FakeGenerator(step_gate=gate), "b"),
        clock=lambda: now[0],
    )
    queue.speed.record([request()], 10.0)  # a job takes 10 s
    async with queue:
        handles = [await queue.submit(request(seed=i), Owner(i)) for i in range(5)]
        await until_running(handles[0])
        await until_running(handles[1])
        now[0] += 4.0
        # Both workers are 4 s into 10 s jobs: the next two start in 6 s, the fifth in 16 s.
        assert [h.eta_s for h in handles] == [6.0, 6.0, 16.0, 16.0, 26.0]
        gate.set()
        await asyncio.gather(*(h.result() for h in handles))


class DyingWorker:
    """A LocalWorker whose process "dies" during the next `deaths` batches."""

    def __init__(self, generator: FakeGenerator, deaths: int, name: str = "dies") -> None:
        self.name = name
        self.inner = LocalWorker(generator, name)
        self.deaths = deaths
        self.replaced = 0
        self.ran: list[tuple[int, ...]] = []

    async def start(self, warm_up_model: str | None) -> None:
        await self.inner.start(warm_up_model)

    async def run(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: BatchProgress,
        is_cancelled: BatchCancelled,
        want_previews: bool,
        job_ids: Sequence[int] = (),
    ) -> list[GenerationResult | None]:
        self.ran.append(tuple(job_ids))
        if self.deaths > 0:
            self.deaths -= 1
            await asyncio.sleep(0.01)
            raise WorkerLostError("ActorDiedError (process 1234)")
        return await self.inner.run(requests, on_progress, is_cancelled, want_previews, job_ids)

    async def replace(self) -> None:
        self.replaced += 1

    async def close(self) -> None:
        await self.inner.close()


async def test_a_job_whose_worker_died_runs_again_first_and_once(tmp_path: Path) -> None:
    worker = DyingWorker(FakeGenerator(), deaths=1)
    queue, journal = pool(tmp_path, worker)
    await queue.start()
    try:
        lost = await queue.submit(request(seed=1), Owner(1))
        later = await queue.submit(request(seed=2), Owner(2))
        result = await lost.result()
        await later.result()
    finally:
        await queue.close()
    # It ran again at the front (before the other user's job) and is done exactly once.
    assert worker.ran == [(lost.job_id,), (lost.job_id,), (later.job_id,)]
    assert worker.replaced == 1
    assert [image.seed for image in result.images] == [1]
    assert lost.worker_losses == 1
    states = [state for job, state in journal.transitions if job == lost.job_id]
    assert states == [JobState.RUNNING, JobState.QUEUED, JobState.RUNNING, JobState.DONE]


async def test_a_job_that_loses_two_workers_fails_and_the_pool_goes_on(tmp_path: Path) -> None:
    worker = DyingWorker(FakeGenerator(), deaths=2)
    queue, journal = pool(tmp_path, worker)
    async with queue:
        doomed = await queue.submit(request(seed=1), Owner(1))
        with pytest.raises(GenerationFailedError, match="stopped twice"):
            await doomed.result()
        after = await queue.submit(request(seed=2), Owner(1))
        await after.result()
    assert journal.jobs[doomed.job_id].state is JobState.FAILED
    assert journal.jobs[after.job_id].state is JobState.DONE
    assert worker.replaced == 2


async def test_the_other_workers_keep_serving_while_one_cannot_be_replaced(
    tmp_path: Path,
) -> None:
    class Unreplaceable(DyingWorker):
        async def replace(self) -> None:
            self.replaced += 1
            raise RuntimeError("the node is gone")

    broken = Unreplaceable(FakeGenerator(), deaths=1, name="broken")
    healthy = FakeGenerator()
    queue, journal = pool(tmp_path, broken, LocalWorker(healthy, "healthy"))
    async with queue:
        handles = [await queue.submit(request(seed=i), Owner(i)) for i in range(3)]
        await asyncio.gather(*(h.result() for h in handles))
    # The broken worker's job ran again on the healthy one, and so did everything else.
    assert broken.replaced >= 1
    assert sorted(seed for call in healthy.calls for seed in call) == [0, 1, 2]
    assert all(journal.jobs[h.job_id].state is JobState.DONE for h in handles)


def test_every_error_users_see_crosses_from_a_ray_worker_intact() -> None:
    """A Ray worker's errors come back pickled: type and message must survive."""

    def subclasses(cls: type[InferenceError]) -> list[type[InferenceError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in subclasses(sub))]

    for cls in subclasses(InferenceError):
        args = ("steps", "must be at most 100") if cls is InvalidRequestError else ("why",)
        error = cls(*args)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and str(copy) == str(error)


def test_local_workers_get_a_gpu_each() -> None:
    assert local_devices("auto", 1, 0) == ["auto"]
    assert local_devices("auto", 2, 4) == ["cuda:0", "cuda:1"]
    assert local_devices("cuda", 3, 3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert local_devices("cpu", 2, 4) == ["cpu", "cpu"]
    with pytest.raises(ValueError, match=r"workers.count is 3 but this machine has 2 CUDA GPUs"):
        local_devices("auto", 3, 2)
    with pytest.raises(ValueError, match=r"inference.device names one GPU \('cuda:1'\)"):
        local_devices("cuda:1", 2, 2)


async def test_the_ray_backend_without_ray_installed_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from inference.ray_workers import RayCluster

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"pip install 'imagine-bot\[ray\]'"):
        await RayCluster("").connect(1)
