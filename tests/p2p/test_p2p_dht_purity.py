"""``p2p/dht`` is pure: no I/O, clock or randomness module is imported (see ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DHT = Path(__file__).resolve().parents[2] / "p2p" / "dht"
FORBIDDEN = frozenset({"asyncio", "aiohttp", "socket", "time", "random", "sqlite3", "ssl", "os"})


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


MODULES = sorted(DHT.glob("*.py"))
"""Every module of ``p2p/dht``: the asyncio shell lives beside it (``p2p/dht_service.py``)."""


def test_all_modules_are_checked() -> None:
    assert {p.stem for p in MODULES} >= {
        "__init__",
        "peer",
        "keyspace",
        "records",
        "messages",
        "config",
        "routing",
        "store",
        "lookup",
        "server",
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_dht_modules_do_no_io(path: Path) -> None:
    assert imported(path) & FORBIDDEN == set()
    assert "dagrider" not in imported(path)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_dht_modules_import_only_pure_p2p_modules(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("p2p."):
            assert node.module.split(".")[1] in {"dht", "errors"}, node.module
