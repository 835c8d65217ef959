"""The client API: HTTP/JSON, Server-Sent Events and a WebSocket ingest over aiohttp.

Routes (every error is JSON ``{"error": "<cause>", "status": <code>}``):

- ``POST /v1/transactions``: one transaction as ``application/octet-stream``, or JSON
  ``{"tx": "<base64>"}``, ``{"text": "..."}`` or ``{"txs": ["<base64>", ...]}``;
  202 ``{"id": ...}`` or ``{"ids": [...]}``.
- ``POST /v1/transactions/batch``: ``application/x-dagrider-batch``, concatenated records
  of a 4-byte big-endian length and the transaction bytes, parsed as the body streams
  in; 202 ``{"accepted": n, "first_id": ..., "last_id": ...}``. The full id list is only
  returned with ``?ids=1``: ids are ``tx_id(bytes)``, so a load generator computes them
  itself and the hot path skips a JSON array of 64-character strings per transaction.
- ``GET /v1/ingest``: WebSocket; each binary message is one record batch, answered in
  order by ``{"accepted": n}`` or ``{"error": ..., "status": 400|413|429}`` (on 429 the
  client backs off for ``retry_after`` seconds: the node's estimate, from its measured
  drain rate, of when its backlog is back under half a second's worth; the HTTP routes send
  it rounded up in ``Retry-After``). A message over the body limit closes
  the socket with code 1009.
- ``GET /v1/transactions/{id}``, ``GET /v1/log?after=&limit=``, ``GET /v1/log/stream``
  (SSE, resumes from ``Last-Event-ID``), ``GET /v1/status``, ``GET /metrics``,
  ``GET /healthz``.

A node with ``[storage] keep_log_entries`` prunes the start of its log. Asking
``/v1/log`` or ``/v1/log/stream`` for a position before its first available index
(including the default ``after=-1``, "from the beginning") answers **410 Gone** with
``{"error", "status": 410, "first_available": <index>, "requested": <index>}``: resume
with ``after=first_available-1`` (or ask a node that keeps more). An SSE stream whose
cursor falls behind the cut while it runs ends with ``event: error`` carrying the same
JSON. Transaction ids are forgotten with their log rows, so ``/v1/transactions/{id}`` of
a pruned transaction is 404 like any unknown id; on a pruned node the 404 body adds
``first_available`` and says it may have been committed before that index.

A request is validated entirely before ``NodeService.submit``, so a rejected request
enqueues nothing. With a bearer token, every route except ``/healthz`` and the live
view's page ``/ui`` (static, it holds no data; its feed ``/ui/events`` does) requires it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import re
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.typedefs import Handler

from dagrider.node.batch import (
    BATCH_CONTENT_TYPE,
    BatchError,
    BatchParser,
    RecordBatch,
    parse_record_batch,
)
from dagrider.node.metrics import Metrics
from dagrider.node.service import (
    TX_ID_HEX_LEN,
    LogEntry,
    MempoolFull,
    NodeService,
    StorageCorrupt,
    StorageUnavailable,
    TxTooLarge,
)

if TYPE_CHECKING:
    from dagrider.node.content_api import ContentBackend
    from dagrider.node.crdt_node import CrdtNode

log = logging.getLogger(__name__)

LOG_LIMIT_DEFAULT = 100
LOG_LIMIT_MAX = 10_000
SSE_KEEPALIVE_SECONDS = 15.0
API_METRICS = web.AppKey("dagrider_api_metrics", Metrics)
"""The API's own registry (requests, errors, latency per route), rendered after the node's."""

_TX_ID = re.compile(rf"[0-9a-fA-F]{{{TX_ID_HEX_LEN}}}\Z")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")
_INTEGER = re.compile(r"-?[0-9]{1,18}\Z")
_STREAM_ROUTES = frozenset({"/v1/log/stream", "/v1/ingest", "/v1/content", "/v1/content/{cid}"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BODY_CHARGE = web.RequestKey("body_charge", int)  # bytes of its body charged to the budget
JSON_MAX_BODY = 4 * 1024 * 1024
"""Largest JSON transaction body (one transaction, or a few as ``txs``); batches of many
go to ``/v1/transactions/batch``, whose records are parsed as they stream."""
JSON_WEIGHT = 16
"""How many times its size a JSON body is charged to ``[api] bodies_budget_bytes``."""


# --- errors --------------------------------------------------------------------------


class ApiError(Exception):
    """A request refused with ``status``; rendered as the JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status, **self.extra}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _int_param(raw: str, name: str, lo: int, hi: int | None = None) -> int:
    bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
    value = int(raw) if _INTEGER.match(raw) else None
    if value is None or value < lo or (hi is not None and value > hi):
        raise ApiError(400, f"{name} must be an integer {bounds}, got {raw[:40]!r}")
    return value


def _entry_json(entry: LogEntry) -> dict[str, Any]:
    return {
        "index": entry.index,
        "tx_id": entry.tx_id,
        "data": base64.b64encode(entry.data).decode("ascii"),
        "round": entry.round,
        "source": entry.source,
        "wave": entry.wave,
        "committed_at": entry.committed_at,
    }


def _pruned(requested: int, first: int) -> ApiError:
    return ApiError(
        410,
        f"log entries before index {first} are pruned on this node ([storage] "
        f"keep_log_entries); requested from index {requested}: resume with "
        f"after={first - 1}, or ask a node that keeps them",
        extra={"first_available": first, "requested": requested},
    )


def _check_gap(after: int, entries: list[LogEntry]) -> None:
    """The service skips pruned positions; a first entry past ``after + 1`` is that gap."""
    if entries and entries[0].index > after + 1:
        raise _pruned(after + 1, entries[0].index)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


# --- the application -----------------------------------------------------------------


class _Api:
    """Handlers and middleware over one ``NodeService``."""

    def __init__(
        self,
        service: NodeService,
        token: str | None,
        max_body: int,
        keepalive: float,
        bodies_budget: int | None = None,
        body_timeout: float | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.service = service
        self.token_digest = _digest(token) if token is not None else None
        self.max_body = max_body
        self.keepalive = keepalive
        self.bodies_budget = bodies_budget
        """Bytes of request bodies all requests may hold at once (None: unbounded)."""
        self.bodies_used = 0
        self.body_timeout = body_timeout
        """Seconds a request body may send nothing before it is answered 408."""
        self.max_batch = max_batch
        """Transactions one request may carry: more can never fit the mempool (413)."""
        self.closing = asyncio.Event()
        self.sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self.metrics = Metrics()
        m = self.metrics
        self.m_requests = m.counter(
            "dagrider_api_requests_total", "HTTP requests by route and method.", ["route", "method"]
        )
        self.m_errors = m.counter(
            "dagrider_api_errors_total",
            "HTTP error responses by route and status.",
            ["route", "code"],
        )
        self.m_duration = m.histogram(
            "dagrider_api_request_duration_seconds",
            "Handling time of non-streaming requests.",
            ["route"],
        )
        self.m_txs = m.counter(
            "dagrider_api_transactions_total", "Transactions accepted, by ingest path.", ["path"]
        )
        self.m_tx_bytes = m.counter(
            "dagrider_api_transaction_bytes_total", "Bytes of accepted transactions.", ["path"]
        )
        self.m_ws = m.counter(
            "dagrider_api_ws_messages_total", "WebSocket ingest messages by outcome.", ["outcome"]
        )
        self.m_commit_to_client = m.histogram(
            "dagrider_commit_to_client_seconds",
            "Commit on this node to the first time a client read the entry (GET /v1/log or "
            "the SSE stream), per transaction",
        )
        self._served_head = -1  # highest log index already counted in m_commit_to_client

    # middleware: authentication, JSON errors, metrics

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            self._authenticate(request)
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except StorageUnavailable as exc:
            retry = max(1, math.ceil(exc.retry_after))
            response = ApiError(
                507,
                f"storage unavailable, nothing was accepted: {exc}",
                headers={"Retry-After": str(retry)},
            ).response()
        except StorageCorrupt as exc:
            reason = f"the node's store is damaged, it is stopping: {exc}"
            response = ApiError(500, reason).response()
        except web.HTTPException as exc:
            response = self._http_error(request, exc)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, route)
            response = ApiError(500, "internal error").response()
        finally:
            self._release_body(request)
        method = request.method if request.method in _METHODS else "other"
        self.m_requests.labels(route, method).inc()
        if response.status >= 400:
            self.m_errors.labels(route, str(response.status)).inc()
        if route not in _STREAM_ROUTES:
            self.m_duration.labels(route).observe(time.perf_counter() - started)
        return response

    def _authenticate(self, request: web.Request) -> None:
        if self.token_digest is None or request.path in ("/healthz", "/ui"):
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="dagrider"'}
        header = request.headers.get("Authorization")
        if header is None:
            raise ApiError(401, "missing Authorization: Bearer <token> header", headers=challenge)
        scheme, _, credential = header.partition(" ")
        valid = hmac.compare_digest(_digest(credential.strip()), self.token_digest)
        if scheme.lower() != "bearer" or not valid:
            raise ApiError(401, "invalid bearer token", headers=challenge)

    def _http_error(self, request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
        if exc.status < 400:
            return exc
        where = f"{request.method} {request.path[:200]}"
        headers: dict[str, str] = {}
        if isinstance(exc, web.HTTPNotFound):
            message = f"no route for {where}"
        elif isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"method not allowed: {where}; allowed: {allowed}"
            headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        else:
            message = (exc.text or exc.reason).strip()
        return ApiError(exc.status, message, headers=headers).response()

    # body reading and validation

    def _check_declared_size(self, request: web.Request, limit: int | None = None) -> None:
        limit = self.max_body if limit is None else limit
        declared = request.content_length
        if declared is not None and declared > limit:
            raise ApiError(413, f"request body is {declared} bytes, over the {limit}-byte limit")

    def _too_large(self, limit: int | None = None) -> ApiError:
        limit = self.max_body if limit is None else limit
        return ApiError(413, f"request body exceeds the {limit}-byte limit")

    def _json_limit(self) -> int:
        """Largest JSON body: parsed, it takes up to ``JSON_WEIGHT`` times its size (a
        7-byte ``"AA==",`` becomes a 61-byte string and a list slot), so it is charged
        that much and capped to what the budget can hold; bulk goes to the batch route."""
        limit = min(self.max_body, JSON_MAX_BODY)
        if self.bodies_budget is not None:
            limit = min(limit, self.bodies_budget // JSON_WEIGHT)
        return limit

    async def _chunks(
        self, request: web.Request, limit: int | None = None, weight: int = 1
    ) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive, each charged ``weight`` times its size to
        the bodies budget (given back when the request ends, in ``middleware``); 413
        past ``limit`` (default ``max_body``), 503 when the budget is spent, 408 when
        the client stalls for ``body_timeout``."""
        limit = self.max_body if limit is None else limit
        total = 0
        while True:
            try:
                async with asyncio.timeout(self.body_timeout):
                    chunk = await request.content.readany()
            except TimeoutError:
                raise ApiError(
                    408,
                    f"request body stalled: no bytes for {self.body_timeout:g} s "
                    "([api] idle_timeout_ms)",
                    headers={"Connection": "close"},
                ) from None
            if not chunk:
                return
            total += len(chunk)
            if total > limit:
                raise self._too_large(limit)
            self._charge_body(request, len(chunk) * weight)
            yield chunk

    def _charge_body(self, request: web.Request, size: int) -> None:
        if self.bodies_budget is None:
            return
        if self.bodies_used + size > self.bodies_budget:
            raise ApiError(
                503,
                f"request bodies in flight hold {self.bodies_used} of "
                f"{self.bodies_budget} bytes ([api] bodies_budget_bytes); retry later",
                headers={"Retry-After": "1", "Connection": "close"},
            )
        self.bodies_used += size
        request[_BODY_CHARGE] = request.get(_BODY_CHARGE, 0) + size

    def _release_body(self, request: web.Request) -> None:
        charged = request.get(_BODY_CHARGE, 0)
        if charged:
            self.bodies_used -= charged
            request[_BODY_CHARGE] = 0

    async def _read_body(
        self, request: web.Request, limit: int | None = None, weight: int = 1
    ) -> bytes:
        self._check_declared_size(request, limit)
        chunks = [chunk async for chunk in self._chunks(request, limit, weight)]
        return b"".join(chunks)

    async def _read_batch(self, request: web.Request) -> list[bytes]:
        self._check_declared_size(request)
        parser = BatchParser(self.service.max_tx_bytes, expected_size=request.content_length)
        try:
            async for chunk in self._chunks(request):
                parser.feed(chunk)
                self._check_count(len(parser.records))
            return parser.finish()
        except BatchError as exc:
            raise ApiError(exc.status, str(exc)) from None

    def _check_count(self, count: int) -> None:
        """413 for a request with more transactions than the mempool can ever hold: a 429
        would send the client back to retry something that can never succeed."""
        if self.max_batch is not None and count > self.max_batch:
            raise ApiError(
                413,
                f"the request holds more than {self.max_batch} transactions, the mempool's "
                "capacity ([mempool] max_pending): it can never be accepted; split it",
            )

    def _decode_b64(self, value: object, field: str) -> bytes:
        if not isinstance(value, str):
            raise ApiError(400, f"field {field} must be a base64 string, got {_json_type(value)}")
        if not _BASE64.match(value):
            raise ApiError(
                400,
                f"field {field} is not valid base64: expected the standard alphabet "
                "(A-Z a-z 0-9 + /) in groups of 4 with = padding",
            )
        return base64.b64decode(value)

    def _parse_json(self, body: bytes) -> tuple[list[bytes], list[str], bool]:
        """(transactions, their field names, whether the request was a single tx)."""
        if not body:
            raise ApiError(400, "empty body: expected a JSON object with tx, text or txs")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, f"JSON body must be an object, got {_json_type(doc)}")
        unknown = sorted(set(doc) - {"tx", "text", "txs"})
        if unknown:
            raise ApiError(400, f"unknown field(s) {', '.join(unknown)}: expected tx, text or txs")
        if len(doc) != 1:
            given = ", ".join(sorted(doc)) or "none"
            raise ApiError(400, f"exactly one of the fields tx, text, txs is required, got {given}")
        if "tx" in doc:
            return [self._decode_b64(doc["tx"], "tx")], ["tx"], True
        if "text" in doc:
            text = doc["text"]
            if not isinstance(text, str):
                raise ApiError(400, f"field text must be a string, got {_json_type(text)}")
            try:
                return [text.encode("utf-8")], ["text"], True
            except UnicodeEncodeError:
                raise ApiError(400, "field text is not valid Unicode (lone surrogate)") from None
        items = doc["txs"]
        if not isinstance(items, list):
            raise ApiError(
                400, f"field txs must be an array of base64 strings, got {_json_type(items)}"
            )
        if not items:
            raise ApiError(400, "field txs is an empty array")
        names = [f"txs[{i}]" for i in range(len(items))]
        return [self._decode_b64(v, n) for v, n in zip(items, names, strict=True)], names, False

    def _check_txs(self, txs: list[bytes], names: list[str]) -> None:
        limit = self.service.max_tx_bytes
        for tx, name in zip(txs, names, strict=True):
            if not tx:
                raise ApiError(400, f"{name}: empty transaction")
            if len(tx) > limit:
                raise ApiError(
                    413, f"{name} is {len(tx)} bytes, over the {limit}-byte transaction limit"
                )

    def _submit(self, txs: Sequence[bytes], path: str) -> list[str]:
        try:
            ids = self.service.submit(txs)
        except MempoolFull as exc:
            # The header is whole seconds (RFC 9110); the body keeps the node's estimate
            # (derived from its measured drain rate) to the millisecond, for clients
            # such as the WebSocket ingest that can back off for less than a second.
            raise ApiError(
                429,
                str(exc) or "mempool full",
                headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
                extra={"retry_after": round(max(0.001, exc.retry_after), 3)},
            ) from None
        except TxTooLarge as exc:
            raise ApiError(413, f"transaction too large: {exc}") from None
        self.m_txs.labels(path).inc(len(txs))
        size = len(txs.records) - 4 * len(txs) if isinstance(txs, RecordBatch) else None
        self.m_tx_bytes.labels(path).inc(sum(map(len, txs)) if size is None else size)
        return ids

    # handlers

    async def post_transactions(self, request: web.Request) -> web.Response:
        ctype = request.content_type
        if ctype not in ("application/json", "application/octet-stream"):
            raise ApiError(
                415,
                f"unsupported Content-Type {ctype!r}: send application/octet-stream (one raw "
                f"transaction) or application/json; batches go to /v1/transactions/batch",
            )
        if ctype == "application/json":
            body = await self._read_body(request, self._json_limit(), JSON_WEIGHT)
            txs, names, single = self._parse_json(body)
        else:
            body = await self._read_body(request)
            if not body:
                raise ApiError(400, "empty body: expected the transaction bytes")
            txs, names, single = [body], ["transaction"], True
        self._check_txs(txs, names)
        self._check_count(len(txs))
        ids = self._submit(txs, "single")
        return web.json_response({"id": ids[0]} if single else {"ids": ids}, status=202)

    async def post_batch(self, request: web.Request) -> web.Response:
        if request.content_type != BATCH_CONTENT_TYPE:
            raise ApiError(
                415, f"unsupported Content-Type {request.content_type!r}: use {BATCH_CONTENT_TYPE}"
            )
        want_ids = request.query.get("ids", "0")
        if want_ids not in ("0", "1", "false", "true"):
            raise ApiError(400, f"ids must be 0, 1, false or true, got {want_ids[:40]!r}")
        txs = await self._read_batch(request)
        ids = self._submit(txs, "batch")
        reply: dict[str, Any] = {"accepted": len(ids), "first_id": ids[0], "last_id": ids[-1]}
        if want_ids in ("1", "true"):
            reply["ids"] = ids
        return web.json_response(reply, status=202)

    async def ingest(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.max_body, heartbeat=30.0)
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    reply = self._ingest_one(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    reply = ApiError(
                        400, "text messages are not accepted: send record batches as binary"
                    ).body()
                else:
                    break
                self.m_ws.labels("accepted" if "accepted" in reply else "refused").inc()
                if "status" in reply:
                    self.m_errors.labels("/v1/ingest", str(reply["status"])).inc()
                await ws.send_str(json.dumps(reply))
        finally:
            self.sockets.discard(ws)
        return ws

    def _ingest_one(self, data: bytes) -> dict[str, Any]:
        try:
            txs = parse_record_batch(data, self.service.max_tx_bytes)
            self._check_count(len(txs))
            self._submit(txs, "ws")
        except BatchError as exc:
            return {"error": str(exc), "status": exc.status}
        except ApiError as exc:
            return exc.body()
        except Exception:  # the socket is upgraded: answer in-band, never with an HTTP 500
            log.exception("unhandled error in WebSocket ingest")
            return ApiError(500, "internal error").body()
        return {"accepted": len(txs)}

    async def get_transaction(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        if not _TX_ID.match(raw):
            raise ApiError(
                400,
                f"malformed transaction id {raw[:80]!r}: expected {TX_ID_HEX_LEN} hex digits "
                "(BLAKE2b-256 of the transaction)",
            )
        status = self.service.tx_status(raw.lower())
        if status.state == "unknown":
            first = self._first_available()
            if first > 0:
                raise ApiError(
                    404,
                    f"unknown transaction {status.tx_id}: not pending and not in this "
                    f"node's log, which starts at index {first} (earlier entries are "
                    "pruned, so it may have been committed before that)",
                    extra={"first_available": first},
                )
            raise ApiError(404, f"unknown transaction {status.tx_id}")
        return web.json_response(
            {
                "tx_id": status.tx_id,
                "state": status.state,
                "index": status.index,
                "round": status.round,
                "wave": status.wave,
            }
        )

    async def get_log(self, request: web.Request) -> web.Response:
        after = _int_param(request.query.get("after", "-1"), "after", -1)
        limit = _int_param(
            request.query.get("limit", str(LOG_LIMIT_DEFAULT)), "limit", 1, LOG_LIMIT_MAX
        )
        entries = self.service.log(after, limit)
        _check_gap(after, entries)
        self._served(entries)
        return web.json_response(
            {"entries": [_entry_json(e) for e in entries], "head": self.service.log_head()}
        )

    async def stream_log(self, request: web.Request) -> web.StreamResponse:
        """SSE of committed entries after ``Last-Event-ID`` (a reconnecting client) or
        else ``?after=`` (default -1, the whole log)."""
        last_id = request.headers.get("Last-Event-ID")
        if last_id is not None:
            cursor = _int_param(last_id.strip(), "Last-Event-ID", -1)
        else:
            cursor = _int_param(request.query.get("after", "-1"), "after", -1)
        entries = self.service.log(cursor, 1000)
        _check_gap(cursor, entries)  # before the 200: a pruned start is a plain 410
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        try:
            await response.write(b"retry: 1000\n: stream open\n\n")
            last_write = loop.time()
            while not self.closing.is_set():
                if entries and entries[0].index > cursor + 1:
                    # The reader fell behind the pruning: say so and end the stream.
                    error = json.dumps(_pruned(cursor + 1, entries[0].index).body())
                    await response.write(f"event: error\ndata: {error}\n\n".encode())
                    break
                if entries:
                    events = "".join(
                        f"id: {e.index}\ndata: {json.dumps(_entry_json(e))}\n\n" for e in entries
                    )
                    await response.write(events.encode("utf-8"))
                    self._served(entries)
                    cursor, last_write = entries[-1].index, loop.time()
                else:
                    idle = loop.time() - last_write
                    if idle >= self.keepalive:
                        await response.write(b": keep-alive\n\n")
                        last_write = loop.time()
                    else:
                        await self._wait_for_log(cursor, self.keepalive - idle)
                entries = self.service.log(cursor, 1000)
        except ConnectionResetError:
            pass  # the client went away
        except Exception:
            log.exception("log stream failed at index %d", cursor)
        return response

    def _served(self, entries: list[LogEntry]) -> None:
        """Commit-to-client latency of entries no client had read yet, one observation
        per run of entries committed together (they share ``committed_at``)."""
        if not entries or entries[-1].index <= self._served_head:
            return
        now = time.time()
        runs: dict[float, int] = {}  # committed_at -> entries (few: one per vertex)
        for e in entries:
            if e.index > self._served_head:
                runs[e.committed_at] = runs.get(e.committed_at, 0) + 1
        for at, count in runs.items():
            self.m_commit_to_client.observe(max(0.0, now - at), count)
        self._served_head = entries[-1].index

    def _first_available(self) -> int:
        """The node's first log index (0 if nothing is pruned), from the same gap the
        log routes report: the service skips pruned positions."""
        entries = self.service.log(-1, 1)
        return entries[0].index if entries else 0

    async def _wait_for_log(self, after: int, timeout: float) -> None:
        waiter = asyncio.ensure_future(self.service.wait_for_log(after, timeout))
        closer = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closer.cancel()
        if waiter.done() and not waiter.cancelled():
            waiter.result()  # re-raise a failure of the service

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.status())

    async def get_metrics(self, request: web.Request) -> web.Response:
        text = self.service.metrics().render() + self.metrics.render()
        return web.Response(
            body=text.encode("utf-8"),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def on_shutdown(self, app: web.Application) -> None:
        """End SSE streams and WebSockets so that shutdown does not wait for them."""
        self.closing.set()
        for ws in list(self.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node shutting down")


def build_app(
    service: NodeService,
    token: str | None,
    max_body: int,
    *,
    keepalive: float = SSE_KEEPALIVE_SECONDS,
    bodies_budget: int | None = None,
    body_timeout: float | None = None,
    max_batch: int | None = None,
    crdt: CrdtNode | None = None,
    content: ContentBackend | None = None,
    max_upload: int = 64 * 1024**3,
    member: bool = True,
) -> web.Application:
    """The client API over ``service``.

    ``token``: if set, every route but ``/healthz`` requires ``Authorization: Bearer``.
    ``max_body``: the largest request body (and WebSocket message) in bytes.
    ``keepalive``: seconds of silence after which an SSE stream gets a comment line.
    ``bodies_budget``: bytes of request bodies held at once by all requests (503 beyond).
    ``body_timeout``: seconds a request body may stall before a 408.
    ``max_batch``: most transactions per request (the mempool's capacity; 413 beyond).
    ``crdt``: the node's CRDT store, whose routes are mounted under ``/v1/crdt``.
    ``content``: the content layer, mounted under ``/v1/content`` (uploads up to
    ``max_upload`` bytes, streamed, so ``max_body`` does not apply to them).
    ``member``: False on a mesh peer, whose transaction and log routes answer 409.
    """
    if max_body <= 0:
        raise ValueError(f"max_body must be positive, got {max_body}")
    if token is not None and not token.strip():
        raise ValueError("token must not be empty (use None for no authentication)")
    api = _Api(service, token, max_body, keepalive, bodies_budget, body_timeout, max_batch)
    app = web.Application(middlewares=[api.middleware], client_max_size=max_body)
    app[API_METRICS] = api.metrics
    app.on_shutdown.append(api.on_shutdown)
    consensus: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/transactions", api.post_transactions),
        ("POST", "/v1/transactions/batch", api.post_batch),
        ("GET", "/v1/transactions/{id}", api.get_transaction),
        ("GET", "/v1/ingest", api.ingest),
        ("GET", "/v1/log", api.get_log),
        ("GET", "/v1/log/stream", api.stream_log),
    ]
    for method, path, handler in consensus:
        app.router.add_route(method, path, handler if member else _not_member)
    app.router.add_get("/v1/status", api.get_status)
    app.router.add_get("/metrics", api.get_metrics)
    app.router.add_get("/healthz", api.healthz)
    from dagrider.node.ui import add_ui_routes  # the live view: /ui and /ui/events

    add_ui_routes(app, service, api.closing)
    if crdt is not None:
        from dagrider.node.crdt_api import add_crdt_routes  # imports ApiError from here

        add_crdt_routes(app, crdt, api._read_body, api.closing, keepalive)
    if content is not None:
        from dagrider.node.content_api import add_content_routes

        add_content_routes(app, content, max_upload)
    return app


async def _not_member(request: web.Request) -> web.StreamResponse:
    raise ApiError(
        409,
        "this node is a mesh peer (role = peer): it neither orders transactions nor keeps "
        "the log; send them to a committee member",
    )
