"""Garbage collection and catch-up under faults, in the simulator.

Runs of 12+ waves with gc_depth 8-12 collect every few rounds (the default runs of 3-5
waves never reach gc_depth 50, so pruning was untested under faults), and crashes and
partitions last long enough (up to 10 s and 6 s of virtual time) that a node falls
below its peers' in-memory window and needs catch-up (:mod:`dagrider.catchup`, the same
policy the daemon runs) to come back. Besides the usual verdicts, every run here must

* garbage-collect (``gc_floor`` > 0 on every correct node at the end),
* exercise its fault (``faults-happened``), and, for crash runs, bring every crashed
  node back with everything validity waits for (``rejoin``).

The seeded sweep replays with the ``dagrider sim ...`` command a failure prints; the
hypothesis test draws its schedule, so a failure shrinks (see tests/sim_schedules.py).

Budget: about 40 s of CPU for the sweep, 20-60 s for the hypothesis test under ``ci``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sim_schedules import DrawnSchedule, schedules
from test_sim_attacks import DETECTABLE, FIELD_ATTACKS, WIDE
from test_sim_properties import DRAWN_REPLAY, HEAVY, check, run_drawn

import dagrider.catchup
from dagrider.dag import Dag
from sim import byzantine
from sim.report import SimResult
from sim.runner import FAULT_KINDS, SimConfig, run

LATENCIES = ("uniform", "constant", "longtail")
# The field attacks last, so that adding them kept every earlier case's configuration.
GC_KINDS = (
    "none",
    "crash",
    *sorted(set(byzantine.STRATEGIES) - set(FIELD_ATTACKS)),
    "mixed",
    *FIELD_ATTACKS,
)
SEEDS_PER_SIZE = {4: (11, 12, 13), 7: (17,)}


def gc_config(n: int, kind: str, k: int, *, gc_depth: int | None = None) -> SimConfig:
    """The k-th GC run of ``kind`` at size n: f faulty nodes (none for "none", which
    gets partitions instead), gc_depth rotating over 8, 10, 12, 12 waves, long
    crashes and partitions, every other run under the adversarial scheduler."""
    return SimConfig(
        nodes=n,
        faults=0 if kind == "none" else (n - 1) // 3,
        byzantine=kind,
        waves=12,
        latency=LATENCIES[k % 3],
        adversarial=bool(k % 2),
        partitions=max(1, k % 3) if kind == "none" else k % 3,
        gc_depth=gc_depth if gc_depth is not None else (8, 10, 12)[k % 3],
        down_ms=10_000.0,
        partition_ms=6_000.0,
    )


def check_gc(result: SimResult, replay: str | None = None) -> None:
    check(result, in_hypothesis=replay is not None, replay=replay)
    assert result.gc_floor > 0, f"no correct node garbage-collected\n{result.summary()}"
    if result.config.byzantine in DETECTABLE:
        assert result.misbehaviour_reports > 0, result.summary()


# ``flood`` sends VALs of up to 8 MiB for 40 rounds ahead: 12 waves of it cost 8 s of
# CPU at n = 4 and 90 s at n = 7, so it runs once, at n = 4 (test_sim_attacks.py runs
# it at n = 4, 7 and 10 over 3 waves); ``mixed`` may draw it, so it runs at n = 4 only.
HEAVY_KINDS = {"flood": 1, "mixed": 3}


def gc_cases() -> Iterator[object]:
    """Every fault kind over the sizes' seeds; the field attacks (test_sim_attacks.py)
    once at n = 4 but in the wide sweep (``DAGRIDER_SIM_WIDE=1``)."""
    for n, seeds in SEEDS_PER_SIZE.items():
        for j, kind in enumerate(GC_KINDS):
            budget = (
                HEAVY_KINDS.get(kind, len(seeds)) if n == 4 else 0 if kind in HEAVY_KINDS else 1
            )
            if kind in FIELD_ATTACKS and not WIDE:
                budget = 1 if n == 4 else 0
            for k, seed in enumerate(seeds[:budget]):
                cfg = gc_config(n, kind, j + k)
                mode = "adv" if cfg.adversarial else "benign"
                name = (
                    f"n{n}-{kind}-gc{cfg.gc_depth}-{mode}-{cfg.latency}-p{cfg.partitions}-s{seed}"
                )
                yield pytest.param(cfg, seed, id=name)


def test_the_sweep_covers_every_fault_kind() -> None:
    assert set(GC_KINDS) == set(FAULT_KINDS)
    swept = {p.values[0].byzantine for p in gc_cases()}  # type: ignore[attr-defined]
    assert swept == set(FAULT_KINDS)


@pytest.mark.parametrize(("cfg", "seed"), list(gc_cases()))
def test_long_runs_collect_garbage_and_keep_every_invariant(cfg: SimConfig, seed: int) -> None:
    check_gc(run(cfg, seed))


# Crash runs in which the crashed member fell more than half a GC window behind: it can
# come back only through catch-up (found by running the crash configuration's seeds).
CATCHUP_SEEDS = (2, 3, 4)


CRASH_PAST_THE_WINDOW = SimConfig(
    nodes=4, faults=1, byzantine="crash", waves=12, gc_depth=8, down_ms=10_000.0
)


@pytest.mark.parametrize("seed", CATCHUP_SEEDS)
def test_a_member_down_past_the_gc_window_rejoins_through_catch_up(seed: int) -> None:
    result = run(CRASH_PAST_THE_WINDOW, seed)
    check_gc(result)
    assert result.catchup_asks.get("behind", 0) > 0, result.summary()
    assert result.catchup_served > 0, result.summary()
    rejoin = next(v for v in result.verdicts if v.name == "rejoin")
    assert rejoin.ok and "all" in rejoin.detail, rejoin


def test_without_catch_up_the_member_never_rejoins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rejoin verdict can fail: with the requester silenced, the crashed member of
    the first catch-up seed stays behind for good."""

    def never(self: dagrider.catchup.CatchupRequester, *args: object) -> dagrider.catchup.Tick:
        return dagrider.catchup.Tick(None, False)

    monkeypatch.setattr(dagrider.catchup.CatchupRequester, "tick", never)
    seed = CATCHUP_SEEDS[0]
    result = run(dataclasses.replace(CRASH_PAST_THE_WINDOW, max_time=60_000.0), seed)
    verdicts = {v.name: v for v in result.verdicts}
    assert not verdicts["rejoin"].ok, result.summary()
    assert verdicts["agreement"].ok and verdicts["validity"].ok


def test_a_lone_far_round_claim_never_makes_correct_members_ask() -> None:
    """future-vertex sends one VAL 10 000 rounds ahead: one member's word, not f+1, so
    no correct member counts itself behind (the daemon's old bug: it asked every peer
    every second, forever)."""
    cfg = SimConfig(nodes=4, faults=1, byzantine="future-vertex", waves=12, gc_depth=8)
    seed = next(s for s in range(1, 200) if _offset(cfg, s) == 10_000)
    result = run(cfg, seed)
    check_gc(result)
    assert result.catchup_asks.get("behind", 0) == 0, result.summary()


def _offset(cfg: SimConfig, seed: int) -> int:
    from sim.runner import _Run

    r = _Run(cfg, seed, None)
    return max(x.strategy.offset for x in r.nodes if isinstance(x.strategy, byzantine.FutureVertex))


@st.composite
def gc_configs(draw: st.DrawFn) -> SimConfig:
    n = draw(st.sampled_from((4, 4, 4, 7)))
    kinds = FAULT_KINDS if n == 4 else tuple(k for k in FAULT_KINDS if k not in HEAVY_KINDS)
    kind = draw(st.sampled_from(kinds))
    # Certified checkpoints in some runs; crash nodes may then keep only a few rounds
    # past their floor (state sync brings a member back past them), and may restart
    # from a store that lost writes (fenced).
    checkpoints = draw(st.sampled_from((0, 16)))
    crash = kind == "crash"
    return SimConfig(
        nodes=n,
        faults=0 if kind == "none" else (n - 1) // 3,
        byzantine=kind,
        waves=12,
        latency=draw(st.sampled_from(LATENCIES)),
        adversarial=draw(st.booleans()),
        partitions=draw(st.integers(0, 2)),
        gc_depth=draw(st.integers(8, 12)),
        down_ms=draw(st.sampled_from((3_000.0, 10_000.0))),
        partition_ms=draw(st.sampled_from((2_000.0, 6_000.0))),
        checkpoint_interval=checkpoints,
        retain_rounds=draw(st.sampled_from((200, 4))) if checkpoints and crash else 200,
        wal_loss=crash and draw(st.booleans()),
    )


@HEAVY
@given(cfg=gc_configs(), schedule=schedules())
def test_every_long_run_collects_garbage_and_keeps_all_invariants(
    cfg: SimConfig, schedule: DrawnSchedule
) -> None:
    check_gc(run_drawn(cfg, schedule), replay=DRAWN_REPLAY)


def test_a_long_run_renumbers_its_reachability_bitsets_and_keeps_every_invariant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """90 waves at gc_depth 8: each process renumbers the bitsets its reachability
    queries read (``Dag._reindex``, once the bits handed out pass four times the
    vertices kept plus 1024: at n = 4 about every 80 waves). The integrity verdict
    then checks every correct node's DAG against its edges, so a renumbering that lost
    a path fails the run, not only this count."""
    renumbered = 0
    reindex = Dag._reindex

    def counted(dag: Dag) -> None:
        nonlocal renumbered
        renumbered += 1
        reindex(dag)

    monkeypatch.setattr(Dag, "_reindex", counted)
    result = run(SimConfig(nodes=4, waves=90, gc_depth=8), 1)
    check_gc(result)
    assert renumbered >= 3, result.summary()
