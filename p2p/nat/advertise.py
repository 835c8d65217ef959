"""Which addresses a node puts in the records it signs, and its relay record.

A DHT record (a provider record, our routing-table ``PeerInfo``) is signed once and then
handed by whoever stores it to anyone who asks, public or not, so the addresses in it
must be dialable from anywhere that might read it. A private address (RFC 1918, CGNAT,
link-local, loopback, ULA) is dialable only inside its own network: named to a public
peer it costs that peer a dial timeout and leaks the LAN's layout. The rule here:

- **reachable** addresses (a reachability server dialled us back there: our public
  listen address, or a UPnP mapping on our router) are always advertised;
- our **listen** addresses are advertised while reachability is not "private"; a
  private one only while every peer that reported our address saw a private one too (a
  loopback or LAN-only mesh, where private addresses are what peers dial); an address
  the operator set explicitly (``[dht] advertise``) is taken as said;
- once we are known to be **private**, our listen addresses are no use to anyone
  outside; we advertise the public addresses of the relays that hold a reservation for
  us instead: a TCP connection there reaches us through a circuit. Which relay key
  answers at which address is in our signed **relay record** (:data:`RELAYS_RECORD`),
  so a peer that cannot dial us directly looks that record up in the DHT instead of
  needing the relays in its configuration.

Pure: plain data in, plain data out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Final

import msgpack

from p2p.nat.messages import Addr
from p2p.strictwire import Limits, describe, unpack

RELAYS_RECORD: Final = b"nat/relays/v1"
"""Name of the signed DHT record (author = the relayed peer) listing its relays."""
MAX_RELAYS: Final = 8
"""At most this many relays in one relay record (a record has a size limit)."""
MAX_HOST_BYTES: Final = 255
MAX_ADVERTISED: Final = 8
"""At most this many addresses advertised (a provider record holds at most 8)."""

_NOT_GLOBAL: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT
        "169.254.0.0/16",
        "127.0.0.0/8",
        "0.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
        "::/128",
    )
)


class RelayRecordError(ValueError):
    """A relay record's value does not decode to a list of (key, host, port)."""


def is_private(host: str) -> bool:
    """True for an address that is only dialable inside its own network.

    Documentation ranges (TEST-NET, used by the NAT lab as its "internet") count as
    global: they are not NAT'd address space. A name that is not an IP address counts
    as global (the operator wrote it; DNS decides where it leads).
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in _NOT_GLOBAL)


def advertised_addrs(
    *,
    listen: Iterable[Addr],
    explicit: bool,
    status: str,
    reachable: Iterable[Addr],
    observed: Iterable[Addr],
    relays: Mapping[bytes, Addr | None],
) -> tuple[Addr, ...]:
    """The addresses to sign into our records (see the module docstring).

    ``status`` is the reachability verdict ("public", "private" or "unknown");
    ``observed`` every address peers report seeing us at; ``relays`` the relays holding
    a reservation for us, with their public address (None while unknown).
    """
    out: list[Addr] = list(reachable)
    if status != "private":
        seen = list(observed)
        lan_only = bool(seen) and all(is_private(h) for h, _ in seen)
        out += [a for a in listen if explicit or not is_private(a[0]) or lan_only]
    else:
        out += [a for a in relays.values() if a is not None and not is_private(a[0])]
    return tuple(dict.fromkeys(out))[:MAX_ADVERTISED]


def encode_relays(relays: Mapping[bytes, Addr | None]) -> bytes:
    """The value of our relay record: relays whose public address is known, sorted."""
    rows = sorted(
        (key, addr[0], addr[1])
        for key, addr in relays.items()
        if addr is not None and not is_private(addr[0])
    )[:MAX_RELAYS]
    packed: bytes = msgpack.packb([list(r) for r in rows], use_bin_type=True)
    return packed


_RECORD_LIMITS: Final = Limits(
    max_frame=4096,  # 8 rows of a key, a host name and a port: about 2.4 KiB at most
    max_bin=32 + 1,
    max_str=MAX_HOST_BYTES + 1,
    max_array=MAX_RELAYS + 1,
    max_map=16,  # a map is refused by the row checks, which say so
    max_depth=2,
)


def _not_msgpack(field: str, detail: str) -> RelayRecordError:
    return RelayRecordError(f"relay record is not msgpack within limits: {detail}")


def decode_relays(value: bytes) -> dict[bytes, Addr]:
    """Inverse of :func:`encode_relays`; :class:`RelayRecordError` naming the problem."""
    rows = unpack(value, _not_msgpack, _RECORD_LIMITS)
    if not isinstance(rows, list) or len(rows) > MAX_RELAYS:
        raise RelayRecordError(f"relay record must be a list of at most {MAX_RELAYS} rows")
    out: dict[bytes, Addr] = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3):
            raise RelayRecordError(f"relay row {describe(row)} is not [key, host, port]")
        key, host, port = row
        if type(key) is not bytes or len(key) != 32:
            raise RelayRecordError("relay key must be 32 bytes")
        if type(host) is not str or not host or len(host.encode()) > MAX_HOST_BYTES:
            raise RelayRecordError(f"relay host {describe(host)} is not a host name or address")
        if type(port) is not int or not 0 < port < 65536:
            raise RelayRecordError(f"relay port {describe(port)} not in 1..65535")
        out[key] = (host, port)
    return out


__all__ = [
    "MAX_ADVERTISED",
    "MAX_RELAYS",
    "RELAYS_RECORD",
    "RelayRecordError",
    "advertised_addrs",
    "decode_relays",
    "encode_relays",
    "is_private",
]
