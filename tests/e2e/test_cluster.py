"""End-to-end: real `dagrider node` processes on loopback, TLS links, SQLite stores."""

from __future__ import annotations

import base64
import os
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest
from e2e.helpers import assert_same_log, wait_for_logs

from dagrider.node.client import ApiError, full_log, submit_batch
from dagrider.node.cluster import LocalCluster

pytestmark = pytest.mark.e2e


def _txs(tag: str, count: int, size: int = 64) -> list[bytes]:
    return [f"{tag}-{k}-".encode().ljust(size, b".") for k in range(count)]


def test_four_daemons_order_transactions_identically(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    sent: set[bytes] = set()
    for i in range(cluster.n):
        batch = _txs(f"node{i}", 250)
        reply = submit_batch(cluster.api_url(i), batch)
        assert reply["accepted"] == len(batch)
        sent |= set(batch)
    logs = wait_for_logs(cluster, list(range(cluster.n)), sent)
    assert_same_log(logs)
    # Each transaction exactly once, at the same index everywhere.
    for log in logs.values():
        assert set(log) >= sent
    status = cluster.get_json(0, "/v1/status")
    assert status["decided_wave"] >= 1
    # Every stage of a transaction's way shows in the histograms of the node it came to
    # (wait_for_logs read the log, so commit-to-client has entries too).
    with urllib.request.urlopen(cluster.api_url(0) + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    for stage in (
        "submit_to_proposal",
        "proposal_to_delivery",
        "delivery_to_commit",
        "commit_to_client",
        "commit_latency",
    ):
        count = next(
            line
            for line in metrics.splitlines()
            if line.startswith(f"dagrider_{stage}_seconds_count")
        )
        assert float(count.rpartition(" ")[2]) >= 250, count
    assert all(p["state"] == "connected" for p in status["peers"].values())


class _Load:
    """Submit batches round-robin to the live nodes from a thread; remember what was
    accepted (a 202 is a promise: it must end up in the log)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.accepted: set[bytes] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.k = 0
        self.t0 = time.monotonic()
        self.batches: list[tuple[float, int, frozenset[bytes]]] = []
        """(when, which node, what) of every accepted batch: a failure says where the
        missing transactions went in and when, against ``events``."""
        self.events: list[tuple[float, str]] = []

    def mark(self, what: str) -> None:
        self.events.append((time.monotonic() - self.t0, what))

    def account(self, missing: set[bytes]) -> str:
        """The test's timeline with the batches that ``missing`` came in."""
        lines = [(t, what) for t, what in self.events]
        lines += [
            (t, f"node {i} accepted a batch of {len(b)}: {len(b & missing)} missing")
            for t, i, b in self.batches
            if b & missing
        ]
        return "\n".join(f"{t:8.3f}s {what}" for t, what in sorted(lines))

    def wait_committed(self, timeout: float) -> dict[int, list[bytes]]:
        """Every accepted transaction in every node's log (``wait_for_logs``); a failure
        carries the timeline of the batches that are missing."""
        try:
            return wait_for_logs(self.cluster, list(range(self.cluster.n)), self.accepted, timeout)
        except AssertionError as exc:
            log = {base64.b64decode(e["data"]) for e in full_log(self.cluster.api_url(0))}
            raise AssertionError(f"{exc}\n{self.account(self.accepted - log)}") from None

    def _run(self) -> None:
        while not self.stop.is_set():
            i = self.k % self.cluster.n
            self.k += 1
            batch = [os.urandom(8) + b"load" + os.urandom(20) for _ in range(50)]
            sent = time.monotonic() - self.t0
            try:
                submit_batch(self.cluster.api_url(i), batch)
            except (ApiError, OSError):
                continue  # node down or pushing back: not accepted, not promised
            self.accepted |= set(batch)
            self.batches.append((sent, i, frozenset(batch)))
            time.sleep(0.02)

    def __enter__(self) -> _Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def wait_accepted(self, more: int, timeout: float = 120) -> None:
        """Until ``more`` transactions beyond those accepted so far were accepted: the
        load is real however slow the machine (``timeout`` only ends a hang)."""
        target = len(self.accepted) + more
        deadline = time.monotonic() + timeout
        while len(self.accepted) < target:
            assert time.monotonic() < deadline, f"{len(self.accepted)} of {target} accepted"
            time.sleep(0.05)


def test_sigkill_under_load_and_restart(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    with _Load(cluster) as load:
        load.wait_accepted(250)  # in flight when the node dies
        load.mark("kill 2")
        cluster.kill(2)
        time.sleep(3.0)  # down for a while, under load (the scenario, not a verdict)
        load.mark("start 2")
        cluster.start(2)
        cluster.wait_ready(60, [2])
        load.mark("2 ready")
        load.wait_accepted(250)  # and more after its restart
    logs = load.wait_committed(timeout=120)
    assert_same_log(logs)


def test_each_node_killed_and_restarted_in_turn(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    with _Load(cluster) as load:
        for i in range(cluster.n):
            time.sleep(1.0)
            load.mark(f"kill {i}")
            cluster.kill(i)
            time.sleep(1.5)
            load.mark(f"start {i}")
            cluster.start(i)
            cluster.wait_ready(60, [i])
            load.mark(f"{i} ready")
        time.sleep(1.0)
    logs = load.wait_committed(timeout=150)
    assert_same_log(logs)


def test_node_down_for_many_rounds_catches_up(make_cluster: Callable[..., LocalCluster]) -> None:
    """Down longer than the in-memory GC window: it rejoins through store catch-up."""
    cluster = make_cluster(gc_depth=12, batch_delay_ms=10)
    cluster.stop(3)
    before = cluster.get_json(0, "/v1/status")["round"]
    sent: set[bytes] = set()
    deadline = time.monotonic() + 180  # only ends a hang
    while cluster.get_json(0, "/v1/status")["round"] < before + 100:
        batch = _txs(f"while-down-{len(sent)}", 20)
        submit_batch(cluster.api_url(len(sent) % 3), batch)
        sent |= set(batch)
        assert time.monotonic() < deadline, "the three live nodes did not advance"
        time.sleep(0.1)
    cluster.start(3)
    cluster.wait_ready(60, [3])
    logs = wait_for_logs(cluster, [0, 1, 2, 3], sent, timeout=120)
    assert_same_log(logs)


def test_clean_shutdown_exit_code_and_restart_keeps_log(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster()
    batch = _txs("persist", 100)
    submit_batch(cluster.api_url(1), batch)
    logs = wait_for_logs(cluster, [0, 1, 2, 3], set(batch))
    assert cluster.stop(1) == 0
    cluster.start(1)
    cluster.wait_ready(60, [1])
    after = wait_for_logs(cluster, [1], set(batch))
    assert after[1][: len(logs[1])] == logs[1]
