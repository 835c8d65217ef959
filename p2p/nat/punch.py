"""One hole-punch attempt (DCUtR-style) over a relayed link, for both roles.

The two peers already share an authenticated link through a relay. The *initiator*
(the side that accepted the relayed link) sends ``PunchConnect`` with its candidate
public addresses and starts a clock; the *responder* answers with its own. The
initiator now knows the relayed round-trip time; it sends ``PunchSync`` and dials RTT/2
later, which is when the SYNC reaches the responder, who dials on receipt. Both dial
from their listening ports, so each SYN leaves through the NAT mapping the other side
was told about and opens the filter for the other's SYN: the SYNs cross (TCP
simultaneous open) or one of them lands on an open filter and is accepted.

Either way both ends end up as "dialers" of one TCP connection, so TLS roles cannot
come from who connected: ``tls_role`` derives them from the two keys (smaller key is
the client, as the transport's dialling rule already has it). The first direct link
that completes the authenticated handshake wins; the owner then drops the relayed one.
A failed attempt is retried after a backoff (``max_attempts`` in all, driven by the
initiator); then the peers stay on the relay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from p2p.nat import Dial, Expect, Send, StartTimer, TlsRole
from p2p.nat.messages import Addr, PunchConnect, PunchSync

Role = Literal["initiator", "responder"]
State = Literal["connecting", "syncing", "awaiting_sync", "dialing", "backoff", "idle", "done"]
TOKENS_PER_PUNCH = 1024
"""Dial tokens reserved per punch: ``token_base + attempt * 16 + address index``."""


def tls_role(own: bytes, peer: bytes) -> TlsRole:
    """TLS role on a hole-punched (or any direct) connection: smaller key is the client.

    Symmetric and deterministic: the two ends always pick opposite roles, whoever dialled.
    """
    if own == peer:
        raise ValueError("a node has no TLS role towards itself")
    return "client" if own < peer else "server"


@dataclass(frozen=True)
class PunchConfig:
    """Attempts and timing (seconds). ``dial_timeout`` must cover the SYN retransmissions
    (1 s and 3 s after the first) so a late peer's filter still opens in time."""

    max_attempts: int = 3
    connect_timeout: float = 5.0
    dial_timeout: float = 5.0
    backoff_initial: float = 1.0
    backoff_max: float = 10.0
    max_rtt: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 32:
            raise ValueError(f"PunchConfig.max_attempts={self.max_attempts}: must be in 1..32")
        for name in ("connect_timeout", "dial_timeout", "backoff_initial", "max_rtt"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PunchConfig.{name}={getattr(self, name)}: must be > 0")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("PunchConfig.backoff_max: must be >= backoff_initial")

    def backoff(self, attempt: int) -> float:
        """Pause after failed attempt ``attempt`` (1-based): doubling, capped."""
        return float(min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class PunchSucceeded:
    """A direct link to ``peer`` is up (via ``addr`` if we know it); drop the relayed one."""

    peer: bytes
    addr: Addr | None
    attempt: int
    rtt: float | None


@dataclass(frozen=True)
class PunchFailed:
    """Punching gave up after ``attempts``; stay on the relay."""

    peer: bytes
    reason: str
    attempts: int


@dataclass(frozen=True)
class CancelDials:
    """Abort the punch's dials to ``peer`` still in flight (the attempt is over)."""

    peer: bytes


PunchEffect = Send | StartTimer | Dial | Expect | PunchSucceeded | PunchFailed | CancelDials


@dataclass
class HolePunch:
    """The punch state of one peer pair, from one side. Drive it with ``start`` (initiator),
    ``on_message``, ``dial_result``, ``link_established`` and ``tick``."""

    own: bytes
    peer: bytes
    role: Role
    own_addrs: tuple[Addr, ...]
    token_base: int
    config: PunchConfig = field(default_factory=PunchConfig)
    state: State = "idle"
    attempt: int = 0
    rtt: float | None = None
    peer_addrs: tuple[Addr, ...] = ()
    _sent_at: float = 0.0
    _deadline: float = 0.0
    _dials: dict[int, Addr] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def tls_role(self) -> TlsRole:
        return tls_role(self.own, self.peer)

    def owns(self, token: int) -> bool:
        return self.token_base <= token < self.token_base + TOKENS_PER_PUNCH

    # -- inputs --------------------------------------------------------------------------

    def start(self, now: float) -> list[PunchEffect]:
        """Begin: the initiator sends CONNECT; the responder waits for one."""
        if self.role == "responder":
            self._deadline = now + self.config.connect_timeout
            return [StartTimer("punch-wait", self._deadline)]
        return self._send_connect(now)

    def on_message(self, msg: PunchConnect | PunchSync, now: float) -> list[PunchEffect]:
        if self.done:
            return []
        if isinstance(msg, PunchConnect):
            if self.role == "initiator":
                if self.state != "connecting" or msg.attempt != self.attempt:
                    return []  # a stale or duplicate answer
                self.rtt = min(max(0.0, now - self._sent_at), self.config.max_rtt)
                self.peer_addrs = msg.addrs
                self.state = "syncing"
                self._deadline = now + self.rtt / 2
                return [
                    Send(self.peer, PunchSync(self.attempt)),
                    StartTimer("punch-dial", self._deadline),
                ]
            if msg.attempt <= self.attempt or msg.attempt > self.config.max_attempts:
                return []
            effects: list[PunchEffect] = [CancelDials(self.peer)] if self._dials else []
            self._dials.clear()
            self.attempt = msg.attempt
            self.peer_addrs = msg.addrs
            self.state = "awaiting_sync"
            self._deadline = now + self.config.connect_timeout
            effects += [
                Send(self.peer, PunchConnect(self.attempt, self.own_addrs)),
                StartTimer("punch-sync", self._deadline),
            ]
            return effects
        if (
            self.role == "responder"
            and self.state == "awaiting_sync"
            and msg.attempt == self.attempt
        ):
            return self._dial(now)
        return []

    def dial_result(self, token: int, ok: bool, now: float) -> list[PunchEffect]:
        """Outcome of one of our ``Dial`` effects (after the TLS handshake and key pin)."""
        addr = self._dials.pop(token, None)
        if self.done or not self.owns(token):
            return []
        if ok:
            return self._succeed(addr)
        return []  # the attempt ends at its deadline: the peer's SYN may still come in

    def link_established(self, addr: Addr | None, now: float) -> list[PunchEffect]:
        """A direct authenticated link to the peer came up some other way (an inbound
        connection from the peer's dial, or a crossing SYN): the punch worked."""
        if self.done:
            return []
        return self._succeed(addr)

    def tick(self, now: float) -> list[PunchEffect]:
        if self.done or now < self._deadline:
            return [] if self.done else [StartTimer("punch", self._deadline)]
        if self.state == "syncing":
            return self._dial(now)
        if self.state == "connecting":
            return self._attempt_failed(now, "no CONNECT answer")
        if self.state == "dialing":
            return self._attempt_failed(now, "no direct connection")
        if self.state == "backoff":
            return self._send_connect(now)
        if self.state == "awaiting_sync":
            return self._attempt_failed(now, "no SYNC")
        # responder idle: no (new) CONNECT came
        return self._give_up(f"no CONNECT for attempt {self.attempt + 1}")

    # -- steps ---------------------------------------------------------------------------

    def _send_connect(self, now: float) -> list[PunchEffect]:
        self.attempt += 1
        self.state = "connecting"
        self._sent_at = now
        self._deadline = now + self.config.connect_timeout
        return [
            Send(self.peer, PunchConnect(self.attempt, self.own_addrs)),
            StartTimer("punch-connect", self._deadline),
        ]

    def _dial(self, now: float) -> list[PunchEffect]:
        self.state = "dialing"
        self._deadline = now + self.config.dial_timeout
        role = self.tls_role
        effects: list[PunchEffect] = [Expect(self.peer, self.peer_addrs, role, self._deadline)]
        for i, addr in enumerate(self.peer_addrs[:16]):
            token = self.token_base + (self.attempt % 64) * 16 + i
            self._dials[token] = addr
            effects.append(Dial(self.peer, addr, True, role, self._deadline, token))
        effects.append(StartTimer("punch-dial-deadline", self._deadline))
        return effects

    def _attempt_failed(self, now: float, reason: str) -> list[PunchEffect]:
        effects: list[PunchEffect] = [CancelDials(self.peer)] if self._dials else []
        self._dials.clear()
        if self.attempt >= self.config.max_attempts:
            return effects + self._give_up(reason)
        if self.role == "responder":
            # the initiator drives retries: wait for its next CONNECT, a bit longer than
            # its backoff plus its CONNECT timeout
            self.state = "idle"
            self._deadline = (
                now + self.config.backoff(self.attempt) + 2 * self.config.connect_timeout
            )
            return [*effects, StartTimer("punch-wait", self._deadline)]
        self.state = "backoff"
        self._deadline = now + self.config.backoff(self.attempt)
        return [*effects, StartTimer("punch-backoff", self._deadline)]

    def _succeed(self, addr: Addr | None) -> list[PunchEffect]:
        self.state = "done"
        self._dials.clear()
        return [CancelDials(self.peer), PunchSucceeded(self.peer, addr, self.attempt, self.rtt)]

    def _give_up(self, reason: str) -> list[PunchEffect]:
        self.state = "done"
        self._dials.clear()
        return [PunchFailed(self.peer, reason, self.attempt)]
