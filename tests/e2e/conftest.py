"""The end-to-end world: a local Discord, the tiny model, and the bot as a real process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess, write_config
from tests.e2e.fakediscord import FakeDiscord

BOT_START_TIMEOUT = 90  # importing torch + diffusers on a busy 2-core CI machine


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


async def start_bot(
    fake: FakeDiscord, tiny: TinyModel, directory: Path, extra: str = ""
) -> BotProcess:
    bot = BotProcess(write_config(directory, fake, tiny, extra), fake.token, directory / "bot.log")
    await bot.start()
    try:
        await wait_until_ready(fake, bot)
    except BaseException:
        await bot.kill()  # never leave a bot process behind a failed test
        raise
    return bot


async def wait_until_ready(fake: FakeDiscord, bot: BotProcess) -> None:
    identified_before = sum(1 for c in fake.connections if c.identified)

    def ready(f: FakeDiscord) -> bool:
        if not bot.alive:
            raise AssertionError("the bot exited during start-up:\n" + bot.log_text()[-3000:])
        synced = any(c.name == "imagine" for c in f.commands())
        return synced and sum(1 for c in f.connections if c.identified) > identified_before

    await fake.wait_for(ready, timeout=BOT_START_TIMEOUT)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    process = await start_bot(
        fake,
        tiny_model,
        tmp_path_factory.mktemp("bot"),
        "[rate_limits]\nimages_per_window = 6\nwindow_minutes = 10.0\n"
        "[queue]\nmax_queued_per_user = 4\n[limits]\nmax_steps = 1000\n",
    )
    try:
        yield process
        if process.alive:
            code = await process.stop()
            assert code == 0, process.log_text()[-3000:]
    finally:
        await process.kill()
