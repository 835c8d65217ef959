"""Signed records and provider records: every rejection reason, and the stores."""

from __future__ import annotations

import dataclasses

import pytest

from p2p.dht.peer import PeerInfo
from p2p.dht.records import (
    BAD_SIGNATURE,
    CONFLICT,
    EXPIRED,
    FULL,
    MALFORMED,
    MAX_NAME,
    MAX_RECORD_TTL,
    MAX_VALUE,
    OVERSIZE,
    STALE_SEQ,
    TOO_FAR_FUTURE,
    WRONG_KEY,
    KeySigner,
    ProviderRecord,
    Record,
    RecordError,
    check_replace,
    record_key,
    sign_provider,
    sign_record,
    supersedes,
    validate_provider,
    validate_record,
    verify_signature,
)
from p2p.dht.store import ProviderStore, RecordStore
from p2p.identity import Identity

NOW = 1_700_000_000.0
ALICE = KeySigner(b"\x01" * 32)
BOB = KeySigner(b"\x02" * 32)
ADDRS = (("192.0.2.7", 4000),)


def rec(seq: int = 1, value: bytes = b"v", ttl: int = 3600, signer: KeySigner = ALICE) -> Record:
    return sign_record(signer, b"name", value, seq, int(NOW) + ttl)


def reason(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(RecordError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value.reason


def test_valid_record_and_key() -> None:
    r = rec()
    validate_record(r, NOW, key=record_key(ALICE.public_key, b"name"))
    assert r.key == record_key(ALICE.public_key, b"name")
    assert record_key(BOB.public_key, b"name") != r.key
    assert "seq=1" in repr(r)


def test_identity_signs_records() -> None:
    ident = Identity.from_seed(b"\x03" * 32)
    r = sign_record(ident, b"n", b"v", 1, int(NOW) + 60)
    validate_record(r, NOW)
    assert r.author == ident.public_key


@pytest.mark.parametrize(
    ("change", "want"),
    [
        ({"author": b"short"}, MALFORMED),
        ({"name": "text"}, MALFORMED),
        ({"seq": -1}, MALFORMED),
        ({"expires": 1.5}, MALFORMED),
        ({"signature": b"x"}, MALFORMED),
        ({"name": b"n" * (MAX_NAME + 1)}, OVERSIZE),
        ({"value": b"v" * (MAX_VALUE + 1)}, OVERSIZE),
        ({"value": b"tampered"}, BAD_SIGNATURE),
        ({"seq": 99}, BAD_SIGNATURE),
        ({"author": BOB.public_key}, BAD_SIGNATURE),
        ({"signature": bytes(64)}, BAD_SIGNATURE),
    ],
)
def test_record_rejections(change: dict[str, object], want: str) -> None:
    bad = dataclasses.replace(rec(), **change)  # type: ignore[arg-type]
    assert reason(validate_record, bad, NOW) == want


def test_expiry_and_ttl_bounds() -> None:
    assert reason(validate_record, rec(ttl=10), NOW + 10) == EXPIRED
    assert reason(validate_record, rec(ttl=-5), NOW) == EXPIRED
    far = rec(ttl=MAX_RECORD_TTL + 3600)
    assert reason(validate_record, far, NOW) == TOO_FAR_FUTURE
    assert reason(validate_record, rec(ttl=3600), NOW, max_ttl=60) == TOO_FAR_FUTURE


def test_wrong_key_and_not_a_record() -> None:
    assert reason(validate_record, rec(), NOW, key=bytes(32)) == WRONG_KEY
    assert reason(validate_record, "record", NOW) == MALFORMED
    assert reason(validate_provider, rec(), NOW) == MALFORMED


def test_sign_record_refuses_oversize() -> None:
    assert reason(sign_record, ALICE, b"n", b"v" * (MAX_VALUE + 1), 1, int(NOW)) == OVERSIZE


def test_replace_rules() -> None:
    one, two = rec(1), rec(2)
    check_replace(two, one)
    check_replace(one, None)
    check_replace(rec(1, ttl=7200), one)  # same value, later expiry: a republish
    assert reason(check_replace, one, two) == STALE_SEQ
    assert reason(check_replace, rec(1, b"other"), one) == CONFLICT
    assert supersedes(two, one) and not supersedes(one, two)
    assert supersedes(rec(1, ttl=7200), one)


def test_verify_signature_never_raises() -> None:
    assert not verify_signature(b"short", b"m", bytes(64))
    assert not verify_signature(ALICE.public_key, b"m", b"short")


# -- provider records -------------------------------------------------------------------


def prov(ttl: int = 3600, signer: KeySigner = BOB, key: bytes = b"k" * 32) -> ProviderRecord:
    return sign_provider(signer, key, ADDRS, int(NOW) + ttl)


def test_provider_valid_and_rejections() -> None:
    p = prov()
    validate_provider(p, NOW, key=b"k" * 32)
    assert "ProviderRecord" in repr(p)
    moved = dataclasses.replace(p, provider=PeerInfo(BOB.public_key, (("203.0.113.9", 1),)))
    assert reason(validate_provider, moved, NOW) == BAD_SIGNATURE  # addresses are signed
    stolen = dataclasses.replace(p, provider=PeerInfo(ALICE.public_key, ADDRS))
    assert reason(validate_provider, stolen, NOW) == BAD_SIGNATURE
    assert reason(validate_provider, p, NOW, key=bytes(32)) == WRONG_KEY
    assert reason(validate_provider, prov(ttl=5), NOW + 6) == EXPIRED
    assert reason(validate_provider, prov(ttl=10**7), NOW) == TOO_FAR_FUTURE
    assert reason(validate_provider, dataclasses.replace(p, key=b"k"), NOW) == MALFORMED
    assert reason(validate_provider, dataclasses.replace(p, signature=b""), NOW) == MALFORMED
    many = PeerInfo(BOB.public_key, tuple(("192.0.2.1", i) for i in range(1, 10)))
    assert reason(validate_provider, dataclasses.replace(p, provider=many), NOW) == OVERSIZE
    bad_addr = PeerInfo(BOB.public_key, (("192.0.2.1", 0),))
    assert reason(validate_provider, dataclasses.replace(p, provider=bad_addr), NOW) == MALFORMED


# -- stores --------------------------------------------------------------------------------


def test_record_store_rules_and_bounds() -> None:
    s = RecordStore(max_records=2, republish_interval=100.0)
    assert s.put(rec(1), NOW) is True
    assert s.put(rec(1), NOW + 1) is False  # republish of the same record
    assert reason(s.put, rec(1, b"other"), NOW) == CONFLICT
    assert s.put(rec(2), NOW) is True
    assert reason(s.put, rec(1), NOW) == STALE_SEQ
    assert s.get(rec().key, NOW) == rec(2)
    assert reason(s.put, dataclasses.replace(rec(3), value=b"x"), NOW) == BAD_SIGNATURE
    assert s.get(rec().key, NOW) == rec(2)  # refused puts change nothing
    s.put(rec(1, signer=BOB), NOW)
    carol = KeySigner(b"\x04" * 32)
    assert reason(s.put, rec(1, signer=carol), NOW) == FULL
    assert len(s) == 2
    # expiry frees room
    assert s.get(rec().key, NOW + 3600) is None
    assert s.put(rec(1, signer=carol, ttl=7200), NOW + 3600) is True


def test_record_store_republish_schedule() -> None:
    s = RecordStore(republish_interval=100.0)
    s.put(rec(1), NOW)
    assert s.due_for_republish(NOW + 50) == []
    assert s.due_for_republish(NOW + 100) == [rec(1)]
    s.mark_republished(rec().key, NOW + 100)
    assert s.due_for_republish(NOW + 150) == []
    s.put(rec(1), NOW + 190)  # somebody else republished it to us: we need not
    assert s.due_for_republish(NOW + 250) == []
    assert s.due_for_republish(NOW + 290) == [rec(1)]
    assert s.expire(NOW + 3600) == 1 and s.records() == []


def test_provider_store() -> None:
    s = ProviderStore(max_keys=1, max_per_key=2)
    assert s.add(prov(), NOW) is True
    assert s.add(prov(), NOW) is False
    assert s.add(prov(ttl=7200), NOW) is True  # extended
    assert s.add(prov(ttl=60), NOW) is False  # an older announcement does not shorten it
    assert s.add(prov(signer=ALICE), NOW) is True
    assert reason(s.add, prov(signer=KeySigner(b"\x05" * 32)), NOW) == FULL
    assert reason(s.add, prov(key=b"j" * 32), NOW) == FULL
    got = s.get(b"k" * 32, NOW)
    assert [r.provider.key for r in got] == [BOB.public_key, ALICE.public_key]
    assert len(s.get(b"k" * 32, NOW, limit=1)) == 1
    assert s.get(b"x" * 32, NOW) == []
    assert len(s) == 2 and s.keys() == 1
    assert reason(s.add, dataclasses.replace(prov(), signature=bytes(64)), NOW) == BAD_SIGNATURE
    assert s.expire(NOW + 3601) == 1
    assert s.expire(NOW + 7201) == 1 and s.keys() == 0
