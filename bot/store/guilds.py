"""Per-guild settings: allowed channels, blocked words, limit overrides (`guild_settings`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from bot.store.database import Database

# Stored together as the JSON object in guild_settings.limit_overrides.
_LIMIT_FIELDS = ("images_per_window", "window_minutes", "max_queued")


@dataclass(frozen=True)
class GuildSettings:
    """Per-guild configuration; None in a limit field means "use the bot-wide policy"."""

    guild_id: int
    allowed_channel_ids: frozenset[int] = frozenset()  # empty: every channel
    blocked_words: tuple[str, ...] = ()
    images_per_window: int | None = None
    window_minutes: float | None = None
    max_queued: int | None = None
    default_style: str | None = None  # for members who pick no style

    def __post_init__(self) -> None:
        # Accept any iterable from callers, store the frozen shape.
        object.__setattr__(self, "allowed_channel_ids", frozenset(self.allowed_channel_ids))
        object.__setattr__(self, "blocked_words", tuple(self.blocked_words))
        for name in _LIMIT_FIELDS:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"GuildSettings.{name} must be positive or None, got {value!r}")


class Guilds:
    """The `guild_settings` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's settings, or the defaults if it has none stored."""
        async with self._db.locked():
            rows = await self._db.rows(
                "SELECT allowed_channel_ids, blocked_words, limit_overrides, default_style"
                " FROM guild_settings WHERE guild_id = ?",
                (guild_id,),
            )
        if not rows:
            return GuildSettings(guild_id)
        r = rows[0]
        limits = json.loads(r["limit_overrides"])
        return GuildSettings(
            guild_id=guild_id,
            allowed_channel_ids=frozenset(int(c) for c in json.loads(r["allowed_channel_ids"])),
            blocked_words=tuple(str(w) for w in json.loads(r["blocked_words"])),
            images_per_window=limits.get("images_per_window"),
            window_minutes=limits.get("window_minutes"),
            max_queued=limits.get("max_queued"),
            default_style=r["default_style"],
        )

    async def set_guild_settings(self, settings: GuildSettings) -> None:
        """Replace the guild's settings with `settings`."""
        limits = {
            name: value for name in _LIMIT_FIELDS if (value := getattr(settings, name)) is not None
        }
        async with self._db.locked():
            await self._db.execute(
                "INSERT INTO guild_settings (guild_id, allowed_channel_ids, blocked_words,"
                " limit_overrides, default_style, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (guild_id) DO UPDATE SET"
                " allowed_channel_ids = excluded.allowed_channel_ids,"
                " blocked_words = excluded.blocked_words,"
                " limit_overrides = excluded.limit_overrides,"
                " default_style = excluded.default_style, updated_at = excluded.updated_at",
                (
                    settings.guild_id,
                    json.dumps(sorted(settings.allowed_channel_ids)),
                    json.dumps(list(settings.blocked_words)),
                    json.dumps(limits),
                    settings.default_style,
                    self._db.clock(),
                ),
            )

    async def longest_window_override_s(self) -> float | None:
        """The longest per-guild rate window, so pruning keeps every event still in use."""
        async with self._db.locked():
            minutes = await self._db.scalar(
                "SELECT MAX(json_extract(limit_overrides, '$.window_minutes')) FROM guild_settings"
            )
        return None if minutes is None else float(minutes) * 60.0
