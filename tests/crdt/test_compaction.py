"""Compaction below a final checkpoint: a snapshot of the cut replaces its history without
changing any state; a fresh replica bootstraps from the snapshot plus the later changes
and equals one with the whole history; changes below the cut are recognised; a forged
snapshot is refused and changes nothing; the pending buffer has per-author quotas."""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import msgpack
import pytest
from crdt_strategies import garbage
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from crdt.change import Change, KeySigner, sign_change
from crdt.document import parse_intents, prepare_ops
from crdt.errors import InvalidOperation
from crdt.limits import CrdtLimits
from crdt.replica import AccessPolicy, CutCompacted, MissingChanges, Receipt, Replica
from crdt.snapshot import Snapshot, SnapshotError, decode_snapshot, snapshot_digest
from crdt.sync import (
    MSG_SNAPSHOT_OFFER,
    MSG_SNAPSHOT_PART,
    SYNC_VERSION,
    SyncEngine,
    SyncResult,
)

AUTHORS = [KeySigner(bytes([0x30 + i]) * 32) for i in range(4)]
POLICY = AccessPolicy.open_to(a.public_key for a in AUTHORS)
DOCS = ["app/a", "app/b", "app/c"]
K = 7  # the checkpoint number the snapshots in these tests pretend to be


def live(r: Replica) -> dict[str, bytes]:
    return {d: msgpack.packb(r.document(d).to_wire(), use_bin_type=True) for d in r.documents()}  # type: ignore[union-attr]


def observable(r: Replica) -> tuple[Any, ...]:
    """Everything a reader or a peer can see of a replica (not how it is stored)."""
    return (list(r.ids), len(r), r.heads, live(r), r.pending_count, r.missing())


def lww(key: str, value: Any) -> dict[str, Any]:
    return {"up": key, "type": "lww", "op": {"v": value}}


def random_update(r: Replica, author: KeySigner, rng: random.Random, step: int) -> Change | None:
    doc = rng.choice(DOCS)
    kind = rng.choice(["lww", "pncounter", "orset", "text"])
    args: Any = {
        "lww": step,
        "pncounter": rng.randint(1, 3),
        "orset": rng.randint(0, 3),
        "text": {"index": 0, "text": "ab"},
    }[kind]
    action = {"lww": "set", "pncounter": "inc", "orset": "add", "text": "insert"}[kind]
    if kind == "orset" and rng.random() < 0.3:
        action = "remove"
    key = rng.choice(["k", "j", "m"])
    intents = parse_intents(
        {"ops": [{"path": [key], "type": kind, "action": action, "args": args}]}
    )
    try:
        ops = prepare_ops(r.document(doc), intents, author.public_key)
    except InvalidOperation:
        return None
    change, _ = r.create(author, doc, ops, 1_000 + step)
    return change


def history(seed: int, steps: int) -> tuple[list[Change], list[tuple[bytes, ...]]]:
    """Four authors writing and merging now and then; every change (in an order in which
    each comes after its dependencies) and the heads each author saw along the way."""
    rng = random.Random(seed)
    rs = [Replica(POLICY) for _ in AUTHORS]
    changes: list[Change] = []
    cuts: list[tuple[bytes, ...]] = []
    for step in range(steps):
        i = rng.randrange(len(rs))
        if rng.random() < 0.25:
            src = rs[rng.randrange(len(rs))]
            for c in src.causal_past(src.heads):
                rs[i].add(c)
        else:
            c = random_update(rs[i], AUTHORS[i], rng, step)
            if c is not None:
                changes.append(c)
        if rs[i].heads:
            cuts.append(rs[i].heads)
    return changes, cuts


def fed(changes: list[Change], limits: CrdtLimits | None = None) -> Replica:
    r = Replica(POLICY, limits)
    for c in changes:
        assert r.add(c).status in ("applied", "duplicate")
    return r


def compacted(changes: list[Change], cut: tuple[bytes, ...], k: int = K) -> Replica:
    r = fed(changes)
    r.compact(r.snapshot_at(k, cut))
    return r


def past_of(changes: list[Change], cut: tuple[bytes, ...]) -> set[bytes]:
    return {c.hash for c in fed(changes).causal_past(cut)}


# -- compaction keeps the state -------------------------------------------------------------


def test_compaction_keeps_every_observable_and_drops_the_bodies() -> None:
    changes, cuts = history(1, 80)
    full = fed(changes)
    cut = cuts[len(cuts) // 2]
    below = past_of(changes, cut)
    r = fed(changes)
    before = observable(r)
    at_cut = {d: s.to_wire() for d, s in r.state_at(cut).items()}
    snap = r.snapshot_at(K, cut)
    dropped = r.compact(snap)
    assert set(dropped) == below and 0 < len(below) < len(changes)
    assert observable(r) == before == observable(full)
    assert r.live_count == len(changes) - len(below) and len(r) == len(changes)
    assert all(r.get(h) is None and h in r and r.is_compacted(h) for h in below)
    assert r.base is snap and {d: s.to_wire() for d, s in r.state_at(cut).items()} == at_cut
    # a cut containing the snapshot's reads the same as with the whole history
    assert {d: s.to_wire() for d, s in r.state_at(r.heads).items()} == {
        d: s.to_wire() for d, s in full.state_at(full.heads).items()
    }
    # and writing on top still works, with the same result as on the full replica
    a, _ = r.create(AUTHORS[0], "app/a", [lww("after", 1)], 10_000)
    assert full.add(a).status == "applied" and observable(r) == observable(full)


def test_cuts_below_or_beside_the_snapshot_are_compacted_not_missing() -> None:
    r = Replica(POLICY)
    root, _ = r.create(AUTHORS[0], "app/a", [lww("k", 0)], 1)
    side = Replica(POLICY)
    side.add(root)
    left, _ = r.create(AUTHORS[0], "app/a", [lww("k", 1)], 2)
    right, _ = side.create(AUTHORS[1], "app/a", [lww("j", 1)], 2)
    r.add(right)
    r.compact(r.snapshot_at(K, [left.hash]))
    with pytest.raises(CutCompacted, match="checkpoint 7"):
        r.state_at([root.hash])  # below the snapshot
    with pytest.raises(CutCompacted):
        r.state_at([right.hash])  # beside it: needs root, compacted, without left
    assert r.state_at([left.hash])["app/a"].value() == {"k": 1}
    assert r.state_at([left.hash, right.hash])["app/a"].value() == {"k": 1, "j": 1}
    assert r.state_at([]) == {}
    with pytest.raises(MissingChanges):
        r.state_at([b"\x77" * 32])
    with pytest.raises(SnapshotError, match="not after"):
        r.compact(r.snapshot_at(K, [left.hash, right.hash]))
    r.compact(r.snapshot_at(K + 1, [left.hash, right.hash]))  # a later cut containing it
    assert r.live_count == 0 and len(r) == 3
    assert [c.hash for c in r.causal_past(r.heads)] == []


def test_changes_below_the_cut_are_recognised_not_reapplied() -> None:
    changes, cuts = history(2, 60)
    cut = cuts[-10]
    below = past_of(changes, cut)
    r = compacted(changes, cut)
    before = observable(r)
    for c in changes:
        if c.hash in below:
            for receipt in (r.add(c), r.receive(c.encoded)):
                assert receipt.status == "duplicate" and receipt.reason == "compacted"
                assert "checkpoint 7" in receipt.detail
    assert observable(r) == before and r.missing() == frozenset()


def test_a_late_change_on_compacted_history_is_checked_like_any_other() -> None:
    """A change concurrent with the cut that depends on compacted changes applies (its
    clock is checked against the compacted dependencies' clocks), and a bad clock is
    rejected exactly as on a replica with the whole history."""
    changes, cuts = history(3, 40)
    cut = cuts[-1]
    full, r = fed(changes), compacted(changes, cut)
    old = changes[len(changes) // 3]
    assert r.is_compacted(old.hash)
    late = sign_change(AUTHORS[3], "app/z", [old.hash], old.hlc + 1, [lww("x", 1)], r.limits)
    stale = sign_change(AUTHORS[3], "app/z", [old.hash], old.hlc, [lww("x", 2)], r.limits)
    for replica in (full, r):
        assert replica.add(late).status == "applied"
        assert replica.add(stale).reason == "clock"
    assert observable(full) == observable(r)


# -- a fresh replica from the snapshot and the later changes ------------------------------


def bootstrap(snapshot: Snapshot, later: list[Change], rng: random.Random) -> Replica:
    fresh = Replica(POLICY)
    early = [c for c in later if rng.random() < 0.3]  # some arrive before the snapshot
    for c in early:
        assert fresh.add(c).status in ("pending", "applied", "duplicate")
    installed = fresh.install(decode_snapshot(snapshot.encode(), fresh.limits))
    assert installed.dropped == ()
    rest = [c for c in later if c not in early]
    rng.shuffle(rest)
    for c in rest:
        assert fresh.add(c).status in ("pending", "applied", "duplicate")
    return fresh


@settings(max_examples=examples(1.6), deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.integers(2, 50), pick=st.floats(0, 1))
def test_snapshot_plus_later_changes_equals_the_whole_history(
    seed: int, steps: int, pick: float
) -> None:
    changes, cuts = history(seed, steps)
    if not cuts:
        return
    cut = cuts[int(pick * (len(cuts) - 1))]
    full = fed(changes)
    below = past_of(changes, cut)
    snapshot = full.snapshot_at(K, cut)
    assert set(snapshot.clocks) == below and snapshot.heads == tuple(sorted(set(cut)))
    assert snapshot_digest(snapshot.encode()) == snapshot.digest
    # identical on every replica holding the cut, whatever else it holds
    other = fed([c for c in changes if c.hash in below])
    assert other.snapshot_at(K, cut).encode() == snapshot.encode()
    later = [c for c in changes if c.hash not in below]
    fresh = bootstrap(snapshot, later, random.Random(seed))
    assert observable(fresh) == observable(full)
    assert fresh.live_count == len(later)
    # compacting in place gives the same as well, and both agree on every later cut
    r = compacted(changes, cut)
    assert observable(r) == observable(full)
    for heads in cuts:
        try:
            want = {d: s.to_wire() for d, s in full.state_at(heads).items()}
        except MissingChanges:
            continue
        for replica in (r, fresh):
            try:
                got = {d: s.to_wire() for d, s in replica.state_at(heads).items()}
            except CutCompacted:
                assert not set(cut) <= {c.hash for c in full.causal_past(heads)}
                continue
            assert got == want


def test_installing_over_own_held_history_merges_and_releases_waiters() -> None:
    changes, cuts = history(4, 60)
    cut = cuts[len(cuts) // 2]
    full = fed(changes)
    snapshot = full.snapshot_at(K, cut)
    below = past_of(changes, cut)
    rng = random.Random(4)
    partial = Replica(POLICY)
    for c in changes:  # holds some changes below the cut, and waits for others
        if rng.random() < 0.5:
            partial.add(c)
    held_below = {h for h in below if h in partial and partial.get(h) is not None}
    result = partial.install(snapshot)
    assert set(result.dropped) == held_below
    assert all(c.hash not in below for c in result.applied)
    for c in changes:
        partial.add(c)
    assert observable(partial) == observable(full)


def test_a_snapshot_must_contain_the_current_one() -> None:
    r = Replica(POLICY)
    root, _ = r.create(AUTHORS[0], "app/a", [lww("k", 0)], 1)
    side = Replica(POLICY)
    side.add(root)
    left, _ = r.create(AUTHORS[0], "app/a", [lww("k", 1)], 2)
    right, _ = side.create(AUTHORS[1], "app/a", [lww("j", 1)], 2)
    s_left = r.snapshot_at(K, [left.hash])
    s_right = side.snapshot_at(K + 1, [right.hash])
    fresh = Replica(POLICY)
    fresh.install(s_left)
    before = observable(fresh)
    with pytest.raises(SnapshotError, match="does not contain"):
        fresh.install(s_right)
    with pytest.raises(SnapshotError, match="not after"):
        fresh.install(s_left)
    assert observable(fresh) == before


# -- the snapshot's encoding --------------------------------------------------------------


def test_snapshot_encoding_round_trips_and_is_canonical() -> None:
    changes, cuts = history(5, 40)
    snap = fed(changes).snapshot_at(K, cuts[-1])
    data = snap.encode()
    again = decode_snapshot(data, CrdtLimits())
    assert again.encode() == data and again.clocks == snap.clocks and again.heads == snap.heads
    assert {d: s.to_wire() for d, s in again.docs.items()} == {
        d: s.to_wire() for d, s in snap.docs.items()
    }
    with pytest.raises(SnapshotError, match="limit"):
        decode_snapshot(data, CrdtLimits(max_snapshot_bytes=len(data) - 1))
    fields = msgpack.unpackb(data, raw=False)
    bad = {
        "version": [2, *fields[1:]],
        "k": [fields[0], 0, *fields[2:]],
        "unsorted heads": [*fields[:2], fields[2][::-1] * 2, *fields[3:]],
        "head not an id": [*fields[:2], [b"\x00" * 32], *fields[3:]],
        "ids ragged": [*fields[:3], fields[3][:-1], *fields[4:]],
        "clocks short": [*fields[:4], fields[4][:-1], fields[5]],
        "clock zero": [*fields[:4], [0] * len(fields[4]), fields[5]],
        "docs unsorted": [*fields[:5], fields[5][::-1] * 2],
        "doc id": [*fields[:5], [["nope", fields[5][0][1]]]],
        "doc state": [*fields[:5], [["app/a", {"p": 1}]]],
    }
    for name, obj in bad.items():
        with pytest.raises(SnapshotError):
            decode_snapshot(msgpack.packb(obj, use_bin_type=True), CrdtLimits())
        assert name
    assert data[:3] == bytes([0x96, 0x01, K])  # [1, 7, ...]: k as a positive fixint
    wide = data[:2] + b"\xcf" + K.to_bytes(8, "big") + data[3:]  # the same k as a uint64
    with pytest.raises(SnapshotError, match="canonical"):
        decode_snapshot(wide, CrdtLimits())
    with pytest.raises(SnapshotError, match="not msgpack"):
        decode_snapshot(data[:-1], CrdtLimits())


@given(obj=garbage)
def test_garbage_snapshots_raise_only_snapshot_error(obj: Any) -> None:
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return
    with pytest.raises(SnapshotError):
        decode_snapshot(data, CrdtLimits())


# -- over the wire ------------------------------------------------------------------------


class Net:
    def __init__(self, **engines: SyncEngine) -> None:
        self.engines = engines
        self.queue: list[tuple[str, Hashable, bytes]] = []
        self.faults: list[tuple[str, str]] = []
        self.results: list[SyncResult] = []
        self.log: list[bytes] = []

    def post(self, src: str, result: SyncResult) -> None:
        self.results.append(result)
        self.queue.extend((src, s.peer, s.payload) for s in result.sends)
        self.faults.extend((src, f.reason) for f in result.faults)

    def sync(self, a: str, b: str, drop: set[int] | None = None) -> None:
        self.post(a, self.engines[a].start_session(b))
        n = 0
        while self.queue:
            src, dst, payload = self.queue.pop(0)
            n += 1
            assert n < 10_000
            self.log.append(payload)
            if drop is not None and kind(payload) == MSG_SNAPSHOT_PART and len(drop) > 0:
                drop.pop()
                continue
            assert isinstance(dst, str)
            self.post(dst, self.engines[dst].receive(src, payload))


def kind(payload: bytes) -> int:
    obj = msgpack.unpackb(payload, raw=False)
    return int(obj[1])


def setup_pair(
    limits: CrdtLimits | None = None,
) -> tuple[list[Change], Replica, Replica, Snapshot]:
    changes, cuts = history(6, 120)
    cut = cuts[len(cuts) * 2 // 3]
    source = Replica(POLICY, limits)
    for c in changes:
        source.add(c)
    snap = source.snapshot_at(K, cut)
    source.compact(snap)
    return changes, source, Replica(POLICY, limits), snap


def test_a_fresh_replica_syncs_the_snapshot_and_the_changes_above_it() -> None:
    changes, source, fresh, snap = setup_pair()
    full = fed(changes)
    ea, ef = SyncEngine(source), SyncEngine(fresh)
    ef.set_final(K, snap.digest)
    net = Net(A=ea, F=ef)
    net.sync("F", "A")
    assert not net.faults
    assert observable(fresh) == observable(full) == observable(source)
    assert fresh.base is not None and fresh.base.checkpoint == K
    assert ea.stats.snapshots_sent == 1 and ef.stats.snapshots_installed == 1
    installed = [r.snapshot for r in net.results if r.snapshot is not None]
    assert len(installed) == 1 and installed[0].peer == "A"
    # no change below the cut travelled: only the snapshot stands for them
    sent = [e for p in net.log if kind(p) == 2 for e in msgpack.unpackb(p, raw=False)[2]]
    assert sent and not {Replica(POLICY).receive(e).hash for e in sent} & set(snap.clocks)
    # the other way round, and again: nothing to do, no snapshot offered twice
    before = ea.stats.snapshots_offered
    net.sync("A", "F")
    net.sync("F", "A")
    assert not net.faults and ea.stats.snapshots_offered == before


def test_full_history_and_compacted_replicas_sync_without_snapshots() -> None:
    changes, source, _, _snap = setup_pair()
    full = fed(changes)
    extra, _ = full.create(AUTHORS[2], "app/a", [lww("new", 1)], 50_000)
    net = Net(A=SyncEngine(source), B=SyncEngine(full))
    net.sync("A", "B")
    net.sync("B", "A")
    assert not net.faults and extra.hash in source
    assert observable(source) == observable(full)
    assert all(kind(p) not in (4, 5, 6) for p in net.log)


def test_a_snapshot_is_accepted_only_when_final_here() -> None:
    _, source, fresh, snap = setup_pair()
    ea, ef = SyncEngine(source), SyncEngine(fresh)
    net = Net(A=ea, F=ef)
    net.sync("F", "A")  # not final here: the offer is ignored, nothing installed
    assert not net.faults and fresh.base is None and ea.stats.snapshots_sent == 0
    assert fresh.pending_count > 0 or len(fresh) < len(source)
    ef.set_final(K, b"\x01" * 32)  # another digest is final for k: the offer is a lie
    net.sync("F", "A")
    assert net.faults and "not the final one" in net.faults[0][1] and fresh.base is None
    net.faults.clear()
    ef.set_final(K, snap.digest)
    net.sync("F", "A")
    assert not net.faults and fresh.base is not None
    assert observable(fresh)[:4] == observable(source)[:4]


def forged_parts(snap: Snapshot, digest: bytes, data: bytes) -> list[bytes]:
    return [
        msgpack.packb(
            [SYNC_VERSION, MSG_SNAPSHOT_PART, K, digest, 0, len(data), data], use_bin_type=True
        )
    ]


def test_a_forged_snapshot_is_refused_and_changes_nothing() -> None:
    changes, _, fresh, snap = setup_pair()
    for c in changes[-5:]:
        fresh.add(c)
    engine = SyncEngine(fresh)
    engine.set_final(K, snap.digest)
    offer = msgpack.packb(
        [SYNC_VERSION, MSG_SNAPSHOT_OFFER, K, snap.digest, len(snap.encode())], use_bin_type=True
    )
    # A forged state: the same cut, a document changed, re-encoded canonically.
    forged_docs = dict(snap.docs)
    forged_docs["app/forged"] = next(iter(snap.docs.values()))
    forged = Snapshot(K, snap.heads, snap.clocks, forged_docs)
    real = snap.encode()
    total = len(real)
    tampered = bytearray(real)
    tampered[total // 2] ^= 0x01
    cases = {
        "tampered byte": [(0, bytes(tampered))],
        "another state": [(0, forged.encode()[:total])],
        "too long": [(0, real + b"x")],
        "tail too long": [(0, real[:-1]), (total - 1, b"xx")],
    }
    whys = {
        "tampered byte": "digest does not match",
        "another state": "digest does not match",
        "too long": "does not fit",
        "tail too long": "does not fit",
    }
    for name, parts in cases.items():
        before = observable(fresh)
        first = engine.receive("evil", offer)
        assert not first.faults and first.sends, name  # asks for it
        faults = []
        for offset, data in parts:
            part = msgpack.packb(
                [SYNC_VERSION, MSG_SNAPSHOT_PART, K, snap.digest, offset, total, data],
                use_bin_type=True,
            )
            result = engine.receive("evil", part)
            faults.extend(f.reason for f in result.faults)
            assert result.snapshot is None and not result.applied
        assert len(faults) == 1 and whys[name] in faults[0], name
        assert observable(fresh) == before and fresh.base is None
    # a forged digest is not even asked for, and unrequested parts are ignored
    lie = msgpack.packb(
        [SYNC_VERSION, MSG_SNAPSHOT_OFFER, K, forged.digest, 100], use_bin_type=True
    )
    assert "not the final one" in engine.receive("evil", lie).faults[0].reason
    stray = forged_parts(forged, forged.digest, forged.encode())[0]
    result = engine.receive("evil", stray)
    assert not result.faults and result.snapshot is None and fresh.base is None


def test_snapshot_travels_in_bounded_parts_and_a_lost_part_restarts_it() -> None:
    limits = CrdtLimits(max_sync_batch_bytes=4_096)
    changes, source, fresh, snap = setup_pair(limits)
    assert len(snap.encode()) > 3 * 2_048
    ea, ef = SyncEngine(source), SyncEngine(fresh)
    ef.set_final(K, snap.digest)
    net = Net(A=ea, F=ef)
    net.sync("F", "A", drop={1})  # the first part is lost: that transfer is abandoned
    assert all(len(p) <= limits.max_sync_batch_bytes for p in net.log)
    parts = sum(kind(p) == MSG_SNAPSHOT_PART for p in net.log)
    assert parts > 3
    for _ in range(2):
        if fresh.base is None:
            net.sync("F", "A")
    assert not net.faults and fresh.base is not None
    assert ea.stats.snapshots_sent == 2 and ef.stats.snapshots_installed == 1
    assert observable(fresh)[:4] == observable(fed(changes))[:4]


# -- pending quotas ---------------------------------------------------------------------------


def orphan(author: KeySigner, i: int, size: int = 0) -> Change:
    """A change waiting for a dependency nobody has."""
    missing = bytes([i % 256, i // 256]) * 16
    ops = [lww("k", "x" * size or i)]
    return sign_change(author, "app/q", [missing], (i + 1) << 16, ops, CrdtLimits())


def test_pending_quota_per_author_count_and_bytes() -> None:
    limits = CrdtLimits(max_pending_per_author=3, max_pending_bytes_per_author=2_000)
    r = Replica(POLICY, limits)
    mallory, alice = AUTHORS[0], AUTHORS[1]
    for i in range(3):
        assert r.add(orphan(mallory, i)).status == "pending"
    before = observable(r)
    over = orphan(mallory, 3)
    receipt: Receipt = r.add(over)
    assert receipt.status == "rejected" and receipt.reason == "pending-quota"
    assert "quota 3 changes" in receipt.detail and receipt.missing
    assert observable(r) == before and r.rejection(over.hash) is None  # may come back
    assert r.pending_of(mallory.public_key)[0] == 3
    # other authors are unaffected; bytes count too
    assert r.add(orphan(alice, 10)).status == "pending"
    big = orphan(alice, 11, size=1_500)
    assert r.add(big).status == "pending"
    assert r.add(orphan(alice, 12, size=600)).reason == "pending-quota"
    assert r.pending_of(alice.public_key) == (2, len(orphan(alice, 10).encoded) + len(big.encoded))
    # a change whose dependencies are here is not pending: the quota does not apply
    assert r.create(mallory, "app/q", [lww("z", 1)], 5)[1].status == "applied"


def test_pending_quota_is_freed_when_changes_apply_or_are_dropped() -> None:
    limits = CrdtLimits(max_pending_per_author=2)
    r = Replica(POLICY, limits)
    src = Replica(POLICY)
    a, _ = src.create(AUTHORS[0], "app/q", [lww("k", 1)], 1)
    b, _ = src.create(AUTHORS[0], "app/q", [lww("k", 2)], 2)
    c, _ = src.create(AUTHORS[0], "app/q", [lww("k", 3)], 3)
    assert r.add(c).status == r.add(b).status == "pending"
    assert r.add(orphan(AUTHORS[0], 9)).reason == "pending-quota"
    assert len(r.add(a).applied) == 3
    assert r.pending_of(AUTHORS[0].public_key) == (0, 0)
    assert r.add(orphan(AUTHORS[0], 9)).status == "pending"


def test_an_over_quota_author_is_not_the_senders_fault() -> None:
    limits = CrdtLimits(max_pending_per_author=1)
    engine = SyncEngine(Replica(POLICY, limits))
    frame = msgpack.packb(
        [SYNC_VERSION, 2, [orphan(AUTHORS[0], 1).encoded, orphan(AUTHORS[0], 2).encoded]],
        use_bin_type=True,
    )
    result = engine.receive("peer", frame)
    assert [r for r, _ in result.rejected] == ["pending-quota"]
    assert not result.faults


@settings(max_examples=examples(1.2), deadline=None)
@given(data=st.data())
def test_quota_accounting_matches_the_buffer(data: st.DataObject) -> None:
    limits = CrdtLimits(max_pending_per_author=4, max_pending_bytes_per_author=3_000)
    r = Replica(POLICY, limits)
    src = [Replica(POLICY) for _ in AUTHORS[:2]]
    made: list[Change] = []
    for step in range(data.draw(st.integers(1, 25))):
        i = data.draw(st.integers(0, 1))
        if data.draw(st.booleans()):
            c, _ = src[i].create(AUTHORS[i], "app/q", [lww("k", "y" * (step * 37 % 400))], step)
            made.append(c)
        else:
            for c in src[1 - i].causal_past(src[1 - i].heads):
                src[i].add(c)
    for c in data.draw(st.permutations(made)):
        r.add(c)
        for author in AUTHORS[:2]:
            mine = [p for p in r._pending.values() if p.author == author.public_key]
            count, size = r.pending_of(author.public_key)
            assert count == len(mine) <= 4 and size == sum(len(p.encoded) for p in mine) <= 3_000
