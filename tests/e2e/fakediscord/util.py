"""Small helpers: a shiftable clock, snowflake ids, timestamps and JSON responses."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from aiohttp import web

from .constants import DISCORD_EPOCH_MS


class Clock:
    """Wall and monotonic time that a test can move forward (to expire tokens, for instance)."""

    def __init__(self) -> None:
        self._offset = 0.0

    def advance(self, seconds: float) -> None:
        """Move both clocks forward; nothing sleeps."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def wall(self) -> float:
        return time.time() + self._offset


class SnowflakeFactory:
    """Ids shaped like Discord's (milliseconds since 2015 << 22 | worker | counter), increasing."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0

    def __call__(self, shard: tuple[int, int] | None = None) -> int:
        """The next id; with ``shard=(shard_id, count)``, one that shard serves (Discord
        routes a guild to shard ``(guild_id >> 22) % count``): its millisecond is moved
        forward to the next one that fits, at most ``count - 1`` ms."""
        stamp = int(self._clock.wall() * 1000) - DISCORD_EPOCH_MS
        candidate = (stamp << 22) | (1 << 17)  # worker 1
        snowflake = max(candidate, self._last + 1)
        if shard is not None:
            shard_id, count = shard
            if not 0 <= shard_id < count:
                raise ValueError(f"no shard {shard_id} among {count}")
            behind = (shard_id - (snowflake >> 22)) % count
            if behind:
                snowflake = (((snowflake >> 22) + behind) << 22) | (1 << 17)
        self._last = snowflake
        return snowflake


def iso8601(timestamp: float) -> str:
    """A Unix timestamp as Discord writes it: ISO 8601 with microseconds and +00:00."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="microseconds")


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json``.

    aiohttp's ``web.json_response`` says ``application/json; charset=utf-8``; discord.py
    compares the header for equality and would treat such a body as text.
    """
    all_headers = {"Content-Type": "application/json"}
    if headers:
        all_headers.update(headers)
    return web.Response(body=json.dumps(data).encode(), status=status, headers=all_headers)


def request_key(name: str) -> Any:
    """A key for per-request storage (``request[key]``): aiohttp's typed ``RequestKey`` where it
    exists (3.12+, which warns about plain strings), else the name itself."""
    factory = getattr(web, "RequestKey", None)
    return name if factory is None else factory(name, object)


def no_content() -> web.Response:
    return web.Response(status=204)


def snowflake_or_none(value: Any) -> int | None:
    """An int from a snowflake given as str or int; None when it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
