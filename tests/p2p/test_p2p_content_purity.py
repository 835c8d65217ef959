"""``p2p/content`` is pure: no I/O, clock or randomness module is imported (see ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CONTENT = Path(__file__).resolve().parents[2] / "p2p" / "content"
FORBIDDEN = frozenset(
    {
        "asyncio",
        "aiohttp",
        "socket",
        "time",
        "random",
        "sqlite3",
        "ssl",
        "os",
        "tempfile",
        "pathlib",
        "shutil",
        "threading",
    }
)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


MODULES = sorted(CONTENT.glob("*.py"))
"""Every module of ``p2p/content``: the asyncio shells live beside it
(``p2p/content_store.py``, ``p2p/content_service.py``)."""


def test_all_modules_are_checked() -> None:
    assert {p.stem for p in MODULES} >= {"__init__", "manifest", "bitmap", "messages", "fetch"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_content_modules_do_no_io(path: Path) -> None:
    assert imported(path) & FORBIDDEN == set()
    assert "dagrider" not in imported(path)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_content_modules_import_only_pure_p2p_modules(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("p2p."):
            assert node.module.split(".")[1] in {"content", "errors"}, node.module
