"""Bytes on disk under a steady load, with and without ``[storage] keep_log_entries``.

For each configuration (``keep_log_entries = 0``, the whole log, and ``= N``) a fresh
4-node cluster of real daemons is started on loopback (``LocalCluster``, free ports from
``free_port_block``), a steady open-loop load of ``--rate`` tx/s of ``--tx-size`` bytes
is offered over one WebSocket ``/v1/ingest`` per node for ``--duration`` seconds, and
every ``--sample-interval`` seconds the bench records, per node, the size of
``node.sqlite3`` and its ``-wal`` (and ``-shm``) and the committed log head.

Reported per configuration and node: bytes on disk at the end (sqlite + wal), committed
transactions, bytes per committed transaction, and the steady-state slope of the main
file (least squares over the last ``--steady-fraction`` of the load window) as bytes/s,
bytes per newly committed transaction and growth per hour (extrapolated: this is not a
soak). The WAL is reported apart (its largest and mean size): every GC step empties it,
so it is a sawtooth bounded by one GC interval's writes, not a trend. After the cluster
stops, each file is opened read-only for its page and payload breakdown.

Vertices (which carry the blocks too) are kept ``retain_rounds`` below the GC floor, so
the file only reaches its steady state once that many rounds have passed: the bench uses
``--retain-rounds`` (default 50, the node's default is 2000) so that a one-minute run
gets there; ``steady_state_reached`` in the output says whether it did.

Run from the repository root (progress on stderr, one JSON document on stdout):
    python bench/storage.py --rate 2000 --duration 60
    python bench/storage.py --rate 2000 --duration 60 --keep-log-entries 20000 --only with
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from dagrider.node.batch import encode_batch
from dagrider.node.cluster import ClusterSpec, LocalCluster, free_port_block

TICK = 0.05  # seconds between load batches per node
MAX_INFLIGHT = 4  # unanswered ingest messages per socket
DB = "node.sqlite3"


def log(msg: str) -> None:
    print(f"[storage {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    t: float  # seconds since the load started
    files: list[tuple[int, int, int]]  # per node: sqlite, wal, shm bytes
    committed: list[int]  # per node: committed transactions (log head + 1)
    rounds: list[int]


@dataclass
class Load:
    """Counts of the load generator."""

    generated: int = 0
    accepted: int = 0
    rejected_429: int = 0
    errors: dict[str, int] = field(default_factory=dict)


# -- load ------------------------------------------------------------------------------


async def _feed(
    session: aiohttp.ClientSession,
    url: str,
    rate: float,
    size: int,
    node: int,
    stop_at: float,
    load: Load,
) -> None:
    """Offer ``rate`` tx/s to one node until ``stop_at`` (time.monotonic())."""
    ws = await session.ws_connect(url + "/v1/ingest", max_msg_size=0, heartbeat=None)
    backlog: deque[bytes] = deque()
    inflight: deque[list[bytes]] = deque()
    paused_until = 0.0
    seq = 0
    rng = random.Random(node)
    start = time.monotonic()

    async def reader() -> None:
        nonlocal paused_until
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            reply = json.loads(msg.data)
            chunk = inflight.popleft()
            if "accepted" in reply:
                load.accepted += len(chunk)
            elif reply.get("status") == 429:
                load.rejected_429 += len(chunk)
                paused_until = time.monotonic() + float(reply.get("retry_after", 1.0))
                backlog.extendleft(reversed(chunk))
            else:
                key = f"{reply.get('status')}: {str(reply.get('error'))[:60]}"
                load.errors[key] = load.errors.get(key, 0) + 1

    task = asyncio.create_task(reader())
    try:
        while (now := time.monotonic()) < stop_at:
            due = int(rate * (now - start)) - seq
            for _ in range(max(0, due)):
                head = struct.pack(">4sIQ", b"stor", node, seq)
                backlog.append(head + rng.randbytes(max(0, size - len(head))))
                seq += 1
            load.generated += max(0, due)
            if backlog and now >= paused_until and len(inflight) < MAX_INFLIGHT:
                chunk = [backlog.popleft() for _ in range(min(len(backlog), 4000))]
                inflight.append(chunk)
                await ws.send_bytes(encode_batch(chunk))
            await asyncio.sleep(TICK)
        deadline = time.monotonic() + 10.0
        while inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await ws.close()


# -- sampling --------------------------------------------------------------------------


def _file_sizes(directory: Path) -> tuple[int, int, int]:
    out = []
    for suffix in ("", "-wal", "-shm"):
        try:
            out.append((directory / (DB + suffix)).stat().st_size)
        except FileNotFoundError:
            out.append(0)
    return out[0], out[1], out[2]


async def _status(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/v1/status") as r:
        doc: dict[str, Any] = await r.json()
        return doc


async def _first_available(session: aiohttp.ClientSession, url: str) -> int:
    """The node's first log index: 0, or what its 410 on a read from the start names."""
    async with session.get(url + "/v1/log?after=-1&limit=1") as r:
        if r.status == 410:
            return int((await r.json())["first_available"])
        return 0


async def _sample(session: aiohttp.ClientSession, cluster: LocalCluster, t0: float) -> Sample:
    statuses = await asyncio.gather(
        *(_status(session, cluster.api_url(i)) for i in range(cluster.n))
    )
    return Sample(
        time.monotonic() - t0,
        [_file_sizes(cluster.data_dir(i)) for i in range(cluster.n)],
        [int(s["log_head"]) + 1 for s in statuses],
        [int(s["round"]) for s in statuses],
    )


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def _breakdown(path: Path) -> dict[str, Any]:
    """Pages and payload bytes per table, read-only, once the node has stopped."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:

        def one(sql: str) -> int:
            return int(db.execute(sql).fetchone()[0] or 0)

        return {
            "page_size": one("PRAGMA page_size"),
            "pages": one("PRAGMA page_count"),
            "free_pages": one("PRAGMA freelist_count"),
            "auto_vacuum": ["none", "full", "incremental"][one("PRAGMA auto_vacuum")],
            "log_rows": one("SELECT COUNT(*) FROM log"),
            "log_block_bytes": one("SELECT SUM(length(block)) FROM log"),
            "tx_ids_rows": one("SELECT COUNT(*) FROM tx_ids"),
            "vertices_rows": one("SELECT COUNT(*) FROM vertices"),
            "vertices_body_bytes": one("SELECT SUM(length(body)) FROM vertices"),
            "votes_rows": one("SELECT COUNT(*) FROM votes"),
            "checkpoints_rows": one("SELECT COUNT(*) FROM checkpoints"),
            "certificates": one("SELECT COUNT(*) FROM checkpoints WHERE certificate IS NOT NULL"),
        }
    finally:
        db.close()


# -- one configuration -----------------------------------------------------------------


async def _drive(
    cluster: LocalCluster, a: argparse.Namespace
) -> tuple[list[Sample], Load, list[int]]:
    """Load, sample, drain; the samples, the load's counts and each node's first index."""
    load = Load()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.monotonic()
        stop_at = t0 + a.duration
        feeders = [
            asyncio.create_task(
                _feed(session, cluster.api_url(i), a.rate / cluster.n, a.tx_size, i, stop_at, load)
            )
            for i in range(cluster.n)
        ]
        samples = [await _sample(session, cluster, t0)]
        next_log = t0 + 10
        while time.monotonic() < stop_at:
            await asyncio.sleep(a.sample_interval)
            samples.append(await _sample(session, cluster, t0))
            if time.monotonic() >= next_log:
                s = samples[-1]
                mib = sum(f[0] + f[1] for f in s.files) / cluster.n / 2**20
                log(f"t={s.t:5.1f}s committed {s.committed[0]:>9} tx, {mib:7.1f} MiB/node")
                next_log += 10
        await asyncio.gather(*feeders)
        # Drain: until every node has committed what was accepted (or 15 s).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            s = await _sample(session, cluster, t0)
            if min(s.committed) >= load.accepted:
                break
            await asyncio.sleep(0.5)
        samples.append(await _sample(session, cluster, t0))
        first = await asyncio.gather(
            *(_first_available(session, cluster.api_url(i)) for i in range(cluster.n))
        )
    return samples, load, list(first)


def run_one(a: argparse.Namespace, keep: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="dagrider-storage-", dir=a.tmpdir))
    base = free_port_block(2 * a.nodes)
    spec = ClusterSpec(
        directory=tmp,
        nodes=a.nodes,
        base_port=base,
        api_base_port=base + a.nodes,
        max_pending=a.max_pending,
        retain_rounds=a.retain_rounds,
        keep_log_entries=keep,
        log_level="warning",
        dht=False,
        extra_env={"DAGRIDER_NO_UVLOOP": "1", "DAGRIDER_LOOP": "asyncio"},
    )
    log(f"keep_log_entries={keep}: {a.nodes} daemons in {tmp} (ports {base}..)")
    cluster = LocalCluster(spec)
    try:
        cluster.start_all()
        cluster.wait_ready(timeout=60)
        cluster.wait_connected()
        samples, load, first = asyncio.run(_drive(cluster, a))
    finally:
        cluster.stop_all()
    breakdown = [_breakdown(cluster.data_dir(i) / DB) for i in range(cluster.n)]
    result = _summarise(a, keep, samples, load, first, breakdown)
    if a.keep_dirs:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _summarise(
    a: argparse.Namespace,
    keep: int,
    samples: list[Sample],
    load: Load,
    first_available: list[int],
    breakdown: list[dict[str, Any]],
) -> dict[str, Any]:
    in_load = [s for s in samples if s.t <= a.duration + 1e-9]
    steady = [s for s in in_load if s.t >= a.duration * (1 - a.steady_fraction)]
    end = samples[-1]
    first, last = samples[0], in_load[-1]
    rounds_per_s = (sum(last.rounds) - sum(first.rounds)) / len(last.rounds) / (last.t - first.t)
    nodes: list[dict[str, Any]] = []
    for i in range(len(end.files)):
        sqlite_b, wal_b, shm_b = end.files[i]
        total = sqlite_b + wal_b
        # The slope is the main file's: the WAL is a sawtooth (emptied by every GC step's
        # TRUNCATE checkpoint), bounded by what one GC interval writes (max_wal_bytes).
        ts = [s.t for s in steady]
        sizes = [float(s.files[i][0]) for s in steady]
        committed = [float(s.committed[i]) for s in steady]
        per_s = _slope(ts, sizes)
        per_tx = _slope(committed, sizes)
        nodes.append(
            {
                "node": i,
                "sqlite_bytes": sqlite_b,
                "wal_bytes": wal_b,
                "shm_bytes": shm_b,
                "bytes_on_disk": total,
                "max_wal_bytes": max(s.files[i][1] for s in samples),
                "mean_wal_bytes": round(sum(s.files[i][1] for s in steady) / len(steady))
                if steady
                else None,
                "committed_tx": end.committed[i],
                "first_available": first_available[i],
                "bytes_per_committed_tx": round(total / end.committed[i], 1)
                if end.committed[i]
                else None,
                "steady_bytes_per_s": None if per_s is None else round(per_s, 1),
                "steady_bytes_per_new_tx": None if per_tx is None else round(per_tx, 1),
                "growth_bytes_per_hour": None if per_s is None else round(per_s * 3600),
                "file": breakdown[i],
            }
        )

    def mean(key: str) -> float | None:
        values = [n[key] for n in nodes if n[key] is not None]
        return round(sum(values) / len(values), 1) if values else None

    retention_s = a.retain_rounds / rounds_per_s if rounds_per_s > 0 else None
    pruned = any(n["first_available"] > 0 for n in nodes)
    if keep and not pruned and min(end.committed) > 2 * keep:
        log(f"keep_log_entries={keep} but no node pruned its log: is it passed to the Store?")
    committed_rate = (sum(last.committed) - sum(first.committed)) / len(last.committed)
    return {
        "keep_log_entries": keep,
        "log_pruned": pruned,
        "offered_tx": load.generated,
        "accepted_tx": load.accepted,
        "rejected_429": load.rejected_429,
        "errors": load.errors,
        "committed_tx_per_s": round(committed_rate / (last.t - first.t), 1),
        "rounds_per_s": round(rounds_per_s, 2),
        "vertex_retention_s": None if retention_s is None else round(retention_s, 1),
        "steady_window_s": [round(steady[0].t, 1), round(steady[-1].t, 1)] if steady else None,
        "steady_state_reached": retention_s is not None
        and bool(steady)
        and retention_s + a.duration * 0.05 < steady[0].t
        # With retention, the file settles once about twice the kept log has been
        # committed (the kept rows, plus the freed pages they are recycled through).
        and (keep == 0 or (pruned and min(steady[0].committed) >= 2 * keep)),
        "bytes_on_disk_mean": mean("bytes_on_disk"),
        "bytes_per_committed_tx_mean": mean("bytes_per_committed_tx"),
        "steady_bytes_per_new_tx_mean": mean("steady_bytes_per_new_tx"),
        "growth_bytes_per_hour_mean": mean("growth_bytes_per_hour"),
        "nodes": nodes,
        "timeline": [
            {
                "t": round(s.t, 1),
                "committed": s.committed[0],
                "sqlite_node0": s.files[0][0],
                "wal_node0": s.files[0][1],
            }
            for s in samples[:: max(1, len(samples) // 20)]
        ],
    }


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=2000.0, help="offered tx/s (total)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--tx-size", type=int, default=512, help="bytes per transaction")
    p.add_argument(
        "--keep-log-entries",
        type=int,
        default=None,
        help="N for the retaining run (default: rate * duration / 4)",
    )
    p.add_argument("--only", choices=("both", "with", "without"), default="both")
    p.add_argument("--retain-rounds", type=int, default=50, help="[storage] retain_rounds")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--max-pending", type=int, default=50_000)
    p.add_argument("--sample-interval", type=float, default=1.0)
    p.add_argument(
        "--steady-fraction",
        type=float,
        default=0.5,
        help="the last this fraction of the load window is the steady state",
    )
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--keep-dirs", action="store_true", help="keep the cluster directories")
    a = p.parse_args()
    keep = a.keep_log_entries
    if keep is None:
        keep = max(1, int(a.rate * a.duration / 4))
    if keep < 0:
        p.error("--keep-log-entries must be >= 0")
    runs = {"both": [0, keep], "with": [keep], "without": [0]}[a.only]
    results = [run_one(a, k) for k in dict.fromkeys(runs)]
    print(
        json.dumps(
            {
                "bench": "storage",
                "command": shlex.join([sys.executable, *sys.argv]),
                "machine": machine_info(),
                "params": {
                    "rate": a.rate,
                    "duration_s": a.duration,
                    "tx_size": a.tx_size,
                    "nodes": a.nodes,
                    "retain_rounds": a.retain_rounds,
                    "steady_fraction": a.steady_fraction,
                },
                "note": (
                    "growth per hour is extrapolated from the steady-state slope of a "
                    f"{a.duration:g} s run, not measured by a soak"
                ),
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
