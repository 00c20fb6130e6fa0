"""`[discord] shards`: the bot on discord.py's AutoShardedBot, one gateway session per shard.

The local Discord routes each guild's events to shard `(guild_id >> 22) % count` and, like
Discord past 2,500 servers, refuses (4011) a session that would get too many guilds: here more
than 2 of the 3 guilds, so only a bot that really shards gets in at all.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord.ext import commands

from bot.client import ImagineBot, Services, ShardedImagineBot, make_bot
from bot.settings import load_settings
from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess, wait_until_ready, write_config
from tests.e2e.conftest import TEST_SPEED
from tests.e2e.fakediscord import (
    CallbackType,
    Channel,
    ConnectionInfo,
    FakeDiscord,
    GatewaySession,
    Guild,
    User,
    pointed_at,
)
from tests.e2e.results import has_images

pytestmark = pytest.mark.timeout(240)
on_module_loop = pytest.mark.asyncio(loop_scope="module")  # the tests that share one bot
WAIT = 60.0  # a busy 2-core machine; discord.py also waits 5 s before each shard's IDENTIFY
BOTH_SHARDS = [(0, 2), (1, 2)]


# --- the classes, without a gateway ----------------------------------------------------------


def bot_for(shards: str) -> ImagineBot:
    settings = load_settings(None, {"IMAGINE_BOT__DISCORD__SHARDS": shards})
    return make_bot(Services(settings, None, None, None, None))  # type: ignore[arg-type]


def test_make_bot_follows_the_setting() -> None:
    plain = bot_for("off")
    assert type(plain) is ImagineBot and not isinstance(plain, discord.AutoShardedClient)
    auto, fixed = bot_for("auto"), bot_for("3")
    for bot in (auto, fixed):
        assert isinstance(bot, ShardedImagineBot) and isinstance(bot, discord.AutoShardedClient)
        assert bot.intents == plain.intents
        assert bot.allowed_mentions is not None and plain.allowed_mentions is not None
        assert bot.allowed_mentions.to_dict() == plain.allowed_mentions.to_dict()
    assert auto.shard_count is None  # discord.py asks GET /gateway/bot for the count
    assert fixed.shard_count == 3


@pytest.mark.parametrize(
    ("cls", "discord_base"),
    [(ImagineBot, commands.Bot), (ShardedImagineBot, commands.AutoShardedBot)],
    ids=["off", "sharded"],
)
def test_only_our_own_methods_differ_from_discord_pys_bot(cls: type, discord_base: type) -> None:
    """ShardedImagineBot subclasses ImagineBot (a commands.Bot): every gateway method must
    still be AutoShardedBot's (connect, latency, is_ws_ratelimited, _get_websocket...)."""
    ours_only = {
        name for klass in cls.__mro__ if issubclass(klass, ImagineBot) for name in vars(klass)
    }
    assert "connect" not in ours_only and "latency" not in ours_only
    for name in dir(discord_base):
        if name in ours_only or (name.startswith("__") and name.endswith("__")):
            continue
        ours, theirs = inspect.getattr_static(cls, name), inspect.getattr_static(discord_base, name)
        assert ours is theirs, f"{cls.__name__}.{name} is not {discord_base.__name__}'s"


async def test_a_sharded_bot_stopped_before_it_started_closes() -> None:
    """A signal during warm-up closes a bot that never logged in (AutoShardedClient alone
    raises AttributeError there)."""
    bot = bot_for("2")
    await bot.close()


# --- the local Discord's side ----------------------------------------------------------------


async def test_gateway_bot_recommends_shards_and_counts_session_starts() -> None:
    async def gateway_bot(fake: FakeDiscord) -> dict:
        headers = {"Authorization": f"Bot {fake.token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{fake.rest_base}/gateway/bot", headers=headers) as response,
        ):
            assert response.status == 200
            return await response.json()

    async with FakeDiscord() as fake:
        first = await gateway_bot(fake)
        assert first["url"] == fake.gateway_url and first["shards"] == 1  # 1 guild
        assert first["session_start_limit"] == {
            "total": 1000,
            "remaining": 1000,
            "reset_after": 14_400_000,
            "max_concurrency": 1,
        }
        fake.settings.recommended_shards = 4
        client = discord.AutoShardedClient(
            intents=discord.Intents(guilds=True), shard_count=2, shard_ids=[1]
        )
        with pointed_at(fake):
            async with asyncio.timeout(WAIT):
                await client.login(fake.token)
                runner = asyncio.create_task(client.connect())
                await fake.wait_for(lambda f: f.sessions)
        assert shards_of(fake.sessions) == [(1, 2)]
        after = await gateway_bot(fake)
        assert after["shards"] == 4 and after["session_start_limit"]["remaining"] == 999
        await client.close()
        await asyncio.wait_for(runner, WAIT)


def test_a_guild_can_be_placed_on_a_shard() -> None:
    fake = FakeDiscord()
    for shard in [(0, 2), (1, 2), (1, 2), (2, 3), (0, 7), (6, 7)]:
        guild = fake.add_guild("g", shard=shard)
        assert (guild.id >> 22) % shard[1] == shard[0]
    ids = list(fake.state.guilds)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # still increasing snowflakes


# --- the real bot process against the local Discord ------------------------------------------


@dataclass
class Place:
    guild: Guild
    channel: Channel
    user: User


def place_on_shard(fake: FakeDiscord, shard: tuple[int, int]) -> Place:
    guild = fake.add_guild(f"Shard {shard[0]} Guild", shard=shard)
    assert (guild.id >> 22) % shard[1] == shard[0]
    channel = fake.add_channel("art", guild=guild)
    return Place(guild, channel, fake.add_user(f"artist{shard[0]}", guild=guild))


async def wait_for_log(bot: BotProcess, text: str, timeout: float = WAIT) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while text not in bot.log_text():
            assert bot.alive, bot.log_text()[-3000:]
            await asyncio.sleep(0.1)


async def start_sharded_bot(
    fake: FakeDiscord, tiny: TinyModel, directory: Path, shards: str
) -> BotProcess:
    """`imagine-bot run` with `[discord] shards = …`, once every shard is ready."""
    config = write_config(directory, fake, tiny, TEST_SPEED)
    text = config.read_text()
    assert text.count("\n[discord]\n") == 1
    config.write_text(text.replace("\n[discord]\n", f"\n[discord]\nshards = {shards}\n"))
    bot = BotProcess(config, fake.token, directory / "bot.log")
    await bot.start()
    try:
        await wait_until_ready(fake, bot)
        await fake.wait_for(lambda f: len(f.sessions) == 2, timeout=WAIT)
        # on_ready: after every shard's READY and GUILD_CREATEs
        await wait_for_log(bot, f"to {len(fake.state.guilds)} guilds over 2 shards")
    except BaseException:
        await bot.kill()
        raise
    return bot


def shards_of(
    sessions: Iterable[GatewaySession | ConnectionInfo],
) -> list[tuple[int, int] | None]:
    return sorted((s.shard for s in sessions), key=str)


@dataclass
class World:
    fake: FakeDiscord
    bot: BotProcess
    places: dict[int, Place]  # by shard id


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(
    tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    # Discord would recommend 3: a bot that asked for the recommendation instead of using
    # `shards = 2` would show 3 sessions.
    async with FakeDiscord(max_guilds_per_session=2, recommended_shards=3) as fake:
        places = {shard_id: place_on_shard(fake, (shard_id, 2)) for shard_id in (0, 1)}
        bot = await start_sharded_bot(fake, tiny_model, tmp_path_factory.mktemp("sharded"), "2")
        try:
            yield World(fake, bot, places)
        finally:
            await bot.kill()


@on_module_loop
async def test_an_unsharded_client_is_refused_here(world: World) -> None:
    """What makes the other tests mean something: one session may not serve all 3 guilds."""
    client = discord.Client(intents=discord.Intents(guilds=True))
    with pointed_at(world.fake):
        await client.login(world.fake.token)
        async with asyncio.timeout(WAIT):
            with pytest.raises(discord.ConnectionClosed) as closed:
                await client.connect(reconnect=False)
    await client.close()
    assert closed.value.code == 4011  # Sharding required


@on_module_loop
async def test_both_shards_identified_with_the_configured_count(world: World) -> None:
    fake = world.fake
    assert shards_of(fake.sessions) == BOTH_SHARDS
    identified = [c for c in fake.connections if c.identified]
    assert shards_of(identified) == BOTH_SHARDS  # each shard once, and nothing unsharded
    assert all(c.open for c in identified)
    log = world.bot.log_text()
    assert "gateway: sharded, 2 shards" in log
    assert "shard 0 of 2 ready" in log and "shard 1 of 2 ready" in log


@on_module_loop
@pytest.mark.parametrize("shard_id", [0, 1])
async def test_imagine_in_a_guild_each_shard_serves(world: World, shard_id: int) -> None:
    fake, place = world.fake, world.places[shard_id]
    handle = fake.invoke_slash(
        "imagine",
        {"prompt": f"a lighthouse {shard_id}", "steps": 2},
        user=place.user,
        channel=place.channel,
    )
    assert (
        await handle.wait_for_response(timeout=WAIT)
        == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    )
    final = await handle.wait_for_original(has_images, timeout=WAIT)
    assert final.channel_id == place.channel.id
    assert final.attachments[0].content.startswith(b"\x89PNG")
    # It came over that shard's session and no other.
    [session] = [s for s in fake.sessions if s.shard == (shard_id, 2)]
    [other] = [s for s in fake.sessions if s.shard == (1 - shard_id, 2)]

    def carried(s: GatewaySession) -> bool:
        return any(
            f["t"] == "INTERACTION_CREATE" and f["d"]["id"] == str(handle.id) for f in s.buffer
        )

    assert carried(session) and not carried(other)
    # A gateway event in that guild reaches the bot too: the owner's ❌ deletes the result.
    await fake.wait_for(lambda f: "❌" in final.reactions, timeout=WAIT)
    fake.add_reaction(final, "❌", user=place.user)
    await fake.wait_for(lambda f: final.deleted, timeout=WAIT)


@on_module_loop
async def test_stops_cleanly_closing_every_shard(world: World) -> None:
    """Last in this module: it stops the shared bot."""
    fake, bot = world.fake, world.bot
    identified = [c for c in fake.connections if c.identified]
    assert await bot.stop() == 0, bot.log_text()[-3000:]
    await fake.wait_for(lambda f: not f.sessions and not any(c.open for c in identified), WAIT)
    assert [c.close_code for c in identified] == [1000, 1000]  # each shard said goodbye
    assert "stopped cleanly" in bot.log_text()


# --- shards = "auto" -------------------------------------------------------------------------


async def test_auto_uses_discords_recommended_count(tiny_model: TinyModel, tmp_path: Path) -> None:
    async with FakeDiscord(max_guilds_per_session=2, recommended_shards=2) as fake:
        place_on_shard(fake, (0, 2))
        place_on_shard(fake, (1, 2))
        before = len(fake.requests)
        bot = await start_sharded_bot(fake, tiny_model, tmp_path, '"auto"')
        try:
            assert shards_of(fake.sessions) == BOTH_SHARDS
            asked = [r for r in fake.requests[before:] if r.path == "/api/v10/gateway/bot"]
            assert asked, "the bot did not ask Discord for the recommended shard count"
            assert "as many shards as Discord recommends" in bot.log_text()
            assert await bot.stop() == 0, bot.log_text()[-3000:]
        finally:
            await bot.kill()
