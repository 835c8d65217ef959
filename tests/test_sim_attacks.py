"""The attacks of the adversary review as seeded, replayable simulator runs.

Each Byzantine strategy below is one attack by f members (see ``sim/byzantine.py``):

* ``future-vertex``: one well-formed VAL 27, 28, 100 or 10 000 rounds ahead whose
  parents do not exist (before the liveness fixes, >= 28 halted a committee of 4);
* ``flood``: future VALs as large as the codec allows, votes for future instances of
  every source, coin shares for future waves;
* ``request-amplification``: every large delivered vertex requested 20 times from
  every peer;
* ``max-weak-edges``: proposals padded with as many weak edges as the limit allows;
* ``catchup-flood``: with every step, a request to every peer to replay 100 000 rounds
  from its store (correct members answer a burst, then one per period, and report it).

And the worst value of one field at a time (:data:`FIELD_ATTACKS`, all detectable but
``replay``: correct members report the sender):

* ``double-vote``: every ECHO and READY also sent for a random digest, lone and in
  ``Votes`` frames;
* ``double-val``: a second vertex for each round it proposes in (again after peers
  delivered the first), and other members' vertices sent as its own VALs;
* ``edge-rules``: proposals with a strong edge into round r-2, a weak edge beyond the
  GC depth, two weak edges to one slot, or a weak edge its strong edges already reach;
* ``bad-fetch``: forged answers to vertex requests, requests for a digest under a wrong
  round or source, unasked answers, and its own VAL withheld from one peer per round;
* ``coin-misuse``: coin shares signed by another member, replayed for decided waves,
  and a thousand waves ahead;
* ``replay``: its own earlier frames again, stale votes and VALs included.

Every run must keep all verdicts: agreement, integrity, validity, liveness (the goal
reached *and* leaders committed, see ``sim.invariants.LIVENESS_SHARE``) and
faults-happened (each faulty node really sent its attack). A failure prints the seed
and the ``dagrider sim ...`` command that replays it.

The slow-node runs delay everything one correct node sends by 2 s or 5 s (1-10 ms
links, 100 ms proposal pacing): at least 99 % of its transactions must be ordered.

Budget: about 40 s of CPU in all (n = 10 gets two seeds per attack); under a minute on
two cores with ``-n 2``. The field attacks run once at n = 4 and n = 7 in CI (about
5 s); ``DAGRIDER_SIM_WIDE=1`` (the README's coverage command sets it) gives them the
review attacks' seeds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import pytest

from sim import byzantine
from sim.report import SimResult
from sim.runner import SimConfig, _Run, run

REVIEW_ATTACKS = (
    "future-vertex",
    "flood",
    "request-amplification",
    "max-weak-edges",
    "catchup-flood",
)
FIELD_ATTACKS = ("double-vote", "double-val", "edge-rules", "bad-fetch", "coin-misuse", "replay")
ATTACKS = REVIEW_ATTACKS + FIELD_ATTACKS
DETECTABLE = frozenset(ATTACKS) - {
    "future-vertex",  # well formed: held until its parents come, never reported
    "flood",  # reported only once a VAL goes over the per-peer budget
    "request-amplification",  # reported once a request repeats within a wave
    "max-weak-edges",  # well formed: its weak edges name vertices that do not exist
    "replay",  # a correct network may duplicate frames
}
LATENCIES = ("uniform", "constant", "longtail")
SEEDS_PER_SIZE = {4: 4, 7: 3, 10: 2}
WIDE = os.environ.get("DAGRIDER_SIM_WIDE") == "1"
"""The wide sweep (the README's coverage command): every attack gets every seed."""
FIELD_SEEDS_IN_CI = {4: 1, 7: 1, 10: 0}


def attack_config(n: int, kind: str, k: int) -> SimConfig:
    """The k-th run of an attack at size n: f attackers, rotating latency model, every
    other run under the adversarial scheduler, a healing partition in some.

    Every other run of ``flood`` and ``request-amplification`` meets budgets it can
    exhaust within 3 waves (the defaults, 64 and 16 MiB, outlast it): a 4 MiB per-peer
    budget for its VALs, a 2 MiB response budget for its requests (with 2 KiB
    transactions, so that vertices are worth asking for); correct members refuse what
    goes over and report it."""
    cfg = SimConfig(
        nodes=n,
        faults=(n - 1) // 3,
        byzantine=kind,
        waves=3,
        latency=LATENCIES[k % 3],
        adversarial=bool(k % 2),
        partitions=(k // 2) % 2,
    )
    if k % 2 and kind == "flood":
        return dataclasses.replace(cfg, peer_budget_mib=4)
    if k % 2 and kind == "request-amplification":
        return dataclasses.replace(cfg, response_budget_mib=2, tx_size=2048)
    return cfg


def future_offsets(cfg: SimConfig, seed: int) -> tuple[int, ...]:
    """The offsets the seed gives the future-vertex nodes (drawn at setup, not run)."""
    r = _Run(cfg, seed, None)
    return tuple(
        sorted(x.strategy.offset for x in r.nodes if isinstance(x.strategy, byzantine.FutureVertex))
    )


def one_seed_per_offset(n: int) -> list[int]:
    """The first seeds that give a committee of n each future-vertex offset (at n = 4
    the single attacker's; above, the largest of the f attackers')."""
    wanted = list(byzantine.FUTURE_OFFSETS)
    found: dict[int, int] = {}
    seed = 0
    while len(found) < len(wanted):
        seed += 1
        top = future_offsets(attack_config(n, "future-vertex", 0), seed)[-1]
        found.setdefault(top, seed)
    return [found[o] for o in wanted]


def attack_cases() -> Iterator[object]:
    for n, count in SEEDS_PER_SIZE.items():
        for kind in ATTACKS:
            runs = FIELD_SEEDS_IN_CI[n] if kind in FIELD_ATTACKS and not WIDE else count
            seeds: Sequence[int] = range(1, runs + 1)
            if kind == "future-vertex":  # the larger offsets where there are fewer seeds
                seeds = one_seed_per_offset(n)[-count:]
            for k, seed in enumerate(seeds):
                cfg = attack_config(n, kind, k)
                mode = "adv" if cfg.adversarial else "benign"
                name = f"n{n}-{kind}-{mode}-{cfg.latency}-p{cfg.partitions}-s{seed}"
                yield pytest.param(cfg, seed, id=name)
    for n, seed in ((7, 1), (7, 2), (10, 1)):
        cfg = attack_config(n, "mixed", seed)
        yield pytest.param(cfg, seed, id=f"n{n}-mixed-s{seed}")


def check(result: SimResult) -> None:
    """All verdicts hold, the fault was exercised; else the summary and the replay."""
    failed = [f"{v.name}: {v.detail}" for v in result.verdicts if not v.ok]
    assert result.ok, f"seed {result.seed}: {failed}\n{result.summary()}\nreplay: {result.replay}"
    faults = next(v for v in result.verdicts if v.name == "faults-happened")
    assert faults.ok, faults.detail
    assert len(result.node_kinds) == result.config.faults, result.summary()
    for i in result.node_kinds:
        exercised = result.attack_frames[i] + result.withheld_frames[i]
        assert exercised > 0, f"node {i} never attacked (seed {result.seed})"
    cfg = result.config
    small = cfg.peer_budget_mib < 64 or cfg.response_budget_mib < 16
    if cfg.byzantine in DETECTABLE or small:  # correct members report it
        assert result.misbehaviour_reports > 0, f"{result.summary()}\nreplay: {result.replay}"


def test_the_sweep_meets_every_future_offset() -> None:
    n4 = one_seed_per_offset(4)
    cfg = attack_config(4, "future-vertex", 0)
    assert [future_offsets(cfg, s) for s in n4] == [(o,) for o in byzantine.FUTURE_OFFSETS]


@pytest.mark.parametrize(("cfg", "seed"), list(attack_cases()))
def test_attack_keeps_all_invariants(cfg: SimConfig, seed: int) -> None:
    check(run(cfg, seed))


SLOW_CASES = [
    pytest.param(n, delay, seed, id=f"n{n}-slow{delay / 1000:g}s-s{seed}")
    for n, seed in ((4, 1), (7, 2))
    for delay in (2_000.0, 5_000.0)
]


@pytest.mark.parametrize(("n", "delay", "seed"), SLOW_CASES)
def test_a_slow_correct_node_gets_its_transactions_ordered(n: int, delay: float, seed: int) -> None:
    """One correct node's messages take ``delay`` longer than everyone else's. The
    committee must not leave it behind: >= 99 % of its transactions are ordered by every
    correct node (transactions submitted until all correct nodes decided the waves)."""
    cfg = SimConfig(
        nodes=n,
        waves=20,  # ~10 s of virtual time: twice the longest delay
        latency="lan",
        batch_delay=100.0,
        gc_depth=50,
        slow_node_delay=delay,
        max_time=120_000.0,
    )
    result = run(cfg, seed)
    share = result.slow_node_tx_ordered_share
    assert result.slow_node is not None
    assert share is not None and share >= 0.99, (
        f"seed {seed}: only {share} of the slow node's transactions ordered\n"
        f"{result.summary()}\nreplay: {result.replay}"
    )
    check(result)
