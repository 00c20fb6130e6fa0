"""The small rules behind 🔄 spam and bursts: one re-roll per user and image per interval, one
submission per user at a time."""

from __future__ import annotations

import asyncio

from bot.actions import Debouncer
from bot.submission import KeyedLocks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_debouncer_lets_one_event_per_user_and_subject_through_per_interval() -> None:
    clock = Clock()
    debounce = Debouncer(10.0, clock)
    assert debounce.allow(1, 42)
    assert not any(debounce.allow(1, 42) for _ in range(30))  # 30 toggles: nothing more
    assert debounce.allow(2, 42) and debounce.allow(1, 43)  # others, other images: free
    clock.now += 9.9
    assert not debounce.allow(1, 42)
    clock.now += 0.2
    assert debounce.allow(1, 42)


def test_debouncer_forgets_old_keys() -> None:
    clock = Clock()
    debounce = Debouncer(1.0, clock)
    for user in range(10_001):
        debounce.allow(user, 1)
    clock.now += 2
    debounce.allow(0, 2)
    assert len(debounce._last) == 1


async def test_keyed_locks_serialise_one_key_and_forget_it_after() -> None:
    locks = KeyedLocks()
    inside: list[int] = []
    most = 0

    async def work(key: int) -> None:
        nonlocal most
        async with locks.hold(key):
            inside.append(key)
            most = max(most, inside.count(1))
            await asyncio.sleep(0.01)
            inside.remove(key)

    await asyncio.gather(*(work(1) for _ in range(5)), work(2))
    assert most == 1  # never two for the same key at once
    assert len(locks) == 0  # nothing kept once nobody holds or waits
