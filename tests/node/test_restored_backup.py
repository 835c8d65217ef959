"""A member restarted from a database-only backup orders each transaction at most once.

The backup holds transactions that were pending when it was taken; the member then
proposed them (and the committee ordered them) before it was stopped and the backup put
back. Its store no longer knows that, so its mempool offers them again; the fence (the
rounds the store lost) keeps the member silent in those rounds, and the transactions
it held when the backup was taken stay *in doubt*: not proposed again until no vertex
of the lost rounds can still be ordered (its GC floor passed the fence), then put back
minus those its lost vertices had carried into the log.

Deterministic: the pending transactions are written into the stopped member's store
before the backup is taken, so they are pending in the backup and proposed after it
every time (the e2e test ``tests/e2e/test_storage_faults.py`` only hit this when its
backup happened to catch a non-empty mempool, one run in six).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

from dagrider import Node
from dagrider.codec import Codec
from dagrider.committee import Committee
from dagrider.node.cluster import ClusterSpec, LocalCluster, free_port_block
from dagrider.node.config import load_config
from dagrider.node.fence import Fence
from dagrider.node.store import Store, tx_digest

HANG_LIMIT = 90.0  # seconds: a hang limit, not a verdict
GC_DEPTH = 8


@contextlib.asynccontextmanager
async def committee(directory: Path) -> AsyncIterator[list[Node]]:
    """Four members in this event loop, with a small GC depth (the doubt settles once
    the floor passes the fence: a few waves, not a dozen)."""
    cluster = LocalCluster(
        ClusterSpec(
            directory=directory,
            nodes=4,
            base_port=free_port_block(4),
            api_base_port=free_port_block(4),
            batch_delay_ms=10,
            idle_round_ms=20,
            gc_depth=GC_DEPTH,
            log_level="warning",
        )
    )
    nodes: list[Node] = []
    try:
        for i in range(4):
            node = Node(cluster.configs[i])
            await node.start()
            nodes.append(node)
        async with asyncio.timeout(HANG_LIMIT):
            while not all(len(n.network.connected()) >= 3 for n in nodes):
                await asyncio.sleep(0.02)
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.stop()


def _log(node: Node) -> list[bytes]:
    return [r.data for r in node._member().log(-1, 1 << 30)]


async def _committed_everywhere(nodes: list[Node], txs: list[bytes]) -> None:
    async with asyncio.timeout(HANG_LIMIT):
        while not all(set(txs) <= set(_log(n)) for n in nodes):
            await asyncio.sleep(0.05)


def _copy(src: Path, dst: Path) -> None:
    """A consistent copy of the database as it is now (SQLite's backup API)."""
    with (
        contextlib.closing(sqlite3.connect(src)) as a,
        contextlib.closing(sqlite3.connect(dst)) as b,
    ):
        a.backup(b)


def test_a_restored_backup_never_orders_a_pending_transaction_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with committee(tmp_path) as nodes:
            warm = [b"warm-%d" % k for k in range(8)]
            for k, tx in enumerate(warm):
                nodes[k % 4].submit(tx)
            await _committed_everywhere(nodes, warm)
            # Member 3, stopped, has transactions pending in its store: the backup.
            config = tmp_path / "node-3.toml"
            cfg = load_config(config)
            await nodes[3].stop()
            db = cfg.data_dir / "node.sqlite3"
            committee_file = cfg.committee_file
            assert committee_file is not None
            c = Committee.load(committee_file)
            doubt = [b"pending-at-backup-%d" % k for k in range(6)]
            store = Store(db, Codec(c.n, cfg.parameters().limits), c.committee_id, GC_DEPTH)
            store.add_to_mempool(doubt)
            store.close()
            backup = tmp_path / "backup.sqlite3"
            _copy(db, backup)
            # And some the lost rounds never proposed (accepted just before the loss):
            # they must be proposed after the restart, once.
            unseen = [b"never-proposed-%d" % k for k in range(4)]
            store = Store(backup, Codec(c.n, cfg.parameters().limits), c.committee_id, GC_DEPTH)
            store.add_to_mempool(unseen)
            store.close()
            # It proposes them, the committee orders them; then the backup goes back.
            nodes[3] = Node(config)
            await nodes[3].start()
            await _committed_everywhere(nodes, doubt)
            more = [b"after-backup-%d" % k for k in range(20)]
            for tx in more:  # a few more rounds of its own past the backup
                nodes[3].submit(tx)
                await asyncio.sleep(0.01)
            await _committed_everywhere(nodes, more)
            await nodes[3].stop()
            fence = Fence(cfg.data_dir, False).round
            _copy(backup, db)
            for suffix in ("-wal", "-shm"):
                db.with_name(db.name + suffix).unlink(missing_ok=True)
            nodes[3] = Node(config)
            await nodes[3].start()
            member = nodes[3]._member()
            assert member.process.fence_round == fence  # the loss was noticed
            ids = [tx_digest(tx).hex() for tx in doubt + unseen]
            # In doubt, the transactions are pending to a client, and not proposed.
            assert {nodes[3].tx_status(i).state for i in ids} <= {"pending", "committed"}
            assert not set(doubt + unseen) & set(member.process.mempool)
            assert member.doubt is not None and len(member.doubt.txs) == len(doubt + unseen)
            # Keep the committee busy until member 3's floor passed its fence (the doubt
            # settles), and its own new transactions are ordered.
            after: list[bytes] = []
            async with asyncio.timeout(HANG_LIMIT):
                k = 0
                while member.process.ordering.floor() <= fence or member.doubt is not None:
                    tx = b"after-restore-%d" % k
                    nodes[3].submit(tx)
                    after.append(tx)
                    k += 1
                    await asyncio.sleep(0.02)
            await _committed_everywhere(nodes, after + unseen)
            logs = {i: _log(n) for i, n in enumerate(nodes)}
            longest = max(logs.values(), key=len)
            for i, log in logs.items():
                assert log == longest[: len(log)], f"node {i}'s log diverges"
                assert len(set(log)) == len(log), f"node {i} ordered a transaction twice"
            for tx in doubt + unseen:
                assert longest.count(tx) == 1, tx
            assert {nodes[3].tx_status(i).state for i in ids} == {"committed"}

    asyncio.run(scenario())
