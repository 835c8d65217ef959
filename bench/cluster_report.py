"""Results and the summary tables of ``bench/cluster.py``.

``build_result`` turns one load's raw figures (from ``cluster_load`` and
``cluster_measure``) into its JSON document; ``summary_table`` renders a sweep as the
README's table (offered and committed tx/s, end-to-end p50/p95/p99, 429s, CPU per node
and per transaction, bytes on disk per committed transaction) and ``stage_table`` the
latency per pipeline stage, from the nodes' own histograms.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from typing import Any

from cluster_measure import STAGES, machine_info, percentiles


def build_result(
    a: argparse.Namespace,
    rate: float,
    window: float,
    cpu0: dict[int, float],
    cpu1: dict[int, float],
    machine: tuple[float, ...],
    foreign: dict[str, Any],
    loop_time: dict[str, Any],
    consensus: dict[str, Any],
    gens: list[dict[str, Any]],
    meas: dict[str, Any],
    statuses: dict[int, Any],
    stages: dict[str, dict[str, float | None]],
    disk: dict[str, float],
) -> dict[str, Any]:
    """The JSON document of one load: what was offered, sent, accepted and committed,
    latency end to end and per stage, CPU and storage per node, and notes on anything
    that makes the figures doubtful (contention, a generator short of CPU...)."""
    cpu = {str(i): round(cpu1[i] - cpu0[i], 2) for i in cpu0}
    total_cpu = sum(cpu.values())
    ncpu = os.cpu_count() or 1
    accepted_window = sum(g["accepted_window"] for g in gens)
    committed = meas["window_sent_committed"]
    gen_cpu = sum(g["cpu_s_window"] for g in gens)
    latencies = meas["latencies"]
    committed_total = meas["committed_in_window"]
    notes = []
    if committed < accepted_window:
        notes.append(
            f"{accepted_window - committed} of {accepted_window} transactions sent in the "
            f"window were not committed {meas['drain_s']} s after it: latency percentiles "
            "cover only the committed ones (a lower bound)"
        )
    sent_rate = sum(g["sent_window"] for g in gens) / a.duration
    late = sum(g["late_ticks"] for g in gens) / max(1.0, a.duration / (a.tick_ms / 1000))
    if gen_cpu / a.duration > 0.8 * a.generators or late > 0.1:
        notes.append(
            "the load generator may be the bottleneck: it used "
            f"{gen_cpu / a.duration:.2f} core(s) and {late:.0%} of its ticks were late"
        )
    elif sent_rate < 0.95 * rate:
        notes.append(
            f"sent {sent_rate:.0f} tx/s < offered: the nodes answered more slowly than the "
            "load arrived (in-flight cap reached, or 429), so transactions queued in the "
            "generator with their intended send time (counted in latency); the generator "
            f"itself was not short of CPU ({gen_cpu / a.duration:.2f} core)"
        )
    other = foreign["other_processes_cpu_s"] / window
    if other > 0.2:
        notes.append(
            f"other processes on this machine used {other:.2f} core(s) during the window "
            f"({foreign['top_other_processes']}): the figures are depressed by contention"
        )
    return {
        "config": {
            "nodes": a.nodes,
            "batch_size": a.batch_size,
            "batch_delay_ms": a.batch_delay_ms,
            "max_pending": a.max_pending,
            "size": a.size,
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "generators": a.generators,
            "tick_ms": a.tick_ms,
            "follow": a.follow,
            "measure_node": a.measure_node,
            "uvloop": a.uvloop,
            "data_on": a.tmpdir or tempfile.gettempdir(),
            "cluster": "reused" if a.reuse_cluster else "fresh per load",
        },
        "offered_tx_per_s": rate,
        "sent_tx_per_s": round(sent_rate, 1),
        "accepted_tx_per_s": round(accepted_window / a.duration, 1),
        "committed_tx_per_s": round(meas["committed_in_window"] / window, 1),
        "committed_bytes_per_s": round(meas["bytes_in_window"] / window),
        "latency_s": percentiles(latencies),
        "stage_latency_s": stages,
        "commit_latency_s": percentiles(meas["commit_latencies"]),
        "window_txs_accepted": accepted_window,
        "window_txs_committed": committed,
        "cpu_seconds_per_node": cpu,
        "cpu_us_per_committed_tx": {
            k: round(v / committed_total * 1e6, 1) if committed_total else None
            for k, v in cpu.items()
        },
        "disk_bytes_per_committed_tx": disk,
        "cpu_utilisation": {
            "nodes_total_of_machine": round(total_cpu / (window * ncpu), 3),
            "per_node_of_one_core": {k: round(v / window, 3) for k, v in cpu.items()},
            "generators_of_one_core": round(gen_cpu / a.duration, 3),
            "measurer_of_one_core": round(meas["cpu_s_window"] / a.duration, 3),
            "machine_busy_of_machine": round(machine[0] / (window * ncpu), 3),
            "other_processes_of_one_core": round(foreign["other_processes_cpu_s"] / window, 3),
            "kernel_threads_of_one_core": round(foreign["kernel_threads_cpu_s"] / window, 3),
            "iowait_of_one_core": round(machine[1] / window, 3),
            "steal_of_one_core": round(machine[2] / window, 3),
        },
        "event_loop_thread": loop_time,
        "consensus": consensus,
        "rejected_429": sum(g["rejected_429"] for g in gens),
        "generator": {
            k: sum(g[k] for g in gens)
            for k in (
                "generated",
                "sent",
                "resent",
                "accepted",
                "responses_429",
                "delayed",
                "dropped",
                "unanswered",
            )
        }
        | {
            "late_ticks": sum(g["late_ticks"] for g in gens),
            "max_tick_lag_s": max(g["max_tick_lag_s"] for g in gens),
            "errors": [g["errors"] for g in gens if g["errors"]],
        },
        "committed_per_s_timeline": meas["timeline"],
        "nodes_after": statuses,
        "notes": notes,
        "machine": machine_info(),
        "command": shlex.join([sys.executable, *sys.argv]),
    }


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def summary_table(results: list[dict[str, Any]]) -> str:
    """The sweep as a markdown table (the README's)."""
    rows = [
        "| offered tx/s | committed tx/s | p50 | p95 | p99 | 429s | CPU per node (cores) "
        "| µs CPU per committed tx, per node | disk bytes per committed tx |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r["latency_s"]
        cores = r["cpu_utilisation"]["per_node_of_one_core"]
        per_tx = r["cpu_us_per_committed_tx"]
        disk = r["disk_bytes_per_committed_tx"]
        rows.append(
            f"| {r['offered_tx_per_s']:,.0f} | {r['committed_tx_per_s']:,.0f} "
            f"| {_s(lat['p50'])} | {_s(lat['p95'])} | {_s(lat['p99'])} "
            f"| {r['rejected_429']:,} "
            f"| {' / '.join(f'{v:.2f}' for v in cores.values())} "
            f"| {' / '.join('-' if v is None else f'{v:.0f}' for v in per_tx.values())} "
            f"| {disk.get('database', float('nan')):,.0f} |"
        )
    return "\n".join(rows)


def stage_table(results: list[dict[str, Any]]) -> str:
    """p50 (p99) of each pipeline stage per load, from the measured node's histograms."""
    names = [stage for stage, _ in STAGES]
    rows = [
        "| offered tx/s | " + " | ".join(n.replace("_", " ") for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in results:
        cells = []
        for n in names:
            st = r["stage_latency_s"].get(n, {})
            cells.append(f"{_s(st.get('p50'))} ({_s(st.get('p99'))})")
        rows.append(f"| {r['offered_tx_per_s']:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def print_tables(results: list[dict[str, Any]]) -> None:
    """Both tables on stderr (stdout carries the JSON)."""
    print("\n" + summary_table(results), file=sys.stderr)
    print("\nlatency per stage, p50 (p99):\n" + stage_table(results), file=sys.stderr)
