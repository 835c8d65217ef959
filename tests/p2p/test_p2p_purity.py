"""Package rules for ``p2p``: it never imports ``dagrider``; its pure modules do no I/O.

ARCHITECTURE.md: "p2p/ and crdt/ never import dagrider/", and pure modules import none
of asyncio, socket, time, random, sqlite3, so that the simulator can run them as is.
The pure packages ``p2p/nat``, ``p2p/dht`` and ``p2p/content`` also import no ``p2p``
module outside themselves but the pure ones listed; their asyncio shells live beside
them (``p2p/nat_service.py``, ``p2p/dht_service.py``, ``p2p/content_service.py``...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "p2p"
PURE = ("errors.py", "framing.py", "ratelimit.py", "config.py", "rpc_wire.py", "strictwire.py")
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


FORBIDDEN = frozenset(
    {"asyncio", "aiohttp", "socket", "time", "random", "sqlite3", "ssl", "os", "threading"}
    | {"tempfile", "pathlib", "shutil"}
)
PACKAGES: dict[str, tuple[set[str], set[str]]] = {
    # package: (modules that must exist, p2p modules it may import besides itself)
    "nat": ({"messages", "observed", "reachability", "relay", "punch", "manager"}, {"ratelimit"}),
    "dht": (
        {"peer", "keyspace", "records", "messages", "config", "routing", "store", "lookup"}
        | {"server"},
        set(),
    ),
    "content": ({"manifest", "bitmap", "messages", "fetch"}, set()),
}
MODULES = [
    (package, path) for package in PACKAGES for path in sorted((PACKAGE / package).glob("*.py"))
]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_modules_are_checked(package: str) -> None:
    required, _ = PACKAGES[package]
    found = {path.stem for pkg, path in MODULES if pkg == package}
    assert found >= required | {"__init__"}


@pytest.mark.parametrize(("package", "path"), MODULES, ids=lambda v: getattr(v, "name", v))
def test_modules_do_no_io(package: str, path: Path) -> None:
    assert imported(path) & FORBIDDEN == set()
    assert "dagrider" not in imported(path)


@pytest.mark.parametrize(("package", "path"), MODULES, ids=lambda v: getattr(v, "name", v))
def test_modules_import_only_pure_p2p_modules(package: str, path: Path) -> None:
    allowed = {package, "errors", "strictwire"} | PACKAGES[package][1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("p2p."):
            assert node.module.split(".")[1] in allowed, node.module
