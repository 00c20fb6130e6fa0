"""SQLite persistence: users, jobs and their images, rate-limit events, guild settings.

The only module with SQL. One `Store` owns one aiosqlite connection; `bot.app.run_bot` opens it
and closes it, nothing opens at import time. Every value reaches SQL through `?` parameters;
the only text ever spliced into a statement is a constant of this module or the integer
migration number (PRAGMA takes no parameters).

Concurrency: one connection is shared by every coroutine, and a transaction on a connection
takes in any statement sent while it is open. So each public method holds `_lock` for its
whole duration; multi-statement writes also run in `BEGIN IMMEDIATE`, which additionally
serialises writers across processes sharing the file.

Job states move only along `TRANSITIONS`; anything else raises `InvalidTransition` and changes
nothing. Cancels race with the worker, so they get their own answers:

- `mark_cancelled` on a done or failed job raises `CancelTooLate` (a subclass of
  `InvalidTransition`): the cancel lost the race and the result stands. It returns None, as
  `JobJournal` says, when it did cancel the job.
- `mark_cancelled` on an already cancelled job, and `requeue` on an already queued job, are
  no-ops: the job is already where the caller wants it (a double click, crash recovery
  requeueing every unfinished job without looking at its state first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from inference.jobs import JobOutcome, JobRecord, JobState, Owner, StoredImage
from inference.types import GenerationRequest

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: target state -> states it may be entered from. The single source of truth for the SQL below.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RUNNING: frozenset({JobState.QUEUED}),
    JobState.DONE: frozenset({JobState.RUNNING}),
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.RUNNING}),
    JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.RUNNING}),
    JobState.QUEUED: frozenset({JobState.RUNNING}),  # requeue
}

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_BUSY_TIMEOUT_MS = 5_000


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base class of the store's own errors."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer imagine-bot than this one."""


class MigrationError(StoreError):
    """The packaged migrations are malformed (a gap or a duplicate number)."""


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


# --------------------------------------------------------------------------- values


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


@dataclass(frozen=True)
class GuildSettings:
    """Per-guild configuration; None in a limit field means "use the bot-wide policy"."""

    guild_id: int
    allowed_channel_ids: frozenset[int] = frozenset()  # empty: every channel
    blocked_words: tuple[str, ...] = ()
    images_per_window: int | None = None
    window_minutes: float | None = None
    max_queued: int | None = None

    def __post_init__(self) -> None:
        # Accept any iterable from callers, store the frozen shape.
        object.__setattr__(self, "allowed_channel_ids", frozenset(self.allowed_channel_ids))
        object.__setattr__(self, "blocked_words", tuple(self.blocked_words))
        for name in ("images_per_window", "window_minutes", "max_queued"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"GuildSettings.{name} must be positive or None, got {value!r}")


@dataclass(frozen=True)
class RateDecision:
    """Outcome of `Store.try_add_rate_event`: the event id if recorded, and window usage."""

    event_id: int | None
    user_used: int  # images in the user's window before this request
    guild_used: int | None  # the same for the guild; None when no guild cap applies
    user_blocked: bool = False
    guild_blocked: bool = False


# --------------------------------------------------------------------------- migrations


def _migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every packaged migration, in order."""
    folder = resources.files(__package__ or "bot").joinpath("migrations")
    found: dict[int, tuple[str, str]] = {}
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version}: {entry.name}")
        found[version] = (entry.name, entry.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return [(v, *found[v]) for v in versions]


def _split_sql(script: str) -> list[str]:
    """Split a script into statements. `executescript` would COMMIT our open transaction
    first, so statements run one by one; `complete_statement` understands strings, comments
    and trigger bodies, which a split on ";" would not."""
    statements: list[str] = []
    *pieces, rest = script.split(";")  # `rest`: whatever follows the last ";"
    buffer = ""
    for piece in pieces:
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = buffer + rest
    if any(line.strip() and not line.strip().startswith("--") for line in rest.splitlines()):
        raise MigrationError(f"incomplete statement at the end of a migration: {rest.strip()!r}")
    return statements


# --------------------------------------------------------------------------- the store

_JOB_COLUMNS = (
    "id, user_id, guild_id, state, prompt, negative_prompt, width, height, steps, guidance,"
    " seed, sampler, count, model, created_at, started_at, finished_at, error, elapsed_s,"
    " notes, grid_path, delivered_at"
)
_SELECT_JOBS = "SELECT " + _JOB_COLUMNS + " FROM jobs "


def _states_json(states: Iterable[JobState]) -> str:
    # A variable-length IN list without building SQL text: `IN (SELECT value FROM json_each(?))`.
    return json.dumps(sorted(str(s) for s in states))


class Store:
    """The bot's database. Create with `await Store.open(path)`; close with `await close()`
    or use `async with await Store.open(path) as store:`."""

    def __init__(
        self, db: aiosqlite.Connection, path: Path, clock: Clock, instance_id: str = ""
    ) -> None:
        # Use `open`: this only wraps a connection that is already configured and migrated.
        self._db = db
        self.instance_id = instance_id  # random, per database file (see migration 0002)
        self._lock = asyncio.Lock()
        self._clock = clock
        self._closed = False
        self.path = path

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: Path | str, *, clock: Clock = time.time) -> Store:
        """Open (creating if needed) and migrate the database at `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; we BEGIN/COMMIT explicitly.
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            mode = await _scalar(db, "PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                log.warning(
                    "SQLite refused WAL mode for %s (got %r); writers will block readers",
                    path,
                    mode,
                )
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
            # In WAL mode NORMAL is crash-safe for the database; a power cut may lose the last
            # commits, which the queue tolerates (jobs are re-run, deliveries re-sent).
            await db.execute("PRAGMA synchronous = NORMAL")
            await _migrate(db, path)
            instance_id = str(await _scalar(db, "SELECT id FROM instance"))
        except BaseException:
            await db.close()
            raise
        return cls(db, path, clock, instance_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            # SQLite recommends this before closing a long-lived connection: it refreshes the
            # planner's statistics where they matter. Failure is harmless.
            try:
                await self._db.execute("PRAGMA optimize")
            except sqlite3.Error:
                log.debug("PRAGMA optimize failed on close", exc_info=True)
            await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def schema_version(self) -> int:
        async with self._lock:
            return int(await _scalar(self._db, "PRAGMA user_version"))

    async def pragma(self, name: str) -> Any:
        """Read a PRAGMA (tests, diagnostics). Only plain names are accepted."""
        if not re.fullmatch(r"[a-z_]+", name):
            raise ValueError(f"not a pragma name: {name!r}")
        async with self._lock:
            return await _scalar(self._db, "PRAGMA " + name)

    # ------------------------------------------------------------------ helpers

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception. Caller holds `_lock`.

        IMMEDIATE takes the write lock up front, so a read-then-write inside cannot be
        invalidated by another connection (and cannot deadlock upgrading a read lock)."""
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            # Inside the try: a failed COMMIT leaves the transaction open, and every later
            # statement on this connection would silently join it.
            await self._db.execute("COMMIT")
        except BaseException:
            await _rollback(self._db)
            raise

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._db.execute_fetchall(sql, params))

    async def _transition_error(self, job_id: int, target: JobState) -> Exception:
        rows = await self._rows("SELECT state FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return JobNotFound(job_id)
        return InvalidTransition(job_id, JobState(rows[0]["state"]), target)

    async def _records(self, rows: Sequence[sqlite3.Row]) -> list[JobRecord]:
        done_ids = [r["id"] for r in rows if r["state"] in (JobState.DONE, JobState.FAILED)]
        images: dict[int, list[StoredImage]] = {i: [] for i in done_ids}
        if done_ids:
            for img in await self._rows(
                "SELECT job_id, path, seed, width, height FROM job_images"
                " WHERE job_id IN (SELECT value FROM json_each(?)) ORDER BY job_id, idx",
                (json.dumps(done_ids),),
            ):
                images[img["job_id"]].append(
                    StoredImage(img["path"], img["seed"], img["width"], img["height"])
                )
        return [_record(row, images.get(row["id"])) for row in rows]

    async def _one_record(self, sql: str, params: Sequence[Any]) -> JobRecord | None:
        rows = await self._rows(sql, params)
        return (await self._records(rows))[0] if rows else None

    # ------------------------------------------------------------------ JobJournal

    async def create_job(
        self,
        owner: Owner,
        request: GenerationRequest,
        *,
        channel_id: int | None = None,
        rerolled_from: int | None = None,
        target: DeliveryTarget | None = None,
        rate_event_id: int | None = None,
    ) -> int:
        """Record a queued job and return its id. Also notes the user as seen.

        `target` (where the result goes) is recorded in the same transaction, before the job
        can run: a job never exists without somewhere to deliver it. Its job_id is ignored."""
        now = self._clock()
        if target is not None:
            channel_id = target.channel_id
        async with self._lock, self._transaction() as db:
            await db.execute(
                "INSERT INTO users (id, first_seen, last_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
                (owner.user_id, now, now),
            )
            rows = await db.execute_fetchall(
                "INSERT INTO jobs (user_id, guild_id, channel_id, state, prompt,"
                " negative_prompt, width, height, steps, guidance, seed, sampler, count, model,"
                " created_at, rerolled_from, message_id, interaction_token, application_id,"
                " token_expires_at, rate_event_id)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (
                    owner.user_id,
                    owner.guild_id,
                    channel_id,
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
                    now,
                    rerolled_from,
                    target and target.message_id,
                    target and target.interaction_token,
                    target and target.application_id,
                    target and target.token_expires_at,
                    rate_event_id,
                ),
            )
            return int(next(iter(rows))[0])

    async def mark_running(self, job_id: int) -> None:
        """queued -> running."""
        async with self._lock:
            rows = await self._rows(
                "UPDATE jobs SET state = 'running', started_at = ?"
                " WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
                (self._clock(), job_id, _states_json(TRANSITIONS[JobState.RUNNING])),
            )
            if not rows:
                raise await self._transition_error(job_id, JobState.RUNNING)

    async def mark_done(self, job_id: int, outcome: JobOutcome) -> None:
        """running -> done, with its images and grid in the same transaction."""
        async with self._lock, self._transaction() as db:
            rows = await db.execute_fetchall(
                "UPDATE jobs SET state = 'done', finished_at = ?, elapsed_s = ?, notes = ?,"
                " grid_path = ? WHERE id = ? AND state IN (SELECT value FROM json_each(?))"
                " RETURNING id",
                (
                    self._clock(),
                    float(outcome.elapsed_s),
                    json.dumps(list(outcome.notes)),
                    outcome.grid_path,
                    job_id,
                    _states_json(TRANSITIONS[JobState.DONE]),
                ),
            )
            if not list(rows):
                raise await self._transition_error(job_id, JobState.DONE)
            await db.executemany(
                "INSERT INTO job_images (job_id, idx, path, seed, width, height)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (job_id, idx, img.path, img.seed, img.width, img.height)
                    for idx, img in enumerate(outcome.images)
                ],
            )

    async def mark_failed(self, job_id: int, reason: str) -> None:
        """queued|running -> failed, keeping `reason` (shown to operators, not users)."""
        async with self._lock:
            rows = await self._rows(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ?"
                " WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
                (self._clock(), reason, job_id, _states_json(TRANSITIONS[JobState.FAILED])),
            )
            if not rows:
                raise await self._transition_error(job_id, JobState.FAILED)

    async def mark_cancelled(self, job_id: int) -> None:
        """queued|running -> cancelled; already cancelled: no-op. Raises CancelTooLate if the
        job is done or failed (the cancel lost the race), JobNotFound for an unknown id."""
        async with self._lock:
            rows = await self._rows(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?"
                " WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
                (self._clock(), job_id, _states_json(TRANSITIONS[JobState.CANCELLED])),
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
        async with self._lock:
            rows = await self._rows(
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
        async with self._lock:
            rows = await self._rows(
                _SELECT_JOBS + "WHERE state IN ('queued', 'running') ORDER BY id"
            )
            return await self._records(rows)

    # ------------------------------------------------------------------ jobs: reading

    async def get_job(self, job_id: int) -> JobRecord | None:
        async with self._lock:
            return await self._one_record(_SELECT_JOBS + "WHERE id = ?", (job_id,))

    async def job_by_message(self, message_id: int) -> JobRecord | None:
        """The job whose progress/result message is `message_id` (reactions and buttons after
        a restart). If several jobs were pointed at one message, the newest wins."""
        async with self._lock:
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
        async with self._lock:
            if states is None:
                rows = await self._rows(
                    _SELECT_JOBS + "WHERE user_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                    (user_id, limit, offset),
                )
            else:
                rows = await self._rows(
                    _SELECT_JOBS + "WHERE user_id = ? AND state IN (SELECT value FROM"
                    " json_each(?)) ORDER BY id DESC LIMIT ? OFFSET ?",
                    (user_id, _states_json(states), limit, offset),
                )
            return await self._records(rows)

    async def count_history(
        self, user_id: int, *, states: Collection[JobState] | None = None
    ) -> int:
        async with self._lock:
            if states is None:
                return int(
                    await _scalar(
                        self._db, "SELECT COUNT(*) FROM jobs WHERE user_id = ?", (user_id,)
                    )
                )
            return int(
                await _scalar(
                    self._db,
                    "SELECT COUNT(*) FROM jobs WHERE user_id = ?"
                    " AND state IN (SELECT value FROM json_each(?))",
                    (user_id, _states_json(states)),
                )
            )

    async def user_jobs(self, user_id: int, states: Collection[JobState]) -> list[JobRecord]:
        """A user's jobs in `states`, oldest first (e.g. queued+running for the queue cap)."""
        async with self._lock:
            rows = await self._rows(
                _SELECT_JOBS + "WHERE user_id = ? AND state IN (SELECT value FROM json_each(?))"
                " ORDER BY id",
                (user_id, _states_json(states)),
            )
            return await self._records(rows)

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
        async with self._lock:
            rows = await self._rows(
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
        async with self._lock:
            rows = await self._rows(
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
        async with self._lock:
            rows = await self._rows(
                "UPDATE jobs SET delivered_at = ?, channel_id = COALESCE(?, channel_id),"
                " message_id = COALESCE(?, message_id) WHERE id = ? AND delivered_at IS NULL"
                " AND state IN ('done', 'failed', 'cancelled') RETURNING id",
                (self._clock(), channel_id, message_id, job_id),
            )
            if rows:
                return True
            state = await _scalar(self._db, "SELECT state FROM jobs WHERE id = ?", (job_id,))
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
        async with self._lock, self._transaction() as db:
            rows = list(
                await db.execute_fetchall(
                    "UPDATE jobs SET delivered_at = ?,"
                    " error = CASE WHEN state = 'done' THEN ? ELSE error END,"
                    " state = CASE WHEN state = 'done' THEN 'failed' ELSE state END"
                    " WHERE id = ? AND delivered_at IS NULL"
                    " AND state IN ('done', 'failed', 'cancelled') RETURNING rate_event_id",
                    (self._clock(), reason, job_id),
                )
            )
            if not rows:
                if await _scalar(db, "SELECT 1 FROM jobs WHERE id = ?", (job_id,)) is None:
                    raise JobNotFound(job_id)
                return None
            event: int | None = rows[0][0]
            return event

    async def rate_event_of(self, job_id: int) -> int | None:
        """The rate-limit charge recorded with the job (None: exempt, or none recorded)."""
        async with self._lock:
            event: int | None = await _scalar(
                self._db, "SELECT rate_event_id FROM jobs WHERE id = ?", (job_id,)
            )
            return event

    async def undelivered_finished_jobs(self) -> list[JobRecord]:
        """Done or failed jobs whose result was never delivered (re-delivery after restart),
        oldest first. Cancelled jobs are answered by the cancel itself, so excluded."""
        async with self._lock:
            rows = await self._rows(
                _SELECT_JOBS + "WHERE delivered_at IS NULL AND state IN ('done', 'failed')"
                " ORDER BY id"
            )
            return await self._records(rows)

    async def set_rerolled_from(self, job_id: int, source_job_id: int) -> None:
        if job_id == source_job_id:
            raise ValueError(f"job {job_id} cannot be a re-roll of itself")
        async with self._lock:
            try:
                rows = await self._rows(
                    "UPDATE jobs SET rerolled_from = ? WHERE id = ? RETURNING id",
                    (source_job_id, job_id),
                )
            except sqlite3.IntegrityError as exc:  # the foreign key: no such source job
                raise JobNotFound(source_job_id) from exc
            if not rows:
                raise JobNotFound(job_id)

    async def rerolled_from(self, job_id: int) -> int | None:
        """The job this one re-rolls, if any. Raises JobNotFound for an unknown id."""
        async with self._lock:
            rows = await self._rows("SELECT rerolled_from FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise JobNotFound(job_id)
        source: int | None = rows[0]["rerolled_from"]
        return source

    # ------------------------------------------------------------------ guild settings

    async def get_guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's settings, or the defaults if it has none stored."""
        async with self._lock:
            rows = await self._rows(
                "SELECT allowed_channel_ids, blocked_words, limit_overrides FROM guild_settings"
                " WHERE guild_id = ?",
                (guild_id,),
            )
        if not rows:
            return GuildSettings(guild_id)
        r = rows[0]
        limits = json.loads(r["limit_overrides"])
        return GuildSettings(
            guild_id=guild_id,
            allowed_channel_ids=frozenset(int(c) for c in json.loads(r["allowed_channel_ids"])),
            blocked_words=tuple(str(w) for w in json.loads(r["blocked_words"])),
            images_per_window=limits.get("images_per_window"),
            window_minutes=limits.get("window_minutes"),
            max_queued=limits.get("max_queued"),
        )

    async def set_guild_settings(self, settings: GuildSettings) -> None:
        """Replace the guild's settings with `settings`."""
        limits = {
            name: value
            for name in ("images_per_window", "window_minutes", "max_queued")
            if (value := getattr(settings, name)) is not None
        }
        async with self._lock:
            await self._db.execute(
                "INSERT INTO guild_settings (guild_id, allowed_channel_ids, blocked_words,"
                " limit_overrides, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (guild_id) DO UPDATE SET"
                " allowed_channel_ids = excluded.allowed_channel_ids,"
                " blocked_words = excluded.blocked_words,"
                " limit_overrides = excluded.limit_overrides, updated_at = excluded.updated_at",
                (
                    settings.guild_id,
                    json.dumps(sorted(settings.allowed_channel_ids)),
                    json.dumps(list(settings.blocked_words)),
                    json.dumps(limits),
                    self._clock(),
                ),
            )

    async def longest_window_override_s(self) -> float | None:
        """The longest per-guild rate window, so pruning keeps every event still in use."""
        async with self._lock:
            minutes = await _scalar(
                self._db,
                "SELECT MAX(json_extract(limit_overrides, '$.window_minutes')) FROM guild_settings",
            )
        return None if minutes is None else float(minutes) * 60.0

    # ------------------------------------------------------------------ rate events

    async def add_rate_event(
        self, user_id: int, guild_id: int | None, images: int, *, at: float | None = None
    ) -> int:
        """Record `images` generated for a user (unconditionally); returns the event id."""
        at = self._clock() if at is None else at
        async with self._lock:
            rows = await self._rows(
                "INSERT INTO rate_events (user_id, guild_id, at, images) VALUES (?, ?, ?, ?)"
                " RETURNING id",
                (user_id, guild_id, at, images),
            )
            return int(rows[0][0])

    async def try_add_rate_event(
        self,
        user_id: int,
        guild_id: int | None,
        images: int,
        *,
        at: float,
        user_limit: int,
        user_window_s: float,
        guild_limit: int | None = None,
        guild_window_s: float | None = None,
    ) -> RateDecision:
        """Record the event only if neither the user's nor the guild's sliding window
        (events with time > at - window) would go over its limit. Check and insert share one
        IMMEDIATE transaction, so concurrent callers, even on other connections, cannot
        both squeeze under a cap."""
        async with self._lock, self._transaction():
            user_used = await self._window_sum_user(user_id, at - user_window_s)
            user_blocked = user_used + images > user_limit
            guild_used: int | None = None
            guild_blocked = False
            if guild_id is not None and guild_limit is not None:
                window = user_window_s if guild_window_s is None else guild_window_s
                guild_used = await self._window_sum_guild(guild_id, at - window)
                guild_blocked = guild_used + images > guild_limit
            event_id = None
            if not (user_blocked or guild_blocked):
                rows = await self._rows(
                    "INSERT INTO rate_events (user_id, guild_id, at, images)"
                    " VALUES (?, ?, ?, ?) RETURNING id",
                    (user_id, guild_id, at, images),
                )
                event_id = int(rows[0][0])
            return RateDecision(event_id, user_used, guild_used, user_blocked, guild_blocked)

    async def rate_images_since(
        self, *, user_id: int | None = None, guild_id: int | None = None, since: float
    ) -> int:
        """Images recorded for the user (or the guild) with time > `since`."""
        async with self._lock:
            if user_id is not None and guild_id is None:
                return await self._window_sum_user(user_id, since)
            if guild_id is not None and user_id is None:
                return await self._window_sum_guild(guild_id, since)
        raise ValueError("give exactly one of user_id and guild_id")

    async def rate_event_expiry(
        self,
        *,
        user_id: int | None = None,
        guild_id: int | None = None,
        since: float,
        images: int = 1,
    ) -> float | None:
        """Time of the event whose leaving the window frees at least `images` images: walking
        events with time > `since` oldest first, the first whose running total reaches
        `images`. With images=1 that is the oldest event in the window. None if the window
        holds fewer than `images`."""
        if (user_id is None) == (guild_id is None):
            raise ValueError("give exactly one of user_id and guild_id")
        async with self._lock:
            if user_id is not None:
                at = await _scalar(
                    self._db,
                    "SELECT at FROM (SELECT at, SUM(images) OVER (ORDER BY at, id) AS freed"
                    " FROM rate_events WHERE user_id = ? AND at > ?)"
                    " WHERE freed >= ? ORDER BY at LIMIT 1",
                    (user_id, since, images),
                )
            else:
                at = await _scalar(
                    self._db,
                    "SELECT at FROM (SELECT at, SUM(images) OVER (ORDER BY at, id) AS freed"
                    " FROM rate_events WHERE guild_id = ? AND at > ?)"
                    " WHERE freed >= ? ORDER BY at LIMIT 1",
                    (guild_id, since, images),
                )
        return None if at is None else float(at)

    async def delete_rate_event(self, event_id: int) -> bool:
        """Remove one event (a refund). False if it no longer exists."""
        async with self._lock:
            rows = await self._rows(
                "DELETE FROM rate_events WHERE id = ? RETURNING id", (event_id,)
            )
            return bool(rows)

    async def prune_rate_events(self, before: float) -> int:
        """Delete events older than `before` (no window reaches them); returns how many."""
        async with self._lock:
            cursor = await self._db.execute("DELETE FROM rate_events WHERE at < ?", (before,))
            count = cursor.rowcount
            await cursor.close()
            return count

    async def _window_sum_user(self, user_id: int, since: float) -> int:
        return int(
            await _scalar(
                self._db,
                "SELECT COALESCE(SUM(images), 0) FROM rate_events WHERE user_id = ? AND at > ?",
                (user_id, since),
            )
        )

    async def _window_sum_guild(self, guild_id: int, since: float) -> int:
        return int(
            await _scalar(
                self._db,
                "SELECT COALESCE(SUM(images), 0) FROM rate_events WHERE guild_id = ? AND at > ?",
                (guild_id, since),
            )
        )


# --------------------------------------------------------------------------- module helpers


async def _scalar(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    rows = list(await db.execute_fetchall(sql, params))
    return rows[0][0] if rows else None


async def _rollback(db: aiosqlite.Connection) -> None:
    # Some errors (disk full, I/O) make SQLite roll back by itself; a second ROLLBACK would
    # then raise and hide the original error.
    try:
        await db.execute("ROLLBACK")
    except sqlite3.OperationalError:
        log.debug("ROLLBACK after a failed transaction failed", exc_info=True)


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    migrations = _migrations()
    latest = migrations[-1][0] if migrations else 0
    current = int(await _scalar(db, "PRAGMA user_version"))
    if current > latest:
        raise SchemaTooNewError(
            f"{path} has schema version {current}, but this imagine-bot only knows up to"
            f" {latest}: upgrade imagine-bot, or point it at another database file"
        )
    for version, name, script in migrations:
        if version <= current:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            if int(await _scalar(db, "PRAGMA user_version")) >= version:
                await db.execute("ROLLBACK")
                continue
            for statement in _split_sql(script):
                await db.execute(statement)
            # PRAGMA takes no parameters; `version` is an int parsed from our own file name.
            await db.execute(f"PRAGMA user_version = {version:d}")
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise
        log.info("applied migration %s to %s", name, path)


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
        ),
        state=state,
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        outcome=outcome,
        delivered=row["delivered_at"] is not None,
    )
