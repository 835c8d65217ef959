"""Measurement for ``bench/cluster.py``: the log follower (child process), CPU, I/O and
the nodes' own metrics.

The measuring process follows one node's committed log (``poll``: GET /v1/log with
limit 10000; or ``sse``: /v1/log/stream) and computes, for transactions sent inside
the measurement window, the end-to-end latency (time the commit was observed - the send
time embedded by ``cluster_load``); committed tx/s and bytes/s count the transactions
whose commit was observed inside the window. After the window it keeps following for up
to ``drain`` seconds so that transactions sent near its end get their latency too.

The parent reads CPU seconds of each daemon from /proc/<pid>/stat (utime+stime), the
event-loop thread's on-CPU / waiting-for-CPU time (schedstat), storage writes
(/proc/<pid>/io), the CPU used meanwhile by other processes on the machine, and the
nodes' /metrics: counters (rounds, vertex fill, leaders) and the per-stage latency
histograms (submit-to-proposal, proposal-to-delivery, delivery-to-commit,
commit-to-client), whose window difference gives each stage's percentiles.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import math
import os
import platform
import signal
import struct
import time
import urllib.request
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from cluster_load import HEADER, Schedule

HEADER_B64 = 4 * math.ceil(HEADER.size / 3)  # base64 characters that cover the header
LOG_PAGE = 10_000  # the API's maximum /v1/log limit
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAGES = (
    ("submit_to_proposal", "dagrider_submit_to_proposal_seconds"),
    ("proposal_to_delivery", "dagrider_proposal_to_delivery_seconds"),
    ("delivery_to_commit", "dagrider_delivery_to_commit_seconds"),
    ("commit_to_client", "dagrider_commit_to_client_seconds"),
    ("submit_to_commit", "dagrider_commit_latency_seconds"),
)
"""The per-stage latency histograms a node exports, in pipeline order."""


@dataclass(frozen=True)
class MeasurePlan:
    url: str
    tag: bytes
    size: int
    follow: str  # "poll" or "sse"


class _Tally:
    """Latencies and window counts over the entries the measurer has seen."""

    def __init__(self, plan: MeasurePlan, sched: Schedule) -> None:
        self.plan = plan
        self.sched = sched
        self.latencies: list[float] = []  # observed - sent, for window-sent transactions
        self.commit_latencies: list[float] = []  # node's committed_at - sent, same txs
        self.window_sent_committed = 0
        self.committed_in_window = 0  # commits observed inside the window (any send time)
        self.bytes_in_window = 0
        self.timeline: dict[int, int] = {}  # whole seconds since start -> commits observed
        self.foreign = 0  # entries of other runs or clients
        self.entries = 0

    def add(self, entries: list[dict[str, Any]], observed: float) -> None:
        sched = self.sched
        tag, ws, we = self.plan.tag, sched.window_start, sched.window_end
        in_window = ws <= observed < we
        second = int(observed - sched.start)
        unpack, a2b = HEADER.unpack_from, binascii.a2b_base64
        mine = 0
        for e in entries:
            data: str = e["data"]
            try:
                t, sent, _gid, _seq = unpack(a2b(data[:HEADER_B64]))
            except (struct.error, binascii.Error):
                self.foreign += 1
                continue
            if t != tag:
                self.foreign += 1
                continue
            mine += 1
            if in_window:
                self.bytes_in_window += len(data) * 3 // 4 - data[-2:].count("=")
            if ws <= sent < we:
                self.window_sent_committed += 1
                self.latencies.append(observed - sent)
                self.commit_latencies.append(float(e["committed_at"]) - sent)
        self.entries += len(entries)
        if in_window:
            self.committed_in_window += mine
        if mine:
            self.timeline[second] = self.timeline.get(second, 0) + mine


async def _follow_poll(
    session: aiohttp.ClientSession, plan: MeasurePlan, tally: _Tally, stop: asyncio.Event
) -> None:
    async with session.get(f"{plan.url}/v1/status") as r:
        cursor = int((await r.json())["log_head"])
    while not stop.is_set():
        async with session.get(f"{plan.url}/v1/log?after={cursor}&limit={LOG_PAGE}") as r:
            body = await r.read()
            observed = time.time()
        entries = json.loads(body)["entries"]
        if entries:
            tally.add(entries, observed)
            cursor = int(entries[-1]["index"])
        if len(entries) < LOG_PAGE:
            await asyncio.sleep(0.005)


async def _follow_sse(
    session: aiohttp.ClientSession, plan: MeasurePlan, tally: _Tally, stop: asyncio.Event
) -> None:
    async with session.get(f"{plan.url}/v1/status") as r:
        cursor = int((await r.json())["log_head"])
    async with session.get(f"{plan.url}/v1/log/stream?after={cursor}") as r:
        buf = b""
        async for chunk in r.content.iter_any():
            observed = time.time()
            buf += chunk
            events, sep, rest = buf.rpartition(b"\n\n")
            if not sep:
                continue
            buf = rest
            entries = [
                json.loads(line[6:]) for line in events.split(b"\n") if line.startswith(b"data: ")
            ]
            if entries:
                tally.add(entries, observed)
            if stop.is_set():
                return


async def _measure(plan: MeasurePlan, conn: Connection) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        conn.send(("ready", None))
        sched: Schedule = await loop.run_in_executor(None, conn.recv)
        tally = _Tally(plan, sched)
        follow = _follow_sse if plan.follow == "sse" else _follow_poll
        task = asyncio.create_task(follow(session, plan, tally, stop))
        await asyncio.sleep(max(0.0, sched.window_start - time.time()))
        cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, sched.window_end - time.time()))
        cpu_window = time.process_time() - cpu0
        # The parent tells us how many window transactions were accepted, and how long to
        # wait for them.
        expected, drain = await loop.run_in_executor(None, conn.recv)
        deadline = time.time() + drain
        while tally.window_sent_committed < expected and time.time() < deadline:
            if task.done():
                break
            await asyncio.sleep(0.05)
        drained_at = time.time()
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return {
        "latencies": tally.latencies,
        "commit_latencies": tally.commit_latencies,
        "window_sent_committed": tally.window_sent_committed,
        "committed_in_window": tally.committed_in_window,
        "bytes_in_window": tally.bytes_in_window,
        "timeline": [tally.timeline.get(s, 0) for s in range(max(tally.timeline, default=-1) + 1)],
        "foreign_entries": tally.foreign,
        "entries_seen": tally.entries,
        "cpu_s_window": round(cpu_window, 3),
        "drain_s": round(drained_at - sched.window_end, 2),
    }


def measurer_main(plan: MeasurePlan, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(("ok", asyncio.run(_measure(plan, conn))))
    except BaseException as exc:
        conn.send(("error", f"measurer: {type(exc).__name__}: {exc}"))


# -- the parent's accounting ----------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    if pid is None:
        return float("nan")
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def io_bytes(pid: int | None) -> tuple[float, float]:
    """(bytes the process made the kernel write to storage, bytes it passed to write
    calls), from /proc/<pid>/io; storage writes include SQLite WAL appends and
    checkpoints but not loopback sockets."""
    if pid is None:
        return float("nan"), float("nan")
    try:
        fields = dict(
            line.split(": ", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines()
        )
        return float(fields["write_bytes"]), float(fields["wchar"])
    except (OSError, KeyError, ValueError):
        return float("nan"), float("nan")


def schedstat(pid: int | None) -> tuple[float, float]:
    """(seconds on CPU, seconds runnable but waiting for a CPU) of a process's main thread
    (the daemon's event loop), from /proc/<pid>/task/<pid>/schedstat."""
    if pid is None:
        return float("nan"), float("nan")
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return float("nan"), float("nan")
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


def machine_cpu() -> tuple[float, float, float]:
    """(busy, iowait, steal) CPU seconds of the whole machine, all CPUs, from /proc/stat.

    busy = user + nice + system + irq + softirq: what this machine's processes and kernel
    ran; steal is time the hypervisor gave to someone else.
    """
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
        f = [int(x) for x in first.split()[1:9]]
    except (OSError, ValueError):
        return float("nan"), float("nan"), float("nan")
    user, nice, system, _idle, iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq) / CLK_TCK, iowait / CLK_TCK, steal / CLK_TCK


def all_process_cpu() -> dict[int, tuple[str, bool, float]]:
    """pid -> (command name, is a kernel thread, utime+stime seconds) for every process."""
    out: dict[int, tuple[str, bool, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        f = stat[stat.rindex(")") + 2 :].split()
        kernel = int(f[1]) == 2 or int(entry.name) == 2  # ppid kthreadd
        out[int(entry.name)] = (comm, kernel, (int(f[11]) + int(f[12])) / CLK_TCK)
    return out


def foreign_cpu(
    before: dict[int, tuple[str, bool, float]],
    after: dict[int, tuple[str, bool, float]],
    ours: set[int],
) -> dict[str, Any]:
    """CPU used between two snapshots by processes that are not the cluster or the bench:
    other users of this machine, and kernel threads (I/O writeback, journaling...)."""
    user: dict[str, float] = {}
    kernel = 0.0
    for pid, (comm, is_kernel, cpu) in after.items():
        if pid in ours:
            continue
        used = cpu - before[pid][2] if pid in before else cpu
        if used <= 0:
            continue
        if is_kernel:
            kernel += used
        else:
            user[comm] = user.get(comm, 0.0) + used
    top = sorted(user.items(), key=lambda kv: -kv[1])[:5]
    return {
        "other_processes_cpu_s": round(sum(user.values()), 2),
        "top_other_processes": {k: round(v, 2) for k, v in top},
        "kernel_threads_cpu_s": round(kernel, 2),
    }


def scrape_metrics(url: str) -> dict[str, float]:
    """A node's /metrics, summed over labels except the leader outcome; {} on failure."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=15) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("dagrider_") or "_bucket{" in line:
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if name == "dagrider_leaders_total":
            name += "_" + key.split('"')[1]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def consensus_stats(
    before: dict[str, float], after: dict[str, float], window: float
) -> dict[str, Any]:
    """What the node's own counters say about the window: rounds, vertex fill, leaders."""

    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    if not before or not after:
        return {"error": "metrics unavailable"}
    vertices = d("dagrider_committed_vertices_total")
    return {
        "rounds_per_s": round(d("dagrider_round") / window, 1),
        "proposed_vertices_per_s": round(d("dagrider_proposed_vertices_total") / window, 1),
        "committed_vertices": int(vertices),
        "txs_per_committed_vertex": round(d("dagrider_committed_transactions_total") / vertices, 1)
        if vertices
        else None,
        "leaders": {
            k: int(d(f"dagrider_leaders_total_{k}")) for k in ("direct", "recursive", "skipped")
        },
        "peer_MB_in_per_s": round(d("dagrider_peer_bytes_received_total") / window / 1e6, 2),
        "peer_msgs_in_per_s": round(d("dagrider_peer_messages_received_total") / window),
        "requeued_txs": int(d("dagrider_requeued_transactions_total")),
        "mempool_end": int(after.get("dagrider_mempool_transactions", 0)),
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    v = sorted(values)

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, int(q * len(v)))], 4)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(v[-1], 4)}


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem_gb = round(int(first.split()[1]) / 1024 / 1024, 1)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def scrape_histograms(url: str) -> dict[str, list[tuple[float, float]]]:
    """The per-stage latency histograms of a node's /metrics: name -> cumulative
    (upper bound, count) buckets, summed over labels; {} on failure."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=15) as r:
            text = r.read().decode()
    except OSError:
        return {}
    wanted = {name for _, name in STAGES}
    out: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if "_bucket{" not in line:
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("_bucket{", 1)[0]
        if name not in wanted:
            continue
        le = key.split('le="', 1)[1].split('"', 1)[0]
        bound = math.inf if le == "+Inf" else float(le)
        series = out.setdefault(name, {})
        series[bound] = series.get(bound, 0.0) + float(value)
    return {name: sorted(series.items()) for name, series in out.items()}


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style quantile of cumulative buckets: linear inside the bucket that
    holds it; the largest finite bound if it falls in +Inf; None if empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            frac = (rank - lower_count) / width if width else 1.0
            return lower_bound + (bound - lower_bound) * frac
        lower_bound, lower_count = bound, count
    return lower_bound


def stage_latencies(
    before: dict[str, list[tuple[float, float]]], after: dict[str, list[tuple[float, float]]]
) -> dict[str, dict[str, float | None]]:
    """p50/p95/p99 and count of each stage over the window (after - before)."""
    out: dict[str, dict[str, float | None]] = {}
    for stage, name in STAGES:
        prev = dict(before.get(name, []))
        window = [(b, c - prev.get(b, 0.0)) for b, c in after.get(name, [])]
        row: dict[str, float | None] = {
            f"p{round(q * 100)}": None
            if (v := histogram_quantile(window, q)) is None
            else round(v, 4)
            for q in (0.5, 0.95, 0.99)
        }
        row["count"] = window[-1][1] if window else 0.0
        out[stage] = row
    return out
