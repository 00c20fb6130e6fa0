"""Turning what a user typed into a complete, validated GenerationRequest.

Every check raises InvalidRequestError naming the field and what is allowed, so the bot and the
CLI can show it as-is.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from inference.canvas import MAX_ZOOM, upscale_size, zoom_out_size
from inference.errors import InvalidRequestError
from inference.samplers import find_sampler
from inference.types import GenerationRequest, ImageSource, LoraSpec, ModelInfo, StyleSpec

MAX_SEED = 2**32 - 1  # A1111 seeds are 32-bit; keeps seeds portable between tools
ASPECT_CHOICES = ("1:1", "3:4", "4:3", "2:3", "3:2", "9:16", "16:9")
# Model, sampler and aspect names are short; an error quotes what was typed, so a longer one
# is refused by its length alone. 100 is also Discord's cap on an autocomplete choice's name.
MAX_NAME_CHARS = 100
MAX_UPSCALE = 4.0
NO_STYLE = "none"  # the style that opts out of a server's default style

# Characters that show nothing: controls, format characters (zero-width space/joiners, word
# joiner, BOM, bidi marks), separators, plus blank letters and variation selectors. Not "Cn":
# an emoji newer than Python's Unicode tables is unassigned to it, yet visible.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
_INVISIBLE_EXTRA = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800" + "".join(chr(c) for c in range(0xFE00, 0xFE10))
)


@dataclass(frozen=True)
class RequestLimits:
    """Operator-configured bounds on what one request may ask for."""

    max_pixels: int = 1536 * 1536
    max_side: int = 2048
    min_side: int = 32
    max_steps: int = 100
    max_guidance: float = 30.0
    max_count: int = 4
    max_prompt_chars: int = 1500


@dataclass(frozen=True)
class RequestOptions:
    """Options as a user gave them; None means "use the model's default"."""

    prompt: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    aspect_ratio: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    sampler: str | None = None
    count: int | None = None
    model: str | None = None
    style: str | None = None  # a configured [[styles]] name, applied to the prompts
    source: ImageSource | None = None  # start from this picture (img2img, upscale, zoom out)

    def __post_init__(self) -> None:
        for field, value in (
            ("model", self.model),
            ("sampler", self.sampler),
            ("aspect_ratio", self.aspect_ratio),
        ):
            if value is not None and len(value) > MAX_NAME_CHARS:
                raise InvalidRequestError(
                    field, f"is {len(value):,} characters; no name is longer than {MAX_NAME_CHARS}"
                )


def clean_text(text: str) -> str:
    """`text` on one line: whitespace runs (newlines, tabs) become one space, and other
    control characters (NUL, ESC, DEL, C1) and lone surrogates are dropped. What is left can
    go into a PNG text chunk, a Discord message and a log line without surprises."""
    kept = "".join(
        char for char in text if char.isspace() or unicodedata.category(char) not in ("Cc", "Cs")
    )
    return " ".join(kept.split())


def is_blank(text: str) -> bool:
    """True if `text` shows nothing: only whitespace, controls and invisible characters."""
    return all(
        char in _INVISIBLE_EXTRA or unicodedata.category(char) in _INVISIBLE_CATEGORIES
        for char in text
    )


def parse_aspect_ratio(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,2})\s*[:x/]\s*(\d{1,2})\s*", text)
    if not match:
        raise InvalidRequestError(
            "aspect_ratio", f"{text!r} is not W:H; use e.g. {', '.join(ASPECT_CHOICES)}"
        )
    w, h = int(match.group(1)), int(match.group(2))
    if w == 0 or h == 0 or not 0.25 <= w / h <= 4:
        raise InvalidRequestError(
            "aspect_ratio", f"{text!r} must be between 1:4 and 4:1 (e.g. 16:9)"
        )
    return w, h


def size_for_aspect(aspect_ratio: str, native_size: int) -> tuple[int, int]:
    """Width and height with about the model's trained pixel count at the given ratio.

    Sides snap to the model family's usual bucket grid (64 px for SDXL, 32 px for 512-px
    models), which gives the sizes SDXL was trained on (1344x768 for 16:9, 1152x896 for 4:3).
    """
    w_ratio, h_ratio = parse_aspect_ratio(aspect_ratio)
    if w_ratio < h_ratio:  # portrait is the landscape answer turned, so 9:16 mirrors 16:9
        landscape_w, landscape_h = size_for_aspect(f"{h_ratio}:{w_ratio}", native_size)
        return landscape_h, landscape_w
    grid = 64 if native_size >= 1024 else max(8, native_size // 16)
    area = native_size * native_size
    width = max(grid, int(math.sqrt(area * w_ratio / h_ratio) // grid) * grid)
    height = max(grid, round(area / width / grid) * grid)
    return width, height


def _check_side(field: str, value: int, limits: RequestLimits) -> None:
    if value % 8:
        raise InvalidRequestError(field, f"{value} is not a multiple of 8")
    if not limits.min_side <= value <= limits.max_side:
        raise InvalidRequestError(
            field, f"{value} is outside {limits.min_side}–{limits.max_side} pixels"
        )


def resolve_request(
    options: RequestOptions,
    model: ModelInfo,
    limits: RequestLimits = RequestLimits(),
    *,
    rng: random.Random | None = None,
    styles: Mapping[str, StyleSpec] | None = None,
    loras: Mapping[str, LoraSpec] | None = None,
) -> GenerationRequest:
    """Fill defaults from the model and check every option. Raises InvalidRequestError.

    A style is applied after the length check: its text is the operator's, not the user's."""
    operation = "txt2img" if options.source is None else options.source.operation
    if model.inpainting and operation != "zoom_out":
        # A 9-channel UNet needs a mask and a masked picture: it cannot start from noise alone.
        raise InvalidRequestError(
            "model",
            f"{model.name} is an inpainting model, for zoom out only; choose another model "
            f"for {'text-to-image' if operation == 'txt2img' else operation}",
        )
    prompt = clean_text(options.prompt)
    if not prompt:
        raise InvalidRequestError("prompt", "is empty; describe the image you want")
    if is_blank(prompt):
        raise InvalidRequestError(
            "prompt", "has only invisible characters; describe the image you want"
        )
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidRequestError(
            "prompt", f"is {len(prompt)} characters; at most {limits.max_prompt_chars} allowed"
        )
    negative = clean_text(options.negative_prompt or "")
    if is_blank(negative):
        negative = ""
    if options.style is not None and options.style.lower() != NO_STYLE:
        known = styles or {}
        if options.style not in known:
            available = ", ".join(sorted(known)) or "none configured"
            raise InvalidRequestError(
                "style", f"unknown style {options.style!r}; available: {available}"
            )
        prompt, negative = known[options.style].apply(prompt, negative)
        prompt, negative = clean_text(prompt), clean_text(negative)

    if options.source is not None:
        width, height = _size_from_source(options, limits)
    else:
        if options.aspect_ratio and (options.width or options.height):
            raise InvalidRequestError("aspect_ratio", "give either an aspect ratio or width/height")
        if options.aspect_ratio:
            width, height = size_for_aspect(options.aspect_ratio, model.native_size)
        else:
            width = options.width or model.native_size
            height = options.height or model.native_size
    _check_side("width", width, limits)
    _check_side("height", height, limits)
    if width * height > limits.max_pixels:
        raise InvalidRequestError(
            "size",
            f"{width}x{height} is {width * height:,} pixels; at most {limits.max_pixels:,} "
            f"allowed (e.g. {math.isqrt(limits.max_pixels) // 8 * 8} square)",
        )

    # The model's default must not exceed the operator's cap, or a plain request would fail.
    steps = min(model.default_steps, limits.max_steps) if options.steps is None else options.steps
    if not 1 <= steps <= limits.max_steps:
        raise InvalidRequestError("steps", f"{steps} is outside 1–{limits.max_steps}")
    guidance = model.default_guidance if options.guidance is None else options.guidance
    if not (math.isfinite(guidance) and 0 <= guidance <= limits.max_guidance):
        raise InvalidRequestError("guidance", f"{guidance} is outside 0–{limits.max_guidance:g}")
    count = 1 if options.count is None else options.count
    if not 1 <= count <= limits.max_count:
        raise InvalidRequestError("count", f"{count} is outside 1–{limits.max_count}")

    if options.seed is None:
        seed = (rng or random.SystemRandom()).randint(0, MAX_SEED - limits.max_count)
    else:
        seed = options.seed
        if not 0 <= seed <= MAX_SEED - (count - 1):
            raise InvalidRequestError("seed", f"{seed} is outside 0–{MAX_SEED - (count - 1)}")

    if options.source is not None:
        _check_strength(options.source, steps)

    sampler = find_sampler(options.sampler or model.default_sampler).name
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative,
        width=width,
        height=height,
        steps=steps,
        guidance=float(guidance),
        seed=seed,
        sampler=sampler,
        count=count,
        model=model.name,
        source=options.source,
    )
    _check_loras(request, model, loras or {})
    return request


def _check_loras(
    request: GenerationRequest, model: ModelInfo, known: Mapping[str, LoraSpec]
) -> None:
    """Every `<lora:…>` names a configured LoRA for this model's family, with a weight."""
    for name, weight in request.loras:
        if name not in known:
            available = ", ".join(sorted(known)) or "none configured"
            raise InvalidRequestError("lora", f"unknown LoRA {name!r}; available: {available}")
        if not math.isfinite(weight):
            raise InvalidRequestError("lora", f"{name}: the weight must be a number")
        family = known[name].family
        if family is not None and family != model.family:
            raise InvalidRequestError(
                "lora", f"{name} is a LoRA for {family} models; {model.name} is {model.family}"
            )


def _size_from_source(options: RequestOptions, limits: RequestLimits) -> tuple[int, int]:
    """The result's size: the picture's own, upscaled, or the zoomed-out canvas. A picture
    sets the size, so a size option alongside it is an error rather than silently ignored."""
    source = options.source
    assert source is not None
    if options.aspect_ratio or options.width or options.height:
        raise InvalidRequestError(
            "aspect_ratio" if options.aspect_ratio else "size",
            "the picture sets the size; leave the size and aspect options out",
        )
    if source.width < 8 or source.height < 8:
        raise InvalidRequestError(
            "image", f"{source.width}x{source.height} is too small; at least 8x8 pixels"
        )
    if source.operation == "img2img":
        return source.width, source.height
    if source.operation == "upscale":
        if not (math.isfinite(source.scale) and 1 < source.scale <= MAX_UPSCALE):
            raise InvalidRequestError(
                "scale", f"must be more than 1 and at most {MAX_UPSCALE:g}, not {source.scale:g}"
            )
        size = upscale_size(source.width, source.height, source.scale)
        verb = f"upscaled ×{source.scale:g}"
    else:
        if not (math.isfinite(source.scale) and 1 < source.scale <= MAX_ZOOM):
            raise InvalidRequestError(
                "zoom", f"must be more than 1 and at most {MAX_ZOOM:g}, not {source.scale:g}"
            )
        size = zoom_out_size(source.width, source.height, source.scale)
        verb = f"zoomed out ×{source.scale:g}"
    width, height = size
    if width * height > limits.max_pixels or max(size) > limits.max_side:
        raise InvalidRequestError(
            "size",
            f"{source.width}x{source.height} {verb} would be {width}x{height}; this server "
            f"allows at most {limits.max_pixels:,} pixels and {limits.max_side} per side",
        )
    return size


def _check_strength(source: ImageSource, steps: int) -> None:
    strength = source.strength
    if not (math.isfinite(strength) and 0 < strength <= 1):
        raise InvalidRequestError("strength", f"{strength:g} is outside 0–1 (0 excluded)")
    if steps * strength < 1:
        # img2img runs steps × strength of the schedule: below one step it would do nothing.
        raise InvalidRequestError(
            "strength",
            f"{strength:g} with {steps} steps runs no denoising step; "
            f"use at least {math.ceil(1 / strength)} steps or a higher strength",
        )
