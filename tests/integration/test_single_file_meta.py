"""The tensor-by-tensor single-file loader agrees with diffusers' own `from_single_file`.

`inference/models.py` reads single files itself (one tensor at a time, straight into the
target dtype: far less memory than diffusers' loader). diffusers' converter stays the
reference: for every family, both give the same networks, weight for weight.
"""

from __future__ import annotations

import pytest
import torch

from inference import models
from inference.testing import TinyModel
from inference.types import ModelSpec

COMPONENTS = {
    "sd1": ("unet", "vae", "text_encoder"),
    "sd2": ("unet", "vae", "text_encoder"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
}


@pytest.mark.parametrize("which", ["tiny_model", "tiny_model_sd2", "tiny_model_sdxl"])
def test_streamed_load_equals_diffusers_from_single_file(
    which: str, request: pytest.FixtureRequest
) -> None:
    tiny: TinyModel = request.getfixturevalue(which)
    ours = models.load_pipeline(
        ModelSpec(name="m", source=str(tiny.single_file), config=tiny.folder)
    )
    pipeline_class = type(ours)
    theirs = pipeline_class.from_single_file(
        str(tiny.single_file),
        config=str(tiny.folder),
        local_files_only=True,
        torch_dtype=torch.float32,
    )
    for component in COMPONENTS[tiny.family]:
        mine = getattr(ours, component).state_dict()
        reference = getattr(theirs, component).state_dict()
        assert mine.keys() == reference.keys(), component
        different = [k for k in mine if not torch.equal(mine[k], reference[k])]
        assert different == [], f"{component}: {different[:5]}"
