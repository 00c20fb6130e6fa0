"""Per-user defaults for /imagine, set with /settings (`user_defaults`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from bot.store.database import Database

# The defaults a user may set, in the order /settings shows them.
DEFAULT_FIELDS = ("model", "aspect_ratio", "style", "steps", "sampler", "count")


@dataclass(frozen=True)
class UserDefaults:
    """A user's own defaults; None: no default (the model's, or the server's style)."""

    user_id: int
    model: str | None = None
    aspect_ratio: str | None = None
    style: str | None = None
    steps: int | None = None
    sampler: str | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "count"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"UserDefaults.{name} must be positive or None, got {value!r}")

    def as_options(self) -> dict[str, object]:
        """The defaults that are set, by RequestOptions field name."""
        return {
            f.name: value
            for f in fields(self)
            if f.name != "user_id" and (value := getattr(self, f.name)) is not None
        }


class Users:
    """The `user_defaults` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_defaults(self, user_id: int) -> UserDefaults:
        async with self._db.locked():
            rows = await self._db.rows(
                "SELECT model, aspect_ratio, style, steps, sampler, count FROM user_defaults"
                " WHERE user_id = ?",
                (user_id,),
            )
        if not rows:
            return UserDefaults(user_id)
        return UserDefaults(user_id, **{name: rows[0][name] for name in DEFAULT_FIELDS})

    async def set_defaults(self, defaults: UserDefaults) -> None:
        """Replace the user's defaults; all None removes the row."""
        async with self._db.locked():
            if not defaults.as_options():
                await self._db.execute(
                    "DELETE FROM user_defaults WHERE user_id = ?", (defaults.user_id,)
                )
                return
            await self._db.execute(
                "INSERT INTO user_defaults (user_id, model, aspect_ratio, style, steps, sampler,"
                " count, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE SET model = excluded.model,"
                " aspect_ratio = excluded.aspect_ratio, style = excluded.style,"
                " steps = excluded.steps, sampler = excluded.sampler, count = excluded.count,"
                " updated_at = excluded.updated_at",
                (
                    defaults.user_id,
                    *(getattr(defaults, name) for name in DEFAULT_FIELDS),
                    self._db.clock(),
                ),
            )
