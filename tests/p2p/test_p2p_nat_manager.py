"""Connection manager: path choice, relayed links, upgrade to direct, fallback."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from p2p.nat import Dial, Send, StartTimer
from p2p.nat.manager import (
    DIRECT,
    NO_PATH,
    CloseRelayed,
    ConnectionManager,
    ManagerConfig,
    Path,
    PathChanged,
    PeerInfo,
    RunRelayedTls,
    UseRelay,
)
from p2p.nat.messages import (
    CircuitClose,
    ConnectRequest,
    ConnectResponse,
    PunchConnect,
    Status,
    StopConnect,
    StopResponse,
)
from p2p.nat.punch import PunchConfig, PunchFailed

ME, PEER, R1, R2 = (bytes([i]) * 32 for i in (1, 2, 0xE1, 0xE2))
R_ADDR = ("198.51.100.1", 4000)


def with_relays(mgr: ConnectionManager, *relays: bytes) -> None:
    for r in relays:
        mgr.link_up(r, DIRECT, 0.0)


def test_public_peer_is_dialled_directly() -> None:
    mgr = ConnectionManager(ME)
    mgr.learn(PEER, PeerInfo((("203.0.113.5", 4000),), public=True), 0.0)
    (dial,) = [e for e in mgr.want(PEER, 0.0) if isinstance(e, Dial)]
    assert dial.addr == ("203.0.113.5", 4000) and dial.from_listen_port
    effects = mgr.dial_result(dial.token, True, 1.0)
    assert PathChanged(PEER, NO_PATH, DIRECT) in effects


def test_failed_direct_dial_falls_back_to_relay() -> None:
    mgr = ConnectionManager(ME)
    with_relays(mgr, R1)
    mgr.learn(PEER, PeerInfo((("203.0.113.5", 4000),), True, (R1,)), 0.0)
    (dial,) = [e for e in mgr.want(PEER, 0.0) if isinstance(e, Dial)]
    effects = mgr.dial_result(dial.token, False, 1.0)
    assert UseRelay(PEER, R1) in effects and Send(R1, ConnectRequest(PEER)) in effects


def test_relay_refusal_tries_the_next_relay() -> None:
    mgr = ConnectionManager(ME)
    with_relays(mgr, R1, R2)
    mgr.learn(PEER, PeerInfo((), False, (R1, R2)), 0.0)
    assert Send(R1, ConnectRequest(PEER)) in mgr.want(PEER, 0.0)
    effects = mgr.on_message(R1, ConnectResponse(Status.NO_RESERVATION, PEER), 0.5)
    assert Send(R2, ConnectRequest(PEER)) in effects
    effects = mgr.on_message(R2, ConnectResponse(Status.OK, PEER, 9, 1000, 1000), 0.6)
    assert effects == [RunRelayedTls(PEER, R2, 9, "client")]
    relayed = Path("relayed", R2, 9)
    assert PathChanged(PEER, NO_PATH, relayed) in mgr.link_up(PEER, relayed, 1.0)
    assert mgr.peers[PEER].last_failure == "relay refused: NO_RESERVATION"


def test_target_accepts_circuit_and_initiates_the_punch() -> None:
    mgr = ConnectionManager(ME)
    mgr.set_own_addrs((("192.0.2.1", 4000),))
    effects = mgr.on_message(R1, StopConnect(PEER, 3, 1000, 1000), 0.0)
    assert effects == [Send(R1, StopResponse(3, Status.OK)), RunRelayedTls(PEER, R1, 3, "server")]
    relayed = Path("relayed", R1, 3)
    effects = mgr.link_up(PEER, relayed, 1.0)
    assert Send(PEER, PunchConnect(1, (("192.0.2.1", 4000),))) in effects
    # the punch works: the direct link wins and the relayed link is closed
    effects = mgr.link_up(PEER, DIRECT, 2.0)
    assert PathChanged(PEER, relayed, DIRECT) in effects
    assert CloseRelayed(PEER, R1, 3) in effects
    assert Send(R1, CircuitClose(3, Status.CLOSED)) in effects
    assert mgr.peers[PEER].direct_upgrades == 1


def test_circuit_initiator_answers_the_punch() -> None:
    mgr = ConnectionManager(ME)
    with_relays(mgr, R1)
    mgr.learn(PEER, PeerInfo((), False, (R1,)), 0.0)
    mgr.want(PEER, 0.0)
    mgr.on_message(R1, ConnectResponse(Status.OK, PEER, 4, 1000, 1000), 0.1)
    mgr.link_up(PEER, Path("relayed", R1, 4), 0.2)
    effects = mgr.on_message(PEER, PunchConnect(1, (("192.0.2.9", 4000),)), 0.3)
    assert any(isinstance(e, Send) and isinstance(e.msg, PunchConnect) for e in effects)


def test_failed_punch_stays_relayed_and_retries_later() -> None:
    cfg = ManagerConfig(punch=PunchConfig(max_attempts=1, connect_timeout=1.0), upgrade_retry=50.0)
    mgr = ConnectionManager(ME, cfg)
    mgr.on_message(R1, StopConnect(PEER, 3, 1000, 1000), 0.0)
    relayed = Path("relayed", R1, 3)
    mgr.link_up(PEER, relayed, 0.0)
    effects = mgr.tick(1.0)
    assert any(isinstance(e, PunchFailed) for e in effects)
    assert mgr.path(PEER) == relayed
    assert not any(isinstance(e, Send) for e in mgr.tick(50.9))
    assert any(isinstance(e, Send) and isinstance(e.msg, PunchConnect) for e in mgr.tick(51.0))
    assert mgr.peers[PEER].upgrade_rounds == 2


def test_lost_path_reconnects_a_wanted_peer() -> None:
    mgr = ConnectionManager(ME)
    with_relays(mgr, R1)
    mgr.learn(PEER, PeerInfo((), False, (R1,)), 0.0)
    mgr.want(PEER, 0.0)
    mgr.on_message(R1, ConnectResponse(Status.OK, PEER, 4, 1000, 1000), 0.1)
    relayed = Path("relayed", R1, 4)
    mgr.link_up(PEER, relayed, 0.2)
    effects = mgr.on_message(R1, CircuitClose(4, Status.DURATION_LIMIT), 5.0)
    assert CloseRelayed(PEER, R1, 4) in effects
    assert PathChanged(PEER, relayed, NO_PATH) in effects
    assert Send(R1, ConnectRequest(PEER)) in effects


def test_refuses_circuits_from_strangers_or_when_direct() -> None:
    mgr = ConnectionManager(ME, allowed=frozenset({PEER}))
    stranger = b"\x77" * 32
    assert mgr.on_message(R1, StopConnect(stranger, 1, 1, 1), 0.0) == [
        Send(R1, StopResponse(1, Status.TARGET_REFUSED))
    ]
    mgr.link_up(PEER, DIRECT, 0.0)
    assert mgr.on_message(R1, StopConnect(PEER, 2, 1, 1), 0.0) == [
        Send(R1, StopResponse(2, Status.TARGET_REFUSED))
    ]


def test_two_public_peers_that_collide_retry_out_of_step() -> None:
    """Both dial at once from their listening ports, collide (both TLS clients) and fail
    at the same instant: their retries are stretched differently, so the next attempts
    do not collide again (the NAT lab saw two peers fail in step every 5 s for a minute)."""
    cfg = ManagerConfig(retry_after=5.0)
    me, peer = ConnectionManager(ME, cfg), ConnectionManager(PEER, cfg)
    retries: dict[bytes, list[float]] = {ME: [], PEER: []}
    for mgr, other in ((me, PEER), (peer, ME)):
        mgr.learn(other, PeerInfo((("203.0.113.5", 4000),), public=True), 0.0)
        (dial,) = [e for e in mgr.want(other, 0.0) if isinstance(e, Dial)]
        effects = mgr.dial_result(dial.token, False, 1.0)
        for attempt in range(2, 6):
            (timer,) = [e for e in effects if isinstance(e, StartTimer)]
            retries[mgr.own].append(timer.at)
            (dial,) = [e for e in mgr.tick(timer.at) if isinstance(e, Dial)]
            effects = mgr.dial_result(dial.token, False, timer.at)
            assert mgr.peers[other].retries == attempt
    for times in retries.values():
        gaps = [b - a for a, b in zip([1.0, *times], times, strict=False)]
        assert all(5.0 <= g < 7.5 for g in gaps), gaps
    assert all(abs(a - b) > 0.05 for a, b in zip(retries[ME], retries[PEER], strict=True))
    # a pure function of the keys and the attempt: the simulator replays it
    assert me.retry_delay(PEER, 3) == ConnectionManager(ME, cfg).retry_delay(PEER, 3)


def test_upgrade_rounds_back_off_from_upgrade_retry_to_its_cap() -> None:
    mgr = ConnectionManager(ME, ManagerConfig(upgrade_retry=30.0, upgrade_retry_max=100.0))
    assert [mgr.upgrade_delay(r) for r in (1, 2, 3, 4)] == [30.0, 60.0, 100.0, 100.0]


def test_an_unused_circuit_is_closed_at_the_relay() -> None:
    mgr = ConnectionManager(ME)
    # a ConnectResponse for a request we no longer wait on (never sent, or timed out)
    effects = mgr.on_message(R1, ConnectResponse(Status.OK, PEER, 7, 1000, 1000), 0.0)
    assert effects == [Send(R1, CircuitClose(7, Status.CLOSED))]
    assert mgr.on_message(R1, ConnectResponse(Status.NO_RESERVATION, PEER), 0.0) == []


@dataclass
class _CrossingRelay:
    """Two managers that want each other at once through one relay, the relay's
    signalling in flight as a bag the test delivers in any order."""

    mgrs: dict[bytes, ConnectionManager]
    in_flight: list[tuple[bytes, object]] = field(default_factory=list)
    circuits: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    tls: dict[int, dict[bytes, str]] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)
    accepted: set[int] = field(default_factory=set)
    up: dict[bytes, Path] = field(default_factory=dict)
    punch_starts: dict[bytes, int] = field(default_factory=dict)

    def perform(self, node: bytes, effects: list[object]) -> None:
        for e in effects:
            if isinstance(e, Send) and e.peer == R1:
                self.relay(node, e.msg)
            elif isinstance(e, Send) and isinstance(e.msg, PunchConnect):
                self.punch_starts[node] = self.punch_starts.get(node, 0) + 1
            elif isinstance(e, RunRelayedTls):
                self.tls.setdefault(e.circuit, {})[node] = e.tls_role
                roles = self.tls[e.circuit]
                if sorted(roles.values()) == ["client", "server"]:
                    for side in roles:
                        path = Path("relayed", R1, e.circuit)
                        self.up[side] = path
                        other = next(k for k in self.mgrs if k != side)
                        self.perform(side, self.mgrs[side].link_up(other, path, 1.0))

    def relay(self, node: bytes, msg: object) -> None:
        if isinstance(msg, ConnectRequest):
            circuit = len(self.circuits) + 1
            self.circuits[circuit] = (node, msg.dst)
            self.in_flight.append((msg.dst, StopConnect(node, circuit, 1000, 1000)))
        elif isinstance(msg, StopResponse):
            src, dst = self.circuits[msg.circuit]
            if msg.status == Status.OK:
                self.accepted.add(msg.circuit)
            self.in_flight.append((src, ConnectResponse(msg.status, dst, msg.circuit)))
        elif isinstance(msg, CircuitClose):
            self.closed.add(msg.circuit)


@given(order=st.lists(st.integers(min_value=0, max_value=7), min_size=8, max_size=8))
def test_crossing_circuit_requests_settle_on_one_circuit_and_one_puncher(
    order: list[int],
) -> None:
    """Both peers ask the relay for a circuit to the other at once; whatever order the
    relay's messages arrive in, one circuit carries the link, the other is refused or
    closed, the two ends agree on who accepted it, and exactly one of them starts the
    hole punch (two punch initiators each took the other's CONNECT for an answer)."""
    net = _CrossingRelay({ME: ConnectionManager(ME), PEER: ConnectionManager(PEER)})
    for node, other in ((ME, PEER), (PEER, ME)):
        mgr = net.mgrs[node]
        mgr.set_own_addrs(((f"192.0.2.{node[0]}", 4000),))
        mgr.link_up(R1, DIRECT, 0.0)
        mgr.learn(other, PeerInfo((), False, (R1,)), 0.0)
    for node, other in ((ME, PEER), (PEER, ME)):
        net.perform(node, net.mgrs[node].want(other, 0.0))
    picks = iter(order)
    while net.in_flight:
        node, msg = net.in_flight.pop(next(picks, 0) % len(net.in_flight))
        net.perform(node, net.mgrs[node].on_message(R1, msg, 0.5))  # type: ignore[arg-type]
    assert set(net.up) == {ME, PEER} and net.up[ME] == net.up[PEER]
    used = net.up[ME].circuit
    assert [c for c, roles in net.tls.items() if len(roles) == 2] == [used]
    assert net.accepted - {used} <= net.closed  # no circuit left open at the relay
    sides = {net.mgrs[ME].peers[PEER].circuit_side, net.mgrs[PEER].peers[ME].circuit_side}
    assert sides == {"initiator", "target"}
    assert sum(net.punch_starts.values()) == 1
