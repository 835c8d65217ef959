"""The DHT codec: every message round-trips; every malformed input is a DhtDecodeError
naming the field, and nothing else escapes the decoder."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.dht.messages import (
    MAX_MESSAGE_BYTES,
    MAX_PEERS,
    AddProvider,
    DhtDecodeError,
    DhtMessage,
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
    decode,
    decode_request,
    decode_response,
    encode,
)
from p2p.dht.peer import PeerInfo
from p2p.dht.records import MAX_VALUE, KeySigner, sign_provider, sign_record

SIGNER = KeySigner(b"\x09" * 32)
PEER = PeerInfo(b"p" * 32, (("192.0.2.1", 4000), ("2001:db8::1", 4001)))
RECORD = sign_record(SIGNER, b"name", b"value", 3, 2_000_000_000)
PROVIDER = sign_provider(SIGNER, b"c" * 32, (("192.0.2.9", 9),), 2_000_000_000)

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
addrs = st.lists(st.tuples(hosts, st.integers(1, 65535)), max_size=8).map(tuple)
peers = st.builds(PeerInfo, st.binary(min_size=32, max_size=32), addrs)
opt_peer = st.none() | peers
keys = st.binary(min_size=32, max_size=32)
records = st.builds(
    lambda name, value, seq, exp: sign_record(SIGNER, name, value, seq, exp),
    st.binary(max_size=64),
    st.binary(max_size=256),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
providers = st.builds(
    lambda key, a, exp: sign_provider(SIGNER, key, a, exp), keys, addrs, st.integers(0, 2**64 - 1)
)
messages: st.SearchStrategy[DhtMessage] = st.one_of(
    st.builds(Ping, sender=opt_peer),
    st.builds(FindNode, keys, sender=opt_peer),
    st.builds(GetRecord, keys, sender=opt_peer),
    st.builds(PutRecord, records, sender=opt_peer),
    st.builds(AddProvider, providers, sender=opt_peer),
    st.builds(GetProviders, keys, sender=opt_peer),
    st.builds(Pong),
    st.builds(Nodes, st.lists(peers, max_size=6).map(tuple)),
    st.builds(RecordResult, st.none() | records, st.lists(peers, max_size=4).map(tuple)),
    st.builds(PutResult, st.booleans(), st.sampled_from(["", "bad-signature", "full"])),
    st.builds(
        ProvidersResult,
        st.lists(providers, max_size=4).map(tuple),
        st.lists(peers, max_size=4).map(tuple),
    ),
)


@given(messages)
def test_round_trip(msg: DhtMessage) -> None:
    assert decode(encode(msg)) == msg


def test_largest_messages_fit() -> None:
    big = sign_record(SIGNER, b"n" * 64, b"v" * MAX_VALUE, 1, 2**64 - 1)
    full_peer = PeerInfo(b"p" * 32, tuple(("2001:db8::ffff:ffff:ffff", 65535) for _ in range(8)))
    closer = (full_peer,) * MAX_PEERS
    assert decode(encode(RecordResult(big, closer))) == RecordResult(big, closer)
    many = (sign_provider(SIGNER, b"c" * 32, full_peer.addrs, 2**64 - 1),) * 32
    assert decode(encode(ProvidersResult(many, closer))) == ProvidersResult(many, closer)


def test_request_and_response_decoders() -> None:
    assert decode_request(encode(Ping(sender=PEER))) == Ping(sender=PEER)
    assert decode_response(encode(Pong())) == Pong()
    with pytest.raises(DhtDecodeError) as info:
        decode_request(encode(Pong()))
    assert info.value.field == "t"
    with pytest.raises(DhtDecodeError) as info:
        decode_response(encode(FindNode(b"t" * 32)))
    assert info.value.field == "t"


def test_encode_refuses_out_of_bounds() -> None:
    with pytest.raises(ValueError, match="closer"):
        encode(Nodes((PEER,) * (MAX_PEERS + 1)))
    with pytest.raises(ValueError, match="host"):
        encode(Nodes((PeerInfo(b"p" * 32, (("example.com", 1),)),)))
    with pytest.raises(ValueError, match="target"):
        encode(FindNode(b"short"))


def raw(body: dict[str, object]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def body(msg: DhtMessage) -> dict[str, object]:
    return msgpack.unpackb(encode(msg), raw=False)  # type: ignore[no-any-return]


def with_(msg: DhtMessage, **fields: object) -> bytes:
    b = body(msg)
    b.update(fields)
    return raw(b)


def wire_peer(p: PeerInfo) -> list[object]:
    return [p.key, [list(a) for a in p.addrs]]


def wire_record(**change: object) -> list[object]:
    r = {
        "author": RECORD.author,
        "name": RECORD.name,
        "value": RECORD.value,
        "seq": RECORD.seq,
        "expires": RECORD.expires,
        "signature": RECORD.signature,
    }
    r.update(change)
    return list(r.values())


CASES: list[tuple[str, bytes, str]] = [
    ("not msgpack", b"\xc1", "frame"),
    ("truncated", encode(Ping())[:-1], "frame"),
    ("trailing bytes", encode(Pong()) + b"\x00", "frame"),
    ("oversize frame", b"\x00" * (MAX_MESSAGE_BYTES + 1), "frame"),
    ("not a map", raw([1, 2]), "frame"),  # type: ignore[dict-item]
    ("ext type", b"\xd4\x01\x00", "frame"),
    ("no type", raw({"v": 1}), "t"),
    ("type not int", raw({"t": "ping", "v": 1}), "t"),
    ("unknown type", raw({"t": 99, "v": 1}), "t"),
    ("bad version", with_(Pong(), v=2), "v"),
    ("missing field", raw({"t": 2, "v": 1, "sender": None}), "fields"),
    ("extra field", with_(Pong(), extra=1), "fields"),
    ("int map key", raw({"t": 16, "v": 1, 5: 1}), "frame"),  # type: ignore[dict-item]
    ("target short", with_(FindNode(b"t" * 32), target=b"t"), "target"),
    ("target wrong type", with_(FindNode(b"t" * 32), target="t" * 32), "target"),
    ("sender not array", with_(Ping(), sender=b"x"), "sender"),
    ("sender key short", with_(Ping(), sender=[b"k", []]), "sender.key"),
    ("sender 3 items", with_(Ping(), sender=[b"k" * 32, [], 1]), "sender"),
    ("addrs not list", with_(Ping(), sender=[b"k" * 32, 5]), "sender.addrs"),
    (
        "too many addrs",
        with_(Ping(), sender=[b"k" * 32, [["192.0.2.1", 1]] * 9]),
        "sender.addrs",
    ),
    ("hostname", with_(Ping(), sender=[b"k" * 32, [["example.com", 1]]]), "sender.addrs[0]"),
    ("port 0", with_(Ping(), sender=[b"k" * 32, [["192.0.2.1", 0]]]), "sender.addrs[0]"),
    ("port big", with_(Ping(), sender=[b"k" * 32, [["192.0.2.1", 70000]]]), "sender.addrs[0]"),
    ("host int", with_(Ping(), sender=[b"k" * 32, [[1, 1]]]), "sender.addrs[0]"),
    ("addr 3 items", with_(Ping(), sender=[b"k" * 32, [["::1", 1, 2]]]), "sender.addrs[0]"),
    ("too many peers", with_(Nodes(()), closer=[wire_peer(PEER)] * 33), "closer"),
    ("bad peer in list", with_(Nodes(()), closer=[wire_peer(PEER), [b"x", []]]), "closer[1].key"),
    ("record not array", with_(PutRecord(RECORD), record={"a": 1}), "record"),
    ("record 5 items", with_(PutRecord(RECORD), record=wire_record()[:5]), "record"),
    ("record author", with_(PutRecord(RECORD), record=wire_record(author=b"a")), "record.author"),
    (
        "record name long",
        with_(PutRecord(RECORD), record=wire_record(name=b"n" * 65)),
        "record.name",
    ),
    (
        "record value oversize",
        with_(PutRecord(RECORD), record=wire_record(value=b"v" * (MAX_VALUE + 1))),
        "record.value",
    ),
    ("record seq negative", with_(PutRecord(RECORD), record=wire_record(seq=-1)), "record.seq"),
    ("record seq float", with_(PutRecord(RECORD), record=wire_record(seq=1.0)), "record.seq"),
    ("record seq bool", with_(PutRecord(RECORD), record=wire_record(seq=True)), "record.seq"),
    (
        "record signature",
        with_(PutRecord(RECORD), record=wire_record(signature=b"s" * 63)),
        "record.signature",
    ),
    ("result record", with_(RecordResult(None, ()), record=5), "record"),
    ("provider 3 items", with_(AddProvider(PROVIDER), record=[b"c" * 32, 1, 2]), "record"),
    (
        "provider peer",
        with_(AddProvider(PROVIDER), record=[b"c" * 32, [b"p", []], 1, b"s" * 64]),
        "record.provider.key",
    ),
    (
        "providers list",
        with_(ProvidersResult((), ()), providers=[[b"c" * 32, wire_peer(PEER), -1, b"s" * 64]]),
        "providers[0].expires",
    ),
    ("stored not bool", with_(PutResult(True), stored=1), "stored"),
    ("reason not str", with_(PutResult(True), reason=b"x"), "reason"),
    ("reason long", with_(PutResult(True), reason="x" * 65), "reason"),
    ("reason non-ascii", with_(PutResult(True), reason="é"), "reason"),
    # deeper than any DHT message (6 levels): refused while unpacking, before the keys
    ("deep nesting", raw({"t": 16, "v": 1, "x": [[[[[[[[]]]]]]]]}), "frame"),
    ("deep enough", raw({"t": 16, "v": 1, "x": [[[[[]]]]]}), "fields"),
]


@pytest.mark.parametrize(("name", "data", "field"), CASES, ids=[c[0] for c in CASES])
def test_rejections_name_the_field(name: str, data: bytes, field: str) -> None:
    with pytest.raises(DhtDecodeError) as info:
        decode(data)
    assert info.value.field == field, str(info.value)


def test_non_bytes_input() -> None:
    with pytest.raises(DhtDecodeError):
        decode("text")  # type: ignore[arg-type]


@given(st.binary(max_size=300))
def test_garbage_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DhtDecodeError):
        decode(data)


@given(messages, st.integers(min_value=0), st.integers(0, 255))
def test_corrupted_messages_raise_only_decode_errors(msg: DhtMessage, pos: int, byte: int) -> None:
    data = bytearray(encode(msg))
    data[pos % len(data)] = byte
    with contextlib.suppress(DhtDecodeError):
        decode(bytes(data))
