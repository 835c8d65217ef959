"""Am I reachable from outside? AutoNAT-style dial-back probes, client and server.

Client: a round asks ``probes`` peers (servers) to dial back our candidate addresses. A
server dials from a fresh ephemeral port, never its listening port: a NAT that has a
mapping towards the server's listening port (the very link the request came on) would
let a dial from that port in and fake reachability. The first message on the dial-back
connection is ``DialBack(nonce)``; an unguessable nonce proves the dial really arrived,
so a server that claims success without it counts for nothing. ``min_agree`` agreeing
answers decide public or private; otherwise the status stays as it was (``unknown`` at
first). Rounds repeat on a schedule and at once when our addresses or network change.

Server: never usable for amplification. It dials only addresses whose IP is the one it
observes the requester's link coming from (no third-party targets), never serves over a
relayed link (no observed IP), answers at most one request per peer at a time, and rate
limits requests globally and per peer with token buckets. Refusals say why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from p2p.nat import Send, StartTimer
from p2p.nat.messages import Addr, DialRequest, DialResponse, Status
from p2p.ratelimit import TokenBucket

Reachability = Literal["unknown", "public", "private"]


@dataclass(frozen=True)
class ReachabilityConfig:
    """Client rounds and server limits; every interval in seconds."""

    probes: int = 3
    min_agree: int = 2
    probe_timeout: float = 15.0
    recheck_public: float = 900.0
    recheck_private: float = 300.0
    recheck_unknown: float = 60.0
    # server side
    dial_timeout: float = 5.0
    requests_per_min: float = 60.0
    requests_per_min_per_peer: float = 6.0
    max_concurrent: int = 8
    max_tracked_peers: int = 1024

    def __post_init__(self) -> None:
        for name in ("probes", "min_agree", "max_concurrent", "max_tracked_peers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReachabilityConfig.{name}={getattr(self, name)}: must be >= 1")
        if self.min_agree > self.probes:
            raise ValueError("ReachabilityConfig.min_agree: must be <= probes")
        for name in (
            "probe_timeout",
            "recheck_public",
            "recheck_private",
            "recheck_unknown",
            "dial_timeout",
            "requests_per_min",
            "requests_per_min_per_peer",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ReachabilityConfig.{name}={getattr(self, name)}: must be > 0")


@dataclass(frozen=True)
class ReachabilityChanged:
    """Our classification changed; ``addrs`` are the addresses proven reachable."""

    old: Reachability
    new: Reachability
    addrs: tuple[Addr, ...]


@dataclass(frozen=True)
class DialBackTo:
    """Server effect: dial ``addr`` from a *fresh ephemeral port* (not the listen port) as
    TLS client pinning ``peer``, send ``DialBack(nonce)`` first, close; report the outcome
    with ``ReachabilityServer.dial_result(token, ok, now)``. Give up at ``deadline``."""

    peer: bytes
    addr: Addr
    nonce: int
    token: int
    deadline: float


ClientEffect = Send | StartTimer | ReachabilityChanged
ServerEffect = Send | DialBackTo


@dataclass
class _Probe:
    server: bytes
    deadline: float
    answer: Literal["pending", "ok", "failed", "none"] = "pending"
    dialed_back: bool = False
    addr: Addr | None = None
    local: Addr | None = None  # where the dial-back landed (our side of it)
    why: str = ""  # the server's refusal code, for ``report``


class ReachabilityClient:
    """Runs probe rounds and keeps the node's classification (public/private/unknown)."""

    def __init__(self, entropy: bytes, config: ReachabilityConfig | None = None) -> None:
        if len(entropy) < 16:
            raise ValueError("entropy: need at least 16 bytes (nonces must be unguessable)")
        self.config = config or ReachabilityConfig()
        self._entropy = entropy
        self._counter = 0
        self.status: Reachability = "unknown"
        self.reachable: tuple[Addr, ...] = ()
        self.rounds = 0
        self._servers: list[bytes] = []
        self._last_used: dict[bytes, int] = {}
        self._candidates: tuple[Addr, ...] = ()
        self._probes: dict[int, _Probe] = {}
        self._asked: set[bytes] = set()
        self._next_round: float | None = 0.0
        self.abandoned = 0
        """Probes dropped unanswered because the network changed (``recheck``)."""
        self.last_round: dict[bytes, str] = {}
        """Each server's answer in the last finished round ("ok", "failed", "none" with
        the refusal code or "no answer"): why a round decided what it did."""

    # -- inputs --------------------------------------------------------------------------

    def set_servers(self, servers: Iterable[bytes], now: float) -> list[ClientEffect]:
        """The peers we may ask (connected directly; relayed links cannot dial back).

        A round already under way asks newly known servers too: a round started with the
        first server alone (a UPnP mapping gives a candidate before the second server's
        link is up) could otherwise never reach ``min_agree`` and would end "unknown"."""
        self._servers = list(dict.fromkeys(servers))
        if self._probes:
            return self._ask_more(now)
        return self._maybe_start(now)

    def set_candidates(self, addrs: Iterable[Addr], now: float) -> list[ClientEffect]:
        """Our candidate public addresses; a change starts a new round at once."""
        new = tuple(dict.fromkeys(addrs))
        if new == self._candidates:
            return []
        self._candidates = new
        return self.recheck(now)

    def recheck(self, now: float) -> list[ClientEffect]:
        """The network changed: abandon the current round and start another now."""
        self.abandoned += sum(1 for p in self._probes.values() if p.answer == "pending")
        self._probes.clear()
        self._next_round = now
        return self._maybe_start(now)

    def on_response(self, peer: bytes, msg: DialResponse, now: float) -> list[ClientEffect]:
        probe = self._probes.get(msg.nonce)
        if probe is None or probe.server != peer or probe.answer != "pending":
            return []
        if msg.status == Status.OK:
            if probe.dialed_back:
                probe.answer = "ok"
            else:
                probe.addr = msg.addr  # not proven yet: the DialBack may still be on its way
                return []
        elif msg.status == Status.DIAL_FAILED and probe.dialed_back:
            # Our nonce came back over the dial: that is the proof, whatever the server
            # concluded (its dial may have outlived its own deadline on a busy machine).
            probe.answer = "ok"
        elif msg.status == Status.DIAL_FAILED:
            probe.answer = "failed"
        else:  # refused, rate limited, bad request: this server tells us nothing
            probe.answer = "none"
            probe.why = _status_name(msg.status)
            effects = self._ask_more(now)
            return effects + self._maybe_finish(now)
        probe.addr = msg.addr or probe.local
        return self._maybe_finish(now)

    def on_dial_back(self, nonce: int, addr: Addr, now: float) -> list[ClientEffect]:
        """An inbound connection on ``addr`` (our listen address as dialled) carried
        ``DialBack(nonce)``: proof that the probe with that nonce reached us.

        The probe is settled by the server's ``DialResponse``, which names the address
        it dialled: behind a port mapping that is the router's address, not ``addr``
        (where the forwarded connection landed). Should the response never come, the
        probe still counts as reached at its deadline, at ``addr``."""
        probe = self._probes.get(nonce)
        if probe is None or probe.answer != "pending":
            return []
        probe.dialed_back = True
        probe.local = addr
        if probe.addr is None:
            return []  # wait for the server's DialResponse (or the probe's deadline)
        probe.answer = "ok"  # the response came first
        return self._maybe_finish(now)

    def report(self) -> dict[str, object]:
        """Rounds so far, the probes of the current round and the last round's answers
        (server keys cut to 16 hex digits), for the node's status."""
        return {
            "rounds": self.rounds,
            "abandoned_probes": self.abandoned,
            "pending": {p.server.hex()[:16]: p.answer for p in self._probes.values()},
            "last_round": {k.hex()[:16]: v for k, v in self.last_round.items()},
        }

    def probing(self, server: bytes) -> bool:
        """Whether a probe to ``server`` is waiting for its dial-back (the shell diverts
        inbound connections from that server to :meth:`on_dial_back`)."""
        return any(p.server == server and p.answer == "pending" for p in self._probes.values())

    def tick(self, now: float) -> list[ClientEffect]:
        effects: list[ClientEffect] = []
        expired = False
        for probe in self._probes.values():
            if probe.answer == "pending" and now >= probe.deadline:
                # a dial-back proves reachability even if the server's answer was lost
                probe.answer = "ok" if probe.dialed_back else "none"
                probe.why = "" if probe.dialed_back else "no answer"
                probe.addr = probe.addr or probe.local
                expired = True
        if expired:
            effects += self._maybe_finish(now)
        effects += self._maybe_start(now)
        return effects

    # -- rounds --------------------------------------------------------------------------

    def _nonce(self) -> int:
        self._counter += 1
        digest = hashlib.blake2b(
            self._counter.to_bytes(8, "big"), key=self._entropy[:64], digest_size=8
        ).digest()
        return int.from_bytes(digest, "big")

    def _maybe_start(self, now: float) -> list[ClientEffect]:
        if self._probes or self._next_round is None or now < self._next_round:
            return [] if self._next_round is None else [StartTimer("reach-round", self._next_round)]
        if not self._servers or not self._candidates:
            # due but impossible: start as soon as servers and candidates are known
            return [StartTimer("reach-round", now + self.config.recheck_unknown)]
        self.rounds += 1
        self._asked = set()
        self._next_round = None
        return self._ask_more(now)

    def _ask_more(self, now: float) -> list[ClientEffect]:
        live = sum(1 for p in self._probes.values() if p.answer in ("pending", "ok", "failed"))
        fresh = [s for s in self._servers if s not in self._asked]
        fresh.sort(key=lambda s: self._last_used.get(s, -1))
        effects: list[ClientEffect] = []
        for server in fresh[: max(0, self.config.probes - live)]:
            nonce = self._nonce()
            deadline = now + self.config.probe_timeout
            self._probes[nonce] = _Probe(server, deadline)
            self._asked.add(server)
            self._last_used[server] = self.rounds
            effects.append(Send(server, DialRequest(nonce, self._candidates)))
            effects.append(StartTimer("reach-probe", deadline))
        return effects

    def _maybe_finish(self, now: float) -> list[ClientEffect]:
        probes = list(self._probes.values())
        if any(p.answer == "pending" for p in probes):
            return []
        ok = [p for p in probes if p.answer == "ok"]
        failed = sum(1 for p in probes if p.answer == "failed")
        need = self.config.min_agree
        new = self.status
        self.last_round = {p.server: f"{p.answer} ({p.why})" if p.why else p.answer for p in probes}
        if len(ok) >= need and len(ok) > failed:
            new = "public"
        elif failed >= need and not ok:
            new = "private"
        self._probes.clear()
        interval = {
            "public": self.config.recheck_public,
            "private": self.config.recheck_private,
            "unknown": self.config.recheck_unknown,
        }[new if len(ok) + failed >= need else "unknown"]
        self._next_round = now + interval
        effects: list[ClientEffect] = [StartTimer("reach-round", self._next_round)]
        addrs = tuple(dict.fromkeys(p.addr for p in ok if p.addr is not None))
        if new != self.status or (new == "public" and addrs != self.reachable):
            effects.insert(0, ReachabilityChanged(self.status, new, addrs))
            self.status = new
            self.reachable = addrs if new == "public" else ()
        return effects


@dataclass
class _Dial:
    peer: bytes
    nonce: int
    addr: Addr
    deadline: float


class ReachabilityServer:
    """Answers dial-back requests without ever becoming an amplifier."""

    def __init__(self, now: float, config: ReachabilityConfig | None = None) -> None:
        self.config = config or ReachabilityConfig()
        c = self.config
        self._global = TokenBucket(c.requests_per_min / 60.0, max(1.0, c.requests_per_min / 6), now)
        self._per_peer: dict[bytes, TokenBucket] = {}
        self._dials: dict[int, _Dial] = {}
        self._token = 0
        self.refused: dict[Status, int] = {}
        self.dial_backs = {"ok": 0, "failed": 0}

    def on_request(
        self, peer: bytes, peer_addr: Addr | None, msg: DialRequest, now: float
    ) -> list[ServerEffect]:
        """``peer_addr`` is the remote address of the direct link the request came on,
        ``None`` if it came over a relay (then we cannot know the requester's IP)."""
        if peer_addr is None:
            return self._refuse(peer, msg, Status.DIAL_REFUSED)
        if any(d.peer == peer for d in self._dials.values()):
            return self._refuse(peer, msg, Status.RATE_LIMITED)
        if len(self._dials) >= self.config.max_concurrent:
            return self._refuse(peer, msg, Status.RATE_LIMITED)
        if not self._peer_bucket(peer, now).consume(1, now) or not self._global.consume(1, now):
            return self._refuse(peer, msg, Status.RATE_LIMITED)
        if not msg.addrs:
            return self._refuse(peer, msg, Status.BAD_REQUEST)
        target = next((a for a in msg.addrs if a[0] == peer_addr[0]), None)
        if target is None:
            return self._refuse(peer, msg, Status.DIAL_REFUSED)
        self._token += 1
        deadline = now + self.config.dial_timeout
        self._dials[self._token] = _Dial(peer, msg.nonce, target, deadline)
        return [DialBackTo(peer, target, msg.nonce, self._token, deadline)]

    def dial_result(self, token: int, ok: bool, now: float) -> list[ServerEffect]:
        dial = self._dials.pop(token, None)
        if dial is None:
            return []
        status = Status.OK if ok else Status.DIAL_FAILED
        self.dial_backs["ok" if ok else "failed"] += 1
        return [Send(dial.peer, DialResponse(dial.nonce, status, dial.addr))]

    def report(self) -> dict[str, object]:
        """Dial-backs done and requests refused (by code), for the node's status."""
        return {
            "dial_backs": dict(self.dial_backs),
            "dialing": len(self._dials),
            "refused": {_status_name(k): v for k, v in self.refused.items()},
        }

    def tick(self, now: float) -> list[ServerEffect]:
        """Dials past their deadline count as failed (the shell may report them late)."""
        late = [t for t, d in self._dials.items() if now >= d.deadline]
        effects: list[ServerEffect] = []
        for token in late:
            effects += self.dial_result(token, False, now)
        return effects

    def _peer_bucket(self, peer: bytes, now: float) -> TokenBucket:
        bucket = self._per_peer.get(peer)
        if bucket is None:
            if len(self._per_peer) >= self.config.max_tracked_peers:
                del self._per_peer[next(iter(self._per_peer))]
            rate = self.config.requests_per_min_per_peer
            bucket = TokenBucket(rate / 60.0, max(1.0, rate / 3), now)
            self._per_peer[peer] = bucket
        return bucket

    def _refuse(self, peer: bytes, msg: DialRequest, status: Status) -> list[ServerEffect]:
        self.refused[status] = self.refused.get(status, 0) + 1
        return [Send(peer, DialResponse(msg.nonce, status))]


def _status_name(status: Status) -> str:
    return status.name.lower().replace("_", "-")
