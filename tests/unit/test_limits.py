"""Rate limits with a fake clock, over a real SQLite file (the window lives in the store)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from bot.app import limit_policy, queue_settings
from bot.cogs.admin import AdminCog
from bot.cogs.imagine import ImagineCog
from bot.limits import (
    LimitPolicy,
    QueueLimitReached,
    RateLimited,
    RateLimiter,
    format_wait,
)
from bot.settings import load_settings
from bot.store import DeliveryTarget, GuildSettings, Store
from bot.submission import Actor, Submitter
from inference.fakes import FakeGenerator
from inference.queue import JobQueue
from inference.types import GenerationRequest

T0 = 1_700_000_000.0
USER, OTHER_USER = 11, 12
GUILD, OTHER_GUILD = 100, 200


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def policy(**changes: object) -> LimitPolicy:
    fields: dict[str, object] = dict(
        images_per_window=3, window_s=600.0, max_queued_per_user=5, guild_images_per_window=None
    )
    fields.update(changes)
    return LimitPolicy(**fields)  # type: ignore[arg-type]


@asynccontextmanager
async def limiter_for(
    path: Path, limit_policy: LimitPolicy, clock: FakeClock
) -> AsyncIterator[RateLimiter]:
    async with await Store.open(path, clock=clock) as store:
        yield RateLimiter(store, limit_policy, clock)


def ledger_images(
    limiter: RateLimiter, *, user_id: int | None = None, guild_id: int | None = None
) -> int:
    """Images in the rate ledger for a user or a guild, read from the file with plain SQL."""
    with closing(sqlite3.connect(limiter._store.path)) as conn:
        (total,) = conn.execute(
            "SELECT COALESCE(SUM(images), 0) FROM rate_events"
            " WHERE (? IS NULL OR user_id = ?) AND (? IS NULL OR guild_id = ?)",
            (user_id, user_id, guild_id, guild_id),
        ).fetchone()
    return int(total)


async def allow(
    limiter: RateLimiter,
    user: int = USER,
    guild: int | None = GUILD,
    images: int = 1,
    queued: int = 0,
) -> int | None:
    return await limiter.check_and_record(user, guild, [], images, queued)


async def refused(
    limiter: RateLimiter, user: int = USER, guild: int | None = GUILD, images: int = 1
) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await limiter.check_and_record(user, guild, [], images, 0)
    return info.value


# --------------------------------------------------------------------------- format_wait


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "now"),
        (0, "now"),
        (0.2, "in 1 s"),
        (44.2, "in 45 s"),
        (45, "in 45 s"),
        (60, "in 1 min"),
        (61, "in 2 min"),
        (120, "in 2 min"),
        (120 + 1e-9, "in 2 min"),  # float noise from window arithmetic
        (570, "in 10 min"),
        (3599, "in 1 h"),
        (3600, "in 1 h"),
        (3900, "in 1 h 5 min"),
        (7200 + 1, "in 2 h 1 min"),
        (math.inf, "later"),
    ],
)
def test_format_wait(seconds: float, text: str) -> None:
    assert format_wait(seconds) == text


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="images_per_window"):
        policy(images_per_window=0)
    with pytest.raises(ValueError, match="guild_window_s"):
        policy(guild_window_s=-1.0)
    p = policy(exempt_user_ids=[1, 2])
    assert p.exempt_user_ids == frozenset({1, 2})


# --------------------------------------------------------------------------- the window


async def test_allows_n_refuses_next_with_retry_after_then_window_slides(tmp_path: Path) -> None:
    clock = FakeClock()
    async with limiter_for(tmp_path / "bot.db", policy(), clock) as limiter:
        for _ in range(3):
            assert isinstance(await allow(limiter), int)
            clock.advance(10)
        # Events at T0, T0+10, T0+20; now T0+30: the first leaves the window at T0+600.
        error = await refused(limiter)
        assert error.retry_after_s == pytest.approx(570)
        assert error.scope == "user"
        assert "3 images per 10 min" in str(error) and "in 10 min" in str(error)

        clock.now = T0 + 600 - 0.001  # not yet
        assert (await refused(limiter)).retry_after_s == pytest.approx(0.001, abs=1e-6)
        clock.now = T0 + 600  # the event at T0 has just left (window is (now-600, now])
        await allow(limiter)
        # Now T0+10, T0+20, T0+600 are in the window; the next slot frees at T0+610.
        assert (await refused(limiter)).retry_after_s == pytest.approx(10)
        assert ledger_images(limiter, user_id=USER) == 4  # refusals
        # were not recorded


async def test_multi_image_requests_count_images_not_requests(tmp_path: Path) -> None:
    clock = FakeClock()
    async with limiter_for(tmp_path / "bot.db", policy(images_per_window=4), clock) as limiter:
        await allow(limiter, images=2)  # T0
        clock.advance(10)
        await allow(limiter, images=1)  # T0+10
        clock.advance(10)
        await allow(limiter, images=1)  # T0+20
        clock.advance(10)  # T0+30, window full (4)
        # 2 more images need 2 to leave: the first event (2 images) at T0+600.
        assert (await refused(limiter, images=2)).retry_after_s == pytest.approx(570)
        # 3 more need the first two events gone: T0+610.
        assert (await refused(limiter, images=3)).retry_after_s == pytest.approx(580)
        # More than the whole limit can never pass.
        too_many = await refused(limiter, images=5)
        assert too_many.retry_after_s == math.inf and "at most 4 images" in str(too_many)
        with pytest.raises(ValueError):
            await allow(limiter, images=0)


async def test_per_guild_cap(tmp_path: Path) -> None:
    clock = FakeClock()
    p = policy(images_per_window=100, guild_images_per_window=5, guild_window_s=3600.0)
    async with limiter_for(tmp_path / "bot.db", p, clock) as limiter:
        for user in range(1, 6):
            await allow(limiter, user=user)
            clock.advance(60)
        error = await refused(limiter, user=99)  # a fresh user, but the guild is full
        assert error.scope == "guild"
        assert error.retry_after_s == pytest.approx(3600 - 300)
        assert "This server has reached 5 images per 1 h" in str(error)
        assert "in 55 min" in str(error)
        await allow(limiter, user=99, guild=OTHER_GUILD)  # other guilds are separate
        await allow(limiter, user=99, guild=None)  # DMs have no guild cap
        assert (await refused(limiter, user=1, images=6)).retry_after_s == math.inf


async def test_reports_the_later_of_user_and_guild_waits(tmp_path: Path) -> None:
    clock = FakeClock()
    p = policy(images_per_window=2, guild_images_per_window=3, guild_window_s=3600.0)
    async with limiter_for(tmp_path / "bot.db", p, clock) as limiter:
        await allow(limiter, user=OTHER_USER)  # T0: guild 1
        clock.advance(100)
        await allow(limiter)  # T0+100: user 1, guild 2
        await allow(limiter)  # user 2, guild 3
        error = await refused(limiter)
        # user frees at T0+700 (600 s window), guild at T0+3600: the guild wait is longer.
        assert error.scope == "guild" and error.retry_after_s == pytest.approx(3500)


async def test_guild_overrides_take_precedence(tmp_path: Path) -> None:
    clock = FakeClock()
    db = tmp_path / "bot.db"
    async with limiter_for(db, policy(), clock) as limiter:
        await limiter._store.guilds.set_guild_settings(
            GuildSettings(GUILD, images_per_window=1, window_minutes=1, max_queued=1)
        )
        await allow(limiter)
        error = await refused(limiter)
        assert error.retry_after_s == pytest.approx(60) and "1 images per 1 min" in str(error)
        with pytest.raises(QueueLimitReached) as queue_error:
            await allow(limiter, queued=1)
        assert queue_error.value.limit == 1
        # Elsewhere the policy applies (3 per 10 min, 5 queued): one image is already used.
        await allow(limiter, guild=OTHER_GUILD, queued=4)
        await allow(limiter, guild=OTHER_GUILD)
        await refused(limiter, guild=OTHER_GUILD)


async def test_queue_limit(tmp_path: Path) -> None:
    clock = FakeClock()
    async with limiter_for(tmp_path / "bot.db", policy(max_queued_per_user=2), clock) as limiter:
        await allow(limiter, queued=1)
        with pytest.raises(QueueLimitReached, match="2 jobs waiting") as info:
            await allow(limiter, queued=2)
        assert info.value.queued == 2
        assert ledger_images(limiter, user_id=USER) == 1


async def test_exempt_users_and_roles_skip_limits(tmp_path: Path) -> None:
    clock = FakeClock()
    p = policy(
        images_per_window=1,
        max_queued_per_user=1,
        guild_images_per_window=1,
        exempt_user_ids=frozenset({7}),
        exempt_role_ids=frozenset({500}),
    )
    async with limiter_for(tmp_path / "bot.db", p, clock) as limiter:
        for _ in range(5):
            assert await limiter.check_and_record(7, GUILD, [], 1, 10) is None
            assert await limiter.check_and_record(8, GUILD, [400, 500], 1, 10) is None
        # Nothing recorded, so the guild's allowance is untouched...
        assert ledger_images(limiter, guild_id=GUILD) == 0
        await allow(limiter, user=9)
        # ...and a role the policy does not exempt gets no pass.
        with pytest.raises(RateLimited):
            await limiter.check_and_record(10, GUILD, [400], 1, 0)
        assert limiter.is_exempt(8, [500]) and not limiter.is_exempt(8, [400])


async def test_limits_survive_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    db = tmp_path / "bot.db"
    async with limiter_for(db, policy(), clock) as limiter:
        for _ in range(3):
            await allow(limiter)
    clock.advance(30)
    async with limiter_for(db, policy(), clock) as limiter:
        assert (await refused(limiter)).retry_after_s == pytest.approx(570)


async def test_refund(tmp_path: Path) -> None:
    clock = FakeClock()
    async with limiter_for(tmp_path / "bot.db", policy(), clock) as limiter:
        event_ids = [await allow(limiter) for _ in range(3)]
        await refused(limiter)
        assert await limiter.refund(event_ids[1]) is True
        assert await limiter.refund(event_ids[1]) is False  # already refunded
        assert await limiter.refund(None) is False
        await allow(limiter)
        await refused(limiter)


async def test_concurrent_calls_cannot_exceed_the_cap(tmp_path: Path) -> None:
    clock = FakeClock()
    db = tmp_path / "bot.db"
    p = policy(images_per_window=5, guild_images_per_window=7)
    # Two stores = two connections on one file: the cap must hold across them too.
    async with limiter_for(db, p, clock) as one, limiter_for(db, p, clock) as two:
        calls = [
            lim.check_and_record(USER, GUILD, [], 1, 0) for _ in range(10) for lim in (one, two)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(isinstance(r, int) for r in results) == 5
        assert all(isinstance(r, (int, RateLimited)) for r in results)
        calls = [
            lim.check_and_record(u, GUILD, [], 1, 0) for u in range(20, 30) for lim in (one, two)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(isinstance(r, int) for r in results) == 2  # the guild had 7 - 5 left
        assert ledger_images(one, guild_id=GUILD) == 7


async def test_prune_keeps_what_a_window_still_needs(tmp_path: Path) -> None:
    clock = FakeClock()
    async with limiter_for(tmp_path / "bot.db", policy(), clock) as limiter:
        await allow(limiter)  # T0
        clock.advance(1000)
        await allow(limiter)  # T0+1000
        await limiter._store.guilds.set_guild_settings(GuildSettings(GUILD, window_minutes=30))
        assert await limiter.prune() == 0  # the 30-minute override still reaches T0
        clock.advance(900)
        assert await limiter.prune() == 1
        assert ledger_images(limiter, user_id=USER) == 1


async def test_the_refusal_says_what_the_ledger_holds(tmp_path) -> None:
    """3 of 20 used and 20 more asked for: not "reached 20" but what is left."""
    from bot.limits import LimitPolicy, RateLimited, RateLimiter
    from bot.store import Store

    async with await Store.open(tmp_path / "db.sqlite3") as store:
        limiter = RateLimiter(store, LimitPolicy(20, 600.0, 5))
        await limiter.check_and_record(1, None, (), 3, 0)
        with pytest.raises(RateLimited) as refused:
            await limiter.check_and_record(1, None, (), 18, 0)
        text = str(refused.value)
        assert "reached" not in text
        assert "used 3 of 20 images per 10 min" in text and "at most 17 now" in text
        await limiter.check_and_record(1, None, (), 17, 0)
        with pytest.raises(RateLimited) as refused:
            await limiter.check_and_record(1, None, (), 1, 0)
        assert "You've reached 20 images per 10 min" in str(refused.value)


# ------------------------------------------------------- one owner for the per-member queue cap


@asynccontextmanager
async def bot_pieces(
    tmp_path: Path, guild_cap: int | None
) -> AsyncIterator[tuple[Submitter, threading.Event]]:
    """Store, limiter, queue and submitter wired from settings as bot/app.py wires them; the
    fake generator holds each job at its first step until the gate opens."""
    settings = load_settings(None, {"IMAGINE_BOT__STORAGE__DATA_DIR": str(tmp_path)})
    assert settings.queue.max_queued_per_user == 3  # the bot default in bot/default.toml
    gate = threading.Event()
    generator = FakeGenerator(step_gate=gate)
    async with await Store.open(tmp_path / "bot.db") as store:
        await store.guilds.set_guild_settings(GuildSettings(GUILD, max_queued=guild_cap))
        queue = JobQueue(generator, store.jobs, queue_settings(settings))
        limiter = RateLimiter(store, limit_policy(settings))
        async with queue:
            try:
                yield Submitter(settings, store, queue, limiter, generator), gate
            finally:
                gate.set()


async def submit_as(submitter: Submitter, user: int = USER) -> None:
    job = GenerationRequest("a fox", "", 64, 64, 1, 7.0, 1, "Euler a", 1, "fake")
    await submitter.submit(job, Actor(user, GUILD, 5), DeliveryTarget(0, 5))


async def test_a_guild_cap_above_the_bot_default_lets_that_many_jobs_in(tmp_path: Path) -> None:
    async with bot_pieces(tmp_path, guild_cap=5) as (submitter, _):
        for _ in range(5):  # the 4th was refused by the queue's own cap of 3 before
            await submit_as(submitter)
        with pytest.raises(QueueLimitReached, match="the limit is 5"):
            await submit_as(submitter)


async def test_a_guild_cap_below_the_bot_default_and_no_cap_use_the_limiter(
    tmp_path: Path,
) -> None:
    async with bot_pieces(tmp_path, guild_cap=2) as (submitter, _):
        await submit_as(submitter)
        await submit_as(submitter)
        with pytest.raises(QueueLimitReached, match="the limit is 2"):
            await submit_as(submitter)
    async with bot_pieces(tmp_path / "default", guild_cap=None) as (submitter, _):
        for _ in range(3):
            await submit_as(submitter)
        with pytest.raises(QueueLimitReached, match="the limit is 3"):
            await submit_as(submitter)


# ------------------------------------------------ slash option bounds come from the settings


async def registered_options(env: dict[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    """The options of /imagine and /imagine-admin limits as the tree sends them to Discord."""
    client = commands.Bot(command_prefix="!", intents=discord.Intents.none())
    client.services = SimpleNamespace(settings=load_settings(None, env))  # type: ignore[attr-defined]
    await client.add_cog(ImagineCog(client))  # type: ignore[arg-type]
    await client.add_cog(AdminCog(client))  # type: ignore[arg-type]
    imagine = client.tree.get_command("imagine")
    group = client.tree.get_command("imagine-admin")
    assert isinstance(imagine, app_commands.Command) and isinstance(group, app_commands.Group)
    admin_limits = group.get_command("limits")
    assert isinstance(admin_limits, app_commands.Command)
    return {
        name: {option["name"]: option for option in command.to_dict(client.tree)["options"]}
        for name, command in (("imagine", imagine), ("limits", admin_limits))
    }


async def test_slash_option_bounds_are_the_configured_limits() -> None:
    options = await registered_options(
        {
            "IMAGINE_BOT__LIMITS__MAX_STEPS": "40",
            "IMAGINE_BOT__LIMITS__MAX_GUIDANCE": "12.5",
            "IMAGINE_BOT__LIMITS__MAX_COUNT": "2",
            "IMAGINE_BOT__LIMITS__MAX_PROMPT_CHARS": "300",
            "IMAGINE_BOT__QUEUE__MAX_QUEUED": "7",
        }
    )
    imagine = options["imagine"]
    assert (imagine["steps"]["min_value"], imagine["steps"]["max_value"]) == (1, 40)
    assert (imagine["guidance"]["min_value"], imagine["guidance"]["max_value"]) == (0, 12.5)
    assert (imagine["count"]["min_value"], imagine["count"]["max_value"]) == (1, 2)
    assert imagine["count"]["description"] == "How many images (1-2)"
    assert (imagine["prompt"]["min_length"], imagine["prompt"]["max_length"]) == (1, 300)
    assert imagine["seed"]["max_value"] == 2**32 - 1
    # A member's queue cap can be raised up to the whole queue's size, not beyond.
    assert (
        options["limits"]["max_queued"]["min_value"],
        options["limits"]["max_queued"]["max_value"],
    ) == (0, 7)


async def test_each_bot_gets_its_own_bounds_and_discords_string_cap_holds() -> None:
    big = await registered_options({"IMAGINE_BOT__LIMITS__MAX_PROMPT_CHARS": "10000"})
    default = await registered_options({})
    assert big["imagine"]["prompt"]["max_length"] == 6000  # Discord refuses more
    assert default["imagine"]["steps"]["max_value"] == 100  # bot/default.toml, untouched
    assert default["imagine"]["prompt"]["max_length"] == 1500
