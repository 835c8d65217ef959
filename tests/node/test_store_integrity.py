"""The store under damage and a full disk: a damaged row is never served (a clear error
naming it), a failed write leaves nothing half-written, and an old file is upgraded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dagrider.checkpoint import CHAIN_GENESIS, chain_next, entry_hash, pack_block
from dagrider.codec import Codec
from dagrider.effects import Broadcast, CheckpointReached, Commit, Delivered, Proposed
from dagrider.messages import Echo, Ready, Vertex, VertexRef, genesis
from dagrider.node.service import StorageCorrupt, StorageUnavailable
from dagrider.node.store import Store, tx_digest
from dagrider.ordering import OrderingState
from dagrider.params import Limits

COMMITTEE = b"c" * 32


def _store(path: Path) -> Store:
    return Store(path / "node.sqlite3", Codec(4, Limits()), COMMITTEE, gc_depth=8)


def _vertex(rnd: int, source: int, block: tuple[bytes, ...]) -> Vertex:
    parents = tuple(g.ref for g in genesis(4)[:3])
    strong = parents if rnd == 1 else tuple(VertexRef(rnd - 1, s, b"\x01" * 32) for s in range(3))
    return Vertex(rnd, source, block, strong, ())


def _committed(store: Store, blocks: list[tuple[bytes, ...]]) -> OrderingState:
    """Commit one vertex per block; returns the ordering state that matches the log."""
    effects = []
    chain, tx_index = CHAIN_GENESIS, 0
    for i, block in enumerate(blocks):
        v = _vertex(1 + i // 4, i % 4, block)
        effects.append(Commit(i, tx_index, v, 1, v.ref))
        if block:
            chain = chain_next(chain, entry_hash(i, tx_index, v.round, i % 4, 1, pack_block(block)))
        tx_index += len(block)
    state = OrderingState(1, 1, 0, len(blocks), tx_index, (), (), chain)
    store.apply(effects, state, [], 1.0)
    return state


def _flip(db: sqlite3.Connection, table: str, column: str, where: str) -> None:
    (value,) = db.execute(f"SELECT {column} FROM {table} WHERE {where}").fetchone()
    b = bytearray(value)
    b[len(b) // 2] ^= 0x01
    db.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (bytes(b),))


def test_a_flipped_byte_in_a_log_row_is_never_served(tmp_path: Path) -> None:
    store = _store(tmp_path)
    blocks = [(b"alpha", b"beta"), (b"gamma",), (b"delta", b"epsilon")]
    _committed(store, blocks)
    _flip(store._db, "log", "block", "vertex_index = 1")
    with pytest.raises(StorageCorrupt, match=r"vertex index 1 \(transaction index 2\)"):
        store.log_after(-1, 100)
    with pytest.raises(StorageCorrupt, match="vertex index 1"):
        store.find_tx(tx_digest(b"gamma"))
    with pytest.raises(StorageCorrupt, match="vertex index 1"):
        store.log_rows(0, 10, 1 << 20)
    # Rows before the damage are still served; the damaged one never is.
    assert [r.data for r in store.log_after(-1, 2)] == [b"alpha", b"beta"]
    store.close()
    # At start-up the tail check finds it before anything is served.
    with pytest.raises(StorageCorrupt, match="vertex index 1"):
        _store(tmp_path).load_recovery()


def test_a_missing_log_row_breaks_the_chain_at_start_up(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _committed(store, [(b"a",), (b"b",), (b"c",)])
    store._db.execute("DELETE FROM log WHERE vertex_index = 1")
    store.close()
    with pytest.raises(StorageCorrupt, match="hash chain"):
        _store(tmp_path).load_recovery()


@pytest.mark.parametrize(
    ("table", "column", "where", "match"),
    [
        ("own", "body", "round = 1", "own proposal for round 1"),
        ("vertices", "body", "round = 1", "vertex at round 1"),
        ("votes", "digest", "kind = 1", "vote"),
        ("meta", "value", "key = 'ordering'", "ordering state"),
        ("mempool_batches", "records", "seq = 1", "mempool batch 1"),
    ],
)
def test_damage_to_what_a_restart_trusts_stops_the_restart(
    tmp_path: Path, table: str, column: str, where: str, match: str
) -> None:
    store = _store(tmp_path)
    v = _vertex(1, 0, (b"tx",))
    other = _vertex(1, 1, (b"other",))
    effects = [
        Proposed(v),
        Delivered(other),
        Broadcast(Echo(1, 1, other.digest)),
        Broadcast(Ready(1, 1, other.digest)),
    ]
    store.apply(effects, OrderingState(0, 0, 0, 0, 0, ()), [], 1.0)
    store.add_to_mempool([b"waiting"])
    assert _store(tmp_path).load_recovery()  # intact: loads
    _flip(store._db, table, column, where)
    store.close()
    with pytest.raises(StorageCorrupt, match=match):
        _store(tmp_path).load_recovery()


def test_a_garbled_or_truncated_file_is_refused_at_open(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _committed(store, [tuple(bytes([i]) * 500 for i in range(40)) for _ in range(30)])
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    path = tmp_path / "node.sqlite3"
    data = path.read_bytes()
    assert len(data) > 8 * 4096
    (tmp_path / "garbled").mkdir()
    garbled = bytearray(data)
    for k in range(4096, 4096 + 64):  # the second page's header and cells
        garbled[k] ^= 0xA5
    (tmp_path / "garbled" / "node.sqlite3").write_bytes(bytes(garbled))
    with pytest.raises(StorageCorrupt, match="damaged"):
        _store(tmp_path / "garbled")
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "node.sqlite3").write_bytes(data[: len(data) // 2])
    with pytest.raises(StorageCorrupt, match="damaged"):
        _store(tmp_path / "truncated")
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "node.sqlite3").write_bytes(b"not a database at all" * 300)
    with pytest.raises(StorageCorrupt, match="damaged"):
        _store(tmp_path / "noise")


def test_a_full_disk_writes_nothing_and_the_batch_can_be_retried(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _committed(store, [(b"first",)])
    pages = int(store._db.execute("PRAGMA page_count").fetchone()[0])
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is now full
    big = tuple(bytes([k]) * 4000 for k in range(64))
    v = _vertex(2, 0, big)
    effects = [Commit(1, 1, v, 1, v.ref), CheckpointReached(OrderingState(1, 1, 0, 2, 65, ()))]
    cut_before = (store.crdt_cut, dict(store.crdt_cut_at), store.floor)
    with pytest.raises(StorageUnavailable, match="full"):
        store.apply(effects, None, [], 2.0)
    assert store.log_head() == 0  # nothing of the batch
    assert (store.crdt_cut, store.crdt_cut_at, store.floor) == cut_before
    with pytest.raises(StorageUnavailable):
        store.add_to_mempool([b"x" * 200_000])
    assert not store.pending(tx_digest(b"x" * 200_000))
    with pytest.raises(StorageUnavailable):
        store.probe()
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    store.probe()
    store.apply(effects, None, [], 2.0)
    assert store.log_head() == 64
    assert [r.index for r in store.log_after(-1, 1000)] == list(range(65))  # no gap


def test_a_schema_2_file_is_upgraded_and_then_checked(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _committed(store, [(b"a",), (b"b",)])
    db = store._db
    db.execute("UPDATE log SET entry = NULL")
    db.execute("DELETE FROM meta WHERE key = 'ordering_sum'")
    db.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
    store.close()
    upgraded = _store(tmp_path)
    assert upgraded._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == 3
    assert [r.data for r in upgraded.log_after(-1, 10)] == [b"a", b"b"]
    _flip(upgraded._db, "log", "block", "vertex_index = 0")
    with pytest.raises(StorageCorrupt):
        upgraded.log_after(-1, 10)


def test_the_store_serves_the_chain_before_any_position(tmp_path: Path) -> None:
    from dagrider.statesync import LogRow

    store = _store(tmp_path)
    blocks = [(b"a",), (), (b"b", b"c"), (b"d",)]
    state = _committed(store, blocks)
    chain, tx_index = CHAIN_GENESIS, 0
    expected = {}
    for i, block in enumerate(blocks):
        expected[i] = chain
        if block:
            rnd = 1 + i // 4
            chain = chain_next(chain, entry_hash(i, tx_index, rnd, i % 4, 1, pack_block(block)))
        tx_index += len(block)
    expected[len(blocks)] = chain
    assert {i: store.chain_before(i) for i in expected} == expected
    assert state.chain == chain
    # Segments of a transfer are kept until an install, and dropped below its start.
    rows = [LogRow(10, 4, 3, 0, 1, pack_block([b"x"])), LogRow(11, 5, 3, 1, 1, pack_block([b"y"]))]
    store.stage(10, 12, b"\x01" * 32, rows)
    store.stage(12, 14, b"\x02" * 32, [])
    assert store.staged(0) == [(10, 12, b"\x01" * 32, rows), (12, 14, b"\x02" * 32, [])]
    assert store.staged(11) == [(12, 14, b"\x02" * 32, [])]
