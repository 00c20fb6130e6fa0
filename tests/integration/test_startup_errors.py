"""`imagine-bot run` when it cannot start: one line on stderr that says what is wrong and what
to do, exit code 2, no traceback. Each case runs the real command line as a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from inference.testing import TinyModel
from tests.e2e import botprocess
from tests.e2e.fakediscord import FakeDiscord

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # starts processes
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.startup-test.not-a-real-token"
# Every other line on stderr is an ordinary log line (INFO or WARNING), never an error.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) ")


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(directory: Path, tiny: TinyModel, data_dir: Path, api_host: str) -> Path:
    config = directory / "bot.toml"
    config.write_text(
        f"""
[discord]
api_base = "http://{api_host}/api/v10"
gateway_url = "ws://{api_host}/"

[storage]
data_dir = "{data_dir}"

[[models]]
name = "tiny"
source = "{tiny.single_file}"
config = "{tiny.folder}"
"""
    )
    return config


def run(config: Path, wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISCORD_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "bot", "--config", str(config), "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


def assert_one_line_error(returncode: int | None, stderr: str, *fragments: str) -> str:
    """Exit code 2; the last line of stderr is the one error line; nothing else went wrong."""
    assert returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert TOKEN not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    *before, last = lines
    assert last.startswith("imagine-bot: "), stderr[-3000:]
    assert all(LOG_LINE.match(line) for line in before), stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


@pytest.mark.parametrize("damage", ["not a database", "truncated"])
def test_a_damaged_database_names_the_file_and_says_move_it_aside(
    tiny_model: TinyModel, tmp_path: Path, damage: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = data / "imagine-bot.sqlite3"
    if damage == "truncated":
        db = sqlite3.connect(database)
        db.execute("CREATE TABLE filler (x)")
        db.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,)] * 100)
        db.commit()
        db.close()
        os.truncate(database, database.stat().st_size // 2)
    else:
        database.write_bytes(os.urandom(8192))
    result = run(write_config(tmp_path, tiny_model, data, f"127.0.0.1:{closed_port()}"))
    assert_one_line_error(result.returncode, result.stderr, str(database), "move the file aside")


def test_a_data_dir_that_cannot_be_created_is_one_line(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    # Root ignores permission bits, so "cannot write" is made with a path below a regular file.
    (tmp_path / "a-file").write_text("")
    data = tmp_path / "a-file" / "data"
    result = run(write_config(tmp_path, tiny_model, data, f"127.0.0.1:{closed_port()}"))
    assert_one_line_error(result.returncode, result.stderr, str(data), "storage.data_dir")


def _can_mount_read_only(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && ! touch "$1/x"'
    try:
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c", script, "sh", str(probe)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_a_read_only_data_dir_is_one_line(tiny_model: TinyModel, tmp_path: Path) -> None:
    if not _can_mount_read_only(tmp_path):
        pytest.skip("needs unprivileged user+mount namespaces (unshare -rm)")
    data = tmp_path / "data"
    data.mkdir()
    # The bot runs in its own mount namespace where `data` is a read-only bind mount: that
    # stops root too, unlike chmod.
    read_only = 'mount --bind "$D" "$D" && mount -o remount,bind,ro "$D" && exec "$@"'
    wrapper = ("env", f"D={data}", "unshare", "-rm", "sh", "-c", read_only, "sh")
    result = run(write_config(tmp_path, tiny_model, data, f"127.0.0.1:{closed_port()}"), wrapper)
    assert_one_line_error(
        result.returncode, result.stderr, str(data), "not writable", "Read-only file system"
    )


@pytest.mark.parametrize("where", ["closed port", "unknown host"])
def test_no_network_names_the_host_it_could_not_reach(
    tiny_model: TinyModel, tmp_path: Path, where: str
) -> None:
    host = f"127.0.0.1:{closed_port()}" if where == "closed port" else "imagine-bot-test.invalid"
    result = run(write_config(tmp_path, tiny_model, tmp_path / "data", host))
    assert_one_line_error(
        result.returncode, result.stderr, "cannot reach Discord at", host.split(":")[0]
    )


async def test_gateway_authentication_failed_4004_says_reset_the_token(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    async with FakeDiscord() as fake:
        bot = await botprocess.start_bot(fake, tiny_model, tmp_path)
        try:
            assert fake.disconnect_gateway(4004, "Authentication failed.") >= 1
            assert bot.process is not None
            returncode = await asyncio.wait_for(bot.process.wait(), 60)
        finally:
            await bot.kill()
    # The bot writes nothing to stdout: its log is its stderr (after the harness's header).
    stderr = bot.log_text().split("=====\n", 1)[1]
    assert fake.token not in stderr
    assert_one_line_error(returncode, stderr, "Discord rejected the bot token", "Reset Token")


@pytest.mark.parametrize(
    ("device", "says"),
    [("cuda:7", "inference.device is 'cuda:7'"), ("cdua", "inference.device: 'cdua'")],
)
def test_a_device_this_machine_lacks_stops_the_start_in_one_line(
    tiny_model: TinyModel, tmp_path: Path, device: str, says: str
) -> None:
    """Checked before Discord is contacted: the config's Discord address is a closed port."""
    if device.startswith("cuda") and torch_sees_cuda_devices() > 7:
        pytest.skip("this machine has a cuda:7")
    config = write_config(tmp_path, tiny_model, tmp_path / "data", f"127.0.0.1:{closed_port()}")
    config.write_text(config.read_text() + f'\n[inference]\ndevice = "{device}"\n')
    result = run(config)
    assert_one_line_error(result.returncode, result.stderr, says)


def torch_sees_cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.parametrize(
    ("workers", "says"),
    [
        (
            'count = 2\n[inference]\ndevice = "cuda:1"',
            "workers.count is 2 but inference.device names one GPU ('cuda:1')",
        ),
        (
            'backend = "ray"\nray_address = "127.0.0.1:{port}"',
            "cannot start Ray at 127.0.0.1:{port} (ConnectionError: nothing answers at "
            "127.0.0.1:{port} (Connection refused)",
        ),
    ],
    ids=["two local workers on one gpu", "no ray cluster at the address"],
)
def test_workers_that_cannot_start_stop_the_start_in_one_line(
    tiny_model: TinyModel, tmp_path: Path, workers: str, says: str
) -> None:
    port = closed_port()
    config = write_config(tmp_path, tiny_model, tmp_path / "data", f"127.0.0.1:{closed_port()}")
    config.write_text(config.read_text() + "\n[workers]\n" + workers.format(port=port) + "\n")
    result = run(config)
    # Ray, once imported, adds its own warning lines: the last line is still the one error.
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("imagine-bot: ") and says.format(port=port) in last, last
