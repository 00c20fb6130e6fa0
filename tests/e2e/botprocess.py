"""Starting the bot the way an operator does (`imagine-bot --config … run`), against FakeDiscord."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from inference.testing import TinyModel
from tests.e2e.fakediscord import FakeDiscord

ROOT = Path(__file__).resolve().parents[2]
BOT_START_TIMEOUT = 90  # importing torch + diffusers on a busy 2-core CI machine


def write_config(directory: Path, fake: FakeDiscord, tiny: TinyModel, extra: str = "") -> Path:
    """The operator's file: only what must differ from bot/default.toml, plus `extra`."""
    config = directory / "bot.toml"
    config.write_text(
        f"""
[discord]
api_base = "{fake.rest_base}"
gateway_url = "{fake.gateway_url}"
moderator_role_ids = [{fake.moderator_role.id}]

[storage]
data_dir = "{directory / "data"}"

[[models]]
name = "tiny"
source = "{tiny.single_file}"
config = "{tiny.folder}"

{extra}
"""
    )
    return config


@dataclass
class BotProcess:
    config: Path
    token: str
    log: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = field(default=0)
    # A command the bot runs under, e.g. ("unshare", "-rm", "sh", "-c", '... exec "$@"', "sh"):
    # the bot's own command line is appended.
    wrapper: tuple[str, ...] = ()

    async def start(self) -> None:
        env = {
            **os.environ,
            "DISCORD_TOKEN": self.token,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.starts += 1
        log = self.log.open("a")
        log.write(f"\n===== start {self.starts} =====\n")
        log.flush()
        self.process = await asyncio.create_subprocess_exec(
            *self.wrapper,
            sys.executable,
            "-m",
            "bot",
            "--config",
            str(self.config),
            "run",
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:  # noqa: ASYNC109
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        if self.alive:
            self.process.kill()
            await self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


async def start_bot(
    fake: FakeDiscord,
    tiny: TinyModel,
    directory: Path,
    extra: str = "",
    timeout: float = BOT_START_TIMEOUT,  # noqa: ASYNC109
    wrapper: tuple[str, ...] = (),
) -> BotProcess:
    """Start `imagine-bot run` against `fake` and wait until it is connected and synced."""
    bot = BotProcess(
        write_config(directory, fake, tiny, extra),
        fake.token,
        directory / "bot.log",
        wrapper=wrapper,
    )
    await bot.start()
    try:
        await wait_until_ready(fake, bot, timeout)
    except BaseException:
        await bot.kill()  # never leave a bot process behind a failed start
        raise
    return bot


async def wait_until_ready(
    fake: FakeDiscord,
    bot: BotProcess,
    timeout: float = BOT_START_TIMEOUT,  # noqa: ASYNC109
) -> None:
    identified_before = sum(1 for c in fake.connections if c.identified)

    def ready(f: FakeDiscord) -> bool:
        if not bot.alive:
            raise AssertionError("the bot exited during start-up:\n" + bot.log_text()[-3000:])
        synced = any(c.name == "imagine" for c in f.commands())
        return synced and sum(1 for c in f.connections if c.identified) > identified_before

    await fake.wait_for(ready, timeout=timeout)
