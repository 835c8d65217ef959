"""Signed changes: canonical encoding, every structural check, signatures, identity."""

from __future__ import annotations

import hashlib
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
    ChangeRejected,
    KeySigner,
    check_doc_id,
    decode_change,
    hash_bytes,
    namespace_of,
    sign_change,
)
from crdt.limits import CrdtLimits

LIMITS = CrdtLimits()
ALICE = KeySigner(b"\x01" * 32)
BOB = KeySigner(b"\x02" * 32)
DEP_A = b"\x10" * 32
DEP_B = b"\x20" * 32
OP = {"up": "k", "type": "lww", "op": {"v": 1}}


def body(doc: str, deps: list[bytes], author: bytes, hlc: int, ops: list[Any]) -> bytes:
    out: bytes = msgpack.packb([VERSION, doc, deps, author, hlc, ops], use_bin_type=True)
    return _SIGNING_CONTEXT + out


def raw(*fields: Any) -> bytes:
    out: bytes = msgpack.packb(list(fields), use_bin_type=True)
    return out


def good_fields(**over: Any) -> list[Any]:
    """Fields of a valid change by ALICE, with some replaced; signed over the result."""
    f: dict[str, Any] = {
        "version": VERSION,
        "doc": "app/doc",
        "deps": [DEP_A, DEP_B],
        "author": ALICE.public_key,
        "hlc": 1 << 20,
        "ops": [OP],
    }
    f.update({k: v for k, v in over.items() if k != "signature"})
    sig = over.get("signature")
    if sig is None:
        try:
            packed = msgpack.packb(
                [f["version"], f["doc"], f["deps"], f["author"], f["hlc"], f["ops"]],
                use_bin_type=True,
            )
            sig = ALICE.sign(_SIGNING_CONTEXT + packed)
        except (TypeError, ValueError, OverflowError):
            sig = b"\x00" * 64
    return [f["version"], f["doc"], f["deps"], f["author"], f["hlc"], f["ops"], sig]


def rejected(data: Any, limits: CrdtLimits = LIMITS) -> ChangeRejected:
    with pytest.raises(ChangeRejected) as info:
        decode_change(data, limits)
    return info.value


# -- valid changes ------------------------------------------------------------------------


def test_sign_then_decode_round_trips_and_hash_is_blake2b_of_the_bytes() -> None:
    change = sign_change(ALICE, "app/doc", [DEP_B, DEP_A, DEP_B], 1 << 20, [OP], LIMITS)
    assert change.deps == (DEP_A, DEP_B)  # sorted and deduplicated
    assert change.author == ALICE.public_key
    assert change.hash == hashlib.blake2b(change.encoded, digest_size=32).digest()
    assert change.hash == hash_bytes(change.encoded)
    again = decode_change(change.encoded, LIMITS)
    assert again == change
    assert decode_change(bytearray(change.encoded), LIMITS) == change
    assert raw(*good_fields()) == change.encoded
    assert change.hash.hex()[:12] in repr(change)


def test_signature_covers_a_domain_separated_body() -> None:
    change = sign_change(ALICE, "app/doc", [], 5, [OP], LIMITS)
    from nacl.signing import VerifyKey

    VerifyKey(ALICE.public_key).verify(
        body("app/doc", [], ALICE.public_key, 5, [OP]), change.signature
    )


def test_limits_at_the_boundary_are_accepted() -> None:
    limits = CrdtLimits(max_ops=3, max_deps=2)
    change = sign_change(ALICE, "app/doc", [DEP_A, DEP_B], MAX_HLC, [OP] * 3, limits)
    assert change.hlc == MAX_HLC
    assert len(change.ops) == 3
    exact = CrdtLimits(max_change_bytes=len(change.encoded), max_ops=3, max_deps=2)
    assert decode_change(change.encoded, exact) == change


def test_same_content_from_different_authors_has_different_identity() -> None:
    a = sign_change(ALICE, "app/doc", [], 7, [OP], LIMITS)
    b = sign_change(BOB, "app/doc", [], 7, [OP], LIMITS)
    assert a.hash != b.hash


def test_verify_false_skips_only_the_signature() -> None:
    fields = good_fields(signature=b"\x00" * 64)
    assert rejected(raw(*fields)).reason == "bad-signature"
    change = decode_change(raw(*fields), LIMITS, verify=False)
    assert change.signature == b"\x00" * 64
    with pytest.raises(ChangeRejected, match="malformed"):
        decode_change(raw(*good_fields(hlc=0)), LIMITS, verify=False)


# -- forged and mis-signed ------------------------------------------------------------------


class Impostor:
    """Claims BOB's key but signs with ALICE's."""

    public_key = BOB.public_key

    def sign(self, message: bytes) -> bytes:
        return ALICE.sign(message)


def test_forged_author_is_a_bad_signature() -> None:
    # sign_change trusts its own signer (it skips verifying a signature it just made);
    # every receiver verifies.
    impostor = sign_change(Impostor(), "app/doc", [], 5, [OP], LIMITS)
    assert rejected(impostor.encoded).reason == "bad-signature"
    forged = good_fields(author=BOB.public_key)  # signed by ALICE over BOB as author
    assert rejected(raw(*forged)).reason == "bad-signature"


def test_flipping_any_signature_bit_is_a_bad_signature() -> None:
    change = sign_change(ALICE, "app/doc", [DEP_A], 9, [OP], LIMITS)
    start = len(change.encoded) - 64
    for bit in range(0, 512, 7):
        data = bytearray(change.encoded)
        data[start + bit // 8] ^= 1 << (bit % 8)
        assert rejected(bytes(data)).reason == "bad-signature"


@given(bit=st.integers(0, 8 * 200 - 1))
def test_any_bit_flip_is_rejected_as_malformed_or_bad_signature(bit: int) -> None:
    change = sign_change(ALICE, "app/doc", [DEP_A, DEP_B], 1 << 40, [OP, OP], LIMITS)
    bit %= 8 * len(change.encoded)
    data = bytearray(change.encoded)
    data[bit // 8] ^= 1 << (bit % 8)
    assert rejected(bytes(data)).reason in ("malformed", "bad-signature")


def test_body_bit_flips_in_signed_fields_are_bad_signatures() -> None:
    change = sign_change(ALICE, "app/doc", [DEP_A], 1 << 40, [OP], LIMITS)
    for needle in (DEP_A, ALICE.public_key, b"doc"):
        at = change.encoded.index(needle) + len(needle) - 1
        data = bytearray(change.encoded)
        data[at] ^= 1
        assert rejected(bytes(data)).reason == "bad-signature", needle


# -- structure --------------------------------------------------------------------------------

MALFORMED: dict[str, tuple[list[Any], str]] = {
    "version 2": (good_fields(version=2), "version"),
    "version 0": (good_fields(version=0), "version"),
    "version bool": (good_fields(version=True), "version"),
    "version float": (good_fields(version=1.0), "version"),
    "doc bytes": (good_fields(doc=b"app/doc"), "doc"),
    "doc no slash": (good_fields(doc="appdoc"), "doc"),
    "doc upper namespace": (good_fields(doc="App/doc"), "doc"),
    "doc empty namespace": (good_fields(doc="/doc"), "doc"),
    "doc namespace starts with _": (good_fields(doc="_a/doc"), "doc"),
    "doc namespace too long": (good_fields(doc="a" * 65 + "/doc"), "doc"),
    "doc empty name": (good_fields(doc="app/"), "doc"),
    "doc unprintable name": (good_fields(doc="app/a\nb"), "doc"),
    "doc too long": (good_fields(doc="app/" + "x" * 253), "doc"),
    "deps not a list": (good_fields(deps=DEP_A), "deps"),
    "deps unsorted": (good_fields(deps=[DEP_B, DEP_A]), "deps"),
    "deps duplicate": (good_fields(deps=[DEP_A, DEP_A]), "deps"),
    "deps short hash": (good_fields(deps=[DEP_A[:31]]), "deps"),
    "deps long hash": (good_fields(deps=[DEP_A + b"\x00"]), "deps"),
    "deps str": (good_fields(deps=["x" * 32]), "deps"),
    "author short": (good_fields(author=ALICE.public_key[:31]), "author"),
    "author long": (good_fields(author=ALICE.public_key + b"\x00"), "author"),
    "author str": (good_fields(author="a" * 32), "author"),
    "hlc zero": (good_fields(hlc=0), "hlc"),
    "hlc negative": (good_fields(hlc=-1), "hlc"),
    "hlc too large": (good_fields(hlc=MAX_HLC + 1), "hlc"),
    "hlc bool": (good_fields(hlc=True), "hlc"),
    "hlc float": (good_fields(hlc=5.0), "hlc"),
    "ops empty": (good_fields(ops=[]), "ops"),
    "ops not a list": (good_fields(ops=OP), "ops"),
    "ops bad op": (good_fields(ops=[OP, {"up": "k", "type": "nope", "op": {}}]), "ops[1]"),
    "ops garbage op": (good_fields(ops=[17]), "ops[0]"),
    "signature short": (good_fields(signature=b"\x00" * 63), "signature"),
    "signature long": (good_fields(signature=b"\x00" * 65), "signature"),
    "signature str": (good_fields(signature="s" * 64), "signature"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_each_malformed_field_is_rejected_naming_it(name: str) -> None:
    fields, field = MALFORMED[name]
    exc = rejected(raw(*fields))
    assert exc.reason == "malformed", exc
    assert exc.detail.startswith(field), exc.detail


def test_count_limits_on_ops_and_deps() -> None:
    limits = CrdtLimits(max_ops=2, max_deps=1)
    exc = rejected(raw(*good_fields(ops=[OP] * 3, deps=[DEP_A])), limits)
    assert (exc.reason, exc.detail[:3]) == ("malformed", "ops")
    exc = rejected(raw(*good_fields(deps=[DEP_A, DEP_B])), limits)
    assert (exc.reason, exc.detail[:4]) == ("malformed", "deps")
    with pytest.raises(ChangeRejected, match="malformed"):
        sign_change(ALICE, "app/doc", [], 5, [OP] * 3, limits)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02",  # truncated array
        raw(*good_fields())[:-1],
        raw(*good_fields()) + b"\x00",  # trailing byte
        raw(*good_fields()[:6]),
        raw(*good_fields(), None),
        msgpack.packb({"doc": "app/doc"}),
        msgpack.packb({1: 2}),
        msgpack.packb(None),
    ],
)
def test_garbage_and_wrong_shapes_are_malformed(data: bytes) -> None:
    assert rejected(data).reason == "malformed"


def test_non_bytes_input_is_malformed() -> None:
    assert rejected("not bytes").reason == "malformed"
    assert rejected(None).reason == "malformed"


def test_non_canonical_encodings_are_malformed() -> None:
    good = raw(*good_fields())
    assert good[:2] == b"\x97\x01"  # fixarray(7), positive fixint 1
    variants = [
        b"\x97\xcc\x01" + good[2:],  # version as uint8
        b"\xdc\x00\x07" + good[1:],  # array16 header
        b"\xdd\x00\x00\x00\x07" + good[1:],  # array32 header
    ]
    doc = msgpack.packb("app/doc", use_bin_type=True)
    assert doc in good
    variants.append(good.replace(doc, b"\xd9\x07app/doc", 1))  # str8 instead of fixstr
    hlc = msgpack.packb(1 << 20)
    assert hlc in good
    variants.append(good.replace(hlc, b"\xcf" + (1 << 20).to_bytes(8, "big"), 1))  # uint64
    for data in variants:
        assert msgpack.unpackb(data) == msgpack.unpackb(good)
        exc = rejected(data)
        assert exc.reason == "malformed"
        assert "canonical" in exc.detail


def test_oversize_is_checked_before_parsing() -> None:
    change = sign_change(ALICE, "app/doc", [], 5, [OP], LIMITS)
    small = CrdtLimits(max_change_bytes=len(change.encoded) - 1)
    assert rejected(change.encoded, small).reason == "oversize"
    assert rejected(b"\xc1" * (len(change.encoded)), small).reason == "oversize"
    with pytest.raises(ChangeRejected, match="oversize"):
        sign_change(ALICE, "app/doc", [], 5, [OP], small)


@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_change_rejected(data: bytes) -> None:
    try:
        decode_change(data, LIMITS)
    except ChangeRejected as exc:
        assert exc.reason in ("malformed", "oversize", "bad-signature")


@given(obj=garbage, position=st.integers(0, 6))
def test_garbage_fields_only_raise_change_rejected(obj: Any, position: int) -> None:
    fields = good_fields()
    fields[position] = obj
    try:
        data = msgpack.packb(fields, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return
    try:
        decode_change(data, LIMITS)
    except ChangeRejected as exc:
        assert exc.reason in ("malformed", "bad-signature")


# -- helpers ------------------------------------------------------------------------------------


def test_doc_ids_and_namespaces() -> None:
    for good in ("a/b", "config/peers", "x0_.-/name with spaces", "a" * 64 + "/n", "ns/a/b/c"):
        assert check_doc_id(good, LIMITS) == good
    assert namespace_of("config/peers/x") == "config"
    assert check_doc_id("a/" + "é" * 127, LIMITS)
    with pytest.raises(ChangeRejected, match="malformed"):
        check_doc_id("a/" + "é" * 128, LIMITS)  # 256 bytes of name + 2 > 256
    with pytest.raises(ChangeRejected, match="malformed"):
        check_doc_id(7, LIMITS)


def test_change_is_immutable() -> None:
    change = sign_change(ALICE, "app/doc", [], 5, [OP], LIMITS)
    assert isinstance(change, Change)
    with pytest.raises(AttributeError):
        change.hlc = 6  # type: ignore[misc]
