"""Load generation for ``bench/cluster.py``: open-loop WebSocket senders (child process).

Each generator process keeps one WebSocket (``GET /v1/ingest``) per node and, every
``tick``, sends each node the record batch of the transactions that have fallen due, so
that its share of the offered rate is kept on average whatever the nodes answer. A 429
pauses that node's socket for the ``retry_after`` the node derived from its measured
capacity, and the refused transactions go again first, with their original timestamps
(counted in ``rejected_429``); a node that answers slowly holds at most
``max_inflight`` messages per socket, the rest waits in the generator (``delayed``).

Each transaction is ``tag(4) | send time (>d, time.time()) | generator (>I) | seq (>Q)``
padded with zeros to the transaction size: unique, and its intended send time travels
with it, which is how the measurer (``cluster_measure``) gets end-to-end latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import struct
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from dagrider.node.batch import encode_batch

HEADER = struct.Struct(">4sdIQ")  # tag, send time, generator id, sequence number
SEND_TIME = struct.Struct(">d")
MAX_MSG_TXS = 4_000  # largest WebSocket message the generator sends, in transactions


@dataclass(frozen=True)
class Schedule:
    """When a load runs, in ``time.time()`` seconds; sent to the children once they are
    connected, so that process start-up never eats into the schedule."""

    start: float  # first transaction
    window_start: float
    window_end: float  # no new transaction after this


@dataclass(frozen=True)
class LoadPlan:
    """What one generator process does."""

    gen_id: int
    urls: list[str]
    rate: float  # tx/s this generator sends, spread evenly over ``urls``
    size: int
    tag: bytes
    tick: float
    max_inflight: int
    max_backlog_s: float


class _NodeSender:
    """One WebSocket to one node: a FIFO backlog, messages in flight, 429 pauses."""

    def __init__(self, plan: LoadPlan, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.plan = plan
        self.sched = Schedule(0.0, 0.0, 0.0)
        self.ws = ws
        self.backlog: deque[bytes] = deque()
        self.inflight: deque[list[bytes]] = deque()
        self.paused_until = 0.0
        self.wake = asyncio.Event()
        self.sent = 0  # transactions written to the socket for the first time
        self.sent_window = 0  # ... of which written inside the window
        self.resent = 0  # transactions written again after a 429
        self.retry_pending = 0  # the first this-many of the backlog are retries
        self.accepted = 0
        self.accepted_window = 0  # accepted transactions whose send time is in the window
        self.rejected_429 = 0  # transactions in batches answered 429 (each time)
        self.responses_429 = 0
        self.errors: dict[str, int] = {}
        self.delayed = 0  # transactions that had to wait in the generator before sending
        self.dropped = 0  # backlog overflow, or left unsent when the window closed
        self.unanswered = 0  # sent, but the socket closed before the reply came
        self.closed = False

    def add(self, txs: list[bytes], limit: int) -> None:
        if self.backlog:  # could not send everything last tick: the new ones wait too
            self.delayed += len(txs)
        room = limit - len(self.backlog)
        if room < len(txs):
            self.dropped += len(txs) - max(0, room)
            txs = txs[: max(0, room)]
        self.backlog.extend(txs)
        self.wake.set()

    async def writer(self) -> None:
        """Send the backlog whenever the socket is neither paused nor full."""
        plan = self.plan
        while not self.closed:
            now = time.time()
            if now < self.paused_until:
                await asyncio.sleep(self.paused_until - now)
                continue
            if not self.backlog or len(self.inflight) >= plan.max_inflight:
                self.wake.clear()
                await self.wake.wait()
                continue
            n = min(len(self.backlog), MAX_MSG_TXS)
            chunk = [self.backlog.popleft() for _ in range(n)]
            self.inflight.append(chunk)
            retries = min(n, self.retry_pending)
            self.retry_pending -= retries
            self.resent += retries
            self.sent += n - retries
            if self.sched.window_start <= now < self.sched.window_end:
                self.sent_window += n - retries
            try:
                await self.ws.send_bytes(encode_batch(chunk))
            except (ConnectionError, RuntimeError) as exc:
                self._error(type(exc).__name__)
                self.closed = True

    async def reader(self) -> None:
        """Replies come in order: each one settles the oldest message in flight."""
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            reply = json.loads(msg.data)
            chunk = self.inflight.popleft()
            if "accepted" in reply:
                self.accepted += len(chunk)
                ws, we = self.sched.window_start, self.sched.window_end
                self.accepted_window += sum(
                    1 for tx in chunk if ws <= SEND_TIME.unpack_from(tx, 4)[0] < we
                )
            elif reply.get("status") == 429:
                self.rejected_429 += len(chunk)
                self.responses_429 += 1
                retry = float(reply.get("retry_after", 1.0))
                self.paused_until = max(self.paused_until, time.time() + retry)
                self.backlog.extendleft(reversed(chunk))  # retry first, original send times
                self.retry_pending += len(chunk)
                self.delayed += len(chunk)
            else:
                self._error(f"{reply.get('status')}: {str(reply.get('error'))[:80]}")
                self.dropped += len(chunk)
            self.wake.set()
        self.closed = True
        self.wake.set()

    def _error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


async def _generate(plan: LoadPlan, conn: Connection) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        senders = []
        for url in plan.urls:
            ws = await session.ws_connect(
                url + "/v1/ingest", max_msg_size=0, compress=0, autoping=True, heartbeat=None
            )
            senders.append(_NodeSender(plan, ws))
        conn.send(("ready", None))
        sched: Schedule = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        for s in senders:
            s.sched = sched
        tasks = [asyncio.create_task(s.reader()) for s in senders]
        tasks += [asyncio.create_task(s.writer()) for s in senders]
        per_node = plan.rate / len(senders)
        backlog_limit = max(MAX_MSG_TXS, int(per_node * plan.max_backlog_s))
        pad = bytes(plan.size - HEADER.size)
        pack = HEADER.pack
        tag, gid = plan.tag, plan.gen_id
        seq = 0
        due = [0] * len(senders)
        made = [0] * len(senders)
        late_ticks = 0
        max_lag = max_lag_at = 0.0
        await asyncio.sleep(max(0.0, sched.start - time.time()))
        cpu0 = time.process_time()
        cpu_window: list[float] = []
        next_tick = sched.start
        while True:
            now = time.time()
            lag = now - next_tick
            if lag > max_lag:
                max_lag, max_lag_at = lag, now - sched.start
            if lag > plan.tick:  # the loop was held up: catch up at once, count it
                late_ticks += 1
                next_tick = now
            if not cpu_window and now >= sched.window_start:
                cpu_window.append(time.process_time())
            t = min(now, sched.window_end)
            for i, sender in enumerate(senders):
                due[i] = int(per_node * (t - sched.start))
                n = due[i] - made[i]
                if n <= 0:
                    continue
                txs = [pack(tag, now, gid, s) + pad for s in range(seq, seq + n)]
                seq += n
                made[i] += n
                sender.add(txs, backlog_limit)
            if now >= sched.window_end:
                break
            next_tick += plan.tick
            await asyncio.sleep(max(0.0, next_tick - time.time()))
        cpu_window.append(time.process_time())
        # Let the backlog go out and the messages in flight be answered (a socket paused by
        # 429 gets its retries too); what is still in the generator after that is dropped.
        deadline = time.time() + 30.0
        while time.time() < deadline and any(
            (s.inflight or s.backlog) and not s.closed for s in senders
        ):
            await asyncio.sleep(0.01)
        for s in senders:
            s.dropped += len(s.backlog)
            s.unanswered = sum(len(c) for c in s.inflight)
            s.backlog.clear()
            s.closed = True
            s.wake.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(s.ws.close() for s in senders), return_exceptions=True), 5.0
            )
        window = sched.window_end - sched.window_start
        errors: dict[str, int] = {}
        for s in senders:
            for k, v in s.errors.items():
                errors[k] = errors.get(k, 0) + v
        return {
            "generated": seq,
            "sent": sum(s.sent for s in senders),
            "resent": sum(s.resent for s in senders),
            "sent_window": sum(s.sent_window for s in senders),
            "accepted": sum(s.accepted for s in senders),
            "accepted_window": sum(s.accepted_window for s in senders),
            "rejected_429": sum(s.rejected_429 for s in senders),
            "responses_429": sum(s.responses_429 for s in senders),
            "delayed": sum(s.delayed for s in senders),
            "dropped": sum(s.dropped for s in senders),
            "unanswered": sum(s.unanswered for s in senders),
            "errors": errors,
            "late_ticks": late_ticks,
            "max_tick_lag_s": round(max_lag, 4),
            "max_tick_lag_at_s": round(max_lag_at, 2),
            "cpu_s_total": round(time.process_time() - cpu0, 3),
            "cpu_s_window": round(cpu_window[-1] - cpu_window[0], 3),
            "window_s": window,
        }


def generator_main(plan: LoadPlan, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        conn.send(("ok", asyncio.run(_generate(plan, conn))))
    except BaseException as exc:
        conn.send(("error", f"generator {plan.gen_id}: {type(exc).__name__}: {exc}"))
