"""An idle committee: CPU per node, rounds per second, and how fast a lone transaction
commits, for one or more idle round intervals.

Starts a 4-node local cluster of real daemons on loopback per interval, lets it settle,
measures CPU time of every daemon over a quiet window, then submits one transaction at a
time (one per second, to member 1) and times submit -> committed on that member. Prints
one JSON document::

    python bench/idle.py --idle-ms 200,500 --quiet 20 --probes 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dagrider.node.cluster import ClusterSpec, LocalCluster, free_port_block


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _commit_latency(api: str, tag: str) -> float:
    body = f"idle-probe-{tag}-{time.time()}".encode()
    req = urllib.request.Request(
        api + "/v1/transactions",
        data=body,
        headers={"content-type": "application/octet-stream"},
    )
    start = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as r:
        tx_id = json.loads(r.read())["id"]
    deadline = start + 30
    while time.monotonic() < deadline:
        try:
            if _get(f"{api}/v1/transactions/{tx_id}").get("state") == "committed":
                return time.monotonic() - start
        except urllib.error.HTTPError:
            pass
        time.sleep(0.002)
    raise TimeoutError(f"probe {tag} not committed within 30 s")


def measure(idle_ms: int, quiet: float, probes: int, workdir: Path) -> dict[str, Any]:
    spec = ClusterSpec(
        directory=workdir / f"idle-{idle_ms}",
        base_port=free_port_block(4),
        api_base_port=free_port_block(4),
        idle_round_ms=idle_ms,
        log_level="warning",
    )
    with LocalCluster(spec) as cluster:
        cluster.start_all()
        cluster.wait_ready(60)
        cluster.wait_connected()
        time.sleep(3.0)  # settle: the first waves decided
        pids = [p.pid for p in cluster.procs.values()]
        r0 = _get(cluster.api_url(0) + "/v1/status")["round"]
        c0 = [_cpu_seconds(p) for p in pids]
        t0 = time.monotonic()
        time.sleep(quiet)
        elapsed = time.monotonic() - t0
        r1 = _get(cluster.api_url(0) + "/v1/status")["round"]
        cpu = [100 * (_cpu_seconds(p) - c) / elapsed for p, c in zip(pids, c0, strict=True)]
        latencies = []
        for k in range(probes):
            time.sleep(1.0)  # let the committee go idle again between probes
            latencies.append(_commit_latency(cluster.api_url(1), str(k)))
    latencies.sort()
    return {
        "idle_round_ms": idle_ms,
        "idle_rounds_per_s": round((r1 - r0) / elapsed, 2),
        "idle_cpu_percent_per_node": [round(c, 2) for c in cpu],
        "idle_cpu_percent_mean": round(statistics.fmean(cpu), 2),
        "submit_to_commit_s": {
            "p50": round(latencies[len(latencies) // 2], 3),
            "max": round(latencies[-1], 3),
            "all": [round(x, 3) for x in latencies],
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-ms", default="200", help="comma-separated idle_round_ms values")
    ap.add_argument("--quiet", type=float, default=20.0, help="seconds of idle CPU measured")
    ap.add_argument("--probes", type=int, default=10, help="lone transactions timed")
    args = ap.parse_args(argv)
    values = [int(x) for x in args.idle_ms.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="dagrider-idle-") as tmp:
        runs = [measure(v, args.quiet, args.probes, Path(tmp)) for v in values]
    json.dump(
        {
            "bench": "idle",
            "command": "python bench/idle.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "nodes": 4,
            "runs": runs,
        },
        sys.stdout,
        indent=1,
    )
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
