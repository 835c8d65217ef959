"""End-to-end throughput and latency of a local cluster of real daemons under fixed load.

Starts ``--nodes`` real ``dagrider node`` daemons on loopback (fresh temporary directory,
free ports) through :class:`dagrider.node.cluster.LocalCluster`, then drives a FIXED
offered load (open loop: the schedule does not wait for commits) from separate
load-generator processes (``bench/cluster_load.py``: one WebSocket ingest per node, 429s
paused for the node's ``retry_after`` and re-sent with their original send times) while
a measuring process follows one node's committed log (``bench/cluster_measure.py``:
end-to-end latency from the send time embedded in each transaction, CPU, storage and
the nodes' own per-stage latency histograms). ``bench/cluster_report.py`` builds each
load's JSON document and the summary tables.

Timeline of one load: cluster up and connected -> generators start -> ``--warmup``
seconds -> ``--duration`` seconds of measurement window -> generators stop -> drain.
With ``--rates`` each load gets a fresh cluster by default (clean state, no backlog
carried over from an overloaded run); ``--reuse-cluster`` keeps one cluster and waits
``--pause`` seconds plus until every mempool is empty between loads.

The daemons run on the plain asyncio loop (``DAGRIDER_NO_UVLOOP=1``,
``DAGRIDER_LOOP=asyncio``) unless ``--uvloop`` is given. ``--profile out.txt`` records
one node with py-spy; ``python bench/cluster_profile.py out.txt`` folds it per stage.

Run from the repository root:
    python bench/cluster.py --rate 10000 --duration 20
    python bench/cluster.py --rates 5000,10000,20000,40000,80000 --duration 12 --warmup 4 \\
        --uvloop --reuse-cluster
Progress and the summary tables go to stderr; stdout gets one JSON document (a list with
``--rates``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_load import HEADER, LoadPlan, Schedule, generator_main
from cluster_measure import (
    MeasurePlan,
    all_process_cpu,
    consensus_stats,
    cpu_seconds,
    foreign_cpu,
    io_bytes,
    machine_cpu,
    measurer_main,
    schedstat,
    scrape_histograms,
    scrape_metrics,
    stage_latencies,
)
from cluster_report import build_result, print_tables

from dagrider.node.cluster import ClusterSpec, LocalCluster


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (a node's data directory: database, WAL...)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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
            hist0 = scrape_histograms(urls[a.measure_node])
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
            # The measuring node's stage histograms over the window, once the drain is over
            # (commit-to-client needs the measurer's reads of the window's entries).
            stages = stage_latencies(hist0, scrape_histograms(urls[a.measure_node]))
            written = io1[a.measure_node][0] - io0[a.measure_node][0]
            committed = max(1.0, float(meas["committed_in_window"]))
            head = statuses.get(a.measure_node, {}).get("log_head")
            disk = {
                "written": round(written / committed),
                "database": round(dir_bytes(cluster.data_dir(a.measure_node)) / (head + 1))
                if isinstance(head, int) and head >= 0
                else float("nan"),
            }
            return build_result(
                a,
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
                stages,
                disk,
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
    print_tables(results)
    doc: Any = results if args.rates else results[0]
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
