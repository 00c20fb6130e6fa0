"""Submitting when the database's disk is full: the user gets the storage message, not
"something went wrong", and a charge taken before the failure is refunded."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace
from typing import Any

import pytest

from bot.store import DeliveryTarget
from bot.submission import Actor, Submitter
from inference.errors import StorageUnavailableError
from inference.types import GenerationRequest

REQUEST = GenerationRequest("a fox", "", 64, 64, 4, 7.0, 1, "Euler a", 1, "tiny")
FULL = sqlite3.OperationalError("database or disk is full")


class Limiter:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.refunded: list[int | None] = []

    async def check_and_record(self, *args: Any) -> int:
        if self.fail:
            raise FULL
        return 7

    async def refund(self, event: int | None) -> bool:
        self.refunded.append(event)
        return True


class Queue:
    def count_of(self, user_id: int) -> int:
        return 0

    async def submit(self, *args: Any, **kwargs: Any) -> None:
        raise FULL  # creating the job row failed


def submitter(limiter: Limiter) -> Submitter:
    settings = SimpleNamespace(progress=SimpleNamespace(previews=False))
    store = SimpleNamespace(jobs=SimpleNamespace(create_job=lambda *args, **kwargs: None))
    return Submitter(settings, store, Queue(), limiter, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("charge_fails", [True, False], ids=["charging", "recording"])
async def test_a_full_database_disk_is_told_as_such(charge_fails: bool) -> None:
    limiter = Limiter(fail=charge_fails)
    with pytest.raises(StorageUnavailableError, match="disk is full"):
        await submitter(limiter).submit(REQUEST, Actor(1, None, 5), DeliveryTarget(0, 5))
    assert limiter.refunded == ([] if charge_fails else [7])
