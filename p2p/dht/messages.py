"""Wire types of the DHT and their strict msgpack codec.

Requests (``Ping``, ``FindNode``, ``GetRecord``, ``PutRecord``, ``AddProvider``,
``GetProviders``) carry ``sender``: the requester's own ``PeerInfo`` when it serves the
DHT (server mode, publicly dialable), ``None`` in client mode (behind a NAT). Only
server-mode senders may enter the receiver's routing table, and only when ``sender.key``
is the key the link authenticated (checked by ``p2p.dht.server``, not here).

Responses: ``Pong``, ``Nodes``, ``RecordResult``, ``PutResult``, ``ProvidersResult``.

The envelope is the project's usual ``{t: type, v: version, ...fields}``. The decoder
takes exactly the fields of the type, checks every type and bound (at most
``MAX_PEERS`` peers and ``MAX_PROVIDERS`` providers per answer, ``MAX_ADDRS`` IP-literal
addresses per peer, values up to ``records.MAX_VALUE``, ``MAX_MESSAGE_BYTES`` per
message) and raises :class:`DhtDecodeError` naming the field (``closer[3].addrs[0]``)
for anything else; it never raises anything else, whatever the bytes, and quotes peer
data in an error only through ``p2p.strictwire.describe`` (at most 100 characters). The
decoder checks *shape* only: signatures, expiry and record keys are judged by
``p2p.dht.records``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final

from p2p.dht.peer import KEY_BYTES, Addr, PeerInfo
from p2p.dht.records import (
    MAX_ADDRS,
    MAX_HOST_CHARS,
    MAX_NAME,
    MAX_VALUE,
    SIGNATURE_BYTES,
    U64,
    ProviderRecord,
    Record,
)
from p2p.errors import WireDecodeError
from p2p.strictwire import (
    Check,
    Invalid,
    Limits,
    MapEnvelope,
    array,
    binary,
    boolean,
    dataclass_kind,
    describe,
    integer,
    items,
    optional,
    text,
)

DHT_CHANNEL_KIND: Final = 5
"""Frame kind of the DHT channel (``p2p.framing.FrameKind.DHT``)."""
VERSION: Final = 1
MAX_PEERS: Final = 32
"""Peers per answer: the largest ``k`` a node may be configured with."""
MAX_PROVIDERS: Final = 32
MAX_REASON_CHARS: Final = 64
MAX_MESSAGE_BYTES: Final = 48 * 1024
"""Worst case is a full record plus 32 closer peers (~31 KiB), or 32 providers plus 32
closer peers (~32 KiB): under the RPC layer's 64 KiB request limit."""


class DhtDecodeError(WireDecodeError):
    """Bytes from a peer are not a valid DHT message; ``field`` names what was wrong."""


# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    """Are you alive? (routing-table liveness checks)."""

    T: ClassVar[int] = 1
    sender: PeerInfo | None = None


@dataclass(frozen=True)
class FindNode:
    """The receiver's closest known server-mode peers to ``target`` (a 32-byte id)."""

    T: ClassVar[int] = 2
    target: bytes
    sender: PeerInfo | None = None


@dataclass(frozen=True)
class GetRecord:
    """The record stored under ``key`` (if any), and closer peers."""

    T: ClassVar[int] = 3
    key: bytes
    sender: PeerInfo | None = None


@dataclass(frozen=True)
class PutRecord:
    """Store ``record`` (under ``record.key``)."""

    T: ClassVar[int] = 4
    record: Record
    sender: PeerInfo | None = None


@dataclass(frozen=True)
class AddProvider:
    """Store the provider record (signed by the provider it names)."""

    T: ClassVar[int] = 5
    record: ProviderRecord
    sender: PeerInfo | None = None


@dataclass(frozen=True)
class GetProviders:
    """Provider records for content ``key``, and closer peers."""

    T: ClassVar[int] = 6
    key: bytes
    sender: PeerInfo | None = None


# -- responses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pong:
    """Answer to ``Ping``."""

    T: ClassVar[int] = 16


@dataclass(frozen=True)
class Nodes:
    """Answer to ``FindNode``: up to k peers closest to the target the answerer knows."""

    T: ClassVar[int] = 17
    closer: tuple[PeerInfo, ...]


@dataclass(frozen=True)
class RecordResult:
    """Answer to ``GetRecord``: the stored record or ``None``, and closer peers."""

    T: ClassVar[int] = 18
    record: Record | None
    closer: tuple[PeerInfo, ...]


@dataclass(frozen=True)
class PutResult:
    """Answer to ``PutRecord``/``AddProvider``: stored, or the refusal reason code
    (``p2p.dht.records`` reasons); ``reason`` is ``""`` when stored."""

    T: ClassVar[int] = 19
    stored: bool
    reason: str = ""


@dataclass(frozen=True)
class ProvidersResult:
    """Answer to ``GetProviders``: provider records for the key, and closer peers."""

    T: ClassVar[int] = 20
    providers: tuple[ProviderRecord, ...]
    closer: tuple[PeerInfo, ...]


Request = Ping | FindNode | GetRecord | PutRecord | AddProvider | GetProviders
Response = Pong | Nodes | RecordResult | PutResult | ProvidersResult
DhtMessage = Request | Response

REQUEST_TYPES: Final = (Ping, FindNode, GetRecord, PutRecord, AddProvider, GetProviders)
RESPONSE_TYPES: Final = (Pong, Nodes, RecordResult, PutResult, ProvidersResult)

# -- field checks: wire value -> typed value, or p2p.strictwire.Invalid ----------------------

_uint = integer(0, U64)
_key = binary(KEY_BYTES)
_name = binary(top=MAX_NAME)
_value = binary(top=MAX_VALUE)
_signature = binary(SIGNATURE_BYTES)


def _addr(value: object, name: str) -> Addr:
    host, port = array(value, name, 2, 2)
    if type(host) is not str or not 0 < len(host) <= MAX_HOST_CHARS:
        raise Invalid(name, f"host must be a short string, got {describe(host)}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(name, f"host {describe(host)} is not an IP literal") from None
    if type(port) is not int or not 1 <= port <= 65535:
        raise Invalid(name, f"port {describe(port)} not in 1..65535")
    return (host, port)


def _peer(value: object, name: str) -> PeerInfo:
    key, addrs = array(value, name, 2, 2)
    raw = array(addrs, f"{name}.addrs", MAX_ADDRS)
    return PeerInfo(
        _key(key, f"{name}.key"),
        tuple(_addr(a, f"{name}.addrs[{i}]") for i, a in enumerate(raw)),
    )


def _record(value: object, name: str) -> Record:
    author, rname, rvalue, seq, expires, sig = array(value, name, 6, 6)
    return Record(
        _key(author, f"{name}.author"),
        _name(rname, f"{name}.name"),
        _value(rvalue, f"{name}.value"),
        _uint(seq, f"{name}.seq"),
        _uint(expires, f"{name}.expires"),
        _signature(sig, f"{name}.signature"),
    )


def _provider(value: object, name: str) -> ProviderRecord:
    key, peer, expires, sig = array(value, name, 4, 4)
    return ProviderRecord(
        _key(key, f"{name}.key"),
        _peer(peer, f"{name}.provider"),
        _uint(expires, f"{name}.expires"),
        _signature(sig, f"{name}.signature"),
    )


_sender = optional(_peer)
_peers = items(_peer, MAX_PEERS)
_CHECKS: Final[dict[type[Any], dict[str, Check]]] = {
    Ping: {"sender": _sender},
    FindNode: {"target": _key, "sender": _sender},
    GetRecord: {"key": _key, "sender": _sender},
    PutRecord: {"record": _record, "sender": _sender},
    AddProvider: {"record": _provider, "sender": _sender},
    GetProviders: {"key": _key, "sender": _sender},
    Pong: {},
    Nodes: {"closer": _peers},
    RecordResult: {"record": optional(_record), "closer": _peers},
    PutResult: {"stored": boolean, "reason": text(MAX_REASON_CHARS, ascii=True)},
    ProvidersResult: {"providers": items(_provider, MAX_PROVIDERS), "closer": _peers},
}
_ENVELOPE: Final = MapEnvelope[DhtMessage](
    DhtDecodeError,
    VERSION,
    (dataclass_kind(cls, checks) for cls, checks in _CHECKS.items()),
    Limits(
        max_frame=MAX_MESSAGE_BYTES,
        max_bin=MAX_VALUE + 1,
        max_str=MAX_REASON_CHARS + 1,
        max_array=max(MAX_PEERS, MAX_PROVIDERS) + 1,
        max_map=8,
        max_depth=6,
    ),
)

# -- encoding ----------------------------------------------------------------------------


def _wire(value: object) -> object:
    if isinstance(value, PeerInfo):
        return [value.key, [[h, p] for h, p in value.addrs]]
    if isinstance(value, Record):
        return [value.author, value.name, value.value, value.seq, value.expires, value.signature]
    if isinstance(value, ProviderRecord):
        return [value.key, _wire(value.provider), value.expires, value.signature]
    if isinstance(value, tuple):
        return [_wire(v) for v in value]
    return value


def encode(msg: DhtMessage) -> bytes:
    """The wire bytes of ``msg``; ``ValueError`` if a field is out of bounds (a caller
    bug: everything we send passes our own decoder)."""
    packed = _ENVELOPE.encode(msg.T, [_wire(getattr(msg, f.name)) for f in fields(msg)])
    if len(packed) > MAX_MESSAGE_BYTES:
        name = type(msg).__name__
        raise ValueError(f"{name}: {len(packed)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return packed


# -- decoding ----------------------------------------------------------------------------


def decode(data: bytes) -> DhtMessage:
    """Parse one message, or raise :class:`DhtDecodeError` naming the offending field."""
    return _ENVELOPE.decode(data)


def decode_request(data: bytes) -> Request:
    """Like :func:`decode`, but a response type is a ``DhtDecodeError`` on ``t``."""
    msg = decode(data)
    if not isinstance(msg, REQUEST_TYPES):
        raise DhtDecodeError("t", f"{type(msg).__name__} is not a request")
    return msg


def decode_response(data: bytes) -> Response:
    """Like :func:`decode`, but a request type is a ``DhtDecodeError`` on ``t``."""
    msg = decode(data)
    if not isinstance(msg, RESPONSE_TYPES):
        raise DhtDecodeError("t", f"{type(msg).__name__} is not a response")
    return msg
