"""Memory and time of loading a single-file checkpoint, and of switching models.

    python -m bench.bench_memory              # full-size SD 1.5 fp16 file; appends a row
    python -m bench.bench_memory --no-record  # print only

The checkpoint is a full-size SD 1.5 in the original single-file layout, fp16, random weights
(about 2 GB; built once by `bench.common.full_size_sd15_single_file` and cached). Every
measurement runs in a fresh Python process, imports done first:

- load: `inference.models.load_pipeline` with the shipped config, in fp32 and in bf16;
- switch: a DiffusersGenerator with max_resident_models = 1 holding model A loads model B (the
  same file under another name): eviction, then the load.

Peak memory is the kernel's own high-water mark of the process's resident set (VmHWM; reset
through /proc/self/clear_refs just before a switch), as a multiple of the file size: absolute,
and above the process before the load (imports, Python, torch: about 0.3 GiB). "old" is how
imagine-bot loaded single files before (diffusers' `from_single_file`, which keeps the file's
state dict until every component is built), measured side by side; "old, no accelerate" passes
low_cpu_mem_usage=False (each network first initialised at random, then overwritten).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import (
    ROOT,
    append_row,
    commit,
    device,
    full_size_sd15_single_file,
    print_table,
    today,
)

SECTION = "## Model load memory"
GiB = 2**30
WAYS = ("new", "old", "old, no accelerate")
DTYPES = ("float32", "bfloat16")


# --- inside the measured process ------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def reset_peak() -> None:
    """Start the high-water mark over from the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def use_old_loader(low_cpu_mem_usage: bool) -> None:
    """Make inference.models load single files as it did before the streaming loader: one
    `from_single_file` call with the same configs, tokenizers and dtype arguments."""
    import diffusers

    from inference import models
    from inference.checkpoints import load_config_json
    from inference.tokens import tokenizer_for

    def old(plan: Any, torch_dtype: Any) -> Any:
        config_dir = plan.config_dir
        scheduler_cfg = load_config_json(config_dir, "scheduler", "scheduler_config.json")
        scheduler = getattr(diffusers, scheduler_cfg["_class_name"]).from_config(scheduler_cfg)
        return models._pipeline_type(plan.pipeline_class).from_single_file(
            str(plan.location),
            config=str(config_dir),
            local_files_only=True,
            scheduler=scheduler,
            tokenizer=tokenizer_for(config_dir, "tokenizer"),
            low_cpu_mem_usage=low_cpu_mem_usage,
            **models._dtype_kwargs(torch_dtype),
            **models._no_extras(plan.pipeline_class),
        )

    models._load_single_file = old


def child(mode: str, way: str, dtype: str, path: str) -> dict[str, float]:
    import diffusers  # noqa: F401  (imports before the first measurement)
    import torch
    import transformers  # noqa: F401

    from inference.device import RuntimeOptions
    from inference.generator import DiffusersGenerator
    from inference.models import inspect_model, load_pipeline
    from inference.types import ModelSpec

    if way != "new":
        use_old_loader(low_cpu_mem_usage=way == "old")
    spec = ModelSpec("a", path)
    inspect_model(spec)
    if mode == "load":
        base = rss()
        started = time.perf_counter()
        pipe = load_pipeline(spec, torch_dtype=getattr(torch, dtype))
        seconds = time.perf_counter() - started
        assert pipe.unet.dtype == getattr(torch, dtype)
        return {"base": base, "peak": peak_rss(), "after": rss(), "seconds": seconds}
    specs = {"a": spec, "b": ModelSpec("b", path)}
    options = RuntimeOptions(device="cpu", dtype=dtype, max_resident_models=1)  # type: ignore[arg-type]
    generator = DiffusersGenerator(specs, options)
    generator.model_info("b")
    generator.load("a")
    base = rss()
    reset_peak()
    started = time.perf_counter()
    generator.load("b")
    seconds = time.perf_counter() - started
    assert list(generator._loaded) == ["b"]
    return {"base": base, "peak": peak_rss(), "after": rss(), "seconds": seconds}


# --- the driver -------------------------------------------------------------------------------


def measure(mode: str, way: str, dtype: str, path: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.bench_memory", "--child", mode, way, dtype, str(path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {way} {dtype} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("MODE", "WAY", "DTYPE", "PATH"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    path = full_size_sd15_single_file()
    size = path.stat().st_size
    load_avg = os.getloadavg()[0]
    results: dict[tuple[str, str, str], dict[str, float]] = {}
    cases = [
        (mode, way, dtype)
        for dtype in DTYPES
        for way in WAYS
        for mode in ("load", "switch")
        if not (mode == "switch" and way == "old, no accelerate")
    ]
    # Repeats go round all cases, so that whatever else runs on the machine slows all alike;
    # the fastest run counts (the peak is the same every time).
    for _ in range(args.repeats):
        for mode, way, dtype in cases:
            r = measure(mode, way, dtype, path)
            print(
                f"  {mode} {way} {dtype}: {r['seconds']:.1f} s, peak {r['peak'] / GiB:.2f} "
                f"GiB (before {r['base'] / GiB:.2f}, after {r['after'] / GiB:.2f})",
                flush=True,
            )
            best = results.get((mode, way, dtype))
            if best is None or r["seconds"] < best["seconds"]:
                results[mode, way, dtype] = {**r, "peak": max(r["peak"], (best or r)["peak"])}

    def ratio(key: tuple[str, str, str], above_base: bool = False) -> str:
        r = results.get(key)
        if r is None:
            return "-"
        return f"{(r['peak'] - (r['base'] if above_base else 0)) / size:.2f}"

    def secs(key: tuple[str, str, str]) -> str:
        return f"{results[key]['seconds']:.1f}" if key in results else "-"

    print(
        f"\nfull-size SD 1.5 fp16 single file, {size / GiB:.2f} GiB; load average "
        f"{load_avg:.1f} -> {os.getloadavg()[0]:.1f}; peaks as multiples of the file size"
    )
    rows = [
        [
            dtype,
            way,
            secs(("load", way, dtype)),
            ratio(("load", way, dtype)),
            ratio(("load", way, dtype), above_base=True),
            secs(("switch", way, dtype)),
            ratio(("switch", way, dtype)),
            ratio(("switch", way, dtype), above_base=True),
        ]
        for dtype in DTYPES
        for way in WAYS
    ]
    print_table(
        [
            "dtype",
            "loader",
            "load s",
            "load peak ÷ file",
            "above start ÷ file",
            "switch s",
            "switch peak ÷ file",
            "above A loaded ÷ file",
        ],
        rows,
    )

    if not args.no_record:

        def pair(mode: str, dtype: str, above: bool = False) -> str:
            return f"{ratio((mode, 'old', dtype), above)} → {ratio((mode, 'new', dtype), above)}"

        append_row(
            SECTION,
            "`python -m bench.bench_memory`: a full-size SD 1.5 single file (fp16, random "
            "weights, ~2 GB) loaded with the shipped config by `load_pipeline`, each measurement "
            "in a fresh process. Peak = the process's resident-set high-water mark (VmHWM) ÷ "
            "the file size; in brackets the part above the process before the load. Switch: "
            "max_resident_models = 1, model A loaded, then model B (evict + load); peak from "
            "the moment A is loaded. old → new: diffusers' from_single_file (the loader before "
            "the streaming one) → the streaming loader, side by side in one run. Times: the "
            "fastest of N runs (all cases interleaved) on a shared 2-core machine.",
            [
                "date (UTC)",
                "device",
                "commit",
                "file GiB",
                "fp32 load peak ÷ file, old → new",
                "bf16 load peak ÷ file, old → new",
                "fp32 / bf16 switch peak ÷ file, old → new",
                "fp32 load s, old → new (old, no accelerate)",
                "bf16 load s, old → new (old, no accelerate)",
            ],
            [
                today(),
                device(),
                commit(),
                f"{size / GiB:.2f}",
                f"{pair('load', 'float32')} ({pair('load', 'float32', True)})",
                f"{pair('load', 'bfloat16')} ({pair('load', 'bfloat16', True)})",
                f"{pair('switch', 'float32')} / {pair('switch', 'bfloat16')}",
                f"{secs(('load', 'old', 'float32'))} → {secs(('load', 'new', 'float32'))} "
                f"({secs(('load', 'old, no accelerate', 'float32'))}); best of {args.repeats}",
                f"{secs(('load', 'old', 'bfloat16'))} → {secs(('load', 'new', 'bfloat16'))} "
                f"({secs(('load', 'old, no accelerate', 'bfloat16'))}); best of {args.repeats}",
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
