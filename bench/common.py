"""What every benchmark shares: the machine, the commit, percentiles, the results file."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import platform
import re
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inference.types import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: an actually observed value, no interpolation."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    except ImportError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {cpu} ({os.cpu_count()} CPUs){gpu},"
        f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        short = git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    try:
        # The results file itself changes with every run: it does not make the code dirty.
        dirty = bool(
            git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/RESULTS.md")
        )
    except (OSError, subprocess.CalledProcessError):
        dirty = False
    return f"{short}+dirty" if dirty else short


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def append_row(section: str, intro: str, columns: list[str], cells: list[str]) -> None:
    """Add one row under `section` in RESULTS.md, creating the section with its table."""
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    row = "| " + " | ".join(cells) + " |"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    if section not in lines:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{intro}\n\n{header}\n{row}\n"
    else:
        start = lines.index(section)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        last = end - 1
        while last > start and not lines[last].strip():
            last -= 1  # after the section's last row, before the blank lines
        lines.insert(last + 1, row)
        text = "\n".join(lines) + "\n"
    temporary = RESULTS.with_suffix(".md.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(RESULTS)


def finish_run(
    started: float,
    loadavg: tuple[float, float],
    record: bool,
    row: tuple[str, str, list[str], list[str]],
) -> None:
    """The closing lines of a run: time and machine load, then (if `record`) the row
    (section, intro, columns, cells) appended to RESULTS.md."""
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s; 1-min load average {loadavg[0]:.1f} at"
        f" the start, {loadavg[1]:.1f} at the end, on {os.cpu_count()} CPUs"
    )
    if record:
        append_row(*row)
        print(f"appended to {RESULTS.relative_to(ROOT)}")


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in [c, *(r[i] for r in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


# --- helpers for the benchmarks that drive the bot against the local Discord ------------------

JOB_IMAGE = re.compile(r"^job-(\d+)-(\d+)\.png$")  # the bot's result files: job-<id>-<i>.png


def ms(seconds: float) -> str:
    """Milliseconds for a table cell; ∞ for a call that never came."""
    return "∞" if seconds == float("inf") else f"{seconds * 1000:.0f}"


def jobs_shown(message: Any) -> set[int]:
    """Job ids whose images a fake-Discord message carried in any of its revisions."""
    found: set[int] = set()
    for revision in message.history:
        for attachment in revision.attachments:
            match = JOB_IMAGE.match(attachment.filename)
            if match:
                found.add(int(match.group(1)))
    return found


def deliveries(messages: Iterable[Any]) -> Counter[int]:
    """How many distinct messages carried each job's images (edits of one message count once;
    deleted messages count: somebody saw them)."""
    counts: Counter[int] = Counter()
    for message in messages:
        counts.update(jobs_shown(message))
    return counts


async def wait_quiet(fake: Any, quiet_s: float, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait until the bot has sent no REST request for `quiet_s` (at most `timeout`); True if
    it went quiet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last = fake.requests[-1].at if fake.requests else fake.clock.wall()
        idle = fake.clock.wall() - last
        if idle >= quiet_s:
            return True
        if loop.time() + (quiet_s - idle) > deadline:
            return False
        await asyncio.sleep(quiet_s - idle)


# --- a full-size SD 1.5 checkpoint with random weights (memory and dtype benchmarks) ---------


def bench_cache_dir() -> Path:
    """Where benchmarks keep what is slow to build: $IMAGINE_BENCH_CACHE or <tmp>/imagine-bench."""
    import tempfile

    folder = Path(
        os.environ.get("IMAGINE_BENCH_CACHE") or Path(tempfile.gettempdir()) / "imagine-bench"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def full_size_sd15_single_file(seed: int = 0) -> Path:
    """A random-weight SD 1.5 checkpoint: the real architecture (UNet 320/640/1280/1280, CLIP
    ViT-L/14 text encoder, 8x VAE, from the shipped configs) in the original single-file key
    layout, fp16, about 2 GB, loadable with the shipped config like a downloaded one.

    Built once per seed (about a minute on 2 cores) and kept in `bench_cache_dir()`.
    """
    path = bench_cache_dir() / f"sd15-random-seed{seed}-fp16.safetensors"
    if path.is_file():
        return path
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from inference.models import shipped_config_dir
    from inference.testing import export_single_file
    from inference.tokens import clip_tokenizer

    configs = shipped_config_dir("sd1")
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet")),
        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder")),
        tokenizer=clip_tokenizer(),
        scheduler=EulerDiscreteScheduler.from_pretrained(configs / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(torch.float16)
    partial = path.with_suffix(".partial")
    export_single_file(pipe, partial, family="sd1", title=f"random SD 1.5 (seed {seed})")
    partial.replace(path)
    return path


def tiny_single_file_spec(directory: Path, name: str) -> ModelSpec:
    """The tiny random SD 1.x model saved under `directory`, as a single-file ModelSpec."""
    from inference.testing import save_tiny_model

    tiny = save_tiny_model(directory, "sd1")
    return ModelSpec(name, str(tiny.single_file), config=tiny.folder)
