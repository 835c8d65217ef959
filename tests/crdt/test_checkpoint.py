"""Finality checkpoints (signed head sets) and the state of a causal cut."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from crdt_strategies import garbage
from hypothesis import given
from hypothesis import strategies as st

from crdt.change import Change, KeySigner
from crdt.checkpoint import (
    MAGIC,
    MAX_ATTESTS,
    MAX_CHECKPOINT_HEADS,
    VERSION,
    CheckpointClaim,
    attest_quorum,
    decode_checkpoint,
    encode_checkpoint,
    is_checkpoint,
)
from crdt.document import parse_intents, prepare_ops
from crdt.errors import InvalidOperation
from crdt.replica import AccessPolicy, MissingChanges, Replica
from crdt.types import ORMap

NODE = KeySigner(b"\x0a" * 32)
OTHER = KeySigner(b"\x0b" * 32)
DOMAIN = b"committee-1"
SIGNERS = {NODE.public_key, OTHER.public_key}
H1, H2, H3 = (bytes([i]) * 32 for i in (1, 2, 3))


def tx_of(
    key: bytes, heads: list[Any], signature: bytes, version: int = VERSION, attests: Any = ()
) -> bytes:
    if version == 1:
        return MAGIC + msgpack.packb([version, key, heads, signature], use_bin_type=True)
    fields = [version, key, heads, list(attests), signature]
    return MAGIC + msgpack.packb(fields, use_bin_type=True)


def signed_body(
    domain: bytes,
    key: bytes,
    heads: list[Any],
    signer: KeySigner = NODE,
    version: int = VERSION,
    attests: Any = (),
) -> bytes:
    fields = [version, domain, key, heads] + ([list(attests)] if version >= 2 else [])
    return signer.sign(MAGIC + msgpack.packb(fields, use_bin_type=True))


# -- encoding -------------------------------------------------------------------------------------


def test_round_trip_sorts_and_deduplicates() -> None:
    tx = encode_checkpoint(NODE, DOMAIN, [H3, H1, H2, H1])
    assert is_checkpoint(tx) and tx.startswith(MAGIC)
    claim = decode_checkpoint(tx, DOMAIN, SIGNERS)
    assert claim == CheckpointClaim(NODE.public_key, (H1, H2, H3))
    empty = decode_checkpoint(encode_checkpoint(OTHER, DOMAIN, []), DOMAIN, SIGNERS)
    assert empty == CheckpointClaim(OTHER.public_key, ())
    assert encode_checkpoint(NODE, DOMAIN, [H1, H2]) == encode_checkpoint(NODE, DOMAIN, [H2, H1])


def test_heads_are_capped() -> None:
    heads = [i.to_bytes(32, "big") for i in range(MAX_CHECKPOINT_HEADS + 5)]
    claim = decode_checkpoint(encode_checkpoint(NODE, DOMAIN, heads), DOMAIN, SIGNERS)
    assert claim is not None and len(claim.heads) == MAX_CHECKPOINT_HEADS


def test_wrong_domain_or_unknown_signer() -> None:
    tx = encode_checkpoint(NODE, DOMAIN, [H1])
    assert decode_checkpoint(tx, b"committee-2", SIGNERS) is None
    assert decode_checkpoint(tx, DOMAIN, {OTHER.public_key}) is None
    assert decode_checkpoint(tx, DOMAIN, set()) is None
    stranger = KeySigner(b"\x0c" * 32)
    assert decode_checkpoint(encode_checkpoint(stranger, DOMAIN, [H1]), DOMAIN, SIGNERS) is None


def test_tampered_checkpoints() -> None:
    tx = encode_checkpoint(NODE, DOMAIN, [H1, H2])
    _, key, heads, _attests, sig = msgpack.unpackb(tx[len(MAGIC) :])
    assert decode_checkpoint(tx_of(key, heads, sig), DOMAIN, SIGNERS) is not None
    assert decode_checkpoint(tx_of(key, [H1, H3], sig), DOMAIN, SIGNERS) is None  # swapped head
    assert decode_checkpoint(tx_of(key, [H1], sig), DOMAIN, SIGNERS) is None  # dropped head
    assert decode_checkpoint(tx_of(key, [H1, H2, H3], sig), DOMAIN, SIGNERS) is None
    assert decode_checkpoint(tx_of(OTHER.public_key, heads, sig), DOMAIN, SIGNERS) is None
    flipped = bytearray(sig)
    flipped[10] ^= 4
    assert decode_checkpoint(tx_of(key, heads, bytes(flipped)), DOMAIN, SIGNERS) is None
    assert decode_checkpoint(tx_of(key, heads, sig, version=3), DOMAIN, SIGNERS) is None
    assert decode_checkpoint(tx_of(key, heads, sig, version=1), DOMAIN, SIGNERS) is None
    forged = tx_of(key, heads, sig, attests=[[1, D1]])  # an attestation added after signing
    assert decode_checkpoint(forged, DOMAIN, SIGNERS) is None


D1, D2 = b"\xd1" * 32, b"\xd2" * 32


def test_version_1_checkpoints_are_still_read() -> None:
    key = NODE.public_key
    sig = signed_body(DOMAIN, key, [H1, H2], version=1)
    claim = decode_checkpoint(tx_of(key, [H1, H2], sig, version=1), DOMAIN, SIGNERS)
    assert claim == CheckpointClaim(key, (H1, H2), ())


def test_attestations_round_trip_sorted_newest_kept() -> None:
    attests = [(k, D1 if k % 2 else D2) for k in range(12, 0, -1)] + [(12, D2)]
    tx = encode_checkpoint(NODE, DOMAIN, [H1], attests)
    claim = decode_checkpoint(tx, DOMAIN, SIGNERS)
    assert claim is not None and claim.heads == (H1,)
    assert claim.attests == tuple((k, D1 if k % 2 else D2) for k in range(5, 13))
    assert len(claim.attests) == MAX_ATTESTS
    assert attest_quorum(1) == 1 and attest_quorum(4) == 2 and attest_quorum(7) == 3
    assert attest_quorum(3) == 1 and attest_quorum(10) == 4


@pytest.mark.parametrize(
    "attests",
    [
        [[2, D1], [1, D2]],
        [[1, D1], [1, D2]],
        [[0, D1]],
        [[-1, D1]],
        [[1 << 63, D1]],
        [[True, D1]],
        [[1, D1[:31]]],
        [[1, "x" * 32]],
        [[1]],
        [[1, D1, 0]],
        [1, D1],
        {"k": 1},
        [[k, D1] for k in range(1, MAX_ATTESTS + 2)],
    ],
    ids=[
        "unsorted",
        "duplicate",
        "zero",
        "negative",
        "huge",
        "bool",
        "short",
        "str",
        "one-field",
        "three-fields",
        "flat",
        "map",
        "too-many",
    ],
)
def test_malformed_attestations_are_ignored_even_when_signed(attests: Any) -> None:
    key = NODE.public_key
    sig = signed_body(DOMAIN, key, [H1], attests=attests)
    assert decode_checkpoint(tx_of(key, [H1], sig, attests=attests), DOMAIN, SIGNERS) is None


@pytest.mark.parametrize(
    "heads",
    [[H2, H1], [H1, H1], [H1[:31]], ["x" * 32], [H1 + b"\x00"], H1],
    ids=["unsorted", "duplicate", "short", "str", "long", "not-a-list"],
)
def test_malformed_heads_are_ignored_even_when_signed(heads: Any) -> None:
    key = NODE.public_key
    sig = signed_body(DOMAIN, key, heads)
    assert decode_checkpoint(tx_of(key, heads, sig), DOMAIN, SIGNERS) is None


def test_too_many_heads_are_ignored_even_when_signed() -> None:
    heads = [i.to_bytes(32, "big") for i in range(MAX_CHECKPOINT_HEADS + 1)]
    sig = signed_body(DOMAIN, NODE.public_key, heads)
    assert decode_checkpoint(tx_of(NODE.public_key, heads, sig), DOMAIN, SIGNERS) is None


@pytest.mark.parametrize(
    "tx",
    [
        b"",
        b"not a checkpoint",
        MAGIC,
        MAGIC + b"\xc1",
        MAGIC + msgpack.packb([VERSION, NODE.public_key, []]),
        MAGIC + msgpack.packb({1: 2}),
        MAGIC + msgpack.packb([True, NODE.public_key, [], b"\x00" * 64]),
        MAGIC + msgpack.packb([VERSION, NODE.public_key[:31], [], b"\x00" * 64]),
        MAGIC + msgpack.packb([VERSION, NODE.public_key, [], b"\x00" * 63]),
        MAGIC + msgpack.packb([VERSION, NODE.public_key, [], b"\x00" * 64]),
        encode_checkpoint(NODE, DOMAIN, [H1])[:-1],
        encode_checkpoint(NODE, DOMAIN, [H1]) + b"\x00",
        encode_checkpoint(NODE, DOMAIN, [H1])[1:],
    ],
)
def test_garbage_is_not_a_checkpoint(tx: bytes) -> None:
    assert decode_checkpoint(tx, DOMAIN, SIGNERS) is None


def packed(obj: Any) -> bytes:
    """msgpack of ``obj``, or of nothing when msgpack cannot encode it (huge ints)."""
    try:
        out: bytes = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return b""
    return out


@given(tail=st.binary(max_size=200) | garbage.map(packed))
def test_random_transactions_decode_to_none_without_raising(tail: bytes) -> None:
    assert decode_checkpoint(MAGIC + tail, DOMAIN, SIGNERS) is None
    assert decode_checkpoint(tail, DOMAIN, SIGNERS) is None or tail.startswith(MAGIC)


@given(obj=garbage, index=st.integers(0, 4))
def test_garbage_fields_decode_to_none(obj: Any, index: int) -> None:
    fields: list[Any] = msgpack.unpackb(encode_checkpoint(NODE, DOMAIN, [H1])[len(MAGIC) :])
    fields[index] = obj
    try:
        tx = MAGIC + msgpack.packb(fields, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return
    claim = decode_checkpoint(tx, DOMAIN, SIGNERS)
    assert claim is None or claim == CheckpointClaim(NODE.public_key, (H1,))


# -- the state of a cut ---------------------------------------------------------------------------

AUTHORS = [KeySigner(bytes([0x20 + i]) * 32) for i in range(3)]
POLICY = AccessPolicy.open_to(a.public_key for a in AUTHORS)
DOCS = ["app/a", "app/b"]


def wire(docs: dict[str, ORMap]) -> dict[str, bytes]:
    return {d: msgpack.packb(s.to_wire(), use_bin_type=True) for d, s in docs.items()}


def live(r: Replica) -> dict[str, bytes]:
    return {d: msgpack.packb(r.document(d).to_wire(), use_bin_type=True) for d in r.documents()}  # type: ignore[union-attr]


def fed(changes: list[Change]) -> Replica:
    r = Replica(POLICY)
    for c in changes:
        assert r.add(c).status == "applied"
    return r


def catch_up(dst: Replica, src: Replica) -> None:
    for c in src.causal_past(src.heads):
        dst.add(c)


@st.composite
def histories(
    draw: st.DrawFn,
) -> tuple[list[Replica], list[tuple[tuple[bytes, ...], dict[str, bytes]]]]:
    """Three authors writing and merging; the cuts they saw, with their states then."""
    rs = [Replica(POLICY) for _ in AUTHORS]
    cuts: list[tuple[tuple[bytes, ...], dict[str, bytes]]] = []
    for step in range(draw(st.integers(1, 14))):
        i = draw(st.integers(0, 2))
        if draw(st.integers(0, 3)) == 0:
            catch_up(rs[i], rs[draw(st.integers(0, 2))])
        else:
            doc = draw(st.sampled_from(DOCS))
            kind = draw(st.sampled_from(["lww", "gcounter", "orset", "text"]))
            args: Any = {
                "lww": step,
                "gcounter": draw(st.integers(1, 3)),
                "orset": draw(st.integers(0, 3)),
                "text": {"index": 0, "text": "ab"},
            }[kind]
            action = {"lww": "set", "gcounter": "inc", "orset": "add", "text": "insert"}[kind]
            key = draw(st.sampled_from(["k", "j"]))
            intents = parse_intents(
                {"ops": [{"path": [key], "type": kind, "action": action, "args": args}]}
            )
            try:
                ops = prepare_ops(rs[i].document(doc), intents, AUTHORS[i].public_key)
            except InvalidOperation:
                continue
            rs[i].create(AUTHORS[i], doc, ops, step)
        if draw(st.booleans()):
            cuts.append((rs[i].heads, live(rs[i])))
    return rs, cuts


@given(history=histories(), data=st.data())
def test_state_at_a_cut_is_the_state_of_exactly_its_causal_past(
    history: tuple[list[Replica], list[tuple[tuple[bytes, ...], dict[str, bytes]]]],
    data: st.DataObject,
) -> None:
    rs, cuts = history
    everything = Replica(POLICY)
    for r in rs:
        catch_up(everything, r)
    assert wire(everything.state_at(everything.heads)) == live(everything)
    for heads, seen in cuts:
        at = everything.state_at(heads)
        assert wire(at) == seen  # what the author saw when its heads were this cut
        past = everything.causal_past(heads)
        assert wire(fed(past).state_at(heads)) == seen
        assert live(fed(past)) == seen
        assert {h for h in heads} <= {c.hash for c in past}
        # causal_past is topological
        pos = {c.hash: i for i, c in enumerate(past)}
        assert all(pos[d] < pos[c.hash] for c in past for d in c.deps)
        # a replica holding the cut and different later changes agrees
        other = fed(past)
        for c in data.draw(st.permutations(everything.causal_past(everything.heads))):
            if data.draw(st.booleans()):
                other.add(c)
        assert wire(other.state_at(heads)) == seen
        assert wire(everything.state_at(heads)) == seen  # cached: still the same


def test_state_at_identical_across_replicas_with_different_later_changes() -> None:
    a, b = Replica(POLICY), Replica(POLICY)
    base = []
    for i in range(5):
        c, _ = a.create(AUTHORS[i % 3], "app/a", [{"up": "k", "type": "lww", "op": {"v": i}}], i)
        base.append(c)
    for c in base:
        b.add(c)
    cut = a.heads
    a.create(AUTHORS[0], "app/a", [{"up": "k", "type": "lww", "op": {"v": "a-only"}}], 10)
    a.create(AUTHORS[0], "app/c", [{"up": "k", "type": "lww", "op": {"v": "a-only"}}], 11)
    b.create(AUTHORS[1], "app/b", [{"up": "k", "type": "lww", "op": {"v": "b-only"}}], 10)
    assert live(a) != live(b)
    assert wire(a.state_at(cut)) == wire(b.state_at(cut)) == {"app/a": live(fed(base))["app/a"]}
    assert a.state_at(cut)["app/a"].value() == {"k": 4}
    assert a.value("app/a") == {"k": "a-only"}  # the live state is untouched
    assert a.state_at(()) == {}


def test_missing_changes_for_unknown_heads() -> None:
    r = Replica(POLICY)
    c, _ = r.create(AUTHORS[0], "app/a", [{"up": "k", "type": "lww", "op": {"v": 1}}], 1)
    unknown = b"\x99" * 32
    with pytest.raises(MissingChanges) as info:
        r.state_at([c.hash, unknown])
    assert info.value.missing == {unknown}
    with pytest.raises(MissingChanges) as info:
        r.causal_past([unknown, b"\x98" * 32])
    assert info.value.missing == {unknown, b"\x98" * 32}
    # a change held only as pending does not count as held
    later = Replica(POLICY)
    later.add(c)
    child, _ = later.create(AUTHORS[1], "app/a", [{"up": "j", "type": "lww", "op": {"v": 2}}], 2)
    lone = Replica(POLICY)
    assert lone.add(child).status == "pending"
    with pytest.raises(MissingChanges) as info:
        lone.state_at([child.hash])
    assert info.value.missing == {child.hash}
    lone.add(c)
    assert wire(lone.state_at([child.hash])) == live(later)


def test_state_at_cache_is_bounded_and_consistent() -> None:
    r = Replica(POLICY)
    cuts = []
    for i in range(12):
        r.create(AUTHORS[0], "app/a", [{"up": "k", "type": "gcounter", "op": {"t": i + 1}}], i)
        cuts.append((r.heads, live(r)))
    for heads, seen in cuts + cuts[::-1]:
        assert wire(r.state_at(heads)) == seen
    assert len(r._snapshots) <= 8
