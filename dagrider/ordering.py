"""DAG-Rider's commit rule and total order (Algorithm 3 of "All You Need is DAG").

Waves are evaluated strictly in order, each once both conditions hold: the process has
completed the wave's fourth round, and the wave's coin is known. Evaluating a wave later
than the paper does (with a larger DAG) is safe: if any correct process commits a wave's
leader, every later leader has a strong path to it, because any two sets of 2f+1
vertices of a round intersect.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagrider.checkpoint import CHAIN_GENESIS, chain_next, entry_hash, ordering_digest, pack_block
from dagrider.dag import Dag
from dagrider.effects import CheckpointReached, Commit, Effect, LeaderDecided
from dagrider.messages import Digest, NodeId, Vertex


def wave_round(wave: int, k: int) -> int:
    """Round k (1..4) of wave ``wave`` (1-based): round(w, k) = 4(w-1) + k."""
    return 4 * (wave - 1) + k


@dataclass(frozen=True)
class OrderingState:
    """What a restarted process needs to resume ordering without the pruned DAG.

    Persisted with the commits it describes (one store transaction), so that a restart
    continues at exactly the next log index.
    """

    next_wave: int
    decided_wave: int
    last_leader_round: int
    next_index: int
    next_tx_index: int
    ordered: tuple[tuple[bytes, int], ...]  # (digest, round) above the GC floor
    # Leaders of waves above decided_wave: a later commit walks back through them, and
    # their coins cannot be rebuilt once peers have moved on.
    leaders: tuple[tuple[int, NodeId], ...] = ()
    # Hash chain of the committed log (entries with transactions), see dagrider.checkpoint.
    chain: bytes = CHAIN_GENESIS

    def digest(self, gc_depth: int) -> bytes:
        """The agreed part of this state (see :func:`dagrider.checkpoint.ordering_digest`)."""
        return ordering_digest(
            self.decided_wave,
            self.last_leader_round,
            self.next_index,
            self.next_tx_index,
            self.chain,
            self.ordered,
            gc_depth,
        )


class Ordering:
    """Turns the DAG plus the coin's leaders into ``Commit`` effects."""

    def __init__(self, n: int, f: int, gc_depth: int, checkpoint_interval: int = 0) -> None:
        self.n = n
        self.quorum = 2 * f + 1
        self.gc_depth = gc_depth
        self.checkpoint_interval = checkpoint_interval  # 0: no checkpoints
        self.chain = CHAIN_GENESIS
        self.next_wave = 1  # next wave to evaluate
        self.decided_wave = 0  # last wave whose leader was committed
        self.last_leader_round = 0
        self.next_index = 0
        self.next_tx_index = 0
        self.leaders: dict[int, NodeId] = {}
        self._ordered: dict[Digest, int] = {}  # digest -> round, pruned with the DAG

    def export_state(self) -> OrderingState:
        return OrderingState(
            self.next_wave,
            self.decided_wave,
            self.last_leader_round,
            self.next_index,
            self.next_tx_index,
            tuple(sorted(self._ordered.items(), key=lambda kv: (kv[1], kv[0]))),
            tuple(sorted((w, x) for w, x in self.leaders.items() if w > self.decided_wave)),
            self.chain,
        )

    def checkpoint_state(self) -> OrderingState:
        """The state at a checkpoint: only what every correct node agrees on (ordered
        digests at or above the floor, no leaders of undecided waves)."""
        floor = self.floor()
        return OrderingState(
            self.next_wave,
            self.decided_wave,
            self.last_leader_round,
            self.next_index,
            self.next_tx_index,
            tuple(
                sorted(
                    ((d, r) for d, r in self._ordered.items() if r >= floor),
                    key=lambda kv: (kv[1], kv[0]),
                )
            ),
            (),
            self.chain,
        )

    def import_state(self, state: OrderingState) -> None:
        self.next_wave = state.next_wave
        self.decided_wave = state.decided_wave
        self.last_leader_round = state.last_leader_round
        self.next_index = state.next_index
        self.next_tx_index = state.next_tx_index
        self._ordered = dict(state.ordered)
        self.leaders.update(dict(state.leaders))
        self.chain = state.chain

    def set_leader(self, wave: int, leader: NodeId) -> None:
        self.leaders.setdefault(wave, leader)

    def advance(self, dag: Dag, completed_wave: int) -> list[Effect]:
        """Evaluate every wave that is complete and whose coin is known, in order."""
        out: list[Effect] = []
        while self.next_wave <= completed_wave and self.next_wave in self.leaders:
            before = self.next_index
            out += self._wave_ready(dag, self.next_wave)
            self.next_wave += 1
            every = self.checkpoint_interval
            if every and self.next_index // every > before // every:
                # First wave boundary past a multiple: the same place on every node.
                out.append(CheckpointReached(self.checkpoint_state()))
        return out

    def is_ordered(self, digest: Digest) -> bool:
        return digest in self._ordered

    def floor(self) -> int:
        """Lowest round that ordering can still need (the GC horizon)."""
        return max(0, self.last_leader_round - self.gc_depth)

    def prune(self, floor: int) -> None:
        self._ordered = {d: r for d, r in self._ordered.items() if r >= floor}
        self.leaders = {w: x for w, x in self.leaders.items() if w > self.decided_wave}

    def _leader_vertex(self, dag: Dag, wave: int) -> Vertex | None:
        return dag.vertex_at(wave_round(wave, 1), self.leaders[wave])

    def _wave_ready(self, dag: Dag, wave: int) -> list[Effect]:
        v = self._leader_vertex(dag, wave)
        if v is None:
            return []
        support = sum(
            1 for u in dag.by_round.get(wave_round(wave, 4), {}).values() if dag.strong_path(u, v)
        )
        if support < self.quorum:
            return []
        stack: list[tuple[int, Vertex]] = [(wave, v)]
        decided: list[Effect] = [LeaderDecided(wave, v.ref, committed=True, direct=True)]
        for w in range(wave - 1, self.decided_wave, -1):
            prev = self._leader_vertex(dag, w)
            if prev is not None and dag.strong_path(v, prev):
                stack.append((w, prev))
                decided.append(LeaderDecided(w, prev.ref, committed=True, direct=False))
                v = prev
            else:
                decided.append(LeaderDecided(w, None, committed=False, direct=False))
        self.decided_wave = wave
        out: list[Effect] = sorted(
            decided, key=lambda e: e.wave if isinstance(e, LeaderDecided) else 0
        )
        while stack:
            w, leader = stack.pop()
            out += self._order_history(dag, w, leader)
        return out

    def _order_history(self, dag: Dag, wave: int, leader: Vertex) -> list[Effect]:
        """Append the leader's not-yet-ordered causal history, sorted by (round, source).

        The history is cut ``gc_depth`` rounds below the *previous* committed leader, a
        round every correct process agrees on, so all of them cut at the same place and
        skipped waves between two committed leaders never push vertices below the cut.
        """
        floor = self.floor()
        out: list[Effect] = []
        for u in dag.history(leader, floor, self._ordered.keys()):
            self._ordered[u.digest] = u.round
            packed = b""
            if u.block:
                packed = pack_block(u.block)
                entry = entry_hash(
                    self.next_index, self.next_tx_index, u.round, u.source, wave, packed
                )
                self.chain = chain_next(self.chain, entry)
            out.append(Commit(self.next_index, self.next_tx_index, u, wave, leader.ref, packed))
            self.next_index += 1
            self.next_tx_index += len(u.block)
        self.last_leader_round = leader.round
        return out
