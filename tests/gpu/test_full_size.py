"""Full-size SD 1.5 and SDXL architectures (random weights) on a CUDA GPU, through the
product's generator. Skipped without CUDA; run on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.timeout(600),
]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_full_size_generates_in_half_precision(arch: str, tmp_path: Path) -> None:
    from bench.bench_pipeline import random_full_size_model
    from inference.device import RuntimeOptions
    from inference.generator import DiffusersGenerator
    from inference.types import GenerationRequest

    spec = random_full_size_model(arch, tmp_path)
    generator = DiffusersGenerator({spec.name: spec}, RuntimeOptions())
    assert generator.placement.device.type == "cuda"
    size = generator.model_info(spec.name).native_size
    request = GenerationRequest("a lighthouse", "", size, size, 4, 7.0, 1, "Euler a", 2, spec.name)
    [result] = generator.generate([request])
    for image in result.images:
        pixels = np.asarray(Image.open(io.BytesIO(image.png)))
        assert pixels.shape == (size, size, 3)
        assert pixels.std() > 0  # fp16 overflow would give a flat (black) image
