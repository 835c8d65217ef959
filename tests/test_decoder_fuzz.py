"""Every strict wire decoder raises only its own decode error, whatever the bytes.

One table (:data:`CASES`) lists each decoder that parses peer bytes: the callable, the
one error class it may raise (``None``: it rejects by returning ``None`` and never
raises), and valid frames built with the project's own encoders. Three properties run
over every row:

1. arbitrary bytes decode or raise exactly the declared error;
2. byte-level mutations of valid frames (bit flips, truncation, insertion, deletion,
   duplication, splicing with other frames) do the same;
3. structural mutations (decode the frame with msgpack, add/remove/retype/rekey
   values: str and bytes keys mixed, duplicate keys, huge, negative and non-minimal
   ints, floats of both widths, ``None``, ext types, deep nesting, raw msgpack
   snippets; re-encode) do the same.

Every error must also keep its text short (:data:`MAX_ERROR_CHARS`): a frame full of
megabyte strings must never become a megabyte log line. A frame a decoder accepts
must re-encode to the same message, and the zero-copy fast paths (RPC reply view,
content chunk view) must agree with the strict decoders on every input.

The mutation engine takes a :class:`Draw` so that the same code serves hypothesis
(shrinkable draws) and :func:`hunt`, a plain random loop for long hunts::

    .venv/bin/python tests/test_decoder_fuzz.py 100000

Each leak such a hunt (or ``HYPOTHESIS_PROFILE=deep``) found is pinned as a named
case in :data:`REGRESSIONS`. The number of examples scales with the loaded profile
(:data:`EXAMPLES_PER_PROFILE_EXAMPLE` per profile example).
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdt.change import ChangeRejected, KeySigner, decode_change, sign_change
from crdt.checkpoint import decode_checkpoint, encode_checkpoint
from crdt.limits import CrdtLimits
from crdt.reconcile import IdSet, ReconcileError, Reconciler
from crdt.reconcile import Message as ReconMessage
from crdt.reconcile import decode as recon_decode
from crdt.reconcile import encode as recon_encode
from crdt.replica import AccessPolicy, Replica
from crdt.sync import (
    SyncEngine,
    SyncProtocolError,
    _decode,
    _encode_changes,
    _encode_session,
    _encode_want,
)
from dagrider import statesync
from dagrider.checkpoint import Certificate, Checkpoint, pack_block
from dagrider.codec import VERSION, Codec
from dagrider.codec import encode as codec_encode
from dagrider.coin import CoinShare
from dagrider.errors import DecodeError
from dagrider.messages import (
    CatchupRequest,
    CoinShareMsg,
    Echo,
    Ready,
    Val,
    Vertex,
    VertexRef,
    VertexRequest,
    VertexResponse,
)
from dagrider.ordering import OrderingState
from dagrider.params import Limits
from p2p.content.manifest import MIN_CHUNK_SIZE, Manifest, ManifestError, decode_manifest
from p2p.content.messages import (
    ChunkData,
    ContentDecodeError,
    GetChunk,
    GetManifest,
    Have,
    HaveReply,
    ManifestPage,
    decode_as,
    decode_chunk,
)
from p2p.content.messages import decode as content_decode
from p2p.content.messages import encode as content_encode
from p2p.dht import messages as dht
from p2p.dht.peer import PeerInfo
from p2p.dht.records import KeySigner as DhtSigner
from p2p.dht.records import sign_provider, sign_record
from p2p.errors import FrameError
from p2p.framing import KNOWN_KINDS, FrameDecoder, FrameKind, encode_frame
from p2p.nat import messages as nat
from p2p.rpc_wire import (
    Cancel,
    ErrorReply,
    Reply,
    Request,
    RpcDecodeError,
    decode_reply_view,
)
from p2p.rpc_wire import decode as rpc_decode
from p2p.rpc_wire import encode as rpc_encode

MAX_ERROR_CHARS = 300
"""Longest text any decode error may have: the field, the reason and at most
``p2p.strictwire.VALUE_CHARS`` (100) characters of any value quoted from the frame."""
EXAMPLES_PER_PROFILE_EXAMPLE = 6
"""Examples per property and decoder per ``max_examples`` of the loaded profile
(ci: 25 -> 150; deep: 500 -> 3000)."""

FUZZ = settings(
    # settings() inherits the profile tests/conftest.py loaded
    max_examples=settings().max_examples * EXAMPLES_PER_PROFILE_EXAMPLE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the decoders and their valid frames ------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One decoder: ``decode(bytes)`` accepts, or raises ``error`` (``None``: returns None)."""

    name: str
    decode: Callable[[bytes], object]
    error: type[Exception] | None
    samples: tuple[bytes, ...]
    body_at: int | None = 0
    """Where the msgpack body of a sample starts (after a fixed prefix); None: not msgpack."""

    def __repr__(self) -> str:
        return self.name


# dagrider consensus codec ------------------------------------------------------------

N = 7
CODEC = Codec(N, Limits())
# Small limits so that a field limit, not msgpack's own, is what trips first.
SMALL_CODEC = Codec(
    N, Limits(max_txs_per_vertex=4, max_tx_bytes=16, max_edges=6, max_message_bytes=4096)
)
_VERTEX = Vertex(
    5,
    2,
    (b"a", b"bc"),
    tuple(VertexRef(4, s, bytes([s]) * 32) for s in range(3)),
    (VertexRef(2, 6, b"\x07" * 32),),
)
CODEC_MESSAGES = (
    Val(_VERTEX),
    VertexResponse(Vertex(1, 0, (), (), ())),
    Echo(3, 1, b"\x01" * 32),
    Ready(2**40, 6, b"\xff" * 32),
    VertexRequest(0, 0, bytes(32)),
    CoinShareMsg(CoinShare(9, 4, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32)),
    CatchupRequest(7, 100),
)


def _codec_case(name: str, codec: Codec) -> Case:
    def decode(data: bytes) -> object:
        msg = codec.decode(data)
        assert codec.decode(codec_encode(msg)) == msg
        return msg

    return Case(name, decode, DecodeError, tuple(codec_encode(m) for m in CODEC_MESSAGES))


# p2p: NAT --------------------------------------------------------------------------------

_KEY = b"k" * 32
NAT_MESSAGES = (
    nat.Identify(("192.0.2.1", 4000), (("2001:db8::1", 1), ("10.0.0.1", 65535))),
    nat.DialRequest(2**64 - 1, (("192.0.2.7", 9),)),
    nat.DialResponse(1, nat.Status.DIAL_FAILED, ("192.0.2.7", 9)),
    nat.DialResponse(2, nat.Status.OK, None),
    nat.DialBack(3),
    nat.ReserveRequest(),
    nat.ReserveResponse(nat.Status.OK, 1000, 2000, 3000, ("198.51.100.1", 443)),
    nat.ConnectRequest(_KEY),
    nat.ConnectResponse(nat.Status.NO_RESERVATION, _KEY, 5, 6, 7),
    nat.StopConnect(_KEY, 1, 2, 3),
    nat.StopResponse(4, nat.Status.CLOSED),
    nat.CircuitData(5, b"tls records" * 30),
    nat.CircuitClose(6, nat.Status.BYTES_LIMIT),
    nat.PunchConnect(2**32 - 1, (("203.0.113.5", 5000),)),
    nat.PunchSync(8),
)


def _nat_decode(data: bytes) -> object:
    msg = nat.decode(data)
    assert nat.decode(nat.encode(msg)) == msg
    return msg


# p2p: DHT --------------------------------------------------------------------------------

_DHT_SIGNER = DhtSigner(b"\x09" * 32)
_PEER = PeerInfo(b"p" * 32, (("192.0.2.1", 4000), ("2001:db8::1", 4001)))
_RECORD = sign_record(_DHT_SIGNER, b"name", b"value", 3, 2_000_000_000)
_PROVIDER = sign_provider(_DHT_SIGNER, b"c" * 32, (("192.0.2.9", 9),), 2_000_000_000)
DHT_MESSAGES = (
    dht.Ping(_PEER),
    dht.Ping(),
    dht.FindNode(_KEY, _PEER),
    dht.GetRecord(_KEY),
    dht.PutRecord(_RECORD, _PEER),
    dht.AddProvider(_PROVIDER),
    dht.GetProviders(_KEY, None),
    dht.Pong(),
    dht.Nodes((_PEER, PeerInfo(_KEY, ()))),
    dht.RecordResult(_RECORD, (_PEER,)),
    dht.RecordResult(None, ()),
    dht.PutResult(False, "bad-signature"),
    dht.ProvidersResult((_PROVIDER,), (_PEER,)),
)


def _dht(decode: Callable[[bytes], dht.DhtMessage]) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        msg = decode(data)
        assert dht.decode(dht.encode(msg)) == msg
        return msg

    return run


# p2p: content, manifest ------------------------------------------------------------------

_MANIFEST = Manifest(1, 5 * MIN_CHUNK_SIZE + 3, MIN_CHUNK_SIZE, b"r" * 32)
CONTENT_MESSAGES = (
    GetManifest(_KEY, 3),
    ManifestPage(_MANIFEST, 0, b"L" * 64),
    GetChunk(_KEY, 2**32 - 1),
    ChunkData(0, b""),
    ChunkData(127, b"c" * 40),
    ChunkData(128, b"d" * 300),
    ChunkData(70_000, b"e" * 5),
    Have(_KEY),
    HaveReply(True),
)
_CONTENT_FRAMES = tuple(content_encode(m) for m in CONTENT_MESSAGES)
_CHUNK_FRAMES = (
    *(content_encode(m) for m in CONTENT_MESSAGES if isinstance(m, ChunkData)),
    msgpack.packb({"t": 4, "v": 1, "data": b"ab", "index": 3}),  # another key order
)


def _content_decode(data: bytes) -> object:
    msg = content_decode(data)
    assert content_decode(content_encode(msg)) == msg
    return msg


def _chunk_agrees(data: bytes) -> object:
    """``decode_chunk`` (fast path) gives what ``decode_as`` gives, on bytes and views."""
    try:
        ref: ChunkData | None = decode_as(data, ChunkData)
    except ContentDecodeError:
        ref = None
    for frame in (data, memoryview(data)):
        try:
            index, view = decode_chunk(frame)
        except ContentDecodeError:
            assert ref is None, "decode_chunk refused a frame decode_as accepts"
            raise
        assert ref is not None, "decode_chunk accepted a frame decode_as refuses"
        assert (index, bytes(view)) == (ref.index, ref.data)
    return ref


def _manifest_decode(data: bytes) -> object:
    manifest = decode_manifest(data)
    assert decode_manifest(manifest.encode()) == manifest
    return manifest


# p2p: RPC --------------------------------------------------------------------------------

MAX_BODY = 70_000
RPC_MESSAGES = (
    Request(1, "content.chunk", 5000, b"body"),
    Request(2**64 - 1, "m", 0, b""),
    Reply(0, b""),
    Reply(127, b"x" * 10),
    Reply(128, b"y" * 300),
    Reply(2**32, b"z" * 66_000),
    ErrorReply(3, "overloaded", "try later"),
    Cancel(4),
)
_RPC_FRAMES = tuple(rpc_encode(m) for m in RPC_MESSAGES)


def _rpc_decode(data: bytes) -> object:
    msg = rpc_decode(data, MAX_BODY)
    assert rpc_decode(rpc_encode(msg), MAX_BODY) == msg
    return msg


def _reply_view_agrees(data: bytes) -> object:
    """The fast path never raises and recognises only what ``decode`` accepts as it."""
    fast = decode_reply_view(data, MAX_BODY)
    if fast is not None:
        assert rpc_decode(data, MAX_BODY) == Reply(fast[0], bytes(fast[1]))
    return fast


# p2p: framing ----------------------------------------------------------------------------

_ALL_KINDS = KNOWN_KINDS | {int(k) for k in FrameKind}
_FRAMES = (
    encode_frame(FrameKind.DATA, b"payload"),
    encode_frame(FrameKind.PING, b"")
    + encode_frame(FrameKind.CRDT, b"x" * 40)
    + encode_frame(FrameKind.PONG, b"1"),
    encode_frame(FrameKind.CONTENT, _CONTENT_FRAMES[1]) + encode_frame(FrameKind.DHT, b"")[:3],
)


def _frames_agree(data: bytes) -> object:
    """One feed, and the same stream fed in 3-byte reads, give the same frames."""
    whole = FrameDecoder(4096, _ALL_KINDS).feed(data)
    pieces = FrameDecoder(4096, _ALL_KINDS)
    got = [f for i in range(0, len(data), 3) for f in pieces.feed(data[i : i + 3])]
    assert got == whole
    return whole


# crdt ------------------------------------------------------------------------------------

CRDT_LIMITS = CrdtLimits()
_AUTHOR = KeySigner(b"\x01" * 32)
_H = b"\x10" * 32
_ID = [1, _AUTHOR.public_key, _H, 0, 0]
CRDT_OPS: tuple[list[Any], ...] = (
    [{"up": "k", "type": "lww", "op": {"v": 1}}],
    [
        {"up": "s", "type": "orset", "op": {"add": "x"}},
        {"up": "s", "type": "orset", "op": {"rm": -5, "dots": [[_H, 0]]}},
        {"up": "c", "type": "gcounter", "op": {"t": 5}},
        {"up": "p", "type": "pncounter", "op": {"n": 3}},
    ],
    [{"up": "m", "type": "mvreg", "op": {"v": {"a": [1, 2.5, None, True]}, "seen": [[_H, 1]]}}],
    [
        {"up": "t", "type": "text", "op": {"after": None, "items": "hello"}},
        {"up": "l", "type": "rga", "op": {"after": _ID, "items": [1, "x", {"k": []}]}},
        {"up": "l", "type": "rga", "op": {"ids": [_ID]}},
    ],
    [
        {"up": "n", "type": "ormap", "op": {"up": "i", "type": "lww", "op": {"v": "deep"}}},
        {"rm": "k", "dots": [[_H, 0], [_H, 1]]},
    ],
)
CHANGES = tuple(
    sign_change(_AUTHOR, f"app/doc{i}", [_H] if i % 2 else [], 1 << 20, ops, CRDT_LIMITS)
    for i, ops in enumerate(CRDT_OPS)
)


def _change_decode(data: bytes) -> object:
    change = decode_change(data, CRDT_LIMITS)
    assert decode_change(change.encoded, CRDT_LIMITS) == change
    return change


_CKPT_DOMAIN = b"committee-1"
_CKPT_SIGNERS = frozenset({_AUTHOR.public_key})
_CHECKPOINTS = (
    encode_checkpoint(_AUTHOR, _CKPT_DOMAIN, [b"\x01" * 32, b"\x02" * 32]),
    encode_checkpoint(_AUTHOR, _CKPT_DOMAIN, []),
)
_CKPT_PREFIX = len(b"\x00drcrdt-ckpt\x00")


def _checkpoint_decode(data: bytes) -> object:
    return decode_checkpoint(data, _CKPT_DOMAIN, _CKPT_SIGNERS)


def _recon_frames() -> tuple[bytes, ...]:
    """Every message of a short session between two overlapping id sets."""
    ids = [bytes([i]) * 32 for i in range(1, 60)]
    a, b = IdSet(ids[:40]), IdSet(ids[20:])
    sides = [
        Reconciler(s, branching=4, id_list_threshold=2, max_ranges=64, max_ids=64) for s in (a, b)
    ]
    out: list[bytes] = []
    msg: ReconMessage | None = sides[0].initiate()
    turn = 1
    while msg is not None and len(out) < 8:
        out.append(recon_encode(msg))
        msg = sides[turn].respond(msg).reply
        turn = 1 - turn
    return tuple(out)


RECON_FRAMES = _recon_frames()


def _recon_decode(data: bytes) -> object:
    msg = recon_decode(data)
    assert recon_decode(recon_encode(msg)) == msg
    return msg


SYNC_FRAMES = (
    _encode_session(1, True, [_H], recon_decode(RECON_FRAMES[0])),
    _encode_session(2**62, False, [], recon_decode(RECON_FRAMES[1])),
    _encode_session(3, False, [], None),
    _encode_changes([c.encoded for c in CHANGES[:2]]),
    _encode_want([_H, b"\x20" * 32]),
)
_POLICY = AccessPolicy.open_to([_AUTHOR.public_key])


def _sync_decode(data: bytes) -> object:
    return _decode(data, CRDT_LIMITS.max_sync_batch_bytes)


def _sync_receive(data: bytes) -> object:
    """``SyncEngine.receive`` never raises on bad input (faults are effects)."""
    engine = SyncEngine(Replica(_POLICY, CRDT_LIMITS))
    for fault in engine.receive("peer", data).faults:
        assert len(fault.reason) <= MAX_ERROR_CHARS, fault.reason[:MAX_ERROR_CHARS]
    return None


# dagrider: state sync ----------------------------------------------------------------------

_CP = Checkpoint(b"\x01" * 32, 256, 1000, b"\x02" * 32, b"\x03" * 32, bytes(32))
STATE_MESSAGES: tuple[statesync.StateMessage, ...] = (
    statesync.CheckpointVote(_CP, b"\x04" * 64),
    statesync.CertificateRequest(),
    statesync.CertificateOffer(
        Certificate(_CP, ((0, b"\x05" * 64), (3, b"\x06" * 64))),
        OrderingState(9, 8, 29, 256, 1000, ((b"\x07" * 32, 20),), ((9, 1),), b"\x02" * 32),
    ),
    statesync.LogRequest(0, 256),
    statesync.LogPruned(None),
    statesync.LogPruned(Certificate(_CP, ((1, b"\x08" * 64),))),
    statesync.LogRows(
        3,
        (statesync.LogRow(3, 10, 2, 1, 1, pack_block([b"tx", b"more"])),),
        done=True,
        chain=b"\x09" * 32,
    ),
)


def _state_decode(data: bytes) -> object:
    msg = statesync.decode(data)
    assert statesync.decode(statesync.encode(msg)) == msg
    return msg


CASES: tuple[Case, ...] = (
    _codec_case("dagrider.codec", CODEC),
    Case(
        "dagrider.statesync",
        _state_decode,
        DecodeError,
        tuple(statesync.encode(m) for m in STATE_MESSAGES),
    ),
    _codec_case("dagrider.codec-small-limits", SMALL_CODEC),
    Case("p2p.nat", _nat_decode, nat.NatDecodeError, tuple(nat.encode(m) for m in NAT_MESSAGES)),
    Case(
        "p2p.dht", _dht(dht.decode), dht.DhtDecodeError, tuple(dht.encode(m) for m in DHT_MESSAGES)
    ),
    Case(
        "p2p.dht.request",
        _dht(dht.decode_request),
        dht.DhtDecodeError,
        tuple(dht.encode(m) for m in DHT_MESSAGES if isinstance(m, dht.REQUEST_TYPES)),
    ),
    Case(
        "p2p.dht.response",
        _dht(dht.decode_response),
        dht.DhtDecodeError,
        tuple(dht.encode(m) for m in DHT_MESSAGES if isinstance(m, dht.RESPONSE_TYPES)),
    ),
    Case("p2p.content", _content_decode, ContentDecodeError, _CONTENT_FRAMES),
    Case(
        "p2p.content.decode_as",
        lambda data: decode_as(data, ManifestPage),
        ContentDecodeError,
        tuple(content_encode(m) for m in CONTENT_MESSAGES if isinstance(m, ManifestPage)),
    ),
    Case("p2p.content.decode_chunk", _chunk_agrees, ContentDecodeError, _CHUNK_FRAMES),
    Case(
        "p2p.content.manifest",
        _manifest_decode,
        ManifestError,
        (_MANIFEST.encode(), Manifest(1, 0, 4 * 1024 * 1024, bytes(32)).encode()),
        body_at=None,
    ),
    Case("p2p.rpc", _rpc_decode, RpcDecodeError, _RPC_FRAMES),
    Case("p2p.rpc.reply_view", _reply_view_agrees, None, _RPC_FRAMES),
    Case("p2p.framing", _frames_agree, FrameError, _FRAMES, body_at=None),
    Case("crdt.change", _change_decode, ChangeRejected, tuple(c.encoded for c in CHANGES)),
    Case("crdt.checkpoint", _checkpoint_decode, None, _CHECKPOINTS, body_at=_CKPT_PREFIX),
    Case("crdt.reconcile", _recon_decode, ReconcileError, RECON_FRAMES),
    Case("crdt.sync", _sync_decode, SyncProtocolError, SYNC_FRAMES),
    Case("crdt.sync.receive", _sync_receive, None, SYNC_FRAMES),
)
BY_NAME = {case.name: case for case in CASES}
ALL_SAMPLES = tuple(s for case in CASES for s in case.samples)


def check(case: Case, data: bytes) -> object:
    """Decode ``data``: anything but the declared error (or a long error text) fails."""
    if case.error is None:
        return case.decode(data)
    try:
        return case.decode(data)
    except case.error as exc:
        assert type(exc) is case.error, f"{type(exc).__name__}, not {case.error.__name__}"
        text = str(exc)
        assert len(text) <= MAX_ERROR_CHARS, f"{len(text)}-char error: {text[:MAX_ERROR_CHARS]}"
        return exc


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_sample_is_accepted(case: Case) -> None:
    for sample in case.samples:
        result = case.decode(sample)
        if case.error is not None:  # the others reject by returning None
            assert result is not None, sample


# -- the mutation engine -------------------------------------------------------------------


class Draw(Protocol):
    def int(self, lo: int, hi: int) -> int: ...


class HypothesisDraw:
    """Draws from hypothesis, so that failures shrink."""

    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def int(self, lo: int, hi: int) -> int:
        return self._data.draw(st.integers(lo, hi))


class RandomDraw:
    """Draws from ``random`` (the standalone hunt)."""

    def __init__(self, rnd: random.Random) -> None:
        self._rnd = rnd

    def int(self, lo: int, hi: int) -> int:
        return self._rnd.randint(lo, hi)


def pick(d: Draw, seq: Sequence[Any]) -> Any:
    return seq[d.int(0, len(seq) - 1)]


def blob(d: Draw, size: int) -> bytes:
    return bytes(d.int(0, 255) for _ in range(size))


MARKERS = (
    bytes([0x00, 0x01, 0x7F, 0x80, 0x81, 0x8F, 0x90, 0x91, 0x9F, 0xA0, 0xA1, 0xBF, 0xC0, 0xC1])
    + bytes(range(0xC2, 0xE1))
    + b"\xff"
)
"""Bytes that are msgpack type tags or length boundaries."""


def _position(d: Draw, n: int) -> int:
    """A position in ``[0, n)``, biased to the header and the end where decoders look."""
    mode = d.int(0, 2)
    if mode == 0:
        return d.int(0, min(n, 48) - 1)
    if mode == 1:
        return d.int(max(0, n - 16), n - 1)
    return d.int(0, n - 1)


def mutate_bytes(d: Draw, data: bytes, pool: Sequence[bytes]) -> bytes:
    """One to three byte-level corruptions of ``data``."""
    b = bytearray(data)
    for _ in range(d.int(1, 3)):
        n = len(b)
        op = d.int(0, 7)
        if op == 0 and n:  # flip one bit
            b[_position(d, n)] ^= 1 << d.int(0, 7)
        elif op == 1 and n:  # overwrite a byte, often with a type tag
            b[_position(d, n)] = pick(d, MARKERS) if d.int(0, 1) else d.int(0, 255)
        elif op == 2:  # truncate
            del b[_position(d, n + 1) if n else 0 :]
        elif op == 3:  # insert bytes
            at = _position(d, n + 1) if n else 0
            b[at:at] = bytes([pick(d, MARKERS)]) if d.int(0, 1) else blob(d, d.int(1, 8))
        elif op == 4 and n:  # delete a range
            at = _position(d, n)
            del b[at : at + d.int(1, 8)]
        elif op == 5 and n:  # duplicate a range
            at = _position(d, n)
            b[at:at] = b[at : at + d.int(1, 16)]
        elif op == 6:  # splice with another frame (of any decoder)
            other = pick(d, pool)
            b = b[: _position(d, n + 1) if n else 0] + other[d.int(0, len(other)) :]
        else:  # append a tag or garbage
            b += bytes([pick(d, MARKERS)]) if d.int(0, 1) else blob(d, d.int(1, 8))
    return bytes(b)


# Wrappers for what msgpack.packb cannot produce from plain Python values.


@dataclass(frozen=True)
class DupMap:
    """A map with repeated keys (msgpack keeps the last)."""

    pairs: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Deep:
    """``depth`` nested one-element arrays (or maps) around ``leaf``."""

    depth: int
    leaf: Any
    maps: bool = False


@dataclass(frozen=True)
class Raw:
    """Bytes spliced in as they are (headers that lie about lengths, reserved tags)."""

    data: bytes


@dataclass(frozen=True)
class F32:
    value: float


@dataclass(frozen=True)
class WideInt:
    """An int in a non-minimal (64-bit) form: valid msgpack, not canonical."""

    value: int


def _header(n: int, fix: int, tag16: int) -> bytes:
    if n < 16:
        return bytes([fix | n])
    if n < 0x10000:
        return bytes([tag16]) + n.to_bytes(2, "big")
    return bytes([tag16 + 1]) + n.to_bytes(4, "big")


def pack(obj: Any, bin_type: bool = True) -> bytes:
    """msgpack bytes of ``obj`` (with the wrappers above), iteratively for deep trees."""
    out: list[bytes] = []
    stack: list[Any] = [obj]
    while stack:
        x = stack.pop()
        if type(x) is dict or isinstance(x, DupMap):
            pairs = list(x.pairs) if isinstance(x, DupMap) else list(x.items())
            out.append(_header(len(pairs), 0x80, 0xDE))
            stack.extend(reversed([item for pair in pairs for item in pair]))
        elif type(x) is list or type(x) is tuple:
            out.append(_header(len(x), 0x90, 0xDC))
            stack.extend(reversed(x))
        elif type(x) is Deep:
            out.append((b"\x81\xa1k" if x.maps else b"\x91") * x.depth)
            stack.append(x.leaf)
        elif type(x) is Raw:
            out.append(x.data)
        elif type(x) is F32:
            value = x.value if abs(x.value) < 3e38 else x.value * float("inf")
            out.append(b"\xca" + struct.pack(">f", value))
        elif type(x) is WideInt and -(2**63) <= x.value <= 2**64 - 1:
            out.append(
                (b"\xcf" + x.value.to_bytes(8, "big"))
                if x.value >= 0
                else (b"\xd3" + x.value.to_bytes(8, "big", signed=True))
            )
        elif type(x) is int and not -(2**63) <= x <= 2**64 - 1:  # msgpack's range
            out.append(msgpack.packb(2**64 - 1 if x > 0 else -(2**63)))
        else:
            out.append(msgpack.packb(x, use_bin_type=bin_type))
    return b"".join(out)


INTS = (
    0,
    1,
    -1,
    31,
    32,
    127,
    128,
    255,
    256,
    65535,
    65536,
    2**31,
    2**32 - 1,
    2**32,
    2**48 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -32,
    -33,
    -(2**31),
    -(2**63),
)
FLOATS = (0.0, -0.0, 1.5, float("nan"), float("inf"), float("-inf"), 1e308, 5e-324)
TEXTS = ("", "t", "v", "x", "d", "id", "body", "\x00", "é🙂", "a/b", "192.0.2.1", "::1")
LONG = 5000
"""Length of the long strings and bytes that probe error-message truncation."""
RAW = (
    b"\xc1",  # never used
    b"\xd4\x00",  # fixext 1, truncated
    b"\xc7\x00\x00",  # ext 8 of length 0
    b"\xdd\xff\xff\xff\xff",  # array of 2**32-1 items, none present
    b"\xdf\xff\xff\xff\xff",  # map of 2**32-1 pairs
    b"\xc6\xff\xff\xff\xff",  # bin of 4 GiB
    b"\xdb\xff\xff\xff\xff",  # str of 4 GiB
    b"\xa2\xc3\x28",  # invalid UTF-8
    b"\xa3\xed\xa0\x80",  # a UTF-8-encoded surrogate
    b"\xd6\xff\x00\x00\x00\x00",  # timestamp 32
)


def nasty(d: Draw, depth: int = 0) -> Any:
    """A value a hostile peer might put anywhere."""
    kind = d.int(0, 21 if depth < 2 else 15)
    if kind == 0:
        return None
    if kind == 1:
        return bool(d.int(0, 1))
    if kind == 2:
        return pick(d, INTS)
    if kind == 3:
        return d.int(-(2**63), 2**64 - 1)
    if kind == 4:
        return pick(d, FLOATS)
    if kind == 5:
        return F32(pick(d, FLOATS))
    if kind == 6:
        return pick(d, TEXTS)
    if kind == 7:
        return "s" * d.int(0, 40) if d.int(0, 1) else "S" * LONG
    if kind == 8:
        return blob(d, d.int(0, 40))
    if kind == 9:
        return bytes([d.int(0, 255)]) * pick(d, (16, 32, 33, 64, LONG))
    if kind == 10:
        return msgpack.ExtType(d.int(0, 127), blob(d, d.int(0, 4)))
    if kind == 11:
        return Raw(pick(d, RAW))
    if kind == 12:
        return WideInt(pick(d, INTS))
    if kind == 13:
        return Deep(pick(d, (8, 17, 100, 520, 990, 1010, 1100)), nasty(d, 2), bool(d.int(0, 1)))
    if kind == 14:
        return [] if d.int(0, 1) else {}
    if kind == 15:
        return {pick(d, TEXTS): 1, pick(d, TEXTS).encode(): 2}  # str and bytes keys
    if kind == 16:
        return [nasty(d, depth + 1) for _ in range(d.int(1, 4))]
    if kind == 17:
        return {nasty_key(d): nasty(d, depth + 1) for _ in range(d.int(1, 4))}
    if kind == 18:
        return DupMap(tuple((pick(d, TEXTS), nasty(d, depth + 1)) for _ in range(2)))
    if kind == 19:
        return [nasty(d, depth + 1)] * pick(d, (2, 3, 5, 8, 9, 17, 33, 65, 300))
    if kind == 20:
        return {pick(d, INTS): 1} if d.int(0, 1) else {pick(d, FLOATS): 1}
    return {"S" * LONG: nasty(d, depth + 1), b"B" * LONG: 1}


def nasty_key(d: Draw) -> Any:
    kind = d.int(0, 5)
    if kind == 0:
        return pick(d, TEXTS)
    if kind == 1:
        return pick(d, TEXTS).encode()
    if kind == 2:
        return "K" * pick(d, (17, 64, LONG))
    if kind == 3:
        return b"K" * pick(d, (17, 64, LONG))
    if kind == 4:
        return pick(d, INTS)
    return blob(d, d.int(0, 8))


def _nodes(obj: Any, limit: int = 400) -> list[tuple[Any, Any]]:
    """(container, key) of up to ``limit`` nodes under ``obj``; (None, None) is the root."""
    out: list[tuple[Any, Any]] = [(None, None)]
    stack = [obj]
    while stack and len(out) < limit:
        x = stack.pop()
        if type(x) is dict:
            for k, v in x.items():
                out.append((x, k))
                stack.append(v)
        elif type(x) is list:
            for i, v in enumerate(x):
                out.append((x, i))
                stack.append(v)
    return out


def _retype(d: Draw, v: Any) -> Any:
    """A value of another type, or the same value nudged."""
    t = type(v)
    if t is int and d.int(0, 1):
        return pick(d, (v + 1, v - 1, -v, v * 2**32, WideInt(v) if -(2**63) <= v < 2**64 else 0))
    if t is str and d.int(0, 1):
        return pick(d, (v.encode(), v * 2, v[:-1], v + "\x00", v * (LONG // max(1, len(v)))))
    if t is bytes and d.int(0, 1):
        return pick(d, (v.decode("latin-1"), v[:-1], v + b"\x00", v * 2, v[::-1]))
    if t is dict and d.int(0, 1):
        return [list(p) for p in v.items()] if d.int(0, 1) else list(v.values())
    if t is list and d.int(0, 1):
        return {str(i): x for i, x in enumerate(v)} if d.int(0, 1) else [v]
    return nasty(d)


def _twin(key: Any) -> Any:
    """The same key as the other string type: ``"k"`` <-> ``b"k"``."""
    if type(key) is str:
        return key.encode()
    if type(key) is bytes:
        return key.decode("latin-1")
    return str(key)


def _mutate_node(d: Draw, v: Any) -> Any:
    """``v`` after one structural change."""
    op = d.int(0, 6)
    if op == 0:
        return nasty(d)
    if op == 1:
        return _retype(d, v)
    if op == 2:  # wrap it
        return pick(d, ([v], {"k": v}, Deep(d.int(2, 40), v), [v, v]))
    if type(v) is dict:
        keys = list(v)
        if op == 3 or not keys:  # add a key: often the bytes twin of a str key
            key = nasty_key(d)
            if keys and d.int(0, 1):
                k = pick(d, keys)
                key = _twin(k)
            return {**v, key: nasty(d)}
        k = pick(d, keys)
        if op == 4:  # remove a key
            return {x: y for x, y in v.items() if x != k}
        if op == 5:  # rekey: str <-> bytes
            return {(_twin(k) if x == k else x): y for x, y in v.items()}
        return DupMap((*v.items(), (k, nasty(d))))  # the key twice
    if type(v) is list:
        if op == 3:
            return [*v, nasty(d)]
        if op == 4 and v:
            at = d.int(0, len(v) - 1)
            return v[:at] + v[at + 1 :]
        if op == 5:
            return v[::-1] if d.int(0, 1) else v * 2
        return v[: d.int(0, len(v))]
    return _retype(d, v)


def mutate_tree(d: Draw, data: bytes, body_at: int) -> bytes:
    """Decode ``data[body_at:]`` with msgpack, change one to three nodes, re-encode."""
    try:
        obj = msgpack.unpackb(data[body_at:], raw=False, strict_map_key=False)
    except Exception:  # a mutated frame: fall back to its bytes
        return mutate_bytes(d, data, ALL_SAMPLES)
    for _ in range(d.int(1, 3)):
        nodes = _nodes(obj)
        parent, key = pick(d, nodes)
        if parent is None:
            obj = _mutate_node(d, obj)
        else:
            parent[key] = _mutate_node(d, parent[key])
            if type(parent[key]) is not dict and type(parent[key]) is not list:
                continue
    return data[:body_at] + pack(obj, bin_type=d.int(0, 15) != 0)


def mutated(d: Draw, case: Case) -> bytes:
    """A mutant of one of ``case``'s samples (byte-level or structural)."""
    sample = pick(d, case.samples)
    if case.body_at is None or d.int(0, 1):
        return mutate_bytes(d, sample, ALL_SAMPLES if d.int(0, 3) == 0 else case.samples)
    return mutate_tree(d, sample, case.body_at)


# -- the properties ------------------------------------------------------------------------

case_params = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


@case_params
@FUZZ
@given(data=st.binary(max_size=200), prefixed=st.booleans())
def test_arbitrary_bytes(case: Case, data: bytes, prefixed: bool) -> None:
    if prefixed and case.body_at:  # keep a fixed prefix so the body is what varies
        data = case.samples[0][: case.body_at] + data
    check(case, data)


@case_params
@FUZZ
@given(data=st.data())
def test_byte_mutations(case: Case, data: st.DataObject) -> None:
    d = HypothesisDraw(data)
    frame = pick(d, case.samples)
    check(case, mutate_bytes(d, frame, ALL_SAMPLES if d.int(0, 3) == 0 else case.samples))


@case_params
@FUZZ
@given(data=st.data())
def test_structural_mutations(case: Case, data: st.DataObject) -> None:
    d = HypothesisDraw(data)
    frame = pick(d, case.samples)
    if case.body_at is None:
        check(case, mutate_bytes(d, frame, ALL_SAMPLES))
    else:
        check(case, mutate_tree(d, frame, case.body_at))


# -- regressions: each leak found, pinned ---------------------------------------------------


DEEP = Deep(1015, None)
"""An array 1015 levels deep: msgpack decodes it (its limit is 1024 levels), but its
``repr`` raises RecursionError, and so did every error text that rendered it."""
DEEP_MAP = Deep(1015, None, maps=True)
"""The same with maps (content messages refuse every array)."""
_SIG = bytes(64)


def _envelope(t: int, fields: dict[Any, Any]) -> bytes:
    return pack({"t": t, "v": 1, **fields})


def _change(*ops: Any) -> bytes:
    return pack([1, "app/doc", [], _AUTHOR.public_key, 1 << 20, list(ops), _SIG])


def _session(recon: Any) -> bytes:
    return pack([1, 7, True, [], recon])


REGRESSIONS: dict[str, tuple[str, bytes]] = {
    # The reported bug: sorted() of a str and a bytes unexpected key raised TypeError.
    "codec-str-and-bytes-extra-keys": (
        "dagrider.codec",
        _envelope(2, {"r": 1, "s": 0, "d": bytes(32), "zz": 1, b"k": 1}),
    ),
    "codec-small-str-and-bytes-extra-keys": (
        "dagrider.codec-small-limits",
        pack({"t": 7, "v": 1, "r": 1, "n": 1, b"t": 1, "x": 2}),
    ),
    # repr() of a ~1000-deep value raised RecursionError out of the error text.
    "codec-deep-version": ("dagrider.codec", pack({"t": 2, "v": DEEP})),
    "rpc-deep-version": ("p2p.rpc", pack({"t": 2, "v": DEEP, "id": 1, "body": b""})),
    "nat-deep-version": ("p2p.nat", pack({"t": 4, "v": DEEP, "nonce": 1})),
    "nat-deep-port": ("p2p.nat", _envelope(1, {"observed": ["192.0.2.1", DEEP], "listen": []})),
    "content-deep-version": ("p2p.content", pack({"t": 6, "v": DEEP_MAP, "have": True})),
    "content-chunk-deep-version": ("p2p.content.decode_chunk", pack({"t": 4, "v": DEEP_MAP})),
    "content-as-deep-version": ("p2p.content.decode_as", pack({"t": 2, "v": DEEP_MAP})),
    "dht-deep-type": ("p2p.dht", pack({"t": DEEP, "v": 1})),
    "dht-deep-version": ("p2p.dht.request", pack({"t": 1, "v": DEEP})),
    "dht-deep-port": (
        "p2p.dht.response",
        _envelope(17, {"closer": [[_KEY, [["192.0.2.1", DEEP]]]]}),
    ),
    "reconcile-deep-range": ("crdt.reconcile", pack([DEEP])),
    "reconcile-deep-payload": ("crdt.reconcile", pack([[None, 0, DEEP]])),
    "reconcile-deep-upper": ("crdt.reconcile", pack([[DEEP, 0, None]])),
    "sync-receive-deep-range": ("crdt.sync.receive", _session([[None, DEEP, None]])),
    # Megabyte strings and keys made megabyte error texts (log lines).
    "codec-long-version": ("dagrider.codec", pack({"t": 2, "v": b"V" * 60_000})),
    "codec-long-extra-key": (
        "dagrider.codec",
        _envelope(2, {"r": 1, "s": 0, "d": bytes(32), b"K" * 60_000: 1}),
    ),
    "nat-long-port": (
        "p2p.nat",
        _envelope(1, {"observed": ["192.0.2.1", b"P" * 60_000], "listen": []}),
    ),
    "content-long-extra-key": (
        "p2p.content",
        _envelope(6, {"have": True, b"K" * 1_000_000: 1}),
    ),
    "content-long-version": ("p2p.content", pack({"t": 6, "v": b"V" * 1_000_000})),
    "rpc-long-extra-key": (
        "p2p.rpc",
        _envelope(4, {"id": 1, b"K" * 60_000: 1}),
    ),
    "dht-long-port": (
        "p2p.dht",
        _envelope(17, {"closer": [[_KEY, [["192.0.2.1", b"P" * 16_000]]]]}),
    ),
    "change-long-op-key": (
        "crdt.change",
        _change({"up": "k", "type": "lww", "op": {"K" * 500_000: 1}}),
    ),
    "change-many-op-keys": (
        "crdt.change",
        _change({f"key-{i:06}" * 8: i for i in range(5000)}),
    ),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regression(name: str) -> None:
    case_name, frame = REGRESSIONS[name]
    case = BY_NAME[case_name]
    result = check(case, frame)
    if case.error is not None:
        assert isinstance(result, case.error), f"{name}: accepted as {result!r:.200}"


HUGE_VALUES: tuple[Any, ...] = (
    "S" * 1_000_000,
    b"B" * 1_000_000,
    ["L" * 1000] * 1000,
    {f"k{i}" * 100: i for i in range(1000)},
)
"""Megabyte values, placed in every field of every sample by the test below."""


def _with_huge(body: Any, huge: Any) -> list[bytes]:
    """The frame with each top-level field (map value, map key or array item) replaced
    by ``huge``, one at a time."""
    out: list[bytes] = []
    if isinstance(body, dict):
        for key in body:
            out.append(pack({**body, key: huge}))
            rest = {k: v for k, v in body.items() if k != key}
            if isinstance(huge, str | bytes):
                out.append(pack({**rest, huge: body[key]}))
    elif isinstance(body, list):
        out += [pack([*body[:i], huge, *body[i + 1 :]]) for i in range(len(body))]
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.body_at is not None], ids=repr)
def test_megabyte_values_make_short_errors(case: Case) -> None:
    """A frame full of peer-chosen megabytes never makes a long error text: every
    decoder quotes at most ~100 characters of a value (``check`` asserts the bound)."""
    assert case.body_at is not None
    for sample in case.samples:
        prefix, body = sample[: case.body_at], msgpack.unpackb(sample[case.body_at :])
        for huge in HUGE_VALUES:
            for frame in _with_huge(body, huge):
                check(case, prefix + frame)


VIEW_DECODERS: dict[str, tuple[Callable[[Any], object], type[Exception]]] = {
    "dagrider.codec": (CODEC.decode, DecodeError),
    "p2p.nat": (nat.decode, nat.NatDecodeError),
    "p2p.dht": (dht.decode, dht.DhtDecodeError),
    "p2p.content": (content_decode, ContentDecodeError),
    "p2p.content.decode_chunk": (decode_chunk, ContentDecodeError),
    "p2p.rpc": (lambda data: rpc_decode(data, MAX_BODY), RpcDecodeError),
}


@pytest.mark.parametrize("name", sorted(VIEW_DECODERS))
def test_views_of_wider_items_are_decode_errors(name: str) -> None:
    """Decoders that take memoryviews refuse one of 4-byte items (msgpack raised
    BufferError, and the chunk fast path measured it in items)."""
    decode, error = VIEW_DECODERS[name]
    for sample in BY_NAME[name].samples:
        padded = sample + bytes(-len(sample) % 4)
        with pytest.raises(error):
            decode(memoryview(padded).cast("I"))


def test_rpc_decoders_on_views_and_non_bytes() -> None:
    frame = rpc_encode(Reply(5, b"body"))
    # one zero-copy path (p2p.strictwire.BinTail) for bytes and flat views alike
    fast = decode_reply_view(memoryview(frame), MAX_BODY)
    assert fast is not None and fast[0] == 5 and bytes(fast[1]) == b"body"
    assert decode_reply_view(memoryview(frame + bytes(-len(frame) % 4)).cast("I"), MAX_BODY) is None
    assert rpc_decode(memoryview(frame), MAX_BODY) == Reply(5, b"body")
    with pytest.raises(RpcDecodeError):
        rpc_decode(None, MAX_BODY)  # type: ignore[arg-type]  # was TypeError


def test_the_reported_frame_is_a_decode_error_naming_both_keys() -> None:
    frame = pack({"t": 2, "v": VERSION, "r": 1, "s": 0, "d": b"\x00" * 32, "zz": 1, b"k": 1})
    with pytest.raises(DecodeError) as info:
        CODEC.decode(frame)
    assert info.value.field == "fields"
    assert "'zz'" in info.value.reason and "b'k'" in info.value.reason


# -- standalone hunt -----------------------------------------------------------------------


def hunt(iterations: int, seed: int = 0) -> dict[tuple[str, str], bytes]:
    """Random mutations of every case's samples; the first frame of each distinct leak."""
    rnd = random.Random(seed)
    d = RandomDraw(rnd)
    found: dict[tuple[str, str], bytes] = {}
    for i in range(iterations):
        case = CASES[i % len(CASES)]
        frame = mutated(d, case) if rnd.random() < 0.9 else rnd.randbytes(rnd.randint(0, 64))
        try:
            check(case, frame)
        except Exception as exc:  # a leak: keep the shortest frame per (case, type, text)
            key = (case.name, f"{type(exc).__name__}: {str(exc)[:80]}")
            if key not in found or len(frame) < len(found[key]):
                found[key] = frame
    return found


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    leaks = hunt(count, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    for (case_name, what), frame in sorted(leaks.items()):
        print(f"{case_name}: {what}\n    {frame[:300]!r}")
    print(f"{len(leaks)} distinct leak(s) in {count} frames")
