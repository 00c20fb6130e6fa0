"""Incomplete single files are named precisely however diffusers fails on them.

With `accelerate` installed diffusers builds networks on the meta device and a weight the file
lacks makes it fail with "Cannot copy out of meta tensor" instead of loading noise; the loader
then checks the file against networks built on the meta device from the configs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from inference import models
from inference.errors import CheckpointError
from inference.testing import TinyModel
from inference.types import ModelSpec


@pytest.mark.parametrize("which", ["tiny_model", "tiny_model_sdxl"])
def test_meta_networks_have_the_loaded_weight_names(
    which: str, request: pytest.FixtureRequest
) -> None:
    tiny: TinyModel = request.getfixturevalue(which)
    spec = ModelSpec(name="m", source=str(tiny.single_file), config=tiny.folder)
    plan = models._plan(spec, allow_pickle=False)
    on_meta = models._modules_on_meta(plan)
    pipe = models.load_pipeline(spec)
    for component, module in on_meta.items():
        assert set(module.state_dict()) == set(getattr(pipe, component).state_dict())
        assert all(p.is_meta for p in module.parameters())


def _meta_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusionPipeline

    def fail(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("Cannot copy out of meta tensor; no data!")

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", fail)


def test_incomplete_file_named_when_diffusers_fails_on_meta_weights(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = load_file(tiny_model.single_file)
    del tensors["model.diffusion_model.output_blocks.0.0.in_layers.0.weight"]
    path = tmp_path / "incomplete.safetensors"
    save_file(tensors, str(path))
    _meta_failure(monkeypatch)
    with pytest.raises(CheckpointError, match="lacks 1 unet weights"):
        models.load_pipeline(ModelSpec(name="m", source=str(path), config=tiny_model.folder))


def test_complete_file_keeps_the_original_error(
    tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    _meta_failure(monkeypatch)
    spec = ModelSpec(name="m", source=str(tiny_model.single_file), config=tiny_model.folder)
    with pytest.raises(CheckpointError, match="Cannot copy out of meta tensor"):
        models.load_pipeline(spec)
