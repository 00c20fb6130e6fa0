"""The bot as users meet it: a real process, real discord.py, real sockets, real SQLite, the
tiny model. Each test plays users through the local Discord-compatible server."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sd_parsers import ParserManager

from tests.e2e.botprocess import BotProcess
from tests.e2e.fakediscord import CallbackType, FakeDiscord
from tests.e2e.fakediscord.models import MessageRecord
from tests.e2e.results import has_images

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
WAIT = 60.0


def parse_png(data: bytes):
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image, ParserManager().parse(image)


async def imagine(fake: FakeDiscord, options: dict, user=None) -> MessageRecord:
    """Run /imagine (as `user`, else the default user) and return the finished message."""
    handle = fake.invoke_slash("imagine", options, user=user)
    assert (
        await handle.wait_for_response(timeout=WAIT)
        == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    )
    return await handle.wait_for_original(has_images, timeout=WAIT)


async def ephemeral_reply(fake: FakeDiscord, name: str, options: dict, user=None) -> str:
    handle = fake.invoke_slash(name, options, user=user)
    await handle.wait_for_response(timeout=WAIT)

    def reply(_: FakeDiscord):
        messages = [m for m in [handle.original, *handle.followups] if m is not None]
        return next((m for m in messages if m.ephemeral and m.content), None)

    message = await fake.wait_for(reply, timeout=WAIT)
    assert "Traceback" not in message.content
    return message.content


async def test_imagine_defers_shows_progress_and_delivers_a_png(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("imagine_defers_shows_pro")  # own rate-limit window
    final = await imagine(
        fake, {"prompt": "a lighthouse at dusk", "steps": 80, "seed": 42}, user=user
    )
    image, info = parse_png(final.attachments[0].content)
    assert image.size == (64, 64)
    [sampler] = info.samplers
    assert sampler.parameters["seed"] == "42" and sampler.parameters["steps"] == "80"
    assert [p.value for p in sampler.prompts] == ["a lighthouse at dusk"]
    contents = " ".join(final.contents)
    first = next(c for c in final.contents if c)  # after the deferred "thinking…" state
    assert any(s in first for s in ("in the queue", "up next", "starting")), first
    assert "%" in contents and "step" in contents  # at least one progress edit
    embed = final.embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Seed"] == "42" and fields["Model"] == "tiny" and fields["Size"] == "64×64"
    await fake.wait_for(lambda f: set(final.reactions) >= {"🔄", "❌"}, timeout=WAIT)


async def test_inline_flags_and_bad_options(fake: FakeDiscord, bot: BotProcess) -> None:
    user = fake.add_user("inline_flags_and_bad_opt")  # own rate-limit window
    final = await imagine(
        fake, {"prompt": "a fox --seed 7 --steps 3 --no trees --ar 16:9"}, user=user
    )
    image, info = parse_png(final.attachments[0].content)
    assert image.size == (80, 48)  # 16:9 for a 64-px model
    assert info.samplers[0].parameters["seed"] == "7"
    assert [p.value for p in info.samplers[0].negative_prompts] == ["trees"]

    reply = await ephemeral_reply(fake, "imagine", {"prompt": "a fox --size 4"}, user=user)
    assert "--size" in reply and "unknown flag" in reply
    reply = await ephemeral_reply(fake, "imagine", {"prompt": "a fox --w 500"}, user=user)
    assert "width" in reply and "multiple of 8" in reply
    reply = await ephemeral_reply(
        fake, "imagine", {"prompt": "a fox --no trees", "negative": "cars"}, user=user
    )
    assert "`negative` option and as `--no`" in reply


async def test_reroll_by_reaction_gives_a_new_seed(fake: FakeDiscord, bot: BotProcess) -> None:
    user = fake.add_user("reroll_by_reaction_gives")  # own rate-limit window
    final = await imagine(fake, {"prompt": "a red kite", "steps": 3, "seed": 5}, user=user)
    other = fake.add_user("bob")
    before = {m.id for m in fake.messages_in()}
    fake.add_reaction(final, "🔄", user=other)
    reroll = await fake.wait_for_message(
        lambda m: m.id not in before and has_images(m), timeout=WAIT
    )
    _, info = parse_png(reroll.attachments[0].content)
    assert info.samplers[0].parameters["seed"] != "5"
    assert [p.value for p in info.samplers[0].prompts] == ["a red kite"]
    assert f"<@{other.id}>" in " ".join(reroll.contents)


async def test_delete_by_reaction_only_for_owner_or_moderator(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("delete_by_reaction_only_")  # own rate-limit window
    final = await imagine(fake, {"prompt": "a castle", "steps": 3}, user=user)
    stranger = fake.add_user("mallory")
    fake.add_reaction(final, "❌", user=stranger)
    # The bot answers a refused delete by taking the stranger's ❌ back off (best effort) or
    # by doing nothing; either way the message must survive. Prove the bot handled the event
    # by a later action on the same message: the owner's delete.
    fake.add_reaction(final, "❌", user=user)
    await fake.wait_for(lambda f: final.deleted, timeout=WAIT)
    log = bot.log_text()
    assert f"delete refused for user {stranger.id}" in log

    second = await imagine(fake, {"prompt": "a tower", "steps": 3}, user=user)
    fake.add_reaction(second, "❌", user=fake.moderator)
    await fake.wait_for(lambda f: second.deleted, timeout=WAIT)


async def test_rate_limit_is_an_ephemeral_message_with_the_wait(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("eager")
    await imagine(fake, {"prompt": "one", "steps": 2, "count": 4}, user=user)
    reply = await ephemeral_reply(
        fake, "imagine", {"prompt": "two", "steps": 2, "count": 4}, user=user
    )
    assert "generate again in" in reply and "6 images per 10 min" in reply


async def test_history_queue_and_cancel(fake: FakeDiscord, bot: BotProcess) -> None:
    user = fake.add_user("collector")
    first = await imagine(fake, {"prompt": "a green apple", "steps": 2}, user=user)
    job_id = int(first.embeds[0]["footer"]["text"].split("job ")[1].split(" ")[0])
    history = await ephemeral_reply(fake, "history", {}, user=user)
    assert f"**{job_id}**" in history and "a green apple" in history

    long_job = fake.invoke_slash("imagine", {"prompt": "a long one --steps 400"}, user=user)
    await long_job.wait_for_response(timeout=WAIT)
    await long_job.wait_for_original(lambda m: "job" in (m.content or ""), timeout=WAIT)
    queue = await ephemeral_reply(fake, "queue", {}, user=user)
    assert "a long one" in queue and "job" in queue
    cancelled = await ephemeral_reply(fake, "cancel", {}, user=user)
    assert "cancelled" in cancelled or "will stop" in cancelled
    message = await long_job.wait_for_original(
        lambda m: "Cancelled" in (m.content or ""), timeout=WAIT
    )
    assert not has_images(message)


async def test_cancel_of_someone_elses_job_is_refused(fake: FakeDiscord, bot: BotProcess) -> None:
    owner = fake.add_user("owner")
    handle = fake.invoke_slash("imagine", {"prompt": "mine --steps 400"}, user=owner)
    await handle.wait_for_response(timeout=WAIT)
    message = await handle.wait_for_original(lambda m: "job" in (m.content or ""), timeout=WAIT)
    job_id = int(message.content.split("job ")[-1].rstrip(")"))
    reply = await ephemeral_reply(fake, "cancel", {"job": job_id}, user=fake.add_user("thief"))
    assert "not yours" in reply
    await ephemeral_reply(fake, "cancel", {"job": job_id}, user=fake.moderator)
    await handle.wait_for_original(lambda m: "Cancelled" in (m.content or ""), timeout=WAIT)


async def test_expired_token_result_goes_to_the_channel_with_a_mention(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("patient")
    handle = fake.invoke_slash("imagine", {"prompt": "slow --steps 200"}, user=user)
    await handle.wait_for_response(timeout=WAIT)
    await handle.wait_for_original(lambda m: "job" in (m.content or ""), timeout=WAIT)
    handle.expire()  # the 15 minutes are up before the image is
    posted = await fake.wait_for_message(
        lambda m: (
            has_images(m) and f"<@{user.id}>" in (m.content or "") and m.interaction_id is None
        ),
        timeout=WAIT,
    )
    assert "ready" in posted.content


async def test_buttons_reroll_and_delete_with_permissions(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("buttons_reroll_and_delet")  # own rate-limit window
    final = await imagine(fake, {"prompt": "a paper boat", "steps": 3, "seed": 11}, user=user)
    clicker = fake.add_user("clicker")
    reroll = fake.click_button(final, "imagine:reroll", user=clicker)
    assert (
        await reroll.wait_for_response(timeout=WAIT)
        == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    )
    rerolled = await reroll.wait_for_original(has_images, timeout=WAIT)
    _, info = parse_png(rerolled.attachments[0].content)
    assert info.samplers[0].parameters["seed"] != "11"

    refused = fake.click_button(final, "imagine:delete", user=clicker)
    await refused.wait_for_response(timeout=WAIT)
    assert refused.original is not None and refused.original.ephemeral
    assert "only the person who made this image" in refused.original.content
    assert not final.deleted
    allowed = fake.click_button(final, "imagine:delete", user=user)
    await allowed.wait_for_response(timeout=WAIT)
    await fake.wait_for(lambda f: final.deleted, timeout=WAIT)


async def test_result_over_the_upload_limit_is_scaled_down_and_says_so(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("result_over_the_upload_l")  # own rate-limit window
    handle = fake.invoke_slash(
        "imagine",
        {"prompt": "static --w 256 --h 256", "steps": 2},
        user=user,
        attachment_size_limit=20_000,
    )
    final = await handle.wait_for_original(has_images, timeout=WAIT)
    attachment = final.attachments[0]
    assert len(attachment.content) <= 20_000
    image, info = parse_png(attachment.content)
    assert image.width < 256  # scaled down …
    assert info.metadata["Size"] == "256x256"  # … and the metadata still tells the truth
    assert "to fit the upload limit" in final.embeds[0]["footer"]["text"]


async def test_admins_choose_channels_and_blocked_words(fake: FakeDiscord, bot: BotProcess) -> None:
    user = fake.add_user("admins_choose_channels_a")  # own rate-limit window
    art = fake.add_channel("art")
    admin = fake.owner
    reply = await ephemeral_reply(fake, "imagine-admin allow-channel", {"channel": art}, user=admin)
    assert f"<#{art.id}>" in reply
    reply = await ephemeral_reply(fake, "imagine", {"prompt": "a fox"}, user=user)
    assert "works only in" in reply and f"<#{art.id}>" in reply
    await ephemeral_reply(fake, "imagine-admin disallow-channel", {"channel": art}, user=admin)

    await ephemeral_reply(fake, "imagine-admin block-word", {"word": "Dragon"}, user=admin)
    reply = await ephemeral_reply(fake, "imagine", {"prompt": "a red dragon, flying"}, user=user)
    assert "'dragon'" in reply and "does not allow" in reply
    await ephemeral_reply(fake, "imagine-admin unblock-word", {"word": "dragon"}, user=admin)
    await imagine(fake, {"prompt": "a red dragon, flying", "steps": 2}, user=user)
