"""Package rules for ``p2p``: it never imports ``dagrider``; its pure modules do no I/O.

ARCHITECTURE.md: "p2p/ and crdt/ never import dagrider/", and pure modules import none
of asyncio, socket, time, random, sqlite3, so that the simulator can run them as is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "p2p"
PURE = ("errors.py", "framing.py", "ratelimit.py", "config.py")
IO_MODULES = frozenset({"asyncio", "aiohttp", "socket", "time", "random", "sqlite3"})


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_is_found() -> None:
    assert (PACKAGE / "transport.py").exists()


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_p2p_never_imports_dagrider(path: Path) -> None:
    assert "dagrider" not in imported(path)


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_do_no_io(name: str) -> None:
    assert imported(PACKAGE / name) & IO_MODULES == set()
