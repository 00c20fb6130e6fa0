"""Start-up checks, and what the operator is told when the bot cannot start.

A known start-up failure becomes one line on stderr that says what is wrong and what to do
(exit code 2), never a traceback. The lines name paths and hosts, never a token.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

    from bot.settings import Settings

logger = logging.getLogger(__name__)

TOKEN_REJECTED = (
    "Discord rejected the bot token. Reset it in the developer portal "
    "(Bot > Reset Token) and set DISCORD_TOKEN to the new one."
)
_SQLITE_DAMAGED = ("SQLITE_NOTADB", "SQLITE_CORRUPT")


class StartupError(Exception):
    """Written for the operator: what is wrong and what to do about it."""


def prepare_data_dir(data_dir: Path) -> None:
    """Make `data_dir` private (0700) and check the bot can write there.

    Raises StartupError naming the directory and what to do.
    """
    # The data directory holds prompts, user ids and live interaction tokens (the SQLite file
    # and its -wal/-shm) and every generated PNG: nobody else on the machine should read
    # them. SQLite, Pillow and the libraries below create their files with the process
    # umask, so setting it once, before anything is created, covers every file the bot
    # writes: 0600 files and 0700 directories.
    os.umask(0o077)
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise StartupError(
            f"the data directory {data_dir} exists but is not a directory: "
            "set storage.data_dir to a directory."
        ) from None
    except OSError as error:
        raise StartupError(
            f"cannot create the data directory {data_dir} ({error.strerror}): create it, "
            "writable by the user the bot runs as, or set storage.data_dir to another path."
        ) from None
    try:
        info = data_dir.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            data_dir.chmod(0o700)
            logger.info("made the data directory %s private (0700)", data_dir)
    except OSError as error:  # e.g. a read-only file system: the check below says so
        logger.debug("could not chmod %s: %s", data_dir, error)
    try:
        # A real file, created and removed, as SQLite and the image writer will need.
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-test-"):
            pass
    except OSError as error:
        raise StartupError(
            f"the data directory {data_dir} is not writable ({error.strerror}): make it "
            "writable by the user the bot runs as, or set storage.data_dir to another path."
        ) from None


def explain_startup_error(error: BaseException, settings: Settings) -> str | None:
    """One line for a failure the operator can fix; None for anything else (a bug)."""
    import sqlite3

    import aiohttp
    import discord

    from bot.store import SchemaTooNewError
    from inference.errors import InferenceError

    if isinstance(error, (StartupError, SchemaTooNewError, InferenceError)):
        return _one_line(str(error))
    if isinstance(error, sqlite3.DatabaseError):
        return _one_line(_database_problem(error, settings.database))
    if isinstance(error, discord.LoginFailure):
        return TOKEN_REJECTED
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return "Discord refused the gateway intents."
    if isinstance(error, discord.ConnectionClosed):
        if error.code == 4004:  # the gateway's "authentication failed"
            return TOKEN_REJECTED
        reason = f": {error.reason}" if error.reason else ""
        return _one_line(
            f"Discord closed the gateway connection (code {error.code}{reason}) and the bot "
            "cannot reconnect; see Discord's gateway close codes for what it means."
        )
    if isinstance(error, aiohttp.ClientConnectorError):
        os_error = error.os_error
        refused = isinstance(os_error, ConnectionRefusedError)
        why = "connection refused" if refused else (os_error.strerror or str(os_error))
        return _one_line(
            f"cannot reach Discord at {error.host}:{error.port} ({why}). Check this machine's "
            "network connection, DNS and any firewall or proxy, then start the bot again."
        )
    return None


def _database_problem(error: sqlite3.DatabaseError, path: Path) -> str:
    name = getattr(error, "sqlite_errorname", "")
    if name in _SQLITE_DAMAGED or "not a database" in str(error) or "malformed" in str(error):
        return (
            f"the database {path} is damaged or not an SQLite database ({error}). Stop the bot, "
            "move the file aside (with its -wal and -shm files, if any) and start again: a new, "
            "empty database is created (job history and queued jobs start over)."
        )
    return (
        f"cannot use the database {path} ({error}). Check that its directory is writable by "
        "the user the bot runs as and that no other program holds the file."
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
