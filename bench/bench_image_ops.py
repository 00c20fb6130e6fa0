"""Image operations: s/image of upscale ×2 and a variation against text-to-image, side by side.

    python -m bench.bench_image_ops                 # tiny model, then full-size SD 1.5 (random)
    python -m bench.bench_image_ops --arch tiny --no-record

All three requests produce the same output size with the same steps, sampler and CFG, on the
product's DiffusersGenerator (CPU unless the machine has CUDA): text-to-image at `size`²;
upscale ×2 of a `size/2`² picture (Lanczos, then img2img at strength 0.35: steps × 0.35 denoising
steps plus a VAE encode); a variation (img2img at strength 0.6 of a `size`² picture). Calls
alternate between the three so whatever else runs slows them alike; best of `--repeats` each.
Ratios are what this measures; absolute times only mean something on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
from inference.device import RuntimeOptions
from inference.generator import DiffusersGenerator
from inference.types import GenerationRequest, ImageSource, ModelSpec

SECTION = "## Image operations"
UPSCALE_STRENGTH = 0.35
VARIATION_STRENGTH = 0.6
KINDS = ("txt2img", "upscale x2", "variation 0.6")


def requests_for(size: int, steps: int, folder: Path, generator: DiffusersGenerator) -> dict:
    """The three requests; the pictures are text-to-image results of the same model."""
    base = GenerationRequest(
        "a lighthouse at dusk", "blurry", size, size, steps, 7.0, 1234, "Euler", 1, "m"
    )
    pictures = {}
    for side in (size // 2, size):
        [result] = generator.generate([dataclasses.replace(base, width=side, height=side)])
        assert result is not None
        path = folder / f"picture-{side}.png"
        path.write_bytes(result.images[0].png)
        pictures[side] = path
    half = size // 2
    upscale = ImageSource(str(pictures[half]), half, half, "upscale", UPSCALE_STRENGTH, 2.0)
    variation = ImageSource(str(pictures[size]), size, size, "img2img", VARIATION_STRENGTH)
    return {
        "txt2img": base,
        "upscale x2": dataclasses.replace(base, source=upscale),
        "variation 0.6": dataclasses.replace(base, source=variation),
    }


def measure(spec: ModelSpec, size: int, steps: int, repeats: int) -> dict[str, list[float]]:
    generator = DiffusersGenerator({"m": spec}, RuntimeOptions())  # no previews asked
    with tempfile.TemporaryDirectory() as scratch:
        requests = requests_for(size, steps, Path(scratch), generator)
        for request in requests.values():  # warm-up: from_pipe, first-call costs
            [result] = generator.generate([request])
            assert result is not None and result.images[0].width == size
        seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for _ in range(repeats):
            for kind, request in requests.items():
                started = time.perf_counter()
                generator.generate([request])
                seconds[kind].append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("both", "tiny", "sd15"), default="both")
    parser.add_argument("--size", type=int, default=256, help="output side for sd15")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)

    runs: list[tuple[str, int, dict[str, list[float]]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        if args.arch in ("both", "tiny"):
            spec = tiny_single_file_spec(Path(scratch), "m")
            runs.append(("tiny", 128, measure(spec, 128, args.steps, max(3, args.repeats))))
        if args.arch in ("both", "sd15"):
            spec = ModelSpec("m", str(full_size_sd15_single_file()))
            seconds = measure(spec, args.size, args.steps, args.repeats)
            runs.append(("SD 1.5 full size, random weights", args.size, seconds))

    rows = []
    for model, size, seconds in runs:
        best = {kind: min(s) for kind, s in seconds.items()}
        rows.append(
            [
                model,
                f"{size}²",
                str(args.steps),
                *(f"{best[kind]:.2f}" for kind in KINDS),
                f"{best['upscale x2'] / best['txt2img']:.2f}",
                f"{best['variation 0.6'] / best['txt2img']:.2f}",
            ]
        )
    columns = [
        "model",
        "output",
        "steps",
        "txt2img s/image",
        "upscale x2 s/image",
        "variation 0.6 s/image",
        "upscale ÷ txt2img",
        "variation ÷ txt2img",
    ]
    print(f"Euler, CFG 7, count 1, {os.cpu_count()} CPUs, best of N, calls alternating")
    print_table(columns, rows)
    if not args.no_record:
        for row in rows:
            append_row(
                SECTION,
                "`python -m bench.bench_image_ops`: the product's generator, the same output "
                "size and steps for all three (Euler, CFG 7, count 1): text-to-image; upscale ×2 "
                f"of a half-size picture (Lanczos, then img2img at strength {UPSCALE_STRENGTH}); "
                f"a variation (img2img at strength {VARIATION_STRENGTH}). Calls alternate, best "
                "of N each; the pictures are the model's own text-to-image results.",
                ["date (UTC)", "device", "commit", *columns],
                [today(), device(), commit(), *row],
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
