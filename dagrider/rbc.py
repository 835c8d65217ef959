"""Bracha's reliable broadcast, one instance per (source, round), as a pure state machine.

Guarantees (n = 3f+1, authenticated links): if a correct process delivers digest d for
(source, round), every correct process eventually delivers d and no correct process
delivers another digest for that instance, even when the source equivocates. VAL
carries the vertex; ECHO and READY carry only its digest, so a vertex whose VAL never
arrived is fetched by digest from processes that voted for it.

The manager applies its own votes to itself (so quorums count the local vote) and
returns ``Broadcast`` effects for them; it never sends more than one ECHO and one READY
per instance, including after a restart (see :meth:`ReliableBroadcast.restore_vote`).

Votes travel in :class:`~dagrider.messages.Votes` frames (wire version 2): the shell
merges one step's vote broadcasts with :func:`coalesce_votes` after persisting them, and
:meth:`ReliableBroadcast.on_votes` applies a frame's votes exactly as lone ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dagrider.codec import MAX_VOTES_PER_MESSAGE
from dagrider.effects import Broadcast, Delivered, Effect, Misbehaviour, Send
from dagrider.messages import (
    Digest,
    Echo,
    NodeId,
    Ready,
    Val,
    Vertex,
    VertexRequest,
    VertexResponse,
    VoteKey,
    Votes,
)


def pack_votes(votes: list[Echo | Ready]) -> list[Echo | Ready | Votes]:
    """``votes`` as few frames as the wire allows: one :class:`Votes` per
    :data:`~dagrider.codec.MAX_VOTES_PER_MESSAGE` votes; a lone vote stays as it is."""
    if len(votes) == 1:
        return [votes[0]]
    out: list[Echo | Ready | Votes] = []
    for at in range(0, len(votes), MAX_VOTES_PER_MESSAGE):
        echoes: list[VoteKey] = []
        readies: list[VoteKey] = []
        for v in votes[at : at + MAX_VOTES_PER_MESSAGE]:
            (echoes if isinstance(v, Echo) else readies).append((v.round, v.source, v.digest))
        out.append(Votes(tuple(echoes), tuple(readies)))
    return out


def coalesce_votes(effects: list[Effect]) -> list[Effect]:
    """One step's effects with all its ECHO/READY broadcasts merged into :class:`Votes`.

    For the shell, after it has persisted ``effects`` (the store records each vote from
    the plain ``Broadcast(Echo)``/``Broadcast(Ready)``): what goes on the wire carries
    the same votes in one frame per peer instead of one frame per vote. The merged
    broadcast takes the place of the step's first vote; everything else keeps its order.
    """
    votes: list[Echo | Ready] = []
    first = -1
    out: list[Effect] = []
    for e in effects:
        if isinstance(e, Broadcast) and isinstance(e.msg, Echo | Ready):
            if first < 0:
                first = len(out)
            votes.append(e.msg)
        else:
            out.append(e)
    if first < 0 or len(votes) == 1:
        return effects
    out[first:first] = [Broadcast(m) for m in pack_votes(votes)]
    return out


@dataclass(slots=True)
class _Instance:
    """Votes and payloads of one (source, round) broadcast.

    Votes are integer bitsets over voter ids (bit ``v`` = process ``v``): ``echoed`` and
    ``readied`` say who voted at all, ``echo_mask[d]`` / ``ready_mask[d]`` who voted for
    digest ``d``. A quorum check is one ``int.bit_count()``; recording a vote is one OR.
    At n = 64 a node records about 2 * 64^3 votes per round, so this path is the
    simulator's (and a large committee's) hottest.
    """

    echoed: int = 0
    readied: int = 0
    echo_mask: dict[Digest, int] = field(default_factory=dict)
    ready_mask: dict[Digest, int] = field(default_factory=dict)
    vertices: dict[Digest, Vertex] = field(default_factory=dict)
    sent_echo: Digest | None = None
    sent_ready: Digest | None = None
    delivered: Digest | None = None
    delivered_vertex: bool = False
    waiting: dict[NodeId, Digest] = field(default_factory=dict)
    charged: int = 0  # payload bytes of ``vertices``, charged to the source's budget

    def ready_votes(self, d: Digest) -> int:
        return self.ready_mask.get(d, 0).bit_count()


class ReliableBroadcast:
    """All reliable-broadcast instances of one process.

    ``horizon`` is the lowest round still tracked: messages below it are ignored and
    instances below it are forgotten by :meth:`prune`.

    Two bounds keep what peers can make it hold small (see docs/byzantine.md):

    * ``lookahead``: instances are only created up to this many rounds above the
      *proven* round (:meth:`proven_round`), the highest round that f+1 distinct
      processes have shown for their own broadcasts. At least one of any f+1 is
      correct, so no coalition of f can move the window; a correct process that is
      really ahead is seen through the others that must follow it.
    * ``budget_bytes``: payload bytes held per source. A VAL that would take its source
      over budget is neither stored nor echoed (Bracha still delivers a correct
      source's vertex through the others' votes, and the payload is then fetched by
      digest). Payloads of delivered instances are always accepted: 2f+1 READYs vouch
      for them and the DAG needs them.
    """

    def __init__(
        self,
        me: NodeId,
        n: int,
        f: int,
        lookahead: int = 200,
        budget_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.me = me
        self.n = n
        self.quorum = 2 * f + 1
        self.small = f + 1
        self.lookahead = lookahead
        self.budget_bytes = budget_bytes
        self.horizon = 1
        self.current_round = 0
        self._instances: dict[tuple[NodeId, int], _Instance] = {}
        self._claimed = [0] * n  # highest round each process showed for its own instance
        self._proven = 0
        self._held = [0] * n  # payload bytes held per source
        self._own_seen = [0] * n  # per peer: highest round it voted on for our instance
        self.refused_over_budget = 0

    # -- progress evidence ----------------------------------------------------------------

    def proven_round(self) -> int:
        """The (f+1)-th highest round among what each process showed for its own
        broadcasts, counting our own round: some correct process has reached it."""
        claims = self._claimed
        claims[self.me] = self.current_round
        if self._proven < self.current_round:
            self._recompute_proven()
        return self._proven

    def proven_own_round(self) -> int:
        """The highest round for which f+1 distinct peers voted on *our* instance: at
        least one of them is correct and saw a VAL from us there, so we (perhaps an
        earlier incarnation whose store is gone) proposed in that round already."""
        return sorted(self._own_seen, reverse=True)[self.small - 1]

    def _seen_own(self, sender: NodeId, rnd: int) -> None:
        if sender != self.me and rnd > self._own_seen[sender]:
            self._own_seen[sender] = rnd

    def held_bytes(self, source: NodeId) -> int:
        """Payload bytes currently held for ``source`` (its budget use)."""
        return self._held[source]

    def _claim(self, process: NodeId, rnd: int) -> None:
        if rnd > self._claimed[process]:
            self._claimed[process] = rnd
            if rnd > self._proven:
                self._recompute_proven()

    def _recompute_proven(self) -> None:
        self._claimed[self.me] = self.current_round
        self._proven = sorted(self._claimed, reverse=True)[self.small - 1]

    # -- inputs -----------------------------------------------------------------------

    def broadcast(self, vertex: Vertex) -> list[Effect]:
        """Start the instance for our own vertex: send VAL and handle it ourselves."""
        return [Broadcast(Val(vertex)), *self.on_val(self.me, vertex)]

    def on_val(self, sender: NodeId, vertex: Vertex) -> list[Effect]:
        if sender != vertex.source:
            return [Misbehaviour(sender, f"VAL for source {vertex.source} from {sender}")]
        if sender != self.me:
            self._claim(sender, vertex.round)
        inst = self._instance(vertex.source, vertex.round)
        if inst is None:
            return []
        d = vertex.digest
        if inst.delivered_vertex:
            if d != inst.delivered and sender != self.me:
                # The source proposed twice for one round (e.g. it lost its store and
                # forgot the first): Bracha keeps the delivered one, the peer is told.
                return [
                    Misbehaviour(
                        sender,
                        f"conflicting proposals for round {vertex.round}: delivered "
                        f"{(inst.delivered or b'').hex()[:16]}, then VAL {d.hex()[:16]}",
                    )
                ]
            return []
        # Hold at most the first VAL plus a payload someone else vouched for, so that an
        # equivocating source cannot make us store an unbounded number of vertices.
        if d not in inst.vertices and (
            inst.sent_echo in (None, d) or d == inst.delivered or inst.ready_votes(d) >= self.small
        ):
            if (
                sender != self.me
                and d != inst.delivered
                and self._held[sender] + vertex.size > self.budget_bytes
            ):
                self.refused_over_budget += 1
                return [
                    Misbehaviour(
                        sender,
                        f"VAL for round {vertex.round} over the per-peer budget "
                        f"({self._held[sender]} + {vertex.size} > {self.budget_bytes} bytes)",
                    )
                ]
            self._store(vertex.source, inst, vertex)
        out: list[Effect] = []
        if inst.sent_echo is None:
            out += self._vote_echo(vertex.source, vertex.round, inst, vertex.digest)
        elif inst.sent_echo != vertex.digest and sender != self.me:
            out.append(Misbehaviour(sender, f"second VAL for round {vertex.round}"))
        return out + self._try_deliver_payload(inst, vertex.digest)

    def on_echo(self, sender: NodeId, msg: Echo) -> list[Effect]:
        out: list[Effect] = []
        self._echo(sender, 1 << sender, msg.round, msg.source, msg.digest, out)
        return out

    def on_ready(self, sender: NodeId, msg: Ready) -> list[Effect]:
        out: list[Effect] = []
        self._ready(sender, 1 << sender, msg.round, msg.source, msg.digest, out)
        return out

    def on_votes(self, sender: NodeId, msg: Votes) -> list[Effect]:
        """Every vote of a :class:`Votes` frame, each exactly as a lone ECHO/READY.

        The loops are :meth:`_echo` and :meth:`_ready` written out (the same rules, in
        the same order) because at n = 64 this runs about 2 * 64^3 times per round.
        Once an instance has sent its READY (ECHOs) or delivered (READYs), a new vote
        is only recorded: the quorum it could complete has no effect left to trigger.
        """
        out: list[Effect] = []
        bit = 1 << sender
        me = self.me
        quorum = self.quorum
        instances = self._instances
        for rnd, source, d in msg.echoes:
            if source in (sender, me):
                self._evidence(sender, rnd, source)
            inst = instances.get((source, rnd))
            if inst is None and (inst := self._instance(source, rnd)) is None:
                continue
            masks = inst.echo_mask
            if inst.echoed & bit:
                if not masks.get(d, 0) & bit:
                    out.append(Misbehaviour(sender, "conflicting ECHO"))
                continue
            inst.echoed |= bit
            masks[d] = mask = masks.get(d, 0) | bit
            if inst.sent_ready is None and mask.bit_count() >= quorum:
                out += self._check(source, rnd, inst, d)
        for rnd, source, d in msg.readies:
            if source in (sender, me):
                self._evidence(sender, rnd, source)
            inst = instances.get((source, rnd))
            if inst is None and (inst := self._instance(source, rnd)) is None:
                continue
            masks = inst.ready_mask
            if inst.readied & bit:
                if not masks.get(d, 0) & bit:
                    out.append(Misbehaviour(sender, "conflicting READY"))
                continue
            inst.readied |= bit
            masks[d] = mask = masks.get(d, 0) | bit
            if inst.delivered is None or inst.sent_ready is None:
                votes = mask.bit_count()
                if (inst.sent_ready is None and votes >= self.small) or (
                    inst.delivered is None and votes >= quorum
                ):
                    out += self._check(source, rnd, inst, d)
        return out

    def _evidence(self, sender: NodeId, rnd: int, source: NodeId) -> None:
        if source == sender:
            self._claim(sender, rnd)
        elif source == self.me:
            self._seen_own(sender, rnd)

    def _echo(
        self, sender: NodeId, bit: int, rnd: int, source: NodeId, d: Digest, out: list[Effect]
    ) -> None:
        if source == sender or source == self.me:
            self._evidence(sender, rnd, source)
        inst = self._instances.get((source, rnd))
        if inst is None and (inst := self._instance(source, rnd)) is None:
            return
        mask = inst.echo_mask.get(d, 0)
        if inst.echoed & bit:
            if not mask & bit:
                out.append(Misbehaviour(sender, "conflicting ECHO"))
            return
        inst.echoed |= bit
        inst.echo_mask[d] = mask = mask | bit
        # An ECHO can only complete the READY quorum of 2f+1 ECHOs. Delivery needs READYs,
        # whose count grows only in _ready and _check, and both test delivery at once.
        if inst.sent_ready is None and mask.bit_count() >= self.quorum:
            out += self._check(source, rnd, inst, d)

    def _ready(
        self, sender: NodeId, bit: int, rnd: int, source: NodeId, d: Digest, out: list[Effect]
    ) -> None:
        if source == sender or source == self.me:
            self._evidence(sender, rnd, source)
        inst = self._instances.get((source, rnd))
        if inst is None and (inst := self._instance(source, rnd)) is None:
            return
        mask = inst.ready_mask.get(d, 0)
        if inst.readied & bit:
            if not mask & bit:
                out.append(Misbehaviour(sender, "conflicting READY"))
            return
        inst.readied |= bit
        inst.ready_mask[d] = mask = mask | bit
        if inst.delivered is None or inst.sent_ready is None:
            votes = mask.bit_count()
            if (inst.sent_ready is None and votes >= self.small) or (
                inst.delivered is None and votes >= self.quorum
            ):
                out += self._check(source, rnd, inst, d)

    def on_request(self, sender: NodeId, req: VertexRequest) -> list[Effect]:
        """Answer a catch-up request now, or as soon as we hold the vertex."""
        inst = self._instance(req.source, req.round)
        if inst is None:
            return []
        vertex = inst.vertices.get(req.digest)
        if vertex is not None:
            return [Send(sender, VertexResponse(vertex))]
        inst.waiting[sender] = req.digest
        return []

    def on_response(self, sender: NodeId, vertex: Vertex) -> list[Effect]:
        """Accept a fetched vertex only if it is the digest this instance delivered."""
        inst = self._instances.get((vertex.source, vertex.round))
        if inst is None or inst.delivered is None or inst.delivered_vertex:
            return []
        if vertex.digest != inst.delivered:
            return [Misbehaviour(sender, "VertexResponse with a digest nobody delivered")]
        self._store(vertex.source, inst, vertex)
        return self._try_deliver_payload(inst, vertex.digest)

    # -- recovery and memory ------------------------------------------------------------

    def restore_vote(self, kind: str, source: NodeId, rnd: int, digest: Digest) -> None:
        """Reload a vote we sent before a restart so that we never send a different one."""
        inst = self._instance(source, rnd, trusted=True)
        if inst is None:
            return
        bit = 1 << self.me
        if kind == "echo" and inst.sent_echo is None:
            inst.sent_echo = digest
            if not inst.echoed & bit:
                inst.echoed |= bit
                inst.echo_mask[digest] = inst.echo_mask.get(digest, 0) | bit
        elif kind == "ready" and inst.sent_ready is None:
            inst.sent_ready = digest
            if not inst.readied & bit:
                inst.readied |= bit
                inst.ready_mask[digest] = inst.ready_mask.get(digest, 0) | bit

    def mark_delivered(self, vertex: Vertex) -> None:
        """Reload a vertex delivered before a restart: the instance is finished."""
        inst = self._instance(vertex.source, vertex.round, trusted=True)
        if inst is None:
            return
        inst.delivered = vertex.digest
        inst.delivered_vertex = True
        self._keep_only(vertex.source, inst, vertex)

    def sent_votes(self) -> list[Echo | Ready]:
        """Every vote this process has sent in live instances (to retransmit after reconnect)."""
        votes: list[Echo | Ready] = []
        for (source, rnd), inst in sorted(self._instances.items(), key=lambda kv: kv[0][::-1]):
            if inst.sent_echo is not None:
                votes.append(Echo(rnd, source, inst.sent_echo))
            if inst.sent_ready is not None:
                votes.append(Ready(rnd, source, inst.sent_ready))
        return votes

    def prune(self, horizon: int) -> None:
        """Forget every instance below ``horizon``; later messages for them are ignored."""
        if horizon <= self.horizon:
            return
        self.horizon = horizon
        for key in [k for k in self._instances if k[1] < horizon]:
            inst = self._instances.pop(key)
            self._held[key[0]] -= inst.charged

    def instance_count(self) -> int:
        return len(self._instances)

    # -- internals ----------------------------------------------------------------------

    def _instance(self, source: NodeId, rnd: int, trusted: bool = False) -> _Instance | None:
        """The instance for (source, round), created on first use within the window.

        ``trusted`` (our own store, after a restart) bypasses the lookahead bound, which
        exists only to limit what peers can make us allocate.
        """
        if rnd < self.horizon:
            return None
        if not trusted and rnd > max(self.current_round, self._proven) + self.lookahead:
            return None
        key = (source, rnd)
        inst = self._instances.get(key)
        if inst is None:
            inst = self._instances[key] = _Instance()
        return inst

    def _vote_echo(self, source: NodeId, rnd: int, inst: _Instance, d: Digest) -> list[Effect]:
        inst.sent_echo = d
        bit = 1 << self.me
        if not inst.echoed & bit:  # a restored vote is already counted
            inst.echoed |= bit
            inst.echo_mask[d] = inst.echo_mask.get(d, 0) | bit
        return [Broadcast(Echo(rnd, source, d)), *self._check(source, rnd, inst, d)]

    def _check(self, source: NodeId, rnd: int, inst: _Instance, d: Digest) -> list[Effect]:
        out: list[Effect] = []
        if inst.sent_ready is None and (
            inst.echo_mask.get(d, 0).bit_count() >= self.quorum or inst.ready_votes(d) >= self.small
        ):
            inst.sent_ready = d
            bit = 1 << self.me
            if not inst.readied & bit:
                inst.readied |= bit
                inst.ready_mask[d] = inst.ready_mask.get(d, 0) | bit
            out.append(Broadcast(Ready(rnd, source, d)))
        if inst.delivered is None and inst.ready_votes(d) >= self.quorum:
            inst.delivered = d
            if d in inst.vertices:
                out += self._try_deliver_payload(inst, d)
            else:
                holders = inst.echo_mask.get(d, 0) | inst.ready_mask.get(d, 0)
                holders &= ~(1 << self.me)
                req = VertexRequest(rnd, source, d)
                out += [Send(h, req) for h in range(self.n) if holders >> h & 1]
        return out

    def _try_deliver_payload(self, inst: _Instance, d: Digest) -> list[Effect]:
        out: list[Effect] = []
        vertex = inst.vertices.get(d)
        if vertex is None:
            return out
        for peer, wanted in list(inst.waiting.items()):
            if wanted == d:
                out.append(Send(peer, VertexResponse(vertex)))
                del inst.waiting[peer]
        if inst.delivered == d and not inst.delivered_vertex:
            inst.delivered_vertex = True
            # Keep only the delivered payload: equivocating VALs are dead weight now.
            self._keep_only(vertex.source, inst, vertex)
            out.append(Delivered(vertex))
        return out

    def _store(self, source: NodeId, inst: _Instance, vertex: Vertex) -> None:
        if vertex.digest in inst.vertices:
            return
        inst.vertices[vertex.digest] = vertex
        inst.charged += vertex.size
        self._held[source] += vertex.size

    def _keep_only(self, source: NodeId, inst: _Instance, vertex: Vertex) -> None:
        inst.vertices = {vertex.digest: vertex}
        self._held[source] += vertex.size - inst.charged
        inst.charged = vertex.size
