"""Safety as users and operators meet it: prompts that try to ping people, members who try the
admin commands, odd characters and huge names, and a DEBUG log that must hold no token.

One bot process (at DEBUG log level) serves the whole module; the local Discord records the
JSON body of every message the bot sends, so the tests can read its `allowed_mentions`.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess
from tests.e2e.conftest import module_bot
from tests.e2e.fakediscord import FakeDiscord, MessageRecord
from tests.e2e.results import has_images
from tests.e2e.test_bot import ephemeral_reply, imagine, parse_png

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
WAIT = 60.0
MANAGE_GUILD = 1 << 5  # Discord's "Manage Server" permission bit
SAFETY_CONFIG = """
[logging]
level = "DEBUG"

[rate_limits]
images_per_window = 100
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def debug_bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    directory = tmp_path_factory.mktemp("safety")
    async with module_bot(fake, tiny_model, directory, SAFETY_CONFIG) as process:
        yield process


@pytest.fixture(scope="module")
def sent(fake: FakeDiscord) -> Iterator[list[tuple[MessageRecord, dict[str, Any]]]]:
    """Every message body the bot sent (create, edit, interaction response), as JSON."""
    bodies: list[tuple[MessageRecord, dict[str, Any]]] = []
    state = fake.state
    apply = state._apply

    def recording(message: MessageRecord, body: Any, **options: Any) -> None:
        bodies.append((message, dict(body.payload)))
        apply(message, body, **options)

    state._apply = recording  # type: ignore[method-assign]
    try:
        yield bodies
    finally:
        state._apply = apply  # type: ignore[method-assign]


async def test_a_prompt_full_of_mentions_pings_nobody_but_the_requester(
    fake: FakeDiscord, debug_bot: BotProcess, sent: list[tuple[MessageRecord, dict[str, Any]]]
) -> None:
    user = fake.add_user("mentioner")
    victim = fake.add_user("victim")
    prompt = f"<@{victim.id}> @everyone @here <@&{fake.moderator_role.id}> a fox"
    before = len(sent)
    final = await imagine(fake, {"prompt": prompt, "steps": 2}, user=user)
    # A re-roll by someone else is posted to the channel, naming the re-roller.
    rerolled_by = fake.add_user("rerolls")
    fake.add_reaction(final, "🔄", user=rerolled_by)
    await fake.wait_for_message(
        lambda m: has_images(m) and m.interaction_id is None and m.id != final.id, timeout=WAIT
    )

    echoed = [(m, body) for m, body in sent[before:] if "@everyone" in (body.get("content") or "")]
    assert len({m.id for m, _ in echoed}) >= 2, "the prompt never reached a message's content"
    for message, body in echoed:
        allowed = body.get("allowed_mentions")
        # Without allowed_mentions Discord parses (and pings) every mention in the content.
        assert allowed is not None, body
        assert not {"everyone", "roles", "users"} & set(allowed.get("parse", [])), allowed
        assert not allowed.get("roles"), allowed
        requester = rerolled_by if message.interaction_id is None else user
        assert {int(i) for i in allowed.get("users", [])} <= {requester.id}, allowed
        assert not allowed.get("replied_user"), allowed


async def test_admin_commands_need_manage_server_or_a_moderator_role(
    fake: FakeDiscord, debug_bot: BotProcess
) -> None:
    # The fake does not enforce default_member_permissions: as if a server had opened the
    # commands to everyone in its integration settings.
    plain = fake.add_user("plain_member")
    art = fake.add_channel("art-safety")
    word = "forbiddenfruit"
    for name, options in (
        ("imagine-admin block-word", {"word": word}),
        ("imagine-admin allow-channel", {"channel": art}),
        ("imagine-admin limits", {"images_per_window": 1, "max_queued": 1}),
        ("imagine-admin show", {}),
    ):
        reply = await ephemeral_reply(fake, name, options, user=plain)
        assert reply.startswith("⚠️") and "Manage Server" in reply, (name, reply)
        assert f"<@&{fake.moderator_role.id}>" in reply  # the configured moderator role

    shown = await ephemeral_reply(fake, "imagine-admin show", {}, user=fake.owner)
    assert "**Channels:** all" in shown and "**Blocked words:** none" in shown, shown
    assert "**Images per window:** bot default" in shown, shown
    await imagine(fake, {"prompt": f"a {word}", "steps": 2}, user=plain)  # nothing was blocked

    manager = fake.add_user("manager", roles=[fake.add_role("Managers", MANAGE_GUILD)])
    reply = await ephemeral_reply(fake, "imagine-admin block-word", {"word": word}, user=manager)
    assert f"`{word}`" in reply, reply
    reply = await ephemeral_reply(
        fake, "imagine-admin unblock-word", {"word": word}, user=fake.moderator
    )
    assert "**Blocked words:** none" in reply, reply


async def test_odd_characters_and_huge_names_get_short_clear_answers(
    fake: FakeDiscord, debug_bot: BotProcess
) -> None:
    user = fake.add_user("odd_inputs")
    reply = await ephemeral_reply(
        fake, "imagine", {"prompt": "\u200b\u200c\u200d\u2060\ufeff \u3000"}, user=user
    )
    assert reply.startswith("⚠️ prompt"), reply

    reply = await ephemeral_reply(
        fake, "imagine", {"prompt": "a fox", "model": "m" * 6000}, user=user
    )
    assert reply.startswith("⚠️ model") and len(reply) <= 2000, reply[:300]

    final = await imagine(
        fake,
        {"prompt": "a\x00 fox\x1b[2J\nat\tdusk\x7f", "negative": "\x07blur\x00ry", "steps": 2},
        user=user,
    )
    _, info = parse_png(final.attachments[0].content)
    assert [p.value for p in info.samplers[0].prompts] == ["a fox[2J at dusk"]
    assert [p.value for p in info.samplers[0].negative_prompts] == ["blurry"]


async def test_the_debug_log_holds_no_interaction_token(
    fake: FakeDiscord, debug_bot: BotProcess
) -> None:
    user = fake.add_user("debug_logger")
    await imagine(fake, {"prompt": "a quiet log", "steps": 2}, user=user)
    await ephemeral_reply(fake, "queue", {}, user=user)

    # discord.py logs the URLs of its webhook calls (the token is in their path) at DEBUG.
    for _ in range(int(WAIT * 10)):
        if "/webhooks/" in debug_bot.log_text():
            break
        await asyncio.sleep(0.1)
    log = debug_bot.log_text()
    assert " DEBUG " in log
    tokens = [interaction.token for interaction in fake.interactions]
    assert tokens
    assert [token for token in tokens if token in log] == []
    assert fake.token not in log
    assert "[redacted]" in log


async def test_everything_the_bot_writes_is_private(
    fake: FakeDiscord, debug_bot: BotProcess
) -> None:
    await imagine(fake, {"prompt": "a private fox", "steps": 2}, user=fake.add_user("private"))
    data = debug_bot.config.parent / "data"
    written = list(data.rglob("*"))
    names = {path.name for path in written}
    assert any(name.endswith(".png") for name in names), names
    assert any(name.endswith("-wal") for name in names), names  # SQLite's own files too
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path}: {path.stat().st_mode:o}"
