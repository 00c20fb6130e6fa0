import dataclasses

import pytest

from bot.flags import EXAMPLE, FLAG_NAMES, FLAGS, _text, flag_for, parse_inline_flags
from inference.errors import InvalidRequestError
from inference.requests import RequestOptions


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


def test_one_table_owns_the_flags() -> None:
    # The source picture is an attachment or a button, never typed: it has no flag.
    fields = {f.name for f in dataclasses.fields(RequestOptions)} - {"prompt", "source"}
    assert {flag.option for flag in FLAGS} == fields  # every option has a flag, and only those
    names = [name for flag in FLAGS for name in flag.names]
    assert len(names) == len(set(names)) and tuple(sorted(names)) == FLAG_NAMES
    for flag in FLAGS:
        for name in flag.names:
            value = "1" if flag.convert is not _text else "x"
            assert parse_inline_flags(f"fox --{name} {value}")[1] == {
                flag.option: flag.convert(name, value)
            }
    assert flag_for("aspect_ratio") == "--ar" and flag_for("count") == "--n"


def test_the_example_shown_to_users_parses() -> None:
    prompt, options = parse_inline_flags(f"a fox {EXAMPLE}")
    assert prompt == "a fox" and len(options) == EXAMPLE.count("--")
