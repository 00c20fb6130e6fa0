"""A1111's prompt language through the bot: weights, long prompts, LoRA tags and the `lora`
option, embeddings, and the metadata image sites read."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from PIL import Image

from inference.a1111_params import parse_parameters
from inference.images import read_parameters
from inference.testing import TinyModel
from inference.testing_addons import save_tiny_embedding, save_tiny_lora
from tests.e2e.botprocess import BotProcess
from tests.e2e.conftest import module_bot
from tests.e2e.fakediscord import FakeDiscord, MessageRecord
from tests.e2e.test_bot import ephemeral_reply, imagine

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    directory = tmp_path_factory.mktemp("prompt-language")
    lora = save_tiny_lora(directory / "tiny-lora.safetensors", "sd1")
    embedding = save_tiny_embedding(directory / "tinyemb.safetensors", "sd1")
    settings = f"""
[rate_limits]
images_per_window = 40
[queue]
max_queued_per_user = 4

[[loras]]
name = "tiny"
source = {json.dumps(str(lora))}
family = "sd1"
triggers = ["sparkle"]

[[embeddings]]
name = "tinyemb"
source = {json.dumps(str(embedding))}
"""
    async with module_bot(fake, tiny_model, directory, settings) as process:
        yield process


def pixels_and_parameters(message: MessageRecord) -> tuple[bytes, str]:
    data = message.attachments[0].content
    text = read_parameters(data)
    assert text is not None
    return Image.open(io.BytesIO(data)).tobytes(), text


async def test_lora_tag_and_option_are_one_thing_and_weight_zero_is_none(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("lora-user")
    base = {"steps": 2, "seed": 21}
    tagged = await imagine(fake, {"prompt": "a (fox:1.3) <lora:tiny:0.8>", **base}, user=user)
    pixels, text = pixels_and_parameters(tagged)
    assert text.splitlines()[0] == "a (fox:1.3) <lora:tiny:0.8>"  # as typed, as A1111 keeps it
    assert "Lora hashes" in parse_parameters(text).extras
    by_option = await imagine(
        fake, {"prompt": "a (fox:1.3)", "lora": "tiny:0.8", **base}, user=user
    )
    assert pixels_and_parameters(by_option) == (pixels, text)

    plain = await imagine(fake, {"prompt": "a (fox:1.3)", **base}, user=user)
    zero = await imagine(fake, {"prompt": "a (fox:1.3) <lora:tiny:0>", **base}, user=user)
    assert pixels_and_parameters(zero)[0] == pixels_and_parameters(plain)[0]  # no leak either
    assert pixels_and_parameters(plain)[0] != pixels


async def test_weights_long_prompts_and_embeddings_change_the_picture(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("prompter")
    base = {"steps": 2, "seed": 8}
    images = {}
    for prompt in (
        "a red fox",
        "a (red:1.0) fox",
        "a (red:1.6) fox",
        "a red fox, " + "in a quiet snowy forest at dawn, " * 12 + "with mountains",
        "a red fox, " + "in a quiet snowy forest at dawn, " * 12 + "with lighthouses",
        "a tinyemb red fox",
    ):
        final = await imagine(fake, {"prompt": prompt, **base}, user=user)
        images[prompt] = pixels_and_parameters(final)[0]
    values = list(images.values())
    assert values[0] == values[1]  # weight 1.0 is no weight, byte for byte
    assert values[2] != values[0]  # a weight changes the image
    assert values[3] != values[4]  # words past token 75 are read
    assert values[5] != values[0]  # the embedding is used


async def test_unknown_loras_are_refused_and_autocomplete_shows_triggers(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("lora-typo")
    reply = await ephemeral_reply(fake, "imagine", {"prompt": "a fox <lora:tinny:1>"}, user=user)
    assert "lora: unknown LoRA 'tinny'; available: tiny" in reply
    reply = await ephemeral_reply(fake, "imagine", {"prompt": "a fox", "lora": "a b"}, user=user)
    assert "lora:" in reply and "name:weight" in reply
    choices = await fake.invoke_autocomplete("imagine", {"prompt": "x", "lora": "ti"}, "lora")
    assert choices == [{"name": "tiny — triggers: sparkle", "value": "tiny"}]
