"""One DAG-Rider process: reliable broadcast + DAG + coin + ordering behind one API.

This is the pure state machine that the simulator and the daemon both drive. Inputs are
method calls (a message from an authenticated peer, client transactions, the batch
timer); outputs are lists of effects. It never reads a clock, draws randomness or
touches I/O; the coin's unpredictability comes from the threshold key.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from dagrider.codec import Codec
from dagrider.coin import CoinPublicKey, CoinSecretShare, CoinShare, WaveCoin, leader_of, make_share
from dagrider.dag import Dag, check_structure
from dagrider.effects import (
    AwaitBatch,
    Broadcast,
    Commit,
    Delivered,
    Effect,
    Misbehaviour,
    Proposed,
    Requeued,
    RoundAdvanced,
    Send,
)
from dagrider.errors import DecodeError, InvalidVertex
from dagrider.messages import (
    CatchupRequest,
    CoinShareMsg,
    Echo,
    Message,
    NodeId,
    Ready,
    Val,
    Vertex,
    VertexRequest,
    VertexResponse,
    Votes,
)
from dagrider.ordering import Ordering, OrderingState
from dagrider.params import Parameters
from dagrider.rbc import ReliableBroadcast

REANSWER_ROUNDS = 4
"""A request for a digest already answered to the same peer is refused for a wave."""


@dataclass(frozen=True)
class ProcessConfig:
    """Everything a process is constructed from: its identity, the committee, parameters."""

    me: NodeId
    n: int
    f: int
    coin_public: CoinPublicKey
    coin_secret: CoinSecretShare
    domain: bytes  # committee id: separates coins of different committees
    params: Parameters = field(default_factory=Parameters)


@dataclass
class Recovery:
    """What a restarted process reloads from its store (see :meth:`Process.recover`)."""

    delivered: list[Vertex] = field(default_factory=list)
    votes: list[Echo | Ready] = field(default_factory=list)
    own: list[Vertex] = field(default_factory=list)
    coin_shares: list[CoinShare] = field(default_factory=list)
    committed: int = 0  # number of Commit effects already applied by the shell
    ordering: OrderingState | None = None  # snapshot at the last commit, if any


class Process:
    """A committee member running DAG-Rider."""

    def __init__(self, cfg: ProcessConfig) -> None:
        if cfg.n != 3 * cfg.f + 1 or not 0 <= cfg.me < cfg.n:
            raise ValueError(f"bad process config: me={cfg.me} n={cfg.n} f={cfg.f}")
        self.cfg = cfg
        self.me = cfg.me
        self.n = cfg.n
        self.quorum = 2 * cfg.f + 1
        p = cfg.params
        self.codec = Codec(cfg.n, p.limits)
        self.rbc = ReliableBroadcast(
            cfg.me, cfg.n, cfg.f, lookahead=p.future_rounds, budget_bytes=p.peer_budget_bytes
        )
        self.dag = Dag(cfg.n, cfg.f, p.gc_depth)
        self.ordering = Ordering(cfg.n, cfg.f, p.gc_depth, p.checkpoint_interval)
        self.round = 0  # highest round this process has proposed in (0: only genesis)
        self.mempool: deque[bytes] = deque()
        self.awaiting_batch = False
        self._idle_wait = False  # the current wait began with nothing to order
        # Delivered vertices with transactions not yet ordered (digest -> round): while
        # any exist the committee is busy, so rounds run at the batch pace, not idle.
        self._work: dict[bytes, int] = {}
        self._coins: dict[int, WaveCoin] = {}
        self._own: dict[int, Vertex] = {}  # our proposals still above the GC floor
        self._replayed_own: dict[int, Vertex] = {}  # proposals reloaded after a restart
        # Rounds below our highest reloaded proposal: an earlier incarnation went past
        # them, so one without a reloaded proposal of ours gets none now (see recover).
        self._passed_round = 0
        # Rounds up to here may hold messages an earlier incarnation sent and its store
        # lost (see :meth:`fence`): no new vote or vertex of ours for them.
        self.fence_round = 0
        self._suppress_commits_below = 0
        self.completed_wave = 0
        self.started = False
        # Requests cost the requester: a byte bucket per peer, refilled as rounds pass,
        # and each (peer, digest) answered once while the digest's round is live.
        self._response_tokens = [p.response_budget_bytes] * cfg.n
        # (peer, digest) -> (round of the vertex, our round when we answered)
        self._answered: dict[tuple[NodeId, bytes], tuple[int, int]] = {}

    # -- inputs -------------------------------------------------------------------------

    def start(self) -> list[Effect]:
        """Leave genesis: propose for round 1."""
        if self.started:
            return []
        self.started = True
        return self._advance()

    def submit(self, txs: Iterable[bytes]) -> list[Effect]:
        """Queue client transactions; proposes at once if a batch was waiting for them."""
        limit = self.cfg.params.limits.max_tx_bytes
        txs = list(txs)
        # One C-level pass each (a Python loop per transaction was measurable at 10^4/s).
        largest = max(map(len, txs), default=0)
        if largest > limit:
            raise ValueError(f"transaction of {largest} bytes exceeds {limit}")
        self.mempool.extend(txs)
        if self.awaiting_batch and len(self.mempool) >= self.cfg.params.batch_size:
            return self.propose_now(self.round + 1)
        return self._wake() if self.mempool else []

    def _wake(self) -> list[Effect]:
        """Work arrived during an idle wait: switch to the (shorter) batch timer."""
        if self.awaiting_batch and self._idle_wait:
            self._idle_wait = False
            return [AwaitBatch(self.round + 1)]
        return []

    def propose_now(self, rnd: int) -> list[Effect]:
        """The shell's batch timer for ``rnd`` fired: propose with whatever is pending."""
        if not self.awaiting_batch or rnd != self.round + 1:
            return []
        self.awaiting_batch = False
        out = self._propose()
        return out + self._advance()

    def receive_bytes(self, sender: NodeId, data: bytes) -> list[Effect]:
        """Decode a frame from an authenticated peer; garbage is reported, never raised."""
        try:
            msg = self.codec.decode(data)
        except DecodeError as exc:
            return [Misbehaviour(sender, f"undecodable message: {exc}")]
        return self.receive(sender, msg)

    def receive(self, sender: NodeId, msg: Message) -> list[Effect]:
        """Handle one decoded message from authenticated peer ``sender``."""
        if not 0 <= sender < self.n or sender == self.me:
            return [Misbehaviour(sender, "message from outside the committee")]
        if isinstance(msg, Votes):  # most frames at scale: skip the match below
            return self._after_rbc(self.rbc.on_votes(sender, msg))
        match msg:
            case Val(vertex):
                try:
                    params = self.cfg.params
                    check_structure(
                        vertex, self.n, self.cfg.f, params.gc_depth, params.limits.max_block_bytes
                    )
                except InvalidVertex as exc:
                    return [Misbehaviour(sender, f"invalid vertex: {exc}")]
                return self._after_rbc(self.rbc.on_val(sender, vertex))
            case Echo():
                return self._after_rbc(self.rbc.on_echo(sender, msg))
            case Ready():
                return self._after_rbc(self.rbc.on_ready(sender, msg))
            case VertexRequest():
                return self._answer_request(sender, msg)
            case VertexResponse(vertex):
                return self._after_rbc(self.rbc.on_response(sender, vertex))
            case CoinShareMsg(share):
                return self._on_coin_share(sender, share)
            case CatchupRequest():
                return []  # served by the shell from its store
        return [Misbehaviour(sender, f"unexpected message {type(msg).__name__}")]

    def fence(self, rnd: int) -> None:
        """Our store lost messages we sent, up to round ``rnd``: the shell's fence file
        (written before each sending batch) is ahead of the store, e.g. its WAL was
        deleted or a database-only backup restored, now or at an earlier restart
        (:func:`dagrider.persistence.restart_from`). We cannot know which vertex we proposed
        or which digests we voted for in those rounds, so we propose no vertex there (unless
        the store still has ours) and cast no new ECHO or READY: the committee counts us as
        silent (crashed) in those rounds, never as two-faced. Call before :meth:`recover`."""
        self.fence_round = max(self.fence_round, rnd)

    def _fenced(self, e: Effect) -> bool:
        if not isinstance(e, Broadcast | Send):
            return False
        msg = e.msg
        return isinstance(msg, Echo | Ready) and msg.round <= self.fence_round

    def resync(self, peer: NodeId) -> list[Effect]:
        """A link to ``peer`` (re)connected: resend what it may have missed.

        Messages to a peer that was down are lost; Bracha needs every correct process to
        eventually get our VALs and votes, so we resend them for every live round.
        """
        out: list[Effect] = []
        for rnd in sorted(self._own):
            out.append(Send(peer, Val(self._own[rnd])))
        out += [Send(peer, vote) for vote in self.rbc.sent_votes() if vote.round > self.fence_round]
        first_wave = max(1, self.dag.floor // 4)
        for wave in range(first_wave, self.completed_wave + 1):
            out.append(Send(peer, CoinShareMsg(self.own_share(wave))))
        return out

    def recover(self, state: Recovery) -> list[Effect]:
        """Rebuild after a restart from what the shell persisted, then resume.

        Votes are restored first so that no different vote can ever be sent; our own
        vertices are re-used rather than re-created (a new vertex would equivocate);
        commits the shell has already applied are not emitted again.
        """
        floor = 0
        if state.ordering is not None:
            self.ordering.import_state(state.ordering)
            floor = self.ordering.floor()
            self.dag.prune(floor)
            self.rbc.prune(floor)
        own = {v.round: v for v in state.own if v.round >= floor}
        self._suppress_commits_below = state.committed
        self.started = True
        if floor > 0:
            # Rounds below the floor are gone: resume at our last proposal (its VAL
            # goes out again with ``resync``), or at the floor itself when we have
            # none above it (a state installed from a checkpoint), instead of walking
            # up from genesis.
            self.round = max(own) if own else floor
            self.rbc.current_round = self.round
            self.completed_wave = (self.round - 1) // 4
            self._own = own
        else:
            # Walking up from genesis, re-proposing what we proposed. A round below our
            # last proposal that has none of ours was passed without one: skipped, or,
            # by an incarnation fenced there, maybe proposed in by the one before it
            # (whose store was lost), so a new vertex now could equivocate.
            self._replayed_own = own
            self._passed_round = max(own, default=1) - 1
        for vote in state.votes:
            if vote.round < floor:  # a store may keep more, to serve catch-up
                continue
            kind = "echo" if isinstance(vote, Echo) else "ready"
            self.rbc.restore_vote(kind, vote.source, vote.round, vote.digest)
        out: list[Effect] = []
        for share in state.coin_shares:
            out += self._on_coin_share(share.signer, share)
        for v in sorted(state.delivered, key=lambda x: (x.round, x.source)):
            if v.round < floor:
                continue
            self.rbc.mark_delivered(v)
            out += self._on_delivered(v)
        out += self._own_shares_of_completed_waves()
        out += self._advance()
        return [e for e in out if not isinstance(e, Delivered)]

    def _dropped_own(self, floor: int) -> list[Vertex]:
        """Our vertices below ``floor`` not ordered as far as this process knows, by
        round: installing a checkpoint with that floor drops them, ordered by the
        history it skips or never (their transactions must then be proposed again)."""
        mine = {**self._replayed_own, **self._own}
        return [
            mine[r]
            for r in sorted(mine)
            if r < floor and not self.ordering.is_ordered(mine[r].digest)
        ]

    def own_dropped_by(self, state: OrderingState) -> tuple[int, int] | None:
        """The rounds ``(since, until]`` of our vertices that ``install_checkpoint(state)``
        drops without knowing whether the skipped history ordered them, or None. The
        shell reads what our vertices of those rounds carried into the installed log
        (from vertex index ``ordering.next_index`` on) and passes it as ``carried``."""
        if state.next_index <= self.ordering.next_index:
            return None
        dropped = self._dropped_own(max(0, state.last_leader_round - self.cfg.params.gc_depth))
        if not dropped:
            return None
        return dropped[0].round - 1, dropped[-1].round

    def install_checkpoint(
        self, state: OrderingState, carried: Iterable[bytes] = ()
    ) -> list[Effect]:
        """Resume ordering from a certified checkpoint instead of replaying history.

        The shell has verified ``state`` against a certificate (f+1 members signed its
        digest) and stored it with the log it ends. Everything below the new GC floor
        is dropped; this process enters the floor round without a vertex of its own and
        walks up with the vertices its peers still hold (catch-up), proposing again only
        once it is near the committee's proven round (the skip rule in ``_advance``).

        Our dropped vertices (see :meth:`own_dropped_by`) give their transactions back
        to the mempool (``Requeued``), but those ``carried`` into the installed log: a
        member that proposed while catching up, then jumped past those rounds, lost a
        client's accepted batch for good (seen on a loaded e2e run). Counted, not
        matched: the same bytes submitted twice are two transactions.
        """
        if state.next_index <= self.ordering.next_index:
            return []
        dropped = self._dropped_own(max(0, state.last_leader_round - self.cfg.params.gc_depth))
        self.ordering.import_state(state)
        floor = self.ordering.floor()
        self.dag.prune(floor)
        self.rbc.prune(floor)
        self.ordering.prune(floor)
        self._coins = {w: c for w, c in self._coins.items() if w >= self.ordering.next_wave}
        self._own = {r: v for r, v in self._own.items() if r >= floor}
        # Kept above the floor: a round we proposed in before a restart must be
        # proposed in with that same vertex, never a new one.
        self._replayed_own = {r: v for r, v in self._replayed_own.items() if r >= floor}
        requeued = _requeue_dropped(dropped, carried)
        for _, txs in reversed(requeued):
            self.mempool.extendleft(reversed(txs))
        self._work = {d: r for d, r in self._work.items() if r >= floor}
        self.started = True
        # Highest round first, as the mempool gets them: each goes back at the front.
        out: list[Effect] = [Requeued(txs, v.digest) for v, txs in reversed(requeued)]
        if self.round < floor:
            self.awaiting_batch = False
            self.completed_wave = max(self.completed_wave, (floor - 1) // 4)
            out += self._enter_round(floor)
        out += self._own_shares_of_completed_waves()
        return out + self._advance()

    # -- reliable broadcast -> DAG ------------------------------------------------------

    def _after_rbc(self, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for e in effects:
            if self.fence_round and self._fenced(e):
                continue  # counted in our RBC state, never sent nor stored (see fence)
            out.append(e)
            if isinstance(e, Delivered):
                out += self._on_delivered(e.vertex)
        return out

    def _on_delivered(self, vertex: Vertex) -> list[Effect]:
        inserted, flagged = self.dag.add(vertex, self.round)
        out: list[Effect] = [
            Misbehaviour(v.source, f"vertex ({v.round}, {v.source}): {why}") for v, why in flagged
        ]
        fresh = vertex.round >= self.dag.floor and not self.ordering.is_ordered(vertex.digest)
        if vertex.block and fresh:
            self._work[vertex.digest] = vertex.round
            out += self._wake()
        if inserted:
            out += self._advance()
        return out

    def _advance(self) -> list[Effect]:
        """Move through every round whose quorum is present, proposing at each step."""
        out: list[Effect] = []
        while not self.awaiting_batch and self.dag.round_size(self.round) >= self.quorum:
            if self.round > 0 and self.round % 4 == 0:
                out += self._complete_wave(self.round // 4)
            nxt = self.round + 1
            out.append(RoundAdvanced(nxt))
            params = self.cfg.params
            # Evidence that peers are ahead must come from f+1 distinct processes (one
            # of them correct): a single Byzantine claim of round 10**9 moves nothing.
            behind = self.rbc.proven_round() - nxt
            # f+1 peers voted on a vertex of ours for this round that we do not hold:
            # an earlier incarnation (its store lost) proposed here, or it may have (the
            # fence, or a round an earlier incarnation passed: see recover). A new vertex
            # would equivocate, so this round goes by without one.
            forgotten = (
                nxt <= max(self.rbc.proven_own_round(), self.fence_round, self._passed_round)
                and nxt not in self._own
                and nxt not in self._replayed_own
            )
            if forgotten or (behind > params.gc_depth // 2 and nxt not in self._replayed_own):
                # Peers are so far ahead that a vertex for this round would fall below
                # their GC cut before anyone could reference it: move on without one.
                out += self._skip_round()
            elif behind > 1 or (
                nxt in self._replayed_own
                or params.propose_empty
                or len(self.mempool) >= params.batch_size
            ):
                # Behind peers (or batch ready): propose now rather than wait for a batch.
                out += self._propose()
            else:
                self.awaiting_batch = True
                self._idle_wait = not self.mempool and not self._work
                out.append(AwaitBatch(nxt, idle=self._idle_wait))
                break
        return out

    def _skip_round(self) -> list[Effect]:
        """Enter the next round without a vertex of ours (catching up from far behind)."""
        return self._enter_round(self.round + 1)

    def _enter_round(self, rnd: int) -> list[Effect]:
        """Make ``rnd`` current and insert the buffered vertices it unblocks."""
        passed = rnd - self.round
        self.round = rnd
        self.rbc.current_round = rnd
        if passed > 0:
            budget = self.cfg.params.response_budget_bytes
            refill = passed * budget // 4
            tokens = self._response_tokens
            for peer in range(self.n):
                tokens[peer] = min(budget, tokens[peer] + refill)
        _, flagged = self.dag.drain(rnd)
        return [
            Misbehaviour(v.source, f"vertex ({v.round}, {v.source}): {why}") for v, why in flagged
        ]

    def _propose(self) -> list[Effect]:
        nxt = self.round + 1
        vertex = self._replayed_own.pop(nxt, None)
        fresh = vertex is None
        if vertex is None:
            strong = sorted(self.dag.by_round[self.round].values(), key=lambda v: v.source)
            weak = self.dag.weak_candidates(nxt, strong)
            block = self._take_batch()
            vertex = Vertex(
                nxt,
                self.me,
                block,
                tuple(v.ref for v in strong),
                tuple(sorted(v.ref for v in weak)),
            )
        self.round = nxt
        self.rbc.current_round = nxt
        self._own[nxt] = vertex
        out: list[Effect] = [Proposed(vertex, fresh)]
        out += self._after_rbc(self.rbc.broadcast(vertex))
        return out + self._enter_round(nxt)

    def _take_batch(self) -> tuple[bytes, ...]:
        """Up to ``batch_size`` pending transactions within ``max_block_bytes``."""
        params = self.cfg.params
        room = params.limits.max_block_bytes
        block: list[bytes] = []
        mempool = self.mempool
        while mempool and len(block) < params.batch_size and len(mempool[0]) <= room:
            tx = mempool.popleft()
            room -= len(tx)
            block.append(tx)
        return tuple(block)

    # -- coin and ordering --------------------------------------------------------------

    def own_share(self, wave: int) -> CoinShare:
        """Our share of ``wave``'s coin (deterministic: re-deriving it is safe)."""
        secret = self.cfg.coin_secret
        y = self.cfg.coin_public.verification_keys[self.me]
        return make_share(secret, y, wave, self.cfg.domain)

    def _coin(self, wave: int) -> WaveCoin:
        coin = self._coins.get(wave)
        if coin is None:
            coin = self._coins[wave] = WaveCoin(self.cfg.coin_public, wave, self.cfg.domain)
        return coin

    def _own_shares_of_completed_waves(self) -> list[Effect]:
        """After a restart or an installed checkpoint that set ``completed_wave``
        without walking through the waves: our share of each completed, undecided wave
        goes into its coin (derived again, never stored; revealed already, or now
        allowed to be). Peers resend their shares only for waves at or above their own
        GC floor, so without ours such a coin could stay one share short for ever (a
        member restarted after SIGKILL stopped ordering at its next wave: f shares
        stored, f+1 needed)."""
        out: list[Effect] = []
        for wave in range(self.ordering.next_wave, self.completed_wave + 1):
            out += self._on_coin_share(self.me, self.own_share(wave))
        return out

    def _complete_wave(self, wave: int) -> list[Effect]:
        """We completed round 4 of ``wave``: only now may our coin share be revealed."""
        self.completed_wave = wave
        share = self.own_share(wave)
        out: list[Effect] = [Broadcast(CoinShareMsg(share))]
        out += self._on_coin_share(self.me, share)
        return out + self._order()

    def coin_share_window(self) -> tuple[int, int]:
        """The waves whose coin shares this process takes now, lowest and highest: from
        the first undecided wave up to ``future_rounds`` above its proven progress (the
        f+1-th highest round members showed, so one Byzantine claim moves nothing)."""
        progress = max(self.round, self.rbc.proven_round())
        return self.ordering.next_wave, (progress + self.cfg.params.future_rounds) // 4 + 1

    def accepts_coin_share(self, sender: NodeId, share: CoinShare) -> bool:
        """Whether a share from ``sender`` is one this process takes: signed by its
        sender, for a wave in :meth:`coin_share_window`. A shell stores exactly these
        (ask before :meth:`receive`), so what a peer can make the store hold is bounded
        as what it can make this process hold: a share for wave 2**40 is neither held
        nor stored. (Shares for a coin already known are kept too: after a restart our
        own share of a completed wave is not derived again, and peers' may be needed.)"""
        low, high = self.coin_share_window()
        return share.signer == sender and low <= share.wave <= high

    def _on_coin_share(self, sender: NodeId, share: CoinShare) -> list[Effect]:
        if share.signer != sender:
            return [Misbehaviour(sender, f"coin share signed by {share.signer}")]
        if not self.accepts_coin_share(sender, share):
            return []
        coin = self._coin(share.wave)
        if coin.value is not None:
            return []
        out: list[Effect] = [
            Misbehaviour(peer, f"invalid coin share for wave {share.wave}: {why}")
            for peer, why in coin.add(share)
        ]
        if coin.value is not None:
            self.ordering.set_leader(share.wave, leader_of(coin.value, self.n))
            out += self._order()
        return out

    def _order(self) -> list[Effect]:
        out = self.ordering.advance(self.dag, self.completed_wave)
        if not out:
            return out
        if self._work:
            for e in out:
                if isinstance(e, Commit):
                    self._work.pop(e.vertex.digest, None)
        floor = self.ordering.floor()
        if floor > self.dag.floor:
            out += self._requeue_orphans(floor)
            self.dag.prune(floor)
            self.rbc.prune(floor)
            self.ordering.prune(floor)
            self._own = {r: v for r, v in self._own.items() if r >= floor}
            self._answered = {k: r for k, r in self._answered.items() if r[0] >= floor}
            self._work = {d: r for d, r in self._work.items() if r >= floor}
            for w in [w for w in self._coins if w < self.ordering.next_wave]:
                del self._coins[w]
        return [e for e in out if not self._suppressed(e)]

    def _requeue_orphans(self, floor: int) -> list[Effect]:
        """Our vertices that fall below the GC cut unordered will never be ordered: put
        their transactions back in the mempool, so a client's accepted transaction is
        not lost with a vertex that arrived too late (e.g. just before a crash)."""
        out: list[Effect] = []
        for rnd in sorted(self._own, reverse=True):
            v = self._own[rnd]
            # Empty ones too: the effect also says which vertex was orphaned.
            if rnd < floor and not self.ordering.is_ordered(v.digest):
                self.mempool.extendleft(reversed(v.block))
                out.append(Requeued(v.block, v.digest))
        return out

    def _suppressed(self, e: Effect) -> bool:
        return isinstance(e, Commit) and e.index < self._suppress_commits_below

    # -- catch-up -----------------------------------------------------------------------

    def _answer_request(self, sender: NodeId, req: VertexRequest) -> list[Effect]:
        """Serve a vertex by digest, at most once per (peer, digest) per wave of our
        progress and within the peer's response budget, so a 60-byte request cannot be
        turned into megabytes of traffic over and over (the requester pays, not us).
        A correct peer asks once per instance; after a restart it may ask again, which
        a wave later is answered."""
        key = (sender, req.digest)
        answered = self._answered.get(key)
        if answered is not None and self.round - answered[1] < REANSWER_ROUNDS:
            return [Misbehaviour(sender, f"repeated VertexRequest for ({req.round}, {req.source})")]
        v = self.dag.get(req.digest)
        if v is not None and (v.round != req.round or v.source != req.source):
            return []
        size = v.size if v is not None else 0
        if size > self._response_tokens[sender]:
            return [
                Misbehaviour(
                    sender,
                    f"VertexRequest over the response budget "
                    f"({size} > {self._response_tokens[sender]} bytes left)",
                )
            ]
        out: list[Effect] = [Send(sender, VertexResponse(v))] if v is not None else []
        if not out:
            out = self.rbc.on_request(sender, req)  # answered now, or once delivered
        for e in out:
            if isinstance(e, Send) and isinstance(e.msg, VertexResponse):
                self._response_tokens[sender] -= e.msg.vertex.size
                self._answered[key] = (req.round, self.round)
        return out

    # -- introspection ------------------------------------------------------------------

    def ordering_state(self) -> OrderingState:
        """Snapshot for the store, taken after the commits of the last batch of effects."""
        return self.ordering.export_state()

    def status(self) -> dict[str, int]:
        return {
            "round": self.round,
            "wave": self.round // 4 + 1,
            "decided_wave": self.ordering.decided_wave,
            "ordered_vertices": self.ordering.next_index,
            "ordered_transactions": self.ordering.next_tx_index,
            "dag_vertices": len(self.dag),
            "buffered_vertices": self.dag.buffered(),
            "mempool": len(self.mempool),
        }


def not_carried(txs: Iterable[bytes], gone: Counter[bytes]) -> list[bytes]:
    """``txs`` less one copy per copy still counted in ``gone`` (used up as it goes):
    what a log that took ``gone`` did not take. Counted, not matched by id alone: a
    client that submitted the same bytes twice had two transactions."""
    kept: list[bytes] = []
    for tx in txs:
        if gone[tx] > 0:
            gone[tx] -= 1
        else:
            kept.append(tx)
    return kept


def _requeue_dropped(
    dropped: list[Vertex], carried: Iterable[bytes]
) -> list[tuple[Vertex, tuple[bytes, ...]]]:
    """Each dropped vertex with its transactions that the log did not take (one copy of
    a transaction per copy ``carried``), lowest round first."""
    gone = Counter(carried)
    return [(v, tuple(not_carried(v.block, gone))) for v in dropped]
