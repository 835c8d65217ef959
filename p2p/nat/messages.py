"""Wire types of NAT traversal and their strict msgpack codec.

Every control message of the NAT layer (observed addresses, reachability probes, relay
reservations and circuits, hole-punch signalling) is one frozen dataclass here, and all
of them travel on one application channel, frame kind ``NAT_CHANNEL_KIND``. The
envelope is the project's usual ``{t: type, v: version, ...fields}``; the decoder takes
exactly the fields of the type, checks every type and bound, and raises
``NatDecodeError`` naming the field for anything else (unknown type, missing or extra
field, wrong type, oversize, trailing bytes). It never raises anything else, whatever
the bytes, and quotes peer data in an error only through ``p2p.strictwire.describe``
(at most 100 characters). The envelope, limits and checks are ``p2p.strictwire``'s.

Durations cross the wire as integer milliseconds (peers' clocks differ, so only
relative times are sent); the state machines work in float seconds.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import ClassVar, Final

from p2p.errors import WireDecodeError
from p2p.strictwire import (
    Check,
    Invalid,
    Limits,
    MapEnvelope,
    binary,
    dataclass_kind,
    describe,
    integer,
    optional,
)

Addr = tuple[str, int]
"""A transport address: (IP literal, TCP port)."""

NAT_CHANNEL_KIND: Final = 4
"""Frame kind of the NAT channel: ``p2p.framing.FrameKind.NAT``, an application channel
that ``p2p.nat_service`` registers on the transport."""

VERSION: Final = 1
KEY_BYTES: Final = 32
MAX_ADDRS: Final = 8
"""Addresses per message: enough for a few interfaces and mappings, too few to abuse."""
MAX_HOST_CHARS: Final = 45  # the longest textual IPv6 address
MAX_CIRCUIT_CHUNK: Final = 64 * 1024
"""Largest opaque payload of one ``CircuitData`` (the shell splits TLS records to fit)."""
MAX_MESSAGE_BYTES: Final = MAX_CIRCUIT_CHUNK + 256
U32: Final = 2**32 - 1
U64: Final = 2**64 - 1


class NatDecodeError(WireDecodeError):
    """Bytes from a peer are not a valid NAT message; ``field`` names what was wrong."""


class Status(IntEnum):
    """Outcome and refusal codes shared by reachability and relay answers.

    A refusal always carries the most specific code, so the requester can tell "try
    another relay" (slots full) from "renew" (no reservation) from "back off" (rate).
    """

    OK = 0
    # reachability (AutoNAT-style) server answers
    DIAL_FAILED = 10
    """The dial-back did not complete: the address is not reachable from outside."""
    DIAL_REFUSED = 11
    """No candidate address has the requester's observed IP: we never dial third parties."""
    RATE_LIMITED = 12
    BAD_REQUEST = 13
    # relay answers and circuit close reasons
    RELAY_DISABLED = 20
    """This node offers no relay service (it is not publicly reachable, or it is off)."""
    RESERVATION_SLOTS_FULL = 21
    CIRCUIT_SLOTS_FULL = 22
    PEER_CIRCUIT_LIMIT = 23
    NO_RESERVATION = 24
    """The destination holds no (unexpired) reservation on this relay."""
    CONNECT_TO_SELF = 25
    TARGET_REFUSED = 26
    TARGET_TIMEOUT = 27
    DURATION_LIMIT = 28
    BYTES_LIMIT = 29
    CLOSED = 30
    """Normal close by one end (or the end's link to the relay went away)."""


# -- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identify:
    """Sent on every new link: the address we see the peer at, and our listen addresses."""

    T: ClassVar[int] = 1
    observed: Addr
    listen: tuple[Addr, ...] = ()


@dataclass(frozen=True)
class DialRequest:
    """Ask the receiver to dial back one of ``addrs`` (in preference order) from a fresh port."""

    T: ClassVar[int] = 2
    nonce: int
    addrs: tuple[Addr, ...]


@dataclass(frozen=True)
class DialResponse:
    """Answer to ``DialRequest``: the address tried (if any) and how it went."""

    T: ClassVar[int] = 3
    nonce: int
    status: Status
    addr: Addr | None = None


@dataclass(frozen=True)
class DialBack:
    """First message on a dial-back connection: proves which request it answers."""

    T: ClassVar[int] = 4
    nonce: int


@dataclass(frozen=True)
class ReserveRequest:
    """Ask a relay for (or renew) a reservation so that others can reach us through it."""

    T: ClassVar[int] = 5


@dataclass(frozen=True)
class ReserveResponse:
    """A reservation granted (``ttl_ms`` from now, with per-circuit limits) or refused."""

    T: ClassVar[int] = 6
    status: Status
    ttl_ms: int = 0
    circuit_ms: int = 0
    circuit_bytes: int = 0
    relay_addr: Addr | None = None


@dataclass(frozen=True)
class ConnectRequest:
    """Ask a relay to open a circuit to ``dst`` (which must hold a reservation there)."""

    T: ClassVar[int] = 7
    dst: bytes


@dataclass(frozen=True)
class ConnectResponse:
    """Relay to initiator: circuit ``circuit`` to ``dst`` is open (or refused)."""

    T: ClassVar[int] = 8
    status: Status
    dst: bytes
    circuit: int = 0
    circuit_ms: int = 0
    circuit_bytes: int = 0


@dataclass(frozen=True)
class StopConnect:
    """Relay to the reserved peer: ``src`` wants a circuit to you."""

    T: ClassVar[int] = 9
    src: bytes
    circuit: int
    circuit_ms: int
    circuit_bytes: int


@dataclass(frozen=True)
class StopResponse:
    """Reserved peer to relay: accept or refuse circuit ``circuit``."""

    T: ClassVar[int] = 10
    circuit: int
    status: Status


@dataclass(frozen=True)
class CircuitData:
    """Opaque bytes of a circuit (the two ends' own TLS records); the relay only counts them."""

    T: ClassVar[int] = 11
    circuit: int
    data: bytes


@dataclass(frozen=True)
class CircuitClose:
    """Either direction: circuit ``circuit`` is gone, and why."""

    T: ClassVar[int] = 12
    circuit: int
    status: Status


@dataclass(frozen=True)
class PunchConnect:
    """Hole punch: my candidate public addresses for attempt ``attempt`` (also the RTT probe)."""

    T: ClassVar[int] = 13
    attempt: int
    addrs: tuple[Addr, ...]


@dataclass(frozen=True)
class PunchSync:
    """Hole punch: dial now (the initiator dials RTT/2 after sending this)."""

    T: ClassVar[int] = 14
    attempt: int


NatMessage = (
    Identify
    | DialRequest
    | DialResponse
    | DialBack
    | ReserveRequest
    | ReserveResponse
    | ConnectRequest
    | ConnectResponse
    | StopConnect
    | StopResponse
    | CircuitData
    | CircuitClose
    | PunchConnect
    | PunchSync
)

# -- field checks ------------------------------------------------------------------------


def _addr(value: object, name: str) -> Addr:
    if type(value) is not list and type(value) is not tuple:
        raise Invalid(name, "expected [host, port]")
    if len(value) != 2:
        raise Invalid(name, f"expected [host, port], got {len(value)} items")
    host, port = value
    if type(host) is not str or not 0 < len(host) <= MAX_HOST_CHARS:
        raise Invalid(name, f"host must be a short string, got {describe(host)}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(name, f"host {describe(host)} is not an IP literal") from None
    if type(port) is not int or not 1 <= port <= 65535:
        raise Invalid(name, f"port {describe(port)} not in 1..65535")
    return (host, port)


def _addrs(value: object, name: str) -> tuple[Addr, ...]:
    if type(value) is not list and type(value) is not tuple:
        raise Invalid(name, "expected a list of addresses")
    if len(value) > MAX_ADDRS:
        raise Invalid(name, f"{len(value)} addresses exceeds {MAX_ADDRS}")
    return tuple(_addr(a, f"{name}[{i}]") for i, a in enumerate(value))


_byte = integer(0, 255)


def _status(value: object, name: str) -> Status:
    code = _byte(value, name)
    try:
        return Status(code)
    except ValueError:
        raise Invalid(name, f"unknown status {code}") from None


_u64 = integer(0, U64)
_u32 = integer(0, U32)
_key = binary(KEY_BYTES)
_CHECKS: Final[dict[str, Check]] = {
    "nonce": _u64,
    "attempt": _u32,
    "circuit": _u64,
    "ttl_ms": _u32,
    "circuit_ms": _u32,
    "circuit_bytes": _u64,
    "status": _status,
    "observed": _addr,
    "addr": optional(_addr),
    "relay_addr": optional(_addr),
    "listen": _addrs,
    "addrs": _addrs,
    "dst": _key,
    "src": _key,
    "data": binary(top=MAX_CIRCUIT_CHUNK),
}
_ENVELOPE: Final = MapEnvelope[NatMessage](
    NatDecodeError,
    VERSION,
    (
        dataclass_kind(cls, _CHECKS)
        for cls in (
            Identify,
            DialRequest,
            DialResponse,
            DialBack,
            ReserveRequest,
            ReserveResponse,
            ConnectRequest,
            ConnectResponse,
            StopConnect,
            StopResponse,
            CircuitData,
            CircuitClose,
            PunchConnect,
            PunchSync,
        )
    ),
    Limits(
        max_frame=MAX_MESSAGE_BYTES,
        max_bin=MAX_CIRCUIT_CHUNK + 1,
        max_str=MAX_HOST_CHARS + 1,
        max_array=MAX_ADDRS + 1,
        max_map=16,
        max_depth=3,
    ),
)


def _wire(value: object) -> object:
    if isinstance(value, IntEnum):
        return int(value)
    if isinstance(value, tuple):
        return [_wire(v) for v in value]
    return value


def encode(msg: NatMessage) -> bytes:
    """The wire bytes of ``msg``; ``ValueError`` if a field is out of bounds (a caller bug)."""
    return _ENVELOPE.encode(msg.T, [_wire(getattr(msg, f.name)) for f in fields(msg)])


def decode(data: bytes) -> NatMessage:
    """Parse one message, or raise ``NatDecodeError`` naming the offending field."""
    return _ENVELOPE.decode(data)
