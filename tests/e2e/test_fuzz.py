"""Property-based fuzzing of /imagine against the real bot process.

Hypothesis draws slash options (within the ranges and choices the bot registered, which the
local Discord enforces, as Discord's client does) and prompts full of inline flags: valid ones,
malformed ones, duplicates, em dashes, unicode, emoji, whitespace-only and over-long text.

The property, for every invocation: it ends, within a timeout, with EITHER an image (valid
PNGs whose A1111 ``parameters`` text names the seed, the seeds the embed shows, within the
configured limits) OR an ephemeral reply that is a clear error (starts with ⚠️ or ⏳, no
traceback). Nothing else: no public "❌ generation failed", no silence, no request the local
Discord refused. A request drawn without any corruption must give the image. Afterwards the
bot process is alive, answers a plain /imagine, and logged no traceback.

How Hypothesis meets asyncio here: ``@given`` cannot decorate an ``async def`` test, and the
bot and the local Discord live on the module's event loop (the ``fake`` fixture and the bot
process fixture below). So the async test defines a plain ``@given`` function and calls it in
a worker thread (``asyncio.to_thread``); each example hands its coroutine back to the running
module loop with ``asyncio.run_coroutine_threadsafe`` and blocks its own thread on the result.
The loop keeps serving the bot meanwhile, Hypothesis runs unmodified (its own loop, its own
failure reports), and each example's assertions run on the loop next to the state they check.
The ``@given`` function takes no pytest fixtures (it closes over them), so the module-scoped
bot is shared by all examples without tripping the function-scoped-fixture health check.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from inference.requests import ASPECT_CHOICES
from inference.testing import TinyModel
from tests.e2e.botprocess import BotProcess
from tests.e2e.conftest import start_bot
from tests.e2e.fakediscord import (
    CallbackType,
    FakeDiscord,
    InteractionHandle,
    MessageRecord,
    User,
)
from tests.e2e.fakediscord.commands import RegisteredCommand
from tests.e2e.fakediscord.constants import OptionType

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

MAX_STEPS = 8  # generations stay short: a tiny-model image in well under a second
MAX_SIDE = 128
EXAMPLE_TIMEOUT = 60.0  # one invocation to its image or error; generous for a busy CI box
FUZZ_CONFIG = f"""
[rate_limits]
images_per_window = 100000
window_minutes = 10.0
[queue]
max_queued_per_user = 100
[limits]
max_steps = {MAX_STEPS}
max_side = {MAX_SIDE}
max_pixels = {MAX_SIDE * MAX_SIDE}
"""
USERS = ("alice", "fuzz-bob", "fuzz-carol")
PROGRESS_PREFIXES = ("🕒", "🎨")  # queued and progress texts; anything else is an outcome
CLEAR_ERROR_PREFIXES = ("⚠️", "⏳")
SEED_IN_PARAMETERS = re.compile(r"(?:^|, )Seed: (\d+)(?:,|$)")
STEPS_IN_PARAMETERS = re.compile(r"(?:^|, )Steps: (\d+)(?:,|$)")

# Hypothesis settings for a slow, stateful, asynchronous target:
# - a few dozen examples keep the file near a minute on a 2-core CI machine;
# - deadline=None: a generation takes as long as it takes (timeouts are our own, above);
# - derandomize + no database: the same examples on every run and every machine;
# - no shrinking: every attempt costs a real generation, the bot's state (queue, history)
#   moves on between attempts, and a failing example is reported in full anyway.
FUZZ_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=(
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ),
    print_blob=False,
    report_multiple_bugs=False,
)


@dataclass(frozen=True)
class Invocation:
    """One /imagine: the options sent, by whom, and what must come of it."""

    options: dict[str, Any]
    user: int = 0  # index into USERS
    expected_seed: int | None = None  # the one seed we gave, which the image must have
    valid: bool = False  # nothing wrong was put in: it must give an image, not an error
    corruptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fragment:
    """An inline flag in the prompt, and the seed it sets if it sets one."""

    text: str
    seed: int | None = None


# --- strategies ---------------------------------------------------------------------------------
#
# An invocation is drawn as a valid request (each setting given as a slash option, as an inline
# flag, or not at all), then zero, one or two corruptions are applied: a bad or unknown flag, a
# duplicated flag, an option that conflicts with a flag, a value past the bot's limits, a
# strange prompt (whitespace only, over-long, random unicode), text after the last flag. Valid
# requests must give an image; corrupted ones may give either outcome, never anything else.

NICE_TEXT = (  # each under 75 CLIP tokens even with a random tail (see valid_prompt)
    "a fox",
    "lighthouse at dusk, oil painting",
    "🦊🌅✨",
    "東京の夜景",
    "ünïcödé façade",
    "Ωμέγα λ",
    "🏳️\u200d🌈 flag, 👩🏽\u200d🚀",
    "**bold** _it_ `code`",
    "@everyone <@1> <#2>",
    "a — b",  # an em dash followed by a space is punctuation, not a flag
    "x--y",  # no whitespace before the dashes: not a flag
    "\u200b\u200d zero width",
    "rtl \u202eevil",
)
# Letters, digits and symbols only: no dash can start a flag, no whitespace-only text.
nice_tail = st.text(st.characters(codec="utf-8", categories=("L", "N", "S")), max_size=8)
nice_text = st.builds(
    lambda text, tail: f"{text} {tail}".strip(), st.sampled_from(NICE_TEXT), nice_tail
)
any_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\n\t "),
    min_size=1,
    max_size=40,
)
strange_prompt = st.one_of(
    st.sampled_from((" ", " \t\n ", "\u3000", "")),  # whitespace only, or nothing but flags
    any_text,
    st.builds(  # over the 75-token limit, up to and past the 1,500-character cap
        lambda word, n: " ".join([word] * n),
        st.sampled_from(("word", "🦊", "长", "a,")),
        st.integers(60, 800),
    ),
)
dash = st.sampled_from(("--", "--", "--", "—"))  # phones type an em dash for "--"
ASPECTS_INLINE = (*ASPECT_CHOICES, "1:4", "4:1", "21:9", "1x1", "3/2", " 2 : 3 ")
SIDES = ("64", "64", "32", "48", "96", "128")
INVALID_FLAGS = (
    "--foo",
    "--foo bar",
    "--seed abc",
    "--seed",
    "--seed -1",
    "--seed 4294967296",
    "--seed 1e3",
    "--steps 0",
    "--steps -3",
    f"--steps {MAX_STEPS + 1}",
    "--steps 1000000000000000000000",
    "--steps " + "9" * 5000,  # past Python's int() digit limit
    "--cfg nan",
    "--cfg inf",
    "--cfg -1",
    "--cfg 31",
    "--cfg 7,5",
    "--ar 0:1",
    "--ar 5:1",
    "--ar wide",
    "--ar 16:9:1",
    "--sampler Nope",
    "--sampler",
    "--count 0",
    "--count 5",
    "--n 99",
    "--w 33",
    "--w 4096",
    "--h 0",
    "--model nope",
    "--model ../../etc/passwd",
    "---seed 3",
    "-- seed 3",
    "—",
    "——seed 3",
    "--no",
    "--ar 16:9 --w 64",
    "--seed ５",  # a full-width digit (Python's int() reads it)
)
CORRUPTIONS = (
    "invalid flag",
    "duplicated flag",
    "option and flag",
    "past the limits",
    "strange prompt",
    "text after flags",
    "any option value",
)


def option_strategy(spec: dict[str, Any]) -> st.SearchStrategy[Any] | None:
    """Any value the registered option accepts (Discord's client allows nothing else)."""
    kind = int(spec["type"])
    choices = spec.get("choices")
    if choices:
        return st.sampled_from([c["value"] for c in choices])
    if kind == OptionType.INTEGER:
        low, high = spec.get("min_value", -(2**53)), spec.get("max_value", 2**53)
        return st.one_of(st.integers(low, high), st.sampled_from((low, high)))
    if kind == OptionType.NUMBER:
        low, high = spec.get("min_value", -1e6), spec.get("max_value", 1e6)
        return st.one_of(
            st.floats(low, high, allow_nan=False, allow_infinity=False),
            st.sampled_from((low, high)),
        )
    if kind == OptionType.STRING:
        low, high = max(spec.get("min_length", 1), 1), spec.get("max_length", 6000)
        return st.one_of(nice_text, strange_prompt).filter(lambda t: low <= len(t) <= high)
    if kind == OptionType.BOOLEAN:
        return st.booleans()
    return None  # users, channels, attachments: /imagine has none


@st.composite
def invocations(draw: st.DrawFn, command: RegisteredCommand) -> Invocation:
    registered = {spec["name"]: spec for spec in command.options}
    options: dict[str, Any] = {}
    fragments: list[Fragment] = []

    def give(
        option: str, flags: tuple[str, ...], value: Any, text: str, *, required: bool = False
    ) -> None:
        """Give a setting as the option, as an inline flag, or (unless required) not at all."""
        ways = ["option", "inline"] if option in registered else ["inline"]
        where = draw(st.sampled_from(ways if required else [*ways, "none", "none"]))
        if where == "option":
            options[option] = value
        elif where == "inline":
            flag = f"{draw(dash)}{draw(st.sampled_from(flags))} {text}"
            fragments.append(Fragment(flag, value if option == "seed" else None))

    # Always steps: the model's default (25) is above this bot's cap of MAX_STEPS, and
    # resolve_request does not cap a default by the limits (every other default is usable).
    steps = draw(st.integers(1, MAX_STEPS))
    give("steps", ("steps",), steps, str(steps), required=True)
    seed = draw(st.integers(0, 2**32 - 4))  # valid for any count
    give("seed", ("seed",), seed, str(seed))
    count = draw(st.sampled_from((1, 1, 2, 3, 4)))
    give("count", ("count", "n"), count, str(count))
    guidance = draw(st.floats(0, 30))
    give("guidance", ("cfg", "guidance"), guidance, f"{guidance:g}")
    sampler = draw(st.sampled_from([c["value"] for c in registered["sampler"]["choices"]]))
    spelled = draw(st.sampled_from((sampler, sampler.lower(), sampler.upper().replace(" ", "_"))))
    give("sampler", ("sampler",), sampler, spelled)
    negative = draw(nice_text)
    give("negative", ("no", "neg", "negative"), negative, negative)
    give("model", ("model",), "tiny", "tiny")
    size = draw(st.sampled_from(("default", "aspect", "ar", "sides")))
    if size in ("aspect", "ar"):
        aspect = draw(st.sampled_from(registered["aspect"]["choices"]))["value"]
        if size == "aspect":
            options["aspect"] = aspect
        else:
            fragments.append(Fragment(f"{draw(dash)}ar {draw(st.sampled_from(ASPECTS_INLINE))}"))
    elif size == "sides":
        for flag in draw(st.sampled_from((("w",), ("h",), ("w", "h"), ("width", "height")))):
            fragments.append(Fragment(f"{draw(dash)}{flag} {draw(st.sampled_from(SIDES))}"))
    fragments = list(draw(st.permutations(fragments)))
    text = draw(nice_text)

    corruptions: tuple[str, ...] = ()  # about half the invocations stay valid
    if draw(st.booleans()):
        corruptions = tuple(draw(st.lists(st.sampled_from(CORRUPTIONS), min_size=1, max_size=2)))
    for corruption in corruptions:
        if corruption == "invalid flag":
            bad = Fragment(draw(st.sampled_from(INVALID_FLAGS)))
            fragments.insert(draw(st.integers(0, len(fragments))), bad)
        elif corruption == "duplicated flag" and fragments:
            fragments.append(draw(st.sampled_from(fragments)))
        elif corruption == "option and flag":
            if "steps" in options:
                fragments.append(Fragment(f"--steps {draw(st.integers(1, MAX_STEPS))}"))
            else:
                options["steps"] = draw(st.integers(1, MAX_STEPS))
        elif corruption == "past the limits":
            # The steps option is bounded by [limits] in Discord's own client, so too many
            # steps can only come as an inline flag.
            beyond: dict[str, Any] = draw(
                st.sampled_from(
                    (
                        {"model": draw(st.sampled_from(("sd15", "Tiny", "tiny ", "nope")))},
                        {"seed": 2**32 - 1, "count": draw(st.integers(2, 4))},
                        {},
                    )
                )
            )
            options.update(beyond)
            if not beyond:
                steps = draw(st.integers(MAX_STEPS + 1, 150))
                fragments.append(Fragment(f"--steps {steps}"))
        elif corruption == "strange prompt":
            text = draw(strange_prompt)
        elif corruption == "text after flags":
            fragments.append(Fragment(draw(st.one_of(nice_text, any_text))))
        elif corruption == "any option value":
            name = draw(st.sampled_from(sorted(registered)))
            strategy = option_strategy(registered[name])
            if strategy is not None and name != "prompt":
                options[name] = draw(strategy)

    prompt = " ".join([text, *(f.text for f in fragments)])
    spec = registered["prompt"]
    low, high = max(spec.get("min_length", 1), 1), spec.get("max_length", 6000)
    if len(prompt) > high:
        prompt, fragments = prompt[:high], []  # flags cut off: nothing to expect of them
    elif len(prompt) < low:
        prompt = "x"
    seeds = [f.seed for f in fragments if f.seed is not None]
    if "seed" in options:
        seeds.append(options["seed"])
    return Invocation(
        {"prompt": prompt, **options},
        user=draw(st.integers(0, len(USERS) - 1)),
        expected_seed=seeds[0] if len(seeds) == 1 else None,
        valid=not corruptions,
        corruptions=corruptions,
    )


# --- checking one invocation --------------------------------------------------------------------


def has_images(message: MessageRecord) -> bool:
    return any(a.filename.startswith("job-") for a in message.attachments)


def settled(handle: InteractionHandle) -> tuple[str, MessageRecord] | None:
    """What the invocation ended with, once it has ended."""
    for message in (handle.original, *handle.followups):
        if message is not None and message.ephemeral and message.content:
            return "ephemeral", message
    original = handle.original
    if original is not None and not original.ephemeral:
        if has_images(original):
            return "image", original
        if original.content and not original.content.startswith(PROGRESS_PREFIXES):
            return "public text", original  # e.g. "❌ Generation failed (job 7)"
    return None


def check_images(message: MessageRecord, invocation: Invocation) -> None:
    images = sorted(
        (a for a in message.attachments if a.filename.startswith("job-")),
        key=lambda a: int(a.filename.rsplit("-", 1)[1].removesuffix(".png")),
    )
    seeds = []
    for attachment in images:
        image = Image.open(io.BytesIO(attachment.content))
        assert image.format == "PNG", attachment.filename
        image.load()  # decodes every chunk: a truncated file fails here
        assert image.width <= MAX_SIDE and image.height <= MAX_SIDE, image.size
        parameters = image.info.get("parameters")
        assert isinstance(parameters, str), f"{attachment.filename} has no parameters chunk"
        settings_line = parameters.splitlines()[-1]
        seed = SEED_IN_PARAMETERS.search(settings_line)
        steps = STEPS_IN_PARAMETERS.search(settings_line)
        assert seed and steps, parameters
        assert 1 <= int(steps.group(1)) <= MAX_STEPS, parameters
        assert f"Size: {image.width}x{image.height}" in settings_line, parameters
        seeds.append(int(seed.group(1)))
    assert seeds == list(range(seeds[0], seeds[0] + len(seeds))), seeds  # image i: seed + i
    fields = {f["name"]: f["value"] for f in message.embeds[0]["fields"]}
    shown = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    assert fields["Seed"] == shown, (fields, seeds)
    if invocation.expected_seed is not None:
        assert seeds[0] == invocation.expected_seed, (seeds, invocation)


async def run_invocation(
    fake: FakeDiscord, invocation: Invocation, users: list[User]
) -> tuple[str, str]:
    handle = fake.invoke_slash("imagine", invocation.options, user=users[invocation.user])
    kind, message = await fake.wait_for(lambda _: settled(handle), timeout=EXAMPLE_TIMEOUT)
    assert not handle.rejected, f"the local Discord refused the bot's answer: {handle.rejected}"
    if kind == "ephemeral":
        text = message.content
        assert not invocation.valid, f"a valid request was refused: {text!r}"
        assert handle.callback_type == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE, handle
        assert text.startswith(CLEAR_ERROR_PREFIXES), f"not a clear error: {text!r}"
        assert "Traceback" not in text and len(text) <= 2000, text
        return kind, text
    assert kind == "image", f"ended without an image or a clear error: {message.content!r}"
    assert handle.callback_type == CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
    check_images(message, invocation)
    return kind, f"{len(message.attachments)} image(s)"


# --- fixtures and the test ----------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fuzz_bot(
    fake: FakeDiscord, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[BotProcess]:
    process = await start_bot(fake, tiny_model, tmp_path_factory.mktemp("fuzz-bot"), FUZZ_CONFIG)
    try:
        # The first image loads the model (seconds): outside any example's timeout.
        warm_up = fake.invoke_slash("imagine", {"prompt": "warm up", "steps": 1, "seed": 1})
        await warm_up.wait_for_original(has_images, timeout=120)
        yield process
    finally:
        try:
            if process.alive:
                code = await process.stop()
                assert code == 0, process.log_text()[-3000:]
        finally:
            await process.kill()


EXPLICIT = (  # always run, whatever Hypothesis draws
    Invocation({"prompt": "a fox —seed 5 --steps 2"}, expected_seed=5, valid=True),
    Invocation(
        {"prompt": "a fox --steps 2 --seed 9 --no text --ar 16:9 --cfg 4.5"},
        user=1,
        expected_seed=9,
        valid=True,
    ),
    Invocation(
        {"prompt": "a fox --steps 2 --sampler DPM++ 2M Karras --n 2", "seed": 0},
        user=2,
        expected_seed=0,
        valid=True,
    ),
    Invocation(
        {"prompt": "a fox", "steps": 1, "count": 4, "seed": 2**32 - 4},
        expected_seed=2**32 - 4,
        valid=True,
    ),
    Invocation({"prompt": "a fox", "steps": 1, "count": 4, "seed": 2**32 - 1}),
    Invocation({"prompt": "a fox --foo", "steps": 2}),
    Invocation({"prompt": "a fox --seed abc", "steps": 2}),
    Invocation({"prompt": "a fox --seed 1 --seed 2", "steps": 2}),
    Invocation({"prompt": "a fox --steps 2", "steps": 3}),
    Invocation({"prompt": " \t "}),
    Invocation({"prompt": "--steps 2 --seed 3"}),
    Invocation({"prompt": "🦊" * 1500}),
    # Valid, yet refused today: the model's default steps (25) are above limits.max_steps
    # and resolve_request does not cap a default it picked itself.
    Invocation({"prompt": "a fox"}),
)


async def test_every_imagine_ends_in_an_image_or_a_clear_error(
    fake: FakeDiscord, fuzz_bot: BotProcess
) -> None:
    loop = asyncio.get_running_loop()
    users = [fake.user, *(fake.add_user(name) for name in USERS[1:])]
    log_before = len(fuzz_bot.log_text())
    outcomes: dict[str, int] = {}

    def run_on_loop(invocation: Invocation) -> None:
        future = asyncio.run_coroutine_threadsafe(run_invocation(fake, invocation, users), loop)
        try:
            kind, _ = future.result(timeout=EXAMPLE_TIMEOUT + 15)
        finally:
            future.cancel()  # a no-op when done; stops a stuck example otherwise
        outcomes[kind] = outcomes.get(kind, 0) + 1
        assert fuzz_bot.alive, "the bot process died:\n" + fuzz_bot.log_text()[-3000:]

    def every_invocation(invocation: Invocation) -> None:
        run_on_loop(invocation)

    for invocation in EXPLICIT:
        every_invocation = example(invocation)(every_invocation)
    fuzz = FUZZ_SETTINGS(given(invocations(fake.command("imagine")))(every_invocation))
    await asyncio.to_thread(fuzz)

    # Both outcomes were exercised: a fuzzer that only ever sees errors proves little.
    assert outcomes.get("image", 0) >= 5 and outcomes.get("ephemeral", 0) >= 5, outcomes
    assert fuzz_bot.alive
    final = fake.invoke_slash("imagine", {"prompt": "still here", "steps": 2, "seed": 77})
    message = await final.wait_for_original(has_images, timeout=EXAMPLE_TIMEOUT)
    check_images(message, Invocation({}, expected_seed=77))
    log = fuzz_bot.log_text()[log_before:]
    assert "Traceback" not in log, log[log.find("Traceback") - 2000 :][:6000]
    assert fake.unknown_requests == []
