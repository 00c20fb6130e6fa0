"""What every benchmark shares: the machine, the commit, percentiles, the results file."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import sqlite3
import subprocess
from pathlib import Path

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


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in [c, *(r[i] for r in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
