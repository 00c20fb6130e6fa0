"""Working from a picture, as users meet it: the buttons under every result (upscale, vary,
remix, zoom out, U1-U4/V1-V4), /imagine with an attached image, and bad attachments."""

from __future__ import annotations

import io
import struct
import zlib
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
from tests.e2e.fakediscord.interactions import InteractionHandle
from tests.e2e.results import has_images, job_of
from tests.e2e.test_bot import ephemeral_reply, imagine

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]
WAIT = 90.0
SETTINGS = """
[rate_limits]
images_per_window = 40
[queue]
max_queued_per_user = 4
[images]
max_attachment_bytes = 200000
[limits]
max_pixels = 16384
"""  # 128 x 128: the tiny model's 64 px results upscale once, not twice


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    async with module_bot(
        fake, tiny_model, tmp_path_factory.mktemp("image-buttons"), SETTINGS
    ) as process:
        yield process


def params_of(message: MessageRecord, index: int = 0) -> tuple[Image.Image, ParsedParameters]:
    data = message.attachments[index].content
    text = read_parameters(data)
    assert text is not None
    return Image.open(io.BytesIO(data)), parse_parameters(text)


def button_ids(message: MessageRecord) -> list[str]:
    return [
        component["custom_id"]
        for row in message.components
        for component in row.get("components", [])
        if component.get("custom_id")
    ]


async def press(fake: FakeDiscord, message: MessageRecord, custom_id: str, user) -> MessageRecord:
    """Click a button and return the result it makes (in the click's deferred message)."""
    handle = fake.click_button(message, custom_id, user=user)
    assert (
        await handle.wait_for_response(timeout=WAIT)
        == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    )
    return await handle.wait_for_original(has_images, timeout=WAIT)


async def refusal(handle: InteractionHandle, fake: FakeDiscord) -> str:
    """The ephemeral text the bot answered `handle` with (and no public leftovers)."""
    await handle.wait_for_response(timeout=WAIT)

    def reply(_: FakeDiscord) -> MessageRecord | None:
        messages = [m for m in [handle.original, *handle.followups] if m is not None]
        return next((m for m in messages if m.ephemeral and m.content), None)

    message = await fake.wait_for(reply, timeout=WAIT)
    assert "Traceback" not in message.content
    return message.content


def public_messages(fake: FakeDiscord) -> int:
    return sum(1 for m in fake.messages_in() if not m.ephemeral)


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_a_single_result_has_every_button_and_upscale_doubles_it(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("upscaler")
    final = await imagine(fake, {"prompt": "a red kite", "steps": 4, "seed": 77}, user=user)
    assert button_ids(final) == [
        "imagine:upscale:0",
        "imagine:subtle:0",
        "imagine:strong:0",
        "imagine:remix:0",
        "imagine:zoom:0",
        "imagine:reroll",
        "imagine:delete",
    ]
    upscaled = await press(fake, final, "imagine:upscale:0", user)
    image, params = params_of(upscaled)
    assert image.size == (128, 128)
    assert params.prompt == "a red kite"
    assert params.seed == 77  # the same picture, bigger
    assert params.hires_upscale == 2.0
    assert params.denoising_strength == 0.35
    # The upscale is itself a result with the single-image buttons; a second one would pass
    # the server's size limit, which the refusal says in numbers.
    assert "imagine:zoom:0" in button_ids(upscaled)
    text = await refusal(fake.click_button(upscaled, "imagine:upscale:0", user=user), fake)
    assert "128x128 upscaled ×2 would be 256x256" in text and "16,384 pixels" in text
    history = await ephemeral_reply(fake, "history", {}, user=user)
    assert f"of job {job_of(final)}, image 1" in history


async def test_vary_subtle_and_strong_keep_the_size_and_draw_a_new_seed(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("varier")
    final = await imagine(fake, {"prompt": "a blue boat", "steps": 4, "seed": 5}, user=user)
    source, _ = params_of(final)
    subtle = await press(fake, final, "imagine:subtle:0", user)
    strong = await press(fake, final, "imagine:strong:0", user)
    pictures = {source.tobytes()}
    for message, strength in ((subtle, 0.3), (strong, 0.6)):
        image, params = params_of(message)
        assert image.size == source.size
        assert params.denoising_strength == strength
        assert params.seed != 5
        pictures.add(image.tobytes())
    # How close each stays to the picture is measured in tests/integration (the tiny model's
    # random VAE scrambles pixels); here: three different pictures.
    assert len(pictures) == 3


async def test_remix_opens_a_form_with_the_prompt_and_varies_with_the_edited_one(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("remixer")
    final = await imagine(
        fake, {"prompt": "a green hill", "negative": "fog", "steps": 4}, user=user
    )
    shown = fake.click_button(final, "imagine:remix:0", user=user)
    assert await shown.wait_for_response(timeout=WAIT) == CallbackType.MODAL
    assert shown.modal is not None
    defaults = [
        component.get("value")
        for row in shown.modal["components"]
        for component in row["components"]
    ]
    assert defaults == ["a green hill", "fog"]
    submitted = fake.submit_modal(
        shown, {"prompt": "a green hill under snow", "negative": ""}, user=user
    )
    await submitted.wait_for_response(timeout=WAIT)
    remixed = await submitted.wait_for_original(has_images, timeout=WAIT)
    _, params = params_of(remixed)
    assert params.prompt == "a green hill under snow"
    assert params.negative_prompt == ""
    assert params.denoising_strength == 0.6


async def test_zoom_out_widens_the_canvas_and_keeps_the_middle(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("zoomer")
    final = await imagine(fake, {"prompt": "a tower", "steps": 4, "seed": 9}, user=user)
    source, _ = params_of(final)
    zoomed = await press(fake, final, "imagine:zoom:0", user)
    image, _ = params_of(zoomed)
    assert image.size == (96, 96)
    middle = image.crop((16, 16, 80, 80)).convert("L").getdata()
    kept = sum(abs(a - b) for a, b in zip(middle, source.convert("L").getdata(), strict=True))
    assert kept / (64 * 64) < 40  # the picture is still there, inside the new border


async def test_a_set_has_u_and_v_buttons_per_image(fake: FakeDiscord, bot: BotProcess) -> None:
    user = fake.add_user("grid")
    final = await imagine(
        fake, {"prompt": "two cups", "steps": 4, "seed": 100, "count": 2}, user=user
    )
    assert button_ids(final) == [
        "imagine:upscale:0",
        "imagine:upscale:1",
        "imagine:strong:0",
        "imagine:strong:1",
        "imagine:reroll",
        "imagine:delete",
    ]
    labels = [c["label"] for row in final.components for c in row["components"]]
    assert labels[:4] == ["U1", "U2", "V1", "V2"]
    upscaled = await press(fake, final, "imagine:upscale:1", user)
    image, params = params_of(upscaled)
    assert image.size == (128, 128) and params.seed == 101  # image 2 of the set
    varied = await press(fake, final, "imagine:strong:0", user)
    assert len([a for a in varied.attachments if a.filename.startswith("job-")]) == 2
    history = await ephemeral_reply(fake, "history", {}, user=user)
    assert f"of job {job_of(final)}, image 2" in history


async def test_a_reroll_of_a_variation_is_another_variation(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("variation-reroller")
    final = await imagine(fake, {"prompt": "a lamp", "steps": 4}, user=user)
    varied = await press(fake, final, "imagine:strong:0", user)
    rerolled = await press(fake, varied, "imagine:reroll", user)
    _, params = params_of(rerolled)
    assert params.denoising_strength == 0.6
    assert params.seed != params_of(varied)[1].seed
    history = await ephemeral_reply(fake, "history", {}, user=user)
    assert history.count(f"of job {job_of(final)}, image 1") == 2


async def test_imagine_with_an_attached_image_starts_from_it(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    user = fake.add_user("uploader")
    results = []
    for colour in ((200, 40, 40), (40, 40, 200)):
        handle = fake.invoke_slash(
            "imagine",
            {
                "prompt": "a sunset",
                "steps": 4,
                "seed": 3,
                "strength": 0.5,
                "image": fake.attachment("mine.png", png_bytes((80, 48), colour)),
            },
            user=user,
        )
        assert (
            await handle.wait_for_response(timeout=WAIT)
            == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
        )
        final = await handle.wait_for_original(has_images, timeout=WAIT)
        image, params = params_of(final)
        assert image.size == (80, 48)  # the picture sets the size
        assert params.denoising_strength == 0.5 and params.seed == 3
        results.append(image.tobytes())
    # Same prompt, seed and options: only the picture differs, and so does the result (the
    # tiny model's random VAE scrambles colours, so "still red" cannot be asked of it).
    assert results[0] != results[1]
    history = await ephemeral_reply(fake, "history", {}, user=user)
    assert "from an uploaded image" in history


def bomb_png() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("name", "content", "declared", "expected"),
    [
        ("huge.png", png_bytes((64, 64)), 50_000_000, "over the"),
        ("notes.txt", b"just some text, not a picture", None, "PNG, JPEG or WebP"),
        ("bomb.png", bomb_png(), None, "too large to open"),
        ("empty.png", b"", None, "empty"),
    ],
)
async def test_a_bad_attachment_gets_a_clear_private_refusal(
    fake: FakeDiscord, bot: BotProcess, name: str, content: bytes, declared, expected: str
) -> None:
    user = fake.add_user(f"bad-{name}")
    before = public_messages(fake)
    handle = fake.invoke_slash(
        "imagine",
        {"prompt": "a cat", "image": fake.attachment(name, content, size=declared)},
        user=user,
    )
    text = await refusal(handle, fake)
    assert text.startswith("⚠️ image:") and expected in text, text
    assert public_messages(fake) == before  # nothing public was posted, nothing left over


async def test_strength_without_an_image_is_refused(fake: FakeDiscord, bot: BotProcess) -> None:
    text = await ephemeral_reply(
        fake, "imagine", {"prompt": "a cat", "strength": 0.4}, user=fake.add_user("no-image")
    )
    assert "strength" in text and "image" in text


async def test_a_slow_download_is_acknowledged_in_time_and_a_bad_one_refused_privately(
    fake: FakeDiscord, bot: BotProcess
) -> None:
    """The CDN holds the file for 3.5 s: the bot acknowledges within Discord's 3 s anyway,
    then finishes. A file that turns out bad after such a wait replaces the public "thinking"
    message with a private refusal."""
    user = fake.add_user("slow-cdn")
    fake.stall_requests("GET", r"attachments/", seconds=3.5)
    handle = fake.invoke_slash(
        "imagine",
        {
            "prompt": "a slow boat",
            "steps": 4,
            "image": fake.attachment("s.png", png_bytes((64, 64))),
        },
        user=user,
    )
    assert (
        await handle.wait_for_response(timeout=WAIT)
        == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    )
    assert handle.ack_latency is not None and handle.ack_latency < 3.0
    final = await handle.wait_for_original(has_images, timeout=WAIT)
    assert params_of(final)[1].denoising_strength == 0.6  # [images] image_strength

    fake.stall_requests("GET", r"attachments/", seconds=3.5)
    bad = fake.invoke_slash(
        "imagine",
        {"prompt": "a slow cat", "image": fake.attachment("x.png", b"not a picture at all")},
        user=user,
    )
    text = await refusal(bad, fake)
    assert "PNG, JPEG or WebP" in text
    assert bad.ack_latency is not None and bad.ack_latency < 3.0
    assert bad.original is not None and bad.original.deleted  # no public "thinking…" left


async def test_a_failing_cdn_gets_a_private_try_again(fake: FakeDiscord, bot: BotProcess) -> None:
    """Discord's CDN answers 503 (and then 429): no job, no public message, a clear reply."""
    user = fake.add_user("cdn-down")
    before = public_messages(fake)
    for status in (503, 429):
        fake.fail_requests("GET", r"attachments/", status=status, count=None)
        try:
            handle = fake.invoke_slash(
                "imagine",
                {"prompt": "a cat", "image": fake.attachment("c.png", png_bytes((64, 64)))},
                user=user,
            )
            text = await refusal(handle, fake)
        finally:
            fake.clear_faults()
        assert "could not download your image" in text, text
    assert public_messages(fake) == before
