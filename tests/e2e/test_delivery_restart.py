"""The process dies or stops while a result is being uploaded: after the restart every result
is delivered exactly once. Each test starts its own bot (one bot per local Discord at a time)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess, wait_until_ready
from tests.e2e.conftest import start_bot
from tests.e2e.fakediscord import FakeDiscord, FaultRule, InteractionHandle, uploads_matching
from tests.e2e.results import delivered_jobs, has_images, latest_message
from tests.e2e.test_delivery import RESULT_FILE, WEBHOOK_EDIT

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]
WAIT = 60.0


def config(grace_s: float) -> str:
    return f"[delivery]\nattempt_timeout_s = 30.0\nshutdown_grace_s = {grace_s}\n"


async def imagine_until_upload_stalls(
    fake: FakeDiscord, stall_s: float
) -> tuple[InteractionHandle, FaultRule]:
    """Start an /imagine and return once its final upload hangs in the local Discord."""
    rule = fake.stall_requests(
        "PATCH", WEBHOOK_EDIT, seconds=stall_s, predicate=uploads_matching(RESULT_FILE)
    )
    user = fake.add_user(f"stalled{len(fake.messages_in())}")
    handle = fake.invoke_slash("imagine", {"prompt": "caught mid-upload", "steps": 2}, user=user)
    await fake.wait_for(lambda f: rule.stalled_now == 1, timeout=WAIT)
    return handle, rule


async def restart(fake: FakeDiscord, bot: BotProcess) -> None:
    await bot.start()
    await wait_until_ready(fake, bot)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_killed_or_stopped_during_the_final_upload_delivers_once_after_restart(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path: Path, how: signal.Signals
) -> None:
    """SIGKILL, or SIGTERM with an upload hanging past the grace period: the result was not
    confirmed, so it is not recorded, and the next start sends it (once)."""
    since = latest_message(fake)
    bot = await start_bot(fake, tiny_model, tmp_path, config(grace_s=1.0))
    try:
        handle, rule = await imagine_until_upload_stalls(fake, stall_s=120)
        code = await bot.stop(how)
        rule.stop()
        if how is signal.SIGTERM:
            assert code == 0
            assert "sent after the next start" in bot.log_text()
        assert not has_images(handle.original)  # type: ignore[arg-type]
        await restart(fake, bot)
        final = await handle.wait_for_original(has_images, timeout=WAIT)
        job_id = int(final.attachments[0].filename.split("-")[1])
        await fake.wait_for(lambda f: f"job {job_id}: delivered" in bot.log_text(), timeout=WAIT)
        assert delivered_jobs(fake, since)[job_id] == 1
        assert await bot.stop() == 0
    finally:
        await bot.kill()


async def test_sigterm_lets_an_upload_in_flight_finish(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path: Path
) -> None:
    since = latest_message(fake)
    bot = await start_bot(fake, tiny_model, tmp_path, config(grace_s=20.0))
    try:
        handle, rule = await imagine_until_upload_stalls(fake, stall_s=2.0)
        assert await bot.stop(signal.SIGTERM) == 0
        rule.stop()
        assert has_images(handle.original)  # type: ignore[arg-type]
        assert "stopped cleanly" in bot.log_text()
        job_id = int(handle.original.attachments[0].filename.split("-")[1])
        await restart(fake, bot)  # recorded as delivered: nothing is sent again
        await asyncio.sleep(2)
        assert delivered_jobs(fake, since)[job_id] == 1
        assert f"job {job_id}: delivered" not in bot.log_text().split("===== start 2")[1]
        assert await bot.stop() == 0
    finally:
        await bot.kill()


async def test_sigterm_while_the_gateway_is_down_exits_promptly(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    """discord.py sleeps in its reconnect back-off (up to minutes) when Discord is gone; a
    stop must not wait it out."""
    async with FakeDiscord() as lonely:
        bot = await start_bot(lonely, tiny_model, tmp_path)
    try:  # the local Discord is gone now: the bot is reconnecting
        await asyncio.sleep(3)
        started = time.monotonic()
        assert await bot.stop(signal.SIGTERM, timeout=30) == 0
        assert time.monotonic() - started < 20
        assert "stopped cleanly" in bot.log_text()
    finally:
        await bot.kill()
