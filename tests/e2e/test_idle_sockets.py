"""End-to-end: idle strangers on every peer port do not stop the committee.

A thread keeps 1,000 idle TCP sockets (no key, no TLS: they send nothing) open against
the peer ports of all four members, reopening each one a node closes, from the same
address the members use (loopback). Member 3 restarts in the middle; its links must be
re-made through the reserved handshake slots of configured peers, and all four members
keep ordering.
"""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Callable

import pytest
from e2e.helpers import assert_same_log, wait_for_logs

from dagrider.node.client import submit_batch
from dagrider.node.cluster import LocalCluster
from dagrider.node.config import parse_address

pytestmark = pytest.mark.e2e

SOCKETS = 1_000


class IdleFlood:
    """Holds ``SOCKETS`` idle connections spread over ``targets``, reopening closed ones."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IdleFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _open(self, k: int) -> socket.socket | None:
        try:
            s = socket.create_connection(self.targets[k % len(self.targets)], timeout=0.2)
        except OSError:
            return None
        s.setblocking(False)
        self.opened += 1
        return s

    def _run(self) -> None:
        socks: list[socket.socket | None] = [None] * SOCKETS
        try:
            while not self._stop.is_set():
                for k, s in enumerate(socks):
                    if s is not None:
                        try:
                            if s.recv(1) == b"":  # closed by the node: open another
                                s.close()
                                socks[k] = None
                        except BlockingIOError:
                            continue
                        except OSError:
                            s.close()
                            socks[k] = None
                    if socks[k] is None and not self._stop.is_set():
                        socks[k] = self._open(k)
                self._stop.wait(0.02)
        finally:
            for s in socks:
                if s is not None:
                    s.close()


def test_a_thousand_idle_sockets_do_not_stop_the_committee(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SOCKETS + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, SOCKETS + 1024), hard))
    cluster = make_cluster(dht=False)
    assert cluster.committee is not None
    targets = [parse_address(str(cluster.committee.member(i).address)) for i in range(4)]
    sent: set[bytes] = set()
    with IdleFlood(targets) as flood:
        time.sleep(2.0)
        cluster.stop(3)
        time.sleep(1.0)
        cluster.start(3)
        cluster.wait_ready(60, [3])
        for k in range(10):
            batch = [f"idle-flood-{k}-{j}".encode() for j in range(20)]
            submit_batch(cluster.api_url(k % 4), batch)
            sent |= set(batch)
            time.sleep(0.3)
        logs = wait_for_logs(cluster, [0, 1, 2, 3], sent, timeout=60)
        assert flood.opened >= SOCKETS
    assert_same_log(logs)
    status = cluster.get_json(3, "/v1/status")
    assert all(p["state"] == "connected" for p in status["peers"].values())
