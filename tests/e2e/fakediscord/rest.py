"""The REST side: aiohttp app, authentication, request log, injected rate limits and faults,
404s."""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from .constants import API_VERSION
from .errors import DiscordHTTPError, unauthorized
from .faults import FaultKind, FaultRule, Faults, client_gone, close_connection
from .state import ServerState
from .util import json_response, request_key

_log = logging.getLogger(__name__)

API_PREFIX = f"/api/v{API_VERSION}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteSpec = tuple[str, str, Handler]  # (method, path under /api/v10, handler)

# Routes authenticated by the token in their path: they carry no Authorization header.
_TOKEN_ROUTES = re.compile(rf"^{API_PREFIX}/(interactions/\d+/[^/]+/callback|webhooks/\d+/[^/]+)")
_PUBLIC_ROUTES = re.compile(rf"^{API_PREFIX}/gateway$")
# The attachment "CDN" (``routes_meta.AttachmentRoutes``): outside the API, but faults apply.
CDN_PATH = re.compile(r"^/(ephemeral-)?attachments/\d+/\d+/[^/]+$")


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    authorization: str | None  # the Authorization header as sent
    at: float
    fault: FaultKind | None = None  # the injected fault that took the request, if any


@dataclass
class RateLimitRule:
    """Answer the next ``count`` matching requests with 429 (see ``FakeDiscord.rate_limit``)."""

    method: str | None
    path: re.Pattern[str] | None
    count: int
    retry_after: float
    is_global: bool = False

    def matches(self, request: web.Request) -> bool:
        if self.count <= 0:
            return False
        if self.method is not None and request.method != self.method.upper():
            return False
        return self.path is None or bool(self.path.search(request.path))


@dataclass
class EditRateLimit:
    """Discord's edit limit, roughly: ``limit`` message edits per ``per`` seconds per channel."""

    limit: int = 5
    per: float = 5.0
    _edits: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, key: str, now: float) -> float:
        """0 when the edit may go ahead (and is counted); else seconds to wait."""
        window = self._edits.setdefault(key, deque())
        while window and now - window[0] >= self.per:
            window.popleft()
        if len(window) >= self.limit:
            return self.per - (now - window[0])
        window.append(now)
        return 0.0


_UNKNOWN_ROUTE = "fakediscord-unknown-route"
_FAULT_KEY = request_key("fakediscord.fault")
_DROPPED_KEY = request_key("fakediscord.dropped")  # answered nothing: connection closed
_EDIT_ROUTES = re.compile(
    rf"^{API_PREFIX}/(channels/(?P<channel>\d+)/messages/\d+|webhooks/\d+/(?P<token>[^/]+)/messages/[^/]+)$"
)


class RestApi:
    """Owns the aiohttp routes under ``/api/v10`` and the checks around every request."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.requests: list[RequestRecord] = []
        self.unknown_requests: list[RequestRecord] = []
        self.rate_limit_rules: list[RateLimitRule] = []
        self.rate_limited: list[RequestRecord] = []
        self.edit_rate_limit: EditRateLimit | None = None
        self.faults = Faults()
        self.faulted: list[RequestRecord] = []

    def install(self, app: web.Application, routes: list[RouteSpec]) -> None:
        app.middlewares.append(self._middleware)
        for method, path, handler in routes:
            app.router.add_route(method, API_PREFIX + path, handler)

    def install_fallback(self, app: web.Application) -> None:
        """The last route: anything unknown is a loud 404 (JSON, as Discord answers)."""
        app.router.add_route("*", "/{tail:.*}", self._unknown_route, name=_UNKNOWN_ROUTE)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._guarded(request, handler)
        except DiscordHTTPError as error:
            response = error.to_response()
        dropped = bool(request.get(_DROPPED_KEY))
        record = self._record(request, 0 if dropped else response.status)
        self.requests.append(record)
        if record.status == 429:
            self.rate_limited.append(record)
        if request.match_info.route.name == _UNKNOWN_ROUTE:
            self.unknown_requests.append(record)
        if record.status >= 400 or dropped:
            _log.info("%s %s -> %s", request.method, request.path, record.status or "dropped")
        self.state.changes.notify()
        if dropped:
            close_connection(request)  # aiohttp's write of `response` then fails quietly
        return response

    def _record(self, request: web.Request, status: int) -> RequestRecord:
        return RequestRecord(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            status=status,
            authorization=request.headers.get("Authorization"),
            at=self.state.clock.wall(),
            fault=request.get(_FAULT_KEY),
        )

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith(API_PREFIX + "/"):
            if not (_TOKEN_ROUTES.match(path) or _PUBLIC_ROUTES.match(path)):
                expected = f"Bot {self.state.settings.token}"
                if request.headers.get("Authorization") != expected:
                    raise unauthorized()
        elif not CDN_PATH.match(path):
            return await handler(request)
        # the API and the CDN: fault rules apply (rate limits only to the API, in _handle)
        rule = await self.faults.match(request)
        if rule is not None:
            return await self._inject(rule, request, handler)
        return await self._handle(request, handler)

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(API_PREFIX + "/"):
            limited = self._rate_limit(request)
            if limited is not None:
                return limited
        return await handler(request)

    async def _inject(
        self, rule: FaultRule, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Apply ``rule`` to ``request``; every faulted request lands in ``faulted``."""
        request[_FAULT_KEY] = rule.kind
        if rule.kind is FaultKind.FAIL:
            refusal = DiscordHTTPError(rule.status, rule.code, rule.message).to_response()
            self._note_fault(rule, self._record(request, rule.status))
            return refusal
        if rule.kind is FaultKind.STALL:
            self._note_fault(rule, self._record(request, 0))
            await rule._stall(request, self.faults.closing)
            if self.faults.closing.is_set() or client_gone(request):
                _log.info("stalled %s %s: dropped", request.method, request.path)
                request[_DROPPED_KEY] = True
                return web.Response(status=499)
            return await self._handle(request, handler)
        # DROP: read the whole request, maybe apply it, then hang up.
        response: web.StreamResponse = web.Response(status=499)
        if rule.apply:
            try:
                response = await self._handle(request, handler)
            except DiscordHTTPError as error:
                response = error.to_response()
        else:
            await request.read()
        request[_DROPPED_KEY] = True
        self._note_fault(rule, self._record(request, 0))
        return response

    def _note_fault(self, rule: FaultRule, record: RequestRecord) -> None:
        _log.info("fault %s: %s %s", rule.kind, record.method, record.path)
        rule.hits.append(record)
        self.faulted.append(record)
        self.state.changes.notify()

    def _rate_limit(self, request: web.Request) -> web.Response | None:
        for rule in self.rate_limit_rules:
            if rule.matches(request):
                rule.count -= 1
                return _too_many_requests(rule.retry_after, is_global=rule.is_global)
        match = _EDIT_ROUTES.match(request.path)
        if self.edit_rate_limit is not None and request.method == "PATCH" and match:
            key = match.group("channel") or match.group("token") or ""
            wait = self.edit_rate_limit.retry_after(key, time.monotonic())
            if wait > 0:
                return _too_many_requests(wait, is_global=False)
        return None

    async def _unknown_route(self, request: web.Request) -> web.Response:
        _log.error("fakediscord: no route for %s %s (answering 404)", request.method, request.path)
        return json_response({"message": "404: Not Found", "code": 0}, status=404)


def _too_many_requests(retry_after: float, *, is_global: bool) -> web.Response:
    """A 429 discord.py accepts as Discord's: it needs the ``Via`` header and a JSON body,
    or it treats the answer as a Cloudflare ban and raises instead of waiting."""
    headers = {
        "Via": "1.1 google",
        "Retry-After": f"{max(retry_after, 0.0):.3f}",
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset-After": f"{retry_after:.3f}",
        "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
        "X-RateLimit-Bucket": "fakediscord",
        "X-RateLimit-Scope": "global" if is_global else "user",
    }
    if is_global:
        headers["X-RateLimit-Global"] = "true"
    body = {
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": is_global,
    }
    return json_response(body, status=429, headers=headers)
