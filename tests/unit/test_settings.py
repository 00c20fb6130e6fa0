import dataclasses
import logging
import re
import shlex
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from bot.__main__ import RedactSecrets, _parser
from bot.settings import Settings, SettingsError, load_settings
from inference.device import RuntimeOptions
from inference.requests import RequestLimits
from inference.types import ModelSpec

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bot.toml"
    path.write_text(text)
    return path


def test_layers_default_then_file_then_environment(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        '[queue]\nmax_queued = 7\n[[models]]\nname = "mine"\nsource = "models/m.safetensors"\n',
    )
    settings = load_settings(config, {"IMAGINE_BOT__QUEUE__MAX_QUEUED": "9"})
    assert settings.queue.max_queued == 9
    assert settings.queue.max_queued_per_user == 3  # from the packaged defaults (bot/default.toml)
    assert [m.name for m in settings.models] == ["mine"]
    assert settings.models[0].source == str(tmp_path / "models/m.safetensors")
    assert settings.default_model == "mine"
    assert settings.database == tmp_path / "data" / "imagine-bot.sqlite3"


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ("[queue]\nmax_queud = 1\n", {}, "queue.max_queud: unknown setting"),
        ("[queue]\nmax_queued = 'many'\n", {}, "queue.max_queued: must be a whole number"),
        ("[queue]\nmax_queued = 0\n", {}, "queue.max_queued: must be at least 1"),
        ("[inference]\ndtype = 'fp8'\n", {}, "inference.dtype"),
        ("[inference]\ndefault_model = 'nope'\n", {}, "inference.default_model"),
        ("[[models]]\nname = 'a'\n", {}, "models[0].source: required"),
        ("", {"IMAGINE_BOT__PROGRESS__PREVIEWS": "maybe"}, "progress.previews"),
        # The forms operators see: the dotted key, then what is wrong and what is allowed.
        ("[queue]\nmax_queued = 0\n", {}, "queue.max_queued: must be at least 1, not 0"),
        ("[queue]\nbatching = 1\n", {}, "queue.batching: must be true or false, not 1"),
        ("[progress]\nedit_interval_s = true\n", {}, "progress.edit_interval_s: must be a number"),
        (
            "[inference]\ndtype = 'fp8'\n",
            {},
            "inference.dtype: 'fp8' is not one of 'auto', 'float16', 'bfloat16' or 'float32'",
        ),
        (
            "[rate_limits]\nwindw_minutes = 5\n",
            {},
            "rate_limits.windw_minutes: unknown setting; known here: exempt_role_ids, "
            "exempt_user_ids, guild_images_per_window, guild_window_minutes, images_per_window, "
            "window_minutes",
        ),
        ("[queu]\nmax_queued = 1\n", {}, "queu: unknown setting; known here: delivery, discord,"),
        ("[[models]]\nname = 'a'\nsource = 'b'\nfamliy = 'sd1'\n", {}, "models[0].famliy: unknown"),
        ("[[models]]\nname = 'a'\nsource = 'b'\nfamily = 'sd9'\n", {}, "models[0].family: 'sd9'"),
        ("[[models]]\nname = ''\nsource = 'b'\n", {}, "models[0]: name must not be empty"),
        ("models = []\n", {}, "models: must list at least one [[models]] entry"),
        (
            "[[models]]\nname = 'a'\nsource = 'b'\n[[models]]\nname = 'a'\nsource = 'c'\n",
            {},
            "models: duplicate name 'a'",
        ),
        ("queue = 3\n", {}, "queue: must be a table, not 3"),
        ("[discord]\nguild_ids = [1, 'x']\n", {}, "discord.guild_ids[1]: 'x' is not a Discord id"),
        ("[delivery]\nretry_delays_s = [5, -1]\n", {}, "delivery.retry_delays_s[1]: must be at"),
        ("[storage]\ndatabase = ''\n", {}, "storage.database: must not be empty"),
        ("", {"IMAGINE_BOT__QUEUE__MAX_QUEUD": "1"}, "queue.max_queud: unknown setting"),
        ("", {"IMAGINE_BOT__QUEUE__MAX_QUEUED": "'9'"}, "queue.max_queued: must be a whole number"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, env: dict, fragment: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(fragment)):
        load_settings(write(tmp_path, text), env)


@pytest.mark.parametrize("device", ["cdua", "cuda:x", "cuda:", "CUDA", "gpu", "cuda:1,2", ""])
def test_a_bad_device_fails_at_load_naming_the_allowed_forms(tmp_path: Path, device: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, f"[inference]\ndevice = '{device}'\n"), {})
    assert str(caught.value) == (
        f"inference.device: {device!r} is not a device; "
        "use auto | cpu | cuda | cuda:N (N = 0, 1, …) | mps"
    )


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_device_form_loads(device: str) -> None:
    # cuda on a machine without a GPU is refused when inference starts, not here.
    assert load_settings(None, {"IMAGINE_BOT__INFERENCE__DEVICE": device}).runtime.device == device


@pytest.mark.parametrize(
    ("line", "shards"),
    [("", "off"), ("shards = 'off'", "off"), ("shards = 'auto'", "auto"), ("shards = 2", 2)],
)
def test_shards_is_off_auto_or_a_count(tmp_path: Path, line: str, shards: object) -> None:
    assert load_settings(write(tmp_path, f"[discord]\n{line}\n"), {}).discord.shards == shards


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("shards = 0", "0"),
        ("shards = -2", "-2"),
        ("shards = 'many'", "'many'"),
        ("shards = '2'", "'2'"),
        ("shards = 1.5", "1.5"),
        ("shards = true", "True"),
    ],
)
def test_a_bad_shards_value_is_one_clear_line(tmp_path: Path, line: str, shown: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, f"[discord]\n{line}\n"), {})
    assert str(caught.value) == (
        f"discord.shards: must be 'off', 'auto' or a whole number of shards ≥ 1, not {shown}"
    )


def test_workers_settings_and_their_errors(tmp_path: Path) -> None:
    workers = load_settings(None, {}).workers
    assert (workers.backend, workers.count, workers.ray_address) == ("local", 1, "")
    assert workers.gpus_per_worker == "auto"
    config = write(tmp_path, "[workers]\ncount = 3\ngpus_per_worker = 1\n")
    environ = {"IMAGINE_BOT__WORKERS__BACKEND": "ray", "IMAGINE_BOT__WORKERS__RAY_ADDRESS": "auto"}
    workers = load_settings(config, environ).workers
    assert (workers.backend, workers.count, workers.ray_address) == ("ray", 3, "auto")
    assert workers.gpus_per_worker == 1.0
    for line, message in [
        ("backend = 'k8s'", "workers.backend: 'k8s' is not one of 'local' or 'ray'"),
        ("count = 0", "workers.count: must be at least 1, not 0"),
        (
            "ray_address = 'ray://head:10001'",
            "workers.ray_address: Ray Client addresses (ray://) are not supported: make this "
            "machine a node of the cluster (`ray start --address=HEAD_IP:6379 --num-gpus=0`) "
            "and use 'auto'",
        ),
        (
            "gpus_per_worker = -1",
            "workers.gpus_per_worker: must be 'auto' or a number of GPUs ≥ 0 (0.5: two on one), "
            "not -1",
        ),
    ]:
        with pytest.raises(SettingsError) as caught:
            load_settings(write(tmp_path, f"[workers]\n{line}\n"), {})
        assert str(caught.value) == message


def test_every_problem_is_one_line_of_one_settings_error_never_a_pydantic_dump(
    tmp_path: Path,
) -> None:
    config = write(tmp_path, "[queue]\nmax_queued = 0\nbatching = 'yes'\n[logging]\nlevel = 1\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config, {})
    assert not isinstance(caught.value, ValidationError)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert str(caught.value).splitlines() == [
        "queue.max_queued: must be at least 1, not 0",
        "queue.batching: must be true or false, not 'yes'",
        "logging.level: 1 is not one of 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
    ]
    assert "pydantic" not in str(caught.value) and "type=" not in str(caught.value)


def test_environment_nests_by_double_underscore_and_reads_values_as_toml(tmp_path: Path) -> None:
    config = write(tmp_path, "[rate_limits]\nimages_per_window = 5\nwindow_minutes = 3.0\n")
    settings = load_settings(
        config,
        {
            "IMAGINE_BOT__RATE_LIMITS__IMAGES_PER_WINDOW": "7",  # TOML: the number 7
            "IMAGINE_BOT__RATE_LIMITS__EXEMPT_USER_IDS": "[11, 12]",  # TOML: a list
            "IMAGINE_BOT__DELIVERY__RETRY_DELAYS_S": "[1, 2.5]",
            "IMAGINE_BOT__INFERENCE__DEVICE": "cuda:1",  # not TOML: the string as typed
            "IMAGINE_BOT__LOGGING__LEVEL": "DEBUG",
            "IMAGINE_BOT__QUEUE__BATCHING": "false",
            "OTHER__QUEUE__MAX_QUEUED": "0",  # not ours: ignored
        },
    )
    assert settings.rate.images_per_window == 7  # the environment beats the file...
    assert settings.rate.window_minutes == 3.0  # ...key by key, the rest of the table stays
    assert settings.rate.exempt_user_ids == frozenset({11, 12})
    assert settings.delivery.retry_delays_s == (1.0, 2.5)
    assert settings.runtime.device == "cuda:1" and settings.log_level == "DEBUG"
    assert settings.queue.batching is False


def test_config_file_from_the_environment_and_paths_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("token-from-relative-file\n")
    config = write(
        tmp_path,
        '[discord]\ntoken_file = "secret"\n[storage]\ndata_dir = "state"\n'
        'database = "/abs/bot.db"\n[[models]]\nname = "m"\nsource = "m.safetensors"\n'
        'config = "arch"\n',
    )
    settings = load_settings(None, {"IMAGINE_BOT_CONFIG": str(config)})
    assert settings.data_dir == tmp_path / "state"
    assert settings.output_dir == tmp_path / "state" / "outputs"
    assert settings.database == Path("/abs/bot.db")
    assert settings.models == (
        ModelSpec(name="m", source=str(tmp_path / "m.safetensors"), config=tmp_path / "arch"),
    )
    assert settings.discord.token.get_secret_value() == "token-from-relative-file"


def test_settings_are_frozen() -> None:
    settings = load_settings(None, {})
    with pytest.raises(ValidationError):
        settings.queue.max_queued = 5
    with pytest.raises(ValidationError):
        settings.models = ()


def test_upscalers_are_named_files_and_images_upscaler_must_name_one(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(
        '[[upscalers]]\nname = "x2"\nsource = "up/x2.safetensors"\n[images]\nupscaler = "x2"\n'
    )
    settings = load_settings(config, {})
    assert settings.upscaler_specs()["x2"].source == str(tmp_path / "up" / "x2.safetensors")
    config.write_text('[images]\nupscaler = "x4"\n')
    with pytest.raises(SettingsError, match=r"images.upscaler: 'x4' is not an \[\[upscalers\]\]"):
        load_settings(config, {})
    config.write_text("[images]\nupscale_strength = 0\n")
    with pytest.raises(SettingsError, match=r"images\.upscale_strength"):
        load_settings(config, {})


def test_defaults_file_and_schema_list_the_same_keys() -> None:
    """bot/default.toml is the defaults' only home: the models have no defaults, and each key
    of one is a key of the other (a drift fails here, and fails every load)."""
    defaults = tomllib.loads((resources.files("bot") / "default.toml").read_text("utf-8"))
    sections = {field.alias or name: field for name, field in Settings.model_fields.items()}
    assert set(sections) == set(defaults)
    for key, field in sections.items():
        if key == "models":
            allowed = {f.name for f in dataclasses.fields(ModelSpec)}
            assert all(set(entry) <= allowed for entry in defaults["models"])
            continue
        if key in ("upscalers", "styles", "loras", "embeddings"):
            assert defaults[key] == []  # none by default
            continue
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        schema = {name for name, f in model.model_fields.items()} - {"token"}
        assert schema == set(defaults[key]), key
        assert all(f.is_required() for name, f in model.model_fields.items() if name != "token")
    # The sections handed to inference/ carry exactly those dataclasses' fields.
    runtime = {f.name for f in dataclasses.fields(RuntimeOptions)}
    assert set(defaults["inference"]) - {"default_model"} == runtime
    assert set(defaults["limits"]) <= {f.name for f in dataclasses.fields(RequestLimits)}


def test_token_from_env_or_file_never_config_and_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "token.txt"
    secret.write_text("file-token-123456\n")
    settings = load_settings(None, {"DISCORD_TOKEN_FILE": str(secret)}, require_token=True)
    assert settings.discord.token.get_secret_value() == "file-token-123456"
    for shown in (
        repr(settings),
        str(settings),
        repr(settings.discord),
        settings.model_dump_json(),
    ):
        assert "file-token" not in shown
    from_env = load_settings(None, {"DISCORD_TOKEN": " env-token-123456 "}, require_token=True)
    assert from_env.discord.token.get_secret_value() == "env-token-123456"
    assert "env-token" not in repr(from_env)
    with pytest.raises(SettingsError, match="No Discord bot token"):
        load_settings(None, {}, require_token=True)
    with pytest.raises(SettingsError, match=r"discord\.token: unknown setting"):
        load_settings(write(tmp_path, "[discord]\ntoken = 'x'\n"), {})
    with pytest.raises(SettingsError, match=r"discord\.token: unknown setting in the environment"):
        load_settings(None, {"IMAGINE_BOT__DISCORD__TOKEN": "x"})
    with pytest.raises(SettingsError, match=r"DISCORD_TOKEN_FILE: cannot read .*missing"):
        load_settings(None, {"DISCORD_TOKEN_FILE": str(tmp_path / "missing")})


def test_log_filter_redacts_the_token() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "sent %s", ("abcdefgh12345",), None)
    RedactSecrets(["abcdefgh12345"]).filter(record)
    assert record.getMessage() == "sent [redacted]"


def test_defaults_are_package_data_so_a_wheel_install_has_them() -> None:
    # A wheel holds the packages and their declared data, never the repository's config/.
    defaults = resources.files("bot") / "default.toml"
    assert defaults.is_file()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "default.toml" in declared["tool"]["setuptools"]["package-data"]["bot"]
    # One copy of the defaults: nothing may read a config/default.toml that drifts from it.
    assert not (ROOT / "config" / "default.toml").exists()


def test_example_config_for_operators_loads() -> None:
    settings = load_settings(ROOT / "config" / "example.toml", {})
    assert settings.default_model in settings.model_specs()


# `imagine-bot …` as quoted in docs and comments: each must be a command line argparse accepts.
_QUOTED_COMMAND = re.compile(r"`(?:[\w./-]*/)?imagine-bot( [^`]*)?`")
_DOCUMENTED = [
    "README.md",
    "config/example.toml",
    "bot/default.toml",
    "bot/settings.py",
    "bot/__main__.py",
    "tests/e2e/botprocess.py",
]


@pytest.mark.parametrize("name", _DOCUMENTED)
def test_quoted_command_lines_parse(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    quoted = [m.group(1) or "" for m in _QUOTED_COMMAND.finditer(text)]
    for arguments in quoted:
        words = []
        for word in shlex.split(arguments):
            if word in {">", "|", "&&", ";"}:
                break
            words.append(word)
        if words == [] or words[0].startswith("<"):
            continue  # `imagine-bot` alone, or a placeholder such as `imagine-bot <command>`
        try:
            _parser().parse_args(words)
        except SystemExit:
            pytest.fail(f"{name}: `imagine-bot{arguments}` is not a valid command line")


def test_comments_cite_only_files_that_exist() -> None:
    for folder in ("bot", "inference", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for cited in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", path.read_text(encoding="utf-8")):
                assert (ROOT / cited).exists() or (path.parent / cited).exists(), (
                    f"{path.relative_to(ROOT)} cites {cited}, which is not in the repository"
                )


# --- [[models]] inpainting: another configured model -------------------------------------------

_INPAINTING_MODELS = (
    "[[models]]\nname = 'base'\nsource = 'base.safetensors'\ninpainting = 'fill'\n"
    "[[models]]\nname = 'fill'\nsource = 'fill.safetensors'\n"
)


def test_inpainting_names_another_configured_model(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, _INPAINTING_MODELS), {})
    specs = settings.model_specs()
    assert specs["base"].inpainting == "fill" and specs["fill"].inpainting is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "[[models]]\nname = 'base'\nsource = 'b.safetensors'\ninpainting = 'nope'\n",
            "models.base.inpainting: 'nope' is not among the configured models (base)",
        ),
        (
            "[[models]]\nname = 'base'\nsource = 'b.safetensors'\ninpainting = 'base'\n",
            "models.base.inpainting: names the model itself",
        ),
        (
            "[[models]]\nname = 'base'\nsource = 'b.safetensors'\ninpainting = 3\n",
            "models[0].inpainting: must be a string",
        ),
    ],
)
def test_inpainting_must_name_another_configured_model(
    tmp_path: Path, text: str, fragment: str
) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(write(tmp_path, text), {})
    assert fragment in str(error.value)


def test_loras_embeddings_and_clip_skip_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(
        '[[models]]\nname = "m"\nsource = "m.safetensors"\nclip_skip = 2\n'
        '[[loras]]\nname = "detail"\nsource = "l/detail.safetensors"\nfamily = "sd1"\n'
        'triggers = ["detailed"]\n'
        '[[embeddings]]\nname = "EasyNegative"\nsource = "e.safetensors"\n'
    )
    settings = load_settings(config, {})
    lora = settings.lora_specs()["detail"]
    assert lora.source == str(tmp_path / "l" / "detail.safetensors")
    assert (lora.family, lora.triggers) == ("sd1", ("detailed",))
    assert settings.embedding_specs()["EasyNegative"].source == str(tmp_path / "e.safetensors")
    assert settings.model_specs()["m"].clip_skip == 2
    config.write_text('[[models]]\nname = "m"\nsource = "m.safetensors"\nclip_skip = 0\n')
    with pytest.raises(SettingsError, match="clip_skip must be a whole number from 1 to 12"):
        load_settings(config, {})
    config.write_text('[[loras]]\nname = "a"\nsource = "a"\n[[loras]]\nname = "a"\nsource = "b"\n')
    with pytest.raises(SettingsError, match="loras: duplicate name 'a'"):
        load_settings(config, {})
