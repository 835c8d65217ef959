"""The committed-transaction index: partitioned by log position, looked up by id."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagrider.codec import Codec
from dagrider.effects import Commit
from dagrider.messages import Vertex, genesis
from dagrider.node.store import Store, _id_prefix, tx_digest
from dagrider.params import Limits


def _store(path: Path) -> Store:
    return Store(path / "node.sqlite3", Codec(4, Limits()), b"c" * 32, gc_depth=8)


def _commit(store: Store, index: int, tx_index: int, block: tuple[bytes, ...]) -> None:
    v = Vertex(1 + index // 4, index % 4, block, tuple(g.ref for g in genesis(4)[:3]), ())
    store.apply([Commit(index, tx_index, v, 1, v.ref)], None, [], float(index))


def test_lookups_cross_partitions_and_find_the_first_occurrence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dagrider.node.store.TX_PART_BITS", 2)  # partitions of 4
    store = _store(tmp_path)
    blocks = [tuple(f"b{i}-{k}".encode() for k in range(3)) for i in range(5)]
    tx_index = 0
    for i, block in enumerate(blocks):
        _commit(store, i, tx_index, block)
        tx_index += len(block)
    parts = store._db.execute("SELECT COUNT(DISTINCT part) FROM tx_index").fetchone()[0]
    assert parts == 4  # 15 transactions in partitions of 4
    for i, block in enumerate(blocks):
        for k, tx in enumerate(block):
            row = store.find_tx(tx_digest(tx))
            assert row is not None and row.index == 3 * i + k and row.data == tx
    _commit(store, 5, tx_index, (b"b0-1",))  # the same bytes committed again, later
    row = store.find_tx(tx_digest(b"b0-1"))
    assert row is not None and row.index == 1  # the first occurrence
    assert store.find_tx(tx_digest(b"never")) is None


def test_rows_of_the_older_unpartitioned_table_are_still_found(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _commit(store, 0, 0, (b"old", b"new"))
    store._db.execute("DELETE FROM tx_index")  # as if indexed by an older node...
    store._db.execute(
        "INSERT INTO tx_ids VALUES (?, ?)", (_id_prefix(tx_digest(b"old")), 0)
    )  # ...in the table it used
    row = store.find_tx(tx_digest(b"old"))
    assert row is not None and row.index == 0
    assert store.find_tx(tx_digest(b"new")) is None
