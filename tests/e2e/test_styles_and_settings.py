"""Styles ([[styles]], the `style` option, `--style`, a server's default style) and a user's
own defaults (/settings with select menus and a form), as users meet them."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from PIL import Image

from inference.a1111_params import ParsedParameters, parse_parameters
from inference.images import read_parameters
from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess
from tests.e2e.conftest import module_bot
from tests.e2e.fakediscord import CallbackType, FakeDiscord, MessageRecord
from tests.e2e.results import has_images
from tests.e2e.test_bot import ephemeral_reply, imagine

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]
WAIT = 60.0
SETTINGS = """
[rate_limits]
images_per_window = 40
[queue]
max_queued_per_user = 4

[[styles]]
name = "cinematic"
prompt = "cinematic still of {prompt}, film grain"
negative_prompt = "cartoon"

[[styles]]
name = "sketch"
prompt = "pencil sketch"
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    async with module_bot(fake, tiny_model, tmp_path_factory.mktemp("styles"), SETTINGS) as process:
        yield process


def parameters(message: MessageRecord) -> tuple[Image.Image, ParsedParameters]:
    data = message.attachments[0].content
    text = read_parameters(data)
    assert text is not None
    return Image.open(io.BytesIO(data)), parse_parameters(text)


async def test_a_style_wraps_the_prompt_as_option_or_flag(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("stylist")
    final = await imagine(
        fake,
        {"prompt": "a fox", "negative": "blur", "style": "cinematic", "steps": 2},
        user=user,
    )
    _, params = parameters(final)
    assert params.prompt == "cinematic still of a fox, film grain"
    assert params.negative_prompt == "blur, cartoon"
    final = await imagine(fake, {"prompt": "a fox --style sketch", "steps": 2}, user=user)
    assert parameters(final)[1].prompt == "a fox, pencil sketch"  # no {prompt}: appended
    refused = await ephemeral_reply(
        fake, "imagine", {"prompt": "a fox", "style": "baroque"}, user=user
    )
    assert "style: unknown style 'baroque'; available: cinematic, sketch" in refused


async def test_a_server_default_style_applies_unless_a_member_picks_another_or_none(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("member")
    reply = await ephemeral_reply(fake, "imagine-admin style", {"style": "sketch"}, user=fake.owner)
    assert "**Default style:** sketch" in reply
    try:
        final = await imagine(fake, {"prompt": "a barn", "steps": 2}, user=user)
        assert parameters(final)[1].prompt == "a barn, pencil sketch"
        final = await imagine(fake, {"prompt": "a barn", "style": "none", "steps": 2}, user=user)
        assert parameters(final)[1].prompt == "a barn"
        final = await imagine(fake, {"prompt": "a barn --style cinematic", "steps": 2}, user=user)
        assert parameters(final)[1].prompt == "cinematic still of a barn, film grain"
        refused = await ephemeral_reply(fake, "imagine-admin style", {"style": "sketch"}, user=user)
        assert "Manage Server" in refused  # members can't change it
    finally:
        await ephemeral_reply(fake, "imagine-admin style", {"style": "none"}, user=fake.owner)


async def test_settings_stores_my_defaults_and_explicit_options_win(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("settler")
    shown = fake.invoke_slash("settings", {}, user=user)
    assert await shown.wait_for_response(timeout=WAIT) == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE
    panel = await shown.wait_for_original(timeout=WAIT)
    assert panel.ephemeral and "Aspect —" in panel.content

    chosen = fake.choose(panel, "settings:aspect_ratio", ["16:9"], user=user)
    assert await chosen.wait_for_response(timeout=WAIT) == CallbackType.UPDATE_MESSAGE
    await fake.wait_for(lambda _: "Aspect `16:9`" in (panel.content or "") or None, timeout=WAIT)
    styled = fake.choose(panel, "settings:style", ["cinematic"], user=user)
    await styled.wait_for_response(timeout=WAIT)

    form = fake.click_button(panel, "settings:numbers", user=user)
    assert await form.wait_for_response(timeout=WAIT) == CallbackType.MODAL
    bad = fake.submit_modal(form, {"steps": "0", "count": ""}, user=user)
    await bad.wait_for_response(timeout=WAIT)
    assert bad.original is not None and "steps:" in bad.original.content
    form = fake.click_button(panel, "settings:numbers", user=user)  # a form is sent once
    assert await form.wait_for_response(timeout=WAIT) == CallbackType.MODAL
    good = fake.submit_modal(form, {"steps": "3", "count": "2"}, user=user)
    assert await good.wait_for_response(timeout=WAIT) == CallbackType.UPDATE_MESSAGE
    await fake.wait_for(lambda _: "Count `2`" in (panel.content or "") or None, timeout=WAIT)

    final = await imagine(fake, {"prompt": "a kettle"}, user=user)
    image, params = parameters(final)
    assert image.size == (80, 48)  # 16:9 on the 64-px model
    assert params.steps == 3 and params.prompt == "cinematic still of a kettle, film grain"
    assert sum(a.filename.startswith("job-") for a in final.attachments) == 2
    # What is typed wins; and a default aspect gives way to an explicit size.
    final = await imagine(
        fake, {"prompt": "a kettle --w 64 --h 64", "count": 1, "style": "none"}, user=user
    )
    image, params = parameters(final)
    assert image.size == (64, 64) and params.prompt == "a kettle"
    assert sum(a.filename.startswith("job-") for a in final.attachments) == 1

    # Another user cannot see the panel; a stranger's defaults are their own.
    other = await imagine(fake, {"prompt": "a kettle", "steps": 2}, user=fake.add_user("x"))
    assert parameters(other)[0].size == (64, 64)

    reset = fake.click_button(panel, "settings:reset", user=user)
    await reset.wait_for_response(timeout=WAIT)
    await fake.wait_for(lambda _: "Count —" in (panel.content or "") or None, timeout=WAIT)
    final = await imagine(fake, {"prompt": "a kettle", "steps": 2}, user=user)
    assert parameters(final)[0].size == (64, 64)
    assert has_images(final)
