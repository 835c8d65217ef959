"""Which path reaches each peer (direct, relayed, none), and when to upgrade it.

Policy, in one place:

- **Direct first.** A peer known to be publicly reachable is dialled directly.
- **Else through a relay** where the peer holds a reservation and we have a direct
  link: ``ConnectRequest`` to the relay; the circuit then carries the two peers' own
  TLS link (``RunRelayedTls``), so a relay forwards bytes it cannot read.
- **Then upgrade.** On a relayed link, the side that *accepted* the circuit (the
  reserved, usually private, peer) initiates a hole punch (``punch.HolePunch``); the
  other side answers. The first direct link that authenticates wins: the path becomes
  direct and the relayed link is closed. A failed punch leaves the relayed path in
  place; ``max_upgrade_rounds`` rounds of punching are tried, ``upgrade_retry`` apart at
  first, the pause doubling up to ``upgrade_retry_max``.
- **Loss.** When the path in use goes down, a wanted peer is reconnected by the same
  rules.

The manager is pure like every machine here: the shell feeds it link events, dial
results and NAT-channel messages, and performs the effects it returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from p2p.nat import Dial, Expect, Send, StartTimer, TlsRole
from p2p.nat.messages import (
    Addr,
    CircuitClose,
    ConnectRequest,
    ConnectResponse,
    NatMessage,
    PunchConnect,
    PunchSync,
    Status,
    StopConnect,
    StopResponse,
)
from p2p.nat.punch import (
    TOKENS_PER_PUNCH,
    CancelDials,
    HolePunch,
    PunchConfig,
    PunchFailed,
    PunchSucceeded,
)

PathKind = Literal["direct", "relayed", "none"]


@dataclass(frozen=True)
class Path:
    """How a peer is reached: directly, through ``relay`` on circuit ``circuit``, or not."""

    kind: PathKind
    relay: bytes | None = None
    circuit: int | None = None


MAX_OPEN_CIRCUITS = 4
"""Circuits per peer whose side is remembered until their link comes up; older ones
are forgotten (their links, if any ever came up, then keep the previous side)."""

NO_PATH = Path("none")
DIRECT = Path("direct")


@dataclass(frozen=True)
class PeerInfo:
    """What we know of a peer's addresses (identify, advertisements, config)."""

    direct: tuple[Addr, ...] = ()
    public: bool = False
    relays: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ManagerConfig:
    """Timing (seconds) of connection decisions and of upgrades."""

    punch: PunchConfig = field(default_factory=PunchConfig)
    dial_timeout: float = 10.0
    relay_timeout: float = 15.0
    retry_after: float = 30.0
    upgrade_delay: float = 0.0
    upgrade_retry: float = 30.0
    upgrade_retry_max: float = 600.0
    max_upgrade_rounds: int = 5

    def __post_init__(self) -> None:
        for name in (
            "dial_timeout",
            "relay_timeout",
            "retry_after",
            "upgrade_retry",
            "upgrade_retry_max",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ManagerConfig.{name}={getattr(self, name)}: must be > 0")
        if self.upgrade_retry_max < self.upgrade_retry:
            raise ValueError("ManagerConfig.upgrade_retry_max: must be >= upgrade_retry")
        if self.upgrade_delay < 0 or self.max_upgrade_rounds < 0:
            raise ValueError("ManagerConfig: upgrade_delay and max_upgrade_rounds must be >= 0")


@dataclass(frozen=True)
class UseRelay:
    """Decision: reach ``peer`` through ``relay`` (a ``ConnectRequest`` is on its way)."""

    peer: bytes
    relay: bytes


@dataclass(frozen=True)
class RunRelayedTls:
    """Open a virtual stream on circuit ``circuit`` of ``relay`` (its bytes travel as
    ``CircuitData`` chunks) and run the normal peer TLS link to ``peer`` over it as
    ``tls_role`` (the circuit's initiator is the client), pinning ``peer``'s key.
    Report the outcome with ``link_up``/``link_down`` and ``Path("relayed", relay, circuit)``."""

    peer: bytes
    relay: bytes
    circuit: int
    tls_role: TlsRole


@dataclass(frozen=True)
class CloseRelayed:
    """Tear down the relayed link to ``peer`` (the direct path replaced it, or the relay
    closed the circuit)."""

    peer: bytes
    relay: bytes
    circuit: int


@dataclass(frozen=True)
class PathChanged:
    peer: bytes
    old: Path
    new: Path


ManagerEffect = (
    Send
    | StartTimer
    | Dial
    | Expect
    | CancelDials
    | UseRelay
    | RunRelayedTls
    | CloseRelayed
    | PathChanged
    | PunchSucceeded
    | PunchFailed
)


@dataclass
class PeerStatus:
    """Per-peer state, also the status/metrics view."""

    path: Path = NO_PATH
    info: PeerInfo = PeerInfo()
    wanted: bool = False
    rtt: float | None = None
    upgrade_attempts: int = 0
    upgrade_rounds: int = 0
    direct_upgrades: int = 0
    last_failure: str | None = None
    pending: Literal["", "dial", "relay", "circuit"] = ""
    pending_deadline: float = 0.0
    relays_tried: tuple[bytes, ...] = ()
    circuit_side: Literal["", "initiator", "target"] = ""  # of the path's circuit
    pending_side: Literal["", "initiator", "target"] = ""  # of the circuit being set up
    sides: dict[tuple[bytes, int], Literal["initiator", "target"]] = field(
        default_factory=dict
    )  # circuits handed to the shell, until their link is up (bounded: MAX_OPEN_CIRCUITS)
    punch: HolePunch | None = None
    next_upgrade: float | None = None
    retry_at: float | None = None
    retries: int = 0  # "no usable path" retries scheduled so far (they stretch: see below)


class ConnectionManager:
    """Paths to every known peer, and the decisions that create and upgrade them."""

    def __init__(
        self,
        own: bytes,
        config: ManagerConfig | None = None,
        allowed: frozenset[bytes] | None = None,
    ) -> None:
        self.own = own
        self.config = config or ManagerConfig()
        self._allowed = allowed
        self.peers: dict[bytes, PeerStatus] = {}
        self.own_addrs: tuple[Addr, ...] = ()
        self._token = 0
        self._punches = 0
        self._dials: dict[int, bytes] = {}

    def retry_delay(self, peer: bytes, attempt: int) -> float:
        """``retry_after`` stretched by a factor in [1, 1.5) drawn from (our key, the
        peer's key, ``attempt``). Two public peers that dial each other at once from their
        listening ports collide (a TCP simultaneous open: both run TLS as the client) and
        fail at the same instant; with a fixed period they retry in step and collide again
        forever (seen in the NAT lab). The two sides draw different stretches, so one
        dials while the other listens. A hash, not a random generator: the simulator stays
        a pure function of its seed."""
        seed = self.own + peer + attempt.to_bytes(8, "big")
        draw = int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest(), "big") / 2**64
        return self.config.retry_after * (1.0 + 0.5 * draw)

    def upgrade_delay(self, rounds: int) -> float:
        """Pause before punch round ``rounds + 1``: ``upgrade_retry`` doubling per round,
        capped at ``upgrade_retry_max``. A punch round can fail for a passing reason (a
        loaded host misses the SYN window); a fixed 10-minute wait kept such a pair on the
        relay for minutes, while a NAT that never punches costs only a few more dials."""
        return float(
            min(self.config.upgrade_retry_max, self.config.upgrade_retry * 2 ** (rounds - 1))
        )

    def _peer(self, peer: bytes) -> PeerStatus:
        st = self.peers.get(peer)
        if st is None:
            st = self.peers[peer] = PeerStatus()
        return st

    def path(self, peer: bytes) -> Path:
        st = self.peers.get(peer)
        return NO_PATH if st is None else st.path

    # -- knowledge -------------------------------------------------------------------------

    def set_own_addrs(self, addrs: tuple[Addr, ...]) -> None:
        """Our candidate public addresses (confirmed observed first), sent in CONNECT."""
        self.own_addrs = addrs

    def learn(self, peer: bytes, info: PeerInfo, now: float) -> list[ManagerEffect]:
        st = self._peer(peer)
        st.info = info
        if st.wanted and st.path.kind == "none" and not st.pending:
            return self._connect(peer, st, now)
        return []

    # -- decisions -------------------------------------------------------------------------

    def want(self, peer: bytes, now: float) -> list[ManagerEffect]:
        """We need a link to ``peer``: connect by the best path available."""
        st = self._peer(peer)
        st.wanted = True
        if st.path.kind != "none" or st.pending:
            return []
        st.relays_tried = ()
        return self._connect(peer, st, now)

    def _connect(self, peer: bytes, st: PeerStatus, now: float) -> list[ManagerEffect]:
        st.retry_at = None
        if st.info.public and st.info.direct and not st.relays_tried:
            self._token += 1
            self._dials[self._token] = peer
            st.pending, st.pending_deadline = "dial", now + self.config.dial_timeout
            addr = st.info.direct[0]
            return [
                Dial(peer, addr, True, "client", st.pending_deadline, self._token),
                StartTimer("path-dial", st.pending_deadline),
            ]
        for relay in st.info.relays:
            if relay in st.relays_tried or self.path(relay).kind != "direct":
                continue
            st.relays_tried += (relay,)
            st.pending, st.pending_deadline = "relay", now + self.config.relay_timeout
            return [
                UseRelay(peer, relay),
                Send(relay, ConnectRequest(peer)),
                StartTimer("path-relay", st.pending_deadline),
            ]
        st.pending = ""
        st.retries += 1
        st.retry_at = now + self.retry_delay(peer, st.retries)
        st.last_failure = "no usable path"
        return [StartTimer("path-retry", st.retry_at)]

    # -- link events -----------------------------------------------------------------------

    def link_up(
        self, peer: bytes, path: Path, now: float, rtt: float | None = None
    ) -> list[ManagerEffect]:
        """An authenticated link to ``peer`` over ``path`` is up (dialled or accepted)."""
        st = self._peer(peer)
        if rtt is not None:
            st.rtt = rtt
        if path.kind == "direct":
            return self._direct_up(peer, st, now)
        if st.path.kind == "direct":  # a late relayed link: the direct one already won
            return self._close_relayed(peer, path)
        old, st.path, st.pending = st.path, path, ""
        assert path.relay is not None and path.circuit is not None
        st.circuit_side = st.sides.pop((path.relay, path.circuit), st.circuit_side)
        effects: list[ManagerEffect] = [PathChanged(peer, old, path)]
        if st.circuit_side == "target" and st.upgrade_rounds < self.config.max_upgrade_rounds:
            st.next_upgrade = now + self.config.upgrade_delay
            effects += self._maybe_upgrade(peer, st, now)
        return effects

    def link_down(self, peer: bytes, path: Path, now: float) -> list[ManagerEffect]:
        st = self.peers.get(peer)
        if st is None or st.path != path:
            return []
        old, st.path = st.path, NO_PATH
        effects: list[ManagerEffect] = [PathChanged(peer, old, NO_PATH)]
        if st.punch is not None and not st.punch.done:
            st.punch = None
            effects.append(CancelDials(peer))
        st.next_upgrade = None
        if st.wanted and not st.pending:
            st.relays_tried = ()
            effects += self._connect(peer, st, now)
        # links through a relay that went away are the shell's to close (their circuits
        # get a CircuitClose from the relay, or the relay link's loss ends them)
        return effects

    def set_rtt(self, peer: bytes, rtt: float) -> None:
        self._peer(peer).rtt = rtt

    def dial_result(self, token: int, ok: bool, now: float) -> list[ManagerEffect]:
        peer = self._dials.pop(token, None)
        if peer is not None:  # a plain direct dial
            st = self._peer(peer)
            if st.pending != "dial":
                return []
            st.pending = ""
            if ok:
                return self._direct_up(peer, st, now)
            st.last_failure = "direct dial failed"
            st.relays_tried = ()
            return self._connect_via_relays(peer, st, now)
        for peer, st in self.peers.items():
            if st.punch is not None and st.punch.owns(token):
                return self._punch_effects(peer, st, st.punch.dial_result(token, ok, now), now)
        return []

    def _connect_via_relays(self, peer: bytes, st: PeerStatus, now: float) -> list[ManagerEffect]:
        st.relays_tried = (b"",)  # mark "direct tried" so _connect skips the dial
        return self._connect(peer, st, now)

    def _direct_up(self, peer: bytes, st: PeerStatus, now: float) -> list[ManagerEffect]:
        effects: list[ManagerEffect] = []
        if st.punch is not None and not st.punch.done:
            effects += self._punch_effects(peer, st, st.punch.link_established(None, now), now)
        if st.path.kind == "direct":
            return effects
        old, st.path, st.pending = st.path, DIRECT, ""
        st.next_upgrade = None
        effects.append(PathChanged(peer, old, DIRECT))
        if old.kind == "relayed":
            st.direct_upgrades += 1
            effects += self._close_relayed(peer, old)
        return effects

    def _close_relayed(self, peer: bytes, path: Path) -> list[ManagerEffect]:
        assert path.relay is not None and path.circuit is not None
        return [
            CloseRelayed(peer, path.relay, path.circuit),
            Send(path.relay, CircuitClose(path.circuit, Status.CLOSED)),
        ]

    # -- messages --------------------------------------------------------------------------

    def on_message(self, sender: bytes, msg: NatMessage, now: float) -> list[ManagerEffect]:
        """Circuit signalling from relays and punch signalling from peers."""
        if isinstance(msg, StopConnect):
            return self._stop(sender, msg, now)
        if isinstance(msg, ConnectResponse):
            return self._connect_response(sender, msg, now)
        if isinstance(msg, CircuitClose):
            for peer, st in self.peers.items():
                if st.path.relay == sender and st.path.circuit == msg.circuit:
                    path = st.path
                    return [
                        CloseRelayed(peer, sender, msg.circuit),
                        *self.link_down(peer, path, now),
                    ]
            return []
        if isinstance(msg, PunchConnect | PunchSync):
            return self._punch_message(sender, msg, now)
        return []

    def _stop(self, relay: bytes, msg: StopConnect, now: float) -> list[ManagerEffect]:
        src = msg.src
        allowed = self._allowed is None or src in self._allowed
        st = self._peer(src) if allowed else None
        if st is None or src == self.own or st.path.kind == "direct":
            return [Send(relay, StopResponse(msg.circuit, Status.TARGET_REFUSED))]
        if self._own_circuit_wins(src, st):
            return [Send(relay, StopResponse(msg.circuit, Status.TARGET_REFUSED))]
        self._open_circuit(st, relay, msg.circuit, "target")
        st.pending = "circuit"
        st.pending_deadline = now + self.config.relay_timeout
        return [
            Send(relay, StopResponse(msg.circuit, Status.OK)),
            RunRelayedTls(src, relay, msg.circuit, "server"),
        ]

    @staticmethod
    def _open_circuit(
        st: PeerStatus, relay: bytes, circuit: int, side: Literal["initiator", "target"]
    ) -> None:
        """Remember our side of a circuit until its link is up: the path's side (who
        punches) is that of the circuit the link runs on, not of the last one opened."""
        st.pending_side = side
        st.sides[(relay, circuit)] = side
        while len(st.sides) > MAX_OPEN_CIRCUITS:
            del st.sides[next(iter(st.sides))]

    def _own_circuit_wins(self, src: bytes, st: PeerStatus) -> bool:
        """Whether a circuit ``src`` opens to us loses to our own attempt towards it.

        Two peers that want each other at once both send ``ConnectRequest``; each then
        gets the other's ``StopConnect``. Accepting both made each side a TLS server on
        the other's circuit while ignoring its own ``ConnectResponse`` (no link for
        ``relay_timeout``, then the same collision again), or, in another order, made
        both sides the circuit's "target", so both initiated the hole punch (seen as a
        committee pair behind two EIM NATs staying relayed in a loaded CI run). One
        circuit must win, the same one on both sides: ours if our request already got
        its circuit (the peer accepted it, so it gives up its own), else the one of the
        smaller key."""
        if st.pending == "circuit" and st.pending_side == "initiator":
            return True
        return st.pending == "relay" and self.own < src

    def _connect_response(
        self, relay: bytes, msg: ConnectResponse, now: float
    ) -> list[ManagerEffect]:
        st = self.peers.get(msg.dst)
        in_use = (
            st is not None
            and st.pending == "relay"
            and bool(st.relays_tried)
            and st.relays_tried[-1] == relay
        )
        if not in_use:
            # a circuit we no longer want (the peer's crossing circuit won, or this
            # request timed out): free it at the relay rather than leave it open
            if msg.status == Status.OK:
                return [Send(relay, CircuitClose(msg.circuit, Status.CLOSED))]
            return []
        assert st is not None
        if msg.status != Status.OK:
            st.last_failure = f"relay refused: {msg.status.name}"
            st.pending = ""
            return self._connect(msg.dst, st, now)
        self._open_circuit(st, relay, msg.circuit, "initiator")
        st.pending = "circuit"
        st.pending_deadline = now + self.config.relay_timeout
        return [RunRelayedTls(msg.dst, relay, msg.circuit, "client")]

    # -- upgrades --------------------------------------------------------------------------

    def _maybe_upgrade(self, peer: bytes, st: PeerStatus, now: float) -> list[ManagerEffect]:
        if st.next_upgrade is None or now < st.next_upgrade or st.path.kind != "relayed":
            return [] if st.next_upgrade is None else [StartTimer("upgrade", st.next_upgrade)]
        st.next_upgrade = None
        st.upgrade_rounds += 1
        st.punch = self._new_punch(peer, "initiator")
        return self._punch_effects(peer, st, st.punch.start(now), now)

    def _new_punch(self, peer: bytes, role: Literal["initiator", "responder"]) -> HolePunch:
        self._punches += 1
        base = (1 << 40) + self._punches * TOKENS_PER_PUNCH
        return HolePunch(self.own, peer, role, self.own_addrs, base, self.config.punch)

    def _punch_message(
        self, peer: bytes, msg: PunchConnect | PunchSync, now: float
    ) -> list[ManagerEffect]:
        st = self.peers.get(peer)
        if st is None or st.path.kind != "relayed":
            return []
        fresh = st.punch is None or st.punch.done
        if isinstance(msg, PunchConnect) and st.circuit_side == "initiator" and fresh:
            # the circuit's target initiates punching; we answer as responder
            st.punch = self._new_punch(peer, "responder")
            st.upgrade_rounds += 1
        if st.punch is None:
            return []
        return self._punch_effects(peer, st, st.punch.on_message(msg, now), now)

    def _punch_effects(
        self, peer: bytes, st: PeerStatus, effects: Sequence[object], now: float
    ) -> list[ManagerEffect]:
        out: list[ManagerEffect] = []
        for e in effects:
            if isinstance(e, Dial):
                st.upgrade_attempts += 1
            if isinstance(e, PunchFailed):
                st.last_failure = f"punch failed: {e.reason}"
                if (
                    st.circuit_side == "target"
                    and st.upgrade_rounds < self.config.max_upgrade_rounds
                ):
                    st.next_upgrade = now + self.upgrade_delay(st.upgrade_rounds)
                    out.append(StartTimer("upgrade", st.next_upgrade))
            assert isinstance(
                e, Send | StartTimer | Dial | Expect | CancelDials | PunchSucceeded | PunchFailed
            )
            out.append(e)
            if isinstance(e, PunchSucceeded):
                out += self._direct_up(peer, st, now)
        return out

    def tick(self, now: float) -> list[ManagerEffect]:
        effects: list[ManagerEffect] = []
        for peer, st in list(self.peers.items()):
            if st.pending in ("dial", "relay", "circuit") and now >= st.pending_deadline:
                kind, st.pending = st.pending, ""
                st.last_failure = f"{kind} timed out"
                if st.path.kind != "none":
                    pass  # a crossing circuit that never came up; the path still works
                elif kind == "dial":
                    effects += self._connect_via_relays(peer, st, now)
                elif st.wanted:
                    effects += self._connect(peer, st, now)
            if st.retry_at is not None and now >= st.retry_at and st.path.kind == "none":
                st.relays_tried = ()
                effects += self._connect(peer, st, now)
            if st.punch is not None and not st.punch.done:
                effects += self._punch_effects(peer, st, st.punch.tick(now), now)
            effects += self._maybe_upgrade(peer, st, now)
        return effects
