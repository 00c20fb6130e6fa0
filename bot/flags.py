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
class _Flag:
    option: str  # RequestOptions field
    convert: Callable[[str, str], Any]


_FLAGS: dict[str, _Flag] = {
    "ar": _Flag("aspect_ratio", _text),
    "aspect": _Flag("aspect_ratio", _text),
    "no": _Flag("negative_prompt", _text),
    "neg": _Flag("negative_prompt", _text),
    "negative": _Flag("negative_prompt", _text),
    "seed": _Flag("seed", _integer),
    "steps": _Flag("steps", _integer),
    "cfg": _Flag("guidance", _number),
    "guidance": _Flag("guidance", _number),
    "sampler": _Flag("sampler", _text),
    "model": _Flag("model", _text),
    "count": _Flag("count", _integer),
    "n": _Flag("count", _integer),
    "w": _Flag("width", _integer),
    "width": _Flag("width", _integer),
    "h": _Flag("height", _integer),
    "height": _Flag("height", _integer),
}
FLAG_NAMES = tuple(sorted(_FLAGS))

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
        flag = _FLAGS.get(name)
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
