"""Relaying (circuit-relay-v2 style): the relay service, and a client's reservation.

Service: a publicly reachable node lends its links. A private node *reserves* a slot
(``ReserveRequest``; it renews before ``reservation_ttl`` runs out). Anybody connected
to the relay may then ask for a circuit to the reserved node (``ConnectRequest``); the
relay asks the target (``StopConnect``), and once it accepts (``StopResponse``) both ends
exchange ``CircuitData`` chunks that the relay forwards without looking inside: they are
the two ends' own TLS records, so the relay can neither read nor forge the relayed link.
Every resource is bounded and configurable: reservation slots and lifetime, circuits in
total and per peer, and per circuit a duration and a byte budget. Anything over a limit
is refused, or closed, with a specific ``Status``.

Client: ``ReservationClient`` keeps one reservation per chosen relay alive: renews at a
fraction of its lifetime, retries refusals with capped exponential backoff, and reports
each change so the node advertises (or withdraws) its relayed address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2p.nat import Send, StartTimer
from p2p.nat.messages import (
    Addr,
    CircuitClose,
    CircuitData,
    ConnectRequest,
    ConnectResponse,
    NatMessage,
    ReserveRequest,
    ReserveResponse,
    Status,
    StopConnect,
    StopResponse,
)

MS = 1000.0


@dataclass(frozen=True)
class RelayConfig:
    """Limits of the relay service (seconds, bytes); defaults fit a laptop relay."""

    enabled: bool = True
    max_reservations: int = 32
    reservation_ttl: float = 3600.0
    max_circuits: int = 64
    max_circuits_per_peer: int = 4
    circuit_duration: float = 600.0
    circuit_bytes: int = 64 * 1024 * 1024
    stop_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_reservations", "max_circuits", "max_circuits_per_peer", "circuit_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"RelayConfig.{name}={getattr(self, name)}: must be >= 1")
        for name in ("reservation_ttl", "circuit_duration", "stop_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RelayConfig.{name}={getattr(self, name)}: must be > 0")


@dataclass
class _Circuit:
    src: bytes
    dst: bytes
    state: Literal["pending", "open"]
    deadline: float
    bytes: int = 0


@dataclass(frozen=True)
class RelayStats:
    """Snapshot for status/metrics."""

    enabled: bool
    reservations: int
    circuits: int
    pending_circuits: int
    bytes_relayed: int
    refused: dict[Status, int]
    closed: dict[Status, int]


RelayEffect = Send | StartTimer


class RelayService:
    """Reservations and circuits of one relay node, with their accounting."""

    def __init__(self, config: RelayConfig | None = None, public_addr: Addr | None = None) -> None:
        self.config = config or RelayConfig()
        self.enabled = self.config.enabled
        self.public_addr = public_addr
        self._reservations: dict[bytes, float] = {}
        self._circuits: dict[int, _Circuit] = {}
        self._next_id = 0
        self._bytes = 0
        self._refused: dict[Status, int] = {}
        self._closed: dict[Status, int] = {}

    def set_enabled(self, enabled: bool, public_addr: Addr | None = None) -> None:
        """Offer the service only while publicly reachable; turning it off refuses new
        reservations and circuits (current ones run out on their own limits)."""
        self.enabled = enabled and self.config.enabled
        if public_addr is not None:
            self.public_addr = public_addr

    def has_reservation(self, peer: bytes, now: float) -> bool:
        expires = self._reservations.get(peer)
        return expires is not None and now < expires

    def stats(self) -> RelayStats:
        return RelayStats(
            enabled=self.enabled,
            reservations=len(self._reservations),
            circuits=sum(1 for c in self._circuits.values() if c.state == "open"),
            pending_circuits=sum(1 for c in self._circuits.values() if c.state == "pending"),
            bytes_relayed=self._bytes,
            refused=dict(self._refused),
            closed=dict(self._closed),
        )

    # -- inputs --------------------------------------------------------------------------

    def on_message(self, peer: bytes, msg: NatMessage, now: float) -> list[RelayEffect]:
        """Feed any relay-side message; other message types are ignored (not ours)."""
        if isinstance(msg, ReserveRequest):
            return self._reserve(peer, now)
        if isinstance(msg, ConnectRequest):
            return self._connect(peer, msg.dst, now)
        if isinstance(msg, StopResponse):
            return self._stop_response(peer, msg, now)
        if isinstance(msg, CircuitData):
            return self._data(peer, msg)
        if isinstance(msg, CircuitClose):
            circuit = self._circuits.get(msg.circuit)
            if circuit is not None and peer in (circuit.src, circuit.dst):
                return self._close(msg.circuit, Status.CLOSED, skip=peer)
        return []

    def peer_disconnected(self, peer: bytes, now: float) -> list[RelayEffect]:
        """The relay's link to ``peer`` is gone: its reservation and circuits go too."""
        self._reservations.pop(peer, None)
        effects: list[RelayEffect] = []
        for cid in [c for c, v in self._circuits.items() if peer in (v.src, v.dst)]:
            effects += self._close(cid, Status.CLOSED, skip=peer)
        return effects

    def tick(self, now: float) -> list[RelayEffect]:
        """Expire reservations; close circuits over their duration, or whose target never
        answered ``StopConnect``."""
        for peer in [p for p, exp in self._reservations.items() if now >= exp]:
            del self._reservations[peer]
        effects: list[RelayEffect] = []
        for cid, c in list(self._circuits.items()):
            if now >= c.deadline:
                status = Status.TARGET_TIMEOUT if c.state == "pending" else Status.DURATION_LIMIT
                effects += self._close(cid, status)
        deadlines = [c.deadline for c in self._circuits.values()]
        deadlines += list(self._reservations.values())
        if deadlines:
            effects.append(StartTimer("relay-expiry", min(deadlines)))
        return effects

    # -- reservations and circuits ---------------------------------------------------------

    def _refuse(self, status: Status) -> Status:
        self._refused[status] = self._refused.get(status, 0) + 1
        return status

    def _reserve(self, peer: bytes, now: float) -> list[RelayEffect]:
        c = self.config
        if not self.enabled:
            return [Send(peer, ReserveResponse(self._refuse(Status.RELAY_DISABLED)))]
        live = {p for p, exp in self._reservations.items() if now < exp}
        if peer not in live and len(live) >= c.max_reservations:
            return [Send(peer, ReserveResponse(self._refuse(Status.RESERVATION_SLOTS_FULL)))]
        self._reservations = {p: self._reservations[p] for p in live}
        self._reservations[peer] = now + c.reservation_ttl
        grant = ReserveResponse(
            Status.OK,
            ttl_ms=int(c.reservation_ttl * MS),
            circuit_ms=int(c.circuit_duration * MS),
            circuit_bytes=c.circuit_bytes,
            relay_addr=self.public_addr,
        )
        return [Send(peer, grant), StartTimer("relay-expiry", now + c.reservation_ttl)]

    def _connect(self, src: bytes, dst: bytes, now: float) -> list[RelayEffect]:
        c = self.config

        def refuse(status: Status) -> list[RelayEffect]:
            return [Send(src, ConnectResponse(self._refuse(status), dst))]

        if not self.enabled:
            return refuse(Status.RELAY_DISABLED)
        if src == dst:
            return refuse(Status.CONNECT_TO_SELF)
        if not self.has_reservation(dst, now):
            return refuse(Status.NO_RESERVATION)
        if len(self._circuits) >= c.max_circuits:
            return refuse(Status.CIRCUIT_SLOTS_FULL)
        for end in (src, dst):
            used = sum(1 for v in self._circuits.values() if end in (v.src, v.dst))
            if used >= c.max_circuits_per_peer:
                return refuse(Status.PEER_CIRCUIT_LIMIT)
        self._next_id += 1
        cid = self._next_id
        deadline = now + c.stop_timeout
        self._circuits[cid] = _Circuit(src, dst, "pending", deadline)
        stop = StopConnect(src, cid, int(c.circuit_duration * MS), c.circuit_bytes)
        return [Send(dst, stop), StartTimer("relay-expiry", deadline)]

    def _stop_response(self, peer: bytes, msg: StopResponse, now: float) -> list[RelayEffect]:
        circuit = self._circuits.get(msg.circuit)
        if circuit is None or circuit.dst != peer or circuit.state != "pending":
            return []
        c = self.config
        if msg.status != Status.OK:
            del self._circuits[msg.circuit]
            self._refuse(Status.TARGET_REFUSED)
            return [Send(circuit.src, ConnectResponse(Status.TARGET_REFUSED, circuit.dst))]
        circuit.state = "open"
        circuit.deadline = now + c.circuit_duration
        ok = ConnectResponse(
            Status.OK, circuit.dst, msg.circuit, int(c.circuit_duration * MS), c.circuit_bytes
        )
        return [Send(circuit.src, ok), StartTimer("relay-expiry", circuit.deadline)]

    def _data(self, peer: bytes, msg: CircuitData) -> list[RelayEffect]:
        circuit = self._circuits.get(msg.circuit)
        if circuit is None or circuit.state != "open" or peer not in (circuit.src, circuit.dst):
            return []
        if circuit.bytes + len(msg.data) > self.config.circuit_bytes:
            return self._close(msg.circuit, Status.BYTES_LIMIT)
        circuit.bytes += len(msg.data)
        self._bytes += len(msg.data)
        other = circuit.dst if peer == circuit.src else circuit.src
        return [Send(other, msg)]

    def _close(self, cid: int, status: Status, *, skip: bytes | None = None) -> list[RelayEffect]:
        """Drop a circuit and tell its ends (but ``skip``, who closed it or is gone)."""
        circuit = self._circuits.pop(cid)
        self._closed[status] = self._closed.get(status, 0) + 1
        effects: list[RelayEffect] = []
        if circuit.state == "pending":
            if circuit.src != skip:
                effects.append(Send(circuit.src, ConnectResponse(status, circuit.dst)))
            if circuit.dst != skip:
                effects.append(Send(circuit.dst, CircuitClose(cid, status)))
            return effects
        for end in (circuit.src, circuit.dst):
            if end != skip:
                effects.append(Send(end, CircuitClose(cid, status)))
        return effects


# -- client side -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReservationConfig:
    """``renew_at``: renew when this fraction of the granted lifetime has passed."""

    renew_at: float = 0.75
    request_timeout: float = 10.0
    retry_initial: float = 5.0
    retry_max: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_at < 1:
            raise ValueError(f"ReservationConfig.renew_at={self.renew_at}: must be in (0, 1)")
        if not 0 < self.retry_initial <= self.retry_max:
            raise ValueError("ReservationConfig: need 0 < retry_initial <= retry_max")
        if self.request_timeout <= 0:
            raise ValueError("ReservationConfig.request_timeout: must be > 0")


@dataclass(frozen=True)
class ReservationChanged:
    """Our reservation on ``relay`` is now held until ``expires`` (advertise the relayed
    address ``relay_addr``), or is gone (``expires is None``; ``status`` says why)."""

    relay: bytes
    relay_addr: Addr | None
    expires: float | None
    status: Status


@dataclass
class _Held:
    relay_addr: Addr | None = None
    expires: float | None = None
    requested_at: float | None = None
    next_action: float = 0.0
    failures: int = 0


ClientEffect = Send | StartTimer | ReservationChanged


class ReservationClient:
    """Keeps reservations alive on the relays the node chose (usually one or two)."""

    def __init__(self, config: ReservationConfig | None = None) -> None:
        self.config = config or ReservationConfig()
        self._relays: dict[bytes, _Held] = {}

    def active(self, now: float) -> dict[bytes, Addr | None]:
        """Relays holding an unexpired reservation for us, with their public address."""
        return {
            r: h.relay_addr
            for r, h in self._relays.items()
            if h.expires is not None and now < h.expires
        }

    def add_relay(self, relay: bytes, now: float) -> list[ClientEffect]:
        if relay in self._relays:
            return []
        held = _Held(requested_at=now)
        self._relays[relay] = held
        return self._request(relay, held, now)

    def remove_relay(self, relay: bytes, now: float) -> list[ClientEffect]:
        """Stop using ``relay`` (its link is gone, or it is no longer wanted)."""
        held = self._relays.pop(relay, None)
        if held is None or held.expires is None:
            return []
        return [ReservationChanged(relay, held.relay_addr, None, Status.CLOSED)]

    def on_response(self, relay: bytes, msg: ReserveResponse, now: float) -> list[ClientEffect]:
        held = self._relays.get(relay)
        if held is None or held.requested_at is None:
            return []
        held.requested_at = None
        if msg.status != Status.OK or msg.ttl_ms == 0:
            held.failures += 1
            delay = min(
                self.config.retry_max, self.config.retry_initial * 2 ** min(held.failures - 1, 30)
            )
            held.next_action = now + delay
            effects: list[ClientEffect] = [StartTimer("reservation-retry", held.next_action)]
            if held.expires is not None:
                effects.insert(0, ReservationChanged(relay, held.relay_addr, None, msg.status))
                held.expires = None
            return effects
        ttl = msg.ttl_ms / MS
        held.failures = 0
        held.relay_addr = msg.relay_addr
        held.expires = now + ttl
        held.next_action = now + ttl * self.config.renew_at
        return [
            ReservationChanged(relay, msg.relay_addr, held.expires, Status.OK),
            StartTimer("reservation-renew", held.next_action),
        ]

    def tick(self, now: float) -> list[ClientEffect]:
        effects: list[ClientEffect] = []
        for relay, held in self._relays.items():
            if held.expires is not None and now >= held.expires:
                effects.append(
                    ReservationChanged(relay, held.relay_addr, None, Status.NO_RESERVATION)
                )
                held.expires = None
            asked = held.requested_at
            pending = asked is not None
            if asked is not None and now >= asked + self.config.request_timeout:
                held.requested_at = None
                held.next_action = now  # lost request or answer: ask again now
                pending = False
            if not pending and now >= held.next_action:
                effects += self._request(relay, held, now)
            elif not pending:
                effects.append(StartTimer("reservation-renew", held.next_action))
        return effects

    def _request(self, relay: bytes, held: _Held, now: float) -> list[ClientEffect]:
        held.requested_at = now
        timers = [now + self.config.request_timeout]
        if held.expires is not None:
            timers.append(held.expires)
        return [Send(relay, ReserveRequest()), StartTimer("reservation-request", min(timers))]
