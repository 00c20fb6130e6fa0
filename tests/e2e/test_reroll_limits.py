"""Re-rolls follow today's limits by every route. Its own module: it restarts its own bot, and
a second bot on the same local Discord would answer the same interactions."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.testing import TinyModel
from tests.e2e.botprocess import wait_until_ready, write_config
from tests.e2e.conftest import TEST_SPEED, start_bot
from tests.e2e.fakediscord import FakeDiscord
from tests.e2e.fakediscord.constants import Permission
from tests.e2e.results import has_images, job_of
from tests.e2e.test_bot import ephemeral_reply, imagine
from tests.e2e.test_rerolls import LIMITS

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]
WAIT = 60.0


async def test_rerolls_follow_todays_limits_by_every_route(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path: Path
) -> None:
    """A 101-step image made while 1000 steps were allowed; the operator lowers max_steps to
    100. A re-roll by 🔄, by button or by /reroll, by its owner or a stranger, is a new job
    and is refused the same way; within the limits, a stranger's /reroll works like 🔄."""
    bot = await start_bot(fake, tiny_model, tmp_path, LIMITS + "[limits]\nmax_steps = 1000\n")
    try:
        owner = fake.add_user("limits_owner")
        stranger = fake.add_user("limits_stranger")
        big = await imagine(fake, {"prompt": "a big one --steps 101"}, user=owner)
        small = await imagine(fake, {"prompt": "a small one", "steps": 3}, user=owner)
        assert await bot.stop() == 0
        write_config(
            tmp_path, fake, tiny_model, TEST_SPEED + LIMITS + "[limits]\nmax_steps = 100\n"
        )
        await bot.start()
        await wait_until_ready(fake, bot)

        for who in (owner, stranger):
            text = await ephemeral_reply(fake, "reroll", {"job": job_of(big)}, user=who)
            assert "steps" in text and "1–100" in text, text
            click = fake.click_button(big, "imagine:reroll", user=who)
            await click.wait_for_response(timeout=WAIT)
            reply = await click.wait_for_original(lambda m: bool(m.content), timeout=WAIT)
            assert reply.ephemeral and "1–100" in reply.content
        before = {m.id for m in fake.messages_in()}
        fake.bot_role.permissions |= Permission.MANAGE_MESSAGES  # to take a reaction back
        reactor = fake.add_user("limits_reactor")  # the others just re-rolled: debounced
        fake.add_reaction(big, "🔄", user=reactor)
        await fake.wait_for(lambda f: reactor.id not in big.reactions.get("🔄", []), timeout=WAIT)
        assert not [m for m in fake.messages_in() if m.id not in before]

        handle = fake.invoke_slash("reroll", {"job": job_of(small)}, user=stranger)
        rerolled = await handle.wait_for_original(has_images, timeout=WAIT)
        assert f"<@{stranger.id}>" in " ".join(rerolled.contents)
        assert "a small one" in rerolled.embeds[0]["description"]
        history = await ephemeral_reply(fake, "history", {}, user=stranger)
        assert f"**{job_of(rerolled)}**" in history  # the stranger's own job now
        assert await bot.stop() == 0
    finally:
        await bot.kill()
