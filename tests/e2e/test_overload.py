"""End-to-end under high offered load: a SIGKILL at 20,000 tx/s offered loses nothing
that was acknowledged, and excess load is pushed back with a measured ``retry_after``.

The load is open-loop (the schedule does not wait for answers) over the WebSocket
ingest, one socket per node, from a thread with its own event loop: what a node
answered ``{"accepted": n}`` to is a promise and must reach every log; what it refused
(429) or never answered (killed) promised nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import aiohttp
import pytest
from e2e.helpers import assert_same_log

from dagrider.node.batch import encode_batch
from dagrider.node.client import full_log
from dagrider.node.cluster import LocalCluster

pytestmark = pytest.mark.e2e

RATE = 20_000  # offered tx/s, over all nodes
TICK = 0.01  # s between messages per socket
TX_BYTES = 64


class _WsLoad:
    """Open-loop ingest at ``RATE`` tx/s spread over the nodes' WebSockets."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.accepted: set[bytes] = set()
        self.refused = 0
        self.retry_after: list[float] = []
        self.offered = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _node(self, session: aiohttp.ClientSession, i: int, start: float) -> None:
        per_node = RATE / self.cluster.n
        made = 0
        inflight: deque[list[bytes]] = deque()
        try:
            async with session.ws_connect(self.cluster.api_url(i) + "/v1/ingest") as ws:

                async def reader() -> None:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            return
                        reply = json.loads(msg.data)
                        chunk = inflight.popleft()
                        if "accepted" in reply:
                            self.accepted.update(chunk)
                        elif reply.get("status") == 429:
                            self.refused += len(chunk)
                            self.retry_after.append(float(reply["retry_after"]))

                task = asyncio.create_task(reader())
                try:
                    while not self.stop.is_set() and not task.done():
                        due = int(per_node * (time.monotonic() - start))
                        chunk = [os.urandom(12).ljust(TX_BYTES, b"w") for _ in range(due - made)]
                        made = due
                        self.offered += len(chunk)
                        if chunk:
                            inflight.append(chunk)
                            await ws.send_bytes(encode_batch(chunk))
                        await asyncio.sleep(TICK)
                    await asyncio.sleep(1.0)  # answers to what is in flight
                finally:
                    task.cancel()
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return  # the node died: what it did not answer was not promised

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            start = time.monotonic()
            await asyncio.gather(*(self._node(session, i, start) for i in range(self.cluster.n)))

    def __enter__(self) -> _WsLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _log(cluster: LocalCluster, i: int) -> list[bytes]:
    return [base64.b64decode(e["data"]) for e in full_log(cluster.api_url(i))]


def test_sigkill_at_20k_offered_loses_nothing_acknowledged(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(max_pending=20_000)
    with _WsLoad(cluster) as load:
        time.sleep(0.5)  # the sockets connect (the load's shape, not a verdict)
        offered, started = load.offered, time.monotonic()
        # the kill comes once enough was acknowledged, however long a busy machine takes
        deadline = started + 120
        while len(load.accepted) <= 5_000 or time.monotonic() < started + 1.5:
            assert time.monotonic() < deadline, f"only {len(load.accepted)} accepted"
            time.sleep(0.05)
        rate = (load.offered - offered) / (time.monotonic() - started)
        cluster.kill(2)
        time.sleep(1.5)  # the load goes on against the dead node (its shape, not a verdict)
    # the generator is open-loop on the clock: it kept the offered rate up to the kill
    assert rate >= 0.8 * RATE, rate
    cluster.start(2)
    cluster.wait_ready(60, [2])
    deadline = time.monotonic() + 120
    while True:
        logs = {i: _log(cluster, i) for i in (0, 2)}
        if all(load.accepted <= set(log) for log in logs.values()):
            break
        assert time.monotonic() < deadline, {
            i: len(load.accepted - set(log)) for i, log in logs.items()
        }
        time.sleep(1.0)
    assert_same_log(logs)
    # A refusal carries the node's own estimate (seconds, from its drain rate).
    assert all(0.0 < r <= 60.0 for r in load.retry_after)
