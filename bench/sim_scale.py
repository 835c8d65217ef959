"""How the simulator (and the consensus core inside it) scales with the committee size.

Scale mode (default): for each n in ``--nodes`` (4,16,31,64,100), one benign run
(uniform latency, no faults, fixed seed, ``--waves`` waves, 10 by default; committees of
``--large-n`` nodes or more, 100 by default, run ``--large-waves`` waves instead, 3 by
default: Bracha costs O(n^3) votes per round) and report wall and CPU time (best of
``--repeat``), simulated frames (``messages``) and the votes they carried, virtual time,
leaders, committed transactions, transaction latency (virtual ms) and traffic per
committed transaction. ``--step-ms`` is the simulator's node step (see
``sim.runner.SimConfig.step_ms``; 0 gives the one-message-per-step model of before).

``--waves-per-commit-sweep``: many seeds at ``--sweep-nodes`` under the adversarial scheduler,
reporting how often a wave's leader is committed directly and how many waves it takes per
committed leader. DAG-Rider's bound: each wave's leader is committed (by the direct rule)
with probability >= 2/3, so the expected number of waves per committed leader is <= 1.5.

Run from the repository root:
    python bench/sim_scale.py [--nodes 4,16] [--waves 4] [--seed 1]
    python bench/sim_scale.py --waves-per-commit-sweep [--sweep-seeds 100]
Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.report import SimResult
from sim.runner import SimConfig, run

PAPER_DIRECT_PROBABILITY = 2 / 3
PAPER_WAVES_PER_COMMIT = 1.5


def _nodes(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one committee size")
    for n in values:
        if n < 4 or (n - 1) % 3:
            raise argparse.ArgumentTypeError(f"committee size must be 3f+1 >= 4, got {n}")
    return values


def _progress(label: str) -> Callable[[float], None]:
    """A progress callback that writes whole percent steps to stderr."""
    last = [-1]

    def report(fraction: float) -> None:
        pct = int(fraction * 100)
        if pct // 10 != last[0] // 10:
            last[0] = pct
            print(f"  {label}: {pct}% of waves decided", file=sys.stderr, flush=True)

    return report


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


def _timed(cfg: SimConfig, seed: int, label: str) -> tuple[SimResult, float, float]:
    """One run: (result, wall seconds, CPU seconds of this process). The machine may be
    shared: CPU time is the steadier figure, wall time the one a user waits."""
    started, cpu = time.perf_counter(), time.process_time()
    result = run(cfg, seed, _progress(label))
    return result, time.perf_counter() - started, time.process_time() - cpu


def scale_entry(
    n: int, waves: int, reduced: bool, seed: int, step_ms: float, repeat: int = 1
) -> dict[str, Any]:
    cfg = SimConfig(nodes=n, waves=waves, latency="uniform", step_ms=step_ms)
    print(f"n={n}: {waves} waves, seed {seed} ...", file=sys.stderr, flush=True)
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(repeat):
        result, wall, cpu = _timed(cfg, seed, f"n={n}")
        walls.append(wall)
        cpus.append(cpu)
        print(
            f"n={n}: {wall:.1f} s wall, {cpu:.1f} s CPU, {result.messages} messages, "
            f"ok={result.ok}",
            file=sys.stderr,
            flush=True,
        )
    wall, cpu = min(walls), min(cpus)
    msgs_per_tx, bytes_per_tx = result.per_transaction()
    entry: dict[str, Any] = {
        "nodes": n,
        "waves": waves,
        "waves_reduced": reduced,
        "ok": result.ok,
        "verdicts": {v.name: v.ok for v in result.verdicts},
        "step_ms": step_ms,
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "wall_seconds_all": [round(x, 3) for x in walls],
        "cpu_seconds_all": [round(x, 3) for x in cpus],
        "events": result.events,
        "messages": result.messages,
        "bytes": result.bytes,
        "messages_per_wall_second": round(result.messages / wall, 1) if wall else None,
        "messages_per_cpu_second": round(result.messages / cpu, 1) if cpu else None,
        "virtual_seconds": round(result.virtual_ms / 1000, 3),
        "waves_per_commit": round(result.waves_per_commit, 4),
        "leaders_committed": result.leaders_committed,
        "leaders_direct": result.leaders_direct,
        "leaders_skipped": result.leaders_skipped,
        "committed_vertices": result.committed_vertices,
        "committed_transactions": result.committed_transactions,
        "tx_latency_ms": {k: round(v, 1) for k, v in result.tx_latency_ms.items()},
        "messages_per_tx": round(msgs_per_tx, 3),
        "bytes_per_tx": round(bytes_per_tx, 1),
        "replay": result.replay,
    }
    if reduced:
        entry["note"] = (
            f"n={n} ran {waves} wave(s) instead of the requested waves to keep the "
            "wall time reasonable (see --large-waves)"
        )
    return entry


def scale(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for n in args.nodes:
        reduced = n >= args.large_n and args.large_waves < args.waves
        waves = args.large_waves if reduced else args.waves
        runs.append(scale_entry(n, waves, reduced, args.seed, args.step_ms, args.repeat))
    return {
        "mode": "scale",
        "setup": {
            "latency": "uniform (10-100 ms)",
            "faults": 0,
            "adversarial": False,
            "seed": args.seed,
            "step_ms": args.step_ms,
            "requested_waves": args.waves,
            "tx_per_second_per_node": SimConfig().tx_per_second,
            "tx_size_bytes": SimConfig().tx_size,
        },
        "runs": runs,
    }


def sweep_one(n: int, seeds: Sequence[int], waves: int, step_ms: float = 1.0) -> dict[str, Any]:
    committed = direct = skipped = 0
    per_run: list[float] = []
    failures: list[str] = []
    started = time.perf_counter()
    for k, seed in enumerate(seeds):
        cfg = SimConfig(nodes=n, waves=waves, latency="uniform", adversarial=True, step_ms=step_ms)
        result = run(cfg, seed)
        if not result.ok:
            failures.append(result.replay)
        committed += result.leaders_committed
        direct += result.leaders_direct
        skipped += result.leaders_skipped
        if result.leaders_committed:
            per_run.append(result.waves_per_commit)
        if (k + 1) % 10 == 0 or k + 1 == len(seeds):
            print(f"  n={n}: {k + 1}/{len(seeds)} seeds", file=sys.stderr, flush=True)
    decided = committed + skipped
    return {
        "nodes": n,
        "runs": len(seeds),
        "waves_decided": decided,
        "leaders_committed": committed,
        "leaders_direct": direct,
        "leaders_indirect": committed - direct,
        "leaders_skipped": skipped,
        # The brief's two headline numbers:
        "mean_waves_per_committed_leader": round(decided / committed, 4) if committed else None,
        "fraction_of_committed_leaders_direct": round(direct / committed, 4) if committed else None,
        # Against the paper: per wave, P(leader committed by the direct rule) >= 2/3, hence
        # E[waves per directly committed leader] <= 1.5.
        "direct_commit_probability_per_wave": round(direct / decided, 4) if decided else None,
        "waves_per_direct_commit": round(decided / direct, 4) if direct else None,
        "sim_waves_per_commit_mean_over_runs": round(statistics.fmean(per_run), 4)
        if per_run
        else None,
        "sim_waves_per_commit_max_over_runs": round(max(per_run), 4) if per_run else None,
        "invariant_failures": failures,
        "wall_seconds": round(time.perf_counter() - started, 3),
    }


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    seeds = list(range(args.seed, args.seed + args.sweep_seeds))
    results = []
    for n in args.sweep_nodes:
        print(f"sweep n={n}: {len(seeds)} seeds x {args.sweep_waves} waves", file=sys.stderr)
        results.append(sweep_one(n, seeds, args.sweep_waves, args.step_ms))
    return {
        "mode": "waves-per-commit-sweep",
        "setup": {
            "latency": "uniform (10-100 ms)",
            "adversarial": True,
            "faults": 0,
            "seeds": [seeds[0], seeds[-1]],
            "waves": args.sweep_waves,
            "step_ms": args.step_ms,
            "counting": "leaders decided by the node with the longest log, over every wave "
            "decided in the run (including the validity phase after the requested waves); "
            "a wave is decided once a later leader is committed",
        },
        "paper_bound": {
            "direct_commit_probability_per_wave_at_least": round(PAPER_DIRECT_PROBABILITY, 4),
            "expected_waves_per_commit_at_most": PAPER_WAVES_PER_COMMIT,
        },
        "results": results,
    }


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--nodes", type=_nodes, default=[4, 16, 31, 64, 100], help="e.g. 4,16")
    p.add_argument("--waves", type=int, default=10, help="waves every correct node decides")
    p.add_argument("--seed", type=int, default=1, help="seed (first seed of the sweep)")
    p.add_argument("--large-n", type=int, default=100, help="committees this big or bigger...")
    p.add_argument("--large-waves", type=int, default=3, help="...run this many waves")
    p.add_argument(
        "--step-ms",
        type=float,
        default=SimConfig().step_ms,
        help="simulator node step in virtual ms (0: one message per step, the old model)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per n; the best is reported")
    p.add_argument(
        "--waves-per-commit-sweep",
        action="store_true",
        help="instead of the scale runs: many adversarial seeds at --sweep-nodes",
    )
    p.add_argument("--sweep-nodes", type=_nodes, default=[4, 7])
    p.add_argument("--sweep-seeds", type=int, default=100, help="seeds per committee size")
    p.add_argument("--sweep-waves", type=int, default=4)
    args = p.parse_args(argv)
    if min(args.waves, args.large_waves, args.sweep_waves, args.sweep_seeds, args.repeat) < 1:
        p.error("--waves, --large-waves, --sweep-waves, --sweep-seeds and --repeat must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None else ["sim_scale", *argv])
    started = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "sim_scale", "command": command, "machine": machine()}
    doc.update(sweep(args) if args.waves_per_commit_sweep else scale(args))
    doc["total_wall_seconds"] = round(time.perf_counter() - started, 3)
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
