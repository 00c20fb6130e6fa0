"""The queue and worker against a fast fake generator and an in-memory journal."""

import asyncio
import dataclasses
import errno
import threading
from pathlib import Path
from typing import Any

import pytest

from inference.errors import (
    GenerationCancelled,
    GenerationFailedError,
    NotYourJobError,
    QueueFullError,
    StorageUnavailableError,
)
from inference.fakes import FakeGenerator
from inference.jobs import JobState, Owner
from inference.queue import JobHandle, JobQueue, QueueSettings, storage_failure
from inference.types import GenerationRequest
from tests.memory_journal import MemoryJournal

pytestmark = pytest.mark.timeout(30)


def request(seed: int = 1, prompt: str = "a fox", **changes: Any) -> GenerationRequest:
    base = GenerationRequest(prompt, "", 64, 64, 4, 7.0, seed, "Euler a", 1, "fake")
    return dataclasses.replace(base, **changes)


async def until_running(handle: JobHandle) -> None:
    async for update in handle.updates():
        if update.state is JobState.RUNNING:
            return
    raise AssertionError(f"job {handle.job_id} finished without running: {handle.state}")


def make_queue(
    tmp_path: Path, generator: FakeGenerator | None = None, **settings: Any
) -> tuple[JobQueue, MemoryJournal]:
    journal = MemoryJournal()
    queue = JobQueue(
        generator or FakeGenerator(),
        journal,
        QueueSettings(output_dir=tmp_path / "out", **settings),
    )
    return queue, journal


async def test_submit_runs_on_the_worker_thread_and_saves_pngs(tmp_path: Path) -> None:
    generator = FakeGenerator()
    queue, journal = make_queue(tmp_path, generator)
    async with queue:
        handle = await queue.submit(request(seed=5, count=2), Owner(1))
        result = await handle.result()
    assert [image.seed for image in result.images] == [5, 6]
    assert generator.threads == {"local-worker_0"}
    record = journal.jobs[handle.job_id]
    assert record.state is JobState.DONE
    saved = [Path(i.path).read_bytes() for i in record.outcome.images]  # noqa: ASYNC240
    assert saved == [i.png for i in result.images]
    assert record.outcome.grid_path and Path(record.outcome.grid_path).is_file()  # noqa: ASYNC240


async def test_round_robin_across_users(tmp_path: Path) -> None:
    gate = threading.Event()
    generator = FakeGenerator(step_gate=gate)
    queue, _ = make_queue(tmp_path, generator, batching=False, max_queued_per_user=10)
    async with queue:
        hog = [await queue.submit(request(seed=100 + i), Owner(1)) for i in range(5)]
        other = await queue.submit(request(seed=200), Owner(2))
        third = await queue.submit(request(seed=300), Owner(3))
        assert other.position < hog[1].position and third.position < hog[1].position
        gate.set()
        await asyncio.gather(*(h.result() for h in [*hog, other, third]))
    order = [seeds[0] for seeds in generator.calls]
    assert order == [100, 200, 300, 101, 102, 103, 104]


async def test_user_just_served_waits_for_those_who_arrived_meanwhile(tmp_path: Path) -> None:
    gate = threading.Event()
    generator = FakeGenerator(step_gate=gate)
    queue, _ = make_queue(tmp_path, generator, batching=False)
    async with queue:
        first = await queue.submit(request(seed=1), Owner(1))
        await until_running(first)  # nobody else is waiting while it runs
        again = await queue.submit(request(seed=2), Owner(1))
        newcomer = await queue.submit(request(seed=3), Owner(2))
        gate.set()
        await asyncio.gather(first.result(), again.result(), newcomer.result())
    assert [seeds[0] for seeds in generator.calls] == [1, 3, 2]


async def test_a_batch_spanning_rounds_counts_every_turn(tmp_path: Path) -> None:
    gate = threading.Event()
    generator = FakeGenerator(step_gate=gate)
    queue, _ = make_queue(tmp_path, generator, max_queued_per_user=10)
    async with queue:
        blocker = await queue.submit(request(seed=1, steps=9), Owner(9))
        await until_running(blocker)
        handles = [
            await queue.submit(request(seed=seed), Owner(seed // 10))
            for seed in (11, 12, 13, 21, 22, 31, 32)
        ]
        gate.set()
        await asyncio.gather(blocker.result(), *(h.result() for h in handles))
    # user 1 got two turns in the first batch, so users 2 and 3 go before its third job
    assert generator.calls[1:] == [(11, 21, 31, 12), (22, 32, 13)]


async def test_caps_give_a_clear_error(tmp_path: Path) -> None:
    gate = threading.Event()
    queue, _ = make_queue(
        tmp_path, FakeGenerator(step_gate=gate), max_queued=3, max_queued_per_user=2
    )
    async with queue:
        running = await queue.submit(request(), Owner(1))
        await until_running(running)
        await queue.submit(request(), Owner(1))  # a running job counts towards the user's cap
        with pytest.raises(QueueFullError, match="you already have 2 jobs"):
            await queue.submit(request(), Owner(1))
        await queue.submit(request(), Owner(2))
        await queue.submit(request(), Owner(3))
        with pytest.raises(QueueFullError, match="queue is full"):
            await queue.submit(request(), Owner(4))
        gate.set()


async def test_cancel_queued_and_running(tmp_path: Path) -> None:
    gate = threading.Event()
    generator = FakeGenerator(step_gate=gate)
    queue, journal = make_queue(tmp_path, generator, batching=False)
    async with queue:
        running = await queue.submit(request(seed=1), Owner(1))
        queued = await queue.submit(request(seed=2), Owner(2))
        await until_running(running)
        with pytest.raises(NotYourJobError):
            await queue.cancel(queued.job_id, user_id=1)
        assert await queue.cancel(queued.job_id, user_id=2) is JobState.CANCELLED
        with pytest.raises(GenerationCancelled):
            await queued.result()
        # a moderator may cancel someone else's running job; it stops at the next step
        assert await queue.cancel(running.job_id, user_id=9, is_moderator=True) is JobState.RUNNING
        gate.set()
        with pytest.raises(GenerationCancelled):
            await running.result()
    assert journal.jobs[queued.job_id].state is JobState.CANCELLED
    assert journal.jobs[running.job_id].state is JobState.CANCELLED
    assert [seeds[0] for seeds in generator.calls] == [1]


async def test_failure_fails_that_job_and_the_worker_goes_on(tmp_path: Path) -> None:
    queue, journal = make_queue(tmp_path, FakeGenerator(fail_on_prompt="boom"), batching=False)
    async with queue:
        bad = await queue.submit(request(prompt="boom"), Owner(1))
        good = await queue.submit(request(prompt="fine"), Owner(2))
        with pytest.raises(
            GenerationFailedError, match=f"generation failed \\(job {bad.job_id}\\)"
        ):
            await bad.result()
        assert (await good.result()).images
    assert journal.jobs[bad.job_id].state is JobState.FAILED


async def test_compatible_jobs_share_one_batched_call(tmp_path: Path) -> None:
    gate = threading.Event()
    generator = FakeGenerator(step_gate=gate)
    queue, _ = make_queue(tmp_path, generator)
    async with queue:
        first = await queue.submit(request(seed=1), Owner(1))
        await until_running(first)
        a = await queue.submit(request(seed=10), Owner(2))
        b = await queue.submit(request(seed=20, count=2), Owner(3))
        c = await queue.submit(request(seed=30, steps=9), Owner(4))  # incompatible
        gate.set()
        results = await asyncio.gather(*(h.result() for h in (first, a, b, c)))
    assert generator.calls == [(1,), (10, 20, 21), (30,)]
    assert [i.seed for i in results[2].images] == [20, 21]


async def test_progress_updates_and_eta(tmp_path: Path) -> None:
    queue, _ = make_queue(tmp_path, FakeGenerator(step_seconds=0.01))
    async with queue:
        await (await queue.submit(request(), Owner(1))).result()  # teaches the speed model
        handle = await queue.submit(request(steps=8), Owner(1))
        assert handle.eta_s is not None and handle.eta_s > 0
        steps = [h.progress.step async for h in handle.updates() if h.progress]
    assert steps and steps[-1] == 8 and steps == sorted(steps)


async def test_event_loop_keeps_running_during_generation(tmp_path: Path) -> None:
    """Each step waits for a gate that only the event loop opens: if generation ran on (or
    blocked) the loop, the gate would stay shut and the job would never finish. No timings."""
    gate = threading.Event()
    generator = FakeGenerator(step_gate=gate)
    queue, _ = make_queue(tmp_path, generator)
    async with queue:
        handle = await queue.submit(request(steps=3), Owner(1))
        await until_running(handle)
        await asyncio.sleep(0)  # the loop runs while the worker waits at step 1
        assert handle.state is JobState.RUNNING and not gate.is_set()
        gate.set()
        await handle.result()
    assert threading.current_thread().name not in generator.threads


async def test_restart_resumes_unfinished_jobs(tmp_path: Path) -> None:
    journal = MemoryJournal()
    first = await journal.create_job(Owner(1), request(seed=1))
    second = await journal.create_job(Owner(2), request(seed=2))
    await journal.mark_running(first)  # the process died while this one ran
    generator = FakeGenerator()
    queue = JobQueue(generator, journal, QueueSettings(output_dir=tmp_path))
    async with queue:
        assert {h.job_id for h in queue.recovered} == {first, second}
        await asyncio.gather(*(h.result() for h in queue.recovered))
    assert journal.jobs[first].state is JobState.DONE
    assert journal.jobs[second].state is JobState.DONE


async def test_restart_can_fail_unfinished_jobs_instead(tmp_path: Path) -> None:
    journal = MemoryJournal()
    job = await journal.create_job(Owner(1), request())
    queue = JobQueue(
        FakeGenerator(), journal, QueueSettings(output_dir=tmp_path, resume_after_restart=False)
    )
    async with queue:
        assert queue.recovered == []
    assert journal.jobs[job].state is JobState.FAILED
    assert "restarted" in (journal.jobs[job].error or "")


async def test_close_puts_the_running_job_back(tmp_path: Path) -> None:
    queue, journal = make_queue(tmp_path, FakeGenerator(step_seconds=0.05))
    await queue.start()
    handle = await queue.submit(request(steps=100), Owner(1))
    await until_running(handle)
    await queue.close()
    assert journal.jobs[handle.job_id].state is JobState.QUEUED


async def test_a_storage_error_fails_the_job_in_the_journal_and_refuses_new_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Disk full or read-only outputs: the job ends failed in the journal (not only in
    memory), with the message users see; new jobs get the same message until the output
    folder can be written again."""
    queue, journal = make_queue(tmp_path)
    async with queue:
        out = tmp_path / "out"
        out.rmdir()
        out.write_text("not a folder any more")  # every write under it fails (even as root)
        handle = await queue.submit(request(), Owner(1))
        with pytest.raises(StorageUnavailableError) as failure:
            await handle.result()
        assert "operator has been told" in str(failure.value)
        record = journal.jobs[handle.job_id]
        assert record.state is JobState.FAILED and record.error == str(failure.value)
        assert len(queue) == 0 and queue.jobs_of(1) == []
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and f"job {handle.job_id}" in errors[0].getMessage()

        with pytest.raises(StorageUnavailableError):
            await queue.submit(request(seed=2), Owner(2))
        assert len(journal.jobs) == 1  # refused before anything was recorded

        out.unlink()
        out.mkdir()  # the operator fixed it
        again = await queue.submit(request(seed=3), Owner(2))
        assert (await again.result()).images
        assert journal.jobs[again.job_id].state is JobState.DONE


async def test_disk_full_is_named_as_such() -> None:
    full = storage_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert str(full) == "the bot's disk is full; an operator has been told"
    read_only = storage_failure(OSError(errno.EROFS, "Read-only file system"))
    assert "refuses writes" in str(read_only)


async def test_a_custom_recorder_creates_the_job(tmp_path: Path) -> None:
    """The bot stores where a result goes in the same step as the job (submit's `record`)."""
    queue, journal = make_queue(tmp_path)
    seen: list[tuple[Owner, GenerationRequest]] = []

    async def record(owner: Owner, req: GenerationRequest) -> int:
        seen.append((owner, req))
        return await journal.create_job(owner, req)

    async with queue:
        handle = await queue.submit(request(seed=9), Owner(4), record=record)
        await handle.result()
    assert seen == [(Owner(4), request(seed=9))]
    assert journal.jobs[handle.job_id].state is JobState.DONE
