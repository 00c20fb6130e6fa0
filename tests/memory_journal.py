"""An in-memory JobJournal for fast queue unit tests (the SQLite store is tested separately
and used by the integration and end-to-end tests)."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from typing import Any

from inference.jobs import JobOutcome, JobRecord, JobState, Lineage, Owner
from inference.types import GenerationRequest


class MemoryJournal:
    def __init__(self) -> None:
        self.jobs: dict[int, JobRecord] = {}
        self._ids = itertools.count(1)
        self.transitions: list[tuple[int, JobState]] = []

    async def create_job(
        self, owner: Owner, request: GenerationRequest, *, parent: Lineage | None = None
    ) -> int:
        """As the store's: `parent` is kept on the record, as the store keeps it."""
        job_id = next(self._ids)
        self.jobs[job_id] = JobRecord(
            job_id, owner, request, JobState.QUEUED, time.time(), parent=parent
        )
        return job_id

    def _move(self, job_id: int, state: JobState, **changes: Any) -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], state=state, **changes)
        self.transitions.append((job_id, state))

    async def mark_running(self, job_id: int) -> None:
        assert self.jobs[job_id].state is JobState.QUEUED
        self._move(job_id, JobState.RUNNING)

    async def mark_done(self, job_id: int, outcome: JobOutcome) -> None:
        assert self.jobs[job_id].state is JobState.RUNNING
        self._move(job_id, JobState.DONE, outcome=outcome)

    async def mark_failed(self, job_id: int, reason: str) -> None:
        self._move(job_id, JobState.FAILED, error=reason)

    async def mark_cancelled(self, job_id: int) -> None:
        assert not self.jobs[job_id].state.finished
        self._move(job_id, JobState.CANCELLED)

    async def requeue(self, job_id: int) -> None:
        self._move(job_id, JobState.QUEUED)

    async def unfinished_jobs(self) -> list[JobRecord]:
        return [j for j in self.jobs.values() if not j.state.finished]
