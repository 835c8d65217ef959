"""Fixtures for end-to-end tests of real daemons on loopback."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from dagrider.node.cluster import ClusterSpec, LocalCluster, free_port_block

LOG_TAIL_LINES = 60
"""Lines of each daemon's log a failed test's report shows (its own account of the
run: a failure on a loaded CI machine is often seen once, with nothing else to go on)."""


@pytest.fixture
def make_cluster(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., LocalCluster]]:
    """Build (and by default start) local clusters that are stopped after the test."""
    clusters: list[LocalCluster] = []
    request.node.dagrider_clusters = clusters  # the failure report reads their logs

    def make(nodes: int = 4, start: bool = True, peers: int = 0, **kw: object) -> LocalCluster:
        spec = ClusterSpec(
            directory=tmp_path / f"cluster-{len(clusters)}",
            nodes=nodes,
            peers=peers,
            base_port=free_port_block(nodes + peers),
            api_base_port=free_port_block(nodes + peers),
            **kw,  # type: ignore[arg-type]
        )
        cluster = LocalCluster(spec)
        clusters.append(cluster)
        if start:
            cluster.start_all()
            cluster.wait_ready(60)
        return cluster

    yield make
    for c in clusters:
        c.stop_all()


def cluster_account(cluster: LocalCluster, tail: int = LOG_TAIL_LINES) -> str:
    """Each daemon's status (if it answers) and the tail of its log."""
    parts: list[str] = []
    for i in range(cluster.n):
        parts.append(f"==== node {i} (alive: {cluster.alive(i)})")
        if cluster.alive(i):
            try:
                with urllib.request.urlopen(cluster.api_url(i) + "/v1/status", timeout=3) as r:
                    st = json.loads(r.read())
                brief = {k: st.get(k) for k in ("round", "decided_wave", "log_head", "mempool")}
                parts.append(f"status: {brief}")
                peers = {
                    k[:12]: (p.get("state"), p.get("last_error"))
                    for k, p in st.get("peers", {}).items()
                }
                parts.append(f"peers: {peers}")
            except Exception as exc:  # diagnostics must not mask the failure
                parts.append(f"status unavailable: {exc!r}")
        try:
            lines = cluster.log_path(i).read_text(errors="replace").splitlines()
        except OSError as exc:
            parts.append(f"no log: {exc!r}")
            continue
        parts += [f"  {line[:400]}" for line in lines[-tail:]]
    return "\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """A failed e2e test's report carries every daemon's status and log tail, taken
    before the fixture stops the daemons."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for k, cluster in enumerate(getattr(item, "dagrider_clusters", ())):
        report.sections.append((f"cluster-{k} daemons", cluster_account(cluster)))
