"""The asyncio front door (`submit`) and the dispatcher that hands batches to the workers.

Whenever a worker is idle, the dispatcher gives it the next batch in fair order (see
fairness.py), preferring within a round a model that worker already has loaded. Workers
(workers.py: a dedicated thread, or a Ray actor) run the pipelines away from the event loop,
so Discord's heartbeats never wait on a GPU. The journal (the SQLite store) is the truth about
jobs; the structures here are a cache of it, rebuilt by `start()` after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
from inference.workers import LocalWorker, Worker, WorkerLostError

logger = logging.getLogger(__name__)

MAX_WORKER_LOSSES = 2  # a job whose worker died this often fails instead of running again
REPLACE_RETRY_S = 5.0  # first pause before trying again to replace a lost worker

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
        self.worker_losses = 0  # workers that died running it (queue.MAX_WORKER_LOSSES)
        self.worker_name: str | None = None  # the worker that runs (or last ran) it
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


@dataclass(eq=False)
class _Slot:
    """One worker and what it is doing: the queue's own bookkeeping, on the event loop."""

    worker: Worker
    running: list[JobHandle] = field(default_factory=list)
    started: float = 0.0
    estimate: float | None = None  # of the running batch; None before speeds are known
    loaded_model: str | None = None  # the model of its last batch: what it has loaded
    task: asyncio.Task[None] | None = None  # running a batch, or replacing a lost worker

    @property
    def idle(self) -> bool:
        return self.task is None


class JobQueue:
    """`submit(request, owner) -> JobHandle`; batches run on a pool of workers (workers.py).

    `workers`: the pool, or one ImageGenerator to run on a single local worker thread."""

    def __init__(
        self,
        workers: ImageGenerator | Sequence[Worker],
        journal: JobJournal,
        settings: QueueSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(workers, Sequence):
            if not workers:
                raise ValueError("a queue needs at least one worker")
            self.workers: list[Worker] = list(workers)
        else:
            self.workers = [LocalWorker(workers)]
        self.journal = journal
        self.settings = settings
        self.speed = SpeedModel()
        self._clock = clock
        self._slots = [_Slot(worker) for worker in self.workers]
        self._handles: dict[int, JobHandle] = {}
        self._waiting: dict[int, WaitingJob] = {}
        self._turns: dict[int, int] = {}  # turns had, relative to the least-served waiting user
        self._last_model: str | None = None  # of the batch started last: orders the positions
        self._sequence = 0
        self._order: list[WaitingJob] | None = None
        self._places: dict[int, int] = {}  # job id -> 1-based place in _order
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()  # set by close(): ends waits that must not outlast it
        self._submit_lock = asyncio.Lock()
        self._closing = False
        self._closed = False
        self._dispatcher: asyncio.Task[None] | None = None
        self.recovered: list[JobHandle] = []
        # Set while the output folder cannot be written (disk full, read-only): new jobs are
        # refused with the same message until a probe write succeeds again.
        self.storage_error: StorageUnavailableError | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, *, warm_up_model: str | None = None) -> None:
        """Start the workers, rebuild the queue from the journal, then start dispatching.

        `warm_up_model`: each worker loads it first (imports included), so the first jobs,
        and the event loop that shares the GIL with loading, are not slowed."""
        self.settings.output_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.gather(*(worker.start(warm_up_model) for worker in self.workers))
        for slot in self._slots:
            slot.loaded_model = warm_up_model
        for record in await self.journal.unfinished_jobs():
            await self._recover(record)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="queue-dispatcher")
        self._dispatcher.add_done_callback(_log_task_failure)

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
        """Stop taking work; running batches stop at their next step and go back in line.

        Waiting jobs stay queued in the journal and run after the next start. The workers
        are closed last. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._stopping.set()
        self._wake.set()
        if self._dispatcher is not None:
            await self._dispatcher
        tasks = [slot.task for slot in self._slots if slot.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:  # e.g. stuck loading a model: between steps never came
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await asyncio.gather(*(worker.close() for worker in self.workers))

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
        return len(self._waiting) + self.running_count()

    def running_count(self) -> int:
        """Jobs generating now, on all workers together."""
        return sum(len(slot.running) for slot in self._slots)

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
        if handle.state is JobState.RUNNING:
            return 0
        self._current_order()
        return self._places.get(job_id, -1)

    def eta(self, job_id: int) -> float | None:
        """When the job should be done: each job ahead goes to the worker that frees first.

        With one worker: the running batch's remaining time plus every job ahead, plus this
        one. None until the speeds it needs were measured."""
        handle = self._handles.get(job_id)
        if handle is None or handle.done():
            return None
        for slot in self._slots:
            if handle in slot.running:
                return self._remaining(slot)
        free_at = [self._remaining(slot) for slot in self._slots]
        if None in free_at:
            return None
        heap = [t for t in free_at if t is not None]
        heapq.heapify(heap)
        for job in self._current_order():
            estimate = self.speed.estimate(self._handles[job.job_id].request)
            if estimate is None:
                return None
            finish = heapq.heappop(heap) + estimate
            if job.job_id == job_id:
                return finish
            heapq.heappush(heap, finish)
        return None

    def _remaining(self, slot: _Slot) -> float | None:
        if not slot.running:
            return 0.0
        if slot.estimate is None:
            return None
        return max(0.0, slot.estimate - (self._clock() - slot.started))

    # --- dispatching -----------------------------------------------------------------------

    def _enqueue(
        self, job_id: int, owner: Owner, request: GenerationRequest, *, front: bool = False
    ) -> JobHandle:
        handle = self._handles.get(job_id) or JobHandle(self, job_id, owner, request)
        self._handles[job_id] = handle
        self._sequence += 1
        self._waiting[job_id] = WaitingJob(
            job_id=job_id,
            user_id=owner.user_id,
            model=request.model,
            batch_key=request.batch_key(),
            images=request.count,
            sequence=self._sequence,
            front=front,
        )
        self._order = None
        self._wake.set()
        return handle

    async def _dispatch(self) -> None:
        """Hand the next batch in fair order to each idle worker, until closing."""
        while not self._closing:
            idle = [slot for slot in self._slots if slot.idle]
            if not self._waiting or not idle:
                if not self._waiting and all(slot.idle for slot in self._slots):
                    self._turns.clear()  # idle: the next rounds start even
                self._wake.clear()
                await self._wake.wait()
                continue
            slot, batch = self._take_batch(idle)
            slot.task = asyncio.create_task(
                self._run_on(slot, batch), name=f"batch-on-{slot.worker.name}"
            )
            slot.task.add_done_callback(_log_task_failure)

    def _take_batch(self, idle: list[_Slot]) -> tuple[_Slot, list[JobHandle]]:
        """The idle worker to use and its batch: the fair order's next batch, preferring (only
        within its round) a model the worker has loaded, and a worker with the next batch's
        model loaded over one that would have to load it."""
        choice: tuple[int, _Slot, list[WaitingJob]] | None = None
        for slot in idle:
            order = fair_order(self._waiting.values(), self._turns, slot.loaded_model)
            rank = 0 if order[0].model == slot.loaded_model else 1 if not slot.loaded_model else 2
            if choice is None or rank < choice[0]:
                choice = (rank, slot, order)
        assert choice is not None  # `idle` is never empty
        _, slot, order = choice
        limit = self.settings.max_batch_images if self.settings.batching else 0
        batch = next_batch(order, limit) if self.settings.batching else order[:1]
        for job in batch:
            del self._waiting[job.job_id]
        waiting_users = {job.user_id for job in self._waiting.values()}
        served = (job.user_id for job in batch if not job.front)  # a retry had its turn
        self._turns = record_turns(self._turns, served, waiting_users)
        for job in self._waiting.values():
            self._handles[job.job_id]._touch()  # everyone moved up: positions and ETAs changed
        self._order = None
        self._last_model = batch[0].model
        return slot, [self._handles[job.job_id] for job in batch]

    async def _run_on(self, slot: _Slot, batch: list[JobHandle]) -> None:
        try:
            await self._run_batch(slot, batch)
        except WorkerLostError as error:
            slot.running = []
            await self._worker_lost(slot, batch, error)
        except Exception:  # a worker must outlive any one job's failure
            ids = [h.job_id for h in batch]
            logger.exception("jobs %s: bookkeeping failed after generation", ids)
            for handle in batch:
                if not handle.done():
                    await self._fail(
                        handle, GenerationFailedError(f"generation failed (job {handle.job_id})")
                    )
        finally:
            slot.running = []
            slot.task = None
            self._wake.set()

    async def _run_batch(self, slot: _Slot, batch: list[JobHandle]) -> None:
        for handle in batch:
            await self.journal.mark_running(handle.job_id)
            handle.worker_name = slot.worker.name
            handle._set_state(JobState.RUNNING)
        slot.running = batch
        slot.started = self._clock()
        estimates = [self.speed.estimate(h.request) for h in batch]
        slot.estimate = None if None in estimates else sum(e or 0 for e in estimates)
        requests = [h.request for h in batch]
        ids = [h.job_id for h in batch]
        logger.info(
            "jobs %s: generating (%d images) on %s",
            ids,
            sum(r.count for r in requests),
            slot.worker.name,
        )

        def on_progress(index: int, progress: Progress) -> None:  # event loop
            batch[index]._set_progress(progress)

        def is_cancelled(index: int) -> bool:  # worker thread or event loop
            return batch[index].cancel_requested or self._closing

        want_previews = any(h.wants_previews for h in batch)
        started = self._clock()
        try:
            results: list[GenerationResult | None] = await asyncio.shield(
                slot.worker.run(requests, on_progress, is_cancelled, want_previews, ids)
            )
        except asyncio.CancelledError:
            # Shutting down: the worker stops at its next step (is_cancelled sees _closing).
            for handle in batch:
                await self._put_back_or_cancel(handle)
            raise
        except WorkerLostError:
            raise
        except GenerationCancelled:
            results = [None] * len(batch)
        except InferenceError as error:
            logger.warning("jobs %s: failed on %s: %s", ids, slot.worker.name, error)
            for handle in batch:
                await self._fail(handle, error)
            return
        except Exception:
            logger.exception("jobs %s: generation failed on %s", ids, slot.worker.name)
            for handle in batch:
                await self._fail(
                    handle, GenerationFailedError(f"generation failed (job {handle.job_id})")
                )
            return
        slot.loaded_model = requests[0].model
        if all(result is not None for result in results):
            self.speed.record(requests, self._clock() - started)
        for handle, result in zip(batch, results, strict=True):
            if result is None:
                await self._put_back_or_cancel(handle)
                continue
            await self._complete(handle, result)

    async def _worker_lost(
        self, slot: _Slot, batch: list[JobHandle], error: WorkerLostError
    ) -> None:
        """Its jobs go back in line, at the front, once; then it is replaced.

        A job whose worker dies twice fails with a notice: it may be what kills them."""
        name = slot.worker.name
        logger.error("worker %s died running jobs %s: %s", name, [h.job_id for h in batch], error)
        for handle in batch:
            handle.worker_losses += 1
            if handle.cancel_requested or self._closing:
                await self._put_back_or_cancel(handle)
            elif handle.worker_losses >= MAX_WORKER_LOSSES:
                await self._fail(
                    handle,
                    GenerationFailedError(
                        f"the worker running job {handle.job_id} stopped twice while making "
                        "it; please try again, perhaps with other settings"
                    ),
                )
            else:
                await self.journal.requeue(handle.job_id)
                self._enqueue(handle.job_id, handle.owner, handle.request, front=True)
                handle._set_state(JobState.QUEUED)
                logger.info("job %d: back at the front of the line", handle.job_id)
        slot.loaded_model = None
        delay_s = REPLACE_RETRY_S
        while not self._closing:
            try:
                await slot.worker.replace()
            except Exception as failure:
                logger.error(
                    "worker %s: cannot start a replacement (%s); retrying in %.0f s",
                    name,
                    failure,
                    delay_s,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay_s)
                delay_s = min(delay_s * 2, 300.0)
                continue
            logger.info("worker %s replaced", name)
            return

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
