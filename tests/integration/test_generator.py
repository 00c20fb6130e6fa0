"""The product's generator on the tiny random model: real diffusers, real loading, 64x64."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sd_parsers import ParserManager

from inference.device import RuntimeOptions
from inference.errors import GenerationCancelled
from inference.generator import DiffusersGenerator
from inference.images import read_parameters
from inference.samplers import sampler_names
from inference.testing import TinyModel
from inference.types import GenerationRequest, ModelSpec


@pytest.fixture(scope="module")
def generator(tiny_model: TinyModel) -> DiffusersGenerator:
    spec = ModelSpec("tiny", str(tiny_model.single_file), config=tiny_model.folder)
    return DiffusersGenerator({"tiny": spec}, RuntimeOptions(preview_interval_s=0.0))


def request(**changes: Any) -> GenerationRequest:
    base = GenerationRequest(
        "a lighthouse at dusk", "fog", 64, 64, 4, 7.5, 42, "Euler a", 1, "tiny"
    )
    return dataclasses.replace(base, **changes)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def test_png_carries_metadata_a_third_party_parser_reads(generator: DiffusersGenerator) -> None:
    [result] = generator.generate([request()])
    image = Image.open(io.BytesIO(result.images[0].png))
    assert image.format == "PNG" and image.size == (64, 64)
    info = ParserManager().parse(image)
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    [sampler] = info.samplers
    assert sampler.name == "Euler a"
    assert sampler.parameters == {"cfg_scale": "7.5", "seed": "42", "steps": "4"}
    assert sampler.model.name == "tiny"
    assert [p.value for p in sampler.prompts] == ["a lighthouse at dusk"]
    assert [p.value for p in sampler.negative_prompts] == ["fog"]
    assert info.metadata["Size"] == "64x64"


def test_same_seed_same_bytes_other_seed_other_image(generator: DiffusersGenerator) -> None:
    [first] = generator.generate([request()])
    [again] = generator.generate([request()])
    [other] = generator.generate([request(seed=43)])
    assert first.images[0].png == again.images[0].png
    assert np.abs(pixels(first.images[0].png) - pixels(other.images[0].png)).mean() > 1


def test_batch_uses_seed_plus_i_and_each_image_reproduces_alone(
    generator: DiffusersGenerator,
) -> None:
    [batch] = generator.generate([request(count=4, seed=100)])
    assert [i.seed for i in batch.images] == [100, 101, 102, 103]
    assert batch.grid_png is not None
    grid = Image.open(io.BytesIO(batch.grid_png))
    assert grid.size == (128, 128)
    assert "Size: 128x128" in (read_parameters(batch.grid_png) or "")  # the grid's own size
    assert "Size: 64x64" in (read_parameters(batch.images[0].png) or "")
    [alone] = generator.generate([request(seed=102)])
    # Batched and single matmuls may round differently; the picture is the same.
    difference = np.abs(pixels(batch.images[2].png) - pixels(alone.images[0].png))
    assert difference.max() <= 3
    assert np.abs(pixels(batch.images[0].png) - pixels(batch.images[1].png)).mean() > 1


def test_compatible_requests_share_one_call_with_their_own_seeds(
    generator: DiffusersGenerator,
) -> None:
    a, b = request(seed=7, prompt="a red fox"), request(seed=9, count=2, prompt="a blue bird")
    results = generator.generate([a, b])
    assert [i.seed for i in results[0].images] == [7]
    assert [i.seed for i in results[1].images] == [9, 10]
    [alone] = generator.generate([a])
    assert np.abs(pixels(results[0].images[0].png) - pixels(alone.images[0].png)).max() <= 3


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_sampler_generates(generator: DiffusersGenerator, sampler: str) -> None:
    [result] = generator.generate([request(sampler=sampler, steps=3, guidance=1.5)])
    assert pixels(result.images[0].png).std() > 0


def test_progress_previews_and_cancel(generator: DiffusersGenerator) -> None:
    seen = []
    generator.generate([request(steps=5)], lambda i, p: seen.append(p), want_previews=True)
    assert [p.step for p in seen] == [1, 2, 3, 4, 5]
    assert all(p.total == 5 for p in seen)
    previews = [p.preview for p in seen if p.preview]
    assert previews and Image.open(io.BytesIO(previews[0])).format == "JPEG"
    steps: list[Any] = []

    def cancel_after_two(index: int) -> bool:
        return len(steps) >= 2

    with pytest.raises(GenerationCancelled):
        generator.generate([request(steps=10)], lambda i, p: steps.append(p), cancel_after_two)
    assert len(steps) == 2


def test_cancelling_one_request_of_a_batch_keeps_the_other(generator: DiffusersGenerator) -> None:
    results = generator.generate([request(seed=1), request(seed=2)], None, lambda i: i == 0)
    assert results[0] is None and results[1] is not None


def test_out_of_memory_retries_lighter_once(
    generator: DiffusersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    loaded = generator.load("tiny")
    real_call = type(loaded.pipe).__call__
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(len(kwargs["prompt_embeds"]))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(loaded.pipe), "__call__", flaky)
    [result] = generator.generate([request(count=2)])
    assert calls == [2, 1, 1]  # the batch, then one image at a time
    assert len(result.images) == 2
    assert "out of GPU memory" in result.notes[0]
    assert not loaded.pipe.vae.use_tiling  # the lighter mode was for that job only


def test_sdxl_tiny_generates(tiny_model_sdxl: TinyModel) -> None:
    spec = ModelSpec("xl", str(tiny_model_sdxl.single_file), config=tiny_model_sdxl.folder)
    generator = DiffusersGenerator({"xl": spec}, RuntimeOptions())
    info = generator.model_info("xl")
    assert info.family == "sdxl"
    [result] = generator.generate([request(model="xl", width=64, height=64)])
    assert pixels(result.images[0].png).std() > 0


def test_clip_skip_reads_an_earlier_layer_and_says_so(tiny_model: TinyModel) -> None:
    results = {}
    for clip_skip in (None, 2):
        spec = ModelSpec(
            "tiny", str(tiny_model.single_file), config=tiny_model.folder, clip_skip=clip_skip
        )
        [result] = DiffusersGenerator({"tiny": spec}, RuntimeOptions()).generate([request()])
        assert result is not None
        results[clip_skip] = result.images[0].png
    assert "Clip skip" not in (read_parameters(results[None]) or "")
    assert "Clip skip: 2," in (read_parameters(results[2]) or "")
    assert not np.array_equal(pixels(results[None]), pixels(results[2]))
