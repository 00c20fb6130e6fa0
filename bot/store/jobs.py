"""Jobs and their images: the queue's journal, history, delivery targets, lineage (the job a
re-roll re-rolled, the result image an upscale, variation or zoom-out started from).

Tables `jobs` and `job_images`. Job states move only along `TRANSITIONS`; anything else raises
`InvalidTransition` and changes nothing. Cancels race with the worker, so they get their own
answers:

- `mark_cancelled` on a done or failed job raises `CancelTooLate` (a subclass of
  `InvalidTransition`): the cancel lost the race and the result stands. It returns None, as
  `JobJournal` says, when it did cancel the job.
- `mark_cancelled` on an already cancelled job, and `requeue` on an already queued job, are
  no-ops: the job is already where the caller wants it (a double click, crash recovery
  requeueing every unfinished job without looking at its state first).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.store.database import Database, StoreError
from inference.jobs import JobOutcome, JobRecord, JobState, Lineage, Owner, StoredImage
from inference.types import GenerationRequest, ImageSource

#: target state -> states it may be entered from. The single source of truth for the SQL below.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RUNNING: frozenset({JobState.QUEUED}),
    JobState.DONE: frozenset({JobState.RUNNING}),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.RUNNING}),
    JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.RUNNING}),
    JobState.QUEUED: frozenset({JobState.RUNNING}),  # requeue
}


class JobNotFound(StoreError, LookupError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class InvalidTransition(StoreError):
    """A state change the state machine forbids; the job was left unchanged."""

    def __init__(
        self, job_id: int, current: JobState, target: JobState, detail: str | None = None
    ) -> None:
        if detail is None:
            allowed = ", ".join(sorted(TRANSITIONS.get(target, ()))) or "nothing"
            detail = f"cannot go from {current} to {target} (only from {allowed})"
        super().__init__(f"job {job_id}: {detail}")
        self.job_id = job_id
        self.current = current
        self.target = target


class CancelTooLate(InvalidTransition):
    """`mark_cancelled` lost the race: the job finished (done or failed) first."""

    def __init__(self, job_id: int, current: JobState) -> None:
        super().__init__(
            job_id, current, JobState.CANCELLED, f"already {current}, too late to cancel"
        )


@dataclass(frozen=True)
class DeliveryTarget:
    """Where a job's progress and result go in Discord."""

    job_id: int
    channel_id: int | None
    message_id: int | None = None
    # A live credential for 15 minutes: kept out of repr so it never lands in a log line.
    interaction_token: str | None = field(default=None, repr=False)
    application_id: int | None = None
    token_expires_at: float | None = None

    def token_usable(self, now: float, margin_s: float = 30.0) -> bool:
        """Whether the interaction token can still be used for followups at `now`."""
        return (
            self.interaction_token is not None
            and self.application_id is not None
            and self.token_expires_at is not None
            and now + margin_s < self.token_expires_at
        )


_JOB_COLUMNS = (
    "id, user_id, guild_id, state, prompt, negative_prompt, width, height, steps, guidance,"
    " seed, sampler, count, model, created_at, started_at, finished_at, error, elapsed_s,"
    " notes, grid_path, delivered_at, source_path, source_width, source_height, operation,"
    " strength, scale, upscaler, parent_job_id, parent_image_idx"
)
_SELECT_JOBS = "SELECT " + _JOB_COLUMNS + " FROM jobs "


def _states_json(states: Iterable[JobState]) -> str:
    # A variable-length IN list without building SQL text: `IN (SELECT value FROM json_each(?))`.
    return json.dumps(sorted(str(s) for s in states))


class Jobs:
    """The `jobs` and `job_images` tables. Implements `inference.jobs.JobJournal`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------ JobJournal

    async def create_job(
        self,
        owner: Owner,
        request: GenerationRequest,
        *,
        target: DeliveryTarget | None = None,
        rate_event_id: int | None = None,
        rerolled_from: int | None = None,
        parent: Lineage | None = None,
    ) -> int:
        """Record a queued job and return its id.

        `target` (where the result goes) is recorded in the same statement, before the job
        can run: a job never exists without somewhere to deliver it. Its job_id is ignored.
        `request.source` is stored with it, so the queue can rebuild the job after a restart;
        `parent` is the result image it was made from (its job must exist, and a job with a
        parent must have a source: sqlite3.IntegrityError otherwise)."""
        source = request.source
        async with self._db.locked():
            rows = await self._db.rows(
                "INSERT INTO jobs (user_id, guild_id, channel_id, state, prompt,"
                " negative_prompt, width, height, steps, guidance, seed, sampler, count, model,"
                " created_at, rerolled_from, message_id, interaction_token, application_id,"
                " token_expires_at, rate_event_id, source_path, source_width, source_height,"
                " operation, strength, scale, upscaler, parent_job_id, parent_image_idx)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    owner.user_id,
                    owner.guild_id,
                    target and target.channel_id,
                    request.prompt,
                    request.negative_prompt,
                    request.width,
                    request.height,
                    request.steps,
                    float(request.guidance),
                    request.seed,
                    request.sampler,
                    request.count,
                    request.model,
                    self._db.clock(),
                    rerolled_from,
                    target and target.message_id,
                    target and target.interaction_token,
                    target and target.application_id,
                    target and target.token_expires_at,
                    rate_event_id,
                    source and source.path,
                    source and source.width,
                    source and source.height,
                    source and source.operation,
                    source and float(source.strength),
                    source and float(source.scale),
                    source and source.upscaler,
                    parent and parent.job_id,
                    parent and parent.image_index,
                ),
            )
            return int(rows[0][0])

    async def mark_running(self, job_id: int) -> None:
        """queued -> running."""
        async with self._db.locked():
            rows = await self._db.rows(
                "UPDATE jobs SET state = 'running', started_at = ?"
                " WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
                (self._db.clock(), job_id, _states_json(TRANSITIONS[JobState.RUNNING])),
            )
            if not rows:
                raise await self._transition_error(job_id, JobState.RUNNING)

    async def mark_done(self, job_id: int, outcome: JobOutcome) -> None:
        """running -> done, with its images and grid in the same transaction."""
        async with self._db.transaction():
            rows = await self._db.rows(
                "UPDATE jobs SET state = 'done', finished_at = ?, elapsed_s = ?, notes = ?,"
                " grid_path = ? WHERE id = ? AND state IN (SELECT value FROM json_each(?))"
                " RETURNING id",
                (
                    self._db.clock(),
                    float(outcome.elapsed_s),
                    json.dumps(list(outcome.notes)),
                    outcome.grid_path,
                    job_id,
                    _states_json(TRANSITIONS[JobState.DONE]),
                ),
            )
            if not rows:
                raise await self._transition_error(job_id, JobState.DONE)
            await self._db.executemany(
                "INSERT INTO job_images (job_id, idx, path, seed, width, height)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (job_id, idx, img.path, img.seed, img.width, img.height)
                    for idx, img in enumerate(outcome.images)
                ],
            )

    async def mark_failed(self, job_id: int, reason: str) -> None:
        """queued|running -> failed, keeping `reason` (shown to operators, not users)."""
        async with self._db.locked():
            rows = await self._db.rows(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?"
                " WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
                (self._db.clock(), reason, job_id, _states_json(TRANSITIONS[JobState.FAILED])),
            )
            if not rows:
                raise await self._transition_error(job_id, JobState.FAILED)

    async def mark_cancelled(self, job_id: int) -> None:
        """queued|running -> cancelled; already cancelled: no-op. Raises CancelTooLate if the
        job is done or failed (the cancel lost the race), JobNotFound for an unknown id."""
        async with self._db.locked():
            rows = await self._db.rows(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?"
                " WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
                (self._db.clock(), job_id, _states_json(TRANSITIONS[JobState.CANCELLED])),
            )
            if rows:
                return
            error = await self._transition_error(job_id, JobState.CANCELLED)
            if isinstance(error, InvalidTransition):
                if error.current is JobState.CANCELLED:
                    return
                raise CancelTooLate(job_id, error.current)
            raise error

    async def requeue(self, job_id: int) -> None:
        """running -> queued (clean shutdown, crash recovery); a queued job is left as is."""
        async with self._db.locked():
            rows = await self._db.rows(
                "UPDATE jobs SET state = 'queued', started_at = NULL"
                " WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
                (job_id, _states_json(TRANSITIONS[JobState.QUEUED])),
            )
            if rows:
                return
            error = await self._transition_error(job_id, JobState.QUEUED)
            if isinstance(error, InvalidTransition) and error.current is JobState.QUEUED:
                return
            raise error

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (by id: creation order, immune to clock
        jumps)."""
        async with self._db.locked():
            rows = await self._db.rows(
                _SELECT_JOBS + "WHERE state IN ('queued', 'running') ORDER BY id"
            )
            return await self._records(rows)

    # ------------------------------------------------------------------ reading

    async def get_job(self, job_id: int) -> JobRecord | None:
        async with self._db.locked():
            return await self._one_record(_SELECT_JOBS + "WHERE id = ?", (job_id,))

    async def job_by_message(self, message_id: int) -> JobRecord | None:
        """The job whose progress/result message is `message_id` (reactions and buttons after
        a restart). If several jobs were pointed at one message, the newest wins."""
        async with self._db.locked():
            return await self._one_record(
                _SELECT_JOBS + "WHERE message_id = ? ORDER BY id DESC LIMIT 1", (message_id,)
            )

    async def history(
        self,
        user_id: int,
        *,
        limit: int = 10,
        offset: int = 0,
        states: Collection[JobState] | None = None,
    ) -> list[JobRecord]:
        """A user's jobs, newest first; optionally only those in `states`."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        async with self._db.locked():
            if states is None:
                rows = await self._db.rows(
                    _SELECT_JOBS + "WHERE user_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                    (user_id, limit, offset),
                )
            else:
                rows = await self._db.rows(
                    _SELECT_JOBS + "WHERE user_id = ? AND state IN (SELECT value FROM"
                    " json_each(?)) ORDER BY id DESC LIMIT ? OFFSET ?",
                    (user_id, _states_json(states), limit, offset),
                )
            return await self._records(rows)

    async def count_history(
        self, user_id: int, *, states: Collection[JobState] | None = None
    ) -> int:
        async with self._db.locked():
            if states is None:
                return int(
                    await self._db.scalar("SELECT COUNT(*) FROM jobs WHERE user_id = ?", (user_id,))
                )
            return int(
                await self._db.scalar(
                    "SELECT COUNT(*) FROM jobs WHERE user_id = ?"
                    " AND state IN (SELECT value FROM json_each(?))",
                    (user_id, _states_json(states)),
                )
            )

    # ------------------------------------------------------------------ delivery

    async def set_delivery_target(
        self,
        job_id: int,
        *,
        channel_id: int,
        message_id: int | None = None,
        interaction_token: str | None = None,
        application_id: int | None = None,
        token_expires_at: float | None = None,
    ) -> None:
        """Record where the job's messages go. A None argument leaves the stored value as it
        was, so the token (known at defer) and the message id (known after the first
        followup) can be set by separate calls."""
        async with self._db.locked():
            rows = await self._db.rows(
                "UPDATE jobs SET channel_id = ?, message_id = COALESCE(?, message_id),"
                " interaction_token = COALESCE(?, interaction_token),"
                " application_id = COALESCE(?, application_id),"
                " token_expires_at = COALESCE(?, token_expires_at)"
                " WHERE id = ? RETURNING id",
                (
                    channel_id,
                    message_id,
                    interaction_token,
                    application_id,
                    token_expires_at,
                    job_id,
                ),
            )
            if not rows:
                raise JobNotFound(job_id)

    async def get_delivery_target(self, job_id: int) -> DeliveryTarget | None:
        return (await self.delivery_targets([job_id])).get(job_id)

    async def delivery_targets(self, job_ids: Collection[int]) -> dict[int, DeliveryTarget]:
        """Where each of `job_ids` went (one query: /history shows a page of links)."""
        async with self._db.locked():
            rows = await self._db.rows(
                "SELECT id, channel_id, message_id, interaction_token, application_id,"
                " token_expires_at FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(job_ids)),),
            )
        return {
            r["id"]: DeliveryTarget(
                job_id=r["id"],
                channel_id=r["channel_id"],
                message_id=r["message_id"],
                interaction_token=r["interaction_token"],
                application_id=r["application_id"],
                token_expires_at=r["token_expires_at"],
            )
            for r in rows
        }

    async def mark_delivered(
        self, job_id: int, *, channel_id: int | None = None, message_id: int | None = None
    ) -> bool:
        """Record that Discord confirmed the job's result (or its failure notice) in
        `message_id`. Call it only after the confirmation: a crash before it means the result
        is sent again after the restart (the sender looks before it posts twice). True for the
        first caller, False once recorded. Raises JobNotFound, or InvalidTransition for an
        unfinished job."""
        async with self._db.locked():
            rows = await self._db.rows(
                "UPDATE jobs SET delivered_at = ?, channel_id = COALESCE(?, channel_id),"
                " message_id = COALESCE(?, message_id) WHERE id = ? AND delivered_at IS NULL"
                " AND state IN ('done', 'failed', 'cancelled') RETURNING id",
                (self._db.clock(), channel_id, message_id, job_id),
            )
            if rows:
                return True
            state = await self._db.scalar("SELECT state FROM jobs WHERE id = ?", (job_id,))
            if state is None:
                raise JobNotFound(job_id)
            if not JobState(state).finished:
                raise InvalidTransition(
                    job_id, JobState(state), JobState(state), "only a finished job is delivered"
                )
            return False

    async def give_up_delivery(self, job_id: int, reason: str) -> int | None:
        """Discord never accepted the result: settle the delivery, and a done job becomes
        failed with `reason` (its images stay on disk and in job_images, for /history).
        Returns the job's rate event id, to refund; None if already settled or uncharged."""
        async with self._db.transaction():
            rows = await self._db.rows(
                "UPDATE jobs SET delivered_at = ?,"
                " error = CASE WHEN state = 'done' THEN ? ELSE error END,"
                " state = CASE WHEN state = 'done' THEN 'failed' ELSE state END"
                " WHERE id = ? AND delivered_at IS NULL"
                " AND state IN ('done', 'failed', 'cancelled') RETURNING rate_event_id",
                (self._db.clock(), reason, job_id),
            )
            if not rows:
                if await self._db.scalar("SELECT 1 FROM jobs WHERE id = ?", (job_id,)) is None:
                    raise JobNotFound(job_id)
                return None
            event: int | None = rows[0][0]
            return event

    async def rate_event_of(self, job_id: int) -> int | None:
        """The rate-limit charge recorded with the job (None: exempt, or none recorded)."""
        async with self._db.locked():
            event: int | None = await self._db.scalar(
                "SELECT rate_event_id FROM jobs WHERE id = ?", (job_id,)
            )
            return event

    async def undelivered_finished_jobs(self) -> list[JobRecord]:
        """Done or failed jobs whose result was never delivered (re-delivery after restart),
        oldest first. Cancelled jobs are answered by the cancel itself, so excluded."""
        async with self._db.locked():
            rows = await self._db.rows(
                _SELECT_JOBS + "WHERE delivered_at IS NULL AND state IN ('done', 'failed')"
                " ORDER BY id"
            )
            return await self._records(rows)

    # ------------------------------------------------------------------ helpers

    async def _transition_error(self, job_id: int, target: JobState) -> Exception:
        rows = await self._db.rows("SELECT state FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return JobNotFound(job_id)
        return InvalidTransition(job_id, JobState(rows[0]["state"]), target)

    async def _records(self, rows: Sequence[sqlite3.Row]) -> list[JobRecord]:
        done_ids = [r["id"] for r in rows if r["state"] in (JobState.DONE, JobState.FAILED)]
        images: dict[int, list[StoredImage]] = {i: [] for i in done_ids}
        if done_ids:
            for img in await self._db.rows(
                "SELECT job_id, path, seed, width, height FROM job_images"
                " WHERE job_id IN (SELECT value FROM json_each(?)) ORDER BY job_id, idx",
                (json.dumps(done_ids),),
            ):
                images[img["job_id"]].append(
                    StoredImage(img["path"], img["seed"], img["width"], img["height"])
                )
        return [_record(row, images.get(row["id"])) for row in rows]

    async def _one_record(self, sql: str, params: Sequence[Any]) -> JobRecord | None:
        rows = await self._db.rows(sql, params)
        return (await self._records(rows))[0] if rows else None


def _record(row: sqlite3.Row, images: list[StoredImage] | None) -> JobRecord:
    state = JobState(row["state"])
    outcome = None
    # A failed job may keep images too: made, but never accepted by Discord.
    if state is JobState.DONE or (images and row["elapsed_s"] is not None):
        outcome = JobOutcome(
            images=tuple(images or ()),
            grid_path=row["grid_path"],
            elapsed_s=row["elapsed_s"],
            notes=tuple(json.loads(row["notes"])),
        )
    return JobRecord(
        id=row["id"],
        owner=Owner(user_id=row["user_id"], guild_id=row["guild_id"]),
        request=GenerationRequest(
            prompt=row["prompt"],
            negative_prompt=row["negative_prompt"],
            width=row["width"],
            height=row["height"],
            steps=row["steps"],
            guidance=row["guidance"],
            seed=row["seed"],
            sampler=row["sampler"],
            count=row["count"],
            model=row["model"],
            source=_source(row),
        ),
        state=state,
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        outcome=outcome,
        delivered=row["delivered_at"] is not None,
        parent=_parent(row),
    )


def _source(row: sqlite3.Row) -> ImageSource | None:
    # The schema keeps a source whole or absent (migration 0004), so one column decides.
    if row["source_path"] is None:
        return None
    return ImageSource(
        path=row["source_path"],
        width=row["source_width"],
        height=row["source_height"],
        operation=row["operation"],
        strength=row["strength"],
        scale=row["scale"],
        upscaler=row["upscaler"],
    )


def _parent(row: sqlite3.Row) -> Lineage | None:
    # A deleted parent leaves parent_job_id NULL (ON DELETE SET NULL) and the index behind.
    if row["parent_job_id"] is None:
        return None
    return Lineage(job_id=row["parent_job_id"], image_index=row["parent_image_idx"])
