"""The architecture's boundaries, checked on the source: `inference/` never imports discord or
`bot/`; `bot/` never imports torch or diffusers (it calls `inference/` instead)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "inference": {"discord", "bot", "aiosqlite"},
    "bot": {"torch", "diffusers", "transformers", "safetensors"},
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_stays_inside_its_boundary(package: str) -> None:
    sources = sorted((ROOT / package).rglob("*.py"))
    assert sources
    crossings = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package])
        for path in sources
    }
    assert {path: bad for path, bad in crossings.items() if bad} == {}


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import torch.nn\n    from discord import ui\n")
    assert imported_modules(module) == {"torch", "discord"}
