"""``DhtCore``: answers, routing-table admission rules, store reasons."""

from __future__ import annotations

import dataclasses

import pytest

from p2p.dht.config import DhtConfig
from p2p.dht.messages import (
    AddProvider,
    FindNode,
    GetProviders,
    GetRecord,
    Nodes,
    Ping,
    Pong,
    ProvidersResult,
    PutRecord,
    PutResult,
    RecordResult,
)
from p2p.dht.peer import PeerInfo
from p2p.dht.records import KeySigner, sign_provider, sign_record
from p2p.dht.server import DhtCore, DhtRequestError

NOW = 1_700_000_000.0
ME = PeerInfo(b"\xee" * 32, (("192.0.2.100", 4000),))


def peer(n: int) -> PeerInfo:
    return PeerInfo(n.to_bytes(32, "big"), (("10.0.0.1", 1000 + n),))


def core(**kw: object) -> DhtCore:
    return DhtCore(ME, DhtConfig(**kw), now=NOW)  # type: ignore[arg-type]


def test_server_mode_senders_enter_the_table_client_mode_ones_do_not() -> None:
    c = core()
    a, b = peer(1), peer(2)
    assert c.handle(a.key, Ping(sender=a), NOW) == Pong()
    assert c.handle(b.key, Ping(), NOW) == Pong()  # client mode
    assert a.key in c.routing and b.key not in c.routing
    no_addrs = PeerInfo(peer(3).key)
    c.handle(no_addrs.key, Ping(sender=no_addrs), NOW)
    assert no_addrs.key not in c.routing  # not dialable: not a server
    assert c.handle(ME.key, Ping(sender=ME), NOW) == Pong()
    assert ME.key not in c.routing


def test_a_server_that_turns_client_leaves_the_table() -> None:
    c = core()
    a = peer(1)
    c.handle(a.key, Ping(sender=a), NOW)
    assert a.key in c.routing
    c.handle(a.key, FindNode(bytes(32)), NOW + 1)  # NAT traversal found it unreachable
    assert a.key not in c.routing
    assert a not in c.closest(bytes(32), peer(9).key)


def test_sender_must_be_the_authenticated_peer() -> None:
    c = core()
    with pytest.raises(DhtRequestError) as info:
        c.handle(peer(2).key, FindNode(bytes(32), sender=peer(1)), NOW)
    assert info.value.code == "sender-mismatch"
    assert len(c.routing) == 0 and c.served == 0


def test_find_node_answers_nearest_without_the_requester() -> None:
    c = core(k=4)
    for n in range(1, 30):
        c.handle(peer(n).key, Ping(sender=peer(n)), NOW)
    target = peer(7).id
    answer = c.handle(peer(7).key, FindNode(target, sender=peer(7)), NOW)
    assert isinstance(answer, Nodes)
    assert peer(7) not in answer.closer and len(answer.closer) == 4
    assert list(answer.closer) == c.routing.closest(target, 4, exclude={peer(7).key})


def test_records_store_and_reasons() -> None:
    c = core()
    signer = KeySigner(b"\x01" * 32)
    r1 = sign_record(signer, b"n", b"one", 1, int(NOW) + 60)
    r2 = sign_record(signer, b"n", b"two", 2, int(NOW) + 60)
    assert c.handle(peer(1).key, PutRecord(r2), NOW) == PutResult(True)
    assert c.handle(peer(1).key, PutRecord(r1), NOW) == PutResult(False, "stale-seq")
    forged = dataclasses.replace(r2, seq=3)
    assert c.handle(peer(1).key, PutRecord(forged), NOW) == PutResult(False, "bad-signature")
    assert c.handle(peer(1).key, PutRecord(r2), NOW + 61) == PutResult(False, "expired")
    answer = c.handle(peer(1).key, GetRecord(r2.key), NOW)
    assert isinstance(answer, RecordResult) and answer.record == r2
    gone = c.handle(peer(1).key, GetRecord(r2.key), NOW + 61)
    assert isinstance(gone, RecordResult) and gone.record is None


def test_providers_store_and_answer() -> None:
    c = core(max_providers_per_answer=1)
    key = b"c" * 32
    p1 = sign_provider(KeySigner(b"\x02" * 32), key, (("192.0.2.1", 1),), int(NOW) + 60)
    p2 = sign_provider(KeySigner(b"\x03" * 32), key, (("192.0.2.2", 1),), int(NOW) + 90)
    assert c.handle(peer(1).key, AddProvider(p1), NOW) == PutResult(True)
    assert c.handle(peer(1).key, AddProvider(p2), NOW) == PutResult(True)
    bad = dataclasses.replace(p1, expires=p1.expires + 1)
    assert c.handle(peer(1).key, AddProvider(bad), NOW) == PutResult(False, "bad-signature")
    answer = c.handle(peer(1).key, GetProviders(key), NOW)
    assert isinstance(answer, ProvidersResult) and answer.providers == (p2,)


def test_liveness_checks_flow_through_the_core() -> None:
    c = core(k=1)
    from p2p.dht.keyspace import bucket_index

    same = [p for p in (peer(n) for n in range(1, 200)) if bucket_index(ME.id, p.id) == 255]
    old, new = same[0], same[1]
    c.peer_responded(old, NOW)
    c.handle(new.key, Ping(sender=new), NOW)
    checks = c.take_liveness_checks()
    assert [ch.peer for ch in checks] == [old] and c.take_liveness_checks() == []
    c.peer_failed(old.key, NOW + 1)  # a replacement waits: one failure evicts
    assert new.key in c.routing and old.key not in c.routing


def test_config_validation() -> None:
    for bad in (
        {"k": 0},
        {"k": 33},
        {"alpha": 0},
        {"disjoint_paths": 9},
        {"quorum": 0},
        {"slow_after": 0.0},
        {"max_records": 0},
        {"max_providers_per_answer": 40},
        {"max_providers_per_key": 0},
        {"record_ttl": 10**9},
    ):
        with pytest.raises(ValueError):
            DhtConfig(**bad)  # type: ignore[arg-type]
