"""Settings: bot/default.toml < the operator's file < environment. Loaded once, frozen.

The defaults are package data, read with importlib.resources, so a wheel install has them too.
Environment overrides use `IMAGINE_BOT__SECTION__KEY=value` (the value is read as TOML when it
parses, else as a string). The bot token is a secret: it comes only from the environment
(`DISCORD_TOKEN`) or a secrets file (`discord.token_file`, or `DISCORD_TOKEN_FILE`), never from a
config file that might be committed, and it is never logged or shown in `repr`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from inference.checkpoints import locate_source
from inference.device import RuntimeOptions
from inference.requests import RequestLimits
from inference.types import ModelSpec

ENV_PREFIX = "IMAGINE_BOT__"
TOKEN_HELP = (
    "No Discord bot token. Create an application and a bot at "
    "https://discord.com/developers/applications (Bot > Reset Token), then start with "
    "DISCORD_TOKEN=<token> imagine-bot run, or put the token alone in a file and set "
    "DISCORD_TOKEN_FILE=<path> (or discord.token_file in your config)."
)


class SettingsError(ValueError):
    """A config problem; the message names the key and what is allowed."""


@dataclass(frozen=True)
class DiscordSettings:
    api_base: str
    gateway_url: str
    guild_ids: tuple[int, ...]  # sync commands to these guilds at once; empty: global
    moderator_role_ids: frozenset[int]
    token: str = field(repr=False, default="")  # secret: never printed


@dataclass(frozen=True)
class QueueConfig:
    max_queued: int
    max_queued_per_user: int
    max_batch_images: int
    batching: bool
    resume_after_restart: bool


@dataclass(frozen=True)
class RateConfig:
    images_per_window: int
    window_minutes: float
    guild_images_per_window: int  # 0: no guild-wide cap
    guild_window_minutes: float
    exempt_user_ids: frozenset[int]
    exempt_role_ids: frozenset[int]


@dataclass(frozen=True)
class ProgressConfig:
    edit_interval_s: float  # Discord allows about 5 edits per 5 s per channel
    previews: bool


@dataclass(frozen=True)
class DeliveryConfig:
    attempt_timeout_s: float  # one upload to Discord; a stalled one is abandoned and retried
    retry_delays_s: tuple[float, ...]  # pauses between whole delivery attempts
    shutdown_grace_s: float  # on SIGTERM, time for uploads in flight to finish


@dataclass(frozen=True)
class Settings:
    discord: DiscordSettings
    data_dir: Path
    database: Path
    runtime: RuntimeOptions
    models: tuple[ModelSpec, ...]
    default_model: str
    limits: RequestLimits
    queue: QueueConfig
    rate: RateConfig
    progress: ProgressConfig
    delivery: DeliveryConfig
    log_level: str

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "outputs"

    def model_specs(self) -> dict[str, ModelSpec]:
        return {spec.name: spec for spec in self.models}


# Package data, so that it is in the wheel too (config/ is outside every package).
DEFAULT_CONFIG = resources.files("bot") / "default.toml"


def _default_toml() -> dict[str, Any]:
    # Every key must exist here: it is both the defaults and the schema of known keys.
    return tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def _merge(base: dict[str, Any], override: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            raise SettingsError(f"{where}: unknown setting; known here: {known}")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise SettingsError(f"{where}: must be a table")
            merged[key] = _merge(base[key], value, f"{where}.")
        else:
            merged[key] = value
    return merged


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name.removeprefix(ENV_PREFIX).split("__")]
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        target = overrides
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return overrides


class _Reader:
    """Typed access to one table, naming the full key in every error."""

    def __init__(self, table: Mapping[str, Any], section: str) -> None:
        self.table = table
        self.section = section

    def _get(self, key: str, kinds: tuple[type, ...], what: str) -> Any:
        value = self.table[key]
        if isinstance(value, bool) and bool not in kinds:
            raise SettingsError(f"{self.section}.{key}: must be {what}, not {value!r}")
        if not isinstance(value, kinds):
            raise SettingsError(f"{self.section}.{key}: must be {what}, not {value!r}")
        return value

    def text(self, key: str) -> str:
        return self._get(key, (str,), "a string")

    def flag(self, key: str) -> bool:
        return self._get(key, (bool,), "true or false")

    def integer(self, key: str, minimum: int = 0) -> int:
        value = self._get(key, (int,), "a whole number")
        if value < minimum:
            raise SettingsError(f"{self.section}.{key}: must be at least {minimum}, not {value}")
        return value

    def number(self, key: str, minimum: float = 0.0) -> float:
        value = float(self._get(key, (int, float), "a number"))
        if value < minimum:
            raise SettingsError(f"{self.section}.{key}: must be at least {minimum}, not {value}")
        return value

    def numbers(self, key: str) -> tuple[float, ...]:
        values = self._get(key, (list,), "a list of numbers")
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in values
        ):
            raise SettingsError(f"{self.section}.{key}: must be a list of numbers >= 0")
        return tuple(float(v) for v in values)

    def ids(self, key: str) -> tuple[int, ...]:
        values = self._get(key, (list,), "a list of Discord ids")
        result = []
        for value in values:
            try:
                result.append(int(value))
            except (TypeError, ValueError):
                raise SettingsError(f"{self.section}.{key}: {value!r} is not an id") from None
        return tuple(result)

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in allowed:
            raise SettingsError(f"{self.section}.{key}: {value!r} is not one of {allowed}")
        return value


def _read_token(discord: _Reader, environ: Mapping[str, str], base: Path) -> str:
    token = environ.get("DISCORD_TOKEN", "").strip()
    token_file = environ.get("DISCORD_TOKEN_FILE") or discord.text("token_file")
    if not token and token_file:
        path = Path(token_file).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise SettingsError(
                f"discord.token_file: cannot read {path}: {error.strerror}"
            ) from None
    return token


def _models(raw: Any, base: Path) -> tuple[ModelSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise SettingsError("models: must list at least one [[models]] entry")
    specs = []
    allowed = {"name", "source", "config", "family", "variant", "prediction_type"}
    for index, entry in enumerate(raw):
        where = f"models[{index}]"
        if not isinstance(entry, Mapping):
            raise SettingsError(f"{where}: must be a table with name and source")
        unknown = set(entry) - allowed
        if unknown:
            raise SettingsError(
                f"{where}.{sorted(unknown)[0]}: unknown; allowed: {sorted(allowed)}"
            )
        for key in ("name", "source"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise SettingsError(f"{where}.{key}: required, a non-empty string")
        source = entry["source"]
        source = str(locate_source(source, base))  # the one rule: file, folder or hub id
        config = entry.get("config")
        specs.append(
            ModelSpec(
                name=entry["name"],
                source=source,
                config=None if not config else (base / Path(config).expanduser()),
                family=entry.get("family"),
                variant=entry.get("variant"),
                prediction_type=entry.get("prediction_type"),
            )
        )
    names = [s.name for s in specs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise SettingsError(f"models: duplicate name {sorted(duplicates)[0]!r}")
    return tuple(specs)


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    require_token: bool = False,
) -> Settings:
    """Read and validate everything once. Relative paths are relative to the config file."""
    environ = os.environ if environ is None else environ
    data = _default_toml()
    base = Path.cwd()
    config_file = config_file or (
        Path(environ["IMAGINE_BOT_CONFIG"]) if environ.get("IMAGINE_BOT_CONFIG") else None
    )
    if config_file is not None:
        try:
            user = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as error:
            raise SettingsError(f"config file {config_file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"config file {config_file}: {error}") from None
        base = config_file.resolve().parent
        models = user.pop("models", None)
        data = _merge(data, user)
        if models is not None:
            data["models"] = models  # a user's model list replaces the default one
    data = _merge(data, _env_overrides(environ))

    discord = _Reader(data["discord"], "discord")
    token = _read_token(discord, environ, base)
    if require_token and not token:
        raise SettingsError(TOKEN_HELP)
    storage = _Reader(data["storage"], "storage")
    data_dir = Path(storage.text("data_dir")).expanduser()
    data_dir = data_dir if data_dir.is_absolute() else base / data_dir
    database = Path(storage.text("database") or "imagine-bot.sqlite3")
    inference = _Reader(data["inference"], "inference")
    limits = _Reader(data["limits"], "limits")
    queue = _Reader(data["queue"], "queue")
    rate = _Reader(data["rate_limits"], "rate_limits")
    progress = _Reader(data["progress"], "progress")
    delivery = _Reader(data["delivery"], "delivery")
    models = _models(data["models"], base)
    default_model = inference.text("default_model") or models[0].name
    if default_model not in {m.name for m in models}:
        raise SettingsError(
            f"inference.default_model: {default_model!r} is not among the configured models"
        )
    return Settings(
        discord=DiscordSettings(
            api_base=discord.text("api_base").rstrip("/"),
            gateway_url=discord.text("gateway_url"),
            guild_ids=discord.ids("guild_ids"),
            moderator_role_ids=frozenset(discord.ids("moderator_role_ids")),
            token=token,
        ),
        data_dir=data_dir,
        database=database if database.is_absolute() else data_dir / database,
        runtime=RuntimeOptions(
            device=inference.text("device"),
            dtype=inference.choice("dtype", ("auto", "float16", "bfloat16", "float32")),
            vae_tiling=inference.flag("vae_tiling"),
            vae_slicing=inference.flag("vae_slicing"),
            cpu_offload=inference.flag("cpu_offload"),
            compile=inference.flag("compile"),
            allow_pickle=inference.flag("allow_pickle"),
            max_resident_models=inference.integer("max_resident_models", 1),
            preview_interval_s=inference.number("preview_interval_s"),
        ),
        models=models,
        default_model=default_model,
        limits=RequestLimits(
            max_pixels=limits.integer("max_pixels", 64 * 64),
            max_side=limits.integer("max_side", 64),
            max_steps=limits.integer("max_steps", 1),
            max_guidance=limits.number("max_guidance"),
            max_count=limits.integer("max_count", 1),
            max_prompt_chars=limits.integer("max_prompt_chars", 1),
        ),
        queue=QueueConfig(
            max_queued=queue.integer("max_queued", 1),
            max_queued_per_user=queue.integer("max_queued_per_user", 1),
            max_batch_images=queue.integer("max_batch_images", 1),
            batching=queue.flag("batching"),
            resume_after_restart=queue.flag("resume_after_restart"),
        ),
        rate=RateConfig(
            images_per_window=rate.integer("images_per_window", 1),
            window_minutes=rate.number("window_minutes", 0.01),
            guild_images_per_window=rate.integer("guild_images_per_window"),
            guild_window_minutes=rate.number("guild_window_minutes", 0.01),
            exempt_user_ids=frozenset(rate.ids("exempt_user_ids")),
            exempt_role_ids=frozenset(rate.ids("exempt_role_ids")),
        ),
        progress=ProgressConfig(
            edit_interval_s=progress.number("edit_interval_s", 0.0),
            previews=progress.flag("previews"),
        ),
        delivery=DeliveryConfig(
            attempt_timeout_s=delivery.number("attempt_timeout_s", 0.1),
            retry_delays_s=delivery.numbers("retry_delays_s"),
            shutdown_grace_s=delivery.number("shutdown_grace_s"),
        ),
        log_level=_Reader(data["logging"], "logging").choice(
            "level", ("DEBUG", "INFO", "WARNING", "ERROR")
        ),
    )
