import logging
import re
import shlex
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from bot.__main__ import RedactSecrets, _parser
from bot.settings import SettingsError, load_settings

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
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, env: dict, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_settings(write(tmp_path, text), env)


def test_token_from_env_or_file_never_config_and_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "token.txt"
    secret.write_text("file-token-123456\n")
    settings = load_settings(None, {"DISCORD_TOKEN_FILE": str(secret)}, require_token=True)
    assert settings.discord.token == "file-token-123456"
    assert "file-token" not in repr(settings)
    with pytest.raises(SettingsError, match="No Discord bot token"):
        load_settings(None, {}, require_token=True)
    with pytest.raises(SettingsError, match=r"discord\.token: unknown setting"):
        load_settings(write(tmp_path, "[discord]\ntoken = 'x'\n"), {})


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
