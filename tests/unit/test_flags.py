import pytest

from bot.flags import parse_inline_flags
from inference.errors import InvalidRequestError


def test_midjourney_style_flags() -> None:
    prompt, options = parse_inline_flags(
        "a fox in snow --ar 16:9 --seed 7 --no trees, people --steps 25 --sampler DPM++ 2M Karras"
    )
    assert prompt == "a fox in snow"
    assert options == {
        "aspect_ratio": "16:9",
        "seed": 7,
        "negative_prompt": "trees, people",
        "steps": 25,
        "sampler": "DPM++ 2M Karras",
    }


def test_em_dash_from_phones_and_plain_prompt() -> None:
    assert parse_inline_flags("cat —seed 3") == ("cat", {"seed": 3})
    assert parse_inline_flags("a well-lit room") == ("a well-lit room", {})


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("fox --size 4", "--size", "unknown flag"),
        ("fox --seed seven", "--seed", "not a whole number"),
        ("fox --cfg high", "--cfg", "not a number"),
        ("fox --seed", "--seed", "needs a value"),
        ("fox --seed 1 --seed 2", "--seed", "more than once"),
    ],
)
def test_bad_flags_are_named(text: str, field: str, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_inline_flags(text)
    assert caught.value.field == field
    assert fragment in str(caught.value)
