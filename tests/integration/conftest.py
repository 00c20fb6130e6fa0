"""Fixtures the integration tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PICTURE_SIZE = 64


@pytest.fixture(scope="session")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64² PNG with structure everywhere (two gradients and a square), to start from."""
    ramp = np.linspace(0, 255, PICTURE_SIZE)
    pixels = np.stack(
        [
            np.tile(ramp, (PICTURE_SIZE, 1)),
            np.tile(ramp[:, None], (1, PICTURE_SIZE)),
            np.full((PICTURE_SIZE, PICTURE_SIZE), 90),
        ],
        axis=-1,
    ).astype(np.uint8)
    pixels[20:44, 20:44] = (240, 240, 20)
    path = tmp_path_factory.mktemp("pictures") / "source.png"
    Image.fromarray(pixels).save(path)
    return path
