"""HTTP routes of the CRDT store (``/v1/crdt/...``), mounted by :func:`api.build_app`.

Routes:

* ``GET  /v1/crdt/docs`` -- the documents this node holds.
* ``GET  /v1/crdt/docs/{ns}/{name}[?checkpoint=k]`` -- a document's value now, or as of
  checkpoint ``k`` with the proof (the checkpoint's head hashes) and a state hash that
  is identical on every node; 410 when ``k``'s history was compacted away (a cut below,
  or beside, the node's snapshot).
* ``POST /v1/crdt/docs/{ns}/{name}`` -- apply ``{"ops": [...]}`` as one signed change
  (see :mod:`crdt.document` for the operation format).
* ``GET  /v1/crdt/checkpoints[?after=&limit=]`` and ``/v1/crdt/checkpoints/{k}``.
* ``GET  /v1/crdt/stream[?doc=]`` -- Server-Sent Events, one per applied change.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from crdt.document import parse_intents
from crdt.errors import InvalidOperation
from dagrider.node.api import ApiError
from dagrider.node.crdt_node import (
    CheckpointCompacted,
    CheckpointIncomplete,
    CrdtNode,
    UnknownCheckpoint,
    UnknownDocument,
)

_POSITIVE = re.compile(r"[0-9]{1,12}\Z")
MAX_UPDATE_BODY = 1 << 20


def _doc_id(request: web.Request) -> str:
    return f"{request.match_info['ns']}/{request.match_info['name']}"


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _POSITIVE.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise ApiError(400, f"query parameter {name} must be an integer in [{lo}, {hi}]")
    return int(raw)


class CrdtRoutes:
    """Handlers over one :class:`CrdtNode`."""

    def __init__(
        self,
        crdt: CrdtNode,
        read_body: Callable[[web.Request], Awaitable[bytes]],
        closing: asyncio.Event,
        keepalive: float,
    ) -> None:
        self.crdt = crdt
        self.read_body = read_body
        self.closing = closing
        self.keepalive = keepalive

    async def list_docs(self, request: web.Request) -> web.Response:
        return web.json_response({"documents": self.crdt.documents()})

    async def get_doc(self, request: web.Request) -> web.Response:
        doc = _doc_id(request)
        checkpoint = None
        if "checkpoint" in request.query:
            checkpoint = _int_query(request, "checkpoint", 1, 1, 10**12)
        try:
            return web.json_response(self.crdt.read(doc, checkpoint))
        except (UnknownDocument, UnknownCheckpoint) as exc:
            raise ApiError(404, str(exc)) from None
        except CheckpointIncomplete as exc:
            raise ApiError(
                409, str(exc), headers={"Retry-After": "1"}, extra={"missing": exc.missing}
            ) from None
        except CheckpointCompacted as exc:
            raise ApiError(410, str(exc)) from None

    async def post_doc(self, request: web.Request) -> web.Response:
        doc = _doc_id(request)
        body = await self.read_body(request)
        if len(body) > MAX_UPDATE_BODY:
            raise ApiError(413, f"an update is at most {MAX_UPDATE_BODY} bytes")
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting
            raise ApiError(400, f"body is not JSON: {exc}") from None
        try:
            intents = parse_intents(parsed)
            change = self.crdt.update(doc, intents)
        except InvalidOperation as exc:
            raise ApiError(400, str(exc)) from None
        state = self.crdt.replica.document(doc)
        return web.json_response(
            {
                "doc": doc,
                "change": change.hash.hex(),
                "hlc": change.hlc,
                "value": None if state is None else state.value(),
            },
            status=201,
        )

    async def list_checkpoints(self, request: web.Request) -> web.Response:
        after = _int_query(request, "after", 0, 0, 10**12)
        limit = _int_query(request, "limit", 100, 1, 1000)
        return web.json_response({"checkpoints": self.crdt.checkpoints(after, limit)})

    async def get_checkpoint(self, request: web.Request) -> web.Response:
        raw = request.match_info["k"]
        if not _POSITIVE.fullmatch(raw):
            raise ApiError(400, f"checkpoint number must be a positive integer, got {raw[:40]!r}")
        try:
            row = self.crdt.checkpoint(int(raw))
        except UnknownCheckpoint as exc:
            raise ApiError(404, str(exc)) from None
        return web.json_response(self.crdt.checkpoints(row.k - 1, 1)[0])

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """SSE: ``event: change`` with the change's doc, hash, author, clock."""
        only = request.query.get("doc")
        queue = self.crdt.subscribe()
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b": stream open\n\n")
            while not self.closing.is_set():
                try:
                    event = await asyncio.wait_for(queue.get(), self.keepalive)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    await response.write(b"event: end\ndata: {}\n\n")
                    break
                if only is not None and event.doc != only:
                    continue
                data: dict[str, Any] = asdict(event)
                await response.write(f"event: change\ndata: {json.dumps(data)}\n\n".encode())
        except ConnectionResetError:
            pass
        finally:
            self.crdt.unsubscribe(queue)
        return response


def add_crdt_routes(
    app: web.Application,
    crdt: CrdtNode,
    read_body: Callable[[web.Request], Awaitable[bytes]],
    closing: asyncio.Event,
    keepalive: float,
) -> None:
    routes = CrdtRoutes(crdt, read_body, closing, keepalive)
    app.router.add_get("/v1/crdt/docs", routes.list_docs)
    app.router.add_get("/v1/crdt/docs/{ns}/{name:.+}", routes.get_doc)
    app.router.add_post("/v1/crdt/docs/{ns}/{name:.+}", routes.post_doc)
    app.router.add_get("/v1/crdt/checkpoints", routes.list_checkpoints)
    app.router.add_get("/v1/crdt/checkpoints/{k}", routes.get_checkpoint)
    app.router.add_get("/v1/crdt/stream", routes.stream)
