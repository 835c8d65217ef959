"""The SQLite store writes the persistence projection: for any history of flushes, a
restart from the store recovers exactly what the in-memory projection (the simulator's
and the tests' store) recovers, and GC drops nothing either of them needs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from persistence_cases import GC_DEPTH, Batch, N, histories, log_of, reference, vertex

from dagrider.codec import Codec
from dagrider.effects import Proposed, Requeued
from dagrider.node.store import Store
from dagrider.params import Limits
from dagrider.persistence import GcRules, MemoryStore, gc_floor

COMMITTEE = b"p" * 32


def _open(path: Path, retain: int) -> Store:
    return Store(path, Codec(N, Limits()), COMMITTEE, gc_depth=GC_DEPTH, retain_rounds=retain)


@given(histories(), st.integers(0, 6), st.data())
def test_sqlite_and_memory_recover_the_same(
    history: list[Batch], retain: int, data: st.DataObject
) -> None:
    """Batch by batch, with the store closed and reopened at drawn points (a restart
    resets its GC hysteresis, which must not matter): equal recovery, mempool, log, and
    catch-up answers over the window GC promises to keep."""
    memory = MemoryStore(GcRules(GC_DEPTH, retain_rounds=retain))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node.sqlite3"
        store = _open(path, retain)
        try:
            for at, batch in enumerate(history):
                store.add_to_mempool(batch.submitted)
                memory.submit(batch.submitted)
                store.apply(batch.effects, batch.ordering, batch.shares, now=float(at))
                memory.apply(batch.effects, batch.ordering, batch.shares)
                if data.draw(st.booleans(), label="reopen"):
                    store.close()
                    store = _open(path, retain)
                    recovery, mempool = store.load_recovery()
                    assert recovery == memory.recovery()
                    assert mempool == list(memory.mempool)
            store.close()
            store = _open(path, retain)
            recovery, mempool = store.load_recovery()
        finally:
            store.close()
        expected, pending = reference(history)
        assert recovery == memory.recovery() == expected
        assert mempool == list(memory.mempool) == pending
        store = _open(path, retain)
        try:
            assert [r.data for r in store.log_after(-1, 1 << 20)] == log_of(history)
            assert [tx for c in memory.log for tx in c.vertex.block] == log_of(history)
            keep = max(0, gc_floor(memory.ordering, GC_DEPTH) - retain)
            assert store.catchup(keep, 1 << 30) == memory.catchup(keep, 1 << 30)
        finally:
            store.close()


def test_a_take_that_ends_at_requeued_transactions_keeps_the_older_partial_take() -> None:
    """Regression (found by the property above): requeued transactions in front of a
    partly taken batch, then a proposal taking some or all of them; the older batch's
    taken transactions came back after a restart (one ``mempool_head`` row only)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node.sqlite3"
        for requeued in ((b"a",), (b"a", b"b")):
            store = _open(path, 0)
            store.add_to_mempool([b"t1", b"t2"])
            store.apply([Proposed(vertex(1, 0, (b"t1",)))], None, [], now=0.0)
            store.apply([Requeued(requeued)], None, [], now=0.0)
            store.apply([Proposed(vertex(2, 0, (b"x",)))], None, [], now=0.0)
            store.close()
            store = _open(path, 0)
            _, mempool = store.load_recovery()
            assert mempool == [*requeued[1:], b"t2"]
            store.apply([Proposed(vertex(3, 0, tuple(mempool)))], None, [], now=0.0)
            assert store.load_recovery()[1] == []
            store.close()
