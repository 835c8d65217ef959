"""What a member must persist and what it may forget: one projection for every shell.

A shell (the daemon's SQLite store, the simulator, the test cluster) gets a batch of
effects per flush and must write, before any of the batch's messages leave, everything
a restarted process needs to go on without contradicting itself. :func:`write_set` maps
one batch to a frozen :class:`WriteSet`; the SQLite store writes it with its own SQL,
and :class:`MemoryStore` (for the simulator and tests) keeps it in memory. Both answer
a restart with the same :class:`~dagrider.process.Recovery`, so the daemon, the
simulator and the tests recover by one set of rules.

What must be kept, and why (``F``, the *GC floor*, is ``last_leader_round - gc_depth`` of
the stored ordering snapshot, :meth:`dagrider.ordering.Ordering.floor`):

* **Votes** (every ECHO/READY that leaves, from any effect), at and above ``F``: a
  restarted process that forgot a vote could cast a different one (it would be
  Byzantine). Below ``F`` the restarted process prunes its reliable broadcast, so it
  ignores every message for those rounds and cannot vote there at all.
* **Own proposals**, at and above ``F``: re-used, never re-created (a new vertex for a
  round we proposed in would equivocate). Below ``F`` the process never proposes again.
* **Delivered vertices**, at and above ``F``: the DAG the ordering still walks (the
  leaders of undecided waves and their causal histories above the floor).
* **Coin shares received** from peers, for waves at and above the snapshot's
  ``next_wave``: the coins of undecided waves may be unrecoverable once peers move on.
  Our own share is derived from our key again, never stored. A shell hands over only
  the shares its process accepted (:meth:`~dagrider.process.Process.accepts_coin_share`:
  the process's window, up to ``future_rounds`` above proven progress), so a peer
  cannot make a store hold more than it can make the process hold; GC drops waves
  below ``next_wave``, and nothing ever lands far above it.
* **The ordering snapshot**, taken with the batch's commits (one atomic write), and the
  **commits** themselves with their log positions: the log is the product; a restart
  resumes at ``next_index`` and emits no commit twice.
* **The mempool operations** in batch order (a proposal takes from the front, a requeue
  puts back at the front), so the stored mempool is the process's.
* **Checkpoint states** (:class:`~dagrider.effects.CheckpointReached`), to sign and
  serve.

What may go, and when (:class:`GcRules`): once the floor has risen ``step_rounds``
since the last GC step (one delete per table every few waves instead of on every
commit), a step drops own proposals and ECHO votes below ``F``, coin shares of waves
below ``next_wave``, and vertices and READY votes below ``F - retain_rounds``. READY
votes and the vertices they voted for are what catch-up serves to a peer that fell
behind (:func:`dagrider.catchup.answer_from`, the store's ``catchup``), hence kept
``retain_rounds`` longer; ECHO votes serve nothing below the floor. Recovery reads only
rows at or above the *current* floor, so what a store still retains between GC steps,
or for catch-up, never changes what a restart rebuilds.

Effects that need no storage (``RoundAdvanced``, ``AwaitBatch``, ``LeaderDecided``,
``Misbehaviour``, and frames that carry no vote) are listed explicitly in
:func:`write_set`; a new effect kind is a type error there until it is decided.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import assert_never

from dagrider.catchup import answer_from
from dagrider.coin import CoinShare
from dagrider.effects import (
    AwaitBatch,
    Broadcast,
    CheckpointReached,
    Commit,
    Delivered,
    Effect,
    LeaderDecided,
    Misbehaviour,
    Proposed,
    Requeued,
    RoundAdvanced,
    Send,
)
from dagrider.messages import Digest, Echo, Message, Ready, Vertex, Votes
from dagrider.ordering import OrderingState
from dagrider.process import Recovery

GC_STEP_ROUNDS = 17
"""A GC step runs once the floor rose this many rounds since the previous one: a store
deletes in a few statements every few waves, not on every commit."""


@dataclass(frozen=True)
class GcRules:
    """The knobs of garbage collection; the rules themselves are in the module doc.

    ``gc_depth`` is the process's (``Parameters.gc_depth``); ``retain_rounds`` how long
    vertices and READY votes stay below the floor to serve catch-up; ``step_rounds``
    how far the floor rises between two GC steps (1: at every rise).
    """

    gc_depth: int
    retain_rounds: int = 0
    step_rounds: int = GC_STEP_ROUNDS

    def __post_init__(self) -> None:
        if self.gc_depth < 1 or self.retain_rounds < 0 or self.step_rounds < 1:
            raise ValueError(f"bad GC rules: {self}")


def gc_floor(ordering: OrderingState | None, gc_depth: int) -> int:
    """The lowest round a process restarted from ``ordering`` still needs (the same
    value as :meth:`dagrider.ordering.Ordering.floor` of the process that exported it)."""
    return 0 if ordering is None else max(0, ordering.last_leader_round - gc_depth)


@dataclass(frozen=True, slots=True)
class Restart:
    """How a process restarts from its store, given the shell's fence (see
    :func:`restart_from`): the round to pass to :meth:`~dagrider.process.Process.fence`
    (0: none), and whether the store lost writes whose messages had left (then its
    pending transactions may ride in a lost proposal: the daemon holds them in doubt)."""

    fence: int
    lost: bool


def restart_from(
    sent_round: int,
    sent_flushes: int | None,
    store_flushes: int,
    fenced_through: int,
    stored_round: int,
) -> Restart:
    """Whether the store lost writes whose messages were sent, and where to fence.

    A shell counts its store's flushes (one per batch, written in the batch's own
    transaction) and, apart from the store, the highest round it sent a vertex or vote
    for (``sent_round``) and the count of the last flush whose messages left
    (``sent_flushes``), both recorded before the send. A store can only lose a suffix
    of its flushes (a deleted WAL, an older backup), so it lost sent messages exactly
    when ``store_flushes < sent_flushes``: then the process stays silent up to
    ``sent_round``. Comparing rounds instead misses losses: a member that lags
    votes for a peer's round r+1 before it proposes in round r, so losing the last
    flush (the proposal) leaves the highest stored round equal to the highest sent one.

    A loss is remembered by the store (``fenced_through``, written with the count
    raised to ``sent_flushes``): the rounds a fenced process skipped stay fenced at
    every later restart, since the votes sent in them before the loss are unknown for
    good. A shell without a flush count (``sent_flushes`` None: a fence written by an
    older version) falls back to comparing rounds with ``stored_round``, the highest
    round of a stored proposal or vote."""
    lost = sent_round > stored_round if sent_flushes is None else store_flushes < sent_flushes
    return Restart(max(fenced_through, sent_round) if lost else fenced_through, lost)


@dataclass(frozen=True, slots=True)
class GcStep:
    """Rows a store deletes in this batch (in the same transaction as its writes)."""

    floor: int  # own proposals and ECHO votes below it go; recovery reads from here
    keep: int  # vertices and READY votes below it go (``floor - retain_rounds``)
    next_wave: int  # received coin shares of waves below it go


@dataclass(frozen=True, slots=True)
class TakeFromMempool:
    """A fresh proposal took the first ``count`` pending transactions."""

    count: int


MempoolOp = TakeFromMempool | Requeued
"""In batch order: taking from and putting back at the front do not commute."""


@dataclass(frozen=True, slots=True)
class WriteSet:
    """Everything one batch of effects asks a store to write, and what it may drop.

    A store writes all of it in one transaction, before the batch's messages leave.
    Duplicates (a vote already stored, a vertex delivered twice) are expected: a store
    keeps the first row per key (votes: kind, round, source; vertices: digest; own:
    round; coin shares: wave, signer), as an ``INSERT OR IGNORE`` does.
    """

    delivered: tuple[Vertex, ...] = ()
    votes: tuple[Echo | Ready, ...] = ()
    own: tuple[Vertex, ...] = ()
    coin_shares: tuple[CoinShare, ...] = ()
    commits: tuple[Commit, ...] = ()
    checkpoints: tuple[OrderingState, ...] = ()
    mempool: tuple[MempoolOp, ...] = ()
    ordering: OrderingState | None = None  # the snapshot after this batch's commits
    gc: GcStep | None = None


def _votes_in(msg: Message, out: list[Echo | Ready]) -> None:
    """The votes a frame carries (a vote that leaves is a vote a restart must keep)."""
    match msg:
        case Echo() | Ready():
            out.append(msg)
        case Votes(echoes, readies):
            out += [Echo(r, s, d) for r, s, d in echoes]
            out += [Ready(r, s, d) for r, s, d in readies]
        case _:
            pass  # a vertex (stored as Proposed), a coin share (re-derived), a request


def write_set(
    effects: Sequence[Effect],
    ordering: OrderingState | None,
    received_shares: Iterable[CoinShare],
    rules: GcRules,
    last_gc: int,
) -> WriteSet:
    """Map one flush to what must be stored and what may be dropped.

    ``ordering`` is the process's snapshot taken after the batch (a shell passes it
    when the batch commits); ``received_shares`` the coin shares peers sent during
    the batch that the process accepted (``Process.accepts_coin_share``, asked before
    each was received); ``last_gc`` the floor of the store's previous GC step. The step, if
    this batch makes one, is in :attr:`WriteSet.gc`: the store remembers its floor.
    """
    delivered: list[Vertex] = []
    votes: list[Echo | Ready] = []
    own: list[Vertex] = []
    commits: list[Commit] = []
    checkpoints: list[OrderingState] = []
    mempool: list[MempoolOp] = []
    for e in effects:
        match e:
            case Broadcast(msg) | Send(_, msg):
                _votes_in(msg, votes)
            case Delivered(vertex):
                delivered.append(vertex)
            case Proposed(vertex, fresh):
                own.append(vertex)
                if fresh and vertex.block:
                    mempool.append(TakeFromMempool(len(vertex.block)))
            case Requeued():
                mempool.append(e)
            case Commit():
                commits.append(e)
            case CheckpointReached(state):
                checkpoints.append(state)
            case RoundAdvanced() | AwaitBatch() | LeaderDecided() | Misbehaviour():
                pass  # progress and timers: rebuilt from the stored state on restart
            case _:
                assert_never(e)
    gc = None
    if ordering is not None:
        floor = gc_floor(ordering, rules.gc_depth)
        if floor >= last_gc + rules.step_rounds:
            keep = max(0, floor - rules.retain_rounds)
            gc = GcStep(floor, keep, ordering.next_wave)
    return WriteSet(
        tuple(delivered),
        tuple(votes),
        tuple(own),
        tuple(received_shares),
        tuple(commits),
        tuple(checkpoints),
        tuple(mempool),
        ordering,
        gc,
    )


_ECHO, _READY = 1, 2  # the vote kinds, in the order a store lists a slot's votes


def vote_key(vote: Echo | Ready) -> tuple[int, int, int]:
    """(round, source, kind): the order in which a store lists votes for recovery."""
    return vote.round, vote.source, _ECHO if type(vote) is Echo else _READY


class MemoryStore:
    """The store's contents in memory, written from :class:`WriteSet` s exactly as the
    SQLite store writes them (the first row per key is kept; GC steps drop the same
    rows): the simulator's and the test cluster's "disk", which survives a crash of
    the process it belongs to."""

    def __init__(self, rules: GcRules) -> None:
        self.rules = rules
        self.gc_floor = 0  # floor of the last GC step
        self._delivered: dict[Digest, Vertex] = {}  # in delivery order
        self._votes: dict[tuple[int, int, int], Echo | Ready] = {}  # vote_key -> vote
        self._own: dict[int, Vertex] = {}
        self._shares: dict[tuple[int, int], CoinShare] = {}  # (wave, signer) -> share
        self.ordering: OrderingState | None = None
        self.log: list[Commit] = []  # every commit, in log order
        self.checkpoints: dict[int, OrderingState] = {}  # next_index -> state
        self.mempool: deque[bytes] = deque()
        self.flushes = 0  # batches applied (the SQLite store's meta ``flushes``)
        self.fenced_through = 0  # see :func:`restart_from`

    def mark_lost(self, fenced_through: int, flushes: int) -> None:
        """A restart found writes lost (:func:`restart_from`): remember the fence, and
        count on from the last flush that was sent."""
        self.fenced_through = max(self.fenced_through, fenced_through)
        self.flushes = max(self.flushes, flushes)

    # -- writes -------------------------------------------------------------------------

    def apply(
        self,
        effects: Sequence[Effect],
        ordering: OrderingState | None,
        received_shares: Iterable[CoinShare] = (),
    ) -> WriteSet:
        """Persist one batch (what a shell calls per flush); returns what was written."""
        ws = write_set(effects, ordering, received_shares, self.rules, self.gc_floor)
        self.write(ws)
        self.flushes += 1
        return ws

    def submit(self, txs: Iterable[bytes]) -> None:
        """Accepted client transactions, pending (the store's ``add_to_mempool``)."""
        self.mempool.extend(txs)

    def write(self, ws: WriteSet) -> None:
        delivered = self._delivered
        for v in ws.delivered:
            delivered.setdefault(v.digest, v)
        votes = self._votes
        for vote in ws.votes:
            votes.setdefault(vote_key(vote), vote)
        for v in ws.own:
            self._own.setdefault(v.round, v)
        for share in ws.coin_shares:
            self._shares.setdefault((share.wave, share.signer), share)
        for op in ws.mempool:
            match op:
                case TakeFromMempool(count):
                    for _ in range(min(count, len(self.mempool))):
                        self.mempool.popleft()
                case Requeued(txs):
                    self.mempool.extendleft(reversed(txs))
                case _:
                    assert_never(op)
        self.log += ws.commits
        for state in ws.checkpoints:
            self.checkpoints.setdefault(state.next_index, state)
        if ws.ordering is not None:
            self.ordering = ws.ordering
        if ws.gc is not None:
            self._collect(ws.gc)

    def _collect(self, step: GcStep) -> None:
        self.gc_floor = step.floor
        floor, keep = step.floor, step.keep
        self._delivered = {d: v for d, v in self._delivered.items() if v.round >= keep}
        self._votes = {
            k: v for k, v in self._votes.items() if v.round >= (floor if k[2] == _ECHO else keep)
        }
        self._own = {r: v for r, v in self._own.items() if r >= floor}
        self._shares = {k: s for k, s in self._shares.items() if k[0] >= step.next_wave}

    # -- reads --------------------------------------------------------------------------

    @property
    def floor(self) -> int:
        """The current GC floor (of the stored ordering snapshot)."""
        return gc_floor(self.ordering, self.rules.gc_depth)

    @property
    def committed(self) -> int:
        return 0 if self.ordering is None else self.ordering.next_index

    @property
    def delivered(self) -> list[Vertex]:
        """Every vertex held (retained ones below the floor too), in delivery order."""
        return list(self._delivered.values())

    @property
    def votes(self) -> list[Echo | Ready]:
        """Every vote held, in (round, source, kind) order."""
        return [self._votes[k] for k in sorted(self._votes)]

    @property
    def own(self) -> list[Vertex]:
        return [self._own[r] for r in sorted(self._own)]

    @property
    def coin_shares(self) -> list[CoinShare]:
        return [self._shares[k] for k in sorted(self._shares)]

    def recovery(self) -> Recovery:
        """What a restart reloads: the rows at and above the current floor (the SQLite
        store's ``load_recovery`` reads the same rows in the same order)."""
        floor = self.floor
        next_wave = 0 if self.ordering is None else self.ordering.next_wave
        return Recovery(
            delivered=[v for v in self._delivered.values() if v.round >= floor],
            votes=[v for v in self.votes if v.round >= floor],
            own=[v for v in self.own if v.round >= floor],
            coin_shares=[s for s in self.coin_shares if s.wave >= next_wave],
            committed=self.committed,
            ordering=self.ordering,
        )

    def catchup(
        self, first: int, last: int, max_bytes: int | None = None
    ) -> list[tuple[Ready, Vertex | None]]:
        """Our READY votes for rounds [first, last) with the vertices they voted for
        (the SQLite store's ``catchup``)."""
        readies = [v for v in self._votes.values() if type(v) is Ready]
        limit = max_bytes if max_bytes is not None else 1 << 62
        return answer_from(readies, self._delivered, first, last, limit)
