"""The one SQLite connection every part of the store shares, its migrations, its transactions.

Concurrency: one connection is shared by every coroutine, and a transaction on a connection
takes in any statement sent while it is open. So each public method of a part runs inside
`locked()` or `transaction()` for its whole duration; `transaction()` also runs
`BEGIN IMMEDIATE`, which additionally serialises writers across processes sharing the file.

The only text ever spliced into a statement is a constant of this package or the integer
migration number (PRAGMA takes no parameters); every value goes through `?` parameters.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)

Clock = Callable[[], float]

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_BUSY_TIMEOUT_MS = 5_000


class StoreError(Exception):
    """Base class of the store's own errors."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer imagine-bot than this one."""


class MigrationError(StoreError):
    """The packaged migrations are malformed (a gap or a duplicate number), or one broke a
    foreign key."""


class Database:
    """One configured, migrated aiosqlite connection and the lock that serialises its users.
    Create with `await Database.open(path)`."""

    def __init__(
        self, conn: aiosqlite.Connection, path: Path, clock: Clock, instance_id: str
    ) -> None:
        # Use `open`: this only wraps a connection that is already configured and migrated.
        self._conn = conn
        self._lock = asyncio.Lock()
        self._closed = False
        self.path = path
        self.clock = clock
        self.instance_id = instance_id  # random, per database file (see migration 0002)

    @classmethod
    async def open(cls, path: Path | str, *, clock: Clock = time.time) -> Database:
        """Open (creating if needed) and migrate the database at `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; we BEGIN/COMMIT explicitly.
        conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            mode = await _scalar(conn, "PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                log.warning(
                    "SQLite refused WAL mode for %s (got %r); writers will block readers",
                    path,
                    mode,
                )
            await conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS:d}")
            # In WAL mode NORMAL is crash-safe for the database; a power cut may lose the last
            # commits, which the queue tolerates (jobs are re-run, deliveries re-sent).
            await conn.execute("PRAGMA synchronous = NORMAL")
            await _migrate(conn, path)
            # Only after migrating: a table rebuild must not cascade deletes (see _migrate).
            await conn.execute("PRAGMA foreign_keys = ON")
            instance_id = str(await _scalar(conn, "SELECT id FROM instance"))
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path, clock, instance_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            # SQLite recommends this before closing a long-lived connection: it refreshes the
            # planner's statistics where they matter. Failure is harmless.
            try:
                await self._conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                log.debug("PRAGMA optimize failed on close", exc_info=True)
            await self._conn.close()

    # ------------------------------------------------------------------ for the parts

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the connection for a read or a single-statement write."""
        async with self._lock:
            yield

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """Hold the connection in BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception.

        IMMEDIATE takes the write lock up front, so a read-then-write inside cannot be
        invalidated by another connection (and cannot deadlock upgrading a read lock)."""
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                # Inside the try: a failed COMMIT leaves the transaction open, and every later
                # statement on this connection would silently join it.
                await self._conn.execute("COMMIT")
            except BaseException:
                await _rollback(self._conn)
                raise

    # The statements below assume the caller is inside `locked()` or `transaction()`.

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row; None if there is no row."""
        return await _scalar(self._conn, sql, params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        cursor = await self._conn.execute(sql, params)
        count = cursor.rowcount
        await cursor.close()
        return count

    async def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, params)


# --------------------------------------------------------------------------- migrations


def _migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every packaged migration, in order."""
    # bot/migrations, not bot/store/migrations: the folder is package data of `bot`.
    folder = resources.files("bot").joinpath("migrations")
    found: dict[int, tuple[str, str]] = {}
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version}: {entry.name}")
        found[version] = (entry.name, entry.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return [(v, *found[v]) for v in versions]


def _split_sql(script: str) -> list[str]:
    """Split a script into statements. `executescript` would COMMIT our open transaction
    first, so statements run one by one; `complete_statement` understands strings, comments
    and trigger bodies, which a split on ";" would not."""
    statements: list[str] = []
    *pieces, rest = script.split(";")  # `rest`: whatever follows the last ";"
    buffer = ""
    for piece in pieces:
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    rest = buffer + rest
    if any(line.strip() and not line.strip().startswith("--") for line in rest.splitlines()):
        raise MigrationError(f"incomplete statement at the end of a migration: {rest.strip()!r}")
    return statements


async def _migrate(conn: aiosqlite.Connection, path: Path) -> None:
    """Apply the migrations the file lacks, each in its own transaction.

    Runs with foreign keys off, as SQLite's table-rebuild procedure requires (dropping a
    parent table would otherwise cascade into its children; the pragma is a no-op inside a
    transaction, hence here), and checks every foreign key before each COMMIT instead."""
    migrations = _migrations()
    latest = migrations[-1][0] if migrations else 0
    current = int(await _scalar(conn, "PRAGMA user_version"))
    if current > latest:
        raise SchemaTooNewError(
            f"{path} has schema version {current}, but this imagine-bot only knows up to"
            f" {latest}: upgrade imagine-bot, or point it at another database file"
        )
    await conn.execute("PRAGMA foreign_keys = OFF")
    for version, name, script in migrations:
        if version <= current:
            continue
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the write lock: another process may have migrated meanwhile.
            if int(await _scalar(conn, "PRAGMA user_version")) >= version:
                await conn.execute("ROLLBACK")
                continue
            for statement in _split_sql(script):
                await conn.execute(statement)
            broken = list(await conn.execute_fetchall("PRAGMA foreign_key_check"))
            if broken:
                raise MigrationError(
                    f"migration {name} broke {len(broken)} foreign key(s), first in table"
                    f" {broken[0][0]}"
                )
            # PRAGMA takes no parameters; `version` is an int parsed from our own file name.
            await conn.execute(f"PRAGMA user_version = {version:d}")
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        log.info("applied migration %s to %s", name, path)


# --------------------------------------------------------------------------- helpers


async def _scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    rows = list(await conn.execute_fetchall(sql, params))
    return rows[0][0] if rows else None


async def _rollback(conn: aiosqlite.Connection) -> None:
    # Some errors (disk full, I/O) make SQLite roll back by itself; a second ROLLBACK would
    # then raise and hide the original error.
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        log.debug("ROLLBACK after a failed transaction failed", exc_info=True)
