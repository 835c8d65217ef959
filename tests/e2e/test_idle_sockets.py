"""End-to-end: idle strangers on every peer port do not stop the committee.

A thread keeps 1,000 idle TCP sockets (no key, no TLS: they send nothing) open against
the peer ports of all four members, reopening each one a node closes, from the same
address the members use (loopback). Member 3 restarts in the middle; its links must be
re-made through the reserved handshake slots of configured peers, and all four members
keep ordering.

The restart comes once the flood is known to hold every member's stranger slots (each
member logged an inbound connection dropped as "busy"), and member 3 starts again only
once the others saw its links go down: the links that come back are new handshakes
made while the slots are taken, however slow the machine. Every wait is a hang limit.
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
HANG_S = 120.0
"""Hang limit of every wait for something that must happen."""


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


def _wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_S
    while not check():
        assert time.monotonic() < deadline, f"waited {HANG_S:.0f} s for {what}"
        time.sleep(0.2)


def _slots_full(cluster: LocalCluster, i: int) -> bool:
    """Whether member ``i`` turned a stranger away for want of a handshake slot (the
    transport logs "inbound dropped", reason "busy"): its slots are held by the flood."""
    try:
        return "inbound dropped" in cluster.log_path(i).read_text(errors="replace")
    except OSError:
        return False


def _links(cluster: LocalCluster, i: int) -> dict[str, str]:
    """Member ``i``'s link states by peer key (hex); {} while its API does not answer."""
    try:
        peers = cluster.get_json(i, "/v1/status", timeout=30)["peers"]
    except OSError:
        return {}
    return {k: str(p["state"]) for k, p in peers.items()}


def test_a_thousand_idle_sockets_do_not_stop_the_committee(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < SOCKETS + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, SOCKETS + 1024), hard))
    cluster = make_cluster(dht=False)
    assert cluster.committee is not None
    targets = [parse_address(str(cluster.committee.member(i).address)) for i in range(4)]
    key3 = cluster.committee.member(3).identity_key.hex()
    sent: set[bytes] = set()
    with IdleFlood(targets) as flood:
        _wait(
            lambda: flood.opened >= SOCKETS and all(_slots_full(cluster, i) for i in range(4)),
            "the flood to hold every member's stranger handshake slots",
        )
        cluster.stop(3)
        _wait(
            lambda: all(_links(cluster, i).get(key3) not in (None, "connected") for i in range(3)),
            "members 0-2 to see member 3's links go down",
        )
        cluster.start(3)
        cluster.wait_ready(HANG_S, [3])
        for k in range(10):
            batch = [f"idle-flood-{k}-{j}".encode() for j in range(20)]
            submit_batch(cluster.api_url(k % 4), batch)
            sent |= set(batch)
            time.sleep(0.3)  # a steady trickle (the load's shape, not a verdict)
        logs = wait_for_logs(cluster, [0, 1, 2, 3], sent, timeout=HANG_S)
        # Member 3's links to all three are back, made while the flood still goes on.
        _wait(
            lambda: (
                (links := _links(cluster, 3)) != {}
                and all(state == "connected" for state in links.values())
            ),
            "member 3 to be linked to every member",
        )
    assert_same_log(logs)
