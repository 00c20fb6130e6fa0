"""Rate limits: N images per sliding window per user and per guild, and a queue cap per user.

The window is computed from the store's rate events, so limits survive a restart. The clock
is injected (tests use a fake one).

Recording: `check_and_record` records the request's images when it lets it through, in the
same SQL transaction as the check (see `Store.try_add_rate_event`), so concurrent requests can
never both slip under a cap. It returns the event id; if the job is rejected afterwards
(blocked word, queue full, submit failed), pass that id to `refund` so it does not count.
Callers should run their own cheap validation first and call this last, just before creating
the job.

Exempt users and roles skip every limit here, and their images are not recorded: they don't
use up the guild's allowance either.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from bot.store import Clock, GuildSettings, Store


class LimitError(Exception):
    """A request refused by a limit; `str(error)` is written for the user."""


class RateLimited(LimitError):
    """Too many images in the window. `retry_after_s` is math.inf when the request alone is
    larger than the limit (it can never pass; ask for fewer images)."""

    def __init__(
        self, retry_after_s: float, reason: str, scope: Literal["user", "guild"] = "user"
    ) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.scope = scope


class QueueLimitReached(LimitError):
    def __init__(self, limit: int, queued: int) -> None:
        super().__init__(
            f"You already have {queued} job{'s' if queued != 1 else ''} waiting (the limit is"
            f" {limit}); try again when one has finished."
        )
        self.limit = limit
        self.queued = queued


def format_wait(seconds: float) -> str:
    """'in 45 s', 'in 2 min', 'in 1 h 5 min'. Rounds up, so a user who waits that long is let
    through."""
    if not math.isfinite(seconds):
        return "later"
    seconds = round(seconds, 3)  # float noise must not turn 120 s into "in 3 min"
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return f"in {math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"in {minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"in {hours} h" if minutes == 0 else f"in {hours} h {minutes} min"


def _window_text(window_s: float) -> str:
    minutes = window_s / 60
    if minutes >= 60 and minutes % 60 == 0:
        return f"{minutes / 60:g} h"
    return f"{minutes:g} min"


@dataclass(frozen=True)
class LimitPolicy:
    """Bot-wide limits (guild settings may override the per-user ones).

    `max_queued_per_user` is the bot default of the per-member queue cap; `limits_for` applies
    a guild's override, and `check_and_record` is the only place the cap is enforced (the
    queue keeps just its global `max_queued`).

    guild_images_per_window: cap on a whole guild's images per guild_window_s (None: no cap).
    guild_window_s: None means the same as window_s.
    """

    images_per_window: int
    window_s: float
    max_queued_per_user: int
    guild_images_per_window: int | None = None
    guild_window_s: float | None = None
    exempt_user_ids: frozenset[int] = frozenset()
    exempt_role_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "exempt_user_ids", frozenset(self.exempt_user_ids))
        object.__setattr__(self, "exempt_role_ids", frozenset(self.exempt_role_ids))
        for name in (
            "images_per_window",
            "window_s",
            "max_queued_per_user",
            "guild_images_per_window",
            "guild_window_s",
        ):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"LimitPolicy.{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits that apply to one request after guild overrides."""

    images_per_window: int
    window_s: float
    max_queued: int
    guild_images_per_window: int | None
    guild_window_s: float


class RateLimiter:
    def __init__(self, store: Store, policy: LimitPolicy, clock: Clock = time.time) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock

    def is_exempt(self, user_id: int, role_ids: Iterable[int] = ()) -> bool:
        return (
            user_id in self._policy.exempt_user_ids
            or not self._policy.exempt_role_ids.isdisjoint(role_ids)
        )

    async def limits_for(self, guild_id: int | None) -> EffectiveLimits:
        """The policy with the guild's overrides applied (overrides win)."""
        p = self._policy
        settings = (
            GuildSettings(0)
            if guild_id is None
            else await self._store.guilds.get_guild_settings(guild_id)
        )
        return EffectiveLimits(
            images_per_window=settings.images_per_window or p.images_per_window,
            window_s=(settings.window_minutes * 60.0 if settings.window_minutes else p.window_s),
            max_queued=settings.max_queued or p.max_queued_per_user,
            guild_images_per_window=p.guild_images_per_window,
            guild_window_s=p.guild_window_s or p.window_s,
        )

    async def check_and_record(
        self,
        user_id: int,
        guild_id: int | None,
        role_ids: Iterable[int],
        images: int,
        queued_now: int,
    ) -> int | None:
        """Let the request through and record it, or raise RateLimited / QueueLimitReached.

        `queued_now` is how many unfinished jobs the user already has. Returns the rate event
        id to `refund` if the job is rejected later; None for an exempt user (nothing
        recorded)."""
        if images < 1:
            raise ValueError(f"images must be at least 1, got {images}")
        if self.is_exempt(user_id, role_ids):
            return None
        limits = await self.limits_for(guild_id)
        if queued_now >= limits.max_queued:
            raise QueueLimitReached(limits.max_queued, queued_now)
        window = _window_text(limits.window_s)
        if images > limits.images_per_window:
            raise RateLimited(
                math.inf,
                f"You can ask for at most {limits.images_per_window} images per {window}.",
            )
        guild_cap = limits.guild_images_per_window if guild_id is not None else None
        if guild_cap is not None and images > guild_cap:
            raise RateLimited(
                math.inf,
                f"This server allows at most {guild_cap} images per"
                f" {_window_text(limits.guild_window_s)}.",
                scope="guild",
            )

        now = self._clock()
        decision = await self._store.rates.try_add_rate_event(
            user_id,
            guild_id,
            images,
            at=now,
            user_limit=limits.images_per_window,
            user_window_s=limits.window_s,
            guild_limit=guild_cap,
            guild_window_s=limits.guild_window_s,
        )
        if decision.event_id is not None:
            return decision.event_id

        # Refused: when will enough images have left each full window? Both must clear, so
        # the later of the two is the answer.
        waits: list[tuple[float, Literal["user", "guild"]]] = []
        if decision.user_blocked:
            need = decision.user_used + images - limits.images_per_window
            at = await self._store.rates.rate_event_expiry(
                user_id=user_id, since=now - limits.window_s, images=need
            )
            waits.append((_until(at, limits.window_s, now), "user"))
        if decision.guild_blocked and guild_cap is not None and decision.guild_used is not None:
            need = decision.guild_used + images - guild_cap
            at = await self._store.rates.rate_event_expiry(
                guild_id=guild_id, since=now - limits.guild_window_s, images=need
            )
            waits.append((_until(at, limits.guild_window_s, now), "guild"))
        retry_after, scope = max(waits)
        if scope == "user":
            reason = _over_limit_text(
                "You've", decision.user_used, limits.images_per_window, window, images
            )
        else:
            assert guild_cap is not None and decision.guild_used is not None
            window = _window_text(limits.guild_window_s)
            reason = _over_limit_text(
                "This server has", decision.guild_used, guild_cap, window, images
            )
        reason += f" You can generate again {format_wait(retry_after)}."
        raise RateLimited(retry_after, reason, scope)

    async def refund(self, event_id: int | None) -> bool:
        """Un-count a request recorded by `check_and_record` whose job was then rejected.
        None (an exempt user's request) is accepted and does nothing."""
        if event_id is None:
            return False
        return await self._store.rates.delete_rate_event(event_id)

    async def prune(self) -> int:
        """Delete events no window can reach any more; call it now and then."""
        keep = max(self._policy.window_s, self._policy.guild_window_s or 0.0)
        longest_override = await self._store.guilds.longest_window_override_s()
        if longest_override is not None:
            keep = max(keep, longest_override)
        return await self._store.rates.prune_rate_events(self._clock() - keep)


def _over_limit_text(who: str, used: int, limit: int, window: str, images: int) -> str:
    """What the ledger says, exactly: used up, or not used up but too few left for this."""
    if used >= limit:
        return f"{who} reached {limit} images per {window}."
    left = limit - used
    return (
        f"{who} used {used} of {limit} images per {window}; {images} more would go over"
        f" (ask for at most {left} now)."
    )


def _until(at: float | None, window_s: float, now: float) -> float:
    # An event at time t counts while now - window < t, so it leaves at t + window.
    if at is None:  # only if events vanished between the check and this query (a refund)
        return 0.0
    return max(0.0, at + window_s - now)
