"""The mempool as batches: the store's batch rows, the shell's ledger, admission control."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from dagrider.codec import Codec
from dagrider.effects import Commit, Proposed, Requeued
from dagrider.messages import Vertex, genesis
from dagrider.node.batch import (
    BatchError,
    BatchParser,
    RecordBatch,
    batch_ids,
    encode_batch,
    parse_record_batch,
    split_ids,
)
from dagrider.node.mempool import Admission, Ledger
from dagrider.node.store import Store, tx_digest
from dagrider.params import Limits

COMMITTEE = b"c" * 32


def _store(path: Path) -> Store:
    return Store(path / "node.sqlite3", Codec(4, Limits()), COMMITTEE, gc_depth=8)


def _own(rnd: int, block: tuple[bytes, ...]) -> Vertex:
    return Vertex(rnd, 0, block, tuple(g.ref for g in genesis(4)[:3]), ())


def _txs(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}{k}".encode() for k in range(n)]


# -- record batches -----------------------------------------------------------------------


@settings(max_examples=examples(8), deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=8))
def test_whole_body_parser_agrees_with_the_incremental_one(data: bytes, limit: int) -> None:
    try:
        parser = BatchParser(limit, expected_size=len(data))
        parser.feed(data)
        expected: list[bytes] | tuple[int, int] = parser.finish()
    except BatchError as exc:
        expected = (exc.status, exc.offset)
    try:
        batch = parse_record_batch(data, limit)
        got: list[bytes] | tuple[int, int] = batch.txs
        assert batch.records == data
    except BatchError as exc:
        got = (exc.status, exc.offset)
    assert got == expected


def test_a_record_batch_is_a_sequence_with_its_ids_computed_once() -> None:
    txs = _txs("t", 5)
    batch = RecordBatch(txs)
    assert list(batch) == txs and len(batch) == 5 and batch[1] == b"t1"
    assert batch.records == encode_batch(txs)
    assert split_ids(batch.ids) == [tx_digest(tx) for tx in txs]
    assert batch.ids is batch.ids  # cached
    with pytest.raises(ValueError, match="multiple of 32"):
        split_ids(b"x" * 33)


# -- the stored mempool: one row per batch ------------------------------------------------


def test_a_batch_is_one_row_and_proposals_take_from_the_front(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first, second = _txs("a", 3), _txs("b", 4)
    ids = store.add_to_mempool(first)
    assert ids == [tx_digest(tx) for tx in first]
    store.add_to_mempool(RecordBatch(second), batch_ids(second), encode_batch(second))
    rows = store._db.execute("SELECT COUNT(*) FROM mempool_batches").fetchone()[0]
    assert rows == 2
    # A vertex takes 4: the first batch and one of the second.
    store.apply([Proposed(_own(1, tuple(first + second[:1])))], None, [], 1.0)
    assert not store.pending(tx_digest(first[0]))
    assert not store.pending(tx_digest(second[0]))
    assert store.pending(tx_digest(second[1]))
    store.apply([Proposed(_own(2, (second[1],)))], None, [], 2.0)  # a second partial take
    assert store._db.execute("SELECT seq, taken FROM mempool_head").fetchall() == [(2, 2)]
    store.close()
    reopened = _store(tmp_path)
    _, mempool = reopened.load_recovery()
    assert mempool == second[2:]
    reopened.apply([Proposed(_own(3, tuple(second[2:])))], None, [], 3.0)  # exactly the rest
    assert reopened.load_recovery()[1] == []
    assert reopened._db.execute("SELECT COUNT(*) FROM mempool_head").fetchone()[0] == 0


def test_a_replayed_proposal_takes_nothing_and_requeued_go_first(tmp_path: Path) -> None:
    store = _store(tmp_path)
    waiting = _txs("w", 3)
    store.add_to_mempool(waiting)
    old = _own(1, (b"old",))
    # Re-proposed from the store after a restart: its block left the mempool long ago.
    store.apply([Proposed(old, fresh=False)], None, [], 1.0)
    store.apply([Requeued((b"r1", b"r2"))], None, [], 2.0)
    store.apply([Requeued((b"r0",))], None, [], 3.0)
    _, mempool = store.load_recovery()
    assert mempool == [b"r0", b"r1", b"r2", *waiting]
    store.apply([Proposed(_own(2, (b"r0", b"r1")))], None, [], 4.0)
    _, mempool = store.load_recovery()
    assert mempool == [b"r2", *waiting]


def test_rows_of_the_per_transaction_mempool_are_moved_into_a_batch(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.add_to_mempool([b"new"])
    for tx in (b"old1", b"old2"):  # what an older node left behind
        store._db.execute("INSERT INTO mempool(tx_id, data) VALUES (?, ?)", (tx_digest(tx), tx))
    _, mempool = store.load_recovery()
    assert mempool == [b"old1", b"old2", b"new"]
    assert store._db.execute("SELECT COUNT(*) FROM mempool").fetchone()[0] == 0
    assert store.pending(tx_digest(b"old2"))
    _, again = store.load_recovery()
    assert again == mempool


def test_commit_indexes_known_ids_without_rehashing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    block = tuple(_txs("c", 3))
    v = _own(1, block)
    # Ids the node computed at ingest; a wrong one shows that they were used as given.
    fake = batch_ids([b"x", b"y", b"z"])
    store.remember_ids(v.digest, fake)
    store.apply([Commit(0, 0, v, 1, v.ref)], None, [], 1.0)
    assert store.known_ids == {}
    assert store.find_tx(tx_digest(b"c0")) is None  # indexed under the given ids
    other = _own(2, (b"d0",))
    store.apply([Commit(1, 3, other, 1, other.ref)], None, [], 2.0)
    row = store.find_tx(tx_digest(b"d0"))  # nothing known: hashed at commit
    assert row is not None and row.index == 3


# -- the ledger ---------------------------------------------------------------------------


def test_the_ledger_follows_the_process_order_per_batch() -> None:
    ledger = Ledger()
    a, b = batch_ids(_txs("a", 3)), batch_ids(_txs("b", 2))
    ledger.added(a, 10.0)
    ledger.added(b, 11.0)
    assert len(ledger) == 5 and ledger.is_pending(a[:32])
    ids, pieces = ledger.proposed(b"v1", 4, 12.0)
    assert ids == a + b[:32]
    assert [(p.submitted, p.count) for p in pieces] == [(10.0, 3), (11.0, 1)]
    assert ledger.is_pending(a[:32])  # proposed, not yet ordered: still pending
    assert ledger.is_pending(b[32:]) and not ledger.is_pending(b"\x00" * 32)
    ledger.requeued([b"r"], 13.0)
    assert ledger.pieces[0].ids == tx_digest(b"r") and len(ledger) == 2
    assert ledger.delivered(b"v1", 14.0) is not None
    assert ledger.delivered(b"v1", 15.0) is None  # once
    delivered, flight = ledger.committed(b"v1")
    assert delivered == 15.0 and flight is not None and flight.proposed == 12.0
    assert ledger.committed(b"v1") == (None, None)
    assert not ledger.is_pending(a[:32])  # ordered: the log answers for it now


def test_a_duplicate_stays_pending_until_its_last_copy_is_ordered() -> None:
    ledger = Ledger()
    ids = batch_ids([b"same", b"same"])
    ledger.added(ids, 1.0)
    ledger.proposed(b"v", 1, 2.0)
    ledger.committed(b"v")
    assert ledger.is_pending(tx_digest(b"same"))
    ledger.proposed(b"w", 1, 3.0)
    ledger.committed(b"w")
    assert not ledger.is_pending(tx_digest(b"same"))


def test_an_id_found_across_two_ids_is_not_pending() -> None:
    ledger = Ledger()
    ids = batch_ids([b"p", b"q"])
    ledger.added(ids, 1.0)
    assert not ledger.is_pending(ids[16:48])  # the tail of one id and the head of the next


# -- admission ----------------------------------------------------------------------------


def test_admission_follows_the_measured_drain_rate() -> None:
    adm = Admission(floor=2_000, hard_cap=1_000_000, max_delay=1.0, tau=1.0)
    assert adm.limit() == 2_000  # no rate yet: the floor
    assert adm.check(0, 2_000) is None
    assert adm.check(1_500, 1_000) is None  # under the limit: admitted whole
    wait = adm.check(2_000, 1_000)
    assert wait is not None and wait > 0
    now = 0.0
    for _ in range(200):  # 10,000 tx/s drained for 10 s
        adm.drained(500, now)
        now += 0.05
    assert 9_000 < adm.rate < 11_000
    assert 9_000 < adm.limit() < 11_000
    assert adm.check(8_000, 1_000) is None
    wait = adm.check(12_000, 1_000)
    assert wait is not None and 0.2 < wait < 0.5  # ~3,000 over at ~10,000 tx/s
    for _ in range(200):  # the committee slows down to 1,000 tx/s: the limit follows
        adm.drained(50, now)
        now += 0.05
    assert adm.limit() < 2_500


def test_admission_never_exceeds_the_hard_cap() -> None:
    adm = Admission(floor=10, hard_cap=100, max_delay=5.0, tau=0.5)
    for k in range(100):
        adm.drained(1_000, k * 0.25)
    assert adm.limit() == 100
    assert adm.check(100, 1) is not None
