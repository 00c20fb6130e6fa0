"""The asyncio front door (`submit`) and the one worker that runs jobs on the GPU.

One worker task takes batches in fair order (see fairness.py) and runs each on a single
dedicated thread that owns the pipelines, so the event loop (and Discord's heartbeats) never
waits on the GPU. The journal (the SQLite store) is the truth about jobs; the structures here
are a cache of it, rebuilt by `start()` after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inference.errors import (
    GenerationCancelled,
    GenerationFailedError,
    InferenceError,
    JobNotFoundError,
    NotYourJobError,
    QueueFullError,
    StorageUnavailableError,
)
from inference.eta import SpeedModel
from inference.fairness import WaitingJob, fair_order, next_batch, record_turns
from inference.jobs import JobJournal, JobOutcome, JobRecord, JobState, Owner, StoredImage
from inference.types import GenerationRequest, GenerationResult, ImageGenerator, Progress

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # progress events handed to the event loop at most this often

# Records a new job in the journal and returns its id. The default is the journal's own
# create_job; a caller passes its own to store more with the job in the same transaction
# (where the result goes, what it was charged) before the job can run.
JobRecorder = Callable[[Owner, GenerationRequest], Awaitable[int]]


@dataclass(frozen=True)
class QueueSettings:
    output_dir: Path  # where finished PNGs are kept, so a result survives a restart
    max_queued: int = 100  # all users together
    # None (the bot): no per-user cap here. The bot's cap depends on the guild, so bot/limits.py
    # alone decides it, before submit; a second one here would contradict a guild's override.
    # A queue used on its own (benchmarks, tests) may set one.
    max_queued_per_user: int | None = None
    max_batch_images: int = 4  # images in one batched pipeline call
    batching: bool = True
    resume_after_restart: bool = True  # False: fail unfinished jobs with a notice instead


class JobHandle:
    """One job as the bot sees it: state, position, ETA, progress updates and the result."""

    def __init__(
        self, queue: JobQueue, job_id: int, owner: Owner, request: GenerationRequest
    ) -> None:
        self._queue = queue
        self.job_id = job_id
        self.owner = owner
        self.request = request
        self.created_at = time.time()  # unix seconds (a recovered job: when it was recovered)
        self.state = JobState.QUEUED
        self.progress: Progress | None = None
        self.error: InferenceError | None = None
        self.wants_previews = True
        self.recovered = False  # rebuilt from the journal after a restart
        self.cancel_requested = False  # read by the worker thread between steps
        self._version = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._result: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()

    @property
    def position(self) -> int:
        """0 while running, then 1, 2, … in line; -1 once finished."""
        return self._queue.position(self.job_id)

    @property
    def eta_s(self) -> float | None:
        """Seconds until the result, from measured speed; None before anything was measured."""
        return self._queue.eta(self.job_id)

    def done(self) -> bool:
        return self._result.done()

    async def result(self) -> GenerationResult:
        """The images; raises GenerationCancelled or another InferenceError on failure."""
        return await asyncio.shield(self._result)

    async def updates(self) -> AsyncIterator[JobHandle]:
        """Yields the handle whenever its state or progress changed, coalescing bursts.

        A slow consumer (a Discord edit takes a while) skips to the latest state instead of
        working through a backlog of stale steps.
        """
        seen = -1
        while True:
            if self._version == seen:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)
            seen = self._version
            yield self
            if self.done():
                return

    def _touch(self) -> None:
        self._version += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _set_state(self, state: JobState) -> None:
        self.state = state
        self._touch()

    def _set_progress(self, progress: Progress) -> None:
        if not self.done():
            self.progress = progress
            self._touch()

    def _finish(
        self, state: JobState, result: GenerationResult | None, error: InferenceError | None
    ) -> None:
        if self._result.done():
            return
        self.state = state
        self.error = error
        if result is not None:
            self._result.set_result(result)
        else:
            self._result.set_exception(error or GenerationCancelled())
            self._result.exception()  # mark retrieved: nobody may be awaiting it
        self._touch()


class JobQueue:
    """`submit(request, owner) -> JobHandle`: the interface a distributed backend would keep."""

    def __init__(
        self,
        generator: ImageGenerator,
        journal: JobJournal,
        settings: QueueSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.generator = generator
        self.journal = journal
        self.settings = settings
        self.speed = SpeedModel()
        self._clock = clock
        self._handles: dict[int, JobHandle] = {}
        self._waiting: dict[int, WaitingJob] = {}
        self._running: list[JobHandle] = []
        self._running_started = 0.0
        self._running_estimate: float | None = None
        self._turns: dict[int, int] = {}  # turns had, relative to the least-served waiting user
        self._last_model: str | None = None
        self._sequence = 0
        self._order: list[WaitingJob] | None = None
        self._places: dict[int, int] = {}  # job id -> 1-based place in _order
        self._wake = asyncio.Event()
        self._submit_lock = asyncio.Lock()
        self._closing = False
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        # One thread owns every pipeline: diffusers pipelines are not thread-safe.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-worker")
        self.recovered: list[JobHandle] = []
        # Set while the output folder cannot be written (disk full, read-only): new jobs are
        # refused with the same message until a probe write succeeds again.
        self.storage_error: StorageUnavailableError | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, *, warm_up_model: str | None = None) -> None:
        """Rebuild the queue from the journal, then start the worker.

        `warm_up_model`: load it on the worker's thread first (imports included), so the
        first jobs, and the event loop that shares the GIL with loading, are not slowed."""
        self.settings.output_dir.mkdir(parents=True, exist_ok=True)
        if warm_up_model is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self.generator.warm_up, warm_up_model)
        for record in await self.journal.unfinished_jobs():
            await self._recover(record)
        self._worker = asyncio.create_task(self._work(), name="queue-worker")
        self._worker.add_done_callback(self._log_task_failure)

    async def _recover(self, record: JobRecord) -> None:
        if not self.settings.resume_after_restart:
            await self.journal.mark_failed(
                record.id, "the bot restarted before this job finished; please ask again"
            )
            return
        if record.state is JobState.RUNNING:
            await self.journal.requeue(record.id)
        handle = self._enqueue(record.id, record.owner, record.request)
        handle.recovered = True
        self.recovered.append(handle)
        logger.info("job %d: resumed after restart", record.id)

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop taking work; a running batch stops at its next step and goes back in line.

        Waiting jobs stay queued in the journal and run after the next start. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._wake.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout=grace_s)
            except TimeoutError:  # e.g. stuck loading a model: between steps never came
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def __aenter__(self) -> JobQueue:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the front door --------------------------------------------------------------------

    async def submit(
        self,
        request: GenerationRequest,
        owner: Owner,
        *,
        previews: bool = True,
        record: JobRecorder | None = None,
    ) -> JobHandle:
        """Queue a job; `record` creates its journal entry (default: journal.create_job)."""
        async with self._submit_lock:  # the caps are checked and taken in one step
            if self._closing:
                raise QueueFullError("the bot is shutting down; try again in a minute")
            if self.storage_error is not None:
                await self._probe_storage()
            if len(self._waiting) >= self.settings.max_queued:
                raise QueueFullError(
                    f"the queue is full ({len(self._waiting)} jobs); try again in a few minutes"
                )
            per_user = self.settings.max_queued_per_user
            mine = self.count_of(owner.user_id)
            if per_user is not None and mine >= per_user:
                raise QueueFullError(
                    f"you already have {mine} jobs waiting (at most {per_user}); "
                    "wait for one or /cancel one"
                )
            job_id = await (record or self.journal.create_job)(owner, request)
            handle = self._enqueue(job_id, owner, request)
            handle.wants_previews = previews
        logger.info("job %d: queued for user %d at %d", job_id, owner.user_id, handle.position)
        return handle

    async def cancel(self, job_id: int, *, user_id: int, is_moderator: bool = False) -> JobState:
        """Cancel a queued job now, or a running one at its next step. Returns its state."""
        handle = self._handles.get(job_id)
        if handle is None or handle.done():
            raise JobNotFoundError(f"job {job_id} is not queued or running")
        if handle.owner.user_id != user_id and not is_moderator:
            raise NotYourJobError(f"job {job_id} is not yours; only moderators can cancel it")
        if handle.state is JobState.RUNNING:
            handle.cancel_requested = True
            logger.info("job %d: cancel requested by %d while running", job_id, user_id)
            return JobState.RUNNING
        del self._waiting[job_id]
        self._order = None
        await self.journal.mark_cancelled(job_id)
        handle._finish(JobState.CANCELLED, None, GenerationCancelled())
        self._forget(handle)
        logger.info("job %d: cancelled by %d while queued", job_id, user_id)
        return JobState.CANCELLED

    def count_of(self, user_id: int) -> int:
        """The user's unfinished jobs (queued and running): what the per-user caps count."""
        return sum(1 for h in self._handles.values() if h.owner.user_id == user_id and not h.done())

    def jobs_of(self, user_id: int) -> list[JobHandle]:
        """The user's unfinished jobs, running first, then in the order they will run."""
        return sorted(
            (h for h in self._handles.values() if h.owner.user_id == user_id and not h.done()),
            key=lambda h: h.position,
        )

    def __len__(self) -> int:
        return len(self._waiting) + len(self._running)

    # --- positions and ETAs ----------------------------------------------------------------

    def _current_order(self) -> list[WaitingJob]:
        """The fair order of waiting jobs, cached (with each job's place) until it changes."""
        if self._order is None:
            self._order = fair_order(self._waiting.values(), self._turns, self._last_model)
            self._places = {job.job_id: place for place, job in enumerate(self._order, 1)}
        return self._order

    def position(self, job_id: int) -> int:
        handle = self._handles.get(job_id)
        if handle is None or handle.done():
            return -1
        if handle in self._running:
            return 0
        self._current_order()
        return self._places.get(job_id, -1)

    def eta(self, job_id: int) -> float | None:
        """Remaining time of the running batch plus every job ahead, plus this one."""
        handle = self._handles.get(job_id)
        if handle is None or handle.done():
            return None
        remaining = self._running_remaining()
        if handle in self._running:
            return remaining
        if remaining is None and self._running:
            return None
        total = remaining or 0.0
        for job in self._current_order():
            estimate = self.speed.estimate(self._handles[job.job_id].request)
            if estimate is None:
                return None
            total += estimate
            if job.job_id == job_id:
                return total
        return None

    def _running_remaining(self) -> float | None:
        if not self._running:
            return 0.0
        if self._running_estimate is None:
            return None
        elapsed = self._clock() - self._running_started
        return max(0.0, self._running_estimate - elapsed)

    # --- the worker ------------------------------------------------------------------------

    def _enqueue(self, job_id: int, owner: Owner, request: GenerationRequest) -> JobHandle:
        handle = JobHandle(self, job_id, owner, request)
        self._handles[job_id] = handle
        self._sequence += 1
        self._waiting[job_id] = WaitingJob(
            job_id=job_id,
            user_id=owner.user_id,
            model=request.model,
            batch_key=request.batch_key(),
            images=request.count,
            sequence=self._sequence,
        )
        self._order = None
        self._wake.set()
        return handle

    def _take_batch(self) -> list[JobHandle]:
        order = self._current_order()
        limit = self.settings.max_batch_images if self.settings.batching else 0
        batch = next_batch(order, limit) if self.settings.batching else order[:1]
        for job in batch:
            del self._waiting[job.job_id]
        waiting_users = {job.user_id for job in self._waiting.values()}
        self._turns = record_turns(self._turns, (job.user_id for job in batch), waiting_users)
        for job in self._waiting.values():
            self._handles[job.job_id]._touch()  # everyone moved up: positions and ETAs changed
        self._order = None
        return [self._handles[job.job_id] for job in batch]

    async def _work(self) -> None:
        while not self._closing:
            if not self._waiting:
                self._turns.clear()  # idle: the next rounds start even
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take_batch()
            try:
                await self._run_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker must outlive any one job's failure
                ids = [h.job_id for h in batch]
                logger.exception("jobs %s: bookkeeping failed after generation", ids)
                for handle in batch:
                    if not handle.done():
                        await self._fail(
                            handle,
                            GenerationFailedError(f"generation failed (job {handle.job_id})"),
                        )
            finally:
                self._running = []

    async def _run_batch(self, batch: list[JobHandle]) -> None:
        loop = asyncio.get_running_loop()
        for handle in batch:
            await self.journal.mark_running(handle.job_id)
            handle._set_state(JobState.RUNNING)
        self._running = batch
        self._running_started = self._clock()
        estimates = [self.speed.estimate(h.request) for h in batch]
        self._running_estimate = None if None in estimates else sum(e or 0 for e in estimates)
        requests = [h.request for h in batch]
        ids = [h.job_id for h in batch]
        logger.info("jobs %s: generating (%d images)", ids, sum(r.count for r in requests))

        last_sent = [float("-inf")] * len(batch)

        def on_progress(index: int, progress: Progress) -> None:  # worker thread
            # Each hop wakes the event loop, which then competes with the GPU thread for the
            # GIL and (on CPU) the cores; nobody shows progress more often than this anyway.
            now = time.monotonic()
            last = progress.step == progress.total or progress.preview is not None
            if last or now - last_sent[index] >= PROGRESS_INTERVAL_S:
                last_sent[index] = now
                loop.call_soon_threadsafe(batch[index]._set_progress, progress)

        def is_cancelled(index: int) -> bool:  # worker thread
            return batch[index].cancel_requested or self._closing

        run = functools.partial(
            self.generator.generate,
            requests,
            on_progress,
            is_cancelled,
            any(h.wants_previews for h in batch),
        )
        started = self._clock()
        try:
            results: list[GenerationResult | None] = await asyncio.shield(
                loop.run_in_executor(self._executor, run)
            )
        except asyncio.CancelledError:
            # Shutting down: the thread stops at its next step (is_cancelled sees _closing).
            for handle in batch:
                await self._put_back_or_cancel(handle)
            raise
        except GenerationCancelled:
            results = [None] * len(batch)
        except InferenceError as error:
            logger.warning("jobs %s: failed: %s", ids, error)
            for handle in batch:
                await self._fail(handle, error)
            return
        except Exception:
            logger.exception("jobs %s: generation failed", ids)
            for handle in batch:
                await self._fail(
                    handle, GenerationFailedError(f"generation failed (job {handle.job_id})")
                )
            return
        self._last_model = requests[0].model
        if all(result is not None for result in results):
            self.speed.record(requests, self._clock() - started)
        for handle, result in zip(batch, results, strict=True):
            if result is None:
                await self._put_back_or_cancel(handle)
                continue
            await self._complete(handle, result)

    async def _complete(self, handle: JobHandle, result: GenerationResult) -> None:
        """Keep the images on disk, then record the job done; a storage error fails it."""
        try:
            outcome = await asyncio.to_thread(
                save_outcome, self.settings.output_dir, handle.job_id, result
            )
        except OSError as error:
            self.storage_error = storage_failure(error)
            # One line for the operator; the user is told by the job's failure notice.
            logger.error(
                "job %d: cannot save images in %s: %s",
                handle.job_id,
                self.settings.output_dir,
                error.strerror or error,
            )
            await self._fail(handle, self.storage_error)
            return
        self.storage_error = None
        await self.journal.mark_done(handle.job_id, outcome)
        handle._finish(JobState.DONE, result, None)
        self._forget(handle)
        logger.info("job %d: done in %.2f s", handle.job_id, result.elapsed_s)

    async def _probe_storage(self) -> None:
        """After a storage error: can the output folder be written again? Raises if not."""
        try:
            await asyncio.to_thread(_probe_write, self.settings.output_dir)
        except OSError as error:
            self.storage_error = storage_failure(error)
            raise self.storage_error from None
        logger.info("storage in %s is writable again", self.settings.output_dir)
        self.storage_error = None

    async def _put_back_or_cancel(self, handle: JobHandle) -> None:
        if handle.cancel_requested:
            await self.journal.mark_cancelled(handle.job_id)
            handle._finish(JobState.CANCELLED, None, GenerationCancelled())
            self._forget(handle)
            logger.info("job %d: cancelled while running", handle.job_id)
        else:  # interrupted by shutdown: it runs again after the restart
            await self.journal.requeue(handle.job_id)
            logger.info("job %d: put back in the queue for the next start", handle.job_id)

    async def _fail(self, handle: JobHandle, error: InferenceError) -> None:
        try:
            await self.journal.mark_failed(handle.job_id, str(error))
        except Exception:
            # The journal itself is failing (e.g. the disk is full): the job still ends here,
            # and the next start finds its row unfinished and runs it again.
            logger.exception("job %d: could not record the failure", handle.job_id)
        handle._finish(JobState.FAILED, None, error)
        self._forget(handle)

    def _forget(self, handle: JobHandle) -> None:
        self._handles.pop(handle.job_id, None)

    # --- task hygiene ----------------------------------------------------------------------

    @staticmethod
    def _log_task_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %s failed", task.get_name(), exc_info=task.exception())


def storage_failure(error: OSError) -> StorageUnavailableError:
    """What users are told when the bot cannot keep their images."""
    return StorageUnavailableError.because(disk_full=error.errno in (errno.ENOSPC, errno.EDQUOT))


def _probe_write(directory: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-") as probe:
        probe.write(b"x" * 4096)
        probe.flush()
        os.fsync(probe.fileno())


def save_outcome(output_dir: Path, job_id: int, result: GenerationResult) -> JobOutcome:
    """Write the PNGs (atomically: a crash leaves no half file) and describe them."""

    def write(name: str, data: bytes) -> str:
        path = output_dir / name
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)  # a full disk must not keep half files
            raise
        return str(path)

    images = tuple(
        StoredImage(
            write(f"job-{job_id}-{i}.png", image.png), image.seed, image.width, image.height
        )
        for i, image in enumerate(result.images)
    )
    grid = write(f"job-{job_id}-grid.png", result.grid_png) if result.grid_png else None
    return JobOutcome(images, grid, result.elapsed_s, result.notes)
