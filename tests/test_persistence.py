"""The persistence projection: what a flush writes, what GC drops, what a restart gets.

The SQLite store against the same histories: ``tests/node/test_store_projection.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from persistence_cases import GC_DEPTH, Batch, histories, reference, share, vertex
from test_process import Cluster

from dagrider.effects import (
    AwaitBatch,
    Broadcast,
    CheckpointReached,
    Commit,
    Delivered,
    LeaderDecided,
    Misbehaviour,
    Proposed,
    Requeued,
    RoundAdvanced,
    Send,
)
from dagrider.messages import CoinShareMsg, Echo, Ready, Val, Votes
from dagrider.ordering import OrderingState
from dagrider.params import Parameters
from dagrider.persistence import (
    GC_STEP_ROUNDS,
    GcRules,
    GcStep,
    MemoryStore,
    TakeFromMempool,
    gc_floor,
    write_set,
)
from sim.runner import SimConfig, _Run

D1, D2 = b"\x01" * 32, b"\x02" * 32


def state(leader: int, next_wave: int = 1, next_index: int = 0) -> OrderingState:
    return OrderingState(next_wave, next_wave - 1, leader, next_index, 0, ())


def replay(store: MemoryStore, history: Sequence[Batch]) -> None:
    for batch in history:
        store.submit(batch.submitted)
        store.apply(batch.effects, batch.ordering, batch.shares)


# -- one batch ---------------------------------------------------------------------------


def test_a_batch_is_sorted_into_what_each_table_needs() -> None:
    own = vertex(3, 0, (b"x", b"y"))
    replayed = vertex(2, 0, (b"z",))
    other = vertex(3, 1, ())
    commit = Commit(0, 0, other, 1, other.ref)
    ordering = state(4, 2, 1)
    effects = [
        Broadcast(Val(own)),  # our vertex: stored as Proposed, not as a vote
        Proposed(own),
        Proposed(replayed, fresh=False),  # its transactions left the mempool before
        Broadcast(Echo(3, 1, D1)),
        Send(2, Ready(3, 1, D1)),
        Broadcast(Votes(((3, 2, D2),), ((3, 3, D2),))),
        Broadcast(CoinShareMsg(share(1, 0))),  # our own share: derived again, not stored
        Delivered(other),
        Requeued((b"q",)),
        commit,
        CheckpointReached(ordering),
        RoundAdvanced(4),
        AwaitBatch(4),
        LeaderDecided(1, other.ref, True, True),
        Misbehaviour(2, "x"),
    ]
    ws = write_set(effects, ordering, [share(1, 2)], GcRules(GC_DEPTH), last_gc=0)
    assert ws.own == (own, replayed)
    assert ws.votes == (Echo(3, 1, D1), Ready(3, 1, D1), Echo(3, 2, D2), Ready(3, 3, D2))
    assert ws.delivered == (other,)
    assert ws.mempool == (TakeFromMempool(2), Requeued((b"q",)))
    assert ws.commits == (commit,)
    assert ws.checkpoints == (ordering,)
    assert ws.coin_shares == (share(1, 2),)
    assert ws.ordering == ordering
    assert ws.gc is None  # floor 0


@pytest.mark.parametrize(("retain", "step"), [(0, GC_STEP_ROUNDS), (5, GC_STEP_ROUNDS), (3, 1)])
def test_a_gc_step_comes_once_the_floor_rose_far_enough(retain: int, step: int) -> None:
    rules = GcRules(GC_DEPTH, retain_rounds=retain, step_rounds=step)
    last = 10
    below = state(GC_DEPTH + last + step - 1, next_wave=7)
    assert write_set([], below, [], rules, last).gc is None
    at = state(GC_DEPTH + last + step, next_wave=7)
    floor = last + step
    assert write_set([], at, [], rules, last).gc == GcStep(floor, max(0, floor - retain), 7)
    assert write_set([], None, [], rules, 0).gc is None  # no snapshot, no step


def test_bad_rules_are_refused() -> None:
    for bad in (
        {"gc_depth": 0},
        {"gc_depth": 8, "retain_rounds": -1},
        {"gc_depth": 8, "step_rounds": 0},
    ):
        with pytest.raises(ValueError, match="bad GC rules"):
            GcRules(**bad)


def test_gc_keeps_ready_votes_and_vertices_for_catch_up_but_not_echoes() -> None:
    store = MemoryStore(GcRules(GC_DEPTH, retain_rounds=4, step_rounds=1))
    old = vertex(20, 1, (b"a",))
    kept = vertex(17, 2, (b"b",))
    gone = vertex(15, 2, (b"c",))
    store.apply(
        [
            Delivered(old),
            Delivered(kept),
            Delivered(gone),
            Broadcast(Echo(20, 1, old.digest)),
            Broadcast(Ready(20, 1, old.digest)),
            Broadcast(Echo(17, 2, kept.digest)),
            Broadcast(Ready(17, 2, kept.digest)),
            Broadcast(Ready(15, 2, gone.digest)),
            Proposed(vertex(19, 0, ())),
            Proposed(vertex(21, 0, ())),
        ],
        None,
        [share(5, 1), share(6, 1)],
    )
    store.apply([], state(GC_DEPTH + 21, next_wave=6), [])  # floor 21, keep 17
    assert store.gc_floor == 21
    assert [(type(v).__name__, v.round) for v in store.votes] == [("Ready", 17), ("Ready", 20)]
    assert {v.round for v in store.delivered} == {17, 20}
    assert [v.round for v in store.own] == [21]
    assert [s.wave for s in store.coin_shares] == [6]
    # A restart needs none of it below the floor; catch-up still serves the window.
    recovery = store.recovery()
    assert recovery.delivered == recovery.votes == []
    assert [v.round for v in recovery.own] == [21]
    assert store.catchup(0, 100) == [
        (Ready(17, 2, kept.digest), kept),
        (Ready(20, 1, old.digest), old),
    ]


def test_the_first_row_per_key_wins_as_in_sqlite() -> None:
    store = MemoryStore(GcRules(GC_DEPTH))
    first, second = vertex(3, 0, (b"1",)), vertex(3, 0, (b"2",))
    store.apply([Broadcast(Echo(3, 1, D1)), Proposed(first), Delivered(first)], None, [])
    store.apply([Broadcast(Echo(3, 1, D2)), Proposed(second), Delivered(first)], None, [])
    assert store.votes == [Echo(3, 1, D1)]
    assert store.own == [first]
    assert store.delivered == [first]


def test_the_mempool_follows_takes_and_requeues_in_batch_order() -> None:
    store = MemoryStore(GcRules(GC_DEPTH))
    store.submit([b"a", b"b", b"c"])
    v = vertex(1, 0, (b"a", b"b"))
    store.apply([Proposed(v), Requeued((b"x", b"y")), Proposed(vertex(2, 0, (b"x",)))], None, [])
    assert list(store.mempool) == [b"y", b"c"]


# -- whole histories ---------------------------------------------------------------------


@given(
    histories(),
    st.sampled_from(
        [
            GcRules(GC_DEPTH),
            GcRules(GC_DEPTH, 0, 1),
            GcRules(GC_DEPTH, 6, 1),
            GcRules(GC_DEPTH, 3, 5),
        ]
    ),
)
def test_gc_never_drops_what_recovery_needs(history: list[Batch], rules: GcRules) -> None:
    """Whatever the GC rules and wherever the history stops, the store recovers what
    the definition says (every row at or above the floor, first per key)."""
    store = MemoryStore(rules)
    for at in range(len(history)):
        replay(store, history[at : at + 1])
        expected, mempool = reference(history[: at + 1])
        assert store.recovery() == expected
        assert list(store.mempool) == mempool
        # What catch-up needs, retain_rounds below the floor, is still there too.
        keep = max(0, gc_floor(store.ordering, GC_DEPTH) - rules.retain_rounds)
        never_gc = MemoryStore(GcRules(GC_DEPTH, step_rounds=1 << 30))
        replay(never_gc, history[: at + 1])
        assert store.catchup(keep, 1 << 30) == never_gc.catchup(keep, 1 << 30)


@given(histories(), st.integers(0, 6))
def test_right_after_a_gc_step_nothing_below_its_cuts_is_left(
    history: list[Batch], retain: int
) -> None:
    store = MemoryStore(GcRules(GC_DEPTH, retain_rounds=retain, step_rounds=1))
    for batch in history:
        store.submit(batch.submitted)
        step = store.apply(batch.effects, batch.ordering, batch.shares).gc
        if step is None:
            continue
        assert step.keep == max(0, step.floor - retain) and store.gc_floor == step.floor
        assert all(v.round >= step.keep for v in store.delivered)
        assert all(v.round >= step.floor for v in store.own)
        for vote in store.votes:
            assert vote.round >= (step.floor if isinstance(vote, Echo) else step.keep)
        assert all(s.wave >= step.next_wave for s in store.coin_shares)


# -- the shells that use it ---------------------------------------------------------------


def test_the_cluster_store_floor_is_the_process_floor() -> None:
    """Nodes run past several GC steps: each store's floor is its process's, and a
    node rebuilt from its store alone reaches the same state."""
    c = Cluster(seed=2, params=Parameters(gc_depth=8))
    c.start()
    c.run_until(c.waves_done(8))
    for i in range(c.n):
        store = c.stores[i]
        floor = c.procs[i].ordering.floor()
        assert floor > 0 and store.floor == floor == store.gc_floor
        assert min(v.round for v in store.delivered) >= floor
    fresh = c.restart(1)
    assert fresh.ordering.next_index == len(c.logs[1])


def test_the_simulator_collects_its_stores_by_the_same_rules() -> None:
    cfg = SimConfig(nodes=4, faults=1, byzantine="crash", waves=10, gc_depth=8, retain_rounds=6)
    run = _Run(cfg, 3, None)
    result = run.run()
    assert result.ok, result.summary()
    assert result.restarts >= 1
    for node in run.nodes:
        store = node.store
        assert store.rules == GcRules(8, 6)
        assert store.gc_floor > 0, "no GC step in a run of 10 waves at gc_depth 8"
        keep = store.gc_floor - 6
        assert min(v.round for v in store.delivered) >= keep
        assert min(v.round for v in store.votes) >= keep
        assert all(v.round >= store.gc_floor for v in store.votes if isinstance(v, Echo))
        assert store.floor == node.process.ordering.floor()
