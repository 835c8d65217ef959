"""``free_port_block`` never hands two live processes (or one process, twice within the
hold) overlapping blocks: parallel test workers once started daemons on each other's
ports ("address already in use")."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dagrider.node import cluster


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ports.json"
    monkeypatch.setattr(cluster, "PORT_REGISTRY", path)
    return path


def _overlapping(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    ordered = sorted(blocks)
    return [a for a, b in itertools.pairwise(ordered) if a[0] + a[1] > b[0]]


def test_blocks_handed_out_do_not_overlap(registry: Path) -> None:
    # 300 blocks of 10 in ~22,000 ports: random picks alone would overlap (about 20
    # pairs expected), since each probe's sockets are closed again before the next.
    blocks = [(cluster.free_port_block(10), 10) for _ in range(300)]
    assert _overlapping(blocks) == []
    assert len(json.loads(registry.read_text())) == 300


def test_another_process_avoids_our_blocks(registry: Path) -> None:
    ours = [(cluster.free_port_block(10), 10) for _ in range(150)]
    code = (
        "import json, sys\n"
        "from dagrider.node import cluster\n"
        "from pathlib import Path\n"
        "cluster.PORT_REGISTRY = Path(sys.argv[1])\n"
        "print(json.dumps([cluster.free_port_block(10) for _ in range(150)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(registry)], capture_output=True, text=True, check=True
    )
    theirs = [(b, 10) for b in json.loads(out.stdout)]
    assert _overlapping(ours + theirs) == []


def test_dead_stale_and_garbage_entries_are_dropped(registry: Path) -> None:
    dead = 2**22 + 12345  # above pid_max's default: no such process
    registry.write_text(
        json.dumps(
            [
                [20_000, 10, dead, time.time()],  # its process is gone
                [21_000, 10, os.getpid(), time.time() - cluster.PORT_HOLD_S - 1],  # expired
                [22_000, 10, os.getpid(), time.time()],  # live: kept
                ["x", 1, 2, 3],
                [0, 10, 0, time.time()],  # pid 0 would signal our process group
            ]
        )
    )
    cluster.free_port_block(4)
    kept = json.loads(registry.read_text())
    assert [e[0] for e in kept][:1] == [22_000] and len(kept) == 2
    registry.write_text("not json")
    cluster.free_port_block(4)
    assert len(json.loads(registry.read_text())) == 1
