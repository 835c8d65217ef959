"""A batch is admitted whole or not at all: by the store, by a crash, and by the API.

The issue this answers: a batch request cut off by a kill had 24 of its 50 transactions
committed, because the mempool rows were written one autocommitted statement at a time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dagrider.codec import Codec
from dagrider.node.api import build_app
from dagrider.node.batch import BATCH_CONTENT_TYPE, encode_batch
from dagrider.node.store import Store
from dagrider.params import Limits

COMMITTEE = b"\x07" * 32
TXS = [f"tx-{i}".encode() for i in range(50)]


def _store(path: Path) -> Store:
    return Store(path, Codec(4, Limits()), COMMITTEE, gc_depth=8)


def _killed_during_add(path: Path, after_steps: int) -> int:
    """Run ``add_to_mempool(TXS)`` in a child process that dies (``os._exit``: no cleanup,
    what SIGKILL does) after ``after_steps`` SQLite progress callbacks; its exit code."""
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from dagrider.codec import Codec
        from dagrider.node.store import Store
        from dagrider.params import Limits
        store = Store(Path({str(path)!r}), Codec(4, Limits()), {COMMITTEE!r}, gc_depth=8)
        steps = [0]
        def tick():
            steps[0] += 1
            if steps[0] >= {after_steps}:
                os._exit(9)
            return 0
        store._db.set_progress_handler(tick, 1)
        store.add_to_mempool([f"tx-{{i}}".encode() for i in range(50)])
        os._exit(0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode in (0, 9), done.stderr.decode()
    return done.returncode


def test_a_kill_at_any_point_of_a_batch_write_leaves_all_or_none_of_it(tmp_path: Path) -> None:
    """Whatever the store's layout (a row per transaction or per batch), a kill in the
    middle of writing a batch must leave every transaction of it or none."""
    outcomes: set[tuple[int, int]] = set()
    for after_steps in (1, 3, 10, 30, 100, 300, 1_000, 10**9):
        path = tmp_path / f"node-{after_steps}.sqlite3"
        _store(path).close()
        code = _killed_during_add(path, after_steps)
        pending = _store(path).load_recovery()[1]
        assert pending in ([], TXS), f"killed after {after_steps} steps: {len(pending)} of 50"
        outcomes.add((code, len(pending)))
    assert (9, 0) in outcomes and (0, 50) in outcomes, outcomes  # both sides were reached


class _Counting:
    """The smallest NodeService the batch route needs; counts admitted transactions."""

    max_tx_bytes = 1024

    def __init__(self) -> None:
        self.admitted: list[bytes] = []

    def submit(self, txs: list[bytes]) -> list[str]:
        self.admitted.extend(txs)
        return [tx.hex() for tx in txs]


@pytest.mark.parametrize(
    ("records", "status", "phrase"),
    [
        ([*TXS[:30], b"x" * 1025, *TXS[30:]], 413, "record at byte offset"),
        ([*TXS[:30], b"", *TXS[30:]], 400, "empty record"),
        (TXS * 3, 413, "can never be accepted"),  # 150 > max_batch 100
    ],
)
def test_the_api_checks_the_whole_batch_before_admitting_any(
    records: list[bytes], status: int, phrase: str
) -> None:
    node = _Counting()

    async def main() -> None:
        app = build_app(node, None, 1 << 20, max_batch=100)  # type: ignore[arg-type]
        async with TestClient(TestServer(app)) as client:
            r = await client.post(
                "/v1/transactions/batch",
                data=encode_batch(records),
                headers={"Content-Type": BATCH_CONTENT_TYPE},
            )
            assert r.status == status, await r.text()
            assert phrase in (await r.json())["error"]

    asyncio.run(main())
    assert node.admitted == []
