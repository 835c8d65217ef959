"""End-to-end throughput and latency of a local cluster of real daemons under fixed load.

Starts ``--nodes`` real ``dagrider node`` daemons on loopback (fresh temporary directory,
free ports) through :class:`dagrider.node.cluster.LocalCluster`, then drives a FIXED
offered load (open loop: the schedule does not wait for commits) from separate
load-generator processes (multiprocessing, spawn). Each generator keeps one WebSocket
(``GET /v1/ingest``) per node and, every ``--tick-ms``, sends each node the record batch
of the transactions that have fallen due, so ``--rate`` tx/s (total) is kept on average.
A 429 answer pauses that node's socket for ``retry_after`` seconds and the rejected
transactions are re-sent afterwards with their original timestamps (counted in
``rejected_429``); a node that answers slowly holds at most ``--max-inflight`` messages
per socket, the rest waits in the generator (counted in ``generator.delayed``).

Each transaction is ``tag(4) | send time (>d, time.time()) | generator (>I) | seq (>Q)``
padded with zeros to ``--size`` bytes: unique, and its intended send time travels with it.
A separate measuring process follows one node's committed log (``--follow poll``: GET
/v1/log with limit 10000, the default; or ``--follow sse``: /v1/log/stream) and
computes, for transactions sent inside the measurement window, the end-to-end latency
(time the commit was observed by the measurer - embedded send time); committed tx/s and
bytes/s count the transactions whose commit was observed inside the window. After the
window the measurer keeps following for up to ``--drain`` seconds so that transactions
sent near the end of the window get their latency too. CPU seconds of each daemon are
read from /proc/<pid>/stat (utime+stime) at the window's start and end; so are, for
diagnosis, the event-loop thread's on-CPU / waiting-for-CPU time (schedstat), storage
writes (/proc/<pid>/io), the node's own counters (/metrics: rounds, vertex fill, leaders)
and the CPU used meanwhile by other processes on the machine.

The daemons run on the plain asyncio loop (``DAGRIDER_NO_UVLOOP=1``,
``DAGRIDER_LOOP=asyncio``) unless ``--uvloop`` is given.

Timeline of one load: cluster up and connected -> generators start -> ``--warmup``
seconds -> ``--duration`` seconds of measurement window -> generators stop -> drain.
With ``--rates`` each load gets a fresh cluster by default (clean state, no backlog
carried over from an overloaded run); ``--reuse-cluster`` keeps one cluster and waits
``--pause`` seconds plus until every mempool is empty between loads.

Run from the repository root:
    python bench/cluster.py --rate 10000 --duration 20
    python bench/cluster.py --rates 1000,5000,10000,20000,50000
Progress goes to stderr; stdout gets one JSON document (a list with ``--rates``).
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from dagrider.node.batch import encode_batch
from dagrider.node.cluster import ClusterSpec, LocalCluster

HEADER = struct.Struct(">4sdIQ")  # tag, send time, generator id, sequence number
HEADER_B64 = 4 * math.ceil(HEADER.size / 3)  # base64 characters that cover the header
SEND_TIME = struct.Struct(">d")
LOG_PAGE = 10_000  # the API's maximum /v1/log limit
MAX_MSG_TXS = 4_000  # largest WebSocket message the generator sends, in transactions
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Schedule:
    """When a load runs, in ``time.time()`` seconds; sent to the children once they are
    connected, so that process start-up never eats into the schedule."""

    start: float  # first transaction
    window_start: float
    window_end: float  # no new transaction after this


@dataclass(frozen=True)
class LoadPlan:
    """What one generator process does."""

    gen_id: int
    urls: list[str]
    rate: float  # tx/s this generator sends, spread evenly over ``urls``
    size: int
    tag: bytes
    tick: float
    max_inflight: int
    max_backlog_s: float


@dataclass(frozen=True)
class MeasurePlan:
    url: str
    tag: bytes
    size: int
    follow: str  # "poll" or "sse"


# -- load generator (child process) -------------------------------------------------------


class _NodeSender:
    """One WebSocket to one node: a FIFO backlog, messages in flight, 429 pauses."""

    def __init__(self, plan: LoadPlan, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.plan = plan
        self.sched = Schedule(0.0, 0.0, 0.0)
        self.ws = ws
        self.backlog: deque[bytes] = deque()
        self.inflight: deque[list[bytes]] = deque()
        self.paused_until = 0.0
        self.wake = asyncio.Event()
        self.sent = 0  # transactions written to the socket for the first time
        self.sent_window = 0  # ... of which written inside the window
        self.resent = 0  # transactions written again after a 429
        self.retry_pending = 0  # the first this-many of the backlog are retries
        self.accepted = 0
        self.accepted_window = 0  # accepted transactions whose send time is in the window
        self.rejected_429 = 0  # transactions in batches answered 429 (each time)
        self.responses_429 = 0
        self.errors: dict[str, int] = {}
        self.delayed = 0  # transactions that had to wait in the generator before sending
        self.dropped = 0  # backlog overflow, or left unsent when the window closed
        self.unanswered = 0  # sent, but the socket closed before the reply came
        self.closed = False

    def add(self, txs: list[bytes], limit: int) -> None:
        if self.backlog:  # could not send everything last tick: the new ones wait too
            self.delayed += len(txs)
        room = limit - len(self.backlog)
        if room < len(txs):
            self.dropped += len(txs) - max(0, room)
            txs = txs[: max(0, room)]
        self.backlog.extend(txs)
        self.wake.set()

    async def writer(self) -> None:
        """Send the backlog whenever the socket is neither paused nor full."""
        plan = self.plan
        while not self.closed:
            now = time.time()
            if now < self.paused_until:
                await asyncio.sleep(self.paused_until - now)
                continue
            if not self.backlog or len(self.inflight) >= plan.max_inflight:
                self.wake.clear()
                await self.wake.wait()
                continue
            n = min(len(self.backlog), MAX_MSG_TXS)
            chunk = [self.backlog.popleft() for _ in range(n)]
            self.inflight.append(chunk)
            retries = min(n, self.retry_pending)
            self.retry_pending -= retries
            self.resent += retries
            self.sent += n - retries
            if self.sched.window_start <= now < self.sched.window_end:
                self.sent_window += n - retries
            try:
                await self.ws.send_bytes(encode_batch(chunk))
            except (ConnectionError, RuntimeError) as exc:
                self._error(type(exc).__name__)
                self.closed = True

    async def reader(self) -> None:
        """Replies come in order: each one settles the oldest message in flight."""
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            reply = json.loads(msg.data)
            chunk = self.inflight.popleft()
            if "accepted" in reply:
                self.accepted += len(chunk)
                ws, we = self.sched.window_start, self.sched.window_end
                self.accepted_window += sum(
                    1 for tx in chunk if ws <= SEND_TIME.unpack_from(tx, 4)[0] < we
                )
            elif reply.get("status") == 429:
                self.rejected_429 += len(chunk)
                self.responses_429 += 1
                retry = float(reply.get("retry_after", 1.0))
                self.paused_until = max(self.paused_until, time.time() + retry)
                self.backlog.extendleft(reversed(chunk))  # retry first, original send times
                self.retry_pending += len(chunk)
                self.delayed += len(chunk)
            else:
                self._error(f"{reply.get('status')}: {str(reply.get('error'))[:80]}")
                self.dropped += len(chunk)
            self.wake.set()
        self.closed = True
        self.wake.set()

    def _error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


async def _generate(plan: LoadPlan, conn: Connection) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        senders = []
        for url in plan.urls:
            ws = await session.ws_connect(
                url + "/v1/ingest", max_msg_size=0, compress=0, autoping=True, heartbeat=None
            )
            senders.append(_NodeSender(plan, ws))
        conn.send(("ready", None))
        sched: Schedule = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        for s in senders:
            s.sched = sched
        tasks = [asyncio.create_task(s.reader()) for s in senders]
        tasks += [asyncio.create_task(s.writer()) for s in senders]
        per_node = plan.rate / len(senders)
        backlog_limit = max(MAX_MSG_TXS, int(per_node * plan.max_backlog_s))
        pad = bytes(plan.size - HEADER.size)
        pack = HEADER.pack
        tag, gid = plan.tag, plan.gen_id
        seq = 0
        due = [0] * len(senders)
        made = [0] * len(senders)
        late_ticks = 0
        max_lag = max_lag_at = 0.0
        await asyncio.sleep(max(0.0, sched.start - time.time()))
        cpu0 = time.process_time()
        cpu_window: list[float] = []
        next_tick = sched.start
        while True:
            now = time.time()
            lag = now - next_tick
            if lag > max_lag:
                max_lag, max_lag_at = lag, now - sched.start
            if lag > plan.tick:  # the loop was held up: catch up at once, count it
                late_ticks += 1
                next_tick = now
            if not cpu_window and now >= sched.window_start:
                cpu_window.append(time.process_time())
            t = min(now, sched.window_end)
            for i, sender in enumerate(senders):
                due[i] = int(per_node * (t - sched.start))
                n = due[i] - made[i]
                if n <= 0:
                    continue
                txs = [pack(tag, now, gid, s) + pad for s in range(seq, seq + n)]
                seq += n
                made[i] += n
                sender.add(txs, backlog_limit)
            if now >= sched.window_end:
                break
            next_tick += plan.tick
            await asyncio.sleep(max(0.0, next_tick - time.time()))
        cpu_window.append(time.process_time())
        # Let the backlog go out and the messages in flight be answered (a socket paused by
        # 429 gets its retries too); what is still in the generator after that is dropped.
        deadline = time.time() + 30.0
        while time.time() < deadline and any(
            (s.inflight or s.backlog) and not s.closed for s in senders
        ):
            await asyncio.sleep(0.01)
        for s in senders:
            s.dropped += len(s.backlog)
            s.unanswered = sum(len(c) for c in s.inflight)
            s.backlog.clear()
            s.closed = True
            s.wake.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.ws.close() for s in senders), return_exceptions=True), 5.0
            )
        window = sched.window_end - sched.window_start
        errors: dict[str, int] = {}
        for s in senders:
            for k, v in s.errors.items():
                errors[k] = errors.get(k, 0) + v
        return {
            "generated": seq,
            "sent": sum(s.sent for s in senders),
            "resent": sum(s.resent for s in senders),
            "sent_window": sum(s.sent_window for s in senders),
            "accepted": sum(s.accepted for s in senders),
            "accepted_window": sum(s.accepted_window for s in senders),
            "rejected_429": sum(s.rejected_429 for s in senders),
            "responses_429": sum(s.responses_429 for s in senders),
            "delayed": sum(s.delayed for s in senders),
            "dropped": sum(s.dropped for s in senders),
            "unanswered": sum(s.unanswered for s in senders),
            "errors": errors,
            "late_ticks": late_ticks,
            "max_tick_lag_s": round(max_lag, 4),
            "max_tick_lag_at_s": round(max_lag_at, 2),
            "cpu_s_total": round(time.process_time() - cpu0, 3),
            "cpu_s_window": round(cpu_window[-1] - cpu_window[0], 3),
            "window_s": window,
        }


def generator_main(plan: LoadPlan, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        conn.send(("ok", asyncio.run(_generate(plan, conn))))
    except BaseException as exc:
        conn.send(("error", f"generator {plan.gen_id}: {type(exc).__name__}: {exc}"))


# -- measurer (child process) ---------------------------------------------------------


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


# -- the parent: cluster, CPU accounting, results ----------------------------------------


def free_port_base(count: int) -> int:
    """A base port such that ``base .. base+count-1`` are all free on 127.0.0.1 now."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000 - count)
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range found")


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


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ctx = mp.get_context("spawn")
        self.cluster: LocalCluster | None = None
        self.tmp: Path | None = None

    # cluster lifecycle

    def start_cluster(self) -> LocalCluster:
        a = self.args
        self.tmp = Path(tempfile.mkdtemp(prefix="dagrider-bench-", dir=a.tmpdir))
        base = free_port_base(2 * a.nodes)
        env = (
            {"DAGRIDER_LOOP": "uvloop"}
            if a.uvloop
            else {
                "DAGRIDER_NO_UVLOOP": "1",
                "DAGRIDER_LOOP": "asyncio",
            }
        )
        spec = ClusterSpec(
            directory=self.tmp,
            nodes=a.nodes,
            base_port=base,
            api_base_port=base + a.nodes,
            batch_size=a.batch_size,
            batch_delay_ms=a.batch_delay_ms,
            max_pending=a.max_pending,
            log_level=a.log_level,
            extra_env=env,
        )
        log(f"starting {a.nodes} daemons in {self.tmp} (ports {base}..{base + 2 * a.nodes - 1})")
        cluster = LocalCluster(spec)
        self.cluster = cluster
        cluster.start_all()
        cluster.wait_ready(timeout=60)
        cluster.wait_connected()
        log("cluster up: " + ", ".join(cluster.api_url(i) for i in range(cluster.n)))
        return cluster

    def stop_cluster(self) -> None:
        if self.cluster is not None:
            log("stopping the cluster")
            self.cluster.stop_all()
            self.cluster = None
        if self.tmp is not None and not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp is not None:
            log(f"kept {self.tmp}")
        self.tmp = None

    def wait_quiet(self, cluster: LocalCluster) -> None:
        """Between loads on a reused cluster: pause, then wait for empty mempools."""
        time.sleep(self.args.pause)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pending = [
                int(cluster.get_json(i, "/v1/status").get("mempool", 0)) for i in range(cluster.n)
            ]
            if not any(pending):
                return
            log(f"waiting for mempools to empty: {pending}")
            time.sleep(1.0)
        log("mempools still not empty after 120 s; measuring anyway")

    def wait_for_quiet_machine(self, cluster: LocalCluster) -> None:
        """Up to ``--wait-quiet`` seconds: wait until other processes use < 0.2 core."""
        limit = self.args.wait_quiet
        if limit <= 0:
            return
        ours = {os.getpid(), *(p for i in range(cluster.n) if (p := cluster.pid(i)) is not None)}
        deadline = time.monotonic() + limit
        while True:
            before = all_process_cpu()
            time.sleep(3.0)
            used = foreign_cpu(before, all_process_cpu(), ours)
            load = used["other_processes_cpu_s"] / 3.0
            if load < 0.2:
                return
            if time.monotonic() > deadline:
                log(f"machine still busy ({load:.2f} core); measuring anyway")
                return
            log(
                f"waiting for a quiet machine: others use {load:.2f} core "
                f"{used['top_other_processes']}"
            )

    # one load

    def run_load(self, cluster: LocalCluster, rate: float) -> dict[str, Any]:
        a = self.args
        tag = os.urandom(4)
        urls = [cluster.api_url(i) for i in range(cluster.n)]
        children: list[tuple[mp.process.BaseProcess, Connection]] = []
        m_parent, m_child = self.ctx.Pipe()
        mplan = MeasurePlan(urls[a.measure_node], tag, a.size, a.follow)
        measurer = self.ctx.Process(target=measurer_main, args=(mplan, m_child), daemon=True)
        children.append((measurer, m_parent))
        gens: list[tuple[mp.process.BaseProcess, Connection]] = []
        for g in range(a.generators):
            gplan = LoadPlan(
                g,
                urls,
                rate / a.generators,
                a.size,
                tag,
                a.tick_ms / 1000.0,
                a.max_inflight,
                a.max_backlog_s,
            )
            parent, child = self.ctx.Pipe()
            gen = self.ctx.Process(target=generator_main, args=(gplan, child), daemon=True)
            gens.append((gen, parent))
        children += gens
        try:
            for child_proc, _ in children:
                child_proc.start()
            for _, conn in children:  # spawned, imported, connected
                if not conn.poll(60):
                    raise RuntimeError("a bench process did not start")
                status, payload = conn.recv()
                if status != "ready":
                    raise RuntimeError(payload)
            start = time.time() + 0.5
            ws = start + a.warmup
            we = ws + a.duration
            for _, conn in children:
                conn.send(Schedule(start, ws, we))
            pids = {i: cluster.pid(i) for i in range(cluster.n)}
            log(
                f"offered {rate:g} tx/s x {a.size} B: "
                f"warm-up {a.warmup:g} s, window {a.duration:g} s"
            )
            profiler = None
            time.sleep(max(0.0, ws - time.time()))
            cpu0 = {i: cpu_seconds(p) for i, p in pids.items()}
            sched0 = {i: schedstat(p) for i, p in pids.items()}
            io0 = {i: io_bytes(p) for i, p in pids.items()}
            busy0 = machine_cpu()
            procs0 = all_process_cpu()
            with ThreadPoolExecutor(cluster.n) as pool:
                metrics0 = list(pool.map(scrape_metrics, urls))
            t0 = time.time()
            if a.profile:
                profiler = self.start_profiler(pids[a.profile_node])
            time.sleep(max(0.0, we - time.time()))
            cpu1 = {i: cpu_seconds(p) for i, p in pids.items()}
            sched1 = {i: schedstat(p) for i, p in pids.items()}
            io1 = {i: io_bytes(p) for i, p in pids.items()}
            busy1 = machine_cpu()
            procs1 = all_process_cpu()
            t1 = time.time()
            with ThreadPoolExecutor(cluster.n) as pool:
                metrics1 = list(pool.map(scrape_metrics, urls))
            ours = {os.getpid(), *(p for p in pids.values() if p is not None)}
            ours |= {p.pid for p, _ in children if p.pid is not None}
            if profiler is not None:
                ours.add(profiler.pid)
            foreign = foreign_cpu(procs0, procs1, ours)
            window = t1 - t0
            loop_time = {
                str(i): {
                    "on_cpu": round((sched1[i][0] - sched0[i][0]) / window, 3),
                    "waiting_for_cpu": round((sched1[i][1] - sched0[i][1]) / window, 3),
                    "off_cpu": round(
                        max(
                            0.0,
                            1
                            - (sched1[i][0] + sched1[i][1] - sched0[i][0] - sched0[i][1]) / window,
                        ),
                        3,
                    ),
                }
                for i in pids
            }
            gen_results: list[dict[str, Any]] = []
            for gen_proc, conn in gens:
                if not conn.poll(120):
                    raise RuntimeError("a load generator did not report")
                status, payload = conn.recv()
                if status != "ok":
                    raise RuntimeError(payload)
                gen_results.append(payload)
                gen_proc.join(10)
            accepted_window = sum(g["accepted_window"] for g in gen_results)
            log(f"window over; draining up to {a.drain:g} s for {accepted_window} window txs")
            m_parent.send((accepted_window, a.drain))
            if not m_parent.poll(a.drain + 60):
                raise RuntimeError("the measurer did not report")
            status, meas = m_parent.recv()
            if status != "ok":
                raise RuntimeError(meas)
            measurer.join(10)
            if profiler is not None:
                self.finish_profiler(profiler)
            statuses: dict[int, Any] = {}
            for i in range(cluster.n):
                try:
                    st = cluster.get_json(i, "/v1/status")
                    statuses[i] = {k: st.get(k) for k in ("round", "log_head", "mempool")}
                except OSError as exc:
                    statuses[i] = {"error": str(exc)}
            return self.result(
                rate,
                t1 - t0,
                cpu0,
                cpu1,
                tuple(b - a for a, b in zip(busy0, busy1, strict=True)),
                foreign,
                loop_time,
                {
                    str(i): consensus_stats(metrics0[i], metrics1[i], t1 - t0)
                    | {
                        "disk_MB_written_per_s": round((io1[i][0] - io0[i][0]) / window / 1e6, 2),
                        "write_call_MB_per_s": round((io1[i][1] - io0[i][1]) / window / 1e6, 2),
                    }
                    for i in range(cluster.n)
                },
                gen_results,
                meas,
                statuses,
            )
        finally:
            for child_proc, _ in children:
                if child_proc.is_alive():
                    child_proc.kill()
                    child_proc.join(5)

    def start_profiler(self, pid: int | None) -> subprocess.Popen[bytes] | None:
        a = self.args
        exe = shutil.which("py-spy")
        if exe is None or pid is None:
            log("py-spy not found: pip install py-spy")
            return None
        out = Path(a.profile)
        fmt = "raw" if out.suffix in (".txt", ".folded") else "flamegraph"
        if out.suffix == ".json":
            fmt = "speedscope"
        cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(a.duration) - 1)]
        cmd += ["--rate", "100", "--format", fmt, "-o", str(out)]
        if a.profile_idle:
            cmd.append("--idle")
        log("profiling: " + " ".join(cmd))
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)

    def finish_profiler(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()

    def result(
        self,
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
    ) -> dict[str, Any]:
        a = self.args
        cpu = {str(i): round(cpu1[i] - cpu0[i], 2) for i in cpu0}
        total_cpu = sum(cpu.values())
        ncpu = os.cpu_count() or 1
        accepted_window = sum(g["accepted_window"] for g in gens)
        committed = meas["window_sent_committed"]
        gen_cpu = sum(g["cpu_s_window"] for g in gens)
        latencies = meas["latencies"]
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
            "commit_latency_s": percentiles(meas["commit_latencies"]),
            "window_txs_accepted": accepted_window,
            "window_txs_committed": committed,
            "cpu_seconds_per_node": cpu,
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

    def run(self, rates: list[float]) -> list[dict[str, Any]]:
        results = []
        try:
            cluster = None
            for k, rate in enumerate(rates):
                if cluster is None or not self.args.reuse_cluster:
                    self.stop_cluster()
                    cluster = self.start_cluster()
                elif k:
                    self.wait_quiet(cluster)
                self.wait_for_quiet_machine(cluster)
                res = self.run_load(cluster, rate)
                log(
                    f"rate {rate:g}: sent {res['sent_tx_per_s']:g}/s, committed "
                    f"{res['committed_tx_per_s']:g}/s, p50 {res['latency_s']['p50']} s, "
                    f"p99 {res['latency_s']['p99']} s, node CPU {res['cpu_seconds_per_node']}"
                )
                results.append(res)
        finally:
            self.stop_cluster()
        return results


def main() -> None:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1_000, help="max txs per vertex")
    p.add_argument("--batch-delay-ms", type=int, default=50)
    p.add_argument("--max-pending", type=int, default=20_000, help="mempool limit per node")
    p.add_argument("--rate", type=float, default=10_000, help="offered load, tx/s in total")
    p.add_argument("--rates", help="comma-separated loads, one run each (overrides --rate)")
    p.add_argument("--size", type=int, default=512, help="bytes per transaction")
    p.add_argument("--duration", type=float, default=20.0, help="measurement window, s")
    p.add_argument("--warmup", type=float, default=5.0, help="load before the window, s")
    p.add_argument("--drain", type=float, default=30.0, help="max wait for window txs, s")
    p.add_argument("--generators", type=int, default=1, help="load-generator processes")
    p.add_argument("--tick-ms", type=float, default=10.0, help="send interval per node")
    p.add_argument("--max-inflight", type=int, default=16, help="unanswered msgs per socket")
    p.add_argument("--max-backlog-s", type=float, default=5.0, help="generator queue, s of load")
    p.add_argument("--follow", choices=("poll", "sse"), default="poll", help="log reader")
    p.add_argument("--measure-node", type=int, default=0, help="node whose log is followed")
    p.add_argument("--reuse-cluster", action="store_true", help="one cluster for all rates")
    p.add_argument("--pause", type=float, default=5.0, help="s between loads when reused")
    p.add_argument(
        "--wait-quiet", type=float, default=0.0, help="wait up to s for other processes to idle"
    )
    p.add_argument("--uvloop", action="store_true", help="run the daemons on uvloop")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.add_argument("--tmpdir", help="parent of the cluster directory (e.g. /dev/shm: no disk I/O)")
    p.add_argument("--keep", action="store_true", help="keep the cluster directory")
    p.add_argument("--profile", help="py-spy output (.svg, .json speedscope, .txt collapsed)")
    p.add_argument("--profile-node", type=int, default=1, help="node to profile")
    p.add_argument("--profile-idle", action="store_true", help="py-spy --idle")
    args = p.parse_args()
    if args.size < HEADER.size:
        p.error(f"--size must be at least {HEADER.size} bytes (the header)")
    if not 0 <= args.measure_node < args.nodes or not 0 <= args.profile_node < args.nodes:
        p.error("--measure-node/--profile-node must name a node")
    if args.duration < 2:
        p.error("--duration must be at least 2 s")
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    results = Bench(args).run(rates)
    doc: Any = results if args.rates else results[0]
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
