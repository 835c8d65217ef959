"""Members that come back from worse than a clean crash, in the simulator.

* **A store that lost its last writes** (``--wal-loss``): a crash member restarts from
  a copy of its store taken up to 1.5 s before the crash, as after a deleted WAL or a
  database-only backup. The highest round it ever sent for and the store's count of
  the last batch it sent are kept apart (the daemon's fence file,
  ``dagrider/node/fence.py``); a store whose count is lower lost sent writes, and the
  process is fenced at that round (``Process.fence``; the rule is
  ``dagrider.persistence.restart_from``): no vertex or vote of its own up to that
  round, since it cannot know which ones it sent. The ``rejoin`` verdict checks that
  no restarted member ever sent two different VALs, ECHOs or READYs for one slot,
  besides coming back with everything validity needs; agreement checks that the log
  it commits again is the same.
* **Falling behind the peers' retained rounds** (``--checkpoint-interval``, small
  ``--retain-rounds``): catch-up cannot serve rounds nobody keeps, so the member asks
  for the latest certified checkpoint and fetches the log up to it
  (``sim/state_sync.py``: the daemon's state-sync sequence over the same pure parts,
  ``dagrider/statesync.py``, ``Process.install_checkpoint``). Agreement checks the
  installed log entry by entry against the committed one.

Each seeded run prints its ``dagrider sim ...`` replay command when it fails. Each
mechanism is also shown necessary: without the fence a member contradicts itself, and
without checkpoints the member never rejoins.

Budget: about 10 s of CPU in CI; ``DAGRIDER_SIM_WIDE=1`` (the README's coverage
command) adds more seeds and n = 7 (about 15 s more).
"""

from __future__ import annotations

import dataclasses

import pytest
from test_sim_attacks import WIDE
from test_sim_gc import check_gc
from test_sim_properties import check

import sim.runner
import sim.state_sync
from dagrider.persistence import Restart, restart_from
from dagrider.process import Process
from sim.report import SimResult
from sim.runner import SimConfig, run

LATENCIES = ("uniform", "constant", "longtail")


def wal_loss_config(n: int, k: int) -> SimConfig:
    """The k-th WAL-loss run at size n: f crash members, GC depth 8-12 (garbage is
    collected while they are down), rotating latency, every other run adversarial."""
    return SimConfig(
        nodes=n,
        faults=(n - 1) // 3,
        byzantine="crash",
        waves=8,
        latency=LATENCIES[k % 3],
        adversarial=bool(k % 2),
        partitions=k % 2,
        gc_depth=(8, 10, 12)[k % 3],
        wal_loss=True,
    )


WIDE_ONLY = pytest.mark.skipif(
    not WIDE, reason="the wide sweep: DAGRIDER_SIM_WIDE=1 (the README's coverage command)"
)

WAL_CASES = [
    pytest.param(wal_loss_config(n, k), seed, id=f"n{n}-s{seed}", marks=marks)
    for n, seeds in ((4, (1, 2, 3, 5)), (7, (1,)))
    for k, seed in enumerate(seeds)
    for marks in [[] if n == 4 and k < 2 else [WIDE_ONLY]]
]


def check_rejoined(result: SimResult) -> None:
    rejoin = next(v for v in result.verdicts if v.name == "rejoin")
    assert rejoin.ok and rejoin.detail.startswith("all"), f"{rejoin}\nreplay: {result.replay}"


@pytest.mark.parametrize(("cfg", "seed"), WAL_CASES)
def test_a_member_whose_store_lost_writes_is_fenced_and_never_contradicts_itself(
    cfg: SimConfig, seed: int
) -> None:
    result = run(cfg, seed)
    check_gc(result)
    check_rejoined(result)
    assert result.wal_losses >= 1, result.summary()
    assert result.fenced_restarts >= 1, result.summary()


def contradiction(result: SimResult) -> str:
    rejoin = next(v for v in result.verdicts if v.name == "rejoin")
    return "" if rejoin.ok else rejoin.detail


def test_without_the_fence_a_member_whose_store_lost_writes_equivocates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rejoin verdict can fail: with ``Process.fence`` doing nothing, the member of
    the second WAL-loss case proposes again in a round its lost store had proposed in."""
    monkeypatch.setattr(Process, "fence", lambda self, rnd: None)
    result = run(wal_loss_config(4, 1), 5)
    assert "contradicted itself" in contradiction(result), result.summary()


def round_rule(
    sent_round: int, sent_flushes: int | None, store_flushes: int, fenced: int, stored: int
) -> Restart:
    """The rule before the flush count (still the one for a fence file written by an
    older version): fence when the fence is above every round the store holds a
    proposal or vote for, at that restart only."""
    return restart_from(sent_round, None, store_flushes, 0, stored)


@pytest.mark.parametrize(
    "seed", [5, pytest.param(11, marks=WIDE_ONLY), pytest.param(14, marks=WIDE_ONLY)]
)
def test_a_restart_after_a_fenced_one_proposes_nothing_in_the_rounds_it_skipped(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Under the round rule, the member of these runs restarts twice: fenced the first
    time (it skips the rounds its lost store may have proposed in), not the second (its
    store is not behind the fence any more), at GC floor 0, where recovery walks up
    from genesis. It used to propose in the skipped rounds then, contradicting the
    first incarnation; ``Process.recover`` now passes a round below its last stored
    proposal without one."""
    monkeypatch.setattr(sim.runner, "restart_from", round_rule)
    result = run(wal_loss_config(4, 1), seed)
    assert not contradiction(result), result.summary()
    check_gc(result)


def test_comparing_rounds_misses_a_loss_and_lets_a_member_equivocate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why the fence counts flushes (``dagrider.persistence.restart_from``): under the
    round rule, the member of seed 37 restarts at GC floor 7 from a store whose newest
    vote (round 27) is as high as its fence, but whose newest proposal is round 22;
    an earlier incarnation, fenced at 23, had not proposed in 23, the one before it
    had, and its store was lost. Resuming after its last proposal, it proposes a new
    vertex for round 23. With the flush count (and the fence kept after a loss), the
    same run holds."""
    monkeypatch.setattr(sim.runner, "restart_from", round_rule)
    unsafe = run(wal_loss_config(4, 1), 37)
    assert "two VALs for (23, " in contradiction(unsafe), unsafe.summary()
    monkeypatch.undo()
    safe = run(wal_loss_config(4, 1), 37)
    check_gc(safe)
    check_rejoined(safe)


# A crash of up to 20 s with gc_depth 8 and 4 retained rounds: the member comes back far
# below what any peer still keeps, and a checkpoint is certified every 16 vertices.
PAST_RETAINED = SimConfig(
    nodes=4,
    faults=1,
    byzantine="crash",
    waves=12,
    gc_depth=8,
    down_ms=20_000.0,
    retain_rounds=4,
    checkpoint_interval=16,
)

SYNC_CASES = [
    pytest.param(PAST_RETAINED, 1, id="n4-s1"),
    pytest.param(dataclasses.replace(PAST_RETAINED, wal_loss=True), 2, id="n4-wal-loss-s2"),
    pytest.param(PAST_RETAINED, 3, id="n4-s3", marks=WIDE_ONLY),
    pytest.param(
        dataclasses.replace(PAST_RETAINED, nodes=7, faults=2, down_ms=30_000.0),
        1,
        id="n7-s1",
        marks=WIDE_ONLY,
    ),
]


@pytest.mark.parametrize(("cfg", "seed"), SYNC_CASES)
def test_a_member_down_past_the_retained_rounds_rejoins_through_state_sync(
    cfg: SimConfig, seed: int
) -> None:
    result = run(cfg, seed)
    check_gc(result)
    check_rejoined(result)
    assert result.state_sync_wanted > 0, result.summary()
    assert result.state_sync_installs >= 1, result.summary()


def test_without_checkpoints_the_member_never_rejoins() -> None:
    """The same crash with no checkpoints to install: the member stays behind for good
    (the rejoin verdict fails), while the others keep every invariant."""
    cfg = dataclasses.replace(PAST_RETAINED, checkpoint_interval=0, max_time=60_000.0)
    result = run(cfg, 1)
    verdicts = {v.name: v for v in result.verdicts}
    assert not verdicts["rejoin"].ok, result.summary()
    assert verdicts["agreement"].ok and verdicts["validity"].ok
    assert result.state_sync_installs == 0


def test_checkpoints_are_certified_in_every_run_that_passes_one() -> None:
    """With checkpoints and nobody behind, every correct member still signs and
    certifies them: nothing is installed, and the verdicts hold."""
    result = run(SimConfig(nodes=4, waves=4, checkpoint_interval=8), 3)
    check(result, in_hypothesis=False)
    assert result.state_sync_installs == 0


def test_the_simulated_state_sync_keeps_the_daemons_pace() -> None:
    """sim/state_sync.py repeats the daemon's constants (it may not import the daemon's
    shell); they must stay the same."""
    from dagrider.node import state_sync as daemon

    assert (
        sim.state_sync.SEEK_AFTER,
        sim.state_sync.QUIET_PERIODS,
        sim.state_sync.ANSWERS_PER_SECOND,
        sim.state_sync.ANSWER_BURST,
    ) == (daemon.SEEK_AFTER, daemon.QUIET_PERIODS, daemon.ANSWERS_PER_SECOND, daemon.ANSWER_BURST)
