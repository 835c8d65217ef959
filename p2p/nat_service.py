"""The asyncio shell of NAT traversal: the pure machines of :mod:`p2p.nat` on real links.

One :class:`NatService` per node wires the observed-address tracker, the reachability
client and server, the relay service, the reservation client and the connection manager
to a :class:`~p2p.transport.PeerTransport`: NAT messages travel on their own channel
(frame kind 4), timers are loop timers, dials and dial-backs are tasks, and a relayed
circuit carries the two peers' own TLS link (:mod:`p2p.nat.relayed`) that the transport
then adopts like any other. Its effect dispatch mirrors ``sim.nat.SimNode.perform``,
which runs the same machines in the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, assert_never

from p2p.errors import P2PError
from p2p.framing import HEADER, FrameKind
from p2p.identity import peer_id, short_id
from p2p.link import Direction
from p2p.nat import Dial, Expect, Send, StartTimer, TlsRole
from p2p.nat.manager import (
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
    NatDecodeError,
    NatMessage,
    PunchConnect,
    PunchSync,
    ReserveRequest,
    ReserveResponse,
    Status,
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
    ReservationConfig,
)
from p2p.nat_dialer import ExpectTable, dial_back, punch_dial
from p2p.relayed import RelayedStream, open_relayed_tls
from p2p.transport import PeerTransport
from p2p.upnp import UpnpConfig, UpnpMapper

PATH_CHANGES_KEPT = 256  # recent path changes kept for status and tests

NatEffect = (
    ManagerEffect | ObservedEffect | ReachEffect | ServerEffect | RelayEffect | ReservationEffect
)
"""Every effect the NAT machines return (each module's own union): :meth:`NatService.perform`
names each kind, so mypy reports one it does not handle."""

DIRECT = Path("direct")
DIAL_BACK_READ_TIMEOUT = 5.0
RELAYED_HANDSHAKE_TIMEOUT = 15.0


@dataclass(frozen=True)
class NatConfig:
    """``relays``: public peers (key -> address) that serve as rendezvous, reachability
    servers and relays. ``offer_relay``: run the relay service (from the start: set it
    on nodes known to be public, such as a rendezvous).
    ``reserve``: take a reservation at every relay at once instead of waiting until
    reachability says we are private (faster start-up behind a NAT).
    ``upnp``: ask the LAN's UPnP IGD router to forward our listening port
    (:mod:`p2p.upnp`); the mapped address is verified by dial-back like any other."""

    relays: Mapping[bytes, Addr] = field(default_factory=dict)
    offer_relay: bool = False
    reserve: bool = False
    upnp: bool = False
    upnp_config: UpnpConfig = field(default_factory=UpnpConfig)
    manager: ManagerConfig = field(default_factory=ManagerConfig)
    reach: ReachabilityConfig = field(default_factory=ReachabilityConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    reservation: ReservationConfig = field(default_factory=ReservationConfig)


class NatService:
    """NAT traversal for one node's transport (see the module docstring)."""

    def __init__(self, transport: PeerTransport, config: NatConfig, logger: logging.Logger) -> None:
        self.transport = transport
        self.config = config
        self.log = logger
        self.key = transport.identity.public_key
        self.observed = ObservedAddresses()
        self.reach = ReachabilityClient(os.urandom(32), config.reach)
        self.server: ReachabilityServer | None = None
        self.relay = RelayService(config.relay)
        self.relay.set_enabled(False)
        self.reservations = ReservationClient(config.reservation)
        self.manager = ConnectionManager(self.key, config.manager)
        self.circuits: dict[tuple[bytes, int], RelayedStream] = {}
        self.relayed_peer: dict[bytes, tuple[bytes, int]] = {}
        self.expects = ExpectTable()
        self.dials: dict[bytes, set[asyncio.Task[None]]] = {}
        # The recent path changes (a peer whose link flaps makes one per flap: the
        # whole history grew for the daemon's lifetime) and punch outcomes as counts.
        self.path_changes: deque[tuple[float, bytes, str]] = deque(maxlen=PATH_CHANGES_KEPT)
        self.punch_counts = {"succeeded": 0, "failed": 0}
        self.faults = 0
        self._wanted: set[bytes] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Every pending StartTimer deadline: the machines do not re-announce a later
        # deadline when an earlier timer fires, so one coalesced timer would lose it
        # (a lost "path-retry" left a peer without any path forever in the NAT lab).
        self._deadlines: list[float] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.mapped: tuple[Addr, ...] = ()
        """Addresses a port mapping on our router (UPnP) forwards to our listener; fed to
        reachability as candidates, so a dial-back verifies them before we advertise."""
        self.listeners: list[Callable[[], None]] = []
        """Called after anything that changes what we should advertise: reachability,
        observed addresses, reservations (the mesh re-signs its records)."""
        self._link_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self.upnp: UpnpMapper | None = None
        transport.accept_role = self._accept_role
        transport.divert = self._divert

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def start(self) -> None:
        """Call once the transport is started (its listening address is known)."""
        self.server = ReachabilityServer(self.now, self.config.reach)
        if self.config.offer_relay:  # the operator says this node is public: serve at once
            self.relay.set_enabled(True, self.transport.bound_address)
        for relay, addr in self.config.relays.items():
            if relay == self.key:
                continue
            self.transport.defer_dial(relay)  # we dial it: no second dial from elsewhere
            self.perform(self.manager.learn(relay, PeerInfo((addr,), True), self.now))
            self.perform(self.manager.want(relay, self.now))
        bound = self.transport.bound_address
        if self.config.upnp and bound is not None:
            self.upnp = UpnpMapper(
                bound[1], self.set_mapped, self.log.getChild("upnp"), self.config.upnp_config
            )
            self.upnp.start()
        self.tick()

    async def close(self) -> None:
        self._closed = True
        if self.upnp is not None:
            await self.upnp.close()  # deletes the mapping on the router
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for stream in self.circuits.values():
            stream.close()

    def want(self, peer: bytes, info: PeerInfo) -> None:
        """We need a link to ``peer`` (a committee member): direct, punched or relayed.

        Only the smaller key of a pair drives it, as the transport's dialling does, so
        two peers never open two circuits to each other.
        """
        self.perform(self.manager.learn(peer, info, self.now))
        if self.key < peer:
            self._wanted.add(peer)
            self.perform(self.manager.want(peer, self.now))

    # -- transport events ----------------------------------------------------------------

    def on_connected(self, peer: bytes) -> None:
        now = self.now
        relayed = self.relayed_peer.get(peer)
        path_name = self.transport.path_of(peer)
        if path_name is not None and path_name != "direct" and relayed is not None:
            self.perform(self.manager.link_up(peer, Path("relayed", *relayed), now))
            self._wake(peer)
            return
        self.relayed_peer.pop(peer, None)  # a direct link replaced the relayed one
        addrs = self.transport.link_addresses(peer)
        if addrs is not None and _is_addr(addrs[1]):
            bound = self.transport.bound_address
            listen = (bound,) if bound is not None else ()
            self.send(peer, Identify(_addr(addrs[1]), listen))
        self.perform(self.manager.link_up(peer, DIRECT, now))
        self._wake(peer)
        if peer in self.config.relays:
            self._servers_changed()
            if self.config.reserve or self.reach.status == "private":
                self.perform(self.reservations.add_relay(peer, now))
            # Peers that found no usable path before this relay came up retry now, not
            # after the manager's retry delay.
            for other in list(self._wanted):
                if self.manager.path(other).kind == "none":
                    self.perform(self.manager.want(other, now))

    def on_disconnected(self, peer: bytes) -> None:
        now = self.now
        relayed = self.relayed_peer.pop(peer, None)
        path = Path("relayed", *relayed) if relayed is not None else DIRECT
        self.perform(self.manager.link_down(peer, path, now))
        if relayed is None:
            self.perform(self.relay.peer_disconnected(peer, now))
            self.perform(self.reservations.remove_relay(peer, now))
            for (relay, cid), stream in list(self.circuits.items()):
                if relay == peer:
                    stream.remote_closed("relay link lost")
                    del self.circuits[(relay, cid)]
            if peer in self.config.relays:
                self._servers_changed()

    def on_frame(self, peer: bytes, data: bytes) -> None:
        """A frame on the NAT channel."""
        try:
            msg = decode(data)
        except NatDecodeError as exc:
            self.faults += 1
            self.log.warning("bad NAT message", extra={"peer": short_id(peer), "reason": str(exc)})
            return
        self.receive(peer, msg)

    def receive(self, sender: bytes, msg: NatMessage) -> None:
        """Hand a message to the machine it is for. Every kind is named (mypy checks
        it: ``assert_never``), so a new message kind is an error here until routed."""
        now = self.now
        match msg:
            case Identify():
                addrs = self.transport.link_addresses(sender)
                seen = addrs is not None and _is_addr(addrs[1])
                host = _addr(addrs[1])[0] if addrs is not None and seen else "0.0.0.0"
                self.perform(self.observed.observe(sender, host, msg.observed, now))
                # Until two observers confirm an address, the latest observation is our
                # best candidate for a punch (one rendezvous is enough to try).
                if not self.observed.confirmed:
                    self.manager.set_own_addrs(self.observed.latest())
            case DialRequest():
                if self.server is not None:
                    addrs = self.transport.link_addresses(sender)
                    at = _addr(addrs[1]) if addrs is not None and _is_addr(addrs[1]) else None
                    if self.transport.path_of(sender) != "direct":
                        at = None  # a relayed requester cannot be dialled back
                    self.perform(self.server.on_request(sender, at, msg, now))
            case DialResponse():
                self.perform(self.reach.on_response(sender, msg, now))
            case ReserveResponse():
                self.perform(self.reservations.on_response(sender, msg, now))
            case CircuitData() if (sender, msg.circuit) in self.circuits:
                self.circuits[(sender, msg.circuit)].feed(msg.data)
            case CircuitClose() if (sender, msg.circuit) in self.circuits:
                stream = self.circuits.pop((sender, msg.circuit))
                stream.remote_closed(f"relay closed the circuit: {msg.status.name}")
                self.perform(self.manager.on_message(sender, msg, now))
            case (
                ReserveRequest()
                | ConnectRequest()
                | StopResponse()
                | CircuitData()
                | CircuitClose()
            ):
                self.perform(self.relay.on_message(sender, msg, now))  # we relay these
            case ConnectResponse() | StopConnect() | PunchConnect() | PunchSync():
                self.perform(self.manager.on_message(sender, msg, now))
            case DialBack():
                pass  # read on the dial-back connection itself; a late one means nothing
            case _:
                assert_never(msg)

    # -- effects -------------------------------------------------------------------------

    def send(self, peer: bytes, msg: NatMessage) -> None:
        self.transport.send(peer, encode(msg), kind=FrameKind.NAT)

    def tick(self) -> None:
        if self._closed:
            return
        self._timer = None
        now = self.now
        machines: list[Callable[[float], Sequence[NatEffect]]] = [
            self.observed.tick,
            self.reach.tick,
            self.relay.tick,
            self.reservations.tick,
            self.manager.tick,
        ]
        if self.server is not None:
            machines.append(self.server.tick)
        while self._deadlines and self._deadlines[0] <= now:
            heapq.heappop(self._deadlines)
        for machine_tick in machines:
            self.perform(machine_tick(now))
        self.expects.expire(now)
        if self._deadlines:  # re-arm for the earliest deadline still pending
            self._schedule(self._deadlines[0], remember=False)

    def _schedule(self, at: float, remember: bool = True) -> None:
        if self._closed:
            return
        if remember:
            heapq.heappush(self._deadlines, at)
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self.tick)

    def perform(self, effects: Iterable[NatEffect]) -> None:
        """Carry out the machines' effects in order. Every kind is named (mypy checks
        it: ``assert_never``), so a new effect kind is an error here until decided."""
        for e in effects:
            match e:
                case Send(peer, msg):
                    self.send(peer, msg)
                case StartTimer(_, at):
                    self._schedule(at)
                case Dial():
                    self._spawn(e.peer, self._dial(e))
                case DialBackTo():
                    self._spawn(e.peer, self._dial_back(e))
                case Expect():
                    self.expects.add(e, self.now)
                case CancelDials(peer):
                    for task in self.dials.pop(peer, set()):
                        task.cancel()
                case RunRelayedTls():
                    # Registered now, not in the task: circuit data may arrive before it runs.
                    self.circuits[(e.relay, e.circuit)] = self._stream(e.relay, e.circuit)
                    self._spawn(e.peer, self._relayed(e))
                case CloseRelayed():
                    stream = self.circuits.pop((e.relay, e.circuit), None)
                    if stream is not None:
                        stream.close()
                case PathChanged():
                    self._path_changed(e)
                case PunchSucceeded() | PunchFailed():
                    outcome = "succeeded" if type(e) is PunchSucceeded else "failed"
                    self.punch_counts[outcome] += 1
                    self.log.info("hole punch " + outcome, extra={"peer": short_id(e.peer)})
                case AddressesChanged() | MappingChanged():
                    own = self.observed.confirmed or self.observed.latest()
                    self.manager.set_own_addrs(own)
                    self.perform(self.reach.set_candidates(self._candidates(own), self.now))
                    self._changed()
                case ReachabilityChanged():
                    self._reachability(e)
                    self._changed()
                case ReservationChanged():
                    self._changed()  # the mesh advertises it in our signed relay record
                case UseRelay():
                    pass  # the manager's own bookkeeping; its ConnectRequest follows
                case _:
                    assert_never(e)

    # -- port mapping, advertisement, relays found in the DHT -----------------------------

    def set_mapped(self, addrs: Iterable[Addr]) -> None:
        """Our router forwards ``addrs`` to our listener (UPnP), or nothing (empty).

        They become reachability candidates ahead of the observed addresses: a
        reachability server dials each candidate's IP, so a mapped address on the
        router's WAN IP is verified by dial-back like any other, and only a verified
        one is ever advertised (``reach.reachable``)."""
        new = tuple(dict.fromkeys(addrs))
        if new == self.mapped:
            return
        self.mapped = new
        own = self.observed.confirmed or self.observed.latest()
        self.perform(self.reach.set_candidates(self._candidates(own), self.now))  # rechecks
        self._changed()

    def _candidates(self, own: Iterable[Addr]) -> tuple[Addr, ...]:
        return tuple(dict.fromkeys((*self.mapped, *own)))

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()

    def reservation_addrs(self) -> dict[bytes, Addr | None]:
        """Relays holding a live reservation for us, with their public address: the one
        the relay announced, else the one we dialled it at (configuration or link)."""
        out: dict[bytes, Addr | None] = {}
        for relay, addr in self.reservations.active(self.now).items():
            if addr is None or addr[0] in ("0.0.0.0", "::", ""):
                addr = self.config.relays.get(relay)
            if addr is None:
                link = self.transport.link_addresses(relay)
                addr = _addr(link[1]) if link is not None and _is_addr(link[1]) else None
            out[relay] = addr
        return out

    def observed_addrs(self) -> tuple[Addr, ...]:
        """Every address peers currently report seeing us at."""
        return tuple(dict.fromkeys((*self.observed.confirmed, *self.observed.latest())))

    async def connect_via(self, peer: bytes, relays: Mapping[bytes, Addr], timeout: float) -> bool:
        """Link to ``peer`` through one of ``relays`` (learned from its signed relay
        record, not from our configuration); True once a link is up.

        A relay needs a direct link from us first: relays we are not linked to are
        dialled (the TLS handshake proves their key). Then the connection manager asks
        a relay for a circuit as it does for configured relays; the circuit carries our
        own TLS link to ``peer``. This side drives even if its key is the larger one:
        ``peer`` does not know it is wanted (an on-demand fetch).
        """
        if self.transport.has_link(peer):
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        usable: list[bytes] = []
        for relay, addr in relays.items():
            if relay in (self.key, peer):
                continue
            self.perform(self.manager.learn(relay, PeerInfo((addr,), True), self.now))
            if not self.transport.has_link(relay):
                try:
                    await self.transport.connect(relay, addr, timeout=deadline - loop.time())
                except (P2PError, TimeoutError, OSError) as exc:
                    self.log.info(
                        "relay dial failed", extra={"relay": short_id(relay), "reason": str(exc)}
                    )
                    continue
            if await self._await_link(relay, deadline - loop.time(), direct=True):
                usable.append(relay)
        if not usable:
            return False
        self.perform(self.manager.learn(peer, PeerInfo((), False, tuple(usable)), self.now))
        self._wanted.add(peer)
        self.perform(self.manager.want(peer, self.now))
        return await self._await_link(peer, deadline - loop.time(), direct=False)

    async def _await_link(self, peer: bytes, timeout: float, *, direct: bool) -> bool:
        """Wait until the connection manager has a path to ``peer`` (a direct one if
        ``direct``): woken by ``on_connected``, not polled."""

        def ready() -> bool:
            kind = self.manager.path(peer).kind
            return kind == "direct" if direct else kind != "none"

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not ready():
            left = end - loop.time()
            if left <= 0 or self._closed:
                return False
            fut: asyncio.Future[None] = loop.create_future()
            self._link_waiters.setdefault(peer, []).append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                return ready()
            finally:
                waiters = self._link_waiters.get(peer, [])
                if fut in waiters:
                    waiters.remove(fut)
        return True

    def _wake(self, peer: bytes) -> None:
        for fut in self._link_waiters.pop(peer, []):
            if not fut.done():
                fut.set_result(None)

    def _spawn(self, peer: bytes, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        self.dials.setdefault(peer, set()).add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(functools.partial(self._dial_done, peer))

    def _dial_done(self, peer: bytes, task: asyncio.Task[None]) -> None:
        """Forget a finished dial, and the peer once it has none (every peer that asks
        for a dial-back gets an entry: kept, they would pile up with new identities)."""
        tasks = self.dials.get(peer)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self.dials[peer]

    def _path_changed(self, e: PathChanged) -> None:
        name = e.new.kind if e.new.relay is None else f"relayed:{e.new.relay.hex()[:16]}"
        self.path_changes.append((self.now, e.peer, name))
        self.log.info("peer path", extra={"peer": short_id(e.peer), "path": name})

    def _reachability(self, e: ReachabilityChanged) -> None:
        self.log.info("reachability", extra={"status": e.new, "addrs": list(e.addrs)})
        now = self.now
        if e.new == "public":
            self.relay.set_enabled(self.config.offer_relay, e.addrs[0] if e.addrs else None)
        elif e.new == "private":
            for relay in self.config.relays:
                if self.transport.path_of(relay) == "direct":
                    self.perform(self.reservations.add_relay(relay, now))

    def _servers_changed(self) -> None:
        live = [r for r in self.config.relays if self.transport.path_of(r) == "direct"]
        self.perform(self.reach.set_servers(live, self.now))

    # -- tasks ---------------------------------------------------------------------------

    async def _dial(self, e: Dial) -> None:
        bound = self.transport.bound_address
        ok = False
        try:
            assert bound is not None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(0.1, e.deadline - self.now)
            reader, writer = await punch_dial(
                bound if e.from_listen_port else (bound[0], 0),
                e.addr,
                self.transport.address_family,
                e.tls_role,
                self.transport.client_context,
                self.transport.server_context,
                e.peer,
                deadline,
            )
            direction: Direction = "outbound" if e.tls_role == "client" else "inbound"
            ok = self.transport.adopt(e.peer, direction, reader, writer, "direct")
            ok = ok or self.transport.path_of(e.peer) == "direct"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.info("NAT dial failed", extra={"peer": short_id(e.peer), "reason": repr(exc)})
        if not self._closed:
            self.perform(self.manager.dial_result(e.token, ok, self.now))

    async def _dial_back(self, e: DialBackTo) -> None:
        ok = False
        try:
            ok = await dial_back(
                e.addr, e.nonce, self.transport.client_context, e.peer, DIAL_BACK_READ_TIMEOUT
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.info("dial-back failed", extra={"addr": e.addr, "reason": repr(exc)})
        if not self._closed and self.server is not None:
            self.perform(self.server.dial_result(e.token, ok, self.now))

    def _stream(self, relay: bytes, circuit: int) -> RelayedStream:
        def send_chunk(data: bytes) -> bool:
            return self.transport.send(relay, encode(CircuitData(circuit, data)), FrameKind.NAT)

        def on_closed(notify_relay: bool) -> None:
            self.circuits.pop((relay, circuit), None)
            if notify_relay:  # we ended it (close, TLS error, pin refusal): tell the relay
                self.send(relay, CircuitClose(circuit, Status.CLOSED))

        return RelayedStream(send_chunk, on_closed=on_closed)

    async def _relayed(self, e: RunRelayedTls) -> None:
        relay, circuit = e.relay, e.circuit
        stream = self.circuits.get((relay, circuit))
        if stream is None:
            return
        try:
            reader, writer = await open_relayed_tls(
                stream,
                e.tls_role,
                self.transport.client_context,
                self.transport.server_context,
                e.peer,
                RELAYED_HANDSHAKE_TIMEOUT,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.info(
                "relayed TLS failed", extra={"peer": short_id(e.peer), "reason": repr(exc)}
            )
            self.circuits.pop((relay, circuit), None)
            stream.close()
            return
        self.relayed_peer[e.peer] = (relay, circuit)
        direction: Direction = "outbound" if e.tls_role == "client" else "inbound"
        if not self.transport.adopt(e.peer, direction, reader, writer, f"relayed:{relay.hex()}"):
            self.relayed_peer.pop(e.peer, None)

    # -- transport hooks -----------------------------------------------------------------

    def _accept_role(self, addr: object) -> TlsRole | None:
        """An accepted connection from an address we are punching towards: use the
        punch's TLS role (the simultaneous open may have landed on our listener)."""
        if not _is_addr(addr):
            return None
        match = self.expects.match(_addr(addr), self.now)
        return None if match is None else match.role

    def _divert(
        self, key: bytes, addr: object, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """A reachability server dialling us back: read its DialBack, do not keep the link."""
        if not self.reach.probing(key):
            return False
        local = writer.get_extra_info("sockname")
        self._spawn(key, self._read_dial_back(reader, writer, local))
        return True

    async def _read_dial_back(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, local: object
    ) -> None:
        try:
            async with asyncio.timeout(DIAL_BACK_READ_TIMEOUT):
                header = await reader.readexactly(HEADER.size)
                length, kind = HEADER.unpack(header)
                if kind != FrameKind.NAT or length > 4096:
                    return
                msg = decode(await reader.readexactly(length))
            if isinstance(msg, DialBack) and _is_addr(local):
                bound = self.transport.bound_address
                addr = bound if bound is not None else _addr(local)
                self.perform(self.reach.on_dial_back(msg.nonce, addr, self.now))
        except (TimeoutError, asyncio.IncompleteReadError, NatDecodeError, OSError):
            pass
        finally:
            writer.transport.abort()

    # -- status --------------------------------------------------------------------------

    def count_paths(self, kind: str) -> float:
        return float(sum(1 for st in self.manager.peers.values() if st.path.kind == kind))

    def rtt(self, peer: bytes) -> float:
        """Seconds; the link's keep-alive RTT (-1 while unknown)."""
        st = self.transport.stats().get(peer_id(peer), {})
        rtt_ms = st.get("rtt_ms")
        return float(rtt_ms) / 1000.0 if isinstance(rtt_ms, int | float) else -1.0

    def _rtt_ms(self, peer: bytes) -> float | None:
        rtt = self.rtt(peer)
        return None if rtt < 0 else round(rtt * 1000, 1)

    def punches_succeeded(self) -> float:
        return float(self.punch_counts["succeeded"])

    def punches_failed(self) -> float:
        return float(self.punch_counts["failed"])

    def relay_circuits(self) -> float:
        return float(self.relay.stats().circuits)

    def relay_bytes(self) -> float:
        return float(self.relay.stats().bytes_relayed)

    def status(self) -> dict[str, Any]:
        """Reachability, addresses, relay service and every peer's path, for /v1/status."""
        rs = self.relay.stats()
        now = self.now
        peers: dict[str, Any] = {}
        for peer, st in self.manager.peers.items():
            peers[peer.hex()[:16]] = {
                "path": st.path.kind,
                "relay": st.path.relay.hex()[:16] if st.path.relay is not None else None,
                "rtt_ms": round(st.rtt * 1000, 1) if st.rtt is not None else self._rtt_ms(peer),
                "upgrade_attempts": st.upgrade_attempts,
                "direct_upgrades": st.direct_upgrades,
                "last_failure": st.last_failure,
            }
        return {
            "reachability": self.reach.status,
            "reachable_addrs": [list(a) for a in self.reach.reachable],
            "observed_addrs": [list(a) for a in self.observed.confirmed],
            "mapping": self.observed.mapping,
            "mapped_addrs": [list(a) for a in self.mapped],
            "upnp": self.upnp.status() if self.upnp is not None else None,
            "reservations": {
                k.hex()[:16]: (list(a) if a is not None else None)
                for k, a in self.reservations.active(now).items()
            },
            "relay_service": {
                "enabled": self.relay.enabled,
                **{k: v for k, v in vars(rs).items() if isinstance(v, int | float)},
            },
            "peers": peers,
            "punches": dict(self.punch_counts),
            "faults": self.faults,
            "reach_client": self.reach.report(),
            "reach_server": self.server.report() if self.server is not None else None,
        }


def _is_addr(addr: object) -> bool:
    return isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str)


def _addr(addr: object) -> Addr:
    assert isinstance(addr, tuple)
    return (str(addr[0]), int(addr[1]))


__all__ = ["NatConfig", "NatService"]
