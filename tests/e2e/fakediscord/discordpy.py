"""Pointing discord.py at a FakeDiscord (its endpoints are class attributes, not options)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import discord.gateway
import discord.http
import yarl

if TYPE_CHECKING:
    from .server import FakeDiscord


@contextmanager
def pointed_at(fake: FakeDiscord) -> Iterator[None]:
    """Set ``Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` to ``fake``; restore after.

    discord.py has no option for another host: a client connects to ``DEFAULT_GATEWAY`` (an
    ``AutoShardedClient`` without a ``shard_count`` asks ``GET /gateway/bot`` instead, for the
    URL and the recommended count, both the fake's) and resumes on the ``resume_gateway_url``
    from READY.
    """
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.rest_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway
