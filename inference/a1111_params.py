"""Reading A1111's "parameters" text back: the inverse of inference.images.parameters_text.

The format, as stable-diffusion-webui writes and parses it: the prompt (any number of lines),
then optionally lines starting "Negative prompt:", then one last line of "Key: value" pairs
separated by commas. A value holding a comma, colon or newline is written as a JSON string
(`Lora hashes: "a: 1234, b: 5678"`); some tools add JSON objects (`Hashes: {"model": ...}`).
Text from other tools, or typed by hand, is parsed as far as it goes: nothing here raises.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import ExifTags, Image

from inference.errors import InvalidRequestError
from inference.image_input import open_image

T = TypeVar("T")

NEGATIVE_PREFIX = "Negative prompt:"
# A1111's own key pattern: a word character, then at least one word character, space, "-" or
# "/". Its settings line is the last line, and only if at least 3 pairs are found on it.
_KEY = re.compile(r"\s*(\w[\w \-/]+):\s*")
_MIN_SETTINGS = 3
_SIZE = re.compile(r"(\d{1,6})x(\d{1,6})")
_INT = re.compile(r"[+-]?\d{1,20}")
_JSON = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedParameters:
    """What an A1111-style text says. A setting that is missing, or whose value does not
    convert (`Steps: many`), is None; an unconverted value stays in `extras` under its key."""

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    denoising_strength: float | None = None
    hires_upscale: float | None = None
    # Every other "Key: value" of the settings line, quoted values unquoted ("Model hash",
    # "Schedule type", "Version", "Lora hashes", ...).
    extras: Mapping[str, str] = field(default_factory=dict)


def parse_parameters(text: str) -> ParsedParameters:
    """Parse a "parameters" text. Never raises; without a settings line, all of it is prompt
    (and negative prompt). Like A1111, each prompt line is stripped of surrounding spaces."""
    *lines, last = text.replace("\r\n", "\n").strip().split("\n")
    fields = _settings(last)
    if fields is None:
        lines.append(last)
        fields = {}
    prompt, negative = _prompts(lines)
    size = _take(fields, "Size", _to_size)
    return ParsedParameters(
        prompt=prompt,
        negative_prompt=negative,
        steps=_take(fields, "Steps", _to_int),
        sampler=_take(fields, "Sampler", _to_text),
        cfg_scale=_take(fields, "CFG scale", _to_float),
        seed=_take(fields, "Seed", _to_int),
        width=size[0] if size else None,
        height=size[1] if size else None,
        model=_take(fields, "Model", _to_text),
        denoising_strength=_take(fields, "Denoising strength", _to_float),
        hires_upscale=_take(fields, "Hires upscale", _to_float),
        extras=fields,
    )


def read_png_parameters(data: bytes) -> ParsedParameters | None:
    """The parameters a PNG (text chunk), JPEG or WebP (EXIF UserComment) carries, or None if
    the file has none or is not such an image."""
    text = read_parameters_text(data)
    return None if text is None else parse_parameters(text)


def read_parameters_text(data: bytes) -> str | None:
    try:
        image = open_image(data)  # refuses other formats and oversized images from the header
    except InvalidRequestError:
        return None
    with image:
        try:
            if image.format == "PNG":
                return _png_text(image)
            exif = image.getexif().get_ifd(ExifTags.IFD.Exif)
            return _decode_user_comment(exif.get(ExifTags.Base.UserComment))
        except Exception:  # malformed metadata is "no metadata", whatever the reader raised
            return None


def _png_text(image: Image.Image) -> str | None:
    value = image.info.get("parameters")
    if value is None:
        # Chunks after the pixel data are only read by decoding the pixels: .text does that.
        value = getattr(image, "text", {}).get("parameters")
    return str(value) if isinstance(value, str) else None


def _decode_user_comment(raw: object) -> str | None:
    """EXIF UserComment: an 8-byte character-code prefix, then the text. A1111 writes
    "UNICODE" + UTF-16 big-endian (piexif); some tools write little-endian."""
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, bytes) and len(raw) > 8:
        prefix, body = raw[:8], raw[8:]
        if prefix == b"UNICODE\x00":
            text = _decode_utf16(body)
        elif prefix == b"JIS\x00\x00\x00\x00\x00":
            text = body.decode("shift_jis", errors="replace")
        elif prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
            text = body.decode("utf-8", errors="replace")
        else:
            return None
    else:
        return None
    text = text.rstrip("\x00")
    return text or None


def _decode_utf16(body: bytes) -> str:
    if body.startswith((b"\xfe\xff", b"\xff\xfe")):
        return body.decode("utf-16", errors="replace")
    # Mostly-ASCII text has its zero bytes first in big-endian, second in little-endian.
    little = body[1::2].count(0) > body[0::2].count(0)
    return body.decode("utf-16-le" if little else "utf-16-be", errors="replace")


def _prompts(lines: list[str]) -> tuple[str, str]:
    prompt: list[str] = []
    negative: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not negative and line.startswith(NEGATIVE_PREFIX):
            negative.append(line.removeprefix(NEGATIVE_PREFIX).strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    return "\n".join(prompt), "\n".join(negative)


def _settings(line: str) -> dict[str, str] | None:
    """The "Key: value" pairs of a settings line, or None if `line` is not one."""
    fields: dict[str, str] = {}
    found = 0
    position = 0
    while (match := _KEY.search(line, position)) is not None:
        value, position = _value(line, match.end())
        fields[match.group(1).strip()] = value
        found += 1
    return fields if found >= _MIN_SETTINGS else None


def _value(line: str, start: int) -> tuple[str, int]:
    """The value starting at `start` and where the next pair starts: a JSON string (unquoted),
    a JSON object or array (kept as written), else everything up to the next comma."""
    if start < len(line) and line[start] in '"{[':
        try:
            decoded, end = _JSON.raw_decode(line, start)
        except ValueError:
            pass
        else:
            rest = line[end:].lstrip()
            if not rest or rest.startswith(","):
                text = decoded if isinstance(decoded, str) else line[start:end]
                return text, len(line) - len(rest) + 1
    comma = line.find(",", start)
    end = len(line) if comma < 0 else comma
    return line[start:end].strip(), end + 1


def _take(fields: dict[str, str], key: str, convert: Callable[[str], T | None]) -> T | None:
    """The converted value of `key`, removed from `fields`; kept there if it does not convert."""
    raw = fields.get(key)
    value = None if raw is None else convert(raw)
    if value is not None:
        del fields[key]
    return value


def _to_int(text: str) -> int | None:
    return int(text) if _INT.fullmatch(text) else None


def _to_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _to_text(text: str) -> str | None:
    return text or None


def _to_size(text: str) -> tuple[int, int] | None:
    match = _SIZE.fullmatch(text)
    return (int(match.group(1)), int(match.group(2))) if match else None
