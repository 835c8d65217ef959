"""DAG-Rider's commit rule and total order on hand-built DAGs with explicit leaders."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest
from dagbuilder import (
    Key,
    Rounds,
    dag_of,
    faults,
    flatten,
    index,
    insert,
    make_rounds,
    random_rounds,
    reachable,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from dagrider.dag import Dag
from dagrider.effects import Commit, Effect, LeaderDecided
from dagrider.ordering import Ordering, wave_round


def ordering_for(n: int, leaders: Mapping[int, int], gc_depth: int = 50) -> Ordering:
    o = Ordering(n, faults(n), gc_depth)
    for w, leader in leaders.items():
        o.set_leader(w, leader)
    return o


def commits(effects: Iterable[Effect]) -> list[Commit]:
    return [e for e in effects if isinstance(e, Commit)]


def decisions(effects: Iterable[Effect]) -> list[LeaderDecided]:
    return [e for e in effects if isinstance(e, LeaderDecided)]


def keys(effects: Iterable[Effect]) -> list[Key]:
    return [(c.vertex.round, c.vertex.source) for c in commits(effects)]


def check_log(log: list[Commit]) -> None:
    """Indices consecutive from 0, tx indices cumulative, nothing twice."""
    tx = 0
    for i, c in enumerate(log):
        assert c.index == i
        assert c.tx_index == tx
        tx += len(c.vertex.block)
    digests = [c.vertex.digest for c in log]
    assert len(set(digests)) == len(digests)


def chain_support(n: int, supporters: Iterable[int], last_round: int = 4) -> Rounds:
    """Leader (1, 0) is reached only through (2, 0) -> (3, 0) -> the round-4 ``supporters``;
    everyone else ignores source 0 in rounds 2 and 3. Rounds 5.. are full."""
    others = list(range(1, n))
    strong_from: dict[Key, list[int]] = {}
    for rnd in (2, 3):
        for s in others:
            strong_from[(rnd, s)] = others
    for s in set(range(n)) - set(supporters):
        strong_from[(4, s)] = others
    return make_rounds(n, 1, last_round, strong_from=strong_from)


# -- (a) a directly committed leader -------------------------------------------------------


def test_committed_leader() -> None:
    rounds = make_rounds(4, 1, 4)
    dag = dag_of(4, rounds)
    o = ordering_for(4, {1: 2})
    leader = rounds[0][2]
    out = o.advance(dag, 1)
    assert out == [
        LeaderDecided(1, leader.ref, committed=True, direct=True),
        Commit(0, 0, leader, 1, leader.ref),
    ]
    assert o.decided_wave == 1
    assert o.is_ordered(leader.digest)
    assert o.advance(dag, 1) == []


@pytest.mark.parametrize("n", [4, 7])
def test_exactly_a_quorum_of_supporters_commits(n: int) -> None:
    q = 2 * faults(n) + 1
    rounds = chain_support(n, range(q))
    dag = dag_of(n, rounds)
    leader = rounds[0][0]
    assert sum(dag.strong_path(u, leader) for u in rounds[3]) == q
    out = ordering_for(n, {1: 0}).advance(dag, 1)
    assert decisions(out) == [LeaderDecided(1, leader.ref, True, True)]
    assert keys(out) == [(1, 0)]


def test_second_wave_orders_the_rest_of_the_history() -> None:
    def block(rnd: int, source: int) -> tuple[bytes, ...]:
        return tuple(b"%d.%d.%d" % (rnd, source, i) for i in range((rnd + source) % 3))

    rounds = make_rounds(4, 1, 8, block=block)
    dag = dag_of(4, rounds)
    o = ordering_for(4, {1: 2, 2: 1})
    out = o.advance(dag, 1) + o.advance(dag, 2)
    log = commits(out)
    check_log(log)
    assert keys(out) == [(1, 2)] + [
        (r, s) for r in range(1, 5) for s in range(4) if (r, s) != (1, 2)
    ] + [(5, 1)]
    assert [c.wave for c in log] == [1] + [2] * 16
    assert {c.leader for c in log[1:]} == {rounds[4][1].ref}
    assert log[-1].tx_index + len(log[-1].vertex.block) == o.next_tx_index
    assert o.next_index == 17
    assert o.last_leader_round == 5


# -- (b) skipped leaders -------------------------------------------------------------------


def test_missing_leader_vertex_is_skipped() -> None:
    rounds = make_rounds(4, 1, 8, missing={(1, 3)})
    dag = dag_of(4, rounds)
    o = ordering_for(4, {1: 3, 2: 0})
    assert o.advance(dag, 1) == []
    assert o.decided_wave == 0
    out = o.advance(dag, 2)
    assert decisions(out) == [
        LeaderDecided(1, None, committed=False, direct=False),
        LeaderDecided(2, rounds[4][0].ref, committed=True, direct=True),
    ]
    assert keys(out)[-1] == (5, 0)
    assert {c.wave for c in commits(out)} == {2}
    check_log(commits(out))


@pytest.mark.parametrize("n", [4, 7])
def test_only_2f_supporters_is_not_a_commit(n: int) -> None:
    f = faults(n)
    rounds = chain_support(n, range(2 * f))
    dag = dag_of(n, rounds)
    leader = rounds[0][0]
    assert sum(dag.strong_path(u, leader) for u in rounds[3]) == 2 * f
    o = ordering_for(n, {1: 0})
    assert o.advance(dag, 1) == []
    assert o.decided_wave == 0
    assert not o.is_ordered(leader.digest)
    assert o.next_wave == 2


def test_waves_wait_for_their_coin_and_are_evaluated_in_order() -> None:
    rounds = make_rounds(4, 1, 8)
    dag = dag_of(4, rounds)
    o = Ordering(4, 1, 50)
    o.set_leader(2, 0)
    assert o.advance(dag, 2) == []  # wave 1's coin is unknown: wave 2 must wait
    o.set_leader(1, 1)
    o.set_leader(1, 3)  # the first leader sticks
    out = o.advance(dag, 1)
    assert decisions(out) == [LeaderDecided(1, rounds[0][1].ref, True, True)]
    out = o.advance(dag, 2)
    assert decisions(out) == [LeaderDecided(2, rounds[4][0].ref, True, True)]


def test_wave_not_yet_complete_is_not_evaluated() -> None:
    rounds = make_rounds(4, 1, 4)
    dag = dag_of(4, rounds)
    o = ordering_for(4, {1: 0})
    assert o.advance(dag, 0) == []
    assert o.next_wave == 1


# -- (c) recursive commit, (d) skipped without a strong path -----------------------------


@pytest.mark.parametrize("n", [4, 7])
def test_recursive_commit_orders_the_older_leader_first(n: int) -> None:
    f = faults(n)
    rounds = chain_support(n, range(2 * f), last_round=8)
    dag = dag_of(n, rounds)
    old, new = rounds[0][0], rounds[4][1]
    assert dag.strong_path(new, old)
    o = ordering_for(n, {1: 0, 2: 1})
    assert o.advance(dag, 1) == []
    out = o.advance(dag, 2)
    assert decisions(out) == [
        LeaderDecided(1, old.ref, committed=True, direct=False),
        LeaderDecided(2, new.ref, committed=True, direct=True),
    ]
    log = commits(out)
    check_log(log)
    assert log[0] == Commit(0, 0, old, 1, old.ref)
    assert all(c.wave == 2 and c.leader == new.ref for c in log[1:])
    assert log[-1].vertex == new
    assert o.decided_wave == 2


def test_leader_without_strong_path_from_the_next_leader_is_skipped() -> None:
    # (1, 0) is pointed at by (2, 0) only, and nobody in round 3 points at (2, 0).
    strong_from = {(2, s): [1, 2, 3] for s in range(1, 4)}
    strong_from.update({(3, s): [1, 2, 3] for s in range(4)})
    rounds = make_rounds(4, 1, 8, strong_from=strong_from)
    dag = dag_of(4, rounds)
    old, new = rounds[0][0], rounds[4][2]
    assert not dag.path(new, old)
    o = ordering_for(4, {1: 0, 2: 2})
    assert o.advance(dag, 1) == []
    out = o.advance(dag, 2)
    assert decisions(out) == [
        LeaderDecided(1, None, committed=False, direct=False),
        LeaderDecided(2, new.ref, committed=True, direct=True),
    ]
    ordered = set(keys(out))
    assert (1, 0) not in ordered
    assert (2, 0) not in ordered
    check_log(commits(out))


def test_weak_path_does_not_make_a_leader_committed() -> None:
    # As above, but (4, 1) has a weak edge to (2, 0): wave 2's leader reaches (1, 0),
    # only not by strong edges. The old leader is still skipped as a leader.
    strong_from = {(2, s): [1, 2, 3] for s in range(1, 4)}
    strong_from.update({(3, s): [1, 2, 3] for s in range(4)})
    rounds = make_rounds(4, 1, 8, strong_from=strong_from, weak={(4, 1): [(2, 0)]})
    dag = dag_of(4, rounds)
    old, new = rounds[0][0], rounds[4][2]
    assert dag.path(new, old) and not dag.strong_path(new, old)
    o = ordering_for(4, {1: 0, 2: 2})
    out = o.advance(dag, 1) + o.advance(dag, 2)
    assert decisions(out)[0] == LeaderDecided(1, None, committed=False, direct=False)
    # (f): the orphans (1, 0) and (2, 0) are ordered in wave 2's history.
    ordered = keys(out)
    assert ordered.index((1, 0)) < ordered.index((2, 0)) < ordered.index((5, 2))
    assert all(c.wave == 2 for c in commits(out))


# -- (e) causal order, integrity -----------------------------------------------------------


def test_history_is_in_round_source_order_and_nothing_twice() -> None:
    rounds = make_rounds(7, 1, 12, missing={(1, 5), (6, 2), (9, 0), (11, 4)})
    dag = dag_of(7, rounds)
    o = ordering_for(7, {1: 1, 2: 3, 3: 6})
    out = o.advance(dag, 3)
    log = commits(out)
    check_log(log)
    assert [d.wave for d in decisions(out) if d.committed] == [1, 2, 3]
    for wave in (1, 2, 3):
        seg = [(c.vertex.round, c.vertex.source) for c in log if c.wave == wave]
        assert seg == sorted(seg)
    # Wave 3's leader (9, 6) sees all of rounds 1..8: each of them exactly once.
    all_keys = [k for k in index(rounds) if k[0] > 0]
    wave1 = [k for k in all_keys if k[0] <= 4 and k != (1, 1)]
    wave2 = [k for k in all_keys if 5 <= k[0] <= 8 and k != (5, 3)]
    assert keys(out) == [(1, 1), *sorted(wave1), (5, 3), *sorted(wave2), (9, 6)]
    # Every parent of an ordered vertex is ordered before it.
    pos = {c.vertex.digest: c.index for c in log}
    for c in log:
        for e in c.vertex.edges():
            if e.round > 0:
                assert pos[e.digest] < c.index


# -- (f) weak edges ------------------------------------------------------------------------


def test_orphan_is_ordered_through_a_weak_edge() -> None:
    # (2, 3) is ignored by every round-3 vertex; (4, 0) picks it up with a weak edge.
    strong_from = {(3, s): [0, 1, 2] for s in range(4)}
    rounds = make_rounds(4, 1, 8, strong_from=strong_from, weak={(4, 0): [(2, 3)]})
    dag = dag_of(4, rounds)
    orphan = index(rounds)[(2, 3)]
    o = ordering_for(4, {1: 1, 2: 0})
    first = o.advance(dag, 1)
    assert orphan.digest not in {c.vertex.digest for c in commits(first)}
    second = o.advance(dag, 2)
    assert orphan.digest in {c.vertex.digest for c in commits(second)}
    check_log(commits(first + second))

    # Without the weak edge the orphan is never ordered.
    rounds = make_rounds(4, 1, 8, strong_from=strong_from)
    dag = dag_of(4, rounds)
    o = ordering_for(4, {1: 1, 2: 0})
    out = o.advance(dag, 2)
    assert (2, 3) not in keys(out)


# -- against a reference implementation of Algorithm 3 on random DAGs ----------------------


def reference_log(n: int, rounds: Rounds, leaders: Mapping[int, int], waves: int) -> list[bytes]:
    """The paper's ordering, computed by plain DFS over the vertex lists."""
    table = {v.digest: v for v in flatten(rounds)}
    at = index(rounds)
    quorum = 2 * faults(n) + 1
    decided = 0
    delivered: set[bytes] = set()
    log: list[bytes] = []
    for w in range(1, waves + 1):
        v = at.get((wave_round(w, 1), leaders[w]))
        if v is None:
            continue
        support = [
            u
            for u in rounds[wave_round(w, 4)]
            if v.digest in reachable([u], table, strong_only=True)
        ]
        if len(support) < quorum:
            continue
        stack = [v]
        for older in range(w - 1, decided, -1):
            prev = at.get((wave_round(older, 1), leaders[older]))
            if prev is not None and prev.digest in reachable([v], table, strong_only=True):
                stack.append(prev)
                v = prev
        decided = w
        while stack:
            leader = stack.pop()
            history = [table[d] for d in reachable([leader], table) - delivered]
            history = sorted((u for u in history if u.round > 0), key=lambda u: (u.round, u.source))
            delivered |= {u.digest for u in history}
            log += [u.digest for u in history]
    return log


@settings(max_examples=examples(3.2), deadline=None)
@given(
    n=st.sampled_from([4, 7]),
    waves=st.integers(1, 4),
    seed=st.integers(0, 2**32),
    missing=st.sampled_from([0.0, 0.15, 0.3]),
    weak=st.sampled_from([0.0, 0.5]),
    shun=st.sampled_from([0.0, 0.5, 0.9]),
    data=st.data(),
)
def test_random_dags_match_the_reference(
    n: int, waves: int, seed: int, missing: float, weak: float, shun: float, data: st.DataObject
) -> None:
    rng = random.Random(seed)
    leaders = {w: data.draw(st.integers(0, n - 1), label=f"leader{w}") for w in range(1, waves + 1)}
    rounds = random_rounds(
        n,
        4 * waves,
        rng,
        missing_prob=missing,
        weak_prob=weak,
        shun_prob=shun,
        leaders=leaders,
        extra_strong_prob=0.2,
    )
    dag = dag_of(n, rounds[1:])
    o = ordering_for(n, leaders)
    out: list[Effect] = []
    for w in range(1, waves + 1):
        out += o.advance(dag, w)
    log = commits(out)
    check_log(log)
    assert [c.vertex.digest for c in log] == reference_log(n, rounds, leaders, waves)
    # All at once gives the same effects as wave by wave.
    assert ordering_for(n, leaders).advance(dag, waves) == out
    # Every wave up to the last committed one is decided exactly once.
    decided = decisions(out)
    if decided:
        last = max(d.wave for d in decided if d.committed)
        assert sorted(d.wave for d in decided) == list(range(1, last + 1))
        assert o.decided_wave == last
    for d in decided:
        if d.committed:
            assert d.leader is not None
            assert d.leader.round == wave_round(d.wave, 1)
            assert d.leader.source == leaders[d.wave]
    # Causal order.
    pos = {c.vertex.digest: c.index for c in log}
    for c in log:
        assert all(pos[e.digest] < c.index for e in c.vertex.edges() if e.round > 0)


def test_pruning_does_not_change_the_log() -> None:
    n, gc = 4, 8
    rng = random.Random(3)
    rounds = random_rounds(n, 60, rng, missing_prob=0.2, weak_prob=0.5, gc_depth=gc)
    leaders = {w: rng.randrange(n) for w in range(1, 16)}

    def run(prune: bool) -> list[Commit]:
        dag = Dag(n, faults(n), gc)
        o = ordering_for(n, leaders, gc_depth=gc)
        log: list[Commit] = []
        for rnd in range(1, len(rounds)):
            inserted, rejected = insert(dag, rounds[rnd])
            assert inserted == rounds[rnd] and rejected == []
            if rnd % 4 == 0:
                log += commits(o.advance(dag, rnd // 4))
                if prune and o.floor() > dag.floor:
                    dag.prune(o.floor())
                    o.prune(o.floor())
        return log

    pruned, kept = run(True), run(False)
    assert [c.vertex.digest for c in pruned] == [c.vertex.digest for c in kept]
    assert len(pruned) > 100
    check_log(pruned)


def test_skipped_waves_do_not_push_history_below_the_cut() -> None:
    # gc_depth 8: wave 1 commits (1, 0); waves 2..4 have no leader vertex; wave 5's
    # leader (17, 0) is cut 8 rounds below the *previous* committed leader, not below
    # itself, so rounds 2..8 are still ordered.
    gc = 8
    rounds = make_rounds(4, 1, 20, missing={(5, 0), (9, 0), (13, 0)})
    dag = dag_of(4, rounds, gc_depth=gc)
    o = ordering_for(4, dict.fromkeys(range(1, 6), 0), gc_depth=gc)
    out = o.advance(dag, 5)
    assert [(d.wave, d.committed) for d in decisions(out)] == [
        (1, True),
        (2, False),
        (3, False),
        (4, False),
        (5, True),
    ]
    expected = [k for k in index(rounds) if 1 <= k[0] <= 16] + [(17, 0)]
    assert sorted(keys(out)) == sorted(expected)
    check_log(commits(out))
    assert o.floor() == 17 - gc


def test_floor_follows_the_last_leader() -> None:
    rounds = make_rounds(4, 1, 12)
    dag = dag_of(4, rounds)
    o = ordering_for(4, {1: 0, 2: 0, 3: 0}, gc_depth=8)
    o.advance(dag, 3)
    assert o.last_leader_round == 9
    assert o.floor() == 1
    o.prune(1)
    assert o.is_ordered(rounds[1][0].digest)
    o.prune(3)
    assert not o.is_ordered(rounds[1][0].digest)
    assert o.is_ordered(rounds[2][0].digest)
