"""Nothing lost, nothing twice, while Discord fails: REST errors, lost answers, a refused defer.

The local Discord injects the faults (``fail_requests``, ``drop_requests``); the bot retries
quickly here (`[delivery]` below), as an operator's bot would over minutes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess
from tests.e2e.conftest import module_bot
from tests.e2e.fakediscord import CallbackType, FakeDiscord, uploads_matching
from tests.e2e.results import delivered_jobs, has_images, job_of
from tests.e2e.test_bot import ephemeral_reply

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
WAIT = 60.0
WEBHOOK_EDIT = r"/webhooks/\d+/[^/]+/messages/"
CHANNEL_POST = r"/channels/\d+/messages$"
CALLBACK = r"/interactions/\d+/[^/]+/callback$"
RESULT_FILE = r"^job-\d+-\d+\.png$"  # not preview.jpg, which progress edits upload
RESULT = uploads_matching(RESULT_FILE)
FAST_RETRIES = """
[delivery]
attempt_timeout_s = 5.0
retry_delays_s = [0.5, 0.5]
shutdown_grace_s = 10.0

[rate_limits]
images_per_window = 6
window_minutes = 10.0
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    try:
        async with module_bot(
            fake, tiny_model, tmp_path_factory.mktemp("delivery"), FAST_RETRIES
        ) as process:
            yield process
    finally:
        fake.clear_faults()


async def test_when_the_interaction_keeps_failing_the_result_goes_to_the_channel(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("webhook_down")
    rule = fake.fail_requests("PATCH", WEBHOOK_EDIT, status=503, count=None, predicate=RESULT)
    try:
        handle = fake.invoke_slash("imagine", {"prompt": "a stormy sea", "steps": 2}, user=user)
        posted = await fake.wait_for_message(
            lambda m: has_images(m) and f"<@{user.id}>" in m.content, timeout=WAIT
        )
    finally:
        rule.stop()
    assert rule.hits, "the fault never happened"
    assert delivered_jobs(fake)[job_of(posted)] == 1
    original = await handle.wait_for_original(lambda m: "Done" in m.content, timeout=WAIT)
    assert not has_images(original)  # the progress message points at the post instead
    assert f"/channels/{fake.guild.id}/{posted.channel_id}/{posted.id}" in original.content
    await fake.wait_for(lambda f: set(posted.reactions) >= {"🔄", "❌"}, timeout=WAIT)


async def test_a_post_whose_answer_is_lost_is_not_posted_twice(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    """The worst case: Discord created the message, the answer never arrived, the bot tries
    again. The nonce (enforce_nonce) makes the retry return the same message."""
    user = fake.add_user("answer_lost")
    dead = fake.fail_requests("PATCH", WEBHOOK_EDIT, status=404, count=None, predicate=RESULT)
    lost = fake.drop_requests("POST", CHANNEL_POST, count=1, apply=True, predicate=RESULT)
    try:
        fake.invoke_slash("imagine", {"prompt": "a lost answer", "steps": 2}, user=user)
        posted = await fake.wait_for_message(
            lambda m: has_images(m) and f"<@{user.id}>" in m.content, timeout=WAIT
        )
        job_id = job_of(posted)
        await fake.wait_for(lambda f: f"job {job_id}: delivered" in bot.log_text(), timeout=WAIT)
    finally:
        dead.stop()
        lost.stop()
    assert len(lost.hits) == 1, "the answer was never dropped"
    assert delivered_jobs(fake)[job_id] == 1


async def test_when_discord_never_accepts_the_job_fails_visibly_and_is_refunded(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("never_accepted")
    rules = [
        fake.fail_requests("PATCH", WEBHOOK_EDIT, status=404, count=None, predicate=RESULT),
        fake.fail_requests("POST", CHANNEL_POST, status=403, count=None, predicate=RESULT),
    ]
    try:
        handle = fake.invoke_slash(
            "imagine", {"prompt": "nowhere to go", "steps": 2, "count": 4}, user=user
        )
        await handle.wait_for_response(timeout=WAIT)
        await fake.wait_for(lambda f: "giving up delivery" in bot.log_text(), timeout=WAIT)
    finally:
        for rule in rules:
            rule.stop()
    history = await ephemeral_reply(fake, "history", {}, user=user)
    assert "❌" in history and "not delivered" in history and "images are kept" in history
    job_id = int(re.search(r"\*\*(\d+)\*\*", history).group(1))
    assert delivered_jobs(fake)[job_id] == 0
    # Refunded: 4 more images fit in the 6-per-window budget only if the first 4 went back.
    final = await (
        fake.invoke_slash("imagine", {"prompt": "second try", "steps": 2, "count": 4}, user=user)
    ).wait_for_original(has_images, timeout=WAIT)
    assert len(final.attachments) == 4


async def test_a_failed_defer_still_delivers_the_image_to_the_channel(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("defer_failed")
    # What Discord answers once its 3 s have passed (a 5xx would be retried by discord.py).
    rule = fake.fail_requests(
        "POST", CALLBACK, status=404, code=10062, message="Unknown interaction", count=1
    )
    handle = fake.invoke_slash("imagine", {"prompt": "no answer in time", "steps": 2}, user=user)
    posted = await fake.wait_for_message(
        lambda m: has_images(m) and f"<@{user.id}>" in m.content, timeout=WAIT
    )
    assert rule.hits and handle.callback_type is None  # Discord never saw the deferral
    assert delivered_jobs(fake)[job_of(posted)] == 1


async def test_a_progress_edit_failing_does_not_stop_the_result(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("progress_fails")
    # 500s: discord.py itself retries them (after 1 s, then 3 s).
    rule = fake.fail_requests("PATCH", WEBHOOK_EDIT, status=500, count=2)
    handle = fake.invoke_slash("imagine", {"prompt": "through the storm", "steps": 30}, user=user)
    final = await handle.wait_for_original(has_images, timeout=WAIT)
    assert len(rule.hits) == 2
    assert delivered_jobs(fake)[job_of(final)] == 1
    assert handle.callback_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE


async def test_rate_limits_on_the_upload_are_waited_out_and_deliver_once(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    """429s are discord.py's to wait out (no retries of ours on top): one message, once."""
    user = fake.add_user("rate_limited_upload")
    before = len(fake.rate_limited)
    fake.rate_limit(method="PATCH", path=WEBHOOK_EDIT, count=2, retry_after=0.3)
    handle = fake.invoke_slash("imagine", {"prompt": "slow down", "steps": 2}, user=user)
    final = await handle.wait_for_original(has_images, timeout=WAIT)
    assert len(fake.rate_limited) - before == 2
    assert delivered_jobs(fake)[job_of(final)] == 1
