"""The DAG: buffering until parents arrive, structural and weak-edge rules, reachability
against a brute-force DFS, weak-edge candidates, pruning and reindexing."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from dagbuilder import (
    BIG_ROUND,
    Rounds,
    dag_of,
    flatten,
    index,
    insert,
    make_rounds,
    make_vertex,
    random_rounds,
    reachable,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from dagrider.dag import Dag, check_structure
from dagrider.errors import InvalidVertex
from dagrider.messages import Vertex, VertexRef, genesis


def by_digest(rounds: Rounds) -> dict[bytes, Vertex]:
    return {v.digest: v for v in flatten(rounds)}


# -- insertion and buffering --------------------------------------------------------------


def test_insertion_waits_for_parents() -> None:
    rounds = make_rounds(4, 1, 3)
    dag = Dag(4, 1, 50)
    v3 = rounds[2][0]
    assert dag.add(v3, BIG_ROUND) == ([], [])
    assert v3.digest not in dag
    assert dag.buffered() == 1
    inserted, _ = insert(dag, rounds[1])
    assert inserted == []
    assert dag.buffered() == 5
    # The last missing round-1 parent makes everything flow, in ascending rounds.
    inserted, _ = insert(dag, rounds[0][:3])
    assert inserted == rounds[0][:3]
    assert dag.buffered() == 5
    inserted, rejected = dag.add(rounds[0][3], BIG_ROUND)
    assert rejected == []
    assert inserted == [rounds[0][3], *rounds[1], v3]
    assert dag.buffered() == 0
    assert len(dag) == 4 + 4 + 4 + 1


def test_adding_twice_is_a_no_op() -> None:
    rounds = make_rounds(4, 1, 2)
    dag = dag_of(4, rounds)
    assert dag.add(rounds[1][2], BIG_ROUND) == ([], [])
    orphan = make_rounds(4, 3, 3, parents=rounds[1])[0][0]
    assert dag.add(orphan, 2) == ([], [])
    assert dag.add(orphan, 2) == ([], [])
    assert dag.buffered() == 1


@settings(max_examples=examples(2.4), deadline=None)
@given(st.data())
def test_insertion_in_any_arrival_order(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**32), label="seed")
    rounds = random_rounds(4, 5, random.Random(seed), missing_prob=0.15, weak_prob=0.5)
    vertices = flatten(rounds[1:])
    order = data.draw(st.permutations(vertices), label="order")
    table = by_digest(rounds)
    dag = Dag(4, 1, 50)
    added: set[bytes] = set()
    for v in order:
        inserted, rejected = dag.add(v, BIG_ROUND)
        assert rejected == []
        added.add(v.digest)
        for u in inserted:  # a vertex is only inserted after all of its parents
            assert all(e.digest in dag for e in u.edges())
        # Exactly the added vertices whose whole history was added are in the DAG.
        expected = {
            d
            for d in added
            if reachable([table[d]], table) - {g.digest for g in rounds[0]} <= added
        }
        assert {x.digest for x in dag.vertices() if x.round > 0} == expected
    assert dag.buffered() == 0
    assert len(dag) == len(flatten(rounds))
    for v in vertices:
        assert dag.vertex_at(v.round, v.source) == v


def test_vertices_above_current_round_wait() -> None:
    rounds = make_rounds(4, 1, 3)
    dag = Dag(4, 1, 50)
    inserted, _ = insert(dag, flatten(rounds), current_round=1)
    assert inserted == rounds[0]
    assert dag.round_size(2) == 0
    assert dag.buffered() == 8
    inserted, _ = dag.drain(2)
    assert inserted == rounds[1]
    inserted, _ = dag.drain(3)
    assert inserted == rounds[2]
    assert dag.buffered() == 0


# -- structural rules ---------------------------------------------------------------------

G = genesis(4)
R1 = make_rounds(4, 1, 3)
R = index([list(G), *R1])


def ref(rnd: int, source: int) -> VertexRef:
    return R[(rnd, source)].ref


def vx(rnd: int, strong: Sequence[VertexRef], weak: Sequence[VertexRef] = ()) -> Vertex:
    return Vertex(rnd, 0, (), tuple(strong), tuple(weak))


@pytest.mark.parametrize(
    ("v", "words"),
    [
        (vx(0, []), "round 0"),
        (vx(2, [ref(1, 0), ref(1, 1)]), "strong edges"),
        (vx(2, [ref(1, 0), ref(1, 1), ref(1, 1)]), "same source"),
        (vx(2, [ref(1, 0), ref(1, 1), ref(1, 2), ref(1, 2)]), "same source"),
        (vx(3, [ref(2, 0), ref(2, 1), ref(1, 2)]), "strong edge to round 1"),
        (vx(3, [ref(2, 0), ref(2, 1), ref(3, 2)]), "strong edge to round 3"),
        (vx(2, [ref(1, 0), ref(1, 1), VertexRef(1, 4, b"\x00" * 32)]), "unknown source"),
        (vx(3, [ref(2, 0), ref(2, 1), ref(2, 2)], [ref(2, 3)]), "weak edge to round 2"),
        (vx(3, [ref(2, 0), ref(2, 1), ref(2, 2)], [ref(3, 3)]), "weak edge to round 3"),
        (vx(3, [ref(2, 0), ref(2, 1), ref(2, 2)], [ref(0, 3)]), "beyond gc depth"),
        (
            vx(3, [ref(2, 0), ref(2, 1), ref(2, 2)], [ref(1, 3), ref(1, 3)]),
            "two weak edges",
        ),
        (
            vx(3, [ref(2, 0), ref(2, 1), ref(2, 2)], [VertexRef(1, 9, b"\x00" * 32)]),
            "unknown source",
        ),
    ],
)
def test_check_structure_rejects(v: Vertex, words: str) -> None:
    with pytest.raises(InvalidVertex) as info:
        check_structure(v, 4, 1, 50)
    assert words in str(info.value)


def test_check_structure_gc_depth() -> None:
    strong = [VertexRef(19, s, b"\x00" * 32) for s in range(3)]
    ok = Vertex(20, 0, (), tuple(strong), (VertexRef(12, 1, b"\x01" * 32),))
    check_structure(ok, 4, 1, 8)  # 20 - 8 = 12 is the oldest weak round allowed
    old = Vertex(20, 0, (), tuple(strong), (VertexRef(11, 1, b"\x01" * 32),))
    with pytest.raises(InvalidVertex, match="gc depth"):
        check_structure(old, 4, 1, 8)
    check_structure(old, 4, 1, 9)


def test_check_structure_accepts_valid_vertices() -> None:
    for v in flatten(make_rounds(7, 1, 4, missing={(2, 3), (2, 5)})):
        check_structure(v, 7, 2, 50)
    rounds = make_rounds(4, 1, 4, strong_from={(2, s): [1, 2, 3] for s in range(4)})
    late = make_vertex(3, 0, rounds[1], [rounds[0][0]])
    check_structure(late, 4, 1, 50)


# -- the weak-edge rule at insertion -------------------------------------------------------


def orphan_rounds() -> Rounds:
    """n=4, rounds 1..3: nobody in round 2 points at (1, 0)."""
    return make_rounds(4, 1, 3, strong_from={(2, s): [1, 2, 3] for s in range(4)})


def test_weak_edge_to_an_unreachable_vertex_is_accepted() -> None:
    rounds = orphan_rounds()
    dag = dag_of(4, [rounds[0], rounds[1]])
    v = make_vertex(3, 0, rounds[1], [rounds[0][0]])
    assert dag.add(v, BIG_ROUND) == ([v], [])
    assert dag.path(v, rounds[0][0])
    assert not dag.strong_path(v, rounds[0][0])


def test_weak_edge_to_a_reachable_vertex_is_flagged() -> None:
    rounds = make_rounds(4, 1, 2)
    dag = dag_of(4, rounds)
    v = make_vertex(3, 0, rounds[1], [rounds[0][1]])
    inserted, flagged = dag.add(v, BIG_ROUND)
    assert inserted == [v]
    assert [(x, "already reachable" in why) for x, why in flagged] == [(v, True)]
    assert v.digest in dag
    assert dag.buffered() == 0


def test_weak_edge_reachable_through_another_weak_edge_is_flagged() -> None:
    # (2, 0) and (1, 0) are orphans; (2, 0) -> (1, 0). A round-4 vertex may point at
    # (2, 0) but not at both.
    strong_from = {(2, s): [1, 2, 3] for s in range(1, 4)}
    strong_from.update({(3, s): [1, 2, 3] for s in range(4)})
    rounds = make_rounds(4, 1, 3, strong_from=strong_from)
    dag = dag_of(4, rounds)
    r1, r2, r3 = rounds
    good = make_vertex(4, 0, r3, [r2[0]])
    both = make_vertex(4, 1, r3, [r1[0], r2[0]])
    assert dag.add(good, BIG_ROUND) == ([good], [])
    inserted, flagged = dag.add(both, BIG_ROUND)
    # Flagged against its source but inserted: a redundant weak edge changes no path.
    assert inserted == [both]
    assert [x for x, _ in flagged] == [both]
    assert dag.path(good, r1[0])
    assert dag.path(both, r1[0]) and dag.path(both, r2[0])


def test_flagged_vertex_still_unblocks_its_descendants() -> None:
    rounds = make_rounds(4, 1, 2)
    bad = make_vertex(3, 0, rounds[1], [rounds[0][1]])
    others = make_rounds(4, 3, 3, parents=rounds[1], missing={(3, 0)})[0]
    child = make_vertex(4, 1, [bad, *others[:2]])
    dag = dag_of(4, rounds)
    assert insert(dag, others) == (others, [])
    assert dag.add(child, BIG_ROUND) == ([], [])
    inserted, flagged = dag.add(bad, BIG_ROUND)
    assert [x for x, _ in flagged] == [bad]
    assert inserted == [bad, child]
    assert dag.buffered() == 0


def test_weak_edge_rule_does_not_depend_on_local_pruning() -> None:
    # A late vertex (10, 0) with a redundant weak edge to (3, 1). A process that has
    # pruned below round 4 and one that has not must agree on whether it is in the DAG.
    rounds = make_rounds(4, 1, 12, missing={(10, 0)})
    table = index(rounds)
    late = make_vertex(10, 0, rounds[8], [table[(3, 1)]])
    check_structure(late, 4, 1, 8)
    pruned, unpruned = dag_of(4, rounds, gc_depth=8), dag_of(4, rounds, gc_depth=8)
    pruned.prune(4)
    outcome_pruned = pruned.add(late, BIG_ROUND)
    outcome_unpruned = unpruned.add(late, BIG_ROUND)
    assert (late.digest in pruned) == (late.digest in unpruned)
    assert outcome_pruned[0] == outcome_unpruned[0] == [late]
    # Only the report may differ: the pruned process cannot see the redundancy.
    assert [x for x, _ in outcome_unpruned[1]] == [late]


def test_second_vertex_for_a_slot_does_not_replace_the_first() -> None:
    rounds = make_rounds(4, 1, 2)
    dag = dag_of(4, rounds)
    twin = make_vertex(1, 0, genesis(4), block=(b"other",))
    dag.add(twin, BIG_ROUND)
    assert dag.vertex_at(1, 0) == rounds[0][0]
    assert twin.digest not in dag
    assert dag.get(twin.digest) is None


def test_second_vertex_for_a_slot_is_not_reported_inserted() -> None:
    rounds = make_rounds(4, 1, 1)
    dag = dag_of(4, rounds)
    twin = make_vertex(1, 0, genesis(4), block=(b"other",))
    inserted, _ = dag.add(twin, BIG_ROUND)
    assert inserted == []


# -- reachability and weak candidates against brute force ----------------------------------


dag_params = st.fixed_dictionaries(
    {
        "n": st.sampled_from([4, 7]),
        "last": st.integers(2, 7),
        "seed": st.integers(0, 2**32),
        "missing": st.sampled_from([0.0, 0.2, 0.4]),
        "weak": st.sampled_from([0.0, 0.3, 0.8]),
    }
)


def build(p: dict[str, float], gc_depth: int = 50) -> tuple[Rounds, Dag]:
    rounds = random_rounds(
        int(p["n"]),
        int(p["last"]),
        random.Random(p["seed"]),
        missing_prob=p["missing"],
        weak_prob=p["weak"],
        gc_depth=gc_depth,
    )
    return rounds, dag_of(int(p["n"]), rounds[1:], gc_depth=gc_depth)


@settings(max_examples=examples(1.6), deadline=None)
@given(dag_params)
def test_path_and_strong_path_agree_with_dfs(p: dict[str, float]) -> None:
    rounds, dag = build(p)
    table = by_digest(rounds)
    vertices = flatten(rounds)
    for v in vertices:
        reach = reachable([v], table)
        strong = reachable([v], table, strong_only=True)
        assert strong <= reach
        for u in vertices:
            assert dag.path(v, u) == (u.digest in reach), (v.ref, u.ref)
            assert dag.strong_path(v, u) == (u.digest in strong), (v.ref, u.ref)


def brute_weak_candidates(
    rounds: Rounds, table: dict[bytes, Vertex], new_round: int, strong: list[Vertex], low: int
) -> list[Vertex]:
    reach = reachable(strong, table)
    out: list[Vertex] = []
    for rnd in range(new_round - 2, low - 1, -1):
        if rnd >= len(rounds):
            continue
        for u in sorted(rounds[rnd], key=lambda x: x.source):
            if u.digest not in reach:
                out.append(u)
                reach |= reachable([u], table)
    return out


@settings(max_examples=examples(1.6), deadline=None)
@given(dag_params, st.data())
def test_weak_candidates_are_exactly_the_unreachable(
    p: dict[str, float], data: st.DataObject
) -> None:
    rounds, dag = build(p)
    table = by_digest(rounds)
    last = len(rounds) - 1
    new_round = data.draw(st.integers(2, last + 1), label="new_round")
    prev = rounds[new_round - 1]
    q = 2 * ((int(p["n"]) - 1) // 3) + 1
    strong = data.draw(st.lists(st.sampled_from(prev), min_size=q, unique=True), label="strong")
    strong.sort(key=lambda v: v.source)
    got = dag.weak_candidates(new_round, strong)
    assert got == brute_weak_candidates(rounds, table, new_round, strong, 1)
    # And a vertex built from them passes the insertion rule.
    v = make_vertex(new_round, 0, strong, sorted(got, key=lambda x: x.ref))
    check_structure(v, int(p["n"]), (int(p["n"]) - 1) // 3, 50)
    fresh = dag_of(int(p["n"]), rounds[1:new_round])
    assert fresh.add(v, BIG_ROUND) == ([v], [])
    # Every vertex two or more rounds below is now reachable from the new vertex.
    for rnd in range(1, new_round - 1):
        for u in rounds[rnd]:
            assert fresh.path(v, u)


def test_weak_candidates_respect_gc_depth_and_floor() -> None:
    # (1..12, 0) are all orphans: nobody points at source 0 after round 1.
    strong_from = {(r, s): [1, 2, 3] for r in range(2, 15) for s in range(4)}
    rounds = make_rounds(4, 1, 14, strong_from=strong_from)
    dag = dag_of(4, rounds, gc_depth=8)
    strong = [v for v in rounds[13] if v.source != 0]
    got = dag.weak_candidates(15, strong)
    assert [(v.round, v.source) for v in got] == [(r, 0) for r in range(13, 6, -1)]
    dag.prune(10)
    got = dag.weak_candidates(15, strong)
    assert [(v.round, v.source) for v in got] == [(r, 0) for r in range(13, 9, -1)]


def test_history_agrees_with_dfs() -> None:
    rounds = random_rounds(4, 8, random.Random(5), missing_prob=0.2, weak_prob=0.6)
    dag = dag_of(4, rounds[1:])
    table = by_digest(rounds)
    leader = rounds[8][0]
    skip = {rounds[4][0].digest, rounds[3][1].digest} & set(table)
    got = dag.history(leader, 2, skip)
    # Brute force: walk from the leader, never through skipped vertices or below round 2.
    seen: set[bytes] = set()
    stack = [leader]
    while stack:
        v = stack.pop()
        if v.digest in seen:
            continue
        seen.add(v.digest)
        for e in v.edges():
            if e.round >= 2 and e.digest not in skip:
                stack.append(table[e.digest])
    expected = sorted((table[d] for d in seen), key=lambda x: (x.round, x.source))
    assert got == expected
    assert [(v.round, v.source) for v in got] == sorted((v.round, v.source) for v in got)


# -- pruning ------------------------------------------------------------------------------


def test_prune_drops_rounds_and_counts_pruned_references_as_present() -> None:
    rounds = make_rounds(4, 1, 6, missing={(3, 3)})
    dag = dag_of(4, rounds[:5])
    dropped = dag.prune(3)
    assert sorted((v.round, v.source) for v in dropped) == [
        (r, s) for r in range(3) for s in range(4)
    ]
    assert dag.floor == 3
    assert dag.round_size(2) == 0
    assert dag.round_size(3) == 3
    assert rounds[1][0].digest not in dag
    assert dag.vertex_at(1, 0) is None
    assert dag.prune(2) == []
    assert dag.floor == 3
    # Below the floor: ignored.
    stale = make_vertex(2, 0, genesis(4)[1:], block=(b"stale",))
    assert dag.add(stale, BIG_ROUND) == ([], [])
    assert dag.buffered() == 0
    # A late (3, 3) points at round 2, which is gone: its parents count as present.
    late = make_vertex(3, 3, rounds[1], block=(b"late",))
    assert dag.add(late, BIG_ROUND) == ([late], [])
    assert dag.path(late, late)
    # Round 6 arrives on top of what is left.
    inserted, rejected = insert(dag, rounds[5])
    assert inserted == rounds[5]
    assert rejected == []
    assert dag.path(rounds[5][0], rounds[2][2])
    assert dag.strong_path(rounds[5][0], rounds[2][2])
    assert not dag.path(rounds[5][0], late)


def test_prune_drops_buffered_vertices_below_the_floor() -> None:
    rounds = make_rounds(4, 1, 4)
    dag = Dag(4, 1, 50)
    insert(dag, rounds[1] + rounds[2])  # all waiting for round 1
    assert dag.buffered() == 8
    dag.prune(3)
    assert dag.buffered() == 4
    inserted, _ = insert(dag, rounds[3])
    assert inserted == rounds[2] + rounds[3]


def test_reindex_after_many_prunes_keeps_paths_correct() -> None:
    n, gc = 4, 8
    rounds = random_rounds(n, 600, random.Random(11), missing_prob=0.2, weak_prob=0.5, gc_depth=gc)
    table = by_digest(rounds)
    dag = Dag(n, 1, gc)
    reindexed = False
    for rnd in range(1, len(rounds)):
        inserted, rejected = insert(dag, rounds[rnd])
        assert rejected == [] and inserted == rounds[rnd]
        before = dag._next_bit
        dag.prune(max(0, rnd - 10))
        reindexed |= dag._next_bit < before
        if rnd % 97 == 0 or rnd == len(rounds) - 1:
            window = list(dag.vertices())
            assert all(v.round >= dag.floor for v in window)
            assert len(window) == sum(len(rounds[r]) for r in range(dag.floor, rnd + 1))
            for v in window:
                reach = reachable([v], table, floor=dag.floor)
                strong = reachable([v], table, strong_only=True, floor=dag.floor)
                for u in window:
                    assert dag.path(v, u) == (u.digest in reach)
                    assert dag.strong_path(v, u) == (u.digest in strong)
    assert reindexed
    assert dag._next_bit < len(table) - 500  # bits were renumbered, not just appended
    # Weak candidates after reindexing agree with brute force over the window.
    last = len(rounds) - 1
    got = dag.weak_candidates(last + 1, rounds[last])
    assert got == brute_weak_candidates(rounds, table, last + 1, rounds[last], last + 1 - gc)
