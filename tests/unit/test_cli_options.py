"""`imagine-bot generate` reads inline flags in the prompt as /imagine does."""

from __future__ import annotations

import argparse

import pytest

from bot.cli_generate import options_from_args
from bot.flags import FLAGS
from inference.errors import InvalidRequestError

NO_OPTIONS = dict.fromkeys(flag.option for flag in FLAGS)  # argparse's defaults


def args(prompt: str, **given: object) -> argparse.Namespace:
    return argparse.Namespace(prompt=prompt, **(NO_OPTIONS | given))


def test_inline_flags_become_options() -> None:
    options = options_from_args(args("a fox --ar 16:9 --seed 3 --no trees"), "tiny")
    assert options.prompt == "a fox"
    assert (options.aspect_ratio, options.seed, options.negative_prompt) == ("16:9", 3, "trees")
    assert options.model == "tiny"


def test_command_line_options_and_flags_combine() -> None:
    options = options_from_args(args("a fox --seed 3", steps=7, model="sdxl"), "tiny")
    assert (options.seed, options.steps, options.model) == (3, 7, "sdxl")


def test_the_same_option_both_ways_is_an_error_naming_it() -> None:
    with pytest.raises(InvalidRequestError) as error:
        options_from_args(args("a fox --seed 3", seed=4), "tiny")
    assert error.value.field == "seed"


def test_the_real_command_line_has_an_option_for_every_inline_flag() -> None:
    from bot.__main__ import _parser

    parsed = _parser().parse_args(["generate", "a fox --w 64", "--cfg", "5"])
    options = options_from_args(parsed, "tiny")  # reads one argument per flag in bot/flags.py
    assert (options.width, options.guidance) == (64, 5.0)


def test_the_both_ways_error_spells_the_inline_flag() -> None:
    with pytest.raises(InvalidRequestError, match="inline flag --ar"):
        options_from_args(args("a fox --aspect 16:9", aspect_ratio="1:1"), "tiny")
