"""The consensus core is pure: no module of it imports I/O, clocks or randomness.

ARCHITECTURE.md: "Nothing in a pure module imports asyncio, aiohttp, socket, sqlite3,
time or random; a test can assert that." This is that test. The shells (the future
``dagrider/node/`` package, the CLI, key generation and committee files) are exempt,
and so is ``sim/``, which is not part of the package walked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dagrider"
FORBIDDEN = frozenset({"asyncio", "aiohttp", "socket", "time", "random", "sqlite3"})
EXEMPT_FILES = frozenset({"cli.py", "keygen.py", "committee.py"})
EXEMPT_DIRS = frozenset({"node", "sdk"})  # the daemon and the embedding API: shells


def pure_modules() -> list[Path]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in EXEMPT_DIRS or (len(rel.parts) == 1 and rel.name in EXEMPT_FILES):
            continue
        out.append(path)
    return out


def forbidden_imports(source: str, filename: str = "<test>") -> list[tuple[int, str]]:
    """(line, module) for every import of a forbidden module or one of its submodules,
    wherever it appears (top level, inside functions, under ``if TYPE_CHECKING``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names = [first.value]
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                found.append((getattr(node, "lineno", 0), name))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    """``__import__(...)`` or ``importlib.import_module(...)``."""
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def test_the_walk_finds_the_core() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in pure_modules()}
    for core in ("messages.py", "codec.py", "rbc.py", "dag.py", "ordering.py", "process.py"):
        assert core in names
    assert "committee.py" not in names
    assert "keygen.py" not in names
    assert not any(n.startswith("node/") for n in names)


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_pure_module_has_no_io_clock_or_randomness(path: Path) -> None:
    assert forbidden_imports(path.read_text(), str(path)) == []


CRDT = PACKAGE.parent / "crdt"


def crdt_modules() -> list[Path]:
    return sorted(CRDT.rglob("*.py"))


@pytest.mark.parametrize("path", crdt_modules(), ids=lambda p: p.relative_to(CRDT).as_posix())
def test_crdt_module_is_pure_and_independent(path: Path) -> None:
    """The CRDT store is pure too, and never imports the consensus core or the node."""
    source = path.read_text()
    assert forbidden_imports(source, str(path)) == []
    tree = ast.parse(source)
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    # p2p.strictwire is the one exception: the shared, pure wire envelope (msgpack only).
    imported.discard("p2p.strictwire")
    assert not {m for m in imported if m.split(".")[0] in ("dagrider", "p2p", "sim")}


def test_the_shared_wire_envelope_is_pure_and_imports_no_package_of_ours() -> None:
    path = PACKAGE.parent / "p2p" / "strictwire.py"
    source = path.read_text()
    assert forbidden_imports(source, str(path)) == []
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    assert not {m for m in imported if m.split(".")[0] in ("dagrider", "p2p", "sim", "crdt")}


def test_the_crdt_walk_finds_the_store() -> None:
    names = {p.relative_to(CRDT).as_posix() for p in crdt_modules()}
    assert {"replica.py", "sync.py", "reconcile.py", "types/ormap.py"} <= names


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import random as rnd",
        "import os, socket",
        "import asyncio.subprocess",
        "from time import monotonic",
        "from sqlite3 import connect",
        "from aiohttp.web import Application",
        "def f():\n    import random\n",
        "if TYPE_CHECKING:\n    from asyncio import Future\n",
        "try:\n    import uvloop\nexcept ImportError:\n    import asyncio\n",
        "x = __import__('socket')",
        "import importlib\nm = importlib.import_module('time')",
    ],
)
def test_checker_catches_forbidden_imports(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import os.path",
        "import timeit_like_name",
        "from dagrider.random_helpers import x",
        "from . import time",
        "import hashlib, msgpack",
        "from typing import TYPE_CHECKING",
        "x = 'import time'",
    ],
)
def test_checker_allows_other_imports(source: str) -> None:
    assert forbidden_imports(source) == []
