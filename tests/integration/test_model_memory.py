"""Switching models must not hold two in memory: the evicted pipeline is gone before the next
one starts loading, whatever ran on it before (previews, callbacks, a failed job)."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import inference.models
from inference.device import RuntimeOptions
from inference.errors import GenerationCancelled, GenerationFailedError
from inference.generator import DiffusersGenerator
from inference.testing import TinyModel
from inference.types import GenerationRequest, ModelSpec

Watch = Callable[[list[weakref.ref[Any]]], list[list[bool]]]


@pytest.fixture
def generator(tiny_model: TinyModel) -> DiffusersGenerator:
    specs = {
        "a": ModelSpec("a", str(tiny_model.folder)),
        "b": ModelSpec("b", str(tiny_model.single_file), config=tiny_model.folder),
    }
    return DiffusersGenerator(specs, RuntimeOptions(max_resident_models=1, preview_interval_s=0))


def request(model: str, **changes: Any) -> GenerationRequest:
    base = GenerationRequest("a lighthouse", "", 64, 64, 3, 7.5, 42, "Euler a", 1, model)
    return dataclasses.replace(base, **changes)


def references(generator: DiffusersGenerator, name: str) -> list[weakref.ref[Any]]:
    """Weak references to the loaded pipeline and its heavy parts; no strong one survives."""
    pipe = generator.load(name).pipe
    return [weakref.ref(x) for x in (pipe, pipe.unet, pipe.vae, pipe.text_encoder)]


@pytest.fixture
def alive_when_loading(monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    """Records, at the moment each load_pipeline call starts, which watched objects are alive.

    No gc.collect() here: the generator must have dropped (and collected) the old model."""
    watched: list[weakref.ref[Any]] = []
    seen: list[list[bool]] = []
    real = inference.models.load_pipeline

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append([ref() is not None for ref in watched])
        return real(*args, **kwargs)

    monkeypatch.setattr(inference.models, "load_pipeline", spy)

    def watch(refs: list[weakref.ref[Any]]) -> list[list[bool]]:
        watched[:] = refs
        seen.clear()
        return seen

    yield watch


def switch_and_check(
    generator: DiffusersGenerator,
    refs: list[weakref.ref[Any]],
    watch: Watch,
) -> None:
    seen = watch(refs)
    generator.load("b")
    assert seen == [[False] * len(refs)], "the evicted model was alive when the next one loaded"
    assert list(generator._loaded) == ["b"]


def test_switch_drops_the_evicted_model_before_loading_the_next(
    generator: DiffusersGenerator, alive_when_loading: Watch
) -> None:
    refs = references(generator, "a")
    assert all(ref() is not None for ref in refs)
    switch_and_check(generator, refs, alive_when_loading)


def test_nothing_from_a_generation_keeps_the_evicted_model(
    generator: DiffusersGenerator, alive_when_loading: Watch
) -> None:
    progress: list[Any] = []
    results = generator.generate(
        [request("a", count=2)], lambda i, p: progress.append(p), lambda i: False, True
    )
    assert results[0] is not None and any(p.preview for p in progress)
    info = generator.model_info("a")
    refs = references(generator, "a")
    switch_and_check(generator, refs, alive_when_loading)
    assert generator.model_info("a") is info  # the cheap description stays cached


def test_a_kept_cancellation_does_not_keep_the_evicted_model(
    generator: DiffusersGenerator, alive_when_loading: Watch
) -> None:
    with pytest.raises(GenerationCancelled) as cancelled:
        generator.generate([request("a")], None, lambda i: True)
    kept = cancelled.value  # the queue keeps a job's error (JobHandle.error)
    refs = references(generator, "a")
    switch_and_check(generator, refs, alive_when_loading)
    assert kept.__traceback__ is not None  # still printable


def test_a_kept_out_of_memory_failure_does_not_keep_the_evicted_model(
    generator: DiffusersGenerator, alive_when_loading: Watch
) -> None:
    def out_of_memory(index: int) -> bool:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(GenerationFailedError) as failed:
        generator.generate([request("a")], None, out_of_memory)
    kept = failed.value
    assert kept.__cause__ is not None
    refs = references(generator, "a")
    switch_and_check(generator, refs, alive_when_loading)
