"""The SQLite store: what goes in comes back out, per table, and across reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagrider.codec import Codec
from dagrider.effects import Broadcast, Commit, Delivered, Proposed, Requeued
from dagrider.messages import Echo, Ready, Vertex, VertexRef, genesis
from dagrider.node.store import Store, StoreError, tx_digest
from dagrider.ordering import OrderingState
from dagrider.params import Limits

COMMITTEE = b"c" * 32


def _store(path: Path, committee: bytes = COMMITTEE) -> Store:
    return Store(path / "node.sqlite3", Codec(4, Limits()), committee, gc_depth=8)


def _vertex(rnd: int, source: int, block: tuple[bytes, ...]) -> Vertex:
    parents = tuple(g.ref for g in genesis(4)[:3])
    strong = parents if rnd == 1 else tuple(VertexRef(rnd - 1, s, b"\x01" * 32) for s in range(3))
    return Vertex(rnd, source, block, strong, ())


def test_log_pages_and_lookup_across_vertices(tmp_path: Path) -> None:
    store = _store(tmp_path)
    blocks = [tuple(f"v{i}-tx{k}".encode() for k in range(i + 1)) for i in range(5)]
    effects = []
    tx_index = 0
    for i, block in enumerate(blocks):
        v = _vertex(1, i % 4, block) if i < 4 else _vertex(2, 0, block)
        effects.append(Commit(i, tx_index, v, 1, v.ref))
        tx_index += len(block)
    effects.append(Commit(5, tx_index, _vertex(2, 1, ()), 1, effects[0].vertex.ref))  # empty
    store.apply(effects, None, [], now=123.0)
    everything = [tx for block in blocks for tx in block]
    assert store.log_head() == len(everything) - 1
    assert [r.data for r in store.log_after(-1, 1000)] == everything
    assert [r.index for r in store.log_after(-1, 1000)] == list(range(len(everything)))
    # Pages that start and end inside a vertex's block.
    paged: list[bytes] = []
    after = -1
    while page := store.log_after(after, 4):
        paged += [r.data for r in page]
        after = page[-1].index
    assert paged == everything
    target = everything[7]
    row = store.find_tx(tx_digest(target))
    assert row is not None and row.index == 7 and row.data == target
    assert store.find_tx(tx_digest(b"never committed")) is None


def test_recovery_round_trip_and_gc(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ids = store.add_to_mempool([b"a", b"b", b"c"])
    assert [store.pending(d) for d in ids] == [True, True, True]
    own = _vertex(1, 0, (b"a",))
    other = _vertex(1, 1, ())
    store.apply(
        [
            Proposed(own),
            Broadcast(Echo(1, 1, other.digest)),
            Broadcast(Ready(1, 1, other.digest)),
            Delivered(other),
            Requeued((b"z",)),
        ],
        None,
        [],
        now=1.0,
    )
    state = OrderingState(3, 2, 5, 10, 40, ((other.digest, 1),), ((3, 2),))
    store.apply([], state, [], now=2.0)
    store.close()
    reopened = _store(tmp_path)
    recovery, mempool = reopened.load_recovery()
    assert mempool == [b"b", b"c", b"z"]  # "a" went into our vertex
    assert recovery.own == [own] and recovery.delivered == [other]
    assert recovery.votes == [Echo(1, 1, other.digest), Ready(1, 1, other.digest)]
    assert recovery.ordering == state and recovery.committed == 10
    catchup = reopened.catchup(1, 2)
    assert catchup == [(Ready(1, 1, other.digest), other)]


def test_refuses_a_store_of_another_committee(tmp_path: Path) -> None:
    _store(tmp_path).close()
    with pytest.raises(StoreError, match="another committee"):
        _store(tmp_path, b"d" * 32)
