"""NAT traversal as pure state machines: observed addresses, reachability, relays, punching.

Modules, one job each:

- ``messages``: the wire types of the NAT channel (frame kind 4) and their strict codec;
- ``observed``: what peers tell us about our public address(es), and the NAT's mapping;
- ``reachability``: AutoNAT-style dial-back probes, client and (anti-amplification) server;
- ``relay``: the relay service (reservations, circuits, limits) and a client's reservation;
- ``punch``: one DCUtR-style hole-punch attempt (both roles) and the TLS role rule;
- ``manager``: per peer, which path is used (direct, relayed, none) and when to upgrade.

The asyncio shell lives beside this package: ``p2p.nat_service`` (wiring),
``p2p.nat_dialer`` (punch dials, dial-backs) and ``p2p.relayed`` (TLS over a circuit).
None of the modules here does I/O or reads a clock: ``now`` (float seconds) is an argument, and
every decision comes back as a list of effects. This package namespace holds the effects
that several machines share; each module defines its own specific effects next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2p.nat.messages import Addr, NatMessage

TlsRole = Literal["client", "server"]


@dataclass(frozen=True)
class Send:
    """Send ``msg`` on the NAT channel to ``peer`` over whatever link it has (direct or
    relayed); dropped if there is none (every machine recovers through its timers)."""

    peer: bytes
    msg: NatMessage


@dataclass(frozen=True)
class StartTimer:
    """Call the machine's ``tick(now)`` at time ``at`` (earlier or extra ticks are harmless).

    ``name`` says what is due, for logs; a shell may keep one timer per machine."""

    name: str
    at: float


@dataclass(frozen=True)
class Dial:
    """Open a direct TCP connection to ``addr`` and run TLS as ``tls_role``, pinning ``peer``.

    ``from_listen_port``: bind the listening port (``SO_REUSEADDR/PORT``) so that the NAT
    reuses the mapping peers observed; a hole punch depends on it. Give up at ``deadline``.
    The outcome comes back through the owning machine's ``dial_result(token, ok, now)``."""

    peer: bytes
    addr: Addr
    from_listen_port: bool
    tls_role: TlsRole
    deadline: float
    token: int


@dataclass(frozen=True)
class Expect:
    """Until ``until``, an inbound connection from ``peer`` at one of ``addrs`` belongs to
    a hole punch: run TLS on it as ``tls_role`` (not as the usual accepting server),
    because after a simultaneous open neither side knows it was "accepted"."""

    peer: bytes
    addrs: tuple[Addr, ...]
    tls_role: TlsRole
    until: float


__all__ = ["Addr", "Dial", "Expect", "NatMessage", "Send", "StartTimer", "TlsRole"]
