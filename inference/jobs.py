"""Jobs as the queue sees them, and the journal that makes them survive a crash.

The journal is a Protocol so that inference/ never imports the bot's SQLite store; the store
(bot/store/jobs.py) implements it, and tests may pass an in-memory one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from inference.types import GenerationRequest


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Owner:
    """Who asked. Fair share is per user_id; guild_id feeds per-guild limits."""

    user_id: int
    guild_id: int | None = None


@dataclass(frozen=True)
class StoredImage:
    path: str  # PNG file on disk, written before the job is marked done
    seed: int
    width: int
    height: int


@dataclass(frozen=True)
class JobOutcome:
    images: tuple[StoredImage, ...]
    grid_path: str | None
    elapsed_s: float
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lineage:
    """The image a job started from: image `image_index` (0-based) of job `job_id`."""

    job_id: int
    image_index: int


@dataclass(frozen=True)
class JobRecord:
    id: int
    owner: Owner
    request: GenerationRequest
    state: JobState
    created_at: float  # unix seconds
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    outcome: JobOutcome | None = None
    delivered: bool = False
    parent: Lineage | None = None  # set for upscales, variations and zoom-outs of a result


class JobJournal(Protocol):
    """Durable record of every job. All methods are coroutines on the event loop."""

    async def create_job(self, owner: Owner, request: GenerationRequest) -> int: ...

    async def mark_running(self, job_id: int) -> None: ...

    async def mark_done(self, job_id: int, outcome: JobOutcome) -> None: ...

    async def mark_failed(self, job_id: int, reason: str) -> None: ...

    async def mark_cancelled(self, job_id: int) -> None: ...

    async def requeue(self, job_id: int) -> None:
        """Put a running job back to queued (clean shutdown, crash recovery)."""
        ...

    async def unfinished_jobs(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first: the queue is rebuilt from these."""
        ...
