"""The built wheel, installed on its own, works: nothing it needs lives only in the checkout.

`pip install -e .` runs the checkout itself, so it hides a file that the wheel leaves out (the
bot's defaults once lived in config/, outside every package, and a wheel install could not
start). This builds the wheel from a copy of the checkout, installs it with no dependencies
into a fresh virtual environment, and runs the console script from a folder outside the source
tree. Offline and quick: the fresh environment borrows this interpreter's installed
dependencies (torch, diffusers, ...) through a .pth file, added only after the wheel went in,
and the test checks that `bot` and `inference` are imported from the fresh install.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
# Build outputs, caches and environments are not sources (stale build/lib files would even
# leak into the wheel); tests/ and bench/ are not packaged.
NOT_SOURCES_AT_TOP = {".git", ".venv", "venv", "build", "dist", "data", "models", "tests", "bench"}
NOT_SOURCES = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", ".*cache", ".hypothesis", ".whl", "*.safetensors", "*.png"
)


def _not_sources(folder: str, names: list[str]) -> set[str]:
    ignored = set(NOT_SOURCES(folder, names))
    if Path(folder) == ROOT:
        ignored |= NOT_SOURCES_AT_TOP & set(names)
    return ignored


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installed_alone_makes_an_image(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_not_sources)
    wheels = tmp_path / "wheels"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        "--wheel-dir",
        wheels,
        source,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("imagine_bot-*.whl")

    # A bare environment, then the wheel alone (nothing else is visible to pip yet, so it
    # neither skips the install nor touches this environment's editable one).
    fresh = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(fresh)
    scripts = fresh / ("Scripts" if os.name == "nt" else "bin")
    python = next(p for p in (scripts / "python", scripts / "python.exe") if p.exists())
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--quiet",
        wheel,
        cwd=tmp_path,
    )
    purelib = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
        ).strip()
    )
    # The dependencies: this environment's site-packages, appended after the fresh one. A .pth
    # line only adds a path; the .pth files there (the editable install's finder) do not run.
    (purelib / "zz_test_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8"
    )

    work = tmp_path / "work"  # not the checkout: `import bot` must not find the sources
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("DISCORD_TOKEN", None)
    env.pop("IMAGINE_BOT_CONFIG", None)
    env |= {
        "HF_HUB_OFFLINE": "1",
        "VIRTUAL_ENV": str(fresh),
        "PATH": f"{scripts}{os.pathsep}{env.get('PATH', '')}",
    }
    where = run(
        python,
        "-c",
        "import bot, inference; print(bot.__file__); print(inference.__file__)",
        cwd=work,
        env=env,
    )
    for module in where.split():
        assert Path(module).resolve().is_relative_to(purelib.resolve()), where

    imagine_bot = scripts / "imagine-bot"
    model = work / "tiny"
    config = run(imagine_bot, "tiny-model", model, cwd=work, env=env)
    (model / "tiny.toml").write_text(config, encoding="utf-8")
    made = run(
        imagine_bot,
        "--config",
        model / "tiny.toml",
        "generate",
        "x",
        "--steps",
        "2",
        "--no-progress",
        "--out",
        work / "x.png",
        cwd=work,
        env=env,
    )
    assert (work / "x.png").stat().st_size > 0, made

    # `run` reads the packaged defaults before it asks for the token it lacks.
    started = subprocess.run(
        [str(imagine_bot), "run"], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 2, started.stderr
    assert "No Discord bot token" in started.stderr

    packaged = set(zipfile.ZipFile(wheel).namelist())
    assert {"bot/default.toml", "bot/migrations/0001_initial.sql"} <= packaged
