"""The local Discord-compatible server, driven by a real discord.py bot over real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord import app_commands
from discord.ext import commands

from tests.e2e.fakediscord import (
    CallbackType,
    FakeDiscord,
    Intent,
    MessageFlag,
    pointed_at,
    uploads_matching,
)

WAIT = 5.0  # every wait is bounded: a bug fails the test instead of hanging it


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG, built by hand so the test needs no image library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(
        b"\x00" + bytes(rgb for x in range(width) for rgb in (x * 40, y * 90, 200))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


PNG = tiny_png()


@dataclass
class Probe:
    """What the bot saw, for the test to look at."""

    errors: list[discord.HTTPException] = field(default_factory=list)
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    modal_values: list[str] = field(default_factory=list)
    fetched: list[discord.InteractionMessage] = field(default_factory=list)
    fetched_event: asyncio.Event = field(default_factory=asyncio.Event)
    downloaded: list[bytes] = field(default_factory=list)

    def record(self, error: discord.HTTPException) -> None:
        self.errors.append(error)
        self.failed.set()

    async def wait_for_error(self) -> discord.HTTPException:
        await asyncio.wait_for(self.failed.wait(), WAIT)
        return self.errors[0]


class MenuView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="OK", custom_id="menu:ok")
    async def ok(
        self, interaction: discord.Interaction, button: discord.ui.Button[MenuView]
    ) -> None:
        await interaction.response.edit_message(
            content=f"clicked by {interaction.user.name}", view=None
        )


class NameModal(discord.ui.Modal, title="Your name"):
    name: discord.ui.TextInput[NameModal] = discord.ui.TextInput(label="Name", custom_id="name")

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.probe.modal_values.append(self.name.value)
        await interaction.response.send_message(f"hello {self.name.value}", ephemeral=True)


class FastIdentifyBot(commands.Bot):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every IDENTIFY but the first; no need against a fake."""


def build_bot(probe: Probe) -> commands.Bot:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_reactions = True
    bot = FastIdentifyBot(
        command_prefix=commands.when_mentioned, intents=intents, guild_ready_timeout=0.05
    )

    @bot.tree.command()
    @app_commands.describe(prompt="what to draw", steps="sampling steps")
    @app_commands.choices(
        steps=[app_commands.Choice(name="two", value=2), app_commands.Choice(name="four", value=4)]
    )
    async def draw(interaction: discord.Interaction, prompt: str, steps: int = 2) -> None:
        """Draw a picture."""
        await interaction.response.defer()
        for step in range(1, steps + 1):
            await interaction.edit_original_response(content=f"{prompt}: step {step}/{steps}")
        await interaction.edit_original_response(
            content=f"{prompt}: done", attachments=[discord.File(io.BytesIO(PNG), "image.png")]
        )

    @bot.tree.command()
    async def secret(interaction: discord.Interaction) -> None:
        """Whisper."""
        await interaction.response.send_message(
            "only you can see this", ephemeral=True, file=discord.File(io.BytesIO(PNG), "s.png")
        )
        probe.fetched.append(await interaction.original_response())
        probe.fetched_event.set()

    @bot.tree.command()
    async def slow(interaction: discord.Interaction) -> None:
        """Defer, wait for the test, then edit."""
        await interaction.response.defer(thinking=True)
        await probe.gate.wait()
        try:
            await interaction.edit_original_response(content="late")
        except discord.HTTPException as error:
            probe.record(error)

    @bot.tree.command()
    async def sleepy(interaction: discord.Interaction) -> None:
        """Wait for the test before acknowledging."""
        await probe.gate.wait()
        try:
            await interaction.response.defer()
        except discord.HTTPException as error:
            probe.record(error)

    @bot.tree.command()
    async def flavour(interaction: discord.Interaction, name: str) -> None:
        """Pick a flavour."""
        await interaction.response.send_message(name)

    @flavour.autocomplete("name")
    async def flavour_names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = ["vanilla", "chocolate", "strawberry", "vinegar"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    @bot.tree.command()
    async def menu(interaction: discord.Interaction) -> None:
        """Show a button."""
        await interaction.response.send_message("press it", view=MenuView())

    @bot.tree.command()
    async def form(interaction: discord.Interaction) -> None:
        """Ask for a name."""
        await interaction.response.send_modal(NameModal(probe))

    @bot.tree.command()
    async def note(interaction: discord.Interaction) -> None:
        """Defer, then answer with a follow-up."""
        await interaction.response.defer()
        await interaction.followup.send("from a follow-up")

    @bot.tree.command()
    async def inspect(interaction: discord.Interaction, file: discord.Attachment) -> None:
        """Download an attached file and say what it was."""
        await interaction.response.defer()
        try:
            data = await file.read()
        except discord.HTTPException as error:
            await interaction.edit_original_response(content=f"read failed: {error.status}")
            return
        probe.downloaded.append(data)
        seen = [file.filename, file.size, file.content_type, file.width, file.height]
        seen += [file.ephemeral, len(data), hashlib.sha256(data).hexdigest()[:12]]
        await interaction.edit_original_response(content=" ".join(map(str, seen)))

    async def setup_hook() -> None:
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@dataclass
class Harness:
    fake: FakeDiscord
    bot: commands.Bot
    probe: Probe


@pytest_asyncio.fixture(loop_scope="function")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="function")
async def harness(fake: FakeDiscord) -> AsyncIterator[Harness]:
    probe = Probe()
    bot = build_bot(probe)
    with pointed_at(fake):
        async with asyncio.timeout(WAIT):
            await bot.login(fake.token)
            runner = asyncio.create_task(bot.connect(), name="test-bot-connect")
            await bot.wait_until_ready()
        try:
            yield Harness(fake, bot, probe)
        finally:
            await bot.close()
            async with asyncio.timeout(WAIT):
                await runner
    assert fake.unknown_requests == []


# --- plain HTTP ----------------------------------------------------------------------------


async def test_json_content_type_is_exactly_application_json(fake: FakeDiscord) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bot {fake.token}"}
        async with session.get(f"{fake.rest_base}/users/@me", headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            assert (await response.json())["id"] == str(fake.bot_user.id)
        async with session.get(f"{fake.rest_base}/users/@me") as response:
            assert response.status == 401
            assert response.headers["Content-Type"] == "application/json"
        async with session.get(f"{fake.rest_base}/gateway") as response:
            assert (await response.json()) == {"url": fake.gateway_url}
        async with session.get(f"{fake.rest_base}/no/such/route", headers=headers) as response:
            assert response.status == 404
            assert response.headers["Content-Type"] == "application/json"
    assert [(r.method, r.path) for r in fake.unknown_requests] == [
        ("GET", "/api/v10/no/such/route")
    ]


async def test_wrong_token_fails_login(fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.none())
    with pointed_at(fake), pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()


async def test_privileged_intents_are_refused_unless_allowed(fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents(guilds=True, members=True))
    with pointed_at(fake):
        await client.login(fake.token)
        async with asyncio.timeout(WAIT):
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await client.connect()
    await client.close()
    assert fake.connections[-1].close_code == 4014


async def test_auto_sharded_client_asks_gateway_bot(fake: FakeDiscord) -> None:
    client = discord.AutoShardedClient(
        intents=discord.Intents(guilds=True), guild_ready_timeout=0.05
    )
    with pointed_at(fake):
        async with asyncio.timeout(WAIT):
            await client.login(fake.token)
            runner = asyncio.create_task(client.connect())
            await client.wait_until_ready()
        assert client.get_guild(fake.guild.id) is not None
        assert any(r.path == "/api/v10/gateway/bot" for r in fake.requests)
        await client.close()
        async with asyncio.timeout(WAIT):
            await runner


@pytest.mark.parametrize("compress", [True, False])
async def test_members_intent_when_allowed_and_chunking(compress: bool) -> None:
    async with FakeDiscord(
        allowed_privileged_intents=Intent.GUILD_MEMBERS, compress=compress
    ) as fake:
        client = discord.Client(
            intents=discord.Intents(guilds=True, members=True), guild_ready_timeout=0.05
        )
        with pointed_at(fake):
            async with asyncio.timeout(WAIT):
                await client.login(fake.token)
                runner = asyncio.create_task(client.connect())
                await client.wait_until_ready()
            guild = client.get_guild(fake.guild.id)
            assert guild is not None and guild.chunked  # op 8 answered by GUILD_MEMBERS_CHUNK
            assert guild.get_member(fake.user.id) is not None
            assert fake.connections[0].compressed is compress
            await client.close()
            async with asyncio.timeout(WAIT):
                await runner


# --- gateway ---------------------------------------------------------------------------------


async def test_ready_and_guild_create_reach_the_bot(harness: Harness) -> None:
    fake, bot = harness.fake, harness.bot
    assert bot.user is not None and bot.user.id == fake.bot_user.id
    assert bot.application_id == fake.application_id
    guild = bot.get_guild(fake.guild.id)
    assert guild is not None and guild.name == fake.guild.name
    assert guild.get_channel(fake.channel.id) is not None
    assert guild.get_role(fake.moderator_role.id) is not None
    assert guild.me is not None  # GUILD_CREATE carried the bot's own member
    connection = fake.connections[0]
    assert connection.identified and connection.compressed  # discord.py asked for zlib-stream
    assert connection.query["v"] == "10" and connection.query["encoding"] == "json"
    assert fake.identified


async def test_server_side_disconnect_resumes_and_replays_missed_events(harness: Harness) -> None:
    fake, bot = harness.fake, harness.bot
    message = fake.post_message("hello")  # not delivered: the bot has no guild_messages intent
    assert fake.disconnect_gateway(4000) == 1
    # dispatched while the bot is away: kept for the session and replayed on RESUME
    fake.add_reaction(message, "🔄", user=fake.moderator)
    await fake.wait_for(lambda f: any(c.resumed for c in f.connections))
    raw = await bot.wait_for("raw_reaction_add", timeout=WAIT)
    assert raw.user_id == fake.moderator.id and raw.message_id == message.id
    resumed = fake.connections[-1]
    assert resumed.path == "/gateway/resume"  # the resume_gateway_url from READY
    assert len(fake.gateway.sessions) == 1


async def test_reconnect_request_resumes(harness: Harness) -> None:
    fake = harness.fake
    fake.request_reconnect()  # op 7
    await fake.wait_for(lambda f: len(f.connections) == 2 and f.connections[1].resumed)
    await fake.wait_until_identified()
    interaction = fake.invoke_slash("secret")  # the resumed session still gets interactions
    await interaction.wait_for_original()


async def test_invalidated_session_identifies_again(harness: Harness) -> None:
    fake, bot = harness.fake, harness.bot
    old_session = next(iter(fake.gateway.sessions))
    fake.invalidate_sessions()  # op 9, not resumable
    await fake.wait_for(lambda f: f.connections[-1].identified and len(f.connections) == 2)
    async with asyncio.timeout(WAIT):
        await bot.wait_for("ready")
    assert old_session not in fake.gateway.sessions and len(fake.gateway.sessions) == 1


# --- application commands ------------------------------------------------------------------


async def test_command_sync_is_recorded(harness: Harness) -> None:
    fake = harness.fake
    assert [sync.guild_id for sync in fake.command_syncs] == [None]
    names = {c.name for c in fake.commands()}
    assert {"draw", "secret", "flavour", "menu", "form"} <= names
    draw = fake.command("draw")
    assert draw.description == "Draw a picture."
    assert draw.option("prompt")["type"] == 3 and draw.option("prompt")["required"]
    assert draw.option("steps")["type"] == 4
    assert [c["value"] for c in draw.choices("steps")] == [2, 4]
    assert fake.command("flavour").option("name")["autocomplete"]


async def test_slash_command_defers_then_edits_in_a_png(harness: Harness) -> None:
    fake = harness.fake
    interaction = fake.invoke_slash("draw", {"prompt": "a cat", "steps": 2})
    assert (
        await interaction.wait_for_response() == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    )
    message = await interaction.wait_for_original(lambda m: bool(m.attachments))
    assert message.contents == ["", "a cat: step 1/2", "a cat: step 2/2", "a cat: done"]
    assert message.history[0].flags & MessageFlag.LOADING and not message.loading
    (attachment,) = message.attachments
    assert attachment.filename == "image.png" and attachment.content_type == "image/png"
    assert attachment.content == PNG
    async with aiohttp.ClientSession() as session, session.get(attachment.url) as response:
        assert await response.read() == PNG
    # the interaction routes authenticate by their token, never by the bot token
    token_routes = [
        r for r in fake.requests if "/interactions/" in r.path or "/webhooks/" in r.path
    ]
    assert len(token_routes) == 4 and all(r.authorization is None for r in token_routes)
    assert fake.requests[-1].status == 200


async def test_options_are_checked_against_the_registered_command(harness: Harness) -> None:
    fake = harness.fake
    with pytest.raises(ValueError, match="registered choices"):
        fake.invoke_slash("draw", {"prompt": "x", "steps": 3})
    with pytest.raises(ValueError, match="missing required"):
        fake.invoke_slash("draw", {})
    with pytest.raises(LookupError, match="not registered"):
        fake.invoke_slash("nope")


def seen(data: bytes) -> str:
    return f"{len(data)} {hashlib.sha256(data).hexdigest()[:12]}"


async def test_attachment_option_is_resolved_and_downloadable(harness: Harness) -> None:
    fake, probe = harness.fake, harness.probe
    assert fake.command("inspect").option("file")["type"] == 11  # registered as an ATTACHMENT
    interaction = fake.invoke_slash("inspect", {"file": fake.attachment("in.png", PNG)})
    (stored,) = interaction.attachments
    data = interaction.payload["data"]
    assert data["options"] == [{"name": "file", "type": 11, "value": str(stored.id)}]
    assert data["resolved"]["attachments"] == {
        str(stored.id): {
            "id": str(stored.id),
            "filename": "in.png",
            "size": len(PNG),
            "url": stored.url,
            "proxy_url": stored.url,
            "content_type": "image/png",
            "width": 3,
            "height": 2,
            "ephemeral": True,
        }
    }
    cdn_path = f"/ephemeral-attachments/{fake.channel.id}/{stored.id}/in.png"
    assert stored.url == fake.base_url + cdn_path
    message = await interaction.wait_for_original(lambda m: m.content.startswith("in.png"))
    assert message.content == f"in.png {len(PNG)} image/png 3 2 True {seen(PNG)}"
    assert probe.downloaded == [PNG]  # the bytes came over the socket, unchanged
    assert [(r.method, r.status) for r in fake.requests if r.path == cdn_path] == [("GET", 200)]

    # a size declared apart from the bytes; a file Pillow cannot decode has no dimensions
    text = b"not an image"
    big = fake.attachment("notes.txt", text, size=50 * 1024 * 1024)
    interaction = fake.invoke_slash("inspect", {"file": big})
    message = await interaction.wait_for_original(lambda m: m.content.startswith("notes.txt"))
    expected = f"notes.txt {50 * 1024 * 1024} text/plain; charset=utf-8 None None True {seen(text)}"
    assert message.content == expected
    resolved = interaction.payload["data"]["resolved"]["attachments"]
    assert "width" not in next(iter(resolved.values()))


async def test_attachment_downloads_obey_fault_rules(harness: Harness) -> None:
    fake, probe = harness.fake, harness.probe
    cdn = r"^/ephemeral-attachments/"
    failing = fake.fail_requests("GET", cdn, status=503)
    interaction = fake.invoke_slash("inspect", {"file": fake.attachment("a.png", PNG)})
    message = await interaction.wait_for_original(lambda m: m.content.startswith("read"))
    assert message.content == "read failed: 503" and len(failing.hits) == 1

    stalled = fake.stall_requests("GET", cdn, seconds=60)
    interaction = fake.invoke_slash("inspect", {"file": fake.attachment("b.png", PNG)})
    await fake.wait_for(lambda _: stalled.stalled_now == 1)
    assert interaction.original is not None and interaction.original.content == ""
    stalled.release()
    message = await interaction.wait_for_original(lambda m: m.content.startswith("b.png"))
    assert probe.downloaded == [PNG]

    # a wrong channel or name in the URL is the CDN's 404; bad option values are test bugs
    async with aiohttp.ClientSession() as session:
        url = interaction.attachments[0].url
        async with session.get(url.replace("b.png", "c.png")) as response:
            assert response.status == 404
        async with session.get(url.replace(str(fake.channel.id), "1")) as response:
            assert response.status == 404
    with pytest.raises(ValueError, match="attachment option takes"):
        fake.invoke_slash("inspect", {"file": PNG})


async def test_registered_option_types_are_validated(fake: FakeDiscord) -> None:
    url = f"{fake.rest_base}/applications/{fake.application_id}/commands"
    option = {"name": "file", "description": "a file", "type": 11}
    command = {"name": "up", "description": "upload", "options": [option]}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.token}"}) as session:
        async with session.put(url, json=[command]) as response:
            assert response.status == 200
        option["type"] = 12
        async with session.put(url, json=[command]) as response:
            assert response.status == 400
            body = await response.json()
            assert body["code"] == 50035 and "type" in str(body["errors"])
    assert fake.command("up").option("file")["type"] == 11


async def test_ephemeral_response_has_flag_64(harness: Harness) -> None:
    fake, probe = harness.fake, harness.probe
    interaction = fake.invoke_slash("secret")
    message = await interaction.wait_for_original()
    assert interaction.callback_type == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE
    assert message.flags & MessageFlag.EPHEMERAL == 64 and message.ephemeral
    assert message.content == "only you can see this"
    assert [a.content for a in message.attachments] == [PNG]  # a multipart callback
    # GET @original: the bot sees its own message as ephemeral
    await asyncio.wait_for(probe.fetched_event.wait(), WAIT)
    (fetched,) = probe.fetched
    assert fetched.id == message.id and fetched.flags.ephemeral


async def test_expired_token_is_an_error_the_bot_sees(harness: Harness) -> None:
    fake, probe = harness.fake, harness.probe
    interaction = fake.invoke_slash("slow")
    await interaction.wait_for_response()
    fake.advance_time(15 * 60 + 1)
    probe.gate.set()
    error = await probe.wait_for_error()
    assert error.status == 401 and error.code == 50027
    assert interaction.rejected == [(401, 50027)]


async def test_late_acknowledgement_is_an_unknown_interaction(harness: Harness) -> None:
    fake, probe = harness.fake, harness.probe
    interaction = fake.invoke_slash("sleepy")
    fake.advance_time(3.5)
    probe.gate.set()
    error = await probe.wait_for_error()
    assert error.status == 404 and error.code == 10062
    assert interaction.rejected == [(404, 10062)]
    assert not interaction.responded


async def test_followup_after_defer_fills_in_the_thinking_message(harness: Harness) -> None:
    interaction = harness.fake.invoke_slash("note")
    followup = await interaction.wait_for_followup()
    assert followup is interaction.original
    assert followup.contents == ["", "from a follow-up"]


async def test_autocomplete_returns_the_bots_choices(harness: Harness) -> None:
    choices = await harness.fake.invoke_autocomplete("flavour", {"name": "v"}, focused="name")
    assert choices == [
        {"name": "vanilla", "value": "vanilla"},
        {"name": "vinegar", "value": "vinegar"},
    ]


async def test_button_click_updates_the_message(harness: Harness) -> None:
    fake = harness.fake
    shown = fake.invoke_slash("menu")
    message = await shown.wait_for_original()
    click = fake.click_button(message, "menu:ok", user=fake.moderator)
    assert await click.wait_for_response() == CallbackType.UPDATE_MESSAGE
    assert message.contents == ["press it", "clicked by mod"]
    assert message.components == []


async def test_modal_round_trip(harness: Harness) -> None:
    fake = harness.fake
    shown = fake.invoke_slash("form")
    assert await shown.wait_for_response() == CallbackType.MODAL
    submitted = fake.submit_modal(shown, {"name": "Ada"})
    reply = await submitted.wait_for_original()
    assert reply.content == "hello Ada" and reply.ephemeral
    assert harness.probe.modal_values == ["Ada"]


async def test_rate_limited_edit_is_retried_by_discord_py(harness: Harness) -> None:
    fake = harness.fake
    fake.rate_limit(method="PATCH", path=r"/messages/@original$", retry_after=0.05)
    interaction = fake.invoke_slash("draw", {"prompt": "dog"})
    message = await interaction.wait_for_original(lambda m: bool(m.attachments))
    assert message.contents[-1] == "dog: done"
    assert [r.status for r in fake.rate_limited] == [429]


async def test_upload_over_the_interaction_limit_is_413(harness: Harness) -> None:
    fake = harness.fake
    interaction = fake.invoke_slash("draw", {"prompt": "big"}, attachment_size_limit=len(PNG) - 1)
    await fake.wait_for(lambda f: interaction.rejected)
    assert interaction.rejected == [(413, 40005)]
    assert interaction.original is not None and not interaction.original.attachments


# --- reactions -----------------------------------------------------------------------------


async def test_reactions_reach_on_raw_reaction_add(harness: Harness) -> None:
    fake, bot = harness.fake, harness.bot
    channel = bot.get_channel(fake.channel.id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("react to me", file=discord.File(io.BytesIO(PNG), "c.png"))
    assert fake.message(sent.id).attachments[0].content == PNG
    seen = asyncio.ensure_future(bot.wait_for("raw_reaction_add", timeout=WAIT))
    await sent.add_reaction("🔄")  # Discord echoes the bot's own reaction back
    own = await seen
    assert own.user_id == fake.bot_user.id and own.type == discord.ReactionType.normal
    seen = asyncio.ensure_future(bot.wait_for("raw_reaction_add", timeout=WAIT))
    assert fake.add_reaction(sent.id, "🔄", user=fake.user)
    raw = await seen
    assert raw.user_id == fake.user.id and str(raw.emoji) == "🔄"
    assert raw.member is not None and raw.member.id == fake.user.id
    assert raw.message_author_id == fake.bot_user.id
    removed = asyncio.ensure_future(bot.wait_for("raw_reaction_remove", timeout=WAIT))
    fake.remove_reaction(sent.id, "🔄", user=fake.user)
    assert (await removed).user_id == fake.user.id
    assert fake.message(sent.id).reactions == {"🔄": [fake.bot_user.id]}


async def test_events_are_filtered_by_intents(harness: Harness) -> None:
    fake = harness.fake
    session = next(iter(fake.gateway.sessions.values()))
    assert session.intents & Intent.GUILD_MESSAGE_REACTIONS
    before = session.seq
    fake.post_message("nobody hears this")  # MESSAGE_CREATE needs guild_messages
    assert session.seq == before


# --- injected faults -----------------------------------------------------------------------

CREATE = r"/channels/\d+/messages$"


def text_channel(harness: Harness) -> discord.TextChannel:
    channel = harness.bot.get_channel(harness.fake.channel.id)
    assert isinstance(channel, discord.TextChannel)
    return channel


async def test_failed_request_answers_discords_json_error(harness: Harness) -> None:
    fake, channel = harness.fake, text_channel(harness)
    rule = fake.fail_requests("POST", CREATE, status=403, code=50013, message="Missing Permissions")
    with pytest.raises(discord.Forbidden) as raised:
        await channel.send("refused")
    assert raised.value.status == 403 and raised.value.code == 50013
    assert raised.value.text == "Missing Permissions"  # discord.py parsed the JSON body
    assert (await channel.send("the rule is used up")).content == "the rule is used up"
    assert fake.messages_in()[-1].content == "the rule is used up"
    ((method, status, fault),) = [(r.method, r.status, r.fault) for r in fake.faulted]
    assert (method, status, fault) == ("POST", 403, "fail") and rule.hits == fake.faulted

    forever = fake.fail_requests(None, r"/users/@me$", status=502, count=None)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.token}"}) as session:
        for _ in range(2):
            async with session.get(f"{fake.rest_base}/users/@me") as response:
                assert response.status == 502
                assert response.headers["Content-Type"] == "application/json"
                assert await response.json() == {"message": "500: Internal Server Error", "code": 0}
        forever.stop()
        async with session.get(f"{fake.rest_base}/users/@me") as response:
            assert response.status == 200
    assert len(forever.hits) == 2 and len(fake.faulted) == 3


async def test_fault_rules_can_look_at_the_body(harness: Harness) -> None:
    fake, channel = harness.fake, text_channel(harness)
    fake.fail_requests("POST", CREATE, status=400, with_files=True)
    named = fake.fail_requests(
        "POST", CREATE, status=400, count=None, predicate=uploads_matching(r"^job-\d+-\d+\.png$")
    )
    await channel.send("plain text passes")
    with pytest.raises(discord.HTTPException):
        await channel.send(file=discord.File(io.BytesIO(PNG), "other.png"))  # with_files
    await channel.send(file=discord.File(io.BytesIO(PNG), "other.png"))  # that rule is used up
    with pytest.raises(discord.HTTPException):
        await channel.send("result", file=discord.File(io.BytesIO(PNG), "job-7-0.png"))
    fake.clear_faults()
    sent = await channel.send("result", file=discord.File(io.BytesIO(PNG), "job-7-0.png"))
    # the rule read the multipart body; the handler still got all of it
    assert fake.message(sent.id).attachments[0].content == PNG
    assert [m.content for m in fake.messages_in()] == ["plain text passes", "", "result"]
    assert len(named.hits) == 1 and named.stopped


async def test_stalled_request_is_answered_late(harness: Harness) -> None:
    fake, channel = harness.fake, text_channel(harness)
    fake.stall_requests("POST", CREATE, seconds=0.3)
    started = asyncio.get_running_loop().time()
    sent = await channel.send("slow")
    assert asyncio.get_running_loop().time() - started >= 0.3
    assert fake.message(sent.id).content == "slow"
    (record,) = fake.faulted
    assert record.fault == "stall" and record.status == 0  # recorded when the stall began
    assert [r.status for r in fake.requests if r.fault == "stall"] == [200]  # when answered

    rule = fake.stall_requests("POST", CREATE, seconds=60, with_files=True)
    upload = asyncio.ensure_future(channel.send(file=discord.File(io.BytesIO(PNG), "a.png")))
    await fake.wait_for(lambda _: rule.stalled_now == 1)
    assert not upload.done()
    rule.release()
    async with asyncio.timeout(WAIT):
        assert (await upload).attachments[0].filename == "a.png"


async def test_stalled_request_of_a_client_that_gave_up_has_no_effect(harness: Harness) -> None:
    fake, channel = harness.fake, text_channel(harness)
    rule = fake.stall_requests("POST", CREATE, seconds=60)
    sending = asyncio.ensure_future(channel.send("never arrives"))
    await fake.wait_for(lambda _: rule.stalled_now == 1)
    sending.cancel()  # the client gives up: aiohttp closes the connection
    with pytest.raises(asyncio.CancelledError):
        await sending
    # the server notices the closed connection and drops the request
    await fake.wait_for(lambda f: any(r.fault == "stall" and r.status == 0 for r in f.requests))
    assert rule.stalled_now == 0 and fake.messages_in() == []
    await channel.send("the next one goes through")
    assert [m.content for m in fake.messages_in()] == ["the next one goes through"]


async def test_stop_is_not_held_up_by_a_stalled_request() -> None:
    fake = FakeDiscord()
    await fake.start()
    try:
        fake.stall_requests("GET", r"/users/@me$", seconds=3600)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bot {fake.token}"}) as s:
            request = asyncio.ensure_future(s.get(f"{fake.rest_base}/users/@me"))
            await fake.wait_for(lambda f: f.faulted)
            async with asyncio.timeout(1.5):
                await fake.stop()
            with pytest.raises(aiohttp.ClientError):
                await request
    finally:
        await fake.stop()


@pytest.mark.parametrize("apply", [False, True], ids=["lost", "applied-answer-lost"])
async def test_dropped_request_is_a_disconnect(harness: Harness, apply: bool) -> None:
    fake, channel = harness.fake, text_channel(harness)
    await channel.send("warm")  # the next request reuses this keep-alive connection
    fake.drop_requests("POST", CREATE, apply=apply)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await channel.send("dropped", file=discord.File(io.BytesIO(PNG), "job-1-0.png"))
    (record,) = fake.faulted
    assert (record.method, record.status, record.fault) == ("POST", 0, "drop")
    created = [m.content for m in fake.messages_in()]
    assert created == (["warm", "dropped"] if apply else ["warm"])
    await channel.send("after")  # a fresh connection works
    assert fake.messages_in()[-1].content == "after"


# --- nonces and history --------------------------------------------------------------------


async def test_enforced_nonce_returns_the_first_message(harness: Harness) -> None:
    fake, channel = harness.fake, text_channel(harness)
    first = await channel.send("result", nonce="imagine-42")  # discord.py adds enforce_nonce
    again = await channel.send("result again", nonce="imagine-42")
    assert again.id == first.id and again.content == "result" and again.nonce == "imagine-42"
    file = discord.File(io.BytesIO(PNG), "job-42-0.png")
    with_file = await channel.send(file=file, nonce="imagine-43")  # multipart: payload_json
    file = discord.File(io.BytesIO(PNG), "job-42-0.png")
    assert (await channel.send(file=file, nonce="imagine-43")).id == with_file.id
    assert len(fake.messages_in()) == 2
    other = await channel.send("result", nonce="imagine-44")
    assert other.id != first.id

    fake.advance_time(5 * 60 + 1)  # the nonce is remembered for five minutes
    later = await channel.send("result", nonce="imagine-42")
    assert later.id != first.id and len(fake.messages_in()) == 4
    with pytest.raises(discord.HTTPException) as raised:
        await channel.send("x", nonce="n" * 26)
    assert raised.value.code == 50035


async def test_nonce_without_enforce_and_on_webhooks_does_not_deduplicate(
    harness: Harness,
) -> None:
    fake = harness.fake
    shown = fake.invoke_slash("note")
    await shown.wait_for_followup()
    body = {"content": "again", "nonce": "n-1"}
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bot {fake.token}"}
        url = f"{fake.rest_base}/channels/{fake.channel.id}/messages"
        for _ in range(2):  # Discord only checks a nonce when enforce_nonce is true
            async with session.post(url, json=body, headers=headers) as response:
                assert (await response.json())["nonce"] == "n-1"
        # Executing a webhook (interaction follow-ups) takes no nonce: nothing is checked.
        hook = f"{fake.rest_base}/webhooks/{fake.application_id}/{shown.token}?wait=true"
        for _ in range(2):
            async with session.post(hook, json={**body, "enforce_nonce": True}) as response:
                assert response.status == 200
    assert [m.content for m in fake.messages_in()].count("again") == 4
    assert len(shown.followups) == 3


async def test_history_before_after_around(harness: Harness) -> None:
    channel = text_channel(harness)
    sent = [await channel.send(f"m{i}") for i in range(6)]
    ids = [m.id for m in sent]

    async def history(**kwargs: object) -> list[int]:
        return [m.id async for m in channel.history(**kwargs)]  # type: ignore[arg-type]

    assert await history(limit=3) == ids[:2:-1]  # newest first
    assert await history(limit=2, before=sent[3]) == [ids[2], ids[1]]
    assert await history(limit=2, after=sent[1], oldest_first=True) == [ids[2], ids[3]]
    assert sorted(await history(limit=4, around=sent[3])) == ids[1:5]
    assert await history(limit=None) == ids[::-1]  # discord.py pages with before=
