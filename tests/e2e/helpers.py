"""Helpers for end-to-end tests of real daemons on loopback."""

from __future__ import annotations

import base64
import time

from dagrider.node.client import full_log
from dagrider.node.cluster import LocalCluster


def wait_for_logs(
    cluster: LocalCluster, nodes: list[int], expected: set[bytes], timeout: float = 90.0
) -> dict[int, list[bytes]]:
    """Poll until every node's log contains every expected transaction; return the logs."""
    deadline = time.monotonic() + timeout
    logs: dict[int, list[bytes]] = {}
    while True:
        for i in nodes:
            logs[i] = [base64.b64decode(e["data"]) for e in full_log(cluster.api_url(i))]
        if all(expected <= set(log) for log in logs.values()):
            return logs
        if time.monotonic() > deadline:
            missing = {i: len(expected - set(log)) for i, log in logs.items()}
            raise AssertionError(f"transactions missing after {timeout} s: {missing}")
        time.sleep(0.5)


def assert_same_log(logs: dict[int, list[bytes]]) -> None:
    """Agreement: every log is a prefix of the longest; integrity: nothing twice."""
    longest = max(logs.values(), key=len)
    for i, log in logs.items():
        assert log == longest[: len(log)], f"node {i}'s log diverges"
        assert len(set(log)) == len(log), f"node {i} has a duplicate transaction"
