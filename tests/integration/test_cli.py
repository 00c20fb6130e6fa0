"""The command line as an operator runs it: tiny-model, generate, and run without a token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sd_parsers import ParserManager

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # starts processes
ROOT = Path(__file__).resolve().parents[2]


def imagine_bot(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("DISCORD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )


def test_tiny_model_then_generate_writes_pngs_with_metadata(tmp_path: Path) -> None:
    made = imagine_bot("tiny-model", "tiny", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    (tmp_path / "tiny.toml").write_text(made.stdout)
    ran = imagine_bot(
        "--config",
        "tiny.toml",
        "generate",
        "a lighthouse at dusk",
        "--steps",
        "20",
        "--seed",
        "42",
        "--count",
        "2",
        "--out",
        "out/lighthouse.png",
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    assert "20/20" in ran.stderr  # the progress bar reached the end
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["lighthouse-0.png", "lighthouse-1.png", "lighthouse.png"]
    info = ParserManager().parse(tmp_path / "out" / "lighthouse-1.png")
    assert info.samplers[0].parameters["seed"] == "43"  # image i uses seed + i
    assert [p.value for p in info.samplers[0].prompts] == ["a lighthouse at dusk"]


def test_generate_reports_bad_input_without_a_traceback(tmp_path: Path) -> None:
    made = imagine_bot("tiny-model", "tiny", cwd=tmp_path)
    (tmp_path / "tiny.toml").write_text(made.stdout)
    ran = imagine_bot("--config", "tiny.toml", "generate", "x", "--width", "500", cwd=tmp_path)
    assert ran.returncode == 2
    assert "width: 500 is not a multiple of 8" in ran.stderr
    assert "Traceback" not in ran.stderr
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "ckpt.toml").write_text(f'[[models]]\nname = "old"\nsource = "{pickle}"\n')
    ran = imagine_bot("--config", "ckpt.toml", "generate", "x", cwd=tmp_path)
    assert ran.returncode == 2 and "arbitrary code" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_run_without_a_token_says_how_to_get_one(tmp_path: Path) -> None:
    ran = imagine_bot("run", cwd=tmp_path)
    assert ran.returncode == 2
    assert "No Discord bot token" in ran.stderr and "DISCORD_TOKEN" in ran.stderr
    assert "Traceback" not in ran.stderr
