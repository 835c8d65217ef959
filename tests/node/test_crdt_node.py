"""The node's CRDT shell in process: persistence, checkpoints from the log, sync between
two nodes over a fake wire, and the HTTP routes' refusals."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from crdt.change import KeySigner
from crdt.checkpoint import encode_checkpoint
from crdt.document import parse_intents, prepare_ops
from crdt.errors import InvalidOperation
from dagrider.node.api import build_app
from dagrider.node.crdt_node import (
    CheckpointCompacted,
    CheckpointIncomplete,
    CrdtNode,
    UnknownCheckpoint,
    UnknownDocument,
)
from dagrider.node.crdt_store import CrdtStore
from dagrider.node.store import LogRow

SEEDS = [bytes([i + 1]) * 32 for i in range(3)]
KEYS = [KeySigner(s).public_key for s in SEEDS]
DOMAIN = b"committee-id"


class FakeLog:
    """The consensus log as far as the CRDT shell reads it (crash repair)."""

    def __init__(self) -> None:
        self.rows: list[LogRow] = []

    def append(self, tx: bytes) -> int:
        index = len(self.rows)
        self.rows.append(LogRow(index, b"", tx, 1, 0, 1, 0.0))
        return index

    def log_after(self, after: int, limit: int) -> list[LogRow]:
        return self.rows[after + 1 : after + 1 + limit]


class Harness:
    def __init__(self, tmp: Path, me: int, log: FakeLog, **compaction: int) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.submitted: list[bytes] = []
        self.peers: list[bytes] = []
        self.path = tmp / f"node-{me}.sqlite3"
        self.me, self.log = me, log
        self.compaction = compaction
        self.node = self.build()

    def build(self) -> CrdtNode:
        node = CrdtNode(
            seed=SEEDS[self.me],
            writers={"*": KEYS[:2], "ro": []},
            checkpoint_signers=KEYS[:2],
            domain=DOMAIN,
            store=CrdtStore(self.path, fsync=False),
            log_store=self.log,  # type: ignore[arg-type]
            send=lambda peer, data, kind: self.sent.append((peer, data)) is None,
            connected=lambda: self.peers,
            submit=self.submit,
            sync_interval=1.0,
            checkpoint_interval=1.0,
            logger=logging.getLogger("test-crdt"),
            **self.compaction,
        )
        node.load()
        return node

    def commit_submitted(self, *others: Harness) -> None:
        """Order what this node submitted; every node on the log sees it."""
        txs, self.submitted = self.submitted, []
        for tx in txs:
            index = self.log.append(tx)
            for h in (self, *others):
                h.node.on_commit(index, [tx])

    def submit(self, txs: Sequence[bytes]) -> list[str]:
        self.submitted.extend(txs)
        return []

    def put(self, doc: str, ops: list[dict[str, Any]]) -> None:
        self.node.update(doc, parse_intents({"ops": ops}))


def inc(n: int = 1, path: str = "n") -> list[dict[str, Any]]:
    return [{"path": [path], "type": "pncounter", "action": "inc", "args": n}]


def pump(a: Harness, b: Harness) -> int:
    """Deliver messages between two harnesses until both are quiet."""
    moved = 0
    while a.sent or b.sent:
        for src, dst in ((a, b), (b, a)):
            batch, src.sent = src.sent, []
            for _peer, data in batch:
                dst.node.on_frame(KEYS[src.me], data)
                moved += 1
    return moved


def test_writes_survive_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path, 0, FakeLog())
    h.put("app/x", inc(3))
    h.put(
        "app/x",
        [{"path": ["t"], "type": "text", "action": "insert", "args": {"index": 0, "text": "ok"}}],
    )
    before = h.node.read("app/x")
    h.node.store.close()
    again = h.build()
    assert again.read("app/x") == before and before["value"] == {"n": 3, "t": "ok"}


def test_two_nodes_converge_over_the_wire(tmp_path: Path) -> None:
    log = FakeLog()
    a, b = Harness(tmp_path, 0, log), Harness(tmp_path, 1, log)
    a.peers, b.peers = [KEYS[1]], [KEYS[0]]
    for i in range(20):
        a.put("app/x", inc(1))
        b.put("app/y", inc(2, f"k{i}"))
    a.sent.clear()  # the pushes were lost
    b.sent.clear()
    a.node.on_connected(KEYS[1])
    assert pump(a, b) > 0
    assert a.node.read("app/y") == b.node.read("app/y")
    assert a.node.read("app/x")["state_hash"] == b.node.read("app/x")["state_hash"]
    a.put("app/x", inc(5))  # a push is enough now
    pump(a, b)
    assert b.node.read("app/x")["value"] == {"n": 25}


def test_checkpoints_come_from_the_log_only_when_signed_by_a_member(tmp_path: Path) -> None:
    log = FakeLog()
    h = Harness(tmp_path, 0, log)
    h.put("app/x", inc(1))
    assert h.node.submit_checkpoint() and not h.node.submit_checkpoint()  # unchanged heads
    good = h.submitted[-1]
    outsider = encode_checkpoint(KeySigner(SEEDS[2]), DOMAIN, h.node.replica.heads)
    other_domain = encode_checkpoint(KeySigner(SEEDS[1]), b"elsewhere", h.node.replica.heads)
    for tx in (outsider, other_domain, b"\x00drcrdt-ckpt\x00garbage", good, good):
        h.node.on_commit(log.append(tx), [tx])
    cps = h.node.checkpoints()
    assert [c["k"] for c in cps] == [1] and cps[0]["log_index"] == 3  # duplicate cut skipped
    h.put("app/x", inc(1))
    assert h.node.read("app/x", 1)["value"] == {"n": 1}
    assert h.node.read("app/x")["value"] == {"n": 2}
    with pytest.raises(UnknownCheckpoint):
        h.node.read("app/x", 2)
    with pytest.raises(UnknownDocument):
        h.node.read("app/none", 1)


def test_a_checkpoint_missing_from_the_store_is_found_again_after_a_crash(tmp_path: Path) -> None:
    log = FakeLog()
    h = Harness(tmp_path, 0, log)
    h.put("app/x", inc(1))
    h.node.submit_checkpoint()
    log.append(b"some client transaction")
    log.append(h.submitted[-1])  # committed, but the node crashed before on_commit ran
    h.node.store.close()
    again = h.build()
    assert [c["log_index"] for c in again.checkpoints()] == [1]


def test_a_checkpoint_of_changes_not_yet_here_is_incomplete(tmp_path: Path) -> None:
    log = FakeLog()
    a, b = Harness(tmp_path, 0, log), Harness(tmp_path, 1, log)
    a.put("app/x", inc(1))
    a.node.submit_checkpoint()
    tx = a.submitted[-1]
    b.node.on_commit(log.append(tx), [tx])
    with pytest.raises(CheckpointIncomplete):
        b.node.read("app/x", 1)
    a.peers, b.peers = [KEYS[1]], [KEYS[0]]
    b.node.on_connected(KEYS[0])
    pump(a, b)
    assert b.node.read("app/x", 1)["value"] == {"n": 1}


def test_unauthorized_and_invalid_local_writes_change_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path, 0, FakeLog())
    h.put("app/x", inc(1))
    before = h.node.status()
    with pytest.raises(InvalidOperation, match="unauthorized"):
        h.put("ro/x", inc(1))
    with pytest.raises(InvalidOperation):
        h.put("app/x", [{"path": ["s"], "type": "orset", "action": "remove", "args": "absent"}])
    assert h.node.status() == before


def test_garbage_from_a_peer_is_a_fault_not_a_crash(tmp_path: Path) -> None:
    h = Harness(tmp_path, 0, FakeLog())
    h.put("app/x", inc(1))
    before = h.node.read("app/x")
    for junk in (b"", b"\xff" * 10, b"\x93\x02\x91\xc4\x03abc", b"\x95\x01\x01\xc3\x90\xc0"):
        h.node.on_frame(KEYS[1], junk)
    assert h.node.faults >= 3 and h.node.read("app/x") == before


async def _client(h: Harness) -> TestClient[web.Request, web.Application]:
    app = build_app(object(), None, 1 << 16, crdt=h.node)  # type: ignore[arg-type]
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    return client


def test_http_routes_and_refusals(tmp_path: Path) -> None:
    h = Harness(tmp_path, 0, FakeLog())

    async def main() -> None:
        client = await _client(h)
        try:
            ok = await client.post("/v1/crdt/docs/app/a/b", json={"ops": inc(2)})
            assert ok.status == 201 and (await ok.json())["value"] == {"n": 2}
            listing = await (await client.get("/v1/crdt/docs")).json()
            assert listing == {"documents": [{"doc": "app/a/b"}]}
            got = await (await client.get("/v1/crdt/docs/app/a/b")).json()
            assert got["value"] == {"n": 2} and len(got["heads"]) == 1
            refusals = [
                ("post", "/v1/crdt/docs/app/a", b"{", 400, "not JSON"),
                ("post", "/v1/crdt/docs/app/a", b"[" * 30_000 + b"]" * 30_000, 400, "not JSON"),
                ("post", "/v1/crdt/docs/app/a", b'{"ops": 1}', 400, "ops"),
                ("post", "/v1/crdt/docs/app/a", b'{"ops": [], "x": 1}', 400, "body"),
                ("post", "/v1/crdt/docs/app/a", b"x" * 70_000, 413, "limit"),
                ("post", "/v1/crdt/docs/ro/a", json.dumps({"ops": inc()}).encode(), 400, "unauth"),
                ("get", "/v1/crdt/docs/app/a/b?checkpoint=x", b"", 400, "checkpoint"),
                ("get", "/v1/crdt/docs/app/a/b?checkpoint=3", b"", 404, "not been ordered"),
                ("get", "/v1/crdt/docs/app/zzz", b"", 404, "does not exist"),
                ("get", "/v1/crdt/checkpoints/0x", b"", 400, "positive integer"),
                ("get", "/v1/crdt/checkpoints/1", b"", 404, "not been ordered"),
                ("get", "/v1/crdt/checkpoints?limit=0", b"", 400, "limit"),
            ]
            for method, path, body, status, needle in refusals:
                r = await client.request(method, path, data=body or None)
                text = await r.text()
                assert r.status == status and needle in text, (path, r.status, text)
            assert (await client.get("/v1/crdt/docs/app/a/b")).status == 200
            assert h.node.status()["changes"] == 1
        finally:
            await client.close()

    asyncio.run(main())


def test_sse_stream_reports_changes_for_one_document(tmp_path: Path) -> None:
    h = Harness(tmp_path, 0, FakeLog())

    async def main() -> None:
        client = await _client(h)
        try:
            resp = await client.get("/v1/crdt/stream?doc=app/b")
            assert resp.status == 200
            await resp.content.readline()  # ": stream open"
            h.put("app/a", inc(1))
            h.put("app/b", inc(1))
            lines = [await resp.content.readline() for _ in range(3)]
            await resp.content.readline()
            assert lines[1].startswith(b"event: change")
            event = json.loads(lines[2][5:])
            assert event["doc"] == "app/b" and event["local"] is True
            resp.close()
        finally:
            await client.close()

    asyncio.run(main())


# -- compaction ----------------------------------------------------------------------------------

COMPACT = {"compact_min_changes": 5, "attest_every": 1}


def finalise(h: Harness, *others: Harness) -> int:
    """Order a checkpoint of ``h``'s heads, then ``h``'s attestation of it: final (n=2)."""
    assert h.node.submit_checkpoint()
    h.commit_submitted(*others)
    k = h.node.checkpoint_count()
    assert h.node.submit_checkpoint()  # heads unchanged, but an attestation is due
    h.commit_submitted(*others)
    assert k in h.node.final_checkpoints()
    return k


def stored_hashes(h: Harness) -> int:
    return len(list(h.node.store.changes()))


def test_a_final_checkpoint_compacts_history_in_memory_and_on_disk(tmp_path: Path) -> None:
    log = FakeLog()
    h = Harness(tmp_path, 0, log, **COMPACT)
    for i in range(12):
        h.put("app/x", inc(1, f"k{i % 3}"))
    before = h.node.read("app/x")
    k = finalise(h)
    assert not h.node.submit_checkpoint()  # attested once only
    assert h.node.compact() and not h.node.compact()
    assert stored_hashes(h) == 0 and h.node.store.snapshot() is not None
    st = h.node.status()
    assert st["changes"] == 12 and st["compaction"]["live_changes"] == 0
    assert st["compaction"]["snapshot_checkpoint"] == k and st["final_checkpoint"] == k
    assert h.node.read("app/x") == before
    assert h.node.read("app/x", k)["state_hash"] == before["state_hash"]
    h.put("app/x", inc(5, "k0"))
    after = h.node.read("app/x")
    assert stored_hashes(h) == 1
    h.node.store.close()
    again = h.build()  # restart: the snapshot plus the one later change
    assert again.read("app/x") == after and again.status()["changes"] == 13
    assert again.read("app/x", k)["state_hash"] == before["state_hash"]
    assert again.final_checkpoints() == h.node.final_checkpoints()


def test_an_older_checkpoint_reads_as_compacted(tmp_path: Path) -> None:
    log = FakeLog()
    h = Harness(tmp_path, 0, log, **COMPACT)
    h.put("app/x", inc(1))
    assert h.node.submit_checkpoint()
    h.commit_submitted()
    for _ in range(6):
        h.put("app/x", inc(1))
    k = finalise(h)
    assert k == 2 and h.node.compact()
    with pytest.raises(CheckpointCompacted, match="compacted into the snapshot of checkpoint 2"):
        h.node.read("app/x", 1)

    async def main() -> None:
        client = await _client(h)
        try:
            r = await client.get("/v1/crdt/docs/app/x?checkpoint=1")
            assert r.status == 410 and "compacted" in await r.text()
            ok = await client.get("/v1/crdt/docs/app/x?checkpoint=2")
            assert ok.status == 200 and (await ok.json())["value"] == {"n": 7}
        finally:
            await client.close()

    asyncio.run(main())


def test_without_a_quorum_of_attestations_nothing_is_compacted(tmp_path: Path) -> None:
    log = FakeLog()
    h = Harness(tmp_path, 0, log, compact_min_changes=5, attest_every=1, attest_quorum=2)
    for _ in range(8):
        h.put("app/x", inc(1))
    assert h.node.submit_checkpoint()
    h.commit_submitted()
    assert h.node.submit_checkpoint()
    h.commit_submitted()
    assert h.node.final_checkpoints() == {} and not h.node.compact()
    # an outsider's attestation does not count; a second member's does
    attest = (1, h.node._candidate(1).digest)  # type: ignore[union-attr]
    outsider = encode_checkpoint(KeySigner(SEEDS[2]), DOMAIN, h.node.replica.heads, [attest])
    member = encode_checkpoint(KeySigner(SEEDS[1]), DOMAIN, h.node.replica.heads, [attest])
    h.node.on_commit(log.append(outsider), [outsider])
    assert h.node.final_checkpoints() == {}
    h.node.on_commit(log.append(member), [member])
    assert h.node.final_checkpoints() == {1: attest[1]} and h.node.compact()


def test_a_lying_quorum_is_not_compacted_at(tmp_path: Path) -> None:
    log = FakeLog()
    h = Harness(tmp_path, 0, log, **COMPACT)
    for _ in range(8):
        h.put("app/x", inc(1))
    assert h.node.submit_checkpoint()
    h.commit_submitted()
    lie = encode_checkpoint(KeySigner(SEEDS[1]), DOMAIN, h.node.replica.heads, [(1, b"\x66" * 32)])
    h.node.on_commit(log.append(lie), [lie])
    assert h.node.final_checkpoints() == {1: b"\x66" * 32}
    assert not h.node.compact() and h.node.status()["compaction"]["live_changes"] == 8


def test_a_fresh_node_bootstraps_from_the_snapshot_and_later_changes(tmp_path: Path) -> None:
    log = FakeLog()
    a = Harness(tmp_path, 0, log, **COMPACT)
    for i in range(20):
        a.put("app/x", inc(1, f"k{i % 4}"))
        a.put("app/y", [{"path": ["s"], "type": "orset", "action": "add", "args": i}])
    finalise(a)
    assert a.node.compact()
    a.put("app/x", inc(100, "later"))  # above the snapshot
    b = Harness(tmp_path, 1, log, **COMPACT)  # joins now, and reads the log from the start
    assert b.node.final_checkpoints() == a.node.final_checkpoints()
    a.peers, b.peers = [KEYS[1]], [KEYS[0]]
    b.node.on_connected(KEYS[0])
    pump(a, b)
    for doc in ("app/x", "app/y"):
        assert b.node.read(doc)["state_hash"] == a.node.read(doc)["state_hash"]
    assert b.node.read("app/x")["value"]["later"] == 100
    sb = b.node.status()
    assert sb["changes"] == 41 and sb["compaction"]["live_changes"] == 1
    assert sb["compaction"]["snapshots_installed"] == 1 and b.node.faults == 0
    assert stored_hashes(b) == 1 and b.node.store.snapshot() is not None
    b.node.store.close()
    again = b.build()
    assert again.read("app/x") == b.node.read("app/x")


def test_store_bytes_before_and_after_compacting_10000_changes(tmp_path: Path) -> None:
    """The measurement: a 10,000-change history (small counter and register writes by
    three authors on a few documents), then compaction below a checkpoint of all of it."""
    log = FakeLog()
    h = Harness(tmp_path, 0, log, compact_min_changes=1000, attest_every=1)
    writers = [KeySigner(SEEDS[i]) for i in range(2)]
    replica = h.node.replica
    batch = []
    for i in range(10_000):
        doc = f"app/doc{i % 10}"
        intents = (
            inc(1 + i % 5, f"c{i % 7}")
            if i % 2
            else [{"path": [f"r{i % 13}"], "type": "lww", "action": "set", "args": i}]
        )
        ops = prepare_ops(replica.document(doc), parse_intents({"ops": intents}), KEYS[i % 2])
        _change, receipt = replica.create(writers[i % 2], doc, ops, 1_700_000_000_000 + i)
        batch.extend((c.hash, c.encoded) for c in receipt.applied)
    h.node.store.add_changes(batch)
    before_bytes = h.node.store.stored_bytes()
    history = sum(len(data) for _, data in batch)
    values = {d: h.node.read(d)["state_hash"] for d in replica.documents()}
    finalise(h)
    t0 = time.perf_counter()
    assert h.node.compact()
    took = time.perf_counter() - t0
    after_bytes = h.node.store.stored_bytes()
    snapshot = h.node.store.snapshot()
    assert snapshot is not None
    print(
        f"\ncrdt store, 10,000 changes ({history:,} B of encoded changes): "
        f"{before_bytes:,} B in the crdt tables before compaction, {after_bytes:,} B after "
        f"({after_bytes / before_bytes:.1%}; snapshot {len(snapshot.data):,} B, of which "
        f"{10_000 * 41:,} B ids+clocks); compaction took {took * 1000:.0f} ms"
    )
    # The snapshot is the ids and clocks (41 B a change) and the documents' states, whose
    # OR-Map keys keep one dot per update (see the report): well below the history.
    assert after_bytes < 0.6 * before_bytes
    assert {d: h.node.read(d)["state_hash"] for d in replica.documents()} == values
    h.node.store.close()
    again = h.build()
    assert {d: again.read(d)["state_hash"] for d in replica.documents()} == values
