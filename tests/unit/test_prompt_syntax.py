"""The A1111 prompt syntax: attention weights, BREAK, LoRA tags."""

from __future__ import annotations

import pickle
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from inference.prompt_syntax import (
    BREAK,
    BreakMarker,
    ParsedPrompt,
    extract_loras,
    parse_attention,
    parse_prompt,
    strip_extra_networks,
)


def weights(text: str) -> list[list]:
    """The parse in A1111's own shape: [[text, weight], ...], BREAK as ["BREAK", -1]."""
    return [
        ["BREAK", -1] if isinstance(f, BreakMarker) else list(f)
        for f in parse_prompt(text).fragments
    ]


# The examples of A1111's parse_prompt_attention docstring, with its exact expected values.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [["normal text", 1.0]]),
        ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
        ("(unbalanced", [["unbalanced", 1.1]]),
        ("\\(literal\\]", [["(literal]", 1.0]]),
        ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ["a ", 1.0],
                ["house", 1.5730000000000004],
                [" ", 1.1],
                ["on", 1.0],
                [" a ", 1.1],
                ["hill", 0.55],
                [", sun, ", 1.1],
                ["sky", 1.4641000000000006],
                [".", 1.1],
            ],
        ),
    ],
)
def test_a1111_documented_examples(text: str, expected: list[list]) -> None:
    assert weights(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("((word))", [["word", 1.2100000000000002]]),
        ("[word]", [["word", 1 / 1.1]]),
        ("[[word]]", [["word", 1 / 1.1 / 1.1]]),
        ("(word:1.5)", [["word", 1.5]]),
        ("( word : 0.25 )", [[" word ", 0.25]]),
        ("(word:-1)", [["word", -1.0]]),
        ("(a (b:2) c)", [["a ", 1.1], ["b", 2.2], [" c", 1.1]]),
        ("[unbalanced", [["unbalanced", 1 / 1.1]]),
        ("a) b] c", [["a) b] c", 1.0]]),  # closing brackets with nothing open are text
        ("\\\\ \\[x\\)", [["\\ [x)", 1.0]]),
        ("a \\ b", [["a  b", 1.0]]),  # a lone backslash is dropped
        ("time: 3:30", [["time: 3:30", 1.0]]),
        ("a:1.5)", [["a:1.5)", 1.0]]),  # a weight with no open bracket is text
        ("", [["", 1.0]]),
    ],
)
def test_attention_weights(text: str, expected: list[list]) -> None:
    assert weights(text) == expected


def test_word_with_weight_one_is_the_plain_word() -> None:
    assert parse_prompt("a (cat:1.0) here").fragments == parse_prompt("a cat here").fragments


def test_invalid_weight_is_kept_as_text_where_a1111_raises() -> None:
    assert weights("(a:1.2.3)") == [["a:1.2.3", 1.1]]
    assert weights("(a:.)") == [["a:.", 1.1]]


def test_break_separates_chunks() -> None:
    parsed = parse_prompt("a red cat BREAK a blue dog")
    assert weights("a red cat BREAK a blue dog") == [
        ["a red cat", 1.0],
        ["BREAK", -1],
        ["a blue dog", 1.0],
    ]
    assert parsed.chunks == ((("a red cat", 1.0),), (("a blue dog", 1.0),))


def test_break_is_a_whole_upper_case_word() -> None:
    assert parse_prompt("BREAKFAST break Break").chunks == ((("BREAKFAST break Break", 1.0),),)
    assert parse_prompt("a,BREAK,b").chunks == (((("a,", 1.0),), ((",b", 1.0),)))


def test_break_inside_brackets_is_still_a_break() -> None:
    # A1111 would encode the word "BREAK" with weight -1.1 here; a chunk boundary is meant.
    assert weights("(a BREAK b)") == [["a", 1.1], ["BREAK", -1], ["b", 1.1]]


def test_break_marker_is_a_singleton() -> None:
    assert repr(BREAK) == "BREAK"
    assert pickle.loads(pickle.dumps(BREAK)) is BREAK
    assert type(BREAK)() is BREAK


def test_lora_tags_are_removed_and_returned() -> None:
    parsed = parse_prompt("a cat <lora:cute_style:0.7>, (sharp:1.2) <lyco:film-grain> <lora:x>")
    assert parsed.loras == (("cute_style", 0.7), ("film-grain", 1.0), ("x", 1.0))
    assert "lora" not in parsed.text and "lyco" not in parsed.text
    assert weights("a cat <lora:cute_style:0.7>, (sharp:1.2)") == [
        ["a cat , ", 1.0],
        ["sharp", 1.2],
    ]


def test_lora_weight_forms() -> None:
    assert extract_loras("<lora:a:0.5:0.2>") == (("a", 0.5),)  # te, unet: the first
    assert extract_loras("<lora:a:te=0.3:unet=1>") == (("a", 0.3),)
    assert extract_loras("<lora:a:-1>") == (("a", -1.0),)
    assert extract_loras("<lora:a:abc>") == (("a", 1.0),)  # not a number: default
    assert extract_loras("<LoRA:a:2>") == (("a", 2.0),)
    assert extract_loras("<lora::1> <lora: :1>") == ()
    assert extract_loras("<hypernet:h:1> <lora:no-close") == ()


def test_every_extra_network_tag_is_stripped() -> None:
    assert strip_extra_networks("a <hypernet:h:1> b <lora:l> c <not a tag>") == (
        "a  b  c <not a tag>"
    )


def test_parsed_prompt_is_frozen_and_hashable() -> None:
    parsed = parse_prompt("(a:1.2) BREAK <lora:b:0.5>")
    assert isinstance(parsed, ParsedPrompt)
    assert hash(parsed) == hash(parse_prompt("(a:1.2) BREAK <lora:b:0.5>"))
    with pytest.raises(AttributeError):
        parsed.loras = ()  # type: ignore[misc]


# --- A1111's parse_prompt_attention, as the oracle for fuzzing ------------------------------

_RE_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:", re.X
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def a1111_parse_prompt_attention(text: str) -> list[list]:
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start_position: int, multiplier: float) -> None:
        for p in range(start_position, len(res)):
            res[p][1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        text = m.group(0)
        weight = m.group(1)
        if text.startswith("\\"):
            res.append([text[1:], 1.0])
        elif text == "(":
            round_brackets.append(len(res))
        elif text == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif text == ")" and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif text == "]" and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            parts = re.split(_RE_BREAK, text)
            for i, part in enumerate(parts):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, 1.1)
    for pos in square_brackets:
        multiply_range(pos, 1 / 1.1)
    if len(res) == 0:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


syntax = st.lists(
    st.sampled_from(
        [
            *["(", ")", "[", "]", ":", ":1.5)", ": 0.5 )", ":2)", "\\", "\\(", "\\]", "\\\\"],
            *["a", "cat", " ", ", ", "BREAK", " BREAK ", "<lora:x:0.5>", "1", "."],
        ]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=500)
@given(syntax)
def test_same_as_a1111_wherever_a1111_means_something(text: str) -> None:
    try:
        expected = a1111_parse_prompt_attention(strip_extra_networks(text))
    except ValueError:  # a weight A1111 cannot read
        assume(False)
    # BREAK inside brackets: A1111 turns it into a weighted word (see above).
    assume(all(weight == -1 for part, weight in expected if part == "BREAK"))
    assert weights(text) == expected


@settings(max_examples=1000)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    parsed = parse_prompt(text)
    assert parsed.chunks
    assert all(isinstance(w, float) for chunk in parsed.chunks for _, w in chunk)


@settings(max_examples=500)
@given(syntax)
def test_never_raises_on_syntax_soup(text: str) -> None:
    parse_prompt(text)
    parse_attention(text)
