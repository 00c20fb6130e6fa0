"""Settings: bot/default.toml < the operator's file < environment. Loaded once, frozen.

The defaults are package data, read with importlib.resources, so a wheel install has them too.
bot/default.toml is the defaults' only home (and their documentation); the pydantic models
below are the schema (types, bounds, the known keys) and hold no defaults of their own, so a key
missing from either side fails every load (tests/unit/test_settings.py also compares them).

Environment overrides use `IMAGINE_BOT__SECTION__KEY=value` (the value is read as TOML when it
parses, else as a string). The bot token is a secret: it comes only from the environment
(`DISCORD_TOKEN`) or a secrets file (`discord.token_file`, or `DISCORD_TOKEN_FILE`), never from a
config file that might be committed, and it is a SecretStr: never logged or shown in `repr`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from inference.checkpoints import locate_source
from inference.device import DTypeName, RuntimeOptions
from inference.requests import NO_STYLE, RequestLimits
from inference.types import EmbeddingSpec, LoraSpec, ModelSpec, StyleSpec, UpscalerSpec

ENV_PREFIX = "IMAGINE_BOT__"
TOKEN_HELP = (
    "No Discord bot token. Create an application and a bot at "
    "https://discord.com/developers/applications (Bot > Reset Token), then start with "
    "DISCORD_TOKEN=<token> imagine-bot run, or put the token alone in a file and set "
    "DISCORD_TOKEN_FILE=<path> (or discord.token_file in your config)."
)
# Package data, so that it is in the wheel too (config/ is outside every package).
DEFAULT_CONFIG = resources.files("bot") / "default.toml"
# Keys the schema has that no file or IMAGINE_BOT__ variable may set.
_SECRET_KEYS = (("discord", "token"),)


class SettingsError(ValueError):
    """A config problem; the message names the key and what is allowed."""


# --- what one load reads --------------------------------------------------------------------


@dataclass(frozen=True)
class _Load:
    config_file: Path | None
    environ: Mapping[str, str]
    base: Path  # relative paths are relative to this: the config file's folder, else cwd

    @classmethod
    def of(cls, config_file: Path | None, environ: Mapping[str, str]) -> _Load:
        if config_file is None and environ.get("IMAGINE_BOT_CONFIG"):
            config_file = Path(environ["IMAGINE_BOT_CONFIG"])
        base = config_file.resolve().parent if config_file is not None else Path.cwd()
        return cls(config_file, environ, base)


# pydantic-settings builds the sources in a classmethod and BaseSettings.__init__ takes no
# validation context, so load_settings hands the sources and validators what it reads here.
_LOADING: ContextVar[_Load | None] = ContextVar("imagine_bot_settings_load", default=None)


def _current_load() -> _Load:
    return _LOADING.get() or _Load.of(None, os.environ)


def _from_base(path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else _current_load().base / path


# --- the schema: each key once, with its type and bounds ---------------------------------------


def _discord_id(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdecimal():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a Discord id (a whole number)")
    return value


DiscordId = Annotated[int, BeforeValidator(_discord_id)]
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DiscordSettings(_Section):
    token_file: StrictStr
    api_base: StrictStr
    gateway_url: StrictStr
    guild_ids: tuple[DiscordId, ...]  # sync commands to these guilds at once; empty: global
    moderator_role_ids: frozenset[DiscordId]
    # "off": one gateway connection; "auto" (Discord's recommended count) or a number: sharded
    # with discord.py's AutoShardedClient, which Discord requires past 2,500 servers.
    shards: Literal["off", "auto"] | Annotated[StrictInt, Field(ge=1)]
    # Never from a file or IMAGINE_BOT__: only DISCORD_TOKEN or the token file (_TokenSource).
    token: SecretStr = SecretStr("")

    @field_validator("api_base")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("shards", mode="before")
    @classmethod
    def _shard_setting(cls, value: Any) -> Any:
        """One message for every wrong value, not one per member of the union."""
        if isinstance(value, str) and value in ("off", "auto"):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError(f"must be 'off', 'auto' or a whole number of shards ≥ 1, not {value!r}")


class StorageConfig(_Section):
    data_dir: Annotated[Path, AfterValidator(_from_base)]
    database: StrictStr = Field(min_length=1)  # relative to data_dir


class InferenceConfig(_Section):
    """[inference]: `default_model` plus the fields of inference.device.RuntimeOptions."""

    default_model: StrictStr  # empty: the first [[models]] entry
    device: StrictStr
    dtype: DTypeName
    vae_tiling: StrictBool
    vae_slicing: StrictBool
    cpu_offload: StrictBool
    compile: StrictBool
    allow_pickle: StrictBool
    max_resident_models: StrictInt = Field(ge=1)
    preview_interval_s: StrictFloat = Field(ge=0)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        # Whether the device exists on this machine is inference's question, at start-up.
        if not _DEVICE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a device; use auto | cpu | cuda | cuda:N (N = 0, 1, …) | mps"
            )
        return value


class LimitsConfig(_Section):
    """[limits]: the fields of inference.requests.RequestLimits that operators set."""

    max_pixels: StrictInt = Field(ge=64 * 64)
    max_side: StrictInt = Field(ge=64)
    max_steps: StrictInt = Field(ge=1)
    max_guidance: StrictFloat = Field(ge=0)
    max_count: StrictInt = Field(ge=1)
    max_prompt_chars: StrictInt = Field(ge=1)


class QueueConfig(_Section):
    max_queued: StrictInt = Field(ge=1)
    max_queued_per_user: StrictInt = Field(ge=1)  # default; a guild may override (bot/limits)
    max_batch_images: StrictInt = Field(ge=1)
    batching: StrictBool
    resume_after_restart: StrictBool


class WorkersConfig(_Section):
    """[workers]: where the queue runs its batches (inference/workers.py, ray_workers.py)."""

    backend: Literal["local", "ray"]
    count: StrictInt = Field(ge=1, le=256)
    # Empty: the bot starts a private Ray instance; "auto" or "HEAD_IP:6379": join the
    # cluster this machine is a node of (see README, "Several GPUs and machines").
    ray_address: StrictStr
    gpus_per_worker: Literal["auto"] | float

    @field_validator("ray_address")
    @classmethod
    def _not_ray_client(cls, value: str) -> str:
        if value.startswith("ray://"):
            raise ValueError(
                "Ray Client addresses (ray://) are not supported: make this machine a node of "
                "the cluster (`ray start --address=HEAD_IP:6379 --num-gpus=0`) and use 'auto'"
            )
        return value

    @field_validator("gpus_per_worker", mode="before")
    @classmethod
    def _gpu_share(cls, value: Any) -> Any:
        """One message for every wrong value, not one per member of the union."""
        if value == "auto" and isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        raise ValueError(f"must be 'auto' or a number of GPUs ≥ 0 (0.5: two on one), not {value!r}")


class RateConfig(_Section):
    images_per_window: StrictInt = Field(ge=1)
    window_minutes: StrictFloat = Field(ge=0.01)
    guild_images_per_window: StrictInt = Field(ge=0)  # 0: no guild-wide cap
    guild_window_minutes: StrictFloat = Field(ge=0.01)
    exempt_user_ids: frozenset[DiscordId]
    exempt_role_ids: frozenset[DiscordId]


class ProgressConfig(_Section):
    edit_interval_s: StrictFloat = Field(ge=0)  # Discord allows ~5 edits per 5 s per channel
    previews: StrictBool


class DeliveryConfig(_Section):
    attempt_timeout_s: StrictFloat = Field(ge=0.1)  # one upload; a stalled one is retried
    retry_delays_s: tuple[Annotated[StrictFloat, Field(ge=0)], ...]  # pauses between tries
    shutdown_grace_s: StrictFloat = Field(ge=0)  # on SIGTERM, time for uploads in flight


class ImagesConfig(_Section):
    """[images]: working from a picture (the buttons under a result, /imagine's image)."""

    image_strength: StrictFloat = Field(gt=0, le=1)  # /imagine with an image, by default
    vary_subtle_strength: StrictFloat = Field(gt=0, le=1)
    vary_strong_strength: StrictFloat = Field(gt=0, le=1)
    upscale_factor: StrictFloat = Field(gt=1, le=4)
    upscale_strength: StrictFloat = Field(gt=0, le=1)
    upscaler: StrictStr  # an [[upscalers]] name; empty: Lanczos
    zoom_out_factor: StrictFloat = Field(gt=1, le=4)
    max_attachment_bytes: StrictInt = Field(ge=1024)


def _named_source(value: Any) -> Any:
    """A [[models]], [[upscalers]], [[loras]] or [[embeddings]] entry names something."""
    if isinstance(value, Mapping):
        for key in ("name", "source"):
            if isinstance(value.get(key), str) and not value[key].strip():
                raise ValueError(f"{key} must not be empty")
    return value


def _local_file(spec: Any) -> Any:
    """The entry with its `source` relative to the config file's folder (a local file)."""
    return dataclasses.replace(spec, source=str(_from_base(Path(spec.source))))


# Entries that are inference.types dataclasses naming a local file; their fields are the keys.
UpscalerEntry = Annotated[UpscalerSpec, BeforeValidator(_named_source), AfterValidator(_local_file)]
LoraEntry = Annotated[LoraSpec, BeforeValidator(_named_source), AfterValidator(_local_file)]
EmbeddingEntry = Annotated[
    EmbeddingSpec, BeforeValidator(_named_source), AfterValidator(_local_file)
]


def _style_entry(value: Any) -> Any:
    name = value.get("name") if isinstance(value, Mapping) else None
    if isinstance(name, str) and not name.strip():
        raise ValueError("name must not be empty")
    if isinstance(name, str) and name.lower() == NO_STYLE:
        raise ValueError(f"name {name!r} is reserved: it means no style")
    return value


# A [[styles]] entry is an inference.types.StyleSpec: name, prompt template, negative_prompt.
StyleEntry = Annotated[StyleSpec, BeforeValidator(_style_entry)]


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def _model_entry(value: Any) -> Any:
    value = _named_source(value)
    if isinstance(value, Mapping):
        if value.get("config") == "":
            value = {k: v for k, v in value.items() if k != "config"}
        clip_skip = value.get("clip_skip")
        if clip_skip is not None and (
            isinstance(clip_skip, bool)
            or not isinstance(clip_skip, int)
            or not 1 <= clip_skip <= 12
        ):
            raise ValueError(f"clip_skip must be a whole number from 1 to 12, not {clip_skip!r}")
    return value


def _locate(spec: ModelSpec) -> ModelSpec:
    base = _current_load().base
    return dataclasses.replace(
        spec,
        source=str(locate_source(spec.source, base)),  # the one rule: file, folder or hub id
        config=None if spec.config is None else base / spec.config.expanduser(),
    )


# A [[models]] entry is an inference.types.ModelSpec: its fields are the allowed keys.
ModelEntry = Annotated[ModelSpec, BeforeValidator(_model_entry), AfterValidator(_locate)]


class Settings(BaseSettings):
    """Everything the bot reads from its configuration, validated once."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=True)

    discord: DiscordSettings
    storage: StorageConfig
    inference: InferenceConfig
    models: tuple[ModelEntry, ...]
    request_limits: LimitsConfig = Field(alias="limits")  # `limits` is the RequestLimits
    queue: QueueConfig
    workers: WorkersConfig
    rate: RateConfig = Field(alias="rate_limits")
    progress: ProgressConfig
    delivery: DeliveryConfig
    images: ImagesConfig
    upscalers: tuple[UpscalerEntry, ...]
    styles: tuple[StyleEntry, ...]
    loras: tuple[LoraEntry, ...]
    embeddings: tuple[EmbeddingEntry, ...]
    logging: LoggingConfig

    @field_validator("models")
    @classmethod
    def _some_distinct_models(cls, models: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
        if not models:
            raise ValueError("must list at least one [[models]] entry")
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate name {duplicates[0]!r}")
        return models

    @model_validator(mode="after")
    def _default_model_is_configured(self) -> Settings:
        names = [m.name for m in self.models]
        if self.default_model not in names:
            raise ValueError(
                f"inference.default_model: {self.default_model!r} is not among the configured "
                f"models ({', '.join(names)})"
            )
        return self

    @model_validator(mode="after")
    def _inpainting_models_are_configured(self) -> Settings:
        names = [m.name for m in self.models]
        for spec in self.models:
            if spec.inpainting is None:
                continue
            key = f"models.{spec.name}.inpainting"
            if spec.inpainting == spec.name:
                raise ValueError(
                    f"{key}: names the model itself; name another [[models]] entry, the "
                    "inpainting checkpoint that zooms out this model's pictures"
                )
            if spec.inpainting not in names:
                raise ValueError(
                    f"{key}: {spec.inpainting!r} is not among the configured models "
                    f"({', '.join(names)}); add the inpainting checkpoint as its own [[models]] "
                    "entry and name it here"
                )
        return self

    @model_validator(mode="after")
    def _upscalers_are_distinct_and_known(self) -> Settings:
        for section, entries in (
            ("upscalers", self.upscalers),
            ("styles", self.styles),
            ("loras", self.loras),
            ("embeddings", self.embeddings),
        ):
            names = [entry.name for entry in entries]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{section}: duplicate name {duplicates[0]!r}")
        names = [u.name for u in self.upscalers]
        if self.images.upscaler and self.images.upscaler not in names:
            known = ", ".join(names) or "none configured"
            raise ValueError(
                f"images.upscaler: {self.images.upscaler!r} is not an [[upscalers]] name "
                f"({known}); empty means Lanczos"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest priority first; pydantic-settings merges tables deeply and replaces lists
        (so an operator's [[models]] replaces the default list)."""
        load = _current_load()
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            _TableSource(settings_cls, _env_table(load.environ), "the environment"),
        ]
        if load.config_file is not None:
            where = f"config file {load.config_file}"
            sources.append(_TableSource(settings_cls, _read_toml(load.config_file, where), where))
        sources.append(_TableSource(settings_cls, _read_toml(DEFAULT_CONFIG, "bot/default.toml")))
        sources.append(_TokenSource(settings_cls, load))
        return tuple(sources)

    @property
    def data_dir(self) -> Path:
        return self.storage.data_dir

    @property
    def database(self) -> Path:
        path = Path(self.storage.database).expanduser()
        return path if path.is_absolute() else self.data_dir / path

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def default_model(self) -> str:
        return self.inference.default_model or self.models[0].name

    @property
    def runtime(self) -> RuntimeOptions:
        return RuntimeOptions(**self.inference.model_dump(exclude={"default_model"}))

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(**self.request_limits.model_dump())

    @property
    def log_level(self) -> str:
        return self.logging.level

    def model_specs(self) -> dict[str, ModelSpec]:
        return {spec.name: spec for spec in self.models}

    def upscaler_specs(self) -> dict[str, UpscalerSpec]:
        return {spec.name: spec for spec in self.upscalers}

    def style_specs(self) -> dict[str, StyleSpec]:
        return {spec.name: spec for spec in self.styles}

    def lora_specs(self) -> dict[str, LoraSpec]:
        return {spec.name: spec for spec in self.loras}

    def embedding_specs(self) -> dict[str, EmbeddingSpec]:
        return {spec.name: spec for spec in self.embeddings}

    @property
    def inputs_dir(self) -> Path:
        """Where pictures users attach are kept (normalised PNGs), for their queued jobs."""
        return self.data_dir / "inputs"


# --- where values come from -----------------------------------------------------------------


def _read_toml(source: Path | Traversable, what: str) -> dict[str, Any]:
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise SettingsError(f"{what}: {error.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{what}: {error}") from None


def _env_table(environ: Mapping[str, str]) -> dict[str, Any]:
    """IMAGINE_BOT__QUEUE__MAX_QUEUED=9 -> {"queue": {"max_queued": 9}}."""
    table: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name.removeprefix(ENV_PREFIX).split("__")]
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        target = table
        for key in keys[:-1]:
            inner = target.setdefault(key, {})
            if not isinstance(inner, dict):  # IMAGINE_BOT__QUEUE=1 and IMAGINE_BOT__QUEUE__X=2
                raise SettingsError(f"{ENV_PREFIX}{key.upper()}: {key} is a table, not a value")
            target = inner
        target[keys[-1]] = value
    return table


class _TableSource(InitSettingsSource):
    """One layer of settings as a table (a TOML file, the environment)."""

    def __init__(
        self, settings_cls: type[BaseSettings], table: dict[str, Any], where: str = ""
    ) -> None:
        for section, key in _SECRET_KEYS:
            if isinstance(table.get(section), Mapping) and key in table[section]:
                raise SettingsError(
                    f"{section}.{key}: unknown setting in {where}: the token is read only from "
                    "DISCORD_TOKEN or a file that holds it (DISCORD_TOKEN_FILE or "
                    "discord.token_file), never from a config file that might be committed"
                )
        super().__init__(settings_cls, table)


class _TokenSource(PydanticBaseSettingsSource):
    """discord.token: DISCORD_TOKEN, else the file DISCORD_TOKEN_FILE or discord.token_file
    names (relative to the config file). Last, so it sees every other layer's token_file."""

    def __init__(self, settings_cls: type[BaseSettings], load: _Load) -> None:
        super().__init__(settings_cls)
        self.load = load

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        environ = self.load.environ
        token = environ.get("DISCORD_TOKEN", "").strip()
        if not token:
            discord = self.current_state.get("discord")
            configured = discord.get("token_file") if isinstance(discord, Mapping) else None
            key, token_file = (
                ("DISCORD_TOKEN_FILE", environ["DISCORD_TOKEN_FILE"])
                if environ.get("DISCORD_TOKEN_FILE")
                else ("discord.token_file", configured)
            )
            if isinstance(token_file, str) and token_file:  # a non-string: validation says so
                path = Path(token_file).expanduser()
                path = path if path.is_absolute() else self.load.base / path
                try:
                    token = path.read_text(encoding="utf-8").strip()
                except OSError as error:
                    raise SettingsError(f"{key}: cannot read {path}: {error.strerror}") from None
        return {"discord": {"token": SecretStr(token)}} if token else {}


# --- errors in the operator's words ---------------------------------------------------------


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _inner_type(annotation: Any) -> Any:
    """tuple[X, ...], frozenset[X], X | None, Annotated[X, ...] -> X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (tuple, frozenset, list, typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a not in (type(None), Ellipsis)]
            annotation = args[0]
        else:
            return annotation


def _keys_of(kind: Any) -> dict[str, Any]:
    """The keys a table of this schema type takes, each with its value's type."""
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {
            field.alias or name: _inner_type(field.annotation)
            for name, field in kind.model_fields.items()
        }
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return {f.name: _inner_type(hints[f.name]) for f in dataclasses.fields(kind)}
    return {}


def known_keys(path: tuple[int | str, ...] = ()) -> list[str]:
    """The keys the table at `path` (e.g. ("queue",)) takes in a config file."""
    kind: Any = Settings
    for part in path:
        if isinstance(part, str):
            kind = _keys_of(kind).get(part)
    hidden = {key for *section, key in _SECRET_KEYS if tuple(section) == tuple(path)}
    return sorted(set(_keys_of(kind)) - hidden)


_KINDS = {
    "a whole number": ("int_type", "int_parsing", "int_from_float"),
    "a number": ("float_type", "float_parsing", "finite_number"),
    "true or false": ("bool_type", "bool_parsing"),
    "a string": ("string_type",),
    "a path (a string)": ("path_type",),
    "a list": ("list_type", "tuple_type", "set_type", "frozen_set_type", "iterable_type"),
    "a table": ("model_type", "model_attributes_type", "dataclass_type", "dict_type"),
}
_MUST_BE = {error_type: what for what, kinds in _KINDS.items() for error_type in kinds}


def _explain(error: Mapping[str, Any]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return "required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown setting; known here: {', '.join(known_keys(error['loc'][:-1]))}"
    if kind in _MUST_BE:
        return f"must be {_MUST_BE[kind]}, not {value!r}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']:g}, not {value!r}"
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx['expected']}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return str(error["msg"])


def describe_errors(error: ValidationError) -> str:
    """One line per problem, each naming the dotted key (`queue.max_queued: …`)."""
    lines: list[str] = []
    for item in error.errors(include_url=False):
        where = _dotted(item["loc"])
        line = f"{where}: {_explain(item)}" if where else _explain(item)
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    require_token: bool = False,
) -> Settings:
    """Read and validate everything once. Relative paths are relative to the config file
    (`config_file`, else IMAGINE_BOT_CONFIG; without one, the current folder)."""
    load = _Load.of(config_file, os.environ if environ is None else environ)
    loading = _LOADING.set(load)
    try:
        settings = Settings()  # type: ignore[call-arg]  # the sources supply every field
    except ValidationError as error:
        raise SettingsError(describe_errors(error)) from None
    finally:
        _LOADING.reset(loading)
    if require_token and not settings.discord.token.get_secret_value():
        raise SettingsError(TOKEN_HELP)
    return settings
