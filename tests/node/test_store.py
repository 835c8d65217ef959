"""The SQLite store: what goes in comes back out, per table, and across reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dagrider.checkpoint import Certificate, Checkpoint
from dagrider.codec import Codec
from dagrider.effects import Broadcast, CheckpointReached, Commit, Delivered, Proposed, Requeued
from dagrider.messages import Echo, Ready, Vertex, VertexRef, genesis
from dagrider.node.store import CHECKPOINTS_KEPT, Store, StoreError, tx_digest
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
    # "a" went into our vertex; the requeued "z" is back at the front, where the
    # process put it, so a restart resumes the same order.
    assert mempool == [b"z", b"b", b"c"]
    assert recovery.own == [own] and recovery.delivered == [other]
    assert recovery.votes == [Echo(1, 1, other.digest), Ready(1, 1, other.digest)]
    assert recovery.ordering == state and recovery.committed == 10
    catchup = reopened.catchup(1, 2)
    assert catchup == [(Ready(1, 1, other.digest), other)]


def test_refuses_a_store_of_another_committee(tmp_path: Path) -> None:
    _store(tmp_path).close()
    with pytest.raises(StoreError, match="another committee"):
        _store(tmp_path, b"d" * 32)


# -- bounded storage: log retention, certificates, vacuum --------------------------------

GC_STEP = 17  # rounds the GC floor must rise for a GC step


class LogWriter:
    """Commits vertices of ``per_vertex`` transactions, one GC step per ``step()``."""

    def __init__(self, store: Store, per_vertex: int, size: int = 8) -> None:
        self.store = store
        self.per_vertex = per_vertex
        self.size = size
        self.index = 0  # next vertex index
        self.tx_index = 0
        self.leader_round = 8  # gc_depth: every step() raises the floor enough
        self.committed: list[bytes] = []

    def state(self) -> OrderingState:
        return OrderingState(1, 0, self.leader_round, self.index, self.tx_index, ())

    def step(self, vertices: int, checkpoint: bool = False) -> None:
        """Commit ``vertices`` vertices (then reach a checkpoint) and raise the floor."""
        effects: list[object] = []
        for _ in range(vertices):
            block = tuple(
                f"tx-{self.tx_index + k}-".encode().ljust(self.size, b"x")
                for k in range(self.per_vertex)
            )
            v = _vertex(1 + self.index // 4, self.index % 4, block)
            effects.append(Commit(self.index, self.tx_index, v, 1, v.ref))
            self.committed += block
            self.index += 1
            self.tx_index += len(block)
        if checkpoint:
            effects.append(CheckpointReached(self.state()))
        self.leader_round += GC_STEP
        self.store.apply(effects, self.state(), [], now=1.0)  # type: ignore[arg-type]


def _retaining(path: Path, keep: int) -> Store:
    return Store(
        path / "node.sqlite3", Codec(4, Limits()), COMMITTEE, gc_depth=8, keep_log_entries=keep
    )


def _count(store: Store, table: str) -> int:
    return int(store._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def test_log_retention_cuts_at_whole_rows_and_forgets_pruned_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dagrider.node.store.TX_PART_BITS", 4)  # id partitions of 16
    store = _retaining(tmp_path, keep=25)
    w = LogWriter(store, per_vertex=10)
    w.step(3)  # 30 transactions: the cut (30 - 25 = 5) lies inside the first row
    assert store.first_log_index() == 0
    w.step(2)  # 50: keep from 25, i.e. the row holding it, which starts at 20
    assert store.first_log_index() == 20
    assert store.log_head() == 49
    assert [r.index for r in store.log_after(19, 1000)] == list(range(20, 50))
    assert store.log_after(-1, 1)[0].index == 20  # pruned positions are skipped
    # Whole id partitions below the cut go (0..15); 16..19 stay, pointing at no row.
    assert _count(store, "tx_index") == 34 and _count(store, "log") == 3
    assert store.find_tx(tx_digest(w.committed[17])) is None
    assert store.find_tx(tx_digest(w.committed[19])) is None  # pruned: forgotten
    assert store.find_tx(tx_digest(w.committed[20])) is not None
    rows, done = store.log_rows(0, 100, 1 << 20)
    assert [r.index for r in rows] == [2, 3, 4] and done
    store.close()
    reopened = _retaining(tmp_path, keep=25)
    assert reopened.first_log_index() == 20  # derived from the file, not remembered


def test_retention_is_off_by_default_and_bounded_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    whole = LogWriter(_store(tmp_path / "a"), per_vertex=10)
    for _ in range(5):
        whole.step(2)
    assert whole.store.first_log_index() == 0 and _count(whole.store, "tx_index") == 100
    monkeypatch.setattr("dagrider.node.store.PRUNE_STEP_TXS", 30)
    (tmp_path / "b").mkdir()
    store = _retaining(tmp_path / "b", keep=10)
    w = LogWriter(store, per_vertex=10)
    w.step(10)  # 100 transactions, keep 10: at most 30 go per step
    assert store.first_log_index() == 30
    w.step(0)
    w.step(0)
    assert store.first_log_index() == 90
    monkeypatch.setattr("dagrider.node.store.PRUNE_STEP_BYTES", 1)
    w.step(3)  # 130: now one row per step (the byte bound)
    assert store.first_log_index() == 100
    assert [r.index for r in store.log_after(99, 1000)] == list(range(100, 130))


def _certificate(state: OrderingState) -> Certificate:
    cp = Checkpoint(
        COMMITTEE, state.next_index, state.next_tx_index, state.chain, bytes(32), bytes(32)
    )
    return Certificate(cp, ((0, bytes(64)), (1, bytes(64))))


def test_certificates_at_or_above_the_kept_log_outlive_checkpoint_rotation(
    tmp_path: Path,
) -> None:
    store = _retaining(tmp_path, keep=400)  # ~40 of the 60 vertices' rows
    w = LogWriter(store, per_vertex=10)
    certified: list[int] = []
    for k in range(30):  # a checkpoint every 2 vertices, every other one certified
        w.step(2, checkpoint=True)
        if k % 2 == 0:
            store.save_certificate(_certificate(w.state()))
            certified.append(w.index)
    start = int(store._db.execute("SELECT MIN(vertex_index) FROM log").fetchone()[0])
    assert store.first_log_index() > 0 and start > 0
    rows = [int(r[0]) for r in store._db.execute("SELECT idx FROM checkpoints ORDER BY idx")]
    newest = sorted({2 * k for k in range(1, 31)})[-CHECKPOINTS_KEPT:]
    expected = sorted(set(newest) | {i for i in certified if i >= start})
    assert rows == expected
    older = [i for i in rows if i not in newest]
    assert older and all(i in certified and i >= start for i in older)
    assert any(i < start for i in certified)  # certificates below the kept log went
    latest = store.latest_certificate()
    assert latest is not None and latest[0].checkpoint.index == certified[-1]


def test_newest_certificate_survives_uncertified_checkpoints(tmp_path: Path) -> None:
    store = _store(tmp_path)  # the whole log: only the rotation applies
    w = LogWriter(store, per_vertex=1)
    w.step(1, checkpoint=True)
    store.save_certificate(_certificate(w.state()))
    for _ in range(2 * CHECKPOINTS_KEPT):  # peers gone: nothing certified any more
        w.step(1, checkpoint=True)
    assert _count(store, "checkpoints") == CHECKPOINTS_KEPT + 1
    latest = store.latest_certificate()
    assert latest is not None and latest[0].checkpoint.index == 1


def _sizes(store: Store) -> tuple[int, int]:
    wal = Path(f"{store.path}-wal")
    return store.path.stat().st_size, wal.stat().st_size if wal.exists() else 0


def test_pruning_gives_the_space_back_and_empties_the_wal(tmp_path: Path) -> None:
    store = _retaining(tmp_path, keep=100)
    assert store.incremental_vacuum
    store.vacuum_min_free_pages = 64
    w = LogWriter(store, per_vertex=50, size=2000)  # ~100 KB per vertex
    store.keep_log_entries = 0
    for _ in range(4):
        w.step(10)  # ~4 MB, nothing pruned
    big, wal = _sizes(store)
    assert big > 4_000_000 and wal == 0  # each GC step ends with a TRUNCATE checkpoint
    store.keep_log_entries = 100
    w.step(1)
    small, wal = _sizes(store)
    assert store.first_log_index() == w.tx_index - 100
    assert small < big // 4 and wal == 0
    assert [r.data for r in store.log_after(w.tx_index - 101, 1000)] == w.committed[-100:]


def test_an_older_file_is_converted_when_small_and_left_alone_when_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("small", "large"):
        db = sqlite3.connect(tmp_path / f"{name}.sqlite3")
        db.execute("CREATE TABLE filler (x BLOB)")  # tables exist: auto_vacuum stays NONE
        db.commit()
        db.close()
    path = tmp_path / "small.sqlite3"
    store = Store(path, Codec(4, Limits()), COMMITTEE, gc_depth=8)
    assert store.incremental_vacuum
    store.close()
    monkeypatch.setattr("dagrider.node.store.VACUUM_ON_OPEN_MAX_BYTES", 0)
    store = Store(tmp_path / "large.sqlite3", Codec(4, Limits()), COMMITTEE, gc_depth=8)
    assert not store.incremental_vacuum
    assert int(store._db.execute("PRAGMA auto_vacuum").fetchone()[0]) == 0
    w = LogWriter(store, per_vertex=1)
    w.step(1)  # GC steps still work (no vacuum)


def test_negative_retention_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_log_entries"):
        _retaining(tmp_path, keep=-1)


def test_a_store_written_before_the_hash_chain_rebuilds_it_from_its_log(tmp_path: Path) -> None:
    """An upgraded node's checkpoints must match its peers': the chain its ordering
    state lacks is recomputed from the log it holds, as the ordering computed it."""
    import msgpack

    from dagrider.checkpoint import CHAIN_GENESIS, chain_next, entry_hash, pack_block

    store = _store(tmp_path)
    blocks = [(b"a", b"b"), (), (b"c",)]
    effects = []
    chain, tx_index = CHAIN_GENESIS, 0
    for i, block in enumerate(blocks):
        v = _vertex(1, i, block)
        effects.append(Commit(i, tx_index, v, 1, v.ref))
        if block:
            chain = chain_next(chain, entry_hash(i, tx_index, 1, i, 1, pack_block(block)))
        tx_index += len(block)
    store.apply(effects, None, [], 0.0)
    old = msgpack.packb([2, 1, 1, 3, tx_index, [], []], use_bin_type=True)  # 7 fields
    db = store._db
    db.execute("INSERT OR REPLACE INTO meta VALUES ('ordering', ?)", (old,))
    # As a schema-2 file: no per-row hashes, which the upgrade on open fills in.
    db.execute("DELETE FROM meta WHERE key = 'ordering_sum'")
    db.execute("UPDATE log SET entry = NULL")
    db.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
    store.close()
    recovery, _ = _store(tmp_path).load_recovery()
    assert recovery.ordering is not None and recovery.ordering.chain == chain != CHAIN_GENESIS
