"""The AUTOMATIC1111 / Forge prompt syntax: attention weights, BREAK and LoRA tags.

Same meaning as A1111's `modules/prompt_parser.py` (`parse_prompt_attention`) and
`modules/extra_networks.py`:

- `(text)` multiplies the weight of `text` by 1.1, `((text))` by 1.21, `[text]` divides by 1.1;
  `(text:1.5)` sets the multiplier to 1.5. Brackets nest and multiply.
- A bracket left open applies its multiplier to the rest of the prompt; a closing bracket with
  nothing open is ordinary text.
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters; a lone backslash is dropped.
- `BREAK` (a whole word, upper case) ends the current 75-token chunk.
- `<lora:name:weight>` and `<lora:name>` (weight 1.0), also spelt `<lyco:...>`, name a LoRA. All
  extra-network tags (`<word:...>`) are removed from the text, as A1111 removes them.

Where A1111 would fail or do something nobody means, this parser does the sensible thing and
never raises:
- a weight that is not a number (`(a:1.2.3)`, `(a:.)`) is kept as text (A1111 raises);
- `BREAK` inside brackets is still a chunk boundary (A1111 multiplies its internal marker
  weight of -1 and then encodes the literal word "BREAK" with a negative weight);
- a LoRA weight that is not a number counts as 1.0 (A1111 raises).

Prompt editing (`[from:to:when]`) and alternation (`[a|b]`) are not supported: their text is
read as ordinary (square-bracket) attention syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

ROUND_MULTIPLIER: Final = 1.1
SQUARE_MULTIPLIER: Final = 1 / 1.1
LORA_NETWORKS: Final = frozenset({"lora", "lyco"})


class BreakMarker:
    """The chunk boundary `BREAK` in a parsed prompt (a singleton: compare with `is`)."""

    _instance: BreakMarker | None = None

    def __new__(cls) -> BreakMarker:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "BREAK"

    def __reduce__(self) -> str:
        return "BREAK"


BREAK: Final = BreakMarker()

Fragment = tuple[str, float]
"""A piece of prompt text and its attention weight."""

# A1111's re_attention, token for token; the weight group is checked for being a number here.
_ATTENTION = re.compile(
    r"""
    \\\(|
    \\\)|
    \\\[|
    \\]|
    \\\\|
    \\|
    \(|
    \[|
    :\s*([+-]?[.\d]+)\s*\)|
    \)|
    ]|
    [^\\()\[\]:]+|
    :
    """,
    re.X,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.S)
# A1111's re_extra_net: <network:arguments>
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt read with A1111 syntax.

    `fragments` are (text, weight) pairs in order, with the `BREAK` marker between chunks;
    adjacent fragments of equal weight are merged, as A1111 merges them (the fragments are
    tokenised one by one, so their boundaries matter). `loras` are (name, weight) in order of
    appearance.
    """

    fragments: tuple[Fragment | BreakMarker, ...]
    loras: tuple[tuple[str, float], ...] = ()

    @property
    def chunks(self) -> tuple[tuple[Fragment, ...], ...]:
        """The fragments between BREAKs (at least one group, possibly empty)."""
        groups: list[list[Fragment]] = [[]]
        for fragment in self.fragments:
            if isinstance(fragment, BreakMarker):
                groups.append([])
            else:
                groups[-1].append(fragment)
        return tuple(tuple(group) for group in groups)

    @property
    def text(self) -> str:
        """The words without syntax (weights dropped, BREAK kept as the word)."""
        return "".join(" BREAK " if isinstance(f, BreakMarker) else f[0] for f in self.fragments)


def parse_prompt(text: str) -> ParsedPrompt:
    """Strip extra-network tags, collect LoRAs, and parse the attention syntax of the rest."""
    return ParsedPrompt(parse_attention(strip_extra_networks(text)), extract_loras(text))


def parse_attention(text: str) -> tuple[Fragment | BreakMarker, ...]:
    """A1111's parse_prompt_attention: (text, weight) fragments with BREAK markers.

    >>> parse_attention("an (important) word")
    (('an ', 1.0), ('important', 1.1), (' word', 1.0))
    """
    # Entries are [text, weight] lists, or None for BREAK (never multiplied, never merged).
    res: list[list | None] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for entry in res[start:]:
            if entry is not None:
                entry[1] *= multiplier

    def add_text(piece: str) -> None:
        for i, part in enumerate(_BREAK_WORD.split(piece)):
            if i > 0:
                res.append(None)
            res.append([part, 1.0])

    for match in _ATTENTION.finditer(text):
        token = match.group(0)
        weight_text = match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight_text is not None and round_brackets:
            weight = _number(weight_text)
            if weight is None:  # "(a:1.2.3)": A1111 raises; keep the text, close the bracket
                add_text(token[:-1])
                multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
            else:
                multiply_range(round_brackets.pop(), weight)
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            add_text(token)

    for position in round_brackets:
        multiply_range(position, ROUND_MULTIPLIER)
    for position in square_brackets:
        multiply_range(position, SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]

    # Merge runs of equal weight, as A1111 does.
    i = 0
    while i + 1 < len(res):
        current, following = res[i], res[i + 1]
        if current is not None and following is not None and current[1] == following[1]:
            current[0] += following[0]
            res.pop(i + 1)
        else:
            i += 1

    return tuple(BREAK if entry is None else (entry[0], entry[1]) for entry in res)


def extract_loras(text: str) -> tuple[tuple[str, float], ...]:
    """The (name, weight) of each `<lora:name[:weight]>` / `<lyco:...>` tag, in order.

    The weight is the first positional number after the name, or `te=`; 1.0 without one (or
    when it is not a number). Further arguments (`unet=`, `dyn=`) are ignored.
    """
    loras: list[tuple[str, float]] = []
    for match in _EXTRA_NETWORK.finditer(text):
        if match.group(1).lower() not in LORA_NETWORKS:
            continue
        name, *arguments = match.group(2).split(":")
        name = name.strip()
        if not name:
            continue
        weight = 1.0
        positional = [a for a in arguments if "=" not in a]
        named = dict(a.split("=", 1) for a in arguments if "=" in a)
        raw = positional[0] if positional else named.get("te")
        if raw is not None:
            number = _number(raw.strip())
            if number is not None:
                weight = number
        loras.append((name, weight))
    return tuple(loras)


def strip_extra_networks(text: str) -> str:
    """`text` without its extra-network tags (`<lora:...>`, `<lyco:...>`, `<hypernet:...>`)."""
    return _EXTRA_NETWORK.sub("", text)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None
