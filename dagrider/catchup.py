"""Catch-up: what a lagging member asks for, from whom and when; what a member serves.

Reliable broadcast alone cannot bring back a member that was away longer than its
peers' in-memory window (``gc_depth`` rounds): the votes and vertices it missed were
garbage-collected from their memory, and a resync after reconnecting resends only live
rounds. Such a member asks peers to replay rounds from their stores (our own READY
votes and the vertices they voted for, plus our coin shares); the asker runs them
through normal reliable broadcast, so nothing served is trusted: a READY from one peer
is one vote of 2f+1, a vertex must match the digest a quorum delivered.

This module is the policy, as a pure state machine driven by a clock the caller passes
in: the daemon (:mod:`dagrider.node.runtime`) ticks it every :attr:`CatchupPolicy.period`
seconds of wall time and the simulator every period of virtual time, and both answer
requests through :meth:`CatchupServer.serve`. The shells only read their stores and
send what the decisions say.

Why each rule:

* A round counts as *seen* only when f+1 members vouch for it
  (:meth:`dagrider.rbc.ReliableBroadcast.proven_round`): one Byzantine frame claiming
  round 2**48 must not make every node ask its peers forever.
* *Behind* means the proven round is more than half the GC window ahead of ours; *stuck*
  means a parent of a buffered vertex is missing and we made no round for a whole period
  (a vertex whose parents never existed waits while rounds go on, and must not make us
  ask every period); *stalled* means no new round for a while with nothing missing that
  we know of (messages beyond our lookahead were dropped before we could take them, e.g.
  after a restart): ask again with exponential backoff, 2, 4, 8... periods.
* Ask f+1 peers at a time, rotating, so that at least one correct member is asked and
  over ``ceil((n-1)/(f+1))`` periods every peer is; asking all n-1 would multiply every
  answer (up to :attr:`CatchupPolicy.max_bytes`) by n-1 for nothing at large n.
* Serve each peer from a token bucket of :attr:`CatchupPolicy.burst` answers, one back
  per period: a correct asker asks at most once per period (timer jitter included), and
  answering more often would let one member turn small requests into our whole store
  again and again. One answer covers at most :attr:`CatchupPolicy.chunk_rounds` rounds
  and :attr:`CatchupPolicy.max_bytes` of vertex bodies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dagrider.messages import CatchupRequest, Digest, NodeId, Ready, Vertex


@dataclass(frozen=True)
class CatchupPolicy:
    """The knobs, in seconds (wall or virtual, whatever clock the driver passes in)."""

    period: float = 1.0  # between checks for rounds we cannot complete alone
    chunk_rounds: int = 64  # rounds one request asks for and one answer covers
    burst: int = 3  # answers a peer may have in hand at once
    max_bytes: int = 16 * 1024 * 1024  # vertex bytes in one answer

    def __post_init__(self) -> None:
        if not (self.period > 0 and self.chunk_rounds >= 1 and self.burst >= 1):
            raise ValueError(f"bad catch-up policy: {self}")
        if self.max_bytes < 1:
            raise ValueError(f"catch-up max_bytes must be >= 1, got {self.max_bytes}")


@dataclass(frozen=True)
class Ask:
    """Send ``request`` to each of ``peers``; ``reason`` is why (for logs and metrics)."""

    request: CatchupRequest
    peers: tuple[NodeId, ...]
    reason: str  # "behind", "stuck" or "stalled"


@dataclass(frozen=True)
class Tick:
    """What one period's check decided.

    ``seek_state_sync``: far behind and getting nowhere, so peers may no longer hold the
    rounds we miss; a certified checkpoint is the way back (the daemon's state sync).
    """

    ask: Ask | None
    seek_state_sync: bool


@dataclass(frozen=True)
class Serve:
    """Answer a request: our READY votes (with their vertices) for rounds
    [``first``, ``last``), stopping after ``max_bytes`` of vertex bodies, our coin
    shares for ``waves``, and, if ``resync``, our live rounds too (the asked rounds
    reach what we hold in memory, and the asker may have dropped those messages as too
    far ahead)."""

    first: int
    last: int
    waves: range
    resync: bool
    max_bytes: int


@dataclass(frozen=True)
class Refuse:
    """Do not answer; ``reason`` is reported as the peer's misbehaviour."""

    reason: str


class CatchupRequester:
    """The asking side: call :meth:`tick` once per period with the process's view."""

    def __init__(
        self, me: NodeId, n: int, f: int, gc_depth: int, policy: CatchupPolicy | None = None
    ) -> None:
        if not 0 <= me < n or n != 3 * f + 1:
            raise ValueError(f"bad committee for catch-up: me={me} n={n} f={f}")
        self.me = me
        self.policy = policy or CatchupPolicy()
        self.gc_depth = gc_depth
        self.peers = tuple(p for p in range(n) if p != me)
        self.fanout = f + 1
        self._previous_round: int | None = None
        self._stalled = 0
        self._next_peer = 0  # rotation offset into ``peers``
        self.asks = 0

    def tick(self, current_round: int, lowest_missing: int | None, proven_round: int) -> Tick:
        """One period: ``current_round`` is ours, ``lowest_missing`` the lowest round of a
        parent a buffered vertex waits for (:meth:`dagrider.dag.Dag.lowest_missing_round`),
        ``proven_round`` the round f+1 members vouch for."""
        previous = self._previous_round
        progressed = previous is None or current_round != previous
        self._previous_round = current_round
        behind = proven_round - current_round > self.gc_depth // 2
        stuck = lowest_missing is not None and not progressed
        self._stalled = 0 if progressed else self._stalled + 1
        stalled = self._stalled >= 2 and self._stalled & (self._stalled - 1) == 0
        seek = behind and not progressed
        reason = "behind" if behind else "stuck" if stuck else "stalled" if stalled else ""
        if not reason:
            return Tick(None, seek)
        start = current_round if lowest_missing is None else min(lowest_missing, current_round)
        request = CatchupRequest(max(0, start), self.policy.chunk_rounds)
        self.asks += 1
        return Tick(Ask(request, self._pick(), reason), seek)

    def _pick(self) -> tuple[NodeId, ...]:
        """The next f+1 peers in rotation (all of them if there are fewer)."""
        peers = self.peers
        if len(peers) <= self.fanout:
            return peers
        start = self._next_peer
        self._next_peer = (start + self.fanout) % len(peers)
        return tuple(peers[(start + k) % len(peers)] for k in range(self.fanout))


class CatchupServer:
    """The serving side: one token bucket per asking peer."""

    def __init__(self, policy: CatchupPolicy | None = None) -> None:
        self.policy = policy or CatchupPolicy()
        self._tokens: dict[NodeId, tuple[float, float]] = {}  # peer -> (when, tokens)
        self.served = 0
        self.refused = 0

    def serve(
        self,
        peer: NodeId,
        request: CatchupRequest,
        now: float,
        *,
        completed_wave: int,
        memory_floor: int,
    ) -> Serve | Refuse:
        """Decide how to answer ``request`` from ``peer`` at time ``now``;
        ``completed_wave`` is the last wave whose coin share we made, ``memory_floor`` the
        lowest round we still hold in memory (:attr:`dagrider.dag.Dag.floor`)."""
        p = self.policy
        stamp, tokens = self._tokens.get(peer, (now, float(p.burst)))
        tokens = min(float(p.burst), tokens + max(0.0, now - stamp) / p.period)
        if tokens < 1.0:
            self._tokens[peer] = (now, tokens)
            self.refused += 1
            return Refuse("catch-up requests faster than one per period")
        self._tokens[peer] = (now, tokens - 1.0)
        self.served += 1
        first = request.round
        last = first + min(request.rounds, p.chunk_rounds)
        waves = range(max(1, first // 4), min(last // 4, completed_wave) + 1)
        return Serve(first, last, waves, last >= memory_floor, p.max_bytes)

    def forget(self, peer: NodeId) -> None:
        self._tokens.pop(peer, None)


def answer_from(
    votes: Iterable[Ready],
    vertices: Mapping[Digest, Vertex],
    first: int,
    last: int,
    max_bytes: int,
) -> list[tuple[Ready, Vertex | None]]:
    """Our READY votes for rounds [first, last), in (round, source) order, each with the
    vertex it voted for if we hold it, stopping once ``max_bytes`` of vertex bodies are
    out (at least one row). The in-memory counterpart of the store's ``catchup`` query,
    for the simulator and tests."""
    rows = sorted((v for v in votes if first <= v.round < last), key=lambda v: (v.round, v.source))
    out: list[tuple[Ready, Vertex | None]] = []
    size = 0
    for vote in rows:
        if out and size >= max_bytes:
            break
        vertex = vertices.get(vote.digest)
        if vertex is not None:
            size += vertex.size
        out.append((vote, vertex))
    return out
