"""The fence and the rule that reads it at a restart.

A store can only lose a suffix of its batches (a deleted WAL, an older backup). The
fence file, apart from the store, records before each sending batch the highest round
sent for and the store's count of that batch, so a restart sees exactly whether sent
writes were lost (``dagrider.persistence.restart_from``). The case the older rule
(compare the fence round with the highest stored round) missed is built here with the
real SQLite store: a lagging member echoes a peer's round-10 vertex, then proposes its
own round-9 vertex, and the store loses only that last batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from persistence_cases import GC_DEPTH, N, vertex

from dagrider.codec import Codec
from dagrider.effects import Broadcast, Proposed
from dagrider.messages import Echo, Val
from dagrider.node.fence import FENCE_FILE, Fence
from dagrider.node.service import StorageCorrupt
from dagrider.node.store import Store
from dagrider.params import Limits
from dagrider.persistence import GcRules, MemoryStore, Restart, restart_from
from node.test_restored_backup import _copy

COMMITTEE = b"f" * 32


def _store(path: Path) -> Store:
    return Store(path, Codec(N, Limits()), COMMITTEE, gc_depth=GC_DEPTH)


def _stored_round(store: Store) -> int:
    recovery, _ = store.load_recovery()
    return max([v.round for v in recovery.own] + [v.round for v in recovery.votes] + [0])


# -- the rule ------------------------------------------------------------------------


def test_a_complete_store_is_not_fenced() -> None:
    assert restart_from(12, 40, 40, 0, 12) == Restart(0, False)
    assert restart_from(12, 40, 41, 0, 12) == Restart(0, False)  # a later unsent batch


def test_a_store_missing_a_sent_batch_is_fenced_at_the_highest_sent_round() -> None:
    # The stored rounds reach the fence's: comparing rounds would miss this loss.
    assert restart_from(10, 2, 1, 0, 10) == Restart(10, True)


def test_a_loss_stays_fenced_at_later_restarts() -> None:
    assert restart_from(30, 90, 95, 10, 30) == Restart(10, False)
    assert restart_from(30, 90, 80, 10, 30) == Restart(30, True)


def test_a_fence_without_a_count_compares_rounds() -> None:
    assert restart_from(12, None, 0, 0, 11) == Restart(12, True)
    assert restart_from(12, None, 0, 0, 12) == Restart(0, False)


@given(
    st.lists(st.tuples(st.integers(1, 50), st.booleans()), min_size=1, max_size=40),
    st.data(),
)
def test_the_rule_sees_every_lost_sent_batch_and_nothing_else(
    batches: list[tuple[int, bool]], data: st.DataObject
) -> None:
    """For any run of batches (each with the highest round it sends for, or nothing sent)
    and any suffix a loss takes: fenced exactly when a sending batch was lost, and then
    at least as high as every round sent."""
    sent_round = sent_flushes = 0
    for count, (rnd, sends) in enumerate(batches, start=1):
        if sends:
            sent_round, sent_flushes = max(sent_round, rnd), count
    kept = data.draw(st.integers(0, len(batches)), label="batches the store kept")
    restart = restart_from(sent_round, sent_flushes, kept, 0, 0)
    lost_a_send = any(sends for _, sends in batches[kept:])
    assert restart.lost == lost_a_send
    if lost_a_send:
        assert restart.fence == sent_round


def test_the_memory_store_counts_and_remembers_like_the_sqlite_store(tmp_path: Path) -> None:
    memory = MemoryStore(GcRules(GC_DEPTH))
    store = _store(tmp_path / "node.sqlite3")
    try:
        for k in range(3):
            effects = [Broadcast(Echo(k + 1, 1, bytes([k]) * 32))]
            memory.apply(effects, None)
            store.apply(effects, None, [], now=0.0)
        memory.mark_lost(7, 9)
        store.mark_lost(7, 9)
        assert (memory.flushes, memory.fenced_through) == (store.flushes, store.fenced_through)
        assert (store.flushes, store.fenced_through) == (9, 7)
    finally:
        store.close()


# -- the SQLite store and the fence file --------------------------------------------


def test_losing_only_the_last_sent_batch_is_noticed(tmp_path: Path) -> None:
    """The case the round rule missed, with the daemon's store and fence file."""
    db, backup = tmp_path / "node.sqlite3", tmp_path / "backup.sqlite3"
    fence = Fence(tmp_path, fsync=False)
    store = _store(db)
    try:
        fence.reset(store.flushes)
        echo = [Broadcast(Echo(10, 1, b"\x01" * 32))]  # a peer's round 10, echoed
        fence.record(10, store.flushes + 1)
        store.apply(echo, None, [], now=0.0)
        _copy(db, backup)  # the backup (or the WAL) ends here
        own = vertex(9, 0, (b"tx",))  # our own round-9 proposal, sent after it
        fence.record(9, store.flushes + 1)
        store.apply([Proposed(own), Broadcast(Val(own))], None, [], now=0.0)
        assert (fence.round, fence.flushes) == (10, 2)
    finally:
        store.close()
        fence.close()
    restored = _store(backup)
    try:
        again = Fence(tmp_path, fsync=False)
        assert _stored_round(restored) == again.round == 10  # rounds look complete
        restart = restart_from(
            again.round, again.flushes, restored.flushes, restored.fenced_through, 10
        )
        assert restart == Restart(10, True)
        restored.mark_lost(restart.fence, again.flushes or 0)
    finally:
        restored.close()
    reopened = _store(backup)  # and the store remembers the loss
    try:
        assert (reopened.flushes, reopened.fenced_through) == (2, 10)
    finally:
        reopened.close()


def test_the_fence_file_survives_a_reload_and_a_torn_slot(tmp_path: Path) -> None:
    fence = Fence(tmp_path, fsync=True)
    assert (fence.round, fence.flushes) == (0, 0)
    fence.record(3, 1)
    fence.record(5, 2)
    fence.record(4, 3)  # the round never goes down
    fence.close()
    again = Fence(tmp_path, fsync=False)
    assert (again.round, again.flushes) == (5, 3)
    path = tmp_path / FENCE_FILE
    data = bytearray(path.read_bytes())
    data[32 + 3] ^= 0xFF  # a torn write of the slot of flush 3
    path.write_bytes(bytes(data))
    torn = Fence(tmp_path, fsync=False)
    assert (torn.round, torn.flushes) == (5, 2)  # the slot before it


@pytest.mark.parametrize("damage", ["both-slots", "short", "legacy-check"])
def test_a_damaged_fence_file_is_a_damaged_store(tmp_path: Path, damage: str) -> None:
    fence = Fence(tmp_path, fsync=False)
    fence.record(5, 1)
    fence.record(6, 2)
    fence.close()
    path = tmp_path / FENCE_FILE
    data = bytearray(path.read_bytes())
    if damage == "both-slots":
        data[1] ^= 1
        data[33] ^= 1
    elif damage == "short":
        del data[40:]
    else:
        data = bytearray((6).to_bytes(8, "big") + bytes(16))
    path.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupt, match="fence is damaged"):
        Fence(tmp_path, fsync=False)


def test_an_older_fence_file_is_read_and_converted(tmp_path: Path) -> None:
    """The format before the flush count: 8 bytes of round, a 16-byte check."""
    check = hashlib.blake2b(
        (7).to_bytes(8, "big"), digest_size=16, person=b"dagrider/fence"
    ).digest()
    (tmp_path / FENCE_FILE).write_bytes((7).to_bytes(8, "big") + check)
    fence = Fence(tmp_path, fsync=False)
    assert (fence.round, fence.flushes) == (7, None)
    fence.reset(12)
    fence.close()
    again = Fence(tmp_path, fsync=False)
    assert (again.round, again.flushes) == (7, 12)


def test_a_damaged_flush_count_is_a_damaged_store(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    _store(db).close()
    with contextlib.closing(sqlite3.connect(db)) as raw:
        raw.execute("INSERT OR REPLACE INTO meta VALUES ('flushes', x'00')")
        raw.commit()
    with pytest.raises(StorageCorrupt, match="'flushes' is not a count"):
        _store(db)
