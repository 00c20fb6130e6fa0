"""Re-rolls under one rule (checked and charged like a new /imagine, by whoever asks), 🔄 spam,
bursts from one user, and a job whose message is deleted."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess
from tests.e2e.conftest import module_bot
from tests.e2e.fakediscord import CallbackType, FakeDiscord
from tests.e2e.fakediscord.constants import Permission
from tests.e2e.results import has_images, job_of
from tests.e2e.test_bot import ephemeral_reply, imagine

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]
WAIT = 60.0
LIMITS = """
[rate_limits]
images_per_window = 6
window_minutes = 10.0
[queue]
max_queued_per_user = 4
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    directory = tmp_path_factory.mktemp("rerolls")
    async with module_bot(
        fake, tiny_model, directory, LIMITS + "[limits]\nmax_steps = 1000\n"
    ) as process:
        yield process


async def test_reaction_spam_makes_one_reroll_and_no_public_refusals(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    owner = fake.add_user("spam_owner")
    spammer = fake.add_user("spam_spammer")
    final = await imagine(fake, {"prompt": "a quiet harbour", "steps": 2}, user=owner)
    before = {m.id for m in fake.messages_in()}
    for _ in range(30):  # 30 toggles in well under a second
        fake.add_reaction(final, "🔄", user=spammer)
        fake.remove_reaction(final, "🔄", user=spammer)
    fake.add_reaction(final, "🔄", user=spammer)
    reroll = await fake.wait_for_message(
        lambda m: m.id not in before and has_images(m), timeout=WAIT
    )
    await asyncio.sleep(3)  # time for any further (wrong) re-roll to show up
    new = [m for m in fake.messages_in() if m.id not in before]
    assert len([m for m in new if has_images(m)]) == 1, [m.content for m in new]
    # Besides the one job's own message(s), nothing public: no refusal posts.
    job = job_of(reroll)
    others = [m for m in new if m.id != reroll.id and f"job {job}" not in m.contents[0]]
    assert not others, [m.contents for m in others]
    assert f"<@{spammer.id}>" in " ".join(reroll.contents)  # the re-roller's own job


async def test_a_refused_reaction_reroll_takes_the_reaction_back_without_posting(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    owner = fake.add_user("refused_owner")
    final = await imagine(fake, {"prompt": "a red kite", "steps": 2, "count": 4}, user=owner)
    greedy = fake.add_user("refused_greedy")
    first = await imagine(fake, {"prompt": "mine", "steps": 2, "count": 4}, user=greedy)
    assert first.attachments
    before = {m.id for m in fake.messages_in()}
    fake.bot_role.permissions |= Permission.MANAGE_MESSAGES  # to take a reaction back
    fake.add_reaction(final, "🔄", user=greedy)  # 4 + 4 > 6 images per window: refused
    await fake.wait_for(lambda f: greedy.id not in final.reactions.get("🔄", []), timeout=WAIT)
    await asyncio.sleep(1)
    assert [m for m in fake.messages_in() if m.id not in before] == []
    assert "used 4 of 6 images per 10 min" in bot.log_text()  # the refusal, told truly


async def test_a_burst_from_one_user_is_refused_by_the_queue_cap_before_it_is_charged(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    """8 at once, 4 may wait, 6 per window: 4 run, 4 are told the queue cap. Nobody may be
    told "reached 6 images" when only 4 were charged (the ledger and the text must agree)."""
    user = fake.add_user("burst_user")
    handles = [
        fake.invoke_slash("imagine", {"prompt": f"burst {i} --steps 200"}, user=user)
        for i in range(8)
    ]
    for handle in handles:
        await handle.wait_for_response(timeout=WAIT)
    refusals = [
        h.original.content for h in handles if h.original is not None and h.original.ephemeral
    ]
    accepted = [
        h for h in handles if h.callback_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    ]
    assert len(accepted) == 4 and len(refusals) == 4, refusals
    assert all("waiting" in text and "reached" not in text for text in refusals), refusals
    for _ in accepted:  # clean up: the user's own /cancel
        await ephemeral_reply(fake, "cancel", {}, user=user)
    await fake.wait_for(
        lambda f: all("Cancelled" in (h.original.content if h.original else "") for h in accepted),
        timeout=WAIT,
    )


async def test_deleting_a_running_jobs_message_cancels_it_and_nothing_is_reposted(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("deleter")
    handle = fake.invoke_slash("imagine", {"prompt": "long one --steps 400"}, user=user)
    progress = await handle.wait_for_original(lambda m: "%" in (m.content or ""), timeout=WAIT)
    job_id = int(re.search(r"job (\d+)", progress.content).group(1))
    before = {m.id for m in fake.messages_in()}
    fake.state.delete_message(progress)
    await fake.wait_for(
        lambda f: f"job {job_id}: its message was deleted" in bot.log_text(), timeout=WAIT
    )
    assert "nothing queued" in await ephemeral_reply(fake, "queue", {}, user=user)
    await asyncio.sleep(2)
    assert [m for m in fake.messages_in() if m.id not in before and not m.ephemeral] == []
    history = await ephemeral_reply(fake, "history", {}, user=user)
    assert f"🚫 **{job_id}**" in history
