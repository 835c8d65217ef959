"""The live view at ``/ui``: the DAG as it grows, the log tail, peers, mempool, commit rate.

Every node serves it; it needs nothing from the internet (one HTML file with its script
and style inline, shipped as package data). Its data arrive over Server-Sent Events at
``/ui/events``: a ``full`` event with the current window when a viewer connects, then a
``delta`` event per sample with what changed.

Why sampling and not a stream of the node's events: the view must never slow consensus.
One sampler per node, running only while someone watches, reads the node's state every
:data:`SAMPLE_SECONDS` on the event loop (a bounded amount of work: the last
:data:`WINDOW_ROUNDS` rounds of the DAG, the newest log entries) and hands the same
encoded sample to every viewer. A viewer that does not keep up loses deltas and gets a
``full`` event instead: its backlog never grows.

What the DAG view needs that the :class:`~dagrider.node.service.NodeService` seam does
not offer (the vertices and the wave leaders) is read from the node's ``process`` when it
has one (a committee member); a mesh peer shows its peers and status only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from dagrider.dag import Dag
from dagrider.messages import Vertex
from dagrider.node.service import NodeService
from dagrider.ordering import wave_round
from dagrider.process import Process

SAMPLE_SECONDS = 0.5
"""How often the sampler reads the node while a viewer is connected."""
WINDOW_ROUNDS = 32
"""Rounds of the DAG a viewer keeps (older ones scroll out)."""
LOG_TAIL = 20
"""Log entries in the tail (and the most a sample reads from the log)."""
RATE_WINDOW_SECONDS = 10.0
"""The commit rate is averaged over this long."""
VIEWER_QUEUE = 4
"""Samples a viewer may fall behind before it is resynchronised with a ``full`` event."""
KEEPALIVE_SECONDS = 15.0

Pos = tuple[int, int]


def ui_page() -> bytes:
    """The page (``dagrider/node/static/ui.html``), read from the installed package."""
    return resources.files("dagrider.node").joinpath("static/ui.html").read_bytes()


@dataclass(eq=False)
class _Viewer:
    """One connected page: its pending samples (hashed by identity)."""

    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(VIEWER_QUEUE))
    resync: bool = False


class UiSampler:
    """Reads the node every :data:`SAMPLE_SECONDS` while viewers are connected, and
    keeps the state a new viewer starts from."""

    def __init__(
        self,
        service: NodeService,
        *,
        period: float = SAMPLE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        self.service = service
        self.period = period
        self.clock = clock
        self.viewers: set[_Viewer] = set()
        self._task: asyncio.Task[None] | None = None
        self._vertices: dict[Pos, dict[str, Any]] = {}
        self._leaders: dict[int, dict[str, Any]] = {}  # wave -> leader doc
        self._elected: dict[int, int] = {}  # wave -> source, seen before it was decided
        self._decided_wave = 0
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_TAIL)
        self._log_after = -2  # -2: not read yet (start at the tail, not at index 0)
        self._rates: deque[tuple[float, int]] = deque()
        self._status: dict[str, Any] = {}

    # -- viewers --------------------------------------------------------------------------

    def subscribe(self) -> _Viewer:
        viewer = _Viewer()
        if not self.viewers or self._task is None or self._task.done():
            self.sample()  # a first viewer starts from the present, not from an empty view
        viewer.queue.put_nowait(self._encode("full", self.full()))
        self.viewers.add(viewer)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ui-sampler")
        return viewer

    def unsubscribe(self, viewer: _Viewer) -> None:
        self.viewers.discard(viewer)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while self.viewers:
            await asyncio.sleep(self.period)
            self.publish(self.sample())

    def publish(self, delta: dict[str, Any]) -> None:
        """Hand one sample to every viewer: encoded once, never queued without bound."""
        data = self._encode("delta", delta)
        for viewer in list(self.viewers):
            if viewer.resync:
                continue
            try:
                viewer.queue.put_nowait(data)
            except asyncio.QueueFull:
                viewer.resync = True  # its writer sends a full event once it drains

    @staticmethod
    def _encode(event: str, doc: dict[str, Any]) -> bytes:
        return f"event: {event}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()

    def resync(self, viewer: _Viewer) -> bytes:
        """The ``full`` event for a viewer that fell behind (its queue is dropped)."""
        while not viewer.queue.empty():
            viewer.queue.get_nowait()
        viewer.resync = False
        return self._encode("full", self.full())

    # -- sampling -------------------------------------------------------------------------

    def full(self) -> dict[str, Any]:
        """Everything a new viewer needs: the window, the leaders, the log tail."""
        low = self._low_round()
        return {
            "status": self._status,
            "vertices": [v for p, v in sorted(self._vertices.items()) if p[0] >= low],
            "leaders": [self._leaders[w] for w in sorted(self._leaders)],
            "log": list(self._log),
            "window": WINDOW_ROUNDS,
        }

    def _low_round(self) -> int:
        return max(1, int(self._status.get("round", 0)) - WINDOW_ROUNDS + 1)

    def sample(self) -> dict[str, Any]:
        """Read the node once; what changed since the previous sample."""
        now = self.clock()
        st = self.service.status()
        self._status = self._summary(st, now)
        process = getattr(self.service, "process", None)
        vertices: list[dict[str, Any]] = []
        leaders: list[dict[str, Any]] = []
        if isinstance(process, Process):
            vertices, leaders = self._sample_dag(process)
        low = self._low_round()
        for pos in [p for p in self._vertices if p[0] < low]:
            del self._vertices[pos]
        for wave in [w for w in self._leaders if wave_round(w, 1) < low]:
            del self._leaders[wave]
        return {
            "status": self._status,
            "vertices": vertices,
            "leaders": leaders,
            "log": self._sample_log(),
        }

    def _summary(self, st: dict[str, Any], now: float) -> dict[str, Any]:
        ordered = int(st.get("ordered_transactions", 0) or 0)
        self._rates.append((now, ordered))
        while len(self._rates) > 2 and now - self._rates[0][0] > RATE_WINDOW_SECONDS:
            self._rates.popleft()
        (t0, n0), (t1, n1) = self._rates[0], self._rates[-1]
        rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        peers: list[dict[str, Any]] = []
        raw_peers = st.get("peers")
        if isinstance(raw_peers, dict):
            for key, p in sorted(raw_peers.items()):
                if isinstance(p, dict):
                    peers.append(
                        {
                            "id": str(key)[:16],
                            "state": p.get("state"),
                            "path": p.get("path"),
                            "rtt_ms": p.get("rtt_ms"),
                            "remote": _address(p.get("remote_addr")),
                            "bytes_in": p.get("bytes_in"),
                            "bytes_out": p.get("bytes_out"),
                        }
                    )
        return {
            "time": round(now, 3),
            "role": st.get("role", "member"),
            "node": st.get("node"),
            "n": st.get("n"),
            "round": st.get("round", 0),
            "wave": st.get("wave"),
            "decided_wave": st.get("decided_wave"),
            "mempool": st.get("mempool"),
            "log_head": st.get("log_head"),
            "ordered_transactions": ordered,
            "ordered_vertices": st.get("ordered_vertices"),
            "commit_rate_tps": round(rate, 1),
            "last_committed_leader": st.get("last_committed_leader"),
            "peers": peers,
            "uptime_seconds": st.get("uptime_seconds"),
        }

    def _sample_dag(self, process: Process) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        dag, ordering = process.dag, process.ordering
        for wave, source in ordering.leaders.items():
            self._elected.setdefault(wave, source)
        low = max(self._low_round(), dag.floor, 1)
        changed: list[dict[str, Any]] = []
        newly_ordered: list[tuple[Vertex, dict[str, Any]]] = []
        for rnd in range(low, process.round + 1):
            for source, v in sorted(dag.by_round.get(rnd, {}).items()):
                pos = (rnd, source)
                doc = self._vertices.get(pos)
                ordered = ordering.is_ordered(v.digest)
                if doc is None:
                    doc = self._vertices[pos] = {
                        "r": rnd,
                        "s": source,
                        "strong": [[e.round, e.source] for e in v.strong_edges],
                        "weak": [[e.round, e.source] for e in v.weak_edges],
                        "tx": len(v.block),
                        "by": None,
                    }
                    changed.append(doc)
                    if ordered:
                        newly_ordered.append((v, doc))
                elif ordered and doc["by"] is None:
                    newly_ordered.append((v, doc))
                    changed.append(doc)
        leaders = self._decide_leaders(dag, ordering.decided_wave, ordering.is_ordered)
        committed = [
            (w, dag.vertex_at(wave_round(w, 1), d["s"]))
            for w, d in sorted(self._leaders.items())
            if d["state"] == "committed"
        ]
        for v, doc in newly_ordered:
            # The earliest committed leader whose history holds it ordered it.
            for wave, leader in committed:
                if leader is not None and (leader is v or dag.path(leader, v)):
                    doc["by"] = wave
                    break
            else:
                doc["by"] = 0  # ordered by a leader already out of the window
        return changed, leaders

    def _decide_leaders(
        self, dag: Dag, decided_wave: int, is_ordered: Callable[[bytes], bool]
    ) -> list[dict[str, Any]]:
        """Waves decided since the previous sample: committed if the elected leader's
        vertex is ordered, else skipped."""
        out: list[dict[str, Any]] = []
        for wave in range(self._decided_wave + 1, decided_wave + 1):
            source = self._elected.pop(wave, None)
            rnd = wave_round(wave, 1)
            v = None if source is None else dag.vertex_at(rnd, source)
            state = "committed" if v is not None and is_ordered(v.digest) else "skipped"
            doc = {"wave": wave, "r": rnd, "s": source, "state": state}
            if rnd >= self._low_round():
                self._leaders[wave] = doc
            out.append(doc)
        self._decided_wave = max(self._decided_wave, decided_wave)
        for wave in [w for w in self._elected if w <= self._decided_wave]:
            del self._elected[wave]
        return out

    def _sample_log(self) -> list[dict[str, Any]]:
        try:
            head = self.service.log_head()
            if self._log_after == -2:
                self._log_after = max(-1, head - LOG_TAIL)
            entries = self.service.log(self._log_after, LOG_TAIL) if head > self._log_after else []
        except Exception:  # a mesh peer keeps no log
            return []
        if head - self._log_after > LOG_TAIL:  # fell behind: show the newest, skip the rest
            with contextlib.suppress(Exception):
                entries = self.service.log(head - LOG_TAIL, LOG_TAIL)
        out: list[dict[str, Any]] = []
        for e in entries:
            text = e.data[:48].decode("utf-8", errors="replace") if e.data.isascii() else ""
            doc = {
                "index": e.index,
                "tx": e.tx_id[:16],
                "r": e.round,
                "s": e.source,
                "wave": e.wave,
                "size": len(e.data),
                "text": text,
            }
            self._log.append(doc)
            out.append(doc)
        if entries:
            self._log_after = entries[-1].index
        return out


def _address(raw: object) -> str | None:
    """``host:port`` from the transport's ``[host, port]`` (or its text as is)."""
    if isinstance(raw, list | tuple) and len(raw) >= 2:
        return f"{raw[0]}:{raw[1]}"
    return None if raw is None else str(raw)


def add_ui_routes(
    app: web.Application,
    service: NodeService,
    closing: asyncio.Event,
    *,
    period: float = SAMPLE_SECONDS,
) -> UiSampler:
    """Mount ``GET /ui`` (the page) and ``GET /ui/events`` (its SSE feed) on ``app``."""
    sampler = UiSampler(service, period=period)
    page = ui_page()

    async def get_page(request: web.Request) -> web.Response:
        return web.Response(
            body=page,
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Cache-Control": "no-cache",
                # Nothing may be fetched from elsewhere: the page is all inline.
                "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            },
        )

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        viewer = sampler.subscribe()
        closed = asyncio.ensure_future(closing.wait())
        try:
            while not closing.is_set():
                if viewer.resync:
                    await resp.write(sampler.resync(viewer))
                    continue
                getter = asyncio.ensure_future(viewer.queue.get())
                done, _ = await asyncio.wait(
                    {getter, closed},
                    timeout=KEEPALIVE_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter in done:
                    await resp.write(getter.result())
                else:
                    getter.cancel()
                    if not closed.done():
                        await resp.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass  # the viewer closed the page
        finally:
            sampler.unsubscribe(viewer)
            closed.cancel()
        return resp

    async def on_cleanup(app: web.Application) -> None:
        await sampler.close()

    app.router.add_get("/ui", get_page)
    app.router.add_get("/ui/events", events)
    app.on_cleanup.append(on_cleanup)
    return sampler


__all__ = ["SAMPLE_SECONDS", "WINDOW_ROUNDS", "UiSampler", "add_ui_routes", "ui_page"]
