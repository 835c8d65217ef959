"""Transactions in doubt after a restart behind the fence: the pure rule
(:class:`dagrider.node.fence.Doubt`) and the store's side of it (hold, list, answer
"pending", find what the lost rounds ordered, settle), across a reopen. The daemon
end to end: ``tests/node/test_restored_backup.py``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dagrider.codec import Codec
from dagrider.effects import Commit, Proposed
from dagrider.messages import Vertex, VertexRef, genesis
from dagrider.node.fence import Doubt
from dagrider.node.service import StorageCorrupt
from dagrider.node.store import Store, tx_digest
from dagrider.params import Limits

COMMITTEE = b"c" * 32
ME = 3


def _store(path: Path) -> Store:
    return Store(path / "node.sqlite3", Codec(4, Limits()), COMMITTEE, gc_depth=8)


def _vertex(rnd: int, source: int, block: tuple[bytes, ...]) -> Vertex:
    parents = tuple(g.ref for g in genesis(4)[:3])
    strong = parents if rnd == 1 else tuple(VertexRef(rnd - 1, s, b"\x01" * 32) for s in range(3))
    return Vertex(rnd, source, block, strong, ())


def test_kept_removes_one_copy_per_ordered_transaction_in_order() -> None:
    doubt = Doubt(4, 9, 10, (b"a", b"b", b"a", b"c", b"d"))
    assert doubt.kept([b"a", b"c", b"x"]) == [b"b", b"a", b"d"]  # x was never ours here
    assert doubt.kept([]) == list(doubt.txs)
    assert doubt.kept([b"a", b"a", b"a", b"b", b"c", b"d"]) == []
    assert not doubt.settled(9) and doubt.settled(10)
    both = doubt.merged(6, 14, 7, [b"e"])
    assert both == Doubt(4, 14, 7, (b"a", b"b", b"a", b"c", b"d", b"e"))


def test_the_store_holds_settles_and_answers_pending(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_to_mempool([b"t0", b"t1", b"t2"])
    store.add_to_mempool([b"t3"])
    # A proposal took t0 (a partly taken batch): the rest is what is pending.
    store.apply([Proposed(_vertex(2, ME, (b"t0",)))], None, [], now=1.0)
    doubt = store.hold_in_doubt(since=2, until=9, first_index=5)
    assert doubt == Doubt(2, 9, 5, (b"t1", b"t2", b"t3"))
    assert store.load_recovery()[1] == []  # none of it goes to the process
    assert all(store.pending(tx_digest(tx)) for tx in doubt.txs)  # a client sees pending
    assert not store.pending(tx_digest(b"t0"))
    store.add_to_mempool([b"new"])  # accepted after the restart: not in doubt
    store.close()
    store = _store(tmp_path)
    assert store.doubt() == doubt
    assert store.load_recovery()[1] == [b"new"]
    # The log: our lost rounds carried t1 (and a transaction the backup never had);
    # our round-2 vertex (before the loss), another member's, and rows before
    # first_index do not count.
    effects = [
        Commit(4, 0, _vertex(5, ME, (b"t2",)), 1, VertexRef(5, ME, b"")),  # before index 5
        Commit(5, 1, _vertex(2, ME, (b"t3",)), 1, VertexRef(2, ME, b"")),  # round <= since
        Commit(6, 2, _vertex(6, 1, (b"t2",)), 1, VertexRef(6, 1, b"")),  # another source
        Commit(7, 3, _vertex(7, ME, (b"t1", b"lost-only")), 2, VertexRef(7, ME, b"")),
        Commit(8, 5, _vertex(10, ME, (b"t3",)), 2, VertexRef(10, ME, b"")),  # past until
    ]
    store.apply(effects, None, [], now=2.0)  # type: ignore[arg-type]
    ordered = store.proposed_by(ME, doubt.since, doubt.until, doubt.first_index)
    assert ordered == [b"t1", b"lost-only"]
    kept = doubt.kept(ordered)
    assert kept == [b"t2", b"t3"]
    store.settle_doubt(kept)
    assert store.doubt() is None
    assert store.load_recovery()[1] == [b"t2", b"t3", b"new"]  # back at the front
    assert not store.pending(tx_digest(b"t1"))
    # Nothing pending behind a later fence: no doubt.
    store.close()
    store = _store(tmp_path)
    store.apply([Proposed(_vertex(11, ME, (b"t2", b"t3", b"new")))], None, [], now=3.0)
    assert store.hold_in_doubt(11, 20, 9) is None


def test_a_second_loss_before_the_doubt_settled_merges(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_to_mempool([b"a"])
    store.hold_in_doubt(3, 8, 4)
    store.add_to_mempool([b"b"])
    assert store.hold_in_doubt(6, 12, 6) == Doubt(3, 12, 4, (b"a", b"b"))
    assert store.hold_in_doubt(7, 13, 9) == Doubt(3, 12, 4, (b"a", b"b"))  # nothing new
    assert store.load_recovery()[1] == []


def test_a_damaged_doubt_stops_the_node(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_to_mempool([b"a"])
    store.hold_in_doubt(3, 8, 4)
    store.close()
    with sqlite3.connect(tmp_path / "node.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'doubt'", (b"\x93\x01\x09\x04",))
    with pytest.raises(StorageCorrupt, match="doubt"):
        _store(tmp_path).doubt()
    store = _store(tmp_path)
    with sqlite3.connect(tmp_path / "node.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'doubt'", (b"\x93\x03\x08\x04",))
        conn.execute("UPDATE mempool_doubt SET records = ?", (b"\x91\xa1b",))
    with pytest.raises(StorageCorrupt, match="doubt batch"):
        store.doubt()
