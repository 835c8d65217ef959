"""The simulator at research scale: node steps, the batched network, and committees of
31 (in CI) and 64 (``DAGRIDER_SIM_LONG=1``: about ten minutes of CPU) keeping every
invariant.

A step is what the daemon does in one event-loop iteration: handle every frame that has
arrived, then flush once, with the step's votes in one ``Votes`` frame per peer. The
simulator models it with ``SimConfig.step_ms`` slots of virtual time.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from hypothesis_budget import examples
from test_sim_properties import check

from dagrider.codec import encode
from dagrider.messages import Echo, Votes
from sim.latency import Constant, Uniform
from sim.runner import SimConfig, _Run, run
from sim.world import Adversary, World

LONG = os.environ.get("DAGRIDER_SIM_LONG") == "1"


def drain(w: World) -> list[tuple[float, str, int, object]]:
    out = []
    while (ev := w.pop()) is not None:
        payload = list(ev.payload) if ev.kind == "inbox" else ev.payload
        out.append((ev.time, ev.kind, ev.node, payload))
    return out


# -- the batched network ------------------------------------------------------------------


def test_a_slot_s_arrivals_at_one_node_are_one_inbox_event() -> None:
    w = World(4, random.Random(0), Constant(50.0), None, step_ms=5.0)
    w.send(0, 1, b"a", None)
    w.send(2, 1, b"b", None)
    w.send(0, 2, b"c", None)
    w.now = 1.0  # arrives at 51: the next slot, 55
    w.send(3, 1, b"d", None)
    w.now = 0.0
    assert drain(w) == [
        (50.0, "inbox", 1, [(0, b"a", None), (2, b"b", None)]),
        (50.0, "inbox", 2, [(0, b"c", None)]),
        (55.0, "inbox", 1, [(3, b"d", None)]),
    ]
    assert w.sent.messages == 4


def test_a_zero_delay_goes_to_the_next_slot_not_the_one_being_handled() -> None:
    w = World(2, random.Random(0), Constant(0.0), None, step_ms=5.0)
    w.now = 10.0
    w.send(0, 1, b"x", None)
    assert drain(w) == [(15.0, "inbox", 1, [(0, b"x", None)])]


def test_an_inbox_handled_is_closed_later_arrivals_open_a_new_one() -> None:
    w = World(2, random.Random(0), Constant(5.0), None, step_ms=5.0)
    w.send(0, 1, b"first", None)
    ev = w.pop()
    assert ev is not None and ev.kind == "inbox" and ev.time == 5.0
    w.send(1, 0, b"reply", None)
    w.send(0, 1, b"second", None)
    assert [(t, n, p) for t, _, n, p in drain(w)] == [
        (10.0, 0, [(1, b"reply", None)]),
        (10.0, 1, [(0, b"second", None)]),
    ]


@pytest.mark.parametrize("step", [0.0, 1.0, 5.0])
@pytest.mark.parametrize("adversarial", [False, True])
def test_broadcast_is_exactly_n_minus_1_sends(step: float, adversarial: bool) -> None:
    """Same random draws, same schedule, same counters, fast path or not."""

    def world() -> World:
        adv = Adversary(slow_nodes=1) if adversarial else None
        return World(7, random.Random(3), Uniform(), adv, step_ms=step)

    msg = Echo(1, 0, bytes(32))
    data = encode(msg)
    a, b = world(), world()
    for src in (0, 3, 6, 0):
        a.now = b.now = src * 7.5
        a.broadcast(src, data, msg)
        for dst in range(7):
            if dst != src:
                b.send(src, dst, data, msg)
    assert (a.sent.messages, a.sent.bytes) == (b.sent.messages, b.sent.bytes)
    a.now = b.now = 0.0
    assert drain(a) == drain(b)
    assert a.rng.random() == b.rng.random()


def test_broadcast_across_a_partition_is_held_like_sends() -> None:
    w = World(4, random.Random(0), Constant(10.0), None, step_ms=1.0)
    w.split([0, 0, 1, 1])
    w.broadcast(0, b"v", None)
    assert sorted(dst for _, dst, _, _ in w.held) == [2, 3]
    assert drain(w) == [(10.0, "inbox", 1, [(0, b"v", None)])]


def test_step_ms_must_be_a_finite_non_negative_number() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="step_ms"):
            World(4, random.Random(0), Constant(), None, step_ms=bad)
    with pytest.raises(ValueError, match="--step-ms"):
        SimConfig(step_ms=-1.0)


# -- runs ---------------------------------------------------------------------------------


def test_a_step_sends_its_votes_as_votes_frames_and_the_store_keeps_each_vote() -> None:
    """What leaves a correct node is aggregated; what its store records (what a restart
    must never contradict) is still every single ECHO and READY."""
    r = _Run(SimConfig(nodes=7, waves=1), 4, None)
    frames: list[object] = []
    send = r.world.broadcast

    def spy(src: int, data: bytes, msg: object) -> None:
        frames.append(msg)
        send(src, data, msg)  # type: ignore[arg-type]

    r.world.broadcast = spy  # type: ignore[method-assign]
    result = r.run()
    assert result.ok, result.summary()
    batched = [m for m in frames if isinstance(m, Votes)]
    assert batched, "no step ever sent more than one vote"
    assert max(len(m.echoes) + len(m.readies) for m in batched) > 1
    stored = sum(len(r.nodes[i].store.votes) for i in r.correct)
    assert stored >= sum(len(m.echoes) + len(m.readies) for m in batched) // 7


@pytest.mark.parametrize("step", [0.0, 1.0, 10.0])
def test_every_step_size_keeps_all_invariants(step: float) -> None:
    check(run(SimConfig(nodes=7, waves=3, adversarial=True, step_ms=step), 11), False)


def test_a_run_replays_exactly_with_steps() -> None:
    cfg = SimConfig(nodes=7, faults=2, byzantine="mixed", waves=2, step_ms=2.0)
    a, b = run(cfg, 5), run(cfg, 5)
    assert a.trace_hash == b.trace_hash and a.to_dict() == b.to_dict()
    assert "--step-ms 2.0" in a.replay and "--step-ms" not in run(SimConfig(waves=1), 1).replay


# n = 31 in CI, 2-12 s of CPU each: benign, f crashing members, the adversarial scheduler
# (f slowed nodes, reordering; its validity phase runs ~15 s of virtual time).
N31 = [
    pytest.param(SimConfig(nodes=31, waves=2), 1, id="n31-benign-s1"),
    pytest.param(SimConfig(nodes=31, faults=10, byzantine="crash", waves=1), 3, id="n31-crash-s3"),
    pytest.param(SimConfig(nodes=31, waves=1, adversarial=True), 2, id="n31-adv-s2"),
]


@pytest.mark.parametrize(("cfg", "seed"), N31)
def test_n31_keeps_all_invariants(cfg: SimConfig, seed: int) -> None:
    check(run(cfg, seed), in_hypothesis=False)


N64 = [
    pytest.param(
        SimConfig(nodes=31, faults=10, byzantine="mixed", waves=2, adversarial=True),
        3,
        id="n31-mixed-adv-s3",
    ),
    pytest.param(SimConfig(nodes=64, waves=10), 1, id="n64-benign-10-waves"),
    *(
        pytest.param(SimConfig(nodes=64, waves=3, adversarial=True), s, id=f"n64-adv-s{s}")
        for s in (1, 2, 3)
    ),
    pytest.param(
        SimConfig(nodes=64, faults=21, byzantine="mixed", waves=3, adversarial=True),
        4,
        id="n64-mixed-adv-s4",
    ),
    pytest.param(
        SimConfig(nodes=64, faults=21, byzantine="crash", waves=3, partitions=1),
        5,
        id="n64-crash-partition-s5",
    ),
]


@pytest.mark.skipif(not LONG, reason="the long profile: DAGRIDER_SIM_LONG=1 (minutes)")
@pytest.mark.parametrize(("cfg", "seed"), N64)
def test_long_profile_keeps_all_invariants(cfg: SimConfig, seed: int) -> None:
    check(run(cfg, seed), in_hypothesis=False)


# Property form: hypothesis draws the seed (and the fault kind). Two examples under the
# ``ci`` and ``dev`` profiles (16 nightly); the long profile draws ten (80 nightly), at
# n = 31 and n = 64. Seeded, not drawn schedules: shrinking at 30 s per run is too slow.
SCALE_SIZES = (31, 64) if LONG else (31,)


@settings(
    max_examples=examples(0.4 if LONG else 0.08),
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    n=st.sampled_from(SCALE_SIZES),
    kind=st.sampled_from(("none", "crash")),
    seed=st.integers(0, 2**32 - 1),
)
def test_large_committees_keep_all_invariants(n: int, kind: str, seed: int) -> None:
    f = (n - 1) // 3
    cfg = SimConfig(nodes=n, faults=0 if kind == "none" else f, byzantine=kind, waves=1)
    note(f"replay: {cfg.replay_command(seed)}")
    check(run(cfg, seed))
