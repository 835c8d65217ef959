"""Content layer and DHT on loopback: blob transfer between real daemons, lookup latency.

Two parts, each skippable; one JSON document on stdout (progress on stderr).

**Transfer** (``--skip-transfer`` to leave out). A mesh of real ``dagrider node --role
peer`` daemons (``LocalCluster`` with no committee) in a fresh temporary directory with
free ports. Every measurement moves a blob of ``--size-mb`` MB (10**6 bytes) of random
bytes; each measurement uses *its own* blob (the same random file with a fresh 32-byte
prefix) and *a fresh receiver*, because a receiver becomes a provider once it holds a
blob and would change the next measurement's provider count.

- ``plain_aiohttp``: the baseline. A separate process serves the file with aiohttp's
  ``web.FileResponse`` (sendfile); this process downloads it with an aiohttp client that
  writes every piece to a file. Timed from the request to the file being closed.
- ``mesh_1_provider``: the blob is put (``PUT /v1/content``) on peer 0 and fetched by a
  fresh receiver: ``POST /v1/content/{cid}/fetch`` -> ``/v1/content/{cid}/status`` says
  ``held`` (polled every ``--poll-ms`` 10 ms over one keep-alive connection). That is the whole mesh
  transfer: DHT provider lookup, manifest, chunk RPCs over TLS 1.3, per-chunk SHA-256
  verification, writes into the receiver's data dir, and the final move into the store.
- ``mesh_3_providers``: the blob is put on peer 0, fetched by peers 1 and 2 (which then
  announce themselves as providers), then the timed fetch runs on a fresh receiver.
- ``node_api_download``: the fetched blob downloaded from the receiver's API
  (``GET /v1/content/{cid}?local=1``) by the same aiohttp client as the baseline.

Each run also reports who served how many bytes (the providers' ``bytes_served`` in
``/v1/status``, before and after), the CPU seconds of the receiver and of the providers
(``/proc/<pid>/stat``), the time to the first verified byte, and the cores that other
processes and our uninvolved daemons used meanwhile. The daemons run on
uvloop (their default); so do the baseline's server and client when uvloop is installed.
``ratio_to_plain`` is median/median and best/best; the issue's target is >= 0.5.

**DHT** (``--skip-dht`` to leave out). ``--dht-nodes`` (100) ``DhtService`` instances,
each on its own ``PeerTransport`` (TLS 1.3, open mode), in this process on one event
loop (uvloop when installed), default ``DhtConfig`` (k 20, alpha 3, 3 disjoint paths,
record quorum 3). They join in batches, each new node bootstrapping from 3 random nodes
already up; the heap is then ``gc.freeze()``d (100 nodes' state in one heap makes a full
collection take ~1 s, which one daemon never sees). Then, one operation at a time, from
random nodes: ``find_peer`` of a node that is *not* in the asker's routing table (a real
lookup), ``find_peer`` of an absent key (a lookup that runs to convergence),
``get_record`` of records put by random nodes, and ``find_providers`` of keys announced
by 1-3 random nodes. Reports p50/p95/max latency (ms), process CPU per operation (all
nodes share one core, so latency is mostly CPU), success rate, hops (deepest answered
query; seeds are hop 1) and queries per lookup. ``--daemons`` runs the lookups against
real daemons instead (only ``find_providers`` is reachable over their HTTP API: ``GET
/v1/content/{cid}/providers``).

Run from the repository root::

    python bench/content.py                       # 200 MB x 3 repeats + 100-node DHT
    python bench/content.py --size-mb 50 --repeat 1 --dht-nodes 30   # quick look
    python bench/content.py --skip-dht --repeat 1 --profile /tmp/prof   # py-spy a fetch

Figures and the profile's findings: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import http.client
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import random
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dagrider.node.client import content_put
from dagrider.node.cluster import ClusterSpec, LocalCluster, free_port_block
from p2p.dht.config import DhtConfig
from p2p.dht.peer import PeerInfo
from p2p.identity import Identity
from p2p.testing import DhtNode, start_dht_node, stop_dht_node

MB = 1_000_000
MiB = 1024 * 1024
PREFIX_BYTES = 32
DAEMON_RSS_ESTIMATE = 80 * MB
"""Resident memory of one idle peer daemon, rounded up (measured: ~62 MB)."""
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def log(*parts: object) -> None:
    print("[content]", *parts, file=sys.stderr, flush=True)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop.new_event_loop`` for "uvloop" (if installed), else the default loop."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            return None
        return uvloop.new_event_loop
    return None


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_on(loop_name: str, coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        return runner.run(coro)


def summary(values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    """Median, best (max), worst (min) and the runs, rounded."""
    if not values:
        return {"median": None, "best": None, "worst": None, "runs": []}
    return {
        "median": round(statistics.median(values), digits),
        "best": round(max(values), digits),
        "worst": round(min(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def percentiles_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p95/p99/max/mean in ms (nearest rank)."""
    if not seconds:
        return {"count": 0}
    s = sorted(seconds)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, round(p * len(s) + 0.5) - 1))]

    return {
        "count": len(s),
        "p50": round(rank(0.50) * 1000, 2),
        "p95": round(rank(0.95) * 1000, 2),
        "p99": round(rank(0.99) * 1000, 2),
        "max": round(s[-1] * 1000, 2),
        "mean": round(statistics.fmean(s) * 1000, 2),
    }


def proc_cpu(pid: int | None) -> float:
    """utime + stime of a process in seconds (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``, idle and iowait out)."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(v) - v[3] - v[4]) / CLK_TCK


OUR_PIDS: set[int] = set()
"""Daemons and servers this benchmark started (for the "other processes" CPU figure)."""


class CpuWindow:
    """CPU used over a window, in cores: by other processes on the machine, and by our
    daemons that take no part in the measurement (``involved`` lists those that do)."""

    def __init__(self, involved: Collection[int | None] = ()) -> None:
        self.bystanders = [p for p in OUR_PIDS if p not in set(involved)]
        self.t0 = time.perf_counter()
        self.m0 = machine_busy_s()
        self.o0 = self._ours()
        self.b0 = sum(proc_cpu(p) for p in self.bystanders)

    @staticmethod
    def _ours() -> float:
        return sum(proc_cpu(p) for p in [*OUR_PIDS, os.getpid()])

    def other_cores(self) -> float:
        dt = time.perf_counter() - self.t0
        others = (machine_busy_s() - self.m0) - (self._ours() - self.o0)
        return round(max(0.0, others) / dt, 2) if dt > 0 else 0.0

    def bystander_cores(self) -> float:
        dt = time.perf_counter() - self.t0
        used = sum(proc_cpu(p) for p in self.bystanders) - self.b0
        return round(max(0.0, used) / dt, 2) if dt > 0 else 0.0


def settle(pids: Sequence[int | None], timeout: float = 60.0, threshold: float = 0.1) -> float:
    """Wait (up to ``timeout``) until these processes together use < ``threshold`` core
    over a second (the daemons' DHT bootstrap is over); the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        c0, w0 = sum(proc_cpu(p) for p in pids), time.perf_counter()
        time.sleep(1.0)
        if (sum(proc_cpu(p) for p in pids) - c0) / (time.perf_counter() - w0) < threshold:
            break
    return round(time.perf_counter() - t0, 1)


def wait_quiet(limit_s: float, threshold: float = 0.2) -> float | None:
    """Wait up to ``limit_s`` until other processes use < ``threshold`` core over 1 s;
    the last reading (None when not asked to wait)."""
    if limit_s <= 0:
        return None
    deadline = time.monotonic() + limit_s
    while True:
        window = CpuWindow()
        time.sleep(1.0)
        other = window.other_cores()
        if other < threshold or time.monotonic() > deadline:
            return other
        log(f"waiting for a quiet machine: other processes use {other} cores")


# -- a keep-alive JSON client for the node API --------------------------------------------


class Api:
    """One keep-alive HTTP connection to a node's API (polling every 10 ms over fresh
    connections would cost the receiver more than the polls themselves)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body)
                r = self.conn.getresponse()
                data = r.read()
                return r.status, json.loads(data) if data else None
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, path: str) -> Any:
        status, doc = self.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {doc}")
        return doc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- blobs --------------------------------------------------------------------------------


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(MiB, left)
            f.write(os.urandom(n))
            left -= n


def retag(path: Path) -> str:
    """Give the file a fresh random prefix (a new blob of the same size); its SHA-256."""
    with path.open("r+b") as f:
        f.write(os.urandom(PREFIX_BYTES))
    return sha256_file(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


# -- the plain aiohttp baseline -----------------------------------------------------------


def serve_file_main(conn: Connection, path: str, loop_name: str) -> None:
    """Child process: serve ``path`` at ``/blob`` with ``web.FileResponse`` until told."""

    async def main() -> None:
        from aiohttp import web

        async def blob(_request: web.Request) -> web.FileResponse:
            return web.FileResponse(path)

        app = web.Application()
        app.router.add_get("/blob", blob)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        conn.send(int(runner.addresses[0][1]))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    run_on(loop_name, main())


async def http_download(url: str, out: Path) -> tuple[float, int]:
    """GET ``url`` with aiohttp, writing each piece to ``out``; (seconds, bytes)."""
    import aiohttp

    written = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.perf_counter()
        async with session.get(url) as r:
            r.raise_for_status()
            with out.open("wb") as f:
                async for piece in r.content.iter_chunked(MiB):
                    f.write(piece)
                    written += len(piece)
        seconds = time.perf_counter() - t0
    return seconds, written


class PlainServer:
    """The baseline's file server in a spawned process; a context manager."""

    def __init__(self, path: Path, loop_name: str) -> None:
        ctx = mp.get_context("spawn")
        self.parent, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=serve_file_main, args=(child, str(path), loop_name), daemon=True
        )
        self.proc.start()
        if not self.parent.poll(30):
            self.close()
            raise RuntimeError("the plain file server did not start")
        self.url = f"http://127.0.0.1:{self.parent.recv()}/blob"
        if self.proc.pid is not None:
            OUR_PIDS.add(self.proc.pid)

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.parent.send("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)

    def __enter__(self) -> PlainServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def timed_download(
    url: str, out: Path, loop_name: str, pids: Sequence[int | None]
) -> dict[str, Any]:
    cpu0 = [proc_cpu(p) for p in pids]
    me0 = time.process_time()
    window = CpuWindow(pids)
    seconds, n = run_on(loop_name, http_download(url, out))
    client_cpu = time.process_time() - me0
    cpu = [proc_cpu(p) - c for p, c in zip(pids, cpu0, strict=True)]
    return {
        "seconds": round(seconds, 3),
        "bytes": n,
        "MB_per_s": n / seconds / MB,
        "server_cpu_s": round(sum(cpu), 2),
        "client_cpu_s": round(client_cpu, 2),
        "other_processes_cores": window.other_cores(),
        "idle_daemons_cores": window.bystander_cores(),
    }


# -- the mesh -----------------------------------------------------------------------------


@dataclass
class Mesh:
    """Roles in the transfer cluster: providers 0..2, then one fresh receiver per run."""

    cluster: LocalCluster
    apis: list[Api]
    next_receiver: int = 3

    def take_receiver(self) -> int:
        i = self.next_receiver
        if i >= self.cluster.n:
            raise RuntimeError("no fresh receiver left")
        self.next_receiver += 1
        return i

    def status(self, i: int) -> dict[str, Any]:
        doc: dict[str, Any] = self.apis[i].json("/v1/status")
        return doc

    def served(self, i: int) -> int:
        return int(self.status(i).get("content", {}).get("bytes_served", 0))

    def close(self) -> None:
        for api in self.apis:
            api.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def start_mesh(directory: Path, peers: int, chunk_kib: int, log_level: str) -> Mesh:
    spec = ClusterSpec(
        directory=directory,
        nodes=0,
        peers=peers,
        base_port=(base := free_port_block(2 * peers)),
        api_base_port=base + peers,
        content_chunk_kib=chunk_kib,
        log_level=log_level,
    )
    cluster = LocalCluster(spec)
    mesh = Mesh(cluster, [Api(cluster.api_url(i)) for i in range(cluster.n)])
    timeout = max(120.0, 3.0 * peers)  # 100 daemons start in ~1 min on 2 cores
    try:
        cluster.start_all()
        OUR_PIDS.update(p for i in range(cluster.n) if (p := cluster.pid(i)) is not None)
        cluster.wait_ready(timeout)
        need = min(3, peers - 1)
        wait_for(
            lambda: all(
                int(mesh.status(i)["dht"]["routing_table"]) >= need for i in range(cluster.n)
            ),
            timeout,
            f"every peer to know {need} others",
        )
    except BaseException:
        for i in range(cluster.n):
            if i in cluster.procs and not cluster.alive(i):
                with contextlib.suppress(OSError):
                    tail = cluster.log_path(i).read_text(errors="replace").splitlines()[-5:]
                    log("\n  ".join([f"peer{i} exited; the end of its log:", *tail]))
        mesh.close()
        cluster.stop_all()
        raise
    return mesh


def fetch_and_wait(
    mesh: Mesh, i: int, cid: str, poll_s: float, timeout: float = 600.0
) -> dict[str, Any]:
    """POST fetch on node ``i`` and poll its status until held; timings and last progress."""
    api = mesh.apis[i]
    t0 = time.perf_counter()
    code, state = api.call("POST", f"/v1/content/{cid}/fetch", b"")
    if code not in (200, 202):
        raise RuntimeError(f"node {i}: POST fetch: HTTP {code}: {state}")
    first_byte: float | None = None
    last_progress: dict[str, Any] = {}
    polls = 0
    while state.get("state") != "held":
        if state.get("state") in ("failed", "absent"):
            raise RuntimeError(f"node {i}: fetch of {cid} {state.get('state')}: {state}")
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"node {i}: fetch of {cid} not done after {timeout} s")
        if first_byte is None and int(state.get("have_bytes", 0) or 0) > 0:
            first_byte = time.perf_counter() - t0
        if state.get("state") == "fetching":
            last_progress = state
        time.sleep(poll_s)
        state = api.json(f"/v1/content/{cid}/status")
        polls += 1
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "first_byte_s": None if first_byte is None else round(first_byte, 3),
        "polls": polls,
        "last_progress": last_progress,
    }


def put_blob(mesh: Mesh, i: int, path: Path) -> tuple[str, float]:
    t0 = time.perf_counter()
    doc = content_put(mesh.cluster.api_url(i), path)
    return str(doc["cid"]), time.perf_counter() - t0


def mesh_run(
    mesh: Mesh,
    source: Path,
    providers: int,
    workdir: Path,
    loop_name: str,
    profile: Path | None,
    poll_s: float,
) -> dict[str, Any]:
    """One measurement with ``providers`` providers (1 or 3) on a fresh blob and receiver."""
    digest = retag(source)
    size = source.stat().st_size
    cid, put_s = put_blob(mesh, 0, source)
    holders = [0]
    if providers > 1:
        for i in range(1, providers):
            code, doc = mesh.apis[i].call("POST", f"/v1/content/{cid}/fetch", b"")
            if code not in (200, 202):
                raise RuntimeError(f"node {i}: POST fetch: HTTP {code}: {doc}")

        def held(i: int) -> bool:
            state = mesh.apis[i].json(f"/v1/content/{cid}/status")
            if state.get("state") in ("failed", "absent"):
                raise RuntimeError(f"peer{i}: fetch of {cid}: {state}")
            return bool(state.get("state") == "held")

        for i in range(1, providers):
            wait_for(partial(held, i), 600, f"peer{i} to hold the blob", poll=0.05)
        holders = list(range(providers))
        # Every holder announced itself: the receiver's lookup must find them all.
        wait_for(
            lambda: (
                len(mesh.apis[0].json(f"/v1/content/{cid}/providers")["providers"]) >= providers
            ),
            60,
            f"{providers} providers in the DHT",
        )
    receiver = mesh.take_receiver()
    pids = {i: mesh.cluster.pid(i) for i in [*holders, receiver]}
    served0 = {i: mesh.served(i) for i in holders}
    fetched0 = int(mesh.status(receiver)["content"].get("bytes_fetched", 0))
    cpu0 = {i: proc_cpu(p) for i, p in pids.items()}
    spies = start_profilers(profile, {"receiver": pids[receiver], "provider0": pids[0]})
    window = CpuWindow(list(pids.values()))
    try:
        timing = fetch_and_wait(mesh, receiver, cid, poll_s)
    finally:
        other = window.other_cores()
        bystanders = window.bystander_cores()
        stop_profilers(spies)
    cpu = {i: round(proc_cpu(p) - cpu0[i], 2) for i, p in pids.items()}
    status_after = mesh.status(receiver)["content"]
    served = {f"peer{i}": mesh.served(i) - served0[i] for i in holders}
    seconds = timing["seconds"]
    run: dict[str, Any] = {
        "cid": cid,
        "receiver": f"peer{receiver}",
        "seconds": round(seconds, 3),
        "MB_per_s": size / seconds / MB,
        "first_verified_byte_s": timing["first_byte_s"],
        "put_s": round(put_s, 3),
        "put_MB_per_s": round(size / put_s / MB, 1),
        "bytes_served_by": served,
        "duplicate_bytes": sum(served.values()) - size,
        "receiver_bytes_fetched": int(status_after.get("bytes_fetched", 0)) - fetched0,
        "receiver_bad_chunks": status_after.get("bad_chunks"),
        "other_processes_cores": other,
        "idle_daemons_cores": bystanders,
        "cpu_s": {
            "receiver": cpu[receiver],
            **{f"provider_peer{i}": cpu[i] for i in holders},
        },
        "scheduler_near_end": {
            k: timing["last_progress"].get(k)
            for k in ("have", "chunks", "inflight", "inflight_bytes", "providers")
            if k in timing["last_progress"]
        },
    }
    # the node API download of the fetched blob, checked against the source's digest
    out = workdir / "api-download.bin"
    dl = timed_download(
        f"{mesh.cluster.api_url(receiver)}/v1/content/{cid}?local=1",
        out,
        loop_name,
        [pids[receiver]],
    )
    run["api_download"] = {**dl, "bytes_verified": sha256_file(out) == digest}
    out.unlink(missing_ok=True)
    if dl["bytes"] != size or not run["api_download"]["bytes_verified"]:
        raise RuntimeError(f"peer{receiver} returned other bytes than were put ({dl['bytes']})")
    return run


# -- py-spy ---------------------------------------------------------------------------------


def start_profilers(
    directory: Path | None, pids: dict[str, int | None]
) -> list[subprocess.Popen[bytes]]:
    """``py-spy record`` per pid: collapsed stacks, on-CPU samples only, every thread,
    native frames (OpenSSL, hashlib, uvloop) included."""
    if directory is None:
        return []
    spy = shutil.which("py-spy")
    if spy is None:
        log("py-spy not found; no profile")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in pids.items():
        if pid is None:
            continue
        out = directory / f"{name}.txt"
        cmd = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
        cmd += ["--threads", "--native", "-o", str(out)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy attaches
    return procs


def stop_profilers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- transfer: orchestration --------------------------------------------------------------


def bench_transfer(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    size = int(args.size_mb * MB)
    poll_s = args.poll_ms / 1000
    loop_name = "uvloop" if have_uvloop() else "asyncio"
    source = workdir / "blob.bin"
    log(f"writing {size / MB:.0f} MB of random bytes to {source}")
    write_random(source, size)
    peers = 3 + 2 * args.repeat
    log(f"starting {peers} peer daemons")
    t0 = time.perf_counter()
    mesh = start_mesh(workdir / "mesh", peers, args.chunk_kib, args.log_level)
    startup = time.perf_counter() - t0
    settled = settle([mesh.cluster.pid(i) for i in range(mesh.cluster.n)])
    plain: list[dict[str, Any]] = []
    one: list[dict[str, Any]] = []
    three: list[dict[str, Any]] = []
    try:
        with PlainServer(source, loop_name) as server:
            warm = workdir / "warm-up.bin"  # imports, first connection, page cache
            timed_download(server.url, warm, loop_name, [server.pid])
            warm.unlink(missing_ok=True)
            for r in range(args.repeat):
                wait_quiet(args.wait_quiet)
                out = workdir / "plain-download.bin"
                run = timed_download(server.url, out, loop_name, [server.pid])
                out.unlink(missing_ok=True)
                if run["bytes"] != size:
                    raise RuntimeError(f"plain download got {run['bytes']} of {size} bytes")
                plain.append(run)
                log(f"[{r + 1}/{args.repeat}] plain aiohttp: {run['MB_per_s']:.1f} MB/s")
                prof = Path(args.profile) if args.profile and r == 0 else None
                wait_quiet(args.wait_quiet)
                run = mesh_run(mesh, source, 1, workdir, loop_name, prof, poll_s)
                one.append(run)
                log(f"[{r + 1}/{args.repeat}] mesh, 1 provider: {run['MB_per_s']:.1f} MB/s")
                wait_quiet(args.wait_quiet)
                run = mesh_run(mesh, source, 3, workdir, loop_name, None, poll_s)
                three.append(run)
                log(f"[{r + 1}/{args.repeat}] mesh, 3 providers: {run['MB_per_s']:.1f} MB/s")
    finally:
        mesh.close()
        mesh.cluster.stop_all()

    def ratio(rows: list[dict[str, Any]]) -> dict[str, float | None]:
        p = [x["MB_per_s"] for x in plain]
        m = [x["MB_per_s"] for x in rows]
        return {
            "median": round(statistics.median(m) / statistics.median(p), 3),
            "best": round(max(m) / max(p), 3),
        }

    def finish(rows: list[dict[str, Any]]) -> dict[str, Any]:
        for x in rows:
            x["MB_per_s"] = round(x["MB_per_s"], 1)
        return {
            "MB_per_s": summary([x["MB_per_s"] for x in rows]),
            "ratio_to_plain": ratio(rows),
            "seconds": summary([x["seconds"] for x in rows], 3),
            "runs": rows,
        }

    api_rows = [x["api_download"] for x in one + three]
    api_mb = [x["MB_per_s"] for x in api_rows]
    for x in api_rows:
        x["MB_per_s"] = round(x["MB_per_s"], 1)
    doc = {
        "blob_bytes": size,
        "chunk_bytes": args.chunk_kib * 1024,
        "repeat": args.repeat,
        "daemons": peers,
        "daemon_loop": "uvloop (daemon default)",
        "bench_loop": loop_name,
        "cluster_startup_s": round(startup, 2),
        "waited_for_idle_daemons_s": settled,
        "status_poll_ms": args.poll_ms,
        "data_dir": str(workdir),
        "plain_aiohttp": {
            "MB_per_s": summary([x["MB_per_s"] for x in plain]),
            "runs": [{**x, "MB_per_s": round(x["MB_per_s"], 1)} for x in plain],
        },
        "mesh_1_provider": finish(one),
        "mesh_3_providers": finish(three),
        "node_api_download": {
            "MB_per_s": summary(api_mb),
            "ratio_to_plain": {
                "median": round(
                    statistics.median(api_mb) / statistics.median([x["MB_per_s"] for x in plain]),
                    3,
                ),
            },
        },
        "target": "mesh MB/s >= 0.5 x plain aiohttp MB/s",
    }
    doc["meets_target"] = {
        name: doc[name]["ratio_to_plain"]["median"] >= 0.5
        for name in ("mesh_1_provider", "mesh_3_providers")
    }
    return doc


class LogCounter(logging.Handler):
    """Counts warnings by logger, event and reason instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None) or record.getMessage()[:60]
        reason = str(getattr(record, "reason", "") or "")[:60]
        self.counts[f"{record.name}: {event}" + (f" ({reason})" if reason else "")] += 1


@contextlib.contextmanager
def counted_warnings() -> Iterator[LogCounter]:
    root = logging.getLogger()
    counter = LogCounter()
    level = root.level
    root.addHandler(counter)
    root.setLevel(logging.WARNING)
    try:
        yield counter
    finally:
        root.removeHandler(counter)
        root.setLevel(level)


# -- DHT: in-process ------------------------------------------------------------------------


def _stats(node: DhtNode) -> dict[str, int]:
    raw = node.dht.status()["stats"]
    assert isinstance(raw, dict)
    return {str(k): int(v) for k, v in raw.items()}


async def _start_dht_node(i: int, bootstrap: list[PeerInfo], config: DhtConfig) -> DhtNode:
    return await start_dht_node(b"bench-dht" + i.to_bytes(4, "big"), bootstrap, config)


_stop_dht_node = stop_dht_node


class OpStats:
    """Latency, outcome, hops and queries of one kind of operation."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self.ok = 0
        self.partial = 0
        self.errors: dict[str, int] = {}
        self.hops: list[int] = []
        self.queries: list[int] = []
        self.from_table = 0

    def report(self, partial_name: str | None = None) -> dict[str, Any]:
        n = len(self.seconds)
        doc: dict[str, Any] = {
            "latency_ms": percentiles_ms(self.seconds),
            "process_cpu_ms": percentiles_ms(self.cpu) if self.cpu else None,
            "success_rate": round(self.ok / n, 4) if n else None,
        }
        if partial_name is not None:
            doc[partial_name] = round(self.partial / n, 4) if n else None
        if self.hops:
            doc["hops"] = {
                "mean": round(statistics.fmean(self.hops), 2),
                "max": max(self.hops),
                "histogram": {str(h): self.hops.count(h) for h in sorted(set(self.hops))},
            }
            doc["queries_per_lookup"] = {
                "mean": round(statistics.fmean(self.queries), 1),
                "max": max(self.queries),
            }
        if self.from_table:
            doc["answered_from_routing_table"] = self.from_table
        if self.errors:
            doc["errors"] = self.errors
        return doc


async def _timed(node: DhtNode, op: Coroutine[Any, Any, Any], stats: OpStats) -> tuple[Any, bool]:
    """Run ``op`` on ``node``; record its time and, if it was exactly one lookup, its hops."""
    before = _stats(node)
    c0 = time.process_time()
    t0 = time.perf_counter()
    try:
        result = await op
    except Exception as exc:
        stats.seconds.append(time.perf_counter() - t0)
        name = type(exc).__name__
        stats.errors[name] = stats.errors.get(name, 0) + 1
        return None, False
    stats.seconds.append(time.perf_counter() - t0)
    stats.cpu.append(time.process_time() - c0)
    after = _stats(node)
    lookups = after.get("lookups", 0) - before.get("lookups", 0)
    if lookups == 1:
        stats.hops.append(after.get("lookup_hops", 0) - before.get("lookup_hops", 0))
        stats.queries.append(after.get("lookup_queries", 0) - before.get("lookup_queries", 0))
    elif lookups == 0:
        stats.from_table += 1
    return result, True


class GcPauses:
    """Collections and their pause times while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._start)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)

    def report(self) -> dict[str, Any]:
        return {
            f"gen{g}": {
                "count": len(p),
                "total_ms": round(sum(p) * 1000, 1),
                "max_ms": round(max(p, default=0.0) * 1000, 1),
            }
            for g, p in self.pauses.items()
        }


async def _measure_ops(nodes: list[DhtNode], rng: random.Random, lookups: int) -> dict[str, Any]:
    """The timed operations, one at a time, from random nodes."""

    def other(than: DhtNode) -> DhtNode:
        while (x := rng.choice(nodes)) is than:
            pass
        return x

    # find_peer of a node the asker does not have in its table
    find_peer = OpStats()
    unknown_targets = 0
    for _ in range(lookups):
        asker = rng.choice(nodes)
        unknown = [x for x in nodes if x is not asker and asker.dht.core.routing.get(x.key) is None]
        unknown_targets += bool(unknown)
        target = rng.choice(unknown) if unknown else other(asker)
        found, ok = await _timed(asker, asker.dht.find_peer(target.key), find_peer)
        if ok and found is not None and found.key == target.key:
            find_peer.ok += 1
    log("dht: find_peer done")

    absent = OpStats()
    for _ in range(max(1, lookups // 4)):
        asker = rng.choice(nodes)
        key = Identity.from_seed(rng.randbytes(32)).public_key
        found, ok = await _timed(asker, asker.dht.find_peer(key), absent)
        if ok and found is None:
            absent.ok += 1

    # records: put by random authors, read from random other nodes
    records: list[tuple[DhtNode, bytes, bytes]] = []
    put = OpStats()
    for j in range(max(1, min(50, lookups // 4))):
        author = rng.choice(nodes)
        name, value = f"bench-{j}".encode(), rng.randbytes(64)
        stored, ok = await _timed(author, author.dht.put_record(name, value, ttl=3600), put)
        if ok and stored >= 1:
            put.ok += 1
            records.append((author, name, value))
    get = OpStats()
    for _ in range(lookups):
        author, name, value = rng.choice(records)
        asker = other(author)
        rec, ok = await _timed(asker, asker.dht.get_record(author.key, name), get)
        if ok and rec is not None and rec.value == value:
            get.ok += 1
    log("dht: records done")

    # providers: keys announced by 1-3 random nodes, found from random others
    provided: list[tuple[bytes, set[bytes]]] = []
    provide = OpStats()
    for j in range(max(1, min(50, lookups // 4))):
        key = hashlib.sha256(b"bench-content-%d" % j).digest()
        chosen = rng.sample(nodes, rng.randint(1, 3))
        for h in chosen:
            stored, ok = await _timed(h, h.dht.provide(key), provide)
            if ok and stored >= 1:
                provide.ok += 1
        provided.append((key, {h.key for h in chosen}))
    finder = OpStats()
    for _ in range(lookups):
        key, announcers = rng.choice(provided)
        asker = rng.choice([x for x in nodes if x.key not in announcers])
        found, ok = await _timed(asker, asker.dht.find_providers(key), finder)
        keys = {p.key for p in found or []}
        if ok and keys & announcers:
            finder.ok += 1
        if ok and announcers <= keys:
            finder.partial += 1
    log("dht: providers done")
    return {
        "find_peer": {**find_peer.report(), "targets_not_in_askers_table": unknown_targets},
        "find_peer_absent_key": absent.report(),
        "put_record": put.report(),
        "get_record": get.report(),
        "provide": provide.report(),
        "find_providers": finder.report("all_providers_found_rate"),
    }


async def bench_dht_inprocess(
    n: int, lookups: int, batch: int, seed: int, loop_name: str, freeze: bool
) -> dict[str, Any]:
    rng = random.Random(seed)
    config = DhtConfig()
    nodes: list[DhtNode] = []
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    try:
        nodes.append(await _start_dht_node(0, [], config))
        await asyncio.wait_for(nodes[0].dht.ready.wait(), 30)
        while len(nodes) < n:
            up = [x.dht.self_info for x in nodes]
            fresh = await asyncio.gather(
                *(
                    _start_dht_node(i, rng.sample(up, min(3, len(up))), config)
                    for i in range(len(nodes), min(n, len(nodes) + batch))
                )
            )
            nodes += fresh
            await asyncio.wait_for(asyncio.gather(*(x.dht.ready.wait() for x in fresh)), 120)
            log(f"dht: {len(nodes)}/{n} nodes bootstrapped")
        bootstrap_s = time.perf_counter() - t0
        bootstrap_cpu = time.process_time() - cpu0
        tables = sorted(len(x.dht.core.routing) for x in nodes)
        if freeze:
            # 100 nodes' links, tables and TLS state in one heap make every full
            # collection take ~1 s (measured), which a daemon holding one node's share
            # never sees; freezing keeps them out of the collector's scans.
            gc.collect()
            gc.freeze()

        with GcPauses() as gc_pauses:
            ops = await _measure_ops(nodes, rng, lookups)
        rpc_answers = 0
        for x in nodes:
            rpc = x.dht.status()["rpc"]
            if isinstance(rpc, dict):
                rpc_answers += int(rpc.get("answers", 0))
        return {
            "mode": "in-process",
            "note": (
                "every node shares one event loop and one core: a latency is mostly the CPU "
                "that the asker and the peers it queries spend (process_cpu_ms), not network"
            ),
            "nodes": n,
            "loop": loop_name,
            "config": {
                "k": config.k,
                "alpha": config.alpha,
                "disjoint_paths": config.disjoint_paths,
                "quorum": config.quorum,
                "request_timeout_s": config.request_timeout,
            },
            "bootstrap": {
                "batch": batch,
                "seconds": round(bootstrap_s, 2),
                "cpu_s": round(bootstrap_cpu, 2),
                "routing_table": {
                    "min": tables[0],
                    "median": tables[len(tables) // 2],
                    "max": tables[-1],
                },
            },
            "links_open": sum(len(x.transport.connected()) for x in nodes) // 2,
            "gc_frozen_after_bootstrap": freeze,
            "gc_pauses_during_lookups": gc_pauses.report(),
            **ops,
            "rpc_answers_total": rpc_answers,
            "log2_n": round(math.log2(n), 2),
        }
    finally:
        gc.unfreeze()
        await asyncio.gather(*(_stop_dht_node(x) for x in nodes), return_exceptions=True)


# -- DHT: real daemons ----------------------------------------------------------------------


def bench_dht_daemons(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n, lookups = args.dht_nodes, args.dht_lookups
    rng = random.Random(args.seed)
    available = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available and n * DAEMON_RSS_ESTIMATE > 0.8 * available:
        raise SystemExit(
            f"--daemons: {n} daemons need about {n * DAEMON_RSS_ESTIMATE / MB:.0f} MB; "
            f"only {available / MB:.0f} MB available"
        )
    log(f"dht: starting {n} peer daemons")
    t0 = time.perf_counter()
    mesh = start_mesh(workdir / "dht-mesh", n, args.chunk_kib, args.log_level)
    startup = time.perf_counter() - t0
    try:
        rss = 0
        for i in range(n):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{mesh.cluster.pid(i)}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
        blob = workdir / "small.bin"
        provided: list[tuple[str, int]] = []
        for _ in range(max(1, min(50, lookups // 4))):
            write_random(blob, 4096)
            holder = rng.randrange(n)
            cid, _ = put_blob(mesh, holder, blob)
            provided.append((cid, holder))
        stats = OpStats()
        pids = [mesh.cluster.pid(i) for i in range(n)]
        cpu0, t0 = sum(proc_cpu(p) for p in pids), time.perf_counter()
        window = CpuWindow()
        for _ in range(lookups):
            cid, holder = rng.choice(provided)
            asker = rng.choice([i for i in range(n) if i != holder])
            before = mesh.status(asker)["dht"]["stats"]
            t = time.perf_counter()
            try:
                code, doc = mesh.apis[asker].call("GET", f"/v1/content/{cid}/providers")
            except OSError as exc:
                stats.seconds.append(time.perf_counter() - t)
                stats.errors[type(exc).__name__] = stats.errors.get(type(exc).__name__, 0) + 1
                continue
            stats.seconds.append(time.perf_counter() - t)
            after = mesh.status(asker)["dht"]["stats"]
            if after.get("lookups", 0) - before.get("lookups", 0) == 1:
                stats.hops.append(after.get("lookup_hops", 0) - before.get("lookup_hops", 0))
                stats.queries.append(
                    after.get("lookup_queries", 0) - before.get("lookup_queries", 0)
                )
            keys = {p["key"] for p in doc.get("providers", [])} if code == 200 else set()
            if mesh.cluster.key_of(holder).hex() in keys:
                stats.ok += 1
        tables = sorted(int(mesh.status(i)["dht"]["routing_table"]) for i in range(n))
        return {
            "mode": "daemons",
            "nodes": n,
            "startup_s": round(startup, 1),
            "daemons_rss_MB_total": round(rss / MB),
            "routing_table": {"min": tables[0], "median": tables[n // 2], "max": tables[-1]},
            "find_providers_over_http": stats.report(),
            "daemons_cpu_cores_during_lookups": round(
                (sum(proc_cpu(p) for p in pids) - cpu0) / (time.perf_counter() - t0), 2
            ),
            "other_processes_cores": window.other_cores(),
            "note": "latency includes the HTTP request to the asking daemon's API",
        }
    finally:
        mesh.close()
        mesh.cluster.stop_all()


# -- main -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    git: dict[str, Any] | None
    try:
        root = Path(__file__).resolve().parent.parent

        def out(*cmd: str) -> str:
            return subprocess.run(
                ["git", *cmd], cwd=root, capture_output=True, text=True, check=True, timeout=10
            ).stdout.rstrip()

        git = {
            "commit": out("rev-parse", "--short", "HEAD"),
            "uncommitted_p2p_files": len(out("status", "--porcelain", "--", "p2p").splitlines()),
        }
    except (OSError, subprocess.SubprocessError):
        git = None
    import aiohttp

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": model,
        "cpus": os.cpu_count(),
        "openssl": ssl.OPENSSL_VERSION,
        "aiohttp": aiohttp.__version__,
        "uvloop": have_uvloop(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git": git,
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--size-mb", type=float, default=200.0, help="blob size, MB (10**6 B)")
    p.add_argument("--repeat", type=int, default=3, help="measurements per transfer kind")
    p.add_argument("--chunk-kib", type=int, default=1024, help="content chunk size (daemons)")
    p.add_argument("--dht-nodes", type=int, default=100)
    p.add_argument("--dht-lookups", type=int, default=200, help="operations per kind")
    p.add_argument("--dht-batch", type=int, default=10, help="nodes joining at once")
    p.add_argument("--daemons", action="store_true", help="DHT part on real daemons")
    p.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="in-process DHT: do not gc.freeze() the 100 nodes' state after bootstrap",
    )
    p.add_argument("--skip-transfer", action="store_true")
    p.add_argument("--skip-dht", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tmpdir", help="where the temporary directory goes (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--log-level", default="warning", help="daemons' log level")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy record the receiver and the provider of the first 1-provider fetch",
    )
    p.add_argument("--poll-ms", type=float, default=10.0, help="fetch status poll interval")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each transfer, wait up to S s until other processes use < 0.2 core",
    )
    p.add_argument("--out", help="also write the JSON document to this file")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.size_mb <= 0 or args.dht_nodes < 2 or args.dht_lookups < 1:
        p.error("--repeat, --size-mb, --dht-nodes (>= 2) and --dht-lookups must be positive")
    return args


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP act as Ctrl-C, and Ctrl-C works even when started in the background
    (where the shell ignores SIGINT), so every ``finally`` stops the daemons. The signal
    is turned into SIGINT rather than raised here: ``asyncio.Runner`` handles SIGINT by
    cancelling its task, which unwinds cleanly where an exception raised from a handler
    could land in a callback that swallows it."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        signal.raise_signal(signal.SIGINT)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None else ["content.py", *argv])
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "bench/content.py",
        "command": command,
        "machine": machine(),
        "MB": "10**6 bytes",
    }
    workdir = Path(tempfile.mkdtemp(prefix="dagrider-bench-content-", dir=args.tmpdir))
    try:
        with terminate_as_interrupt():
            if not args.skip_transfer:
                doc["transfer"] = bench_transfer(args, workdir)
                doc["machine"]["loadavg_after_transfer"] = [round(x, 2) for x in os.getloadavg()]
            if not args.skip_dht:
                if args.daemons:
                    doc["dht"] = bench_dht_daemons(args, workdir)
                else:
                    loop_name = "uvloop" if have_uvloop() else "asyncio"
                    with counted_warnings() as warnings:
                        doc["dht"] = run_on(
                            loop_name,
                            bench_dht_inprocess(
                                args.dht_nodes,
                                args.dht_lookups,
                                args.dht_batch,
                                args.seed,
                                loop_name,
                                not args.no_gc_freeze,
                            ),
                        )
                    doc["dht"]["log_warnings"] = dict(warnings.counts.most_common())
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    doc["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
