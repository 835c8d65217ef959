"""The replica: what it applies, what it holds back, what it rejects -- and that a
rejection leaves every observable part of it exactly as it was."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from crdt_strategies import garbage
from hypothesis import given
from hypothesis import strategies as st

from crdt.change import (
    _SIGNING_CONTEXT,
    MAX_HLC,
    VERSION,
    Change,
    KeySigner,
    sign_change,
)
from crdt.errors import InvalidOperation
from crdt.limits import CrdtLimits
from crdt.replica import HLC_MAX_STEP, HLC_SOFT_MAX, AccessPolicy, Receipt, Replica

ALICE = KeySigner(b"\x01" * 32)
BOB = KeySigner(b"\x02" * 32)
CAROL = KeySigner(b"\x03" * 32)
OPEN = AccessPolicy.open_to([ALICE.public_key, BOB.public_key])
LIMITS = CrdtLimits()


def lww(key: str, value: Any) -> dict[str, Any]:
    return {"up": key, "type": "lww", "op": {"v": value}}


def change(
    signer: Any,
    deps: tuple[bytes, ...] | list[bytes] = (),
    hlc: int = 1 << 20,
    doc: str = "app/doc",
    ops: list[Any] | None = None,
) -> Change:
    return sign_change(signer, doc, deps, hlc, ops or [lww("k", hlc)], LIMITS)


def chain(n: int, signer: KeySigner = ALICE, doc: str = "app/doc") -> list[Change]:
    out: list[Change] = []
    for i in range(n):
        deps = [out[-1].hash] if out else []
        out.append(change(signer, deps, hlc=(i + 1) << 16, doc=doc, ops=[lww(f"k{i}", i)]))
    return out


def snapshot(r: Replica) -> tuple[Any, ...]:
    docs = r.documents()
    return (
        list(r.ids),
        len(r),
        r.heads,
        docs,
        {d: msgpack.packb(r.document(d).to_wire(), use_bin_type=True) for d in docs},  # type: ignore[union-attr]
        {d: r.value(d) for d in docs},
        r.pending_count,
        r.missing(),
    )


def populated(policy: AccessPolicy = OPEN, limits: CrdtLimits = LIMITS) -> Replica:
    """A replica with some applied history and one pending change."""
    r = Replica(policy, limits)
    for c in chain(3):
        assert r.add(c).status == "applied"
    orphan = change(BOB, [b"\xee" * 32], hlc=9 << 16)
    assert r.add(orphan).status == "pending"
    return r


def assert_rejected_untouched(r: Replica, data: bytes | Change, reason: str) -> Receipt:
    before = snapshot(r)
    receipt = r.receive(data) if isinstance(data, bytes) else r.add(data)
    assert receipt.status == "rejected", receipt
    assert receipt.reason == reason, receipt
    assert receipt.applied == ()
    assert snapshot(r) == before
    return receipt


def raw(*fields: Any) -> bytes:
    out: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return out


# -- applying -----------------------------------------------------------------------------


def test_apply_duplicate_and_heads() -> None:
    r = Replica(OPEN)
    a, b, c = chain(3)
    receipt = r.receive(a.encoded)
    assert (receipt.status, receipt.hash, receipt.applied) == ("applied", a.hash, (a,))
    assert r.heads == (a.hash,)
    assert r.receive(a.encoded).status == "duplicate"
    assert r.add(b).status == "applied"
    fork = change(BOB, [a.hash], hlc=5 << 16, ops=[lww("fork", 1)])
    assert r.add(fork).status == "applied"
    assert r.heads == tuple(sorted([b.hash, fork.hash]))
    join = change(ALICE, [b.hash, fork.hash], hlc=6 << 16)
    assert r.add(join).status == "applied"
    assert r.heads == (join.hash,)
    assert len(r) == 4 and join.hash in r and c.hash not in r
    assert r.get(fork.hash) == fork and r.get(c.hash) is None
    assert r.value("app/doc") == {"k0": 0, "k1": 1, "fork": 1, "k": 6 << 16}
    assert r.documents() == ["app/doc"]
    assert r.value("app/none") is None and r.document("app/none") is None
    assert [x.hash for x in r.ordered([join.hash, a.hash, b"\x00" * 32])] == [a.hash, join.hash]


def test_missing_dependencies_wait_then_cascade() -> None:
    r = Replica(OPEN)
    a, b, c, d = chain(4)
    before = snapshot(r)
    receipt = r.add(d)
    assert (receipt.status, receipt.reason, receipt.missing) == (
        "pending",
        "missing-dependencies",
        (c.hash,),
    )
    assert r.add(d).status == "duplicate"
    assert r.add(c).missing == (b.hash,)
    assert r.add(b).missing == (a.hash,)
    assert r.pending_count == 3
    assert r.missing() == {a.hash}
    # nothing pending is part of the change set
    assert snapshot(r)[:6] == before[:6]
    receipt = r.add(a)
    assert receipt.status == "applied"
    assert [x.hash for x in receipt.applied] == [a.hash, b.hash, c.hash, d.hash]
    assert r.pending_count == 0 and r.missing() == frozenset()
    assert r.heads == (d.hash,)


def test_a_change_waiting_on_two_dependencies_applies_after_both() -> None:
    r = Replica(OPEN)
    x = change(ALICE, hlc=1 << 16)
    y = change(BOB, hlc=2 << 16)
    z = change(ALICE, [x.hash, y.hash], hlc=3 << 16)
    receipt = r.add(z)
    assert receipt.status == "pending"
    assert set(receipt.missing) == {x.hash, y.hash}
    assert r.add(x).applied == (x,)
    assert r.pending_count == 1 and r.missing() == {y.hash}
    assert r.add(y).applied == (y, z)
    assert r.heads == (z.hash,)


def test_create_signs_on_the_heads_with_a_later_clock() -> None:
    r = Replica(OPEN)
    other = change(BOB, hlc=(10**9) << 16)  # a peer far ahead of our wall clock
    r.add(other)
    made, receipt = r.create(ALICE, "app/doc", [lww("mine", 1)], now_ms=5)
    assert receipt.status == "applied" and receipt.applied == (made,)
    assert made.deps == (other.hash,)
    assert made.hlc == other.hlc + 1
    again, _ = r.create(ALICE, "app/other", [lww("x", 1)], now_ms=5)
    assert again.hlc > made.hlc and again.deps == (made.hash,)
    late, _ = r.create(ALICE, "app/other", [lww("x", 2)], now_ms=10**10)
    assert late.hlc == (10**10) << 16


def test_create_refuses_bad_input() -> None:
    r = Replica(AccessPolicy({"app": frozenset([ALICE.public_key])}))
    with pytest.raises(InvalidOperation, match="doc"):
        r.create(ALICE, "no-namespace", [lww("k", 1)], 1)
    with pytest.raises(InvalidOperation, match="unauthorized"):
        r.create(BOB, "app/doc", [lww("k", 1)], 1)
    with pytest.raises(InvalidOperation, match="ops"):
        r.create(ALICE, "app/doc", [], 1)
    with pytest.raises(InvalidOperation, match="hlc"):
        r.create(ALICE, "app/doc", [lww("k", 1)], 1 << 47)  # hlc 2**63
    with pytest.raises(InvalidOperation):
        r.create(ALICE, "app/doc", [lww("k", 1)], 1 << 50)  # hlc 2**66: msgpack overflows
    with pytest.raises(InvalidOperation):
        r.create(ALICE, "app/doc", [lww("k", object())], 1)
    assert len(r) == 0 and r.rejection(b"\x00" * 32) is None


def test_create_with_more_heads_than_max_deps() -> None:
    limits = CrdtLimits(max_deps=2)
    r = Replica(OPEN, limits)
    roots = [change(ALICE, hlc=i << 16, ops=[lww("r", i)]) for i in range(1, 5)]
    for c in roots:
        r.add(c)
    made, _ = r.create(BOB, "app/doc", [lww("k", 1)], 1)
    assert made.deps == tuple(sorted(c.hash for c in roots))[:2]
    assert len(r.heads) == 3


# -- rejections leave the replica untouched -----------------------------------------------------


class Impostor:
    public_key = BOB.public_key

    def sign(self, message: bytes) -> bytes:
        return ALICE.sign(message)


def forged_bytes() -> bytes:
    """A change claiming BOB as author, signed with ALICE's key."""
    fields = [VERSION, "app/doc", [], BOB.public_key, 1 << 30, [lww("k", "forged")]]
    sig = Impostor().sign(_SIGNING_CONTEXT + msgpack.packb(fields, use_bin_type=True))
    return raw(*fields, sig)


def test_forged_change_is_a_bad_signature() -> None:
    r = populated()
    receipt = assert_rejected_untouched(r, forged_bytes(), "bad-signature")
    assert receipt.hash is None


def test_mis_signed_changes() -> None:
    r = populated()
    good = change(ALICE, [r.heads[0]], hlc=50 << 16)
    sig_flip = bytearray(good.encoded)
    sig_flip[-1] ^= 0x80
    assert_rejected_untouched(r, bytes(sig_flip), "bad-signature")
    body_flip = bytearray(good.encoded)
    at = good.encoded.index(b"app/doc") + 6
    body_flip[at] ^= 1  # "app/doc" -> "app/dob": still well formed
    assert_rejected_untouched(r, bytes(body_flip), "bad-signature")
    kind_flip = bytearray(good.encoded)
    kind_flip[0] ^= 0x40  # fixarray -> something else
    assert_rejected_untouched(r, bytes(kind_flip), "malformed")
    assert r.add(good).status == "applied"  # the genuine one still applies


def test_unauthorized_author_for_a_namespace() -> None:
    policy = AccessPolicy(
        {
            "app": frozenset([ALICE.public_key]),
            "*": frozenset([BOB.public_key]),
            "locked": frozenset(),
        }
    )
    assert policy.may_write(ALICE.public_key, "app/x")
    assert not policy.may_write(BOB.public_key, "app/x")  # the namespace entry wins
    assert policy.may_write(BOB.public_key, "other/x")
    assert not policy.may_write(ALICE.public_key, "other/x")
    assert not policy.may_write(BOB.public_key, "locked/x")  # listed, empty: read-only
    r = Replica(policy)
    assert r.add(change(ALICE, doc="app/x")).status == "applied"
    assert r.add(change(BOB, doc="other/x")).status == "applied"
    for signer, doc in ((BOB, "app/x"), (ALICE, "other/x"), (BOB, "locked/x"), (CAROL, "z/x")):
        bad = change(signer, doc=doc, hlc=7 << 16)
        receipt = assert_rejected_untouched(r, bad.encoded, "unauthorized")
        assert receipt.hash == bad.hash
        assert r.rejection(bad.hash) == "unauthorized"
        again = assert_rejected_untouched(r, bad.encoded, "rejected")
        assert "unauthorized" in again.detail


def test_namespaces_without_entry_or_wildcard_are_read_only() -> None:
    r = Replica(AccessPolicy({"app": frozenset([ALICE.public_key])}))
    assert_rejected_untouched(r, change(ALICE, doc="ro/x").encoded, "unauthorized")
    assert Replica(AccessPolicy()).add(change(ALICE)).reason == "unauthorized"


def test_clock_not_later_than_dependencies() -> None:
    r = populated()
    head = r.get(r.heads[0])
    assert head is not None
    for hlc in (head.hlc, head.hlc - 1, 1):
        bad = change(ALICE, [head.hash], hlc=hlc, ops=[lww("late", hlc)])
        assert_rejected_untouched(r, bad.encoded, "clock")
        assert r.rejection(bad.hash) == "clock"
    ok = change(ALICE, [head.hash], hlc=head.hlc + 1)
    assert r.add(ok).status == "applied"


def test_clock_is_checked_against_every_dependency() -> None:
    r = Replica(OPEN)
    low = change(ALICE, hlc=1 << 16)
    high = change(BOB, hlc=9 << 16)
    r.add(low)
    r.add(high)
    assert_rejected_untouched(r, change(ALICE, [low.hash, high.hash], hlc=9 << 16), "clock")


def test_oversize_change() -> None:
    big = change(ALICE, ops=[lww("k", "x" * 500)])
    r = populated(limits=CrdtLimits(max_change_bytes=400))
    assert_rejected_untouched(r, big.encoded, "oversize")


def test_non_canonical_encoding() -> None:
    r = populated()
    good = change(ALICE, [r.heads[0]], hlc=50 << 16)
    assert good.encoded[:2] == b"\x97\x01"
    assert_rejected_untouched(r, b"\x97\xcc\x01" + good.encoded[2:], "malformed")
    assert_rejected_untouched(r, b"\xdc\x00\x07" + good.encoded[1:], "malformed")


MALFORMED_FIELDS: dict[str, tuple[int, Any]] = {
    "version": (0, 2),
    "doc": (1, "nope"),
    "deps unsorted": (2, [b"\x02" * 32, b"\x01" * 32]),
    "deps duplicate": (2, [b"\x01" * 32, b"\x01" * 32]),
    "deps length": (2, [b"\x01" * 31]),
    "author length": (3, b"\x01" * 31),
    "hlc zero": (4, 0),
    "hlc negative": (4, -5),
    "hlc too large": (4, 1 << 63),
    "hlc bool": (4, True),
    "ops empty": (5, []),
    "ops bad": (5, [{"up": "k", "type": "lww"}]),
    "signature length": (6, b"\x00" * 63),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_FIELDS))
def test_malformed_fields(name: str) -> None:
    index, value = MALFORMED_FIELDS[name]
    fields = msgpack.unpackb(change(ALICE).encoded)
    fields[index] = value
    r = populated()
    receipt = assert_rejected_untouched(r, raw(*fields), "malformed")
    assert receipt.hash is None


def test_too_many_ops() -> None:
    r = populated(limits=CrdtLimits(max_ops=2))
    fields = msgpack.unpackb(change(ALICE, ops=[lww("a", 1)] * 3).encoded)
    assert_rejected_untouched(r, raw(*fields), "malformed")


def packed(obj: Any) -> bytes:
    """msgpack of ``obj``, or of nothing when msgpack cannot encode it (huge ints)."""
    try:
        out: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return b""
    return out


@given(data=st.binary(max_size=200) | garbage.map(packed))
def test_garbage_bytes_give_only_rejected_receipts(data: bytes) -> None:
    r = populated()
    assert_rejected_untouched(r, data, "malformed")


@given(
    index=st.integers(0, 6),
    junk=garbage,
)
def test_garbage_in_one_field_gives_only_rejected_receipts(index: int, junk: Any) -> None:
    fields = msgpack.unpackb(change(ALICE, [b"\x01" * 32], hlc=99 << 16).encoded)
    fields[index] = junk
    try:
        data = raw(*fields)
    except (TypeError, ValueError, OverflowError):
        return
    r = populated()
    before = snapshot(r)
    receipt = r.receive(data)
    if receipt.status == "rejected":
        assert snapshot(r) == before
    else:  # a replacement that happens to be valid (e.g. an equal value)
        assert receipt.status in ("pending", "duplicate")


def test_depending_on_a_rejected_change() -> None:
    r = populated()
    bad = change(CAROL, [r.heads[0]], hlc=40 << 16)  # CAROL may not write
    assert_rejected_untouched(r, bad, "unauthorized")
    child = change(ALICE, [bad.hash], hlc=41 << 16)
    receipt = assert_rejected_untouched(r, child, "bad-dependency")
    assert bad.hash.hex() in receipt.detail
    grandchild = change(ALICE, [child.hash], hlc=42 << 16)
    assert_rejected_untouched(r, grandchild, "bad-dependency")


def test_waiters_of_a_rejected_change_are_dropped() -> None:
    r = populated()
    bad = change(CAROL, [r.heads[0]], hlc=40 << 16)
    other_missing = b"\xdd" * 32
    child = change(ALICE, [bad.hash, other_missing], hlc=41 << 16)
    grandchild = change(BOB, [child.hash], hlc=42 << 16)
    assert r.add(grandchild).status == "pending"
    assert r.add(child).status == "pending"
    assert r.missing() == {bad.hash, other_missing, b"\xee" * 32}
    before = snapshot(r)
    receipt = r.add(bad)
    assert receipt.reason == "unauthorized"
    assert r.pending_count == before[6] - 2
    assert r.rejection(child.hash) == r.rejection(grandchild.hash) == "bad-dependency"
    # Nothing waits for other_missing any more: do not keep asking peers for it.
    assert r.missing() == {b"\xee" * 32}
    assert snapshot(r)[:6] == before[:6]
    assert r.add(child).reason == "rejected"


def test_a_waiter_with_a_bad_clock_is_rejected_on_release_with_its_waiters() -> None:
    r = Replica(OPEN)
    a = change(ALICE, hlc=5 << 16)
    late = change(BOB, [a.hash], hlc=5 << 16)  # not later than a
    after = change(ALICE, [late.hash], hlc=6 << 16)
    sibling = change(BOB, [a.hash], hlc=6 << 16)
    assert r.add(after).status == r.add(late).status == r.add(sibling).status == "pending"
    receipt = r.add(a)
    assert receipt.status == "applied"
    assert receipt.applied == (a, sibling)
    assert r.rejection(late.hash) == "clock"
    assert r.rejection(after.hash) == "bad-dependency"
    assert r.pending_count == 0 and r.missing() == frozenset()
    assert r.heads == (sibling.hash,)


def test_pending_buffer_full() -> None:
    r = populated(limits=CrdtLimits(max_pending=2))
    waiting = change(ALICE, [b"\xaa" * 32], hlc=60 << 16)
    assert r.add(waiting).status == "pending"
    overflow = change(ALICE, [b"\xbb" * 32], hlc=61 << 16)
    receipt = assert_rejected_untouched(r, overflow.encoded, "pending-full")
    assert receipt.missing == (b"\xbb" * 32,)
    assert r.rejection(overflow.hash) is None  # not remembered: it may come back later
    # A change whose dependencies are all here still applies when the buffer is full.
    assert r.add(change(ALICE, [r.heads[0]], hlc=62 << 16)).status == "applied"


def test_rejected_changes_never_enter_a_later_cascade() -> None:
    r = Replica(OPEN)
    a = change(ALICE, hlc=1 << 16)
    bad = change(CAROL, [a.hash], hlc=2 << 16)
    assert r.add(bad).reason == "unauthorized"  # rejected before waiting
    assert r.pending_count == 0
    assert r.add(a).applied == (a,)
    assert r.heads == (a.hash,)


def test_a_change_at_the_maximum_clock_cannot_stop_other_writers() -> None:
    """Clocks above 2**62 may only creep up from their dependencies, so nobody can push the
    clock to the 63-bit ceiling and make every later write impossible."""
    r = Replica(OPEN)
    before = snapshot(r)
    receipt = r.add(change(BOB, hlc=MAX_HLC))
    assert receipt.status == "rejected" and receipt.reason == "clock"
    assert snapshot(r) == before
    high = change(BOB, hlc=HLC_SOFT_MAX + 5)
    assert r.add(high).status == "applied"
    creep = change(BOB, [high.hash], hlc=high.hlc + HLC_MAX_STEP)
    assert r.add(creep).status == "applied"
    own, _ = r.create(ALICE, "app/doc", [lww("k", 1)], now_ms=1)
    assert own.hlc == creep.hlc + 1
