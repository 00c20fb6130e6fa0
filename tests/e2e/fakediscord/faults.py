"""Injected faults: Discord answering 5xx, hanging, or hanging up (``FakeDiscord.fail_requests``).

A ``FaultRule`` takes the next ``count`` matching REST requests (``None``: every one until
``stop()``). What a rule does to the request it takes:

- ``fail``: answer ``{"message", "code"}`` JSON with ``status``; the request has no effect.
- ``stall``: wait ``seconds`` (or until ``release()``), then handle the request as usual. If the
  client hangs up meanwhile (timed out, killed), the stall ends and the request has no effect:
  an upload that hung never arrived. When the server stops, stalled requests are dropped.
- ``drop``: read the request, then close the connection without an answer (aiohttp clients
  raise ``ServerDisconnectedError``). ``apply=True`` handles it first: the effect (a message
  created, say) happens and only the answer is lost, the worst case for exactly-once delivery.

aiohttp's client retries an idempotent request (GET, PUT, DELETE...) once when a reused
connection is closed under it, so drop a POST or PATCH to make the client see the disconnect.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import DiscordHTTPError
from .multipart import MessageBody, message_body

if TYPE_CHECKING:
    from .rest import RequestRecord

BodyPredicate = Callable[[MessageBody], bool]
_GONE_POLL_S = 0.05  # how often a stalled request checks whether its client hung up


class FaultKind(StrEnum):
    FAIL = "fail"
    STALL = "stall"
    DROP = "drop"


def uploads_matching(pattern: str) -> BodyPredicate:
    """A body predicate: the request uploads a file whose name matches ``pattern`` (searched),
    e.g. ``uploads_matching(r"^job-\\d+-\\d+\\.png$")``."""
    compiled = re.compile(pattern)
    return lambda body: any(compiled.search(part.filename) for part in body.files.values())


@dataclass(eq=False)
class FaultRule:
    """One injected fault; made by ``FakeDiscord.fail_requests/stall_requests/drop_requests``.

    ``hits`` holds a record for every request the rule took (``status`` 0: no answer, or not
    yet: a stalled request is recorded when its stall begins). ``stop()`` ends the rule.
    """

    kind: FaultKind
    method: str | None
    path: re.Pattern[str] | None
    count: int | None  # requests still to take; None: all, until stop()
    predicate: BodyPredicate | None = None
    with_files: bool = False
    status: int = 500
    code: int = 0
    message: str = "500: Internal Server Error"
    seconds: float = 0.0
    apply: bool = False
    hits: list[RequestRecord] = field(default_factory=list)
    stopped: bool = False
    _stalled: set[asyncio.Future[None]] = field(default_factory=set, repr=False)

    @property
    def active(self) -> bool:
        return not self.stopped and (self.count is None or self.count > 0)

    @property
    def stalled_now(self) -> int:
        """Requests this rule is holding at this moment."""
        return sum(1 for waiter in self._stalled if not waiter.done())

    def stop(self) -> None:
        """Take no more requests. Requests stalled already stay stalled (see ``release``)."""
        self.stopped = True

    def release(self) -> None:
        """End the stall of every request this rule holds now: they are handled at once."""
        for waiter in self._stalled:
            if not waiter.done():
                waiter.set_result(None)

    def _wants_route(self, request: web.Request) -> bool:
        if self.method is not None and request.method != self.method.upper():
            return False
        return self.path is None or bool(self.path.search(request.path))

    async def _wants(self, request: web.Request) -> bool:
        """Whether this rule takes ``request`` (not yet consumed: see ``_take``)."""
        if not self.active or not self._wants_route(request):
            return False
        if not (self.with_files or self.predicate is not None):
            return True
        try:
            body = await message_body(request)
        except DiscordHTTPError:
            return False  # the handler answers the bad body itself
        if self.with_files and not body.files:
            return False
        return self.predicate is None or bool(self.predicate(body))

    def _take(self) -> bool:
        """Consume one use; False when another request used the last one meanwhile."""
        if not self.active:
            return False
        if self.count is not None:
            self.count -= 1
        return True

    async def _stall(self, request: web.Request, closing: asyncio.Event) -> None:
        """Hold ``request`` for ``seconds``, until ``release()``, until the server stops, or
        until the client hangs up (checked every ``_GONE_POLL_S``), whichever comes first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._stalled.add(waiter)
        deadline = loop.time() + self.seconds
        try:
            while not (waiter.done() or closing.is_set() or client_gone(request)):
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.wait([waiter], timeout=min(left, _GONE_POLL_S))
        finally:
            self._stalled.discard(waiter)
            if not waiter.done():
                waiter.cancel()


class Faults:
    """The rules in force, in the order they were made (the first that matches applies)."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self.closing = asyncio.Event()

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Stop every rule and release stalled requests."""
        for rule in self.rules:
            rule.stop()
            rule.release()
        self.rules.clear()

    def close(self) -> None:
        """The server is stopping: stalled requests end now (and are dropped)."""
        self.closing.set()
        for rule in self.rules:
            rule.release()

    async def match(self, request: web.Request) -> FaultRule | None:
        for rule in list(self.rules):
            if await rule._wants(request) and rule._take():
                return rule
        return None


def close_connection(request: web.Request) -> None:
    """Hang up on the client: no status line, no body."""
    transport = request.transport
    if transport is not None:
        transport.close()


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
