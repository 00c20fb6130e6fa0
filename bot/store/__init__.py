"""SQLite persistence, one part per table group, all on one connection.

The only package with SQL. `bot.app.run_bot` opens the `Store` and closes it; nothing opens at
import time. The parts:

- `store.jobs` (`jobs.Jobs`): jobs and their images, the queue's `JobJournal`, history,
  delivery targets, re-roll lineage.
- `store.rates` (`rates.RateLedger`): the rate-limit ledger.
- `store.guilds` (`guilds.Guilds`): per-guild settings.
- `store.users` (`users.Users`): per-user defaults for /imagine.

`database.Database` holds the connection, its lock, the migrations (`bot/migrations/*.sql`)
and the transaction helper the parts share.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Self

from bot.store.database import (
    Clock,
    Database,
    MigrationError,
    SchemaTooNewError,
    StoreError,
)
from bot.store.guilds import Guilds, GuildSettings
from bot.store.jobs import (
    TRANSITIONS,
    CancelTooLate,
    DeliveryTarget,
    InvalidTransition,
    JobNotFound,
    Jobs,
)
from bot.store.rates import RateDecision, RateLedger
from bot.store.users import UserDefaults, Users

__all__ = [
    "TRANSITIONS",
    "CancelTooLate",
    "Clock",
    "Database",
    "DeliveryTarget",
    "GuildSettings",
    "Guilds",
    "InvalidTransition",
    "JobNotFound",
    "Jobs",
    "MigrationError",
    "RateDecision",
    "RateLedger",
    "SchemaTooNewError",
    "Store",
    "StoreError",
    "UserDefaults",
    "Users",
]


class Store:
    """The bot's database. Create with `await Store.open(path)`; close with `await close()`
    or use `async with await Store.open(path) as store:`."""

    def __init__(self, database: Database) -> None:
        # Use `open`: this only wraps a database that is already configured and migrated.
        self.database = database
        self.jobs = Jobs(database)
        self.rates = RateLedger(database)
        self.guilds = Guilds(database)
        self.users = Users(database)

    @classmethod
    async def open(cls, path: Path | str, *, clock: Clock = time.time) -> Store:
        """Open (creating if needed) and migrate the database at `path`."""
        return cls(await Database.open(path, clock=clock))

    @property
    def path(self) -> Path:
        return self.database.path

    @property
    def instance_id(self) -> str:
        """A random id of this database file (see migration 0002)."""
        return self.database.instance_id

    async def close(self) -> None:
        await self.database.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
