"""Midjourney-style inline flags: `a fox --ar 16:9 --seed 7 --no trees --steps 25`.

A flag's value runs to the next flag, so multi-word values work (`--sampler DPM++ 2M Karras`,
`--no blurry, text`). Unknown or malformed flags are errors that name the flag.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inference.errors import InvalidRequestError


def _integer(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidRequestError(f"--{flag}", f"{text!r} is not a whole number") from None


def _number(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequestError(f"--{flag}", f"{text!r} is not a number") from None
    return value


def _text(flag: str, text: str) -> str:
    return text


@dataclass(frozen=True)
class Flag:
    option: str  # the RequestOptions field it sets
    names: tuple[str, ...]  # without "--"; the first is the one help and error messages show
    convert: Callable[[str, str], Any]

    @property
    def spelling(self) -> str:
        return f"--{self.names[0]}"

    @property
    def value_type(self) -> type:
        """The Python type of the value, for command-line parsers."""
        return int if self.convert is _integer else float if self.convert is _number else str


# The one table of inline flags: the parser, /imagine's messages and help derive from it.
FLAGS: tuple[Flag, ...] = (
    Flag("aspect_ratio", ("ar", "aspect"), _text),
    Flag("negative_prompt", ("no", "neg", "negative"), _text),
    Flag("seed", ("seed",), _integer),
    Flag("steps", ("steps",), _integer),
    Flag("guidance", ("cfg", "guidance"), _number),
    Flag("sampler", ("sampler",), _text),
    Flag("model", ("model",), _text),
    Flag("style", ("style",), _text),
    Flag("count", ("n", "count"), _integer),
    Flag("width", ("w", "width"), _integer),
    Flag("height", ("h", "height"), _integer),
)
_BY_NAME: dict[str, Flag] = {name: flag for flag in FLAGS for name in flag.names}
_BY_OPTION: dict[str, Flag] = {flag.option: flag for flag in FLAGS}
FLAG_NAMES = tuple(sorted(_BY_NAME))
# Shown to users as an example; tests/unit/test_flags.py parses it.
EXAMPLE = "--ar 16:9 --seed 7 --no trees --steps 25"


def flag_for(option: str) -> str:
    """The flag users type for a RequestOptions field: flag_for("aspect_ratio") == "--ar"."""
    return _BY_OPTION[option].spelling


# A flag starts with "--" (or the em dash phones type for "--") after whitespace.
_FLAG_START = re.compile(r"(?:^|\s)(?:--|—)(?=\S)")


def parse_inline_flags(text: str) -> tuple[str, dict[str, Any]]:
    """Split `text` into the prompt and a dict of RequestOptions fields."""
    parts = _FLAG_START.split(text)
    prompt = parts[0].strip()
    options: dict[str, Any] = {}
    for part in parts[1:]:
        name, _, value = part.strip().partition(" ")
        name = name.lower()
        flag = _BY_NAME.get(name)
        if flag is None:
            raise InvalidRequestError(
                f"--{name}", f"unknown flag; use one of {', '.join('--' + f for f in FLAG_NAMES)}"
            )
        value = value.strip()
        if not value:
            raise InvalidRequestError(f"--{name}", "needs a value")
        if flag.option in options:
            raise InvalidRequestError(f"--{name}", "is given more than once")
        options[flag.option] = flag.convert(name, value)
    return prompt, options
