import random
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.errors import InvalidRequestError
from inference.requests import (
    MAX_NAME_CHARS,
    RequestLimits,
    RequestOptions,
    resolve_request,
    size_for_aspect,
)
from inference.samplers import find_sampler, sampler_names
from inference.types import GenerationRequest, ModelInfo

SD15 = ModelInfo("sd15", "sd1", "base", "single_file", 512, 25, 7.0, "DPM++ 2M Karras")


def resolve(**options: Any) -> GenerationRequest:
    return resolve_request(RequestOptions(**{"prompt": "a fox", **options}), SD15)


def test_defaults_come_from_the_model() -> None:
    request = resolve(seed=3)
    assert (request.width, request.height, request.steps, request.guidance) == (512, 512, 25, 7.0)
    assert request.sampler == "DPM++ 2M Karras" and request.model == "sd15" and request.count == 1


def test_random_seed_leaves_room_for_the_batch() -> None:
    request = resolve_request(RequestOptions("x", count=4), SD15, rng=random.Random(1))
    assert request.seed >= 0 and request.seed + 3 <= 2**32 - 1
    assert request.seeds() == tuple(request.seed + i for i in range(4))


@pytest.mark.parametrize(
    ("native", "aspect", "size"),
    [
        (1024, "16:9", (1344, 768)),
        (1024, "4:3", (1152, 896)),
        (1024, "9:16", (768, 1344)),
        (512, "1:1", (512, 512)),
        (512, "3:4", (448, 576)),
    ],
)
def test_aspect_ratios_map_to_family_sizes(native: int, aspect: str, size: tuple) -> None:
    assert size_for_aspect(aspect, native) == size


@pytest.mark.parametrize(
    ("options", "field", "fragment"),
    [
        ({"prompt": "   "}, "prompt", "empty"),
        ({"width": 500}, "width", "multiple of 8"),
        ({"width": 4096}, "width", "outside"),
        ({"width": 2048, "height": 2048}, "size", "at most"),
        ({"steps": 0}, "steps", "1–100"),
        ({"steps": 101}, "steps", "1–100"),
        ({"guidance": -1.0}, "guidance", "0–30"),
        ({"guidance": float("nan")}, "guidance", "outside"),
        ({"count": 5}, "count", "1–4"),
        ({"seed": -1}, "seed", "outside"),
        ({"seed": 2**32}, "seed", "outside"),
        ({"sampler": "Turbo Magic"}, "sampler", "Euler a"),
        ({"aspect_ratio": "wide"}, "aspect_ratio", "W:H"),
        ({"aspect_ratio": "10:1"}, "aspect_ratio", "1:4"),
        ({"aspect_ratio": "1:1", "width": 512}, "aspect_ratio", "either"),
    ],
)
def test_bad_input_names_the_field(options: dict, field: str, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve(**options)
    assert caught.value.field == field
    assert fragment in str(caught.value)


def test_a_long_prompt_is_limited_by_characters_only() -> None:
    # Past 75 CLIP tokens a prompt is encoded in chunks (inference/prompt_encoding.py).
    assert resolve_request(RequestOptions("word " * 300), SD15).prompt.count("word") == 300
    limits = RequestLimits(max_prompt_chars=10)
    with pytest.raises(InvalidRequestError, match="at most 10"):
        resolve_request(RequestOptions("a" * 11), SD15, limits)


def test_sampler_names_match_loosely() -> None:
    assert find_sampler("euler_a").name == "Euler a"
    assert find_sampler("dpm++ 2m karras").options == {"use_karras_sigmas": True}
    assert len(sampler_names()) <= 25  # Discord's cap on choices
    for required in (
        "Euler a",
        "Euler",
        "DPM++ 2M",
        "DPM++ 2M Karras",
        "DPM++ SDE Karras",
        "DDIM",
        "UniPC",
        "LCM",
    ):
        assert required in sampler_names()


def test_default_steps_respect_the_operator_cap() -> None:
    request = resolve_request(RequestOptions("x"), SD15, RequestLimits(max_steps=20))
    assert request.steps == 20


INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff \t\n\u3000\u00a0\u202e\u2800\ufe0f\x00\x1b"


@pytest.mark.parametrize(
    "prompt", ["\u200b", "\u200b\u200c\u200d", "\ufeff\u2060 \u200b", "\x00\x1b", INVISIBLE]
)
def test_a_prompt_of_only_invisible_characters_is_refused(prompt: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve(prompt=prompt)
    assert caught.value.field == "prompt"


@given(st.text(st.sampled_from(INVISIBLE), min_size=1))
def test_any_invisible_prompt_is_refused_naming_the_prompt(prompt: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve(prompt=prompt)
    assert caught.value.field == "prompt"


def test_control_characters_never_reach_the_request() -> None:
    request = resolve(
        prompt="a\x00 red\x1b[31m fox\x7f\x85\u009b\r\nat\tdusk",
        negative_prompt="\x07blurry\x1b\x00,\nugly",
    )
    assert request.prompt == "a red[31m fox at dusk"
    assert request.negative_prompt == "blurry, ugly"
    # Visible text in any script, emoji sequences and bidi marks are the user's to keep.
    text = "東京 🏳️\u200d🌈 \u202eevil"
    assert resolve(prompt=text).prompt == text
    assert resolve(negative_prompt="\u200b").negative_prompt == ""


@given(st.text(), st.text())
def test_no_control_character_survives_into_prompt_or_negative(prompt: str, negative: str) -> None:
    try:
        request = resolve(prompt=prompt, negative_prompt=negative)
    except InvalidRequestError as error:
        assert error.field == "prompt"
        return
    for text in (request.prompt, request.negative_prompt):
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in text), ascii(text)
        assert text == text.strip()
    assert request.prompt.encode("utf-8")  # fits a PNG iTXt chunk


@pytest.mark.parametrize("field", ["model", "sampler", "aspect_ratio"])
def test_an_over_long_name_is_refused_without_echoing_it(field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        RequestOptions("a fox", **{field: "x" * 6000})  # type: ignore[arg-type]
    assert caught.value.field == field
    assert "6,000 characters" in str(caught.value) and len(str(caught.value)) < 200
    RequestOptions("a fox", **{field: "x" * MAX_NAME_CHARS})  # type: ignore[arg-type]  # a long but sane name is fine
