"""Crash and restart with jobs queued: every job is delivered, and delivered exactly once."""

from __future__ import annotations

import re
import signal

import pytest

from inference.testing import TinyModel
from tests.e2e.botprocess import wait_until_ready
from tests.e2e.conftest import start_bot
from tests.e2e.fakediscord import FakeDiscord
from tests.e2e.results import delivered_jobs

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]
WAIT = 90.0


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_restart_with_jobs_queued_delivers_each_exactly_once(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path, how: signal.Signals
) -> None:
    since = max((m.id for m in fake.messages_in()), default=0)  # each run has its own DB
    bot = await start_bot(fake, tiny_model, tmp_path, "[limits]\nmax_steps = 1000\n")
    try:
        users = [fake.add_user(f"user{i}-{how.name}") for i in range(3)]
        earlier = fake.invoke_slash("imagine", {"prompt": "before the restart", "steps": 2})
        earlier_result = await earlier.wait_for_original(
            lambda m: any(a.filename.startswith("job-") for a in m.attachments), timeout=WAIT
        )
        # Only the first job must still be running when the bot stops; the others just wait.
        handles = [
            fake.invoke_slash(
                "imagine", {"prompt": f"job {i} --steps {60 if i == 0 else 2}"}, user=user
            )
            for i, user in enumerate(users)
        ]
        # An upscale of an earlier result waits too: its picture and lineage must survive.
        handles.append(fake.click_button(earlier_result, "imagine:upscale:0", user=users[1]))
        for handle in handles:
            await handle.wait_for_response(timeout=WAIT)
        # Stop while the first job is mid-way (progress shown) and the others wait.
        progress = await handles[0].wait_for_original(
            lambda m: "%" in (m.content or ""), timeout=WAIT
        )
        running = re.search(r"job (\d+)\)", progress.content or "")  # not the prompt's "job 0"
        assert running is not None, progress.content
        code = await bot.stop(how)
        if how == signal.SIGTERM:
            assert code == 0, bot.log_text()[-3000:]
            assert "stopped cleanly" in bot.log_text()
        # The running job was interrupted: only the restart can deliver it. (With several
        # workers the short jobs may have finished, and been delivered, before the stop.)
        assert int(running.group(1)) not in delivered_jobs(fake, since)

        await bot.start()
        await wait_until_ready(fake, bot)
        job_ids = []
        for handle in handles:
            final = await handle.wait_for_original(
                lambda m: any(a.filename.startswith("job-") for a in m.attachments), timeout=WAIT
            )
            job_ids.append(int(final.attachments[0].filename.split("-")[1]))
        counts = delivered_jobs(fake, since)
        assert all(counts[job_id] == 1 for job_id in job_ids), counts
        assert "resumed after restart" in bot.log_text()

        # 🔄 on a result from before the restart still works: found in the store by message id.
        seen = {m.id for m in fake.messages_in()}
        fake.add_reaction(earlier_result, "🔄", user=users[0])
        reroll = await fake.wait_for_message(
            lambda m: (
                m.id not in seen and any(a.filename.startswith("job-") for a in m.attachments)
            ),
            timeout=WAIT,
        )
        assert "before the restart" in reroll.embeds[0]["description"]
        upscaled = await handles[-1].wait_for_original(lambda m: bool(m.attachments))
        assert upscaled.embeds[0]["description"] == "before the restart"
        # The buttons under a result from before the restart work too (fixed custom ids).
        varied = fake.click_button(earlier_result, "imagine:subtle:0", user=users[2])
        result = await varied.wait_for_original(
            lambda m: any(a.filename.startswith("job-") for a in m.attachments), timeout=WAIT
        )
        assert any(f["name"] == "From image" for f in result.embeds[0]["fields"])
        await bot.stop()
    finally:
        await bot.kill()
