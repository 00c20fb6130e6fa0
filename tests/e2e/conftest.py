"""The end-to-end world: a local Discord, the tiny model, and the bot as a real process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from inference.testing import TinyModel
from tests.e2e import botprocess
from tests.e2e.botprocess import BotProcess
from tests.e2e.fakediscord import FakeDiscord


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        yield server


# Faster than an operator would run it, so the tests see progress on a 64-px model.
TEST_SPEED = """
[inference]
preview_interval_s = 0.0

[progress]
edit_interval_s = 0.2
"""


async def start_bot(
    fake: FakeDiscord,
    tiny: TinyModel,
    directory: Path,
    extra: str = "",
    wrapper: tuple[str, ...] = (),
) -> BotProcess:
    return await botprocess.start_bot(fake, tiny, directory, TEST_SPEED + extra, wrapper=wrapper)


@contextlib.asynccontextmanager
async def module_bot(
    fake: FakeDiscord, tiny: TinyModel, directory: Path, extra: str = ""
) -> AsyncIterator[BotProcess]:
    """A bot shared by a test module; it must still stop cleanly (exit 0) at the end."""
    process = await start_bot(fake, tiny, directory, extra)
    try:
        yield process
        if process.alive:
            code = await process.stop()
            assert code == 0, process.log_text()[-3000:]
    finally:
        await process.kill()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    async with module_bot(
        fake,
        tiny_model,
        tmp_path_factory.mktemp("bot"),
        "\n[rate_limits]\nimages_per_window = 6\nwindow_minutes = 10.0\n"
        "[queue]\nmax_queued_per_user = 4\n[limits]\nmax_steps = 1000\n",
    ) as process:
        yield process
