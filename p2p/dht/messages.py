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
for anything else; it never raises anything else, whatever the bytes, and renders peer
data in an error only as a short, cut ``short(...)``. The decoder checks *shape* only:
signatures, expiry and record keys are judged by ``p2p.dht.records``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import msgpack

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
from p2p.errors import WireDecodeError, short, short_keys

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

# -- field codecs: wire value -> typed value, or DhtDecodeError ---------------------------


def _uint(value: object, name: str) -> int:
    if type(value) is not int:
        raise DhtDecodeError(name, f"expected an integer, got {type(value).__name__}")
    if not 0 <= value <= U64:
        raise DhtDecodeError(name, f"{value} out of range 0..2**64-1")
    return value


def _bin(value: object, name: str, size: int | None = None, top: int | None = None) -> bytes:
    if type(value) is not bytes:
        raise DhtDecodeError(name, f"expected bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise DhtDecodeError(name, f"expected {size} bytes, got {len(value)}")
    if top is not None and len(value) > top:
        raise DhtDecodeError(name, f"{len(value)} bytes exceeds {top}")
    return value


def _key(value: object, name: str) -> bytes:
    return _bin(value, name, KEY_BYTES)


def _array(value: object, name: str, top: int, length: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise DhtDecodeError(name, f"expected an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise DhtDecodeError(name, f"expected {length} items, got {len(value)}")
    if len(value) > top:
        raise DhtDecodeError(name, f"{len(value)} items exceeds {top}")
    return value


def _addr(value: object, name: str) -> Addr:
    host, port = _array(value, name, 2, 2)
    if type(host) is not str or not 0 < len(host) <= MAX_HOST_CHARS:
        raise DhtDecodeError(name, "host must be a short string")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise DhtDecodeError(name, f"host {host!r} is not an IP literal") from None
    if type(port) is not int or not 1 <= port <= 65535:
        raise DhtDecodeError(name, f"port {short(port)} not in 1..65535")
    return (host, port)


def _peer(value: object, name: str) -> PeerInfo:
    key, addrs = _array(value, name, 2, 2)
    raw = _array(addrs, f"{name}.addrs", MAX_ADDRS)
    return PeerInfo(
        _key(key, f"{name}.key"),
        tuple(_addr(a, f"{name}.addrs[{i}]") for i, a in enumerate(raw)),
    )


def _opt_peer(value: object, name: str) -> PeerInfo | None:
    return None if value is None else _peer(value, name)


def _peers(value: object, name: str) -> tuple[PeerInfo, ...]:
    items = _array(value, name, MAX_PEERS)
    return tuple(_peer(p, f"{name}[{i}]") for i, p in enumerate(items))


def _record(value: object, name: str) -> Record:
    author, rname, rvalue, seq, expires, sig = _array(value, name, 6, 6)
    return Record(
        _key(author, f"{name}.author"),
        _bin(rname, f"{name}.name", top=MAX_NAME),
        _bin(rvalue, f"{name}.value", top=MAX_VALUE),
        _uint(seq, f"{name}.seq"),
        _uint(expires, f"{name}.expires"),
        _bin(sig, f"{name}.signature", SIGNATURE_BYTES),
    )


def _opt_record(value: object, name: str) -> Record | None:
    return None if value is None else _record(value, name)


def _provider(value: object, name: str) -> ProviderRecord:
    key, peer, expires, sig = _array(value, name, 4, 4)
    return ProviderRecord(
        _key(key, f"{name}.key"),
        _peer(peer, f"{name}.provider"),
        _uint(expires, f"{name}.expires"),
        _bin(sig, f"{name}.signature", SIGNATURE_BYTES),
    )


def _providers(value: object, name: str) -> tuple[ProviderRecord, ...]:
    items = _array(value, name, MAX_PROVIDERS)
    return tuple(_provider(p, f"{name}[{i}]") for i, p in enumerate(items))


def _bool(value: object, name: str) -> bool:
    if type(value) is not bool:
        raise DhtDecodeError(name, f"expected a boolean, got {type(value).__name__}")
    return value


def _reason(value: object, name: str) -> str:
    if type(value) is not str or len(value) > MAX_REASON_CHARS or not value.isascii():
        raise DhtDecodeError(name, f"expected an ASCII string of at most {MAX_REASON_CHARS}")
    return value


_Check = Callable[[object, str], Any]
_SPEC: Final[dict[type[Any], tuple[tuple[str, _Check], ...]]] = {
    Ping: (("sender", _opt_peer),),
    FindNode: (("target", _key), ("sender", _opt_peer)),
    GetRecord: (("key", _key), ("sender", _opt_peer)),
    PutRecord: (("record", _record), ("sender", _opt_peer)),
    AddProvider: (("record", _provider), ("sender", _opt_peer)),
    GetProviders: (("key", _key), ("sender", _opt_peer)),
    Pong: (),
    Nodes: (("closer", _peers),),
    RecordResult: (("record", _opt_record), ("closer", _peers)),
    PutResult: (("stored", _bool), ("reason", _reason)),
    ProvidersResult: (("providers", _providers), ("closer", _peers)),
}
_TYPES: Final[dict[int, type[Any]]] = {cls.T: cls for cls in _SPEC}

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
    cls = type(msg)
    body: dict[str, object] = {"t": cls.T, "v": VERSION}
    for name, check in _SPEC[cls]:
        value = _wire(getattr(msg, name))
        try:
            check(value, name)
        except DhtDecodeError as exc:
            raise ValueError(f"{cls.__name__}.{exc}") from None
        body[name] = value
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    if len(packed) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{cls.__name__}: {len(packed)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return packed


# -- decoding ----------------------------------------------------------------------------


def decode(data: bytes) -> DhtMessage:
    """Parse one message, or raise :class:`DhtDecodeError` naming the offending field."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DhtDecodeError("frame", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise DhtDecodeError("frame", f"{len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_VALUE + 1,
            max_str_len=MAX_REASON_CHARS + 1,
            max_array_len=max(MAX_PEERS, MAX_PROVIDERS) + 1,
            max_map_len=8,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise DhtDecodeError("frame", "trailing bytes after message") from None
    except (ValueError, TypeError, BufferError, msgpack.UnpackException, RecursionError) as exc:
        raise DhtDecodeError("frame", f"not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise DhtDecodeError("frame", f"expected a map, got {type(obj).__name__}")
    t = obj.get("t")
    if type(t) is not int:
        raise DhtDecodeError("t", f"expected an integer message type, got {short(t, 80)}")
    if type(obj.get("v")) is not int or obj.get("v") != VERSION:
        raise DhtDecodeError("v", f"unsupported version {short(obj.get('v'), 80)}")
    cls = _TYPES.get(t)
    if cls is None:
        raise DhtDecodeError("t", f"unknown message type {t}")
    spec = _SPEC[cls]
    names = {name for name, _ in spec}
    keys = obj.keys() - {"t", "v"}
    if keys != names:
        extra = short_keys(keys - names)
        missing = sorted(names - keys)
        raise DhtDecodeError("fields", f"{cls.__name__}: unexpected {extra} / missing {missing}")
    msg: DhtMessage = cls(**{name: check(obj[name], name) for name, check in spec})
    return msg


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
