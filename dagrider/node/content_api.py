"""HTTP routes of the content layer (``/v1/content``), mounted by :func:`api.build_app`.

Routes:

* ``PUT  /v1/content`` -- a streamed upload (any length up to the configured limit,
  never held in memory); answers 201 with the content id, and the node announces itself
  as a provider in the DHT.
* ``GET  /v1/content/{cid}`` -- the blob, streamed, with ``Range: bytes=a-b`` support
  (206 / 416). A blob this node does not hold is first fetched from the mesh, verified
  chunk by chunk (``?local=1`` refuses that with 404 instead).
* ``HEAD /v1/content/{cid}`` -- size and whether it is held here, no body.
* ``POST /v1/content/{cid}/fetch`` -- start fetching in the background (202); poll
  ``GET /v1/content/{cid}/status`` for progress (the CLI's progress bar does).
* ``GET  /v1/content/{cid}/providers`` -- who provides it, from the DHT.
* ``GET  /v1/content`` -- the blobs held here.

The routes talk to a :class:`ContentBackend` (the node's mesh), not to the p2p classes,
so that the HTTP rules (status codes, ranges, limits) are testable on their own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from aiohttp import web

from dagrider.node.api import ApiError

STREAM_CHUNK = 1024 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


@dataclass(frozen=True)
class BlobInfo:
    """What a client learns about a blob."""

    cid: str
    size: int
    chunk_size: int
    chunks: int


class ContentUnavailable(Exception):
    """No provider could supply the blob (or none is known): 404 or 502 with the reason."""

    def __init__(self, message: str, *, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


class BadContentId(ValueError):
    """The text is not a content id."""


class UploadTooLarge(Exception):
    """The upload exceeded the configured limit; nothing was kept."""


class ContentBackend(Protocol):
    """What the HTTP layer needs from the node's content layer."""

    def parse_cid(self, text: str) -> bytes:
        """The content id's bytes; ``BadContentId`` naming the problem."""
        ...

    async def put_stream(self, chunks: AsyncIterator[bytes], limit: int) -> BlobInfo: ...

    def local(self, cid: bytes) -> BlobInfo | None: ...

    def blobs(self) -> list[BlobInfo]: ...

    async def fetch(self, cid: bytes) -> BlobInfo:
        """Fetch (or join the fetch of) ``cid`` from the mesh; ``ContentUnavailable``."""
        ...

    def start_fetch(self, cid: bytes) -> None: ...

    def fetch_status(self, cid: bytes) -> dict[str, Any] | None: ...

    def read_range(self, cid: bytes, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of a blob held here, in pieces."""
        ...

    async def providers(self, cid: bytes) -> list[dict[str, Any]]: ...


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single ``bytes=`` range; None = whole blob.

    ``ApiError(416)`` for a range that is malformed, multi-part or outside the blob.
    """
    unsatisfiable = {"Content-Range": f"bytes */{size}"}
    m = _RANGE.match(header.strip())
    if m is None:
        raise ApiError(
            416,
            f"unsupported Range {header[:80]!r}: one bytes=a-b range only",
            headers=unsatisfiable,
        )
    first, last = m.group(1), m.group(2)
    if not first and not last:
        raise ApiError(416, "Range bytes=- names no bytes", headers=unsatisfiable)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise ApiError(416, "Range asks for the last 0 bytes", headers=unsatisfiable)
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise ApiError(
            416, f"Range {header[:80]!r} is outside the {size}-byte blob", headers=unsatisfiable
        )
    return start, end


class ContentRoutes:
    """Handlers over one :class:`ContentBackend`."""

    def __init__(self, backend: ContentBackend, max_upload: int) -> None:
        self.backend = backend
        self.max_upload = max_upload

    def _cid(self, request: web.Request) -> bytes:
        text = request.match_info["cid"]
        try:
            return self.backend.parse_cid(text)
        except BadContentId as exc:
            raise ApiError(400, f"invalid content id {text[:80]!r}: {exc}") from None

    async def put(self, request: web.Request) -> web.Response:
        declared = request.content_length
        if declared is not None and declared > self.max_upload:
            raise ApiError(
                413, f"upload of {declared} bytes is over the {self.max_upload}-byte limit"
            )
        try:
            info = await self.backend.put_stream(
                request.content.iter_chunked(STREAM_CHUNK), self.max_upload
            )
        except UploadTooLarge as exc:
            raise ApiError(413, str(exc)) from None
        return web.json_response(asdict(info), status=201)

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"blobs": [asdict(b) for b in self.backend.blobs()]})

    async def _held(self, request: web.Request, cid: bytes) -> BlobInfo:
        info = self.backend.local(cid)
        if info is not None:
            return info
        if request.query.get("local") in ("1", "true"):
            raise ApiError(404, f"content {request.match_info['cid']} is not held by this node")
        try:
            return await self.backend.fetch(cid)
        except ContentUnavailable as exc:
            raise ApiError(exc.status, str(exc)) from None

    async def get(self, request: web.Request) -> web.StreamResponse:
        cid = self._cid(request)
        info = await self._held(request, cid)
        header = request.headers.get("Range")
        span = _parse_range(header, info.size) if header is not None else None
        start, end = span if span is not None else (0, info.size)
        response = web.StreamResponse(status=206 if span is not None else 200)
        response.content_type = "application/octet-stream"
        response.content_length = end - start
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["ETag"] = f'"{info.cid}"'
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        if span is not None:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        await response.prepare(request)
        if request.method != "HEAD":
            async for piece in self.backend.read_range(cid, start, end):
                await response.write(piece)
        await response.write_eof()
        return response

    async def head(self, request: web.Request) -> web.StreamResponse:
        cid = self._cid(request)
        info = self.backend.local(cid)
        if info is None:
            raise ApiError(404, f"content {request.match_info['cid']} is not held by this node")
        response = web.StreamResponse(status=200)
        response.content_type = "application/octet-stream"
        response.content_length = info.size
        response.headers["Accept-Ranges"] = "bytes"
        await response.prepare(request)
        await response.write_eof()
        return response

    async def start_fetch(self, request: web.Request) -> web.Response:
        cid = self._cid(request)
        info = self.backend.local(cid)
        if info is not None:
            return web.json_response({"state": "held", **asdict(info)})
        self.backend.start_fetch(cid)
        return web.json_response(self._status(cid), status=202)

    def _status(self, cid: bytes) -> dict[str, Any]:
        info = self.backend.local(cid)
        if info is not None:
            return {"state": "held", **asdict(info)}
        progress = self.backend.fetch_status(cid)
        if progress is None:
            return {"state": "absent"}
        return progress

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(self._cid(request)))

    async def providers(self, request: web.Request) -> web.Response:
        cid = self._cid(request)
        found = await self.backend.providers(cid)
        return web.json_response({"cid": request.match_info["cid"], "providers": found})


def add_content_routes(app: web.Application, backend: ContentBackend, max_upload: int) -> None:
    routes = ContentRoutes(backend, max_upload)
    app.router.add_put("/v1/content", routes.put)
    app.router.add_get("/v1/content", routes.list)
    app.router.add_get("/v1/content/{cid}", routes.get, allow_head=False)
    app.router.add_head("/v1/content/{cid}", routes.head)
    app.router.add_post("/v1/content/{cid}/fetch", routes.start_fetch)
    app.router.add_get("/v1/content/{cid}/status", routes.status)
    app.router.add_get("/v1/content/{cid}/providers", routes.providers)
