import logging
from pathlib import Path

import pytest

from bot.__main__ import RedactSecrets
from bot.settings import SettingsError, load_settings


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
    assert settings.queue.max_queued_per_user == 3  # from config/default.toml
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
