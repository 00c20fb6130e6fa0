"""Waking test code whenever the server's state changes (no sleep-polling)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ChangeFeed:
    """A condition variable whose ``notify`` is synchronous.

    Works like ``asyncio.Condition.wait_for`` but lets plain (non-async) mutations wake
    waiters: the server changes state from sync code (a driver helper, a gateway dispatch)
    as well as from request handlers. Every waiter re-checks its predicate after each change.

    Every wait here and in the driver takes a ``timeout`` with a default (hence the
    ``noqa: ASYNC109``): a test that forgets one fails instead of hanging.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()
        self.version = 0

    def notify(self) -> None:
        self.version += 1
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float,  # noqa: ASYNC109
        describe: Callable[[], str] | None = None,
    ) -> T:
        """Return the first truthy value of ``predicate()``, re-checked after every change.

        Raises ``TimeoutError`` naming what was awaited (and ``describe()``) after ``timeout``.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    result = predicate()
                    if result:
                        return result
                    waiter = loop.create_future()
                    self._waiters.add(waiter)
                    try:
                        await waiter
                    finally:
                        self._waiters.discard(waiter)
        except TimeoutError:
            detail = f": {describe()}" if describe is not None else ""
            name = getattr(predicate, "__qualname__", repr(predicate))
            raise TimeoutError(f"not true after {timeout:g}s: {name}{detail}") from None
