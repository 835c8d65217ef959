"""Relay service limits and accounting, and the client's reservation lifecycle."""

from __future__ import annotations

from p2p.nat import Send, StartTimer
from p2p.nat.messages import (
    CircuitClose,
    CircuitData,
    ConnectRequest,
    ConnectResponse,
    ReserveRequest,
    ReserveResponse,
    Status,
    StopConnect,
    StopResponse,
)
from p2p.nat.relay import (
    RelayConfig,
    RelayService,
    ReservationChanged,
    ReservationClient,
    ReservationConfig,
)

P = [bytes([i + 1]) * 32 for i in range(8)]
R = b"\xee" * 32
RADDR = ("198.51.100.1", 4000)


def sent(effects: list[object]) -> list[tuple[bytes, object]]:
    return [(e.peer, e.msg) for e in effects if isinstance(e, Send)]


def reserve(relay: RelayService, peer: bytes, now: float = 0.0) -> Status:
    ((_, resp),) = sent(relay.on_message(peer, ReserveRequest(), now))
    assert isinstance(resp, ReserveResponse)
    return resp.status


def open_circuit(relay: RelayService, src: bytes, dst: bytes, now: float = 0.0) -> int:
    ((to, stop),) = sent(relay.on_message(src, ConnectRequest(dst), now))
    assert to == dst and isinstance(stop, StopConnect) and stop.src == src
    ((to, ok),) = sent(relay.on_message(dst, StopResponse(stop.circuit, Status.OK), now))
    assert to == src and isinstance(ok, ConnectResponse) and ok.status == Status.OK
    return stop.circuit


def test_reservation_grant_carries_limits() -> None:
    relay = RelayService(
        RelayConfig(reservation_ttl=60, circuit_duration=30, circuit_bytes=1000), RADDR
    )
    ((_, resp),) = sent(relay.on_message(P[0], ReserveRequest(), 0.0))
    assert resp == ReserveResponse(Status.OK, 60_000, 30_000, 1000, RADDR)


def test_reservation_slots_and_expiry() -> None:
    relay = RelayService(RelayConfig(max_reservations=2, reservation_ttl=10))
    assert reserve(relay, P[0]) == Status.OK
    assert reserve(relay, P[1]) == Status.OK
    assert reserve(relay, P[2]) == Status.RESERVATION_SLOTS_FULL
    assert reserve(relay, P[0], 5.0) == Status.OK  # renewal needs no new slot
    relay.tick(10.0)  # P[1] expired
    assert not relay.has_reservation(P[1], 10.0) and relay.has_reservation(P[0], 10.0)
    assert reserve(relay, P[2], 10.0) == Status.OK
    assert relay.stats().refused == {Status.RESERVATION_SLOTS_FULL: 1}


def test_disabled_relay_refuses_everything() -> None:
    relay = RelayService(RelayConfig(enabled=False))
    assert reserve(relay, P[0]) == Status.RELAY_DISABLED
    ((_, resp),) = sent(relay.on_message(P[1], ConnectRequest(P[0]), 0.0))
    assert resp == ConnectResponse(Status.RELAY_DISABLED, P[0])


def test_connect_needs_a_reservation_and_not_self() -> None:
    relay = RelayService()
    ((_, resp),) = sent(relay.on_message(P[1], ConnectRequest(P[0]), 0.0))
    assert resp.status == Status.NO_RESERVATION  # type: ignore[attr-defined]
    reserve(relay, P[0])
    ((_, resp),) = sent(relay.on_message(P[0], ConnectRequest(P[0]), 0.0))
    assert resp.status == Status.CONNECT_TO_SELF  # type: ignore[attr-defined]


def test_circuit_forwards_and_counts_bytes_until_the_cap() -> None:
    relay = RelayService(RelayConfig(circuit_bytes=10))
    reserve(relay, P[0])
    cid = open_circuit(relay, P[1], P[0])
    assert sent(relay.on_message(P[1], CircuitData(cid, b"hello"), 0.0)) == [
        (P[0], CircuitData(cid, b"hello"))
    ]
    assert sent(relay.on_message(P[0], CircuitData(cid, b"abcd"), 0.0)) == [
        (P[1], CircuitData(cid, b"abcd"))
    ]
    closing = sent(relay.on_message(P[1], CircuitData(cid, b"xy"), 0.0))
    assert sorted(closing) == sorted(
        [
            (P[1], CircuitClose(cid, Status.BYTES_LIMIT)),
            (P[0], CircuitClose(cid, Status.BYTES_LIMIT)),
        ]
    )
    assert relay.stats().bytes_relayed == 9 and relay.stats().circuits == 0
    assert sent(relay.on_message(P[1], CircuitData(cid, b"late"), 0.0)) == []


def test_strangers_cannot_inject_into_a_circuit() -> None:
    relay = RelayService()
    reserve(relay, P[0])
    cid = open_circuit(relay, P[1], P[0])
    assert relay.on_message(P[2], CircuitData(cid, b"evil"), 0.0) == []


def test_circuit_duration_and_stop_timeout() -> None:
    relay = RelayService(RelayConfig(circuit_duration=30, stop_timeout=5, reservation_ttl=1000))
    reserve(relay, P[0])
    cid = open_circuit(relay, P[1], P[0], 0.0)
    effects = sent(relay.tick(30.0))
    assert (P[1], CircuitClose(cid, Status.DURATION_LIMIT)) in effects
    sent(relay.on_message(P[1], ConnectRequest(P[0]), 40.0))
    effects = sent(relay.tick(45.0))
    assert (P[1], ConnectResponse(Status.TARGET_TIMEOUT, P[0])) in effects


def test_target_refusal_and_circuit_limits() -> None:
    relay = RelayService(RelayConfig(max_circuits=3, max_circuits_per_peer=2))
    reserve(relay, P[0])
    reserve(relay, P[5])
    ((_, stop),) = sent(relay.on_message(P[1], ConnectRequest(P[0]), 0.0))
    assert sent(relay.on_message(P[0], StopResponse(stop.circuit, Status.TARGET_REFUSED), 0.0)) == [  # type: ignore[attr-defined]
        (P[1], ConnectResponse(Status.TARGET_REFUSED, P[0]))
    ]
    open_circuit(relay, P[1], P[0])
    open_circuit(relay, P[2], P[0])
    ((_, resp),) = sent(relay.on_message(P[3], ConnectRequest(P[0]), 0.0))
    assert resp.status == Status.PEER_CIRCUIT_LIMIT  # type: ignore[attr-defined]
    open_circuit(relay, P[3], P[5])
    ((_, resp),) = sent(relay.on_message(P[4], ConnectRequest(P[5]), 0.0))
    assert resp.status == Status.CIRCUIT_SLOTS_FULL  # type: ignore[attr-defined]


def test_disconnect_drops_reservation_and_closes_circuits() -> None:
    relay = RelayService()
    reserve(relay, P[0])
    cid = open_circuit(relay, P[1], P[0])
    assert sent(relay.peer_disconnected(P[0], 1.0)) == [(P[1], CircuitClose(cid, Status.CLOSED))]
    assert not relay.has_reservation(P[0], 1.0)


def test_close_by_one_end_tells_the_other() -> None:
    relay = RelayService()
    reserve(relay, P[0])
    cid = open_circuit(relay, P[1], P[0])
    assert sent(relay.on_message(P[0], CircuitClose(cid, Status.CLOSED), 0.0)) == [
        (P[1], CircuitClose(cid, Status.CLOSED))
    ]


# -- client ------------------------------------------------------------------------------


def grant(ttl: float) -> ReserveResponse:
    return ReserveResponse(Status.OK, int(ttl * 1000), 1000, 10, RADDR)


def test_client_renews_before_expiry() -> None:
    c = ReservationClient(ReservationConfig(renew_at=0.75))
    assert sent(c.add_relay(R, 0.0)) == [(R, ReserveRequest())]
    effects = c.on_response(R, grant(100), 0.0)
    assert ReservationChanged(R, RADDR, 100.0, Status.OK) in effects
    assert StartTimer("reservation-renew", 75.0) in effects
    assert sent(c.tick(74.9)) == []
    assert sent(c.tick(75.0)) == [(R, ReserveRequest())]
    c.on_response(R, grant(100), 76.0)
    assert c.active(150.0) == {R: RADDR}  # renewed: valid until 176


def test_client_loses_an_unrenewed_reservation() -> None:
    c = ReservationClient(ReservationConfig(renew_at=0.5, request_timeout=100))
    c.add_relay(R, 0.0)
    c.on_response(R, grant(10), 0.0)
    c.tick(5.0)  # renewal sent, never answered
    effects = c.tick(10.0)
    assert ReservationChanged(R, RADDR, None, Status.NO_RESERVATION) in effects
    assert c.active(10.0) == {}


def test_client_backs_off_on_refusal() -> None:
    c = ReservationClient(ReservationConfig(retry_initial=5, retry_max=12))
    c.add_relay(R, 0.0)
    delays = []
    now = 0.0
    for _ in range(4):
        effects = c.on_response(R, ReserveResponse(Status.RESERVATION_SLOTS_FULL), now)
        (timer,) = [e for e in effects if isinstance(e, StartTimer)]
        delays.append(timer.at - now)
        now = timer.at
        assert sent(c.tick(now)) == [(R, ReserveRequest())]
    assert delays == [5, 10, 12, 12]


def test_client_retries_a_lost_request() -> None:
    c = ReservationClient(ReservationConfig(request_timeout=10))
    c.add_relay(R, 0.0)
    assert sent(c.tick(9.0)) == []
    assert sent(c.tick(10.0)) == [(R, ReserveRequest())]


def test_removing_a_relay_withdraws_the_address() -> None:
    c = ReservationClient()
    c.add_relay(R, 0.0)
    c.on_response(R, grant(100), 0.0)
    assert c.remove_relay(R, 1.0) == [ReservationChanged(R, RADDR, None, Status.CLOSED)]
