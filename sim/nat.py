"""NAT boxes and a small deterministic TCP world that runs the shipped NAT machines.

Three NAT behaviours, as in the real lab:

- ``eim``: endpoint-independent mapping (the internal port is kept when free) with
  conntrack-style filtering: an inbound packet passes only if the internal endpoint
  sent to exactly that remote (address *and* port) before (Linux MASQUERADE);
- ``port_restricted``: endpoint-independent mapping to an allocated port, and an
  explicit stateful firewall table of (public port, remote endpoint) entries;
- ``symmetric``: endpoint-dependent mapping, a fresh random port per remote endpoint.

All three drop unsolicited inbound packets. TCP is modelled at the level a hole punch
needs: a SYN leaves through the sender's NAT (creating mapping and filter state at that
moment), is checked against the receiver's NAT state *when it arrives*, and then meets
either a pending connect to exactly its source (simultaneous open), the listener, or
nothing. Unanswered SYNs are retransmitted 1 s and 3 s after the first.

``NatWorld`` owns the clock and the one seeded RNG; ``SimNode`` wires the pure machines
of ``p2p.nat`` together the way the asyncio shell will, and performs their effects.
Time is in seconds. A run is a pure function of its seed.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, assert_never

from p2p.nat import Dial, Expect, Send, StartTimer
from p2p.nat.manager import (
    DIRECT,
    CloseRelayed,
    ConnectionManager,
    ManagerConfig,
    ManagerEffect,
    Path,
    PathChanged,
    PeerInfo,
    RunRelayedTls,
    UseRelay,
)
from p2p.nat.messages import (
    Addr,
    CircuitClose,
    CircuitData,
    ConnectRequest,
    ConnectResponse,
    DialBack,
    DialRequest,
    DialResponse,
    Identify,
    NatMessage,
    PunchConnect,
    PunchSync,
    ReserveRequest,
    ReserveResponse,
    StopConnect,
    StopResponse,
    decode,
    encode,
)
from p2p.nat.observed import AddressesChanged, MappingChanged, ObservedAddresses, ObservedEffect
from p2p.nat.punch import CancelDials, PunchFailed, PunchSucceeded
from p2p.nat.reachability import ClientEffect as ReachEffect
from p2p.nat.reachability import (
    DialBackTo,
    ReachabilityChanged,
    ReachabilityClient,
    ReachabilityConfig,
    ReachabilityServer,
    ServerEffect,
)
from p2p.nat.relay import ClientEffect as ReservationEffect
from p2p.nat.relay import (
    RelayConfig,
    RelayEffect,
    RelayService,
    ReservationChanged,
    ReservationClient,
)

NatEffect = (
    ManagerEffect | ObservedEffect | ReachEffect | ServerEffect | RelayEffect | ReservationEffect
)
"""Every effect the NAT machines return: :meth:`SimNode.perform` names each kind, as
the daemon's ``p2p.nat_service`` does, so mypy reports one it does not handle."""

NatBehaviour = Literal["eim", "port_restricted", "symmetric"]
SYN_RETRIES = (1.0, 3.0)
LISTEN_PORT = 4000


class NatBox:
    """One NAT in front of a private network, with its mapping and filter state."""

    def __init__(
        self, behaviour: NatBehaviour, public_ip: str, rng: random.Random, timeout: float = 120.0
    ) -> None:
        self.behaviour = behaviour
        self.public_ip = public_ip
        self.timeout = timeout
        self._rng = rng
        self.hosts: dict[str, Host] = {}
        # eim / port_restricted: internal endpoint -> public port
        self._eim: dict[Addr, int] = {}
        # symmetric: (internal endpoint, remote endpoint) -> public port
        self._sym: dict[tuple[Addr, Addr], int] = {}
        self._owner: dict[int, Addr] = {}  # public port -> internal endpoint
        # filter state: (public port, remote endpoint) -> expiry
        self._filter: dict[tuple[int, Addr], float] = {}
        self.dropped = 0

    def _allocate(self, preferred: int | None) -> int:
        if preferred is not None and preferred not in self._owner:
            return preferred
        while True:
            port = self._rng.randint(1024, 65535)
            if port not in self._owner:
                return port

    def outbound(self, src: Addr, dst: Addr, now: float) -> Addr:
        """Translate a packet from internal ``src`` to remote ``dst``; opens the filter."""
        if self.behaviour == "symmetric":
            port = self._sym.get((src, dst))
            if port is None:
                port = self._sym[(src, dst)] = self._allocate(None)
                self._owner[port] = src
        else:
            port = self._eim.get(src)
            if port is None:
                keep = src[1] if self.behaviour == "eim" else None
                port = self._eim[src] = self._allocate(keep)
                self._owner[port] = src
        self._filter[(port, dst)] = now + self.timeout
        return (self.public_ip, port)

    def inbound(self, src: Addr, port: int, now: float) -> Addr | None:
        """The internal destination of a packet from ``src`` to our ``port``, or ``None``
        (dropped: no mapping, or no filter entry for exactly this remote)."""
        expiry = self._filter.get((port, src))
        internal = self._owner.get(port)
        if expiry is None or now >= expiry or internal is None:
            self.dropped += 1
            return None
        if self.behaviour == "symmetric" and self._sym.get((internal, src)) != port:
            self.dropped += 1
            return None
        return internal

    def mapping_of(self, src: Addr) -> int | None:
        """The endpoint-independent public port of ``src`` (tests)."""
        return self._eim.get(src)


@dataclass(eq=False)
class Host:
    name: str
    ip: str
    up: float
    down: float
    nat: NatBox | None = None
    listen_port: int = LISTEN_PORT
    node: SimNode | None = None
    pending: dict[tuple[int, Addr], _Connect] = field(default_factory=dict)

    @property
    def public(self) -> Addr:
        """Where the outside reaches the listener (the NAT's mapping for a NAT'd host)."""
        return (self.ip, self.listen_port)


@dataclass(eq=False)
class _Connect:
    host: Host
    port: int
    dst: Addr
    deadline: float
    on_done: Callable[[bool, Host | None, Addr | None], None]
    purpose: str
    peer: bytes | None = None
    state: Literal["syn", "done", "cancelled"] = "syn"


class NatWorld:
    """Clock, event queue, hosts, NATs, TCP connects and message delivery."""

    def __init__(self, seed: int, jitter: float = 0.1) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.jitter = jitter
        self._q: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.hosts: dict[str, Host] = {}
        self.public: dict[str, Host | NatBox] = {}
        self.nodes: dict[bytes, SimNode] = {}
        self.directory: dict[bytes, PeerInfo] = {}
        self.drop: Callable[[bytes, bytes, NatMessage], bool] | None = None
        self._fifo: dict[tuple[str, str], float] = {}
        self.syns = 0
        self.trace: list[tuple[float, str]] = []

    # -- clock -----------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._q, (max(t, self.now), self._seq, fn))

    def run(self, until: float) -> None:
        while self._q and self._q[0][0] <= until:
            t, _, fn = heapq.heappop(self._q)
            self.now = t
            fn()
        self.now = until

    # -- topology --------------------------------------------------------------------------

    def add_nat(self, behaviour: NatBehaviour, public_ip: str) -> NatBox:
        nat = NatBox(behaviour, public_ip, self.rng)
        self.public[public_ip] = nat
        return nat

    def add_host(
        self, name: str, ip: str, up: float, down: float, nat: NatBox | None = None
    ) -> Host:
        host = Host(name, ip, up, down, nat)
        self.hosts[name] = host
        if nat is None:
            self.public[ip] = host
        else:
            nat.hosts[ip] = host
        return host

    def move(self, host: Host, ip: str, nat: NatBox | None) -> None:
        """The host changes network: its links break and it gets a new address."""
        if host.nat is None:
            self.public.pop(host.ip, None)
        else:
            host.nat.hosts.pop(host.ip, None)
        for c in list(host.pending.values()):
            c.state = "cancelled"
        host.pending.clear()
        host.ip, host.nat = ip, nat
        if nat is None:
            self.public[ip] = host
        else:
            nat.hosts[ip] = host
        if host.node is not None:
            for peer in list(host.node.direct):
                self.break_link(host.node, self.nodes[peer])
            host.node.network_changed()

    def break_link(self, a: SimNode, b: SimNode) -> None:
        a.direct_down(b.key)
        b.direct_down(a.key)

    # -- latency ---------------------------------------------------------------------------

    def _lat(self, a: Host, b: Host) -> float:
        base = a.up + b.down
        return base * (1.0 + self.rng.uniform(0.0, self.jitter))

    # -- TCP -------------------------------------------------------------------------------

    def connect(
        self,
        host: Host,
        port: int,
        dst: Addr,
        deadline: float,
        on_done: Callable[[bool, Host | None, Addr | None], None],
        purpose: str,
        peer: bytes | None = None,
    ) -> _Connect:
        """Dial ``dst`` from ``host:port``; ``on_done(ok, remote host, remote as seen)``
        runs when the connection and its TLS handshake are up, or at ``deadline``."""
        conn = _Connect(host, port, dst, deadline, on_done, purpose, peer)
        host.pending[(port, dst)] = conn
        self._syn(conn)
        t0 = self.now
        for delay in SYN_RETRIES:
            if t0 + delay < deadline:
                self.at(t0 + delay, functools.partial(self._syn, conn))

        def expire() -> None:
            if conn.state == "syn":
                conn.state = "cancelled"
                host.pending.pop((port, dst), None)
                on_done(False, None, None)

        self.at(deadline, expire)
        return conn

    def cancel(self, host: Host, peer: bytes) -> None:
        for key, c in list(host.pending.items()):
            if c.peer == peer and c.state == "syn":
                c.state = "cancelled"
                del host.pending[key]

    def _syn(self, conn: _Connect) -> None:
        if conn.state != "syn" or self.now >= conn.deadline:
            return
        self.syns += 1
        h = conn.host
        src = (h.ip, conn.port)
        src_pub = h.nat.outbound(src, conn.dst, self.now) if h.nat else src
        self.at(
            self.now + h.up * (1 + self.rng.uniform(0, self.jitter)),
            lambda: self._syn_at_edge(conn, src_pub),
        )

    def _syn_at_edge(self, conn: _Connect, src_pub: Addr) -> None:
        target = self.public.get(conn.dst[0])
        if target is None:
            return
        if isinstance(target, NatBox):
            internal = target.inbound(src_pub, conn.dst[1], self.now)
            if internal is None:
                return
            host = target.hosts.get(internal[0])
            if host is None:
                return
            port = internal[1]
        else:
            host, port = target, conn.dst[1]
        self.at(self.now + host.down, lambda: self._syn_at_host(conn, src_pub, host, port))

    def _syn_at_host(self, conn: _Connect, src_pub: Addr, host: Host, port: int) -> None:
        if conn.state != "syn":
            return
        crossing = host.pending.get((port, src_pub))
        if crossing is not None and crossing.state == "syn":
            kind = "simultaneous open"
        elif port == host.listen_port:
            crossing, kind = None, "accept"
        else:
            return
        if host.nat is not None:  # the SYN-ACK leaves through the receiver's NAT
            host.nat.outbound((host.ip, port), src_pub, self.now)
        conn.state = "done"
        conn.host.pending.pop((conn.port, conn.dst), None)
        if crossing is not None:
            crossing.state = "done"
            host.pending.pop((port, src_pub), None)
        back = self._lat(host, conn.host)
        rtt = back + self._lat(conn.host, host)
        done = self.now + back + rtt  # SYN-ACK back, then one TLS 1.3 round trip
        self.trace.append((self.now, f"{kind} {conn.host.name}->{host.name} ({conn.purpose})"))

        def complete() -> None:
            conn.on_done(True, host, conn.dst)
            if crossing is not None:
                crossing.on_done(True, conn.host, crossing.dst)
            elif host.node is not None:
                host.node.accepted(conn, src_pub)

        self.at(done, complete)

    # -- messages --------------------------------------------------------------------------

    def deliver(self, src: SimNode, dst: SimNode, data: bytes) -> None:
        """Bytes on a direct link: in order, after the link's latency."""
        key = (src.host.name, dst.host.name)
        t = max(self.now + self._lat(src.host, dst.host), self._fifo.get(key, 0.0))
        self._fifo[key] = t
        self.at(t, lambda: dst.receive_bytes(src.key, data) if src.key in dst.direct else None)


def _key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@dataclass
class _Circuit:
    peer: bytes
    role: str
    up: bool = False


class SimNode:
    """One node: the pure NAT machines of ``p2p.nat`` and a shell made of the world."""

    def __init__(
        self,
        world: NatWorld,
        host: Host,
        *,
        servers: tuple[bytes, ...] = (),
        relay: bool = False,
        manager: ManagerConfig | None = None,
        reach: ReachabilityConfig | None = None,
        relay_config: RelayConfig | None = None,
    ) -> None:
        self.world = world
        self.host = host
        host.node = self
        self.key = _key(host.name)
        world.nodes[self.key] = self
        self.servers = servers
        self.observed = ObservedAddresses()
        self.reach = ReachabilityClient(hashlib.sha256(b"entropy" + self.key).digest(), reach)
        self.server = ReachabilityServer(world.now, reach)
        self.relay = RelayService(relay_config, host.public)
        self.relay.set_enabled(relay)
        self.reservations = ReservationClient()
        self.manager = ConnectionManager(self.key, manager)
        self.direct: dict[bytes, Addr] = {}  # peer -> its endpoint as we see it
        self.circuits: dict[tuple[bytes, int], _Circuit] = {}
        self.paths: list[tuple[float, bytes, Path]] = []
        self.punches: list[PunchSucceeded | PunchFailed] = []
        self.status_log: list[tuple[float, str]] = []
        self.dials: list[Dial] = []
        self.expects: list[Expect] = []
        self._timers: set[float] = set()

    @property
    def now(self) -> float:
        return self.world.now

    # -- start -----------------------------------------------------------------------------

    def start(self) -> None:
        for server in self.servers:
            info = PeerInfo((self.world.nodes[server].host.public,), True)
            self.perform(self.manager.learn(server, info, self.now))
            self.perform(self.manager.want(server, self.now))
        self.perform(self.reach.tick(self.now))

    def want(self, peer: bytes) -> None:
        info = self.world.directory.get(peer)
        if info is not None:
            self.perform(self.manager.learn(peer, info, self.now))
        self.perform(self.manager.want(peer, self.now))

    def network_changed(self) -> None:
        self.perform(self.observed.reset())
        self.perform(self.reach.recheck(self.now))

    # -- links -----------------------------------------------------------------------------

    def _dial_done(self, token: int, ok: bool, host: Host | None, seen: Addr | None) -> None:
        if ok and host is not None and host.node is not None and seen is not None:
            self.direct_up(host.node, seen)
        self.perform(self.manager.dial_result(token, ok, self.now))

    def accepted(self, conn: _Connect, seen: Addr) -> None:
        node = conn.host.node
        if node is None or conn.purpose == "dialback":
            return
        self.direct_up(node, seen)

    def direct_up(self, peer: SimNode, seen: Addr) -> None:
        if peer.key in self.direct:
            return
        self.direct[peer.key] = seen
        self.send(peer.key, Identify(seen, (self.host.public,)))
        self.perform(self.manager.link_up(peer.key, DIRECT, self.now))
        self._servers_changed()

    def direct_down(self, peer: bytes) -> None:
        if self.direct.pop(peer, None) is None:
            return
        self.perform(self.relay.peer_disconnected(peer, self.now))
        self.perform(self.reservations.remove_relay(peer, self.now))
        self.perform(self.manager.link_down(peer, DIRECT, self.now))
        self._servers_changed()

    def _servers_changed(self) -> None:
        live = [s for s in self.servers if s in self.direct]
        self.perform(self.reach.set_servers(live, self.now))

    # -- messages --------------------------------------------------------------------------

    def send(self, peer: bytes, msg: NatMessage) -> None:
        drop = self.world.drop
        if drop is not None and drop(self.key, peer, msg):
            return
        data = encode(msg)
        if peer in self.direct:
            self.world.deliver(self, self.world.nodes[peer], data)
            return
        for (relay, cid), c in self.circuits.items():
            if c.peer == peer and c.up:
                self.send(relay, CircuitData(cid, b"M" + data))
                return

    def receive_bytes(self, sender: bytes, data: bytes) -> None:
        self.receive(sender, decode(data))

    def receive(self, sender: bytes, msg: NatMessage) -> None:
        """Route a message to its machine; every kind is named (``assert_never``)."""
        now = self.now
        match msg:
            case Identify():
                host = self.direct.get(sender, ("0.0.0.0", 0))[0]
                self.perform(self.observed.observe(sender, host, msg.observed, now))
            case DialRequest():
                self.perform(self.server.on_request(sender, self.direct.get(sender), msg, now))
            case DialResponse():
                self.perform(self.reach.on_response(sender, msg, now))
            case ReserveResponse():
                self.perform(self.reservations.on_response(sender, msg, now))
            case CircuitData() if (sender, msg.circuit) in self.circuits:
                self._circuit_data(sender, msg)
            case CircuitClose() if (sender, msg.circuit) in self.circuits:
                self.perform(self.manager.on_message(sender, msg, now))
            case (
                ReserveRequest()
                | ConnectRequest()
                | StopResponse()
                | CircuitData()
                | CircuitClose()
            ):
                self.perform(self.relay.on_message(sender, msg, now))
            case ConnectResponse() | StopConnect() | PunchConnect() | PunchSync():
                self.perform(self.manager.on_message(sender, msg, now))
            case DialBack():
                pass  # travels on its own dial-back connection (_dial_back), not here
            case _:
                assert_never(msg)

    def _circuit_data(self, relay: bytes, msg: CircuitData) -> None:
        c = self.circuits[(relay, msg.circuit)]
        data = msg.data
        if data == b"H1" and c.role == "server":
            self.send(relay, CircuitData(msg.circuit, b"H2"))
        elif data == b"H2" and c.role == "client" and not c.up:
            c.up = True
            self.send(relay, CircuitData(msg.circuit, b"H3"))
            self.perform(
                self.manager.link_up(c.peer, Path("relayed", relay, msg.circuit), self.now)
            )
        elif data == b"H3" and c.role == "server" and not c.up:
            c.up = True
            self.perform(
                self.manager.link_up(c.peer, Path("relayed", relay, msg.circuit), self.now)
            )
        elif data[:1] == b"M" and c.up:
            self.receive(c.peer, decode(data[1:]))

    # -- effects ---------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.now
        self._timers.discard(now)
        for machine_tick in (
            self.observed.tick,
            self.reach.tick,
            self.server.tick,
            self.relay.tick,
            self.reservations.tick,
            self.manager.tick,
        ):
            self.perform(machine_tick(now))

    def publish(self) -> None:
        public = self.reach.status == "public"
        addrs = self.reach.reachable if public else self.observed.confirmed
        info = PeerInfo(addrs, public, tuple(self.reservations.active(self.now)))
        self.world.directory[self.key] = info
        for node in self.world.nodes.values():
            st = node.manager.peers.get(self.key)
            if st is not None and st.wanted:
                node.perform(node.manager.learn(self.key, info, self.now))

    def _own_addrs(self) -> tuple[Addr, ...]:
        return self.observed.confirmed or self.observed.latest()

    def perform(self, effects: Iterable[NatEffect]) -> None:
        """Carry out the machines' effects; every kind is named (``assert_never``)."""
        w = self.world
        for e in effects:
            match e:
                case Send(peer, msg):
                    self.send(peer, msg)
                case StartTimer(_, at_time):
                    at = max(at_time, w.now)
                    if at not in self._timers:
                        self._timers.add(at)
                        w.at(at, self.tick)
                case Dial():
                    self.dials.append(e)
                    listen = e.from_listen_port
                    port = self.host.listen_port if listen else w.rng.randint(32768, 60999)
                    w.connect(
                        self.host,
                        port,
                        e.addr,
                        e.deadline,
                        functools.partial(self._dial_done, e.token),
                        "punch" if e.token >= 1 << 40 else "dial",
                        e.peer,
                    )
                case DialBackTo():
                    self._dial_back(e)
                case Expect():
                    self.expects.append(e)
                case CancelDials(peer):
                    w.cancel(self.host, peer)
                case RunRelayedTls():
                    self.circuits[(e.relay, e.circuit)] = _Circuit(e.peer, e.tls_role)
                    if e.tls_role == "client":
                        self.send(e.relay, CircuitData(e.circuit, b"H1"))
                case CloseRelayed():
                    self.circuits.pop((e.relay, e.circuit), None)
                case PathChanged():
                    self.paths.append((w.now, e.peer, e.new))
                case PunchSucceeded() | PunchFailed():
                    self.punches.append(e)
                case AddressesChanged() | MappingChanged():
                    own = self._own_addrs()
                    self.manager.set_own_addrs(own)
                    self.perform(self.reach.set_candidates(own, w.now))
                case ReachabilityChanged():
                    self._reachability(e)
                case ReservationChanged():
                    self.publish()
                case UseRelay():
                    pass  # the manager's own bookkeeping; its ConnectRequest follows
                case _:
                    assert_never(e)

    def _reachability(self, e: ReachabilityChanged) -> None:
        self.status_log.append((self.now, e.new))
        if e.new == "public":
            self.relay.set_enabled(self.relay.enabled, e.addrs[0] if e.addrs else None)
        elif e.new == "private":
            for server in self.servers:
                if server in self.direct:
                    self.perform(self.reservations.add_relay(server, self.now))
                    break
        self.publish()

    def _dial_back(self, e: DialBackTo) -> None:
        world = self.world
        port = world.rng.randint(32768, 60999)  # never the listen port

        def done(ok: bool, host: Host | None, seen: Addr | None) -> None:
            if ok and host is not None and host.node is not None:
                target = host.node
                lat = world._lat(self.host, host)
                world.at(
                    world.now + lat,
                    lambda: target.perform(target.reach.on_dial_back(e.nonce, e.addr, world.now)),
                )
            self.perform(self.server.dial_result(e.token, ok, world.now))

        world.connect(self.host, port, e.addr, e.deadline, done, "dialback", e.peer)


# -- scenarios ---------------------------------------------------------------------------

Side = Literal["public", "eim", "port_restricted", "symmetric"]


@dataclass(frozen=True)
class Scenario:
    """Peer A (behind ``a``) wants a link to peer B (behind ``b``) at ``want_at``."""

    a: Side
    b: Side
    want_at: float = 20.0
    until: float = 90.0
    drop_first_sync: bool = False


@dataclass
class Outcome:
    seed: int
    path_a: Path
    path_b: Path
    time_to_direct: float | None
    reach_a: str
    reach_b: str
    punch_attempts: int
    mapping_a: str
    mapping_b: str
    relay_bytes: int
    trace: list[tuple[float, str]]


def build(
    seed: int, a: Side, b: Side, manager: ManagerConfig | None = None
) -> tuple[NatWorld, SimNode, SimNode, list[SimNode]]:
    """Three public rendezvous nodes (relays, reachability servers) and peers A and B."""
    world = NatWorld(seed)
    rng = world.rng

    def lat() -> tuple[float, float]:
        base = rng.uniform(0.005, 0.15)
        return base, base * rng.uniform(0.3, 3.0)  # asymmetric up/down

    servers = []
    for i in range(3):
        up, down = lat()
        servers.append(world.add_host(f"r{i}", f"198.51.100.{i + 1}", up, down))
    server_keys = tuple(_key(h.name) for h in servers)
    rendezvous = [SimNode(world, h, relay=True) for h in servers]
    peers = []
    for name, side, n in (("a", a, 1), ("b", b, 2)):
        up, down = lat()
        if side == "public":
            host = world.add_host(name, f"203.0.113.{n}", up, down)
        else:
            nat = world.add_nat(side, f"192.0.2.{n}")
            host = world.add_host(name, f"10.0.{n}.2", up, down, nat)
        peers.append(SimNode(world, host, servers=server_keys, manager=manager))
    return world, peers[0], peers[1], rendezvous


def run_scenario(seed: int, scenario: Scenario) -> Outcome:
    world, a, b, rendezvous = build(seed, scenario.a, scenario.b)
    if scenario.drop_first_sync:
        dropped: list[bool] = []

        def drop(src: bytes, dst: bytes, msg: NatMessage) -> bool:
            if isinstance(msg, PunchSync) and not dropped:
                dropped.append(True)
                return True
            return False

        world.drop = drop
    for node in (a, b):
        world.at(0.0, node.start)
    world.at(scenario.want_at, lambda: a.want(b.key))
    world.run(scenario.until)
    direct_at = next((t for t, peer, p in a.paths if peer == b.key and p.kind == "direct"), None)
    return Outcome(
        seed=seed,
        path_a=a.manager.path(b.key),
        path_b=b.manager.path(a.key),
        time_to_direct=None if direct_at is None else direct_at - scenario.want_at,
        reach_a=a.reach.status,
        reach_b=b.reach.status,
        punch_attempts=max(
            (p.attempts if isinstance(p, PunchFailed) else p.attempt) for p in a.punches + b.punches
        )
        if a.punches + b.punches
        else 0,
        mapping_a=a.observed.mapping,
        mapping_b=b.observed.mapping,
        relay_bytes=sum(r.relay.stats().bytes_relayed for r in rendezvous),
        trace=world.trace,
    )
