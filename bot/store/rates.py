"""The rate-limit ledger: one `rate_events` row per accepted request, summed over sliding
windows by `bot.limits`. Events have no foreign keys: one is recorded before its job exists,
and events are pruned on their own schedule."""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.database import Database


@dataclass(frozen=True)
class RateDecision:
    """Outcome of `RateLedger.try_add_rate_event`: the event id if recorded, and window
    usage."""

    event_id: int | None
    user_used: int  # images in the user's window before this request
    guild_used: int | None  # the same for the guild; None when no guild cap applies
    user_blocked: bool = False
    guild_blocked: bool = False


class RateLedger:
    """The `rate_events` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        async with self._db.transaction():
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
                rows = await self._db.rows(
                    "INSERT INTO rate_events (user_id, guild_id, at, images)"
                    " VALUES (?, ?, ?, ?) RETURNING id",
                    (user_id, guild_id, at, images),
                )
                event_id = int(rows[0][0])
            return RateDecision(event_id, user_used, guild_used, user_blocked, guild_blocked)

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
        async with self._db.locked():
            if user_id is not None:
                at = await self._db.scalar(
                    "SELECT at FROM (SELECT at, SUM(images) OVER (ORDER BY at, id) AS freed"
                    " FROM rate_events WHERE user_id = ? AND at > ?)"
                    " WHERE freed >= ? ORDER BY at LIMIT 1",
                    (user_id, since, images),
                )
            else:
                at = await self._db.scalar(
                    "SELECT at FROM (SELECT at, SUM(images) OVER (ORDER BY at, id) AS freed"
                    " FROM rate_events WHERE guild_id = ? AND at > ?)"
                    " WHERE freed >= ? ORDER BY at LIMIT 1",
                    (guild_id, since, images),
                )
        return None if at is None else float(at)

    async def delete_rate_event(self, event_id: int) -> bool:
        """Remove one event (a refund). False if it no longer exists."""
        async with self._db.locked():
            rows = await self._db.rows(
                "DELETE FROM rate_events WHERE id = ? RETURNING id", (event_id,)
            )
            return bool(rows)

    async def prune_rate_events(self, before: float) -> int:
        """Delete events older than `before` (no window reaches them); returns how many."""
        async with self._db.locked():
            return await self._db.execute("DELETE FROM rate_events WHERE at < ?", (before,))

    async def _window_sum_user(self, user_id: int, since: float) -> int:
        return int(
            await self._db.scalar(
                "SELECT COALESCE(SUM(images), 0) FROM rate_events WHERE user_id = ? AND at > ?",
                (user_id, since),
            )
        )

    async def _window_sum_guild(self, guild_id: int, since: float) -> int:
        return int(
            await self._db.scalar(
                "SELECT COALESCE(SUM(images), 0) FROM rate_events WHERE guild_id = ? AND at > ?",
                (guild_id, since),
            )
        )
