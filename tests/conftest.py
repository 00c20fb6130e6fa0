"""Shared fixtures. The environment lines run before any test module imports the HF stack."""

from __future__ import annotations

import os

# No network in tests: huggingface_hub, transformers and diffusers read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DIFFUSERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from inference.testing import TinyModel


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny random SD 1.x model, as a diffusers folder and as a single file (built once)."""
    from inference.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sd1"), "sd1")


@pytest.fixture(scope="session")
def tiny_model_sdxl(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny random SDXL model (two text encoders), both ways."""
    from inference.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sdxl"), "sdxl")


@pytest.fixture(scope="session")
def tiny_model_sd2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny random SD 2.x model (OpenCLIP layout, v-prediction), both ways."""
    from inference.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sd2"), "sd2")


E2E = os.path.join("tests", "e2e", "")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every end-to-end test starts the bot as a process against a local Discord: slow by
    # nature, so the whole directory carries the marker (`pytest -m "not slow"` skips it).
    for item in items:
        if E2E in str(item.path):
            item.add_marker(pytest.mark.slow)
