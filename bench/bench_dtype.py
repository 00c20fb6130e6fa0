"""CPU number formats: fp32 against bf16, s/image and how far the images move.

    python -m bench.bench_dtype                     # full-size SD 1.5 (random weights), 256²
    python -m bench.bench_dtype --arch tiny --size 64 --steps 20 --no-record

Both generators (the product's DiffusersGenerator, `dtype = "float32"` and `"bfloat16"`) load
the same single file and stay loaded; calls alternate fp32, bf16, fp32, ... so that whatever
else runs on the machine slows both alike; best of `--repeats` each. The image difference is
between the two PNGs of the same request (same seed), in 0-255 levels per channel. The
full-size checkpoint is built once (random weights, `bench.common.full_size_sd15_single_file`)
and cached. `dtype = "auto"` picks bf16 on CPUs with native bf16 (AVX512_BF16 or AMX).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import (
    append_row,
    commit,
    device,
    full_size_sd15_single_file,
    print_table,
    tiny_single_file_spec,
    today,
)
from inference.device import DTypeName, RuntimeOptions, choose_placement, cpu_has_native_bf16
from inference.generator import DiffusersGenerator
from inference.types import GenerationRequest, ModelSpec

SECTION = "## CPU number formats"
DTYPES: tuple[DTypeName, ...] = ("float32", "bfloat16")


def image_difference(a: bytes, b: bytes) -> tuple[float, int]:
    """Mean and max absolute difference of two PNGs in 0-255 levels."""
    import numpy as np
    from PIL import Image

    pa, pb = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), dtype=np.int16) for x in (a, b))
    diff = np.abs(pa - pb)
    return float(diff.mean()), int(diff.max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        if args.arch == "tiny":
            spec = tiny_single_file_spec(Path(scratch), "m")
        else:
            spec = ModelSpec("m", str(full_size_sd15_single_file()))
        generators = {
            dtype: DiffusersGenerator({"m": spec}, RuntimeOptions(device="cpu", dtype=dtype))
            for dtype in DTYPES
        }
        request = GenerationRequest(
            "a lighthouse at dusk, oil painting",
            "blurry",
            args.size,
            args.size,
            args.steps,
            7.0,
            1234,
            "Euler",
            1,
            "m",
        )
        pngs: dict[str, bytes] = {}
        for dtype, generator in generators.items():
            [result] = generator.generate([request])  # load + warm-up
            assert result is not None
            pngs[dtype] = result.images[0].png
        seconds: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
        for _ in range(args.repeats):
            for dtype, generator in generators.items():
                started = time.perf_counter()
                generator.generate([request])
                seconds[dtype].append(time.perf_counter() - started)

    best = {dtype: min(s) for dtype, s in seconds.items()}
    speedup = best["float32"] / best["bfloat16"]
    mean_diff, max_diff = image_difference(pngs["float32"], pngs["bfloat16"])
    auto = choose_placement(RuntimeOptions(device="cpu")).describe()
    model = "SD 1.5 full size, random weights" if args.arch == "sd15" else "tiny"
    print(
        f"{model}, {args.size}x{args.size}, {args.steps} steps, Euler, CFG 7, "
        f"{os.cpu_count()} CPUs; native bf16: {cpu_has_native_bf16()}; auto -> {auto}"
    )
    print_table(
        ["dtype", "best s/image", "median s/image", "runs"],
        [
            [d, f"{best[d]:.2f}", f"{statistics.median(s):.2f}", " ".join(f"{x:.2f}" for x in s)]
            for d, s in seconds.items()
        ],
    )
    print(
        f"fp32 ÷ bf16 time: {speedup:.2f}x; image difference mean {mean_diff:.2f} / max {max_diff}"
    )

    if not args.no_record:
        append_row(
            SECTION,
            "`python -m bench.bench_dtype`: the product's generator on the CPU, `dtype` "
            "float32 against bfloat16, the same single file (full-size SD 1.5 with random "
            "weights unless noted), Euler, CFG 7, count 1; calls alternate between the two, "
            "best of N each. Image difference: the two PNGs of the same request, per channel in "
            '0-255 levels. `dtype = "auto"` picks bf16 where the CPU has native bf16 '
            "(AVX512_BF16 or AMX).",
            [
                "date (UTC)",
                "device",
                "commit",
                "model",
                "size",
                "steps",
                "fp32 s/image",
                "bf16 s/image",
                "fp32 ÷ bf16",
                "image diff mean / max",
                "auto picks",
            ],
            [
                today(),
                device(),
                commit(),
                model,
                f"{args.size}²",
                str(args.steps),
                f"{best['float32']:.2f}",
                f"{best['bfloat16']:.2f}",
                f"{speedup:.2f}",
                f"{mean_diff:.2f} / {max_diff}",
                auto,
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
