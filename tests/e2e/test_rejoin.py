"""End-to-end: members that come back after their peers forgot the rounds they missed.

The retained window is made small (20 rounds of vertices and votes below the GC floor),
so plain catch-up cannot help: the node must fetch a certified checkpoint (f+1 member
signatures), the log up to it (checked against the certificate's hash chain), install
both in one store transaction and walk on from there.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import pytest
from e2e.helpers import assert_same_log, wait_for_logs

from dagrider.node.client import submit_batch
from dagrider.node.cluster import LocalCluster

pytestmark = pytest.mark.e2e

RETAIN = 20


def _txs(tag: str, count: int) -> list[bytes]:
    return [f"{tag}-{k}-".encode().ljust(48, b".") for k in range(count)]


def _run_while_down(cluster: LocalCluster, rounds: int, tag: str = "down") -> set[bytes]:
    """Load the three live members until they moved ``rounds`` rounds on."""
    before = cluster.get_json(0, "/v1/status")["round"]
    sent: set[bytes] = set()
    deadline = time.monotonic() + 90
    while cluster.get_json(0, "/v1/status")["round"] < before + rounds:
        batch = _txs(f"{tag}-{len(sent)}", 20)
        submit_batch(cluster.api_url(len(sent) % 3), batch)
        sent |= set(batch)
        assert time.monotonic() < deadline, "the three live nodes did not advance"
        time.sleep(0.05)
    return sent


def _rejoins(cluster: LocalCluster, sent: set[bytes]) -> None:
    cluster.start(3)
    cluster.wait_ready(60, [3])
    logs = wait_for_logs(cluster, [0, 1, 2, 3], sent, timeout=120)
    assert_same_log(logs)
    sync = cluster.get_json(3, "/v1/status")["state_sync"]
    assert sync["transfers_installed"] >= 1, sync
    # ... and then orders the same new entries as everyone, at the same positions.
    fresh = _txs("after-rejoin", 40)
    submit_batch(cluster.api_url(3), fresh)
    logs = wait_for_logs(cluster, [0, 1, 2, 3], set(fresh), timeout=60)
    assert_same_log(logs)
    for i in range(3):
        assert cluster.get_json(i, "/v1/status")["state_sync"]["certificates"] >= 1


def test_member_down_ten_retained_windows_rejoins_from_a_certificate(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(
        gc_depth=12, batch_delay_ms=10, retain_rounds=RETAIN, checkpoint_interval=32, dht=False
    )
    cluster.stop(3)
    sent = _run_while_down(cluster, 10 * RETAIN)
    _rejoins(cluster, sent)


def test_brand_new_data_directory_joins_from_a_certificate(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(
        gc_depth=12, batch_delay_ms=10, retain_rounds=RETAIN, checkpoint_interval=32, dht=False
    )
    sent = _run_while_down(cluster, 10, "before")
    cluster.stop(3)
    shutil.rmtree(cluster.data_dir(3))
    sent |= _run_while_down(cluster, 5 * RETAIN)
    _rejoins(cluster, sent)
