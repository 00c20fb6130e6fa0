"""Parsing A1111 "parameters" text: round trips, A1111's own examples, other tools, garbage."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo
from sd_parsers import ParserManager

from inference.a1111_params import (
    ParsedParameters,
    parse_parameters,
    read_parameters_text,
    read_png_parameters,
)
from inference.images import encode_png, parameters_text
from inference.requests import clean_text
from inference.types import GenerationRequest

# The example in the docstring of A1111's parse_generation_parameters.
A1111_DOC_EXAMPLE = (
    "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, "
    "heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), "
    "detailed, intricate\n"
    "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, "
    "disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), "
    "(poorly drawn hands), messy drawing\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, "
    "Model hash: 45dee52b"
)

# What A1111 1.10 writes for a hires-fix image with LoRAs: multi-line prompt, quoted values.
A1111_HIRES = (
    "masterpiece, best quality, <lora:add_detail:0.6>,\n"
    "a castle on a hill, (sunset:1.2)\n"
    "BREAK dramatic sky\n"
    "Negative prompt: lowres, bad anatomy,\n"
    "watermark\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 4294967295, "
    "Size: 768x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    "Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 10, "
    'Hires upscaler: R-ESRGAN 4x+, Lora hashes: "add_detail: 7c6bad76eb54, more: 3b8aa1d351ef", '
    'TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)


def request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "prompt": "a fox",
        "negative_prompt": "blurry",
        "width": 512,
        "height": 768,
        "steps": 20,
        "guidance": 7.5,
        "seed": 42,
        "sampler": "Euler a",
        "count": 1,
        "model": "sd15",
    }
    return GenerationRequest(**{**values, **overrides})


@pytest.mark.parametrize(
    "req",
    [
        request(),
        request(negative_prompt=""),
        request(prompt="a cat: sitting, (masterpiece:1.2), [blue|red] eyes, 東京の夜"),
        request(negative_prompt="Steps: 3, Seed: 4, Size: 1x1"),  # looks like settings
        request(sampler="DPM++ 2M Karras", guidance=7.0, seed=2**32 - 1, steps=150),
        request(model="stabilityai/sdxl-turbo", guidance=0.0, width=1024, height=1024),
    ],
)
def test_round_trip_with_parameters_text(req: GenerationRequest) -> None:
    parsed = parse_parameters(parameters_text(req, req.seed))
    assert parsed == ParsedParameters(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        steps=req.steps,
        sampler=req.sampler,
        cfg_scale=req.guidance,
        seed=req.seed,
        width=req.width,
        height=req.height,
        model=req.model,
        extras={"Version": "imagine-bot"},
    )


def test_round_trip_of_a_grid_size() -> None:
    parsed = parse_parameters(parameters_text(request(), 7, size=(1024, 1536)))
    assert (parsed.seed, parsed.width, parsed.height) == (7, 1024, 1536)


text_strategy = st.text(st.characters(codec="utf-8"), min_size=1, max_size=80).map(clean_text)


@settings(max_examples=200)
@given(prompt=text_strategy, negative=text_strategy, seed=st.integers(0, 2**32 - 1))
def test_round_trip_of_any_cleaned_prompt(prompt: str, negative: str, seed: int) -> None:
    # Empty prompts are refused upstream; the format itself cannot tell this one apart.
    assume(prompt and not prompt.startswith("Negative prompt:"))
    parsed = parse_parameters(
        parameters_text(request(prompt=prompt, negative_prompt=negative), seed)
    )
    assert (parsed.prompt, parsed.negative_prompt, parsed.seed) == (prompt, negative, seed)
    assert parsed.extras == {"Version": "imagine-bot"}


def test_a1111_documented_example() -> None:
    parsed = parse_parameters(A1111_DOC_EXAMPLE)
    assert parsed.prompt.startswith("girl with an artist's beret,")
    assert parsed.prompt.endswith("detailed, intricate")
    assert parsed.negative_prompt.startswith("ugly, fat,")
    assert parsed.negative_prompt.endswith("messy drawing")
    assert (parsed.steps, parsed.sampler, parsed.cfg_scale, parsed.seed) == (
        20,
        "Euler a",
        7,
        965400086,
    )
    assert (parsed.width, parsed.height) == (512, 512)
    assert parsed.model is None and parsed.denoising_strength is None
    assert parsed.extras == {"Model hash": "45dee52b"}


def test_a1111_hires_example_with_quoted_values() -> None:
    parsed = parse_parameters(A1111_HIRES)
    assert parsed.prompt == (
        "masterpiece, best quality, <lora:add_detail:0.6>,\n"
        "a castle on a hill, (sunset:1.2)\n"
        "BREAK dramatic sky"
    )
    assert parsed.negative_prompt == "lowres, bad anatomy,\nwatermark"
    assert (parsed.steps, parsed.sampler, parsed.cfg_scale) == (28, "DPM++ 2M", 6.5)
    assert (parsed.seed, parsed.width, parsed.height) == (4294967295, 768, 512)
    assert parsed.model == "v1-5-pruned-emaonly"
    assert (parsed.denoising_strength, parsed.hires_upscale) == (0.45, 2.0)
    assert parsed.extras == {
        "Schedule type": "Karras",
        "Model hash": "6ce0161689",
        "Clip skip": "2",
        "Hires steps": "10",
        "Hires upscaler": "R-ESRGAN 4x+",
        "Lora hashes": "add_detail: 7c6bad76eb54, more: 3b8aa1d351ef",
        "TI hashes": "easynegative: c74b4e810b03",
        "Version": "v1.10.1",
    }


def test_json_objects_and_escaped_quotes_stay_whole() -> None:
    parsed = parse_parameters(
        'a dog\nSteps: 4, Seed: 1, Hashes: {"model": "abc", "lora:x": "def"}, '
        'ADetailer prompt: "a face, \\"smiling\\"", Sampler: Euler'
    )
    assert parsed.extras == {
        "Hashes": '{"model": "abc", "lora:x": "def"}',
        "ADetailer prompt": 'a face, "smiling"',
    }
    assert (parsed.steps, parsed.seed, parsed.sampler) == (4, 1, "Euler")


def test_without_a_settings_line_everything_is_prompt() -> None:
    assert parse_parameters("just a prompt, with: one colon") == ParsedParameters(
        prompt="just a prompt, with: one colon"
    )
    parsed = parse_parameters("line one\nline two\nNegative prompt: ugly")
    assert (parsed.prompt, parsed.negative_prompt, parsed.steps) == (
        "line one\nline two",
        "ugly",
        None,
    )


def test_settings_line_alone_and_empty_text() -> None:
    parsed = parse_parameters("Steps: 20, Sampler: Euler, Seed: 5")
    assert (parsed.prompt, parsed.steps, parsed.seed) == ("", 20, 5)
    assert parse_parameters("") == ParsedParameters(prompt="")
    assert parse_parameters("  \n \n") == ParsedParameters(prompt="")


def test_windows_line_endings() -> None:
    parsed = parse_parameters(parameters_text(request(), 1).replace("\n", "\r\n"))
    assert (parsed.prompt, parsed.negative_prompt, parsed.model) == ("a fox", "blurry", "sd15")


def test_values_that_do_not_convert_stay_in_extras() -> None:
    parsed = parse_parameters(
        "p\nSteps: many, Sampler: , CFG scale: nan, Seed: 1.5, Size: big, Denoising strength: inf"
    )
    assert parsed.steps is parsed.sampler is parsed.cfg_scale is parsed.seed is None
    assert parsed.width is parsed.height is parsed.denoising_strength is None
    assert parsed.extras == {
        "Steps": "many",
        "Sampler": "",
        "CFG scale": "nan",
        "Seed": "1.5",
        "Size": "big",
        "Denoising strength": "inf",
    }


def test_unterminated_quotes_fall_back_to_commas() -> None:
    parsed = parse_parameters('p\nSteps: 3, Lora hashes: "a: 1, b: 2, Seed: 9')
    assert parsed.steps == 3 and parsed.seed == 9
    assert parsed.extras["Lora hashes"] == '"a: 1'


def test_later_duplicate_keys_win_as_in_a1111() -> None:
    assert parse_parameters("p\nSteps: 1, Steps: 2, Seed: 3").steps == 2


@settings(max_examples=300)
@given(st.text())
def test_never_raises_on_any_text(text: str) -> None:
    parsed = parse_parameters(text)
    assert isinstance(parsed.prompt, str) and isinstance(parsed.negative_prompt, str)


fragments = st.sampled_from(
    ["Steps", "Seed", "Size", ":", ": ", ",", ", ", '"', '\\"', "{", "}", "[", "]", "\n",
     "Negative prompt:", "20", "512x512", "x", " ", "-", "CFG scale", "é", "\r\n", "nan"]
)  # fmt: skip


@settings(max_examples=500)
@given(st.lists(fragments, max_size=40).map("".join))
def test_never_raises_on_settings_like_garbage(text: str) -> None:
    parse_parameters(text)


# --- reading files -------------------------------------------------------------------------


def blank() -> Image.Image:
    return Image.new("RGB", (16, 16), "white")


def test_reads_the_png_written_by_the_bot() -> None:
    text = parameters_text(request(), 42)
    assert read_png_parameters(encode_png(blank(), text)) == parse_parameters(text)


def test_png_without_parameters_or_not_an_image() -> None:
    assert read_png_parameters(encode_png(blank(), None)) is None
    assert read_png_parameters(b"") is None
    assert read_png_parameters(b"hello world, not an image") is None
    gif = io.BytesIO()
    blank().save(gif, "GIF")
    assert read_png_parameters(gif.getvalue()) is None


def test_itxt_and_chunks_after_the_pixels_are_found() -> None:
    info = PngInfo()
    info.add_itxt("parameters", "über\nSteps: 5, Seed: 6, Sampler: Euler", zip=True)
    buffer = io.BytesIO()
    blank().save(buffer, "PNG", pnginfo=info)
    assert read_png_parameters(buffer.getvalue()) == parse_parameters(
        "über\nSteps: 5, Seed: 6, Sampler: Euler"
    )

    # Some tools append their text chunk after IDAT, just before IEND.
    plain = encode_png(blank(), None)
    payload = b"parameters\x00late\nSteps: 1, Seed: 2, Sampler: Euler"
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    late = plain[:-12] + chunk + plain[-12:]
    assert read_parameters_text(late) == "late\nSteps: 1, Seed: 2, Sampler: Euler"


def with_user_comment(fmt: str, comment: bytes) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
    buffer = io.BytesIO()
    blank().save(buffer, fmt, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize(
    ("prefix", "encoding"),
    [
        (b"UNICODE\x00", "utf-16-be"),  # A1111, through piexif
        (b"UNICODE\x00", "utf-16-le"),
        (b"ASCII\x00\x00\x00", "ascii"),
        (b"\x00" * 8, "utf-8"),
    ],
)
def test_jpeg_and_webp_user_comment(fmt: str, prefix: bytes, encoding: str) -> None:
    text = parameters_text(request(prompt="a lighthouse, stormy: sea"), 99)
    data = with_user_comment(fmt, prefix + text.encode(encoding))
    assert read_png_parameters(data) == parse_parameters(text)


def test_jpeg_without_exif_or_with_an_unknown_comment_code() -> None:
    buffer = io.BytesIO()
    blank().save(buffer, "JPEG")
    assert read_png_parameters(buffer.getvalue()) is None
    assert read_png_parameters(with_user_comment("JPEG", b"XYZ\x00\x00\x00\x00\x00hi")) is None


@pytest.mark.parametrize(
    "text",
    [
        A1111_DOC_EXAMPLE,
        "a red car\nSteps: 30, Sampler: DPM++ 2M, CFG scale: 5.5, Seed: 77, Size: 640x448, "
        "Model hash: abc123, Model: dreamshaper_8",
        parameters_text(request(), 42),
    ],
)
def test_agrees_with_sd_parsers(text: str) -> None:
    """sd-parsers reads the same PNG to the same prompt and settings (it splits quoted values
    on their commas, so the strings here have none)."""
    png = encode_png(blank(), text)
    theirs = ParserManager().parse(io.BytesIO(png))
    ours = read_png_parameters(png)
    assert theirs is not None and ours is not None
    sampler = theirs.samplers[0]
    assert theirs.full_prompt == ours.prompt
    assert theirs.full_negative_prompt == ours.negative_prompt
    assert sampler.name == ours.sampler
    assert float(sampler.parameters["cfg_scale"]) == ours.cfg_scale
    assert int(sampler.parameters["seed"]) == ours.seed
    assert int(sampler.parameters["steps"]) == ours.steps
    assert theirs.metadata["Size"] == f"{ours.width}x{ours.height}"
    model_name = sampler.model.name if sampler.model else None
    assert model_name == ours.model
