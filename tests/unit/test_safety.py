"""Safety at the bot's edges: mentions, reply length, log redaction, the data directory and
the one-line start-up errors."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import discord
import pytest
from aiohttp.client_reqrep import ConnectionKey
from hypothesis import given
from hypothesis import strategies as st

from bot.__main__ import RedactSecrets
from bot.client import ImagineBot, Services
from bot.errors import user_message
from bot.render import MAX_CONTENT, clip, discord_length
from bot.settings import Settings, load_settings
from bot.startup import StartupError, explain_startup_error, prepare_data_dir
from inference.errors import InvalidRequestError, UnknownModelError

BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.bot-token-secret-value"
# Any token shape for the URL and payload patterns; Discord's own interaction tokens are base64
# of "interaction:…" (STORED_TOKEN), which is redacted wherever it appears.
INTERACTION_TOKEN = "c2VjcmV0LWludGVyYWN0aW9uLXRva2Vu_x-9"
WEBHOOK_TOKEN = "d2ViaG9vay10b2tlbi1zZWNyZXQ-Ab_12"
STORED_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OnNlY3JldA"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(None)


# --- mentions ----------------------------------------------------------------------------------


def test_the_client_pings_nobody_unless_a_send_allows_the_requester(settings: Settings) -> None:
    bot = ImagineBot(Services(settings, None, None, None, None))  # type: ignore[arg-type]
    default = bot.allowed_mentions
    assert default is not None
    assert default.to_dict() == {"parse": []}  # no @everyone/@here, no roles, no users
    assert default.replied_user is False
    # What discord.py sends when a call allows only the requester: the merge with the default.
    requester = discord.Object(id=42)
    merged = default.merge(discord.AllowedMentions(users=[requester])).to_dict()
    assert merged == {"parse": [], "users": [42]}


# --- replies fit Discord's content limit ---------------------------------------------------


@given(st.text(max_size=5000))
def test_clip_always_fits_and_keeps_the_start(text: str) -> None:
    fitted = clip(text)
    assert discord_length(fitted) <= MAX_CONTENT
    if discord_length(text) <= MAX_CONTENT:
        assert fitted == text
    else:
        assert fitted.endswith("…") and text.startswith(fitted[:-1].rstrip())


def test_fit_counts_emoji_as_discord_may() -> None:
    fitted = clip("🦊" * 1500)  # 3,000 UTF-16 units
    assert discord_length(fitted) <= MAX_CONTENT and fitted.startswith("🦊" * 999)


def test_an_error_quoting_a_huge_input_still_fits() -> None:
    name = "x" * 6000
    text = user_message(UnknownModelError(f"model: unknown model {name!r}; available: tiny"))
    assert text.startswith("⚠️ model: unknown model") and len(text) <= MAX_CONTENT
    assert len(user_message(InvalidRequestError("prompt", "\ud800" * 3000))) <= 2000


class _Response:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.type = None  # not answered yet

    def is_done(self) -> bool:
        return False

    async def send_message(self, text: str, *, ephemeral: bool) -> None:
        assert ephemeral
        self.sent.append(text)


async def test_reply_ephemeral_never_sends_more_than_discord_accepts() -> None:
    interaction = SimpleNamespace(response=_Response())
    await ImagineBot.reply_ephemeral(interaction, "⚠️ " + "long " * 3000)  # type: ignore[arg-type]
    [sent] = interaction.response.sent
    assert sent.startswith("⚠️ long") and discord_length(sent) <= MAX_CONTENT


# --- log redaction -----------------------------------------------------------------------------


def _logged(message: str, *args: object, exc_info: object = None) -> str:
    """`message % args` as the bot's log handler writes it."""
    record = logging.LogRecord("discord.http", logging.DEBUG, __file__, 1, message, args, None)
    if exc_info is not None:
        record.exc_info = exc_info  # type: ignore[assignment]
    assert RedactSecrets([BOT_TOKEN]).filter(record)
    return logging.Formatter("%(message)s").format(record)


@pytest.mark.parametrize(
    ("message", "args"),
    [
        (  # discord.http, the deferral
            "%s %s with %s has returned %s",
            (
                "POST",
                f"http://127.0.0.1:9/api/v10/interactions/1234567890/{INTERACTION_TOKEN}"
                "/callback?with_response=1",
                '{"type": 5}',
                200,
            ),
        ),
        (  # discord.webhook.async_, a progress edit
            "Webhook ID %s with %s %s has returned status code %s",
            (
                987,
                "PATCH",
                f"https://discord.com/api/v10/webhooks/987/{WEBHOOK_TOKEN}/messages/@original",
                200,
            ),
        ),
        (  # a followup, no trailing path
            "POST %s",
            (f"https://discord.com/api/v10/webhooks/987/{WEBHOOK_TOKEN}?wait=true",),
        ),
        (  # discord.gateway, an INTERACTION_CREATE payload
            "For Shard ID %s: WebSocket Event: %s",
            (None, {"t": "INTERACTION_CREATE", "d": {"id": "1", "token": INTERACTION_TOKEN}}),
        ),
        ("identify with %s", (BOT_TOKEN,)),
        (  # aiosqlite-style: a statement's parameters
            "executing %s",
            ((1, "a fox", STORED_TOKEN, 42),),
        ),
    ],
)
def test_tokens_never_reach_the_log(message: str, args: tuple) -> None:
    line = _logged(message, *args)
    for secret in (INTERACTION_TOKEN, WEBHOOK_TOKEN, BOT_TOKEN, STORED_TOKEN):
        assert secret not in line
    assert "[redacted]" in line


def test_tokens_in_a_traceback_are_redacted_too() -> None:
    url = f"https://discord.com/api/v10/webhooks/987/{WEBHOOK_TOKEN}/messages/@original"
    try:
        raise RuntimeError(f"400, message='Bad Request', url='{url}'")
    except RuntimeError:
        line = _logged("delivery failed", exc_info=sys.exc_info())
    assert "RuntimeError" in line and WEBHOOK_TOKEN not in line and "/webhooks/987/" in line


def test_ordinary_lines_are_left_alone() -> None:
    line = "GET https://discord.com/api/v10/channels/1/messages/2 has returned 200"
    assert _logged("%s", line) == line


# --- the data directory --------------------------------------------------------------------------


@pytest.fixture
def restore_umask() -> Iterator[None]:
    before = os.umask(0o022)
    os.umask(before)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("restore_umask")
def test_data_dir_is_private_and_so_is_everything_written_in_it(tmp_path: Path) -> None:
    os.umask(0o022)
    data = tmp_path / "deep" / "data"
    prepare_data_dir(data)
    assert _mode(data) == 0o700
    db = sqlite3.connect(data / "bot.sqlite3")  # SQLite's own files, -wal and -shm included
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    (data / "outputs").mkdir()
    (data / "outputs" / "job-1.png").write_bytes(b"\x89PNG")
    written = [p for p in data.rglob("*")]
    assert {p.name for p in written} >= {"bot.sqlite3", "bot.sqlite3-wal", "bot.sqlite3-shm"}
    for path in written:
        assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}"
    db.close()


@pytest.mark.usefixtures("restore_umask")
def test_an_existing_open_data_dir_is_made_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    prepare_data_dir(data)
    assert _mode(data) == 0o700


@pytest.mark.usefixtures("restore_umask")
def test_a_data_dir_that_cannot_exist_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StartupError, match=r"cannot create the data directory .*file/data"):
        prepare_data_dir(tmp_path / "file" / "data")
    with pytest.raises(StartupError, match="exists but is not a directory"):
        prepare_data_dir(tmp_path / "file")


# --- start-up errors ---------------------------------------------------------------------------


def _closed(code: int) -> discord.ConnectionClosed:
    socket = SimpleNamespace(close_code=code)
    return discord.ConnectionClosed(socket, shard_id=None, code=code)  # type: ignore[arg-type]


def test_start_up_errors_are_one_line_that_says_what_to_do(settings: Settings) -> None:
    key = ConnectionKey("discord.example", 443, True, True, None, None, None)
    cases = {
        "damaged": sqlite3.DatabaseError("file is not a database"),
        "Reset Token": _closed(4004),
        "code 4010": _closed(4010),
        "discord.example:443": aiohttp.ClientConnectorError(key, OSError(-2, "Name not known")),
        "connection refused": aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "x")),
        "not writable": StartupError("the data directory /x is not writable\n(read-only)"),
    }
    for expected, error in cases.items():
        message = explain_startup_error(error, settings)
        assert message is not None and expected in message, (error, message)
        assert "\n" not in message
    assert str(settings.database) in explain_startup_error(cases["damaged"], settings)  # type: ignore[operator]
    assert explain_startup_error(ValueError("a bug"), settings) is None
