"""`imagine-bot generate` reads inline flags in the prompt as /imagine does."""

from __future__ import annotations

import argparse

import pytest

from bot.cli_generate import options_from_args
from inference.errors import InvalidRequestError

NO_OPTIONS = dict.fromkeys(
    (
        "negative",
        "width",
        "height",
        "aspect_ratio",
        "steps",
        "guidance",
        "seed",
        "sampler",
        "count",
        "model",
    ),
)


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
