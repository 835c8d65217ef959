"""Hand-built DAGs and committees for tests, in the spirit of Narwhal's consensus fixtures.

Vertices are made directly (no reliable broadcast) and linked by digest, so a test can
say "rounds 1..8 of a committee of 4, with (1, 2) missing and (4, 0) ignoring (3, 1)" in
one line and then feed the result to a :class:`~dagrider.dag.Dag`:

    rounds = make_rounds(4, 1, 8, missing={(1, 2)}, strong_from={(4, 0): [0, 2, 3]})
    dag = dag_of(4, rounds)

``rounds[i]`` holds the vertices of round ``first_round + i`` sorted by source. Round 0 is
always :func:`dagrider.messages.genesis`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import cache

from dagrider.coin import CoinPublicKey, CoinSecretShare, deal
from dagrider.dag import Dag
from dagrider.messages import Vertex, genesis
from dagrider.params import Parameters
from dagrider.process import ProcessConfig

Key = tuple[int, int]  # (round, source)
Rounds = list[list[Vertex]]
BlockFn = Callable[[int, int], tuple[bytes, ...]]

BIG_ROUND = 10**9  # "current_round" that lets every buffered vertex in


def faults(n: int) -> int:
    """The f of a committee of n = 3f+1."""
    return (n - 1) // 3


def default_block(rnd: int, source: int) -> tuple[bytes, ...]:
    """One recognisable transaction per vertex."""
    return (b"tx-%d-%d" % (rnd, source),)


def empty_block(rnd: int, source: int) -> tuple[bytes, ...]:
    return ()


def make_vertex(
    rnd: int,
    source: int,
    strong: Iterable[Vertex],
    weak: Iterable[Vertex] = (),
    block: tuple[bytes, ...] = (),
) -> Vertex:
    """One vertex with edges to the given vertices, in the given order."""
    return Vertex(
        rnd,
        source,
        block,
        tuple(v.ref for v in strong),
        tuple(v.ref for v in weak),
    )


def make_rounds(
    n: int,
    first_round: int,
    last_round: int,
    parents: Sequence[Vertex] | None = None,
    missing: Collection[Key] = frozenset(),
    strong_from: Mapping[Key, Iterable[int]] | None = None,
    weak: Mapping[Key, Iterable[Key]] | None = None,
    history: Iterable[Vertex] = (),
    block: BlockFn = default_block,
) -> Rounds:
    """Build rounds ``first_round..last_round`` of a committee of ``n``.

    - ``parents``: the vertices of round ``first_round - 1``; genesis when omitted and
      ``first_round == 1``.
    - ``missing``: (round, source) pairs that get no vertex.
    - ``strong_from[(r, s)]``: the sources of round r-1 that vertex (r, s) points at;
      by default every present vertex of round r-1.
    - ``weak[(r, s)]``: (round, source) pairs of older vertices for weak edges; they are
      looked up among the vertices built here, ``parents`` and ``history``.
    - ``block(r, s)``: the transactions of vertex (r, s).

    Raises ``KeyError`` if an edge names a vertex that does not exist, so a typo in a
    fixture fails loudly instead of building a different DAG.
    """
    if parents is None:
        if first_round != 1:
            raise ValueError("parents are required unless first_round == 1")
        parents = genesis(n)
    strong_from = strong_from or {}
    weak = weak or {}
    known: dict[Key, Vertex] = {(v.round, v.source): v for v in history}
    known.update({(v.round, v.source): v for v in parents})
    prev = {v.source: v for v in parents}
    rounds: Rounds = []
    for rnd in range(first_round, last_round + 1):
        current: list[Vertex] = []
        for source in range(n):
            if (rnd, source) in missing:
                continue
            chosen = strong_from.get((rnd, source))
            strong = (
                [prev[s] for s in sorted(chosen)] if chosen is not None else list(prev.values())
            )
            weak_refs = [known[k] for k in sorted(weak.get((rnd, source), ()))]
            v = make_vertex(rnd, source, strong, weak_refs, block(rnd, source))
            current.append(v)
        for v in current:
            known[(v.round, v.source)] = v
        prev = {v.source: v for v in current}
        rounds.append(current)
    return rounds


def flatten(rounds: Iterable[Iterable[Vertex]]) -> list[Vertex]:
    return [v for r in rounds for v in r]


def index(rounds: Iterable[Iterable[Vertex]]) -> dict[Key, Vertex]:
    """(round, source) -> vertex, including genesis."""
    out: dict[Key, Vertex] = {}
    for v in flatten(rounds):
        out[(v.round, v.source)] = v
    return out


def insert(
    dag: Dag, vertices: Iterable[Vertex], current_round: int = BIG_ROUND
) -> tuple[list[Vertex], list[tuple[Vertex, str]]]:
    """``dag.add`` every vertex; returns all inserted and rejected vertices."""
    inserted: list[Vertex] = []
    rejected: list[tuple[Vertex, str]] = []
    for v in vertices:
        ins, rej = dag.add(v, current_round)
        inserted += ins
        rejected += rej
    return inserted, rejected


def dag_of(n: int, rounds: Iterable[Iterable[Vertex]], gc_depth: int = 50) -> Dag:
    """A fresh DAG holding every vertex of ``rounds``; fails if any is not inserted."""
    dag = Dag(n, faults(n), gc_depth)
    vertices = [v for v in flatten(rounds) if v.round > 0]
    inserted, rejected = insert(dag, vertices)
    assert not rejected, rejected
    assert len(inserted) == len(vertices), "fixture has dangling edges"
    return dag


# -- committees ---------------------------------------------------------------------------


@cache
def coin_keys(n: int, seed: int = 0) -> tuple[CoinPublicKey, tuple[CoinSecretShare, ...]]:
    """A deterministic threshold-coin dealing (threshold f+1) for a committee of ``n``."""
    pub, secrets = deal(n, faults(n) + 1, random.Random(seed).randbytes)
    return pub, tuple(secrets)


def domain(seed: int = 0) -> bytes:
    return hashlib.blake2b(b"test-committee-%d" % seed, digest_size=32).digest()


def process_configs(n: int, seed: int = 0, params: Parameters | None = None) -> list[ProcessConfig]:
    """One :class:`ProcessConfig` per member, sharing a deterministic dealing."""
    pub, secrets = coin_keys(n, seed)
    p = params if params is not None else Parameters()
    return [ProcessConfig(i, n, faults(n), pub, secrets[i], domain(seed), p) for i in range(n)]


# -- random DAGs and brute-force reachability ---------------------------------------------


def reachable(
    start: Iterable[Vertex],
    by_digest: Mapping[bytes, Vertex],
    strong_only: bool = False,
    floor: int = 0,
) -> set[bytes]:
    """Digests reachable from ``start`` (inclusive) by a plain DFS, never below ``floor``."""
    seen: set[bytes] = set()
    stack = [v for v in start if v.round >= floor]
    while stack:
        v = stack.pop()
        if v.digest in seen:
            continue
        seen.add(v.digest)
        edges = v.strong_edges if strong_only else v.edges()
        for e in edges:
            u = by_digest.get(e.digest)
            if u is not None and u.round >= floor and u.digest not in seen:
                stack.append(u)
    return seen


def random_rounds(
    n: int,
    last_round: int,
    rng: random.Random,
    missing_prob: float = 0.2,
    weak_prob: float = 0.5,
    gc_depth: int = 50,
    extra_strong_prob: float = 0.5,
    shun_prob: float = 0.0,
    leaders: Mapping[int, int] | None = None,
) -> Rounds:
    """A valid random DAG: random missing vertices, random quorums of strong edges and
    random weak edges, each to a vertex that is unreachable when it is added (the rule
    :meth:`Dag.add` enforces). ``rounds[0]`` is genesis.

    ``leaders`` (wave -> source) with ``shun_prob``: each wave's leader is, with that
    probability, starved: in rounds 2..4 of the wave most vertices leave out the (at most
    f) vertices of the round below that strongly reach it, so leaders with thin support
    (skipped, or committed only recursively) are common."""
    f = faults(n)
    quorum = 2 * f + 1
    rounds: Rounds = [list(genesis(n))]
    by_digest: dict[bytes, Vertex] = {}
    starve = False
    for rnd in range(1, last_round + 1):
        present = sorted(s for s in range(n) if rng.random() >= missing_prob) or list(range(quorum))
        while len(present) < quorum:
            present = sorted(set(present) | {rng.randrange(n)})
        window = max(1, rnd - gc_depth)
        current: list[Vertex] = []
        prev = rounds[rnd - 1]
        shunned: set[int] = set()
        wave, k = (rnd - 1) // 4 + 1, (rnd - 1) % 4 + 1
        if leaders is not None and k == 1:
            starve = rng.random() < shun_prob
        if leaders is not None and k > 1 and starve:
            target = [v for v in rounds[rnd - k + 1] if v.source == leaders.get(wave)]
            reaching = [
                v.source
                for v in prev
                if target and target[0].digest in reachable([v], by_digest, strong_only=True)
            ]
            shunned = set(rng.sample(reaching, min(f, len(prev) - quorum, len(reaching))))
        for source in present:
            pool = [v for v in prev if v.source not in shunned or rng.random() < 0.35]
            size = quorum + sum(rng.random() < extra_strong_prob for _ in pool[quorum:])
            strong = sorted(rng.sample(pool, min(size, len(pool))), key=lambda v: v.source)
            reach = reachable(strong, by_digest, floor=window)
            weak: list[Vertex] = []
            for older in range(rnd - 2, window - 1, -1):
                for u in rounds[older]:
                    if u.digest not in reach and rng.random() < weak_prob:
                        weak.append(u)
                        reach |= reachable([u], by_digest, floor=window)
            weak.sort(key=lambda v: v.ref)
            current.append(make_vertex(rnd, source, strong, weak, default_block(rnd, source)))
        for v in current:
            by_digest[v.digest] = v
        rounds.append(current)
    return rounds
