"""The worker pool on a real local Ray instance: two actors, each holding the tiny model.

What a Discord user would notice is covered here at the queue's level, with the real SQLite
store: jobs spread over both workers, model affinity, cancelling a running batch, and a worker
killed mid-batch (SIGKILL of the actor's process) with every job done exactly once. The e2e
suite runs as a whole on Ray too (README's test command), and tests/e2e/test_ray_workers.py
kills a worker under the real bot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from bot.store import Store
from inference.device import RuntimeOptions
from inference.errors import GenerationCancelled, ModelError, WorkerUnavailableError
from inference.generator import DiffusersGenerator
from inference.jobs import JobState, Owner
from inference.queue import JobHandle, JobQueue, QueueSettings
from inference.testing import TinyModel
from inference.types import GenerationRequest, ModelSpec

ray = pytest.importorskip("ray")

from inference import ray_workers  # noqa: E402
from inference.ray_workers import RayCluster, RayPlacement, RayWorker  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster() -> AsyncIterator[RayCluster]:
    cluster = RayCluster("")
    await cluster.connect(2)
    ours = psutil.Process().children(recursive=True)
    try:
        yield cluster
    finally:
        await cluster.close()
    # A private instance leaves no process behind (the agents check on the raylet).
    _gone, alive = psutil.wait_procs(ours, timeout=60)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def request(seed: int, model: str = "tiny", steps: int = 4) -> GenerationRequest:
    return GenerationRequest("a red fox", "", 64, 64, steps, 7.0, seed, "Euler a", 1, model)


def workers(tiny: TinyModel, count: int = 2) -> list[RayWorker]:
    spec = ModelSpec("tiny", str(tiny.single_file), config=tiny.folder)
    models = {
        "tiny": spec,
        "tiny2": dataclasses.replace(spec, name="tiny2"),
        # As if this worker's machine lacked the file that the bot's machine has.
        "absent": dataclasses.replace(spec, name="absent", source="/nowhere/absent.safetensors"),
    }
    make = functools.partial(DiffusersGenerator, models, RuntimeOptions(device="cpu"))
    return [RayWorker(f"ray {i}", make, RayPlacement(num_gpus=0)) for i in range(count)]


@pytest_asyncio.fixture(loop_scope="module")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "jobs.sqlite3")
    try:
        yield store
    finally:
        await store.close()


def queue_of(pool: list[RayWorker], store: Store, tmp_path: Path) -> JobQueue:
    settings = QueueSettings(output_dir=tmp_path / "images", batching=False)
    return JobQueue(pool, store.jobs, settings)


async def until_stepping(handle: JobHandle) -> None:
    """Until the job is past its first denoising step (so it is mid-batch)."""
    async for update in handle.updates():
        if update.progress is not None and update.progress.step >= 1:
            return
    raise AssertionError(f"job {handle.job_id} ended before a step: {handle.state}")


async def test_jobs_spread_over_both_workers_and_follow_loaded_models(
    cluster: RayCluster, tiny_model: TinyModel, store: Store, tmp_path: Path
) -> None:
    pool = workers(tiny_model)
    queue = queue_of(pool, store, tmp_path)
    await queue.start(warm_up_model="tiny")
    try:
        assert pool[0].pid != pool[1].pid and os.getpid() not in (pool[0].pid, pool[1].pid)
        handles = [await queue.submit(request(seed=i), Owner(i)) for i in range(4)]
        results = await asyncio.gather(*(h.result() for h in handles))
        assert {h.worker_name for h in handles} == {"ray 0", "ray 1"}
        assert all(r.images[0].png.startswith(b"\x89PNG") for r in results)
        # The same seed gives the same picture on either worker (each has its own copy).
        again = await queue.submit(request(seed=0), Owner(9))
        assert (await again.result()).images[0].png == results[0].images[0].png

        # Affinity: "ray 0" switches to tiny2; then a tiny2 job and a tiny job arrive
        # together, and each goes to the worker that has its model loaded.
        switch = await queue.submit(request(seed=7, model="tiny2"), Owner(1))
        await switch.result()
        loaded = switch.worker_name
        tiny2_job = await queue.submit(request(seed=8, model="tiny2"), Owner(2))
        tiny_job = await queue.submit(request(seed=9, model="tiny"), Owner(3))
        await asyncio.gather(tiny2_job.result(), tiny_job.result())
        assert tiny2_job.worker_name == loaded
        assert tiny_job.worker_name != loaded
    finally:
        await queue.close()
    # The actors' processes end with the queue.
    for worker in pool:
        assert worker.pid is not None and await _exits(worker.pid)


async def test_cancel_and_a_model_error_reach_the_bot_and_the_worker_stays(
    cluster: RayCluster, tiny_model: TinyModel, store: Store, tmp_path: Path
) -> None:
    pool = workers(tiny_model, count=1)
    queue = queue_of(pool, store, tmp_path)
    await queue.start(warm_up_model="tiny")
    started_pid = pool[0].pid
    try:
        long = await queue.submit(request(seed=1, steps=500), Owner(1))
        await until_stepping(long)
        started = time.monotonic()
        assert await queue.cancel(long.job_id, user_id=1) is JobState.RUNNING
        with pytest.raises(GenerationCancelled):
            await long.result()
        assert time.monotonic() - started < 30  # far sooner than 500 steps
        assert long.progress is not None and long.progress.step < 500
        record = await store.jobs.get_job(long.job_id)
        assert record is not None and record.state is JobState.CANCELLED
        # The worker takes the next job as usual.
        after = await queue.submit(request(seed=2), Owner(1))
        await after.result()
        # A model this worker cannot load fails that job, with the reason, and nothing else.
        unloadable = await queue.submit(request(seed=3, model="absent"), Owner(1))
        with pytest.raises(ModelError, match=r"absent\.safetensors"):
            await unloadable.result()
        last = await queue.submit(request(seed=4), Owner(1))
        await last.result()
        assert pool[0].pid == started_pid  # the same actor throughout
    finally:
        await queue.close()


async def test_a_worker_that_cannot_warm_up_stops_the_start_with_the_reason(
    cluster: RayCluster, tiny_model: TinyModel, store: Store, tmp_path: Path
) -> None:
    queue = queue_of(workers(tiny_model, count=1), store, tmp_path)
    try:
        with pytest.raises(ModelError, match=r"absent\.safetensors"):
            await queue.start(warm_up_model="absent")
    finally:
        await queue.close()


async def test_a_worker_the_cluster_has_no_room_for_says_so(
    cluster: RayCluster, tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_workers, "ACTOR_START_TIMEOUT_S", 3.0)
    [worker] = workers(tiny_model, count=1)
    worker.placement = RayPlacement(num_gpus=1)  # this CPU-only cluster has none
    with pytest.raises(WorkerUnavailableError, match=r"no room on the Ray cluster.*1 GPU"):
        await worker.start(None)
    await worker.close()


async def test_a_worker_killed_mid_batch_loses_no_job_and_repeats_none(
    cluster: RayCluster, tiny_model: TinyModel, store: Store, tmp_path: Path
) -> None:
    pool = workers(tiny_model)
    queue = queue_of(pool, store, tmp_path)
    await queue.start(warm_up_model="tiny")
    try:
        handles = [await queue.submit(request(seed=i, steps=60), Owner(i)) for i in range(4)]
        victim_job = handles[0]
        await until_stepping(victim_job)
        victim = next(w for w in pool if w.name == victim_job.worker_name)
        killed_pid = victim.pid
        assert killed_pid is not None
        os.kill(killed_pid, signal.SIGKILL)
        results = await asyncio.gather(*(h.result() for h in handles))
    finally:
        await queue.close()
    assert victim_job.worker_losses == 1
    assert victim.pid != killed_pid  # replaced by a fresh actor
    for handle, result in zip(handles, results, strict=True):
        record = await store.jobs.get_job(handle.job_id)
        assert record is not None and record.state is JobState.DONE
        assert record.outcome is not None and len(record.outcome.images) == 1
        assert result.images[0].seed == handle.request.seed
    # Exactly one set of files per job: nothing written twice, nothing half-written.
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == sorted(f"job-{h.job_id}-0.png" for h in handles)


async def _exits(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        await asyncio.sleep(0.2)
    return False
