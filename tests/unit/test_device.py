"""Where models run: the device check that stops a bad setting at start-up, and the number
format that `dtype = "auto"` picks (bf16 on CPUs with native bf16, fp32 on other CPUs)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import inference.device as device_module
import inference.models
from inference.device import (
    RuntimeOptions,
    check_device,
    choose_placement,
    cpu_has_native_bf16,
)
from inference.errors import ModelError
from inference.generator import DiffusersGenerator
from inference.types import ModelSpec


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def bf16_cpu(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)


# --- dtype = "auto" ----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_is_bf16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    bf16_cpu(monkeypatch, native)
    for device in ("auto", "cpu"):
        placement = choose_placement(RuntimeOptions(device=device))
        assert (placement.device.type, placement.dtype) == ("cpu", expected)


@pytest.mark.usefixtures("no_gpu")
def test_an_explicit_dtype_wins_over_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    bf16_cpu(monkeypatch, True)
    assert choose_placement(RuntimeOptions(dtype="float32")).dtype == torch.float32
    bf16_cpu(monkeypatch, False)
    assert choose_placement(RuntimeOptions(dtype="bfloat16")).dtype == torch.bfloat16


def test_auto_on_cuda_stays_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    bf16_cpu(monkeypatch, True)
    placement = choose_placement(RuntimeOptions())
    assert (placement.device.type, placement.dtype) == ("cuda", torch.float16)


def fake_probes(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: Any, amx: Any, onednn: Any = True
) -> None:
    def probe(value: Any) -> Any:
        def check() -> bool:
            if isinstance(value, Exception):
                raise value
            return bool(value)

        return check

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", probe(avx512_bf16), raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", probe(amx), raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", probe(onednn))


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "onednn", "native"),
    [
        (True, False, True, True),
        (False, True, True, True),
        (False, False, True, False),  # e.g. AVX512 without BF16: oneDNN would only emulate it
        (True, True, False, False),
        (RuntimeError("no such probe"), False, True, False),
        (True, False, RuntimeError("no oneDNN"), False),
    ],
)
def test_native_bf16_needs_the_instructions_and_onednn(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: Any, amx: Any, onednn: Any, native: bool
) -> None:
    fake_probes(monkeypatch, avx512_bf16, amx, onednn)
    assert cpu_has_native_bf16() is native


# --- a device this machine lacks -------------------------------------------------------------


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("cuda", "'cuda' but this machine has no CUDA GPU (torch.cuda.is_available() is false)"),
        ("cuda:1", "no CUDA GPU"),
        ("mps", "'mps' but Apple's Metal backend is not available"),
        ("gpu", "'gpu', which is not a device name"),
        ("meta", "not a device name"),
    ],
)
def test_a_missing_device_is_a_clear_error(name: str, says: str) -> None:
    with pytest.raises(ModelError) as error:
        check_device(name)
    assert says in str(error.value)
    assert str(error.value).startswith(f"inference.device is {name!r}")
    with pytest.raises(ModelError):
        choose_placement(RuntimeOptions(device=name))


def test_a_cuda_index_beyond_the_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ModelError, match=r"has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        check_device("cuda:2")
    assert check_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ModelError, match=r"has 1 CUDA GPU \(cuda:0\)"):
        check_device("cuda:1")


@pytest.mark.usefixtures("no_gpu")
def test_cpu_and_auto_always_work() -> None:
    assert check_device("cpu") == torch.device("cpu")
    assert choose_placement(RuntimeOptions(device="auto")).device.type == "cpu"


@pytest.mark.usefixtures("no_gpu")
def test_warm_up_fails_on_a_missing_device_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue's start(warm_up_model=...) runs warm_up before the bot connects to Discord."""

    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded a model on a device that does not exist")

    monkeypatch.setattr(inference.models, "load_pipeline", must_not_load)
    spec = ModelSpec("m", "./no-such-model.safetensors")
    generator = DiffusersGenerator({"m": spec}, RuntimeOptions(device="cuda"))
    with pytest.raises(ModelError, match="no CUDA GPU"):
        generator.warm_up("m")
