"""The round-based DAG of one process: buffering, validation, reachability, pruning.

Reachability (``path``) and strong reachability (``strong_path``) are answered from
per-vertex bitsets: vertex ``v`` gets a bit, and its history is the OR of its parents'
histories plus its own bit. Python integers make that an O(size/64) C loop, so the
weak-edge rule, the commit rule and ordering cost microseconds instead of graph walks.

Garbage collection (see the README's "Bounded memory"): the process keeps rounds
``>= floor``; a reference into a pruned round counts as present. Weak edges may only
reach ``gc_depth`` rounds back, so above the floor every rule is checked exactly.
"""

from __future__ import annotations

from collections.abc import Container, Iterator

from dagrider.errors import InvalidVertex
from dagrider.messages import Digest, NodeId, Vertex, genesis


def check_structure(
    v: Vertex, n: int, f: int, gc_depth: int, max_block_bytes: int | None = None
) -> None:
    """Rules that need nothing but the vertex itself (checked before we ECHO it)."""
    quorum = 2 * f + 1
    if v.round < 1:
        raise InvalidVertex(f"round {v.round}: only genesis has round 0")
    if max_block_bytes is not None:
        block_bytes = sum(map(len, v.block))
        if block_bytes > max_block_bytes:
            raise InvalidVertex(f"block of {block_bytes} bytes exceeds {max_block_bytes}")
    sources = [e.source for e in v.strong_edges]
    if len(v.strong_edges) < quorum:
        raise InvalidVertex(f"{len(v.strong_edges)} strong edges, need >= {quorum}")
    if len(set(sources)) != len(sources):
        raise InvalidVertex("two strong edges to the same source")
    for e in v.strong_edges:
        if e.round != v.round - 1:
            raise InvalidVertex(f"strong edge to round {e.round}, must be {v.round - 1}")
        if not 0 <= e.source < n:
            raise InvalidVertex(f"strong edge to unknown source {e.source}")
    seen: set[tuple[int, int]] = set()
    for e in v.weak_edges:
        if e.round >= v.round - 1:
            raise InvalidVertex(f"weak edge to round {e.round}, must be < {v.round - 1}")
        if e.round < max(1, v.round - gc_depth):
            raise InvalidVertex(f"weak edge to round {e.round}, beyond gc depth {gc_depth}")
        if not 0 <= e.source < n:
            raise InvalidVertex(f"weak edge to unknown source {e.source}")
        if (e.round, e.source) in seen:
            raise InvalidVertex(f"two weak edges to ({e.round}, {e.source})")
        seen.add((e.round, e.source))


class Dag:
    """Vertices delivered by reliable broadcast whose whole history is present."""

    def __init__(self, n: int, f: int, gc_depth: int) -> None:
        self.n = n
        self.f = f
        self.gc_depth = gc_depth
        self.floor = 0  # lowest round kept in memory
        self.by_round: dict[int, dict[NodeId, Vertex]] = {}
        self._vertex: dict[Digest, Vertex] = {}
        self._bit: dict[Digest, int] = {}
        self._hist: dict[Digest, int] = {}  # bits of every vertex reachable (incl. itself)
        self._shist: dict[Digest, int] = {}  # bits of every vertex strongly reachable
        self._round_bits: dict[int, int] = {}  # round -> bits of its vertices
        self._next_bit = 0
        self._buffer: dict[int, dict[Digest, Vertex]] = {}  # round -> waiting vertices
        for g in genesis(n):
            self._insert(g)

    # -- queries ------------------------------------------------------------------------

    def __contains__(self, digest: Digest) -> bool:
        return digest in self._vertex

    def get(self, digest: Digest) -> Vertex | None:
        return self._vertex.get(digest)

    def vertex_at(self, rnd: int, source: NodeId) -> Vertex | None:
        return self.by_round.get(rnd, {}).get(source)

    def round_size(self, rnd: int) -> int:
        return len(self.by_round.get(rnd, {}))

    def path(self, frm: Vertex, to: Vertex) -> bool:
        return bool(self._hist[frm.digest] & self._bit[to.digest])

    def strong_path(self, frm: Vertex, to: Vertex) -> bool:
        return bool(self._shist[frm.digest] & self._bit[to.digest])

    def lowest_missing_round(self, current_round: int) -> int | None:
        """Lowest round of a parent that a buffered vertex of a round we have reached
        still waits for (None if nothing waits): where a catch-up has to start.

        Vertices above ``current_round`` are not asked about: they wait for their turn
        anyway, and a Byzantine source's future vertex with invented parents must not
        make this process ask its peers for rounds nobody has.
        """
        low: int | None = None
        for rnd, bucket in self._buffer.items():
            if rnd > current_round:
                continue
            for v in bucket.values():
                for e in v.edges():
                    if e.round < self.floor or e.digest in self._vertex:
                        continue
                    if e.digest in self._buffer.get(e.round, ()):
                        continue  # delivered, only waiting for its own turn
                    if low is None or e.round < low:
                        low = e.round
        return low

    def buffered(self) -> int:
        return sum(len(b) for b in self._buffer.values())

    def __len__(self) -> int:
        return len(self._vertex)

    def vertices(self) -> Iterator[Vertex]:
        return iter(self._vertex.values())

    # -- building -----------------------------------------------------------------------

    def add(self, v: Vertex, current_round: int) -> tuple[list[Vertex], list[tuple[Vertex, str]]]:
        """Buffer a delivered vertex and insert everything that became insertable.

        Returns (inserted vertices in insertion order, flagged (vertex, reason) pairs).
        Vertices above ``current_round`` wait in the buffer, as in the paper.

        A *flagged* vertex broke the weak-edge rule (a weak edge to a vertex its other
        edges already reach). It is inserted all the same: such an edge changes no path,
        and rejecting it would make acceptance depend on how far this process has pruned
        (a pruned target cannot be checked), so correct processes could end up with
        different DAGs. The flag is reported against the source instead.
        """
        if v.round < self.floor or v.digest in self._vertex:
            return [], []
        bucket = self._buffer.setdefault(v.round, {})
        if v.digest in bucket:
            return [], []
        bucket[v.digest] = v
        return self.drain(current_round)

    def drain(self, current_round: int) -> tuple[list[Vertex], list[tuple[Vertex, str]]]:
        """Move every buffered vertex whose parents are present into the DAG.

        Parents always have lower rounds, so one ascending pass over the buffered rounds
        inserts everything that can be inserted.
        """
        inserted: list[Vertex] = []
        flagged: list[tuple[Vertex, str]] = []
        for rnd in sorted(r for r in self._buffer if r <= current_round):
            bucket = self._buffer[rnd]
            for v in sorted(bucket.values(), key=lambda x: x.source):
                if not self._parents_present(v):
                    continue
                del bucket[v.digest]
                try:
                    self._check_weak_edges(v)
                except InvalidVertex as exc:
                    flagged.append((v, str(exc)))
                if self._insert(v):
                    inserted.append(v)
            if not bucket:
                del self._buffer[rnd]
        return inserted, flagged

    def _parents_present(self, v: Vertex) -> bool:
        floor = self.floor
        vx = self._vertex
        return all(e.round < floor or e.digest in vx for e in v.strong_edges) and all(
            e.round < floor or e.digest in vx for e in v.weak_edges
        )

    def _check_weak_edges(self, v: Vertex) -> None:
        """A weak edge must add something: its target is not reachable otherwise."""
        reach = 0
        for e in v.strong_edges:
            reach |= self._hist.get(e.digest, 0)
        for e in sorted(v.weak_edges, reverse=True):
            bit = self._bit.get(e.digest)
            if bit is None:
                continue  # pruned: counted as present, nothing left to check
            if reach & bit:
                raise InvalidVertex(f"weak edge to ({e.round}, {e.source}) already reachable")
            reach |= self._hist[e.digest]

    def _insert(self, v: Vertex) -> bool:
        slot = self.by_round.setdefault(v.round, {})
        if v.source in slot:
            return False  # reliable broadcast delivers one vertex per (source, round)
        bit = 1 << self._next_bit
        self._next_bit += 1
        hist = shist = bit
        for e in v.strong_edges:
            h = self._hist.get(e.digest)
            if h is not None:
                hist |= h
                shist |= self._shist[e.digest]
        for e in v.weak_edges:
            hist |= self._hist.get(e.digest, 0)
        slot[v.source] = v
        self._round_bits[v.round] = self._round_bits.get(v.round, 0) | bit
        self._vertex[v.digest] = v
        self._bit[v.digest] = bit
        self._hist[v.digest] = hist
        self._shist[v.digest] = shist
        return True

    def weak_candidates(self, new_round: int, strong: list[Vertex]) -> list[Vertex]:
        """Vertices of rounds new_round-2 down to the gc window unreachable from ``strong``.

        Walks rounds downward, adding each unreachable vertex and its history, exactly
        as the paper's Algorithm 2 builds ``weakEdges``.
        """
        reach = 0
        for s in strong:
            reach |= self._hist[s.digest]
        weak: list[Vertex] = []
        low = max(1, self.floor, new_round - self.gc_depth)
        # Usually the strong edges reach the whole window: one mask test per round then
        # answers, instead of a test per vertex of the last gc_depth rounds.
        window = 0
        round_bits = self._round_bits
        for rnd in range(low, new_round - 1):
            window |= round_bits.get(rnd, 0)
        if not window & ~reach:
            return weak
        for rnd in range(new_round - 2, low - 1, -1):
            for source in sorted(self.by_round.get(rnd, {})):
                u = self.by_round[rnd][source]
                if not reach & self._bit[u.digest]:
                    weak.append(u)
                    reach |= self._hist[u.digest]
        return weak

    def history(self, leader: Vertex, floor: int, skip: Container[Digest]) -> list[Vertex]:
        """Vertices reachable from ``leader`` with round >= ``floor`` and not in ``skip``.

        Walks backwards and stops at skipped (already ordered) vertices, whose history
        above the floor is ordered already. Sorted by (round, source): the paper's
        deterministic order.
        """
        out: list[Vertex] = []
        seen: set[Digest] = {leader.digest}
        stack = [leader]
        while stack:
            v = stack.pop()
            out.append(v)
            for e in v.edges():
                if e.round < floor or e.digest in seen or e.digest in skip:
                    continue
                u = self._vertex.get(e.digest)
                if u is None or u.round == 0:
                    continue
                seen.add(e.digest)
                stack.append(u)
        out.sort(key=lambda x: (x.round, x.source))
        return out

    # -- memory -------------------------------------------------------------------------

    def prune(self, floor: int) -> list[Vertex]:
        """Drop every vertex below ``floor``; returns them (the shell may archive them)."""
        if floor <= self.floor:
            return []
        self.floor = floor
        dropped: list[Vertex] = []
        for rnd in [r for r in self.by_round if r < floor]:
            self._round_bits.pop(rnd, None)
            for v in self.by_round.pop(rnd).values():
                dropped.append(v)
                for table in (self._vertex, self._bit, self._hist, self._shist):
                    table.pop(v.digest, None)
        for rnd in [r for r in self._buffer if r < floor]:
            del self._buffer[rnd]
        if self._next_bit > 4 * len(self._vertex) + 1024:
            self._reindex()
        return dropped

    def _reindex(self) -> None:
        """Renumber bits densely after pruning so that bitsets stay small."""
        order = sorted(self._vertex.values(), key=lambda x: (x.round, x.source))
        self._bit.clear()
        self._hist.clear()
        self._shist.clear()
        self._round_bits.clear()
        self._next_bit = 0
        self.by_round = {}
        self._vertex.clear()
        for v in order:
            self._insert(v)
