"""Random histories of flushes for the persistence projection's tests.

A history is what a shell hands its store, batch by batch: effects (deliveries, votes
in every form a frame carries them, proposals, requeues, commits with their log
positions, checkpoints, and the effects that need no storage), the ordering snapshot
when the batch commits, the coin shares received, and client transactions accepted
before it. Rounds are drawn around the last leader's round, well below the GC floor
too, and keys repeat (a second vote for a slot, a vertex delivered twice, a second
proposal for a round) so that "the first row per key wins" is exercised.

:func:`reference` is what a restart must get back, computed from the whole history
by the definition in :mod:`dagrider.persistence`, without the projection or GC.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from dagbuilder import coin_keys, domain
from hypothesis import strategies as st

from dagrider.checkpoint import CHAIN_GENESIS, chain_next, entry_hash, pack_block
from dagrider.coin import CoinShare, make_share
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
from dagrider.messages import CoinShareMsg, Echo, Ready, Val, Vertex, VertexRef, Votes, genesis
from dagrider.ordering import OrderingState
from dagrider.persistence import gc_floor
from dagrider.process import Recovery

N = 4
ME = 0
GC_DEPTH = 8
WAVES = 24  # coin shares are drawn for waves 1..WAVES


@dataclass(frozen=True)
class Batch:
    submitted: tuple[bytes, ...]  # accepted by the API before this flush
    effects: tuple[Effect, ...]
    ordering: OrderingState | None  # the snapshot, when the batch commits
    shares: tuple[CoinShare, ...]  # received from peers during the batch


def vertex(rnd: int, source: int, block: tuple[bytes, ...]) -> Vertex:
    """A vertex the codec accepts (edges to made-up digests of the previous round)."""
    if rnd == 1:
        strong = tuple(g.ref for g in genesis(N)[:3])
    else:
        strong = tuple(VertexRef(rnd - 1, s, bytes([s + 1]) * 32) for s in range(3))
    return Vertex(rnd, source, block, strong, ())


@cache
def share(wave: int, signer: int) -> CoinShare:
    pub, secrets = coin_keys(N)
    return make_share(secrets[signer], pub.verification_keys[signer], wave, domain())


_blocks = st.lists(st.sampled_from([b"a", b"b", b"c", b"dd", b"eee"]), max_size=3).map(tuple)


@st.composite
def histories(draw: st.DrawFn, max_batches: int = 14) -> list[Batch]:
    """A history whose leader round (so the GC floor) and next wave only rise."""
    leader = 0  # last_leader_round
    next_wave = 1
    decided = 0
    index = 0
    tx_index = 0
    chain = CHAIN_GENESIS
    out: list[Batch] = []
    for _ in range(draw(st.integers(1, max_batches))):
        low, high = max(1, leader - 20), leader + 8
        rounds = st.integers(low, high)
        effects: list[Effect] = []
        committed = False
        for _ in range(draw(st.integers(0, 8))):
            kind = draw(
                st.sampled_from(
                    ["deliver", "vote", "votes", "propose", "requeue", "commit", "noise"]
                )
            )
            if kind == "deliver":
                effects.append(
                    Delivered(vertex(draw(rounds), draw(st.integers(0, 3)), draw(_blocks)))
                )
            elif kind == "vote":
                cls = draw(st.sampled_from([Echo, Ready]))
                vote = cls(
                    draw(rounds), draw(st.integers(0, 3)), bytes([draw(st.integers(1, 2))]) * 32
                )
                if draw(st.booleans()):
                    effects.append(Broadcast(vote))
                else:  # a vote re-sent to one peer (resync) is a vote that left too
                    effects.append(Send(draw(st.integers(1, 3)), vote))
            elif kind == "votes":
                keys = st.tuples(
                    rounds, st.integers(0, 3), st.sampled_from([b"\x01" * 32, b"\x02" * 32])
                )
                effects.append(
                    Broadcast(
                        Votes(
                            tuple(draw(st.lists(keys, max_size=3))),
                            tuple(draw(st.lists(keys, max_size=3))),
                        )
                    )
                )
            elif kind == "propose":
                effects.append(
                    Proposed(vertex(draw(rounds), ME, draw(_blocks)), draw(st.booleans()))
                )
            elif kind == "requeue":
                effects.append(Requeued(draw(_blocks)))
            elif kind == "commit":
                committed = True
                for _ in range(draw(st.integers(1, 3))):
                    v = vertex(draw(rounds), draw(st.integers(0, 3)), draw(_blocks))
                    wave = max(1, next_wave - 1)
                    commit = Commit(index, tx_index, v, wave, v.ref)
                    if v.block:
                        block = pack_block(v.block)
                        entry = entry_hash(index, tx_index, v.round, v.source, wave, block)
                        chain = chain_next(chain, entry)
                    effects.append(commit)
                    index += 1
                    tx_index += len(v.block)
                leader += draw(st.integers(0, 12))
                next_wave = max(next_wave, leader // 4 + 1)
                decided = next_wave - 1
                if draw(st.booleans()):  # as the ordering does at an interval position
                    effects.append(
                        CheckpointReached(
                            OrderingState(
                                next_wave, decided, leader, index, tx_index, (), (), chain
                            )
                        )
                    )
            else:
                effects.append(
                    draw(
                        st.sampled_from(
                            [
                                RoundAdvanced(leader + 1),
                                AwaitBatch(leader + 1, idle=True),
                                LeaderDecided(decided, None, False, False),
                                Misbehaviour(2, "noise"),
                                Broadcast(Val(vertex(leader + 1, ME, ()))),
                                Broadcast(CoinShareMsg(share(1, ME))),
                            ]
                        )
                    )
                )
        ordering = (
            OrderingState(next_wave, decided, leader, index, tx_index, (), (), chain)
            if committed
            else None
        )
        waves = st.integers(max(1, next_wave - 3), min(WAVES, next_wave + 3))
        shares = draw(st.lists(st.tuples(waves, st.integers(1, 3)), max_size=3))
        submitted = draw(st.lists(st.sampled_from([b"t1", b"t2", b"t3"]), max_size=3))
        out.append(
            Batch(tuple(submitted), tuple(effects), ordering, tuple(share(w, s) for w, s in shares))
        )
    return out


def _votes(msg: object) -> list[Echo | Ready]:
    if isinstance(msg, Echo | Ready):
        return [msg]
    if isinstance(msg, Votes):
        return [Echo(*k) for k in msg.echoes] + [Ready(*k) for k in msg.readies]
    return []


def reference(history: Sequence[Batch]) -> tuple[Recovery, list[bytes]]:
    """What a restart after ``history`` must reload, by definition: the first row per
    key ever written, at or above the current floor; and the pending mempool."""
    delivered: dict[bytes, Vertex] = {}
    votes: dict[tuple[int, int, int], Echo | Ready] = {}
    own: dict[int, Vertex] = {}
    shares: dict[tuple[int, int], CoinShare] = {}
    ordering: OrderingState | None = None
    mempool: deque[bytes] = deque()
    for batch in history:
        mempool.extend(batch.submitted)
        for e in batch.effects:
            if isinstance(e, Broadcast | Send):
                for v in _votes(e.msg):
                    votes.setdefault((v.round, v.source, 1 if isinstance(v, Echo) else 2), v)
            elif isinstance(e, Delivered):
                delivered.setdefault(e.vertex.digest, e.vertex)
            elif isinstance(e, Proposed):
                own.setdefault(e.vertex.round, e.vertex)
                if e.fresh:
                    for _ in range(min(len(e.vertex.block), len(mempool))):
                        mempool.popleft()
            elif isinstance(e, Requeued):
                mempool.extendleft(reversed(e.txs))
        for s in batch.shares:
            shares.setdefault((s.wave, s.signer), s)
        if batch.ordering is not None:
            ordering = batch.ordering
    floor = gc_floor(ordering, GC_DEPTH)
    next_wave = ordering.next_wave if ordering else 0
    recovery = Recovery(
        delivered=[v for v in delivered.values() if v.round >= floor],
        votes=[votes[k] for k in sorted(votes) if k[0] >= floor],
        own=[own[r] for r in sorted(own) if r >= floor],
        coin_shares=[shares[k] for k in sorted(shares) if k[0] >= next_wave],
        committed=ordering.next_index if ordering else 0,
        ordering=ordering,
    )
    return recovery, list(mempool)


def log_of(history: Sequence[Batch]) -> list[bytes]:
    """Every committed transaction, in log order."""
    return [
        tx
        for batch in history
        for e in batch.effects
        if isinstance(e, Commit)
        for tx in e.vertex.block
    ]
