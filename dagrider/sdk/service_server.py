"""The serving side of application services: the six wire methods on the shared RPC
channel, per-peer limits, and the state of open streams (see :mod:`dagrider.sdk.services`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagrider.sdk.errors import (
    InvalidArgument,
)
from dagrider.sdk.service_api import (
    BAD_REQUEST,
    OVERLOADED,
    RATE_LIMITED,
    TOO_MANY_STREAMS,
    UNKNOWN_METHOD,
    UNKNOWN_SERVICE,
    UNKNOWN_STREAM,
    WIRE_METHODS,
    BodyError,
    Kind,
    Request,
    ServiceError,
    ServiceLimits,
    _failure,
    _methods,
    _peer,
    decode_push,
    decode_request,
    decode_stream,
    pack,
)
from p2p.ratelimit import TokenBucket
from p2p.rpc import RpcFailure
from p2p.strictwire import cut, describe

if TYPE_CHECKING:
    from dagrider.sdk.services import Services

# -- server side ---------------------------------------------------------------------

MAX_STREAM_MS = 86_400_000
"""Longest life of a stream, whatever deadline the caller sent (``Services.client``
accepts timeouts up to a day)."""


@dataclass(eq=False)
class _Stream:
    peer: bytes
    kind: Kind
    queue: asyncio.Queue[tuple[str, Any]]
    """("item", encoded-able value) | ("end", None) | ("error", RpcFailure)"""
    task: asyncio.Task[Any]
    expiry: asyncio.TimerHandle | None = None
    held: tuple[str, Any] | None = None
    """The end or error a ``next`` found after items: answered by the following one."""


class _Server:
    """The handlers of the six wire methods, over the registered services."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.streams: dict[int, _Stream] = {}
        self.ids = itertools.count(1)
        self.buckets: dict[bytes, tuple[ServiceLimits, TokenBucket]] = {}
        self.inflight: dict[bytes, int] = {}
        self.log = logging.getLogger("dagrider.services")

    @property
    def limits(self) -> ServiceLimits:
        return self.services.limits

    def handlers(self) -> dict[str, Callable[[bytes, bytes], Awaitable[bytes]]]:
        served = (self.call, self.open, self.next, self.push, self.end, self.cancel)
        return {m: self._guarded(h) for m, h in zip(WIRE_METHODS, served, strict=True)}

    def _guarded(
        self, handler: Callable[[bytes, bytes], Awaitable[bytes]]
    ) -> Callable[[bytes, bytes], Awaitable[bytes]]:
        """``handler`` behind the per-peer rate and concurrency limits."""

        async def run(peer: bytes, body: bytes) -> bytes:
            limits = self.limits
            now = asyncio.get_running_loop().time()
            held = self.buckets.get(peer)
            if held is None or held[0] is not limits:  # new peer, or new limits
                held = self.buckets[peer] = (
                    limits,
                    TokenBucket(limits.requests_per_s, limits.burst, now),
                )
            bucket = held[1]
            if not bucket.consume(1, now):
                raise _failure(RATE_LIMITED, f"over {limits.requests_per_s:g} calls/s")
            busy = self.inflight.get(peer, 0)
            if busy >= limits.max_inflight_per_peer:
                raise _failure(OVERLOADED, f"{busy} calls of yours in progress")
            self.inflight[peer] = busy + 1
            try:
                return await handler(peer, body)
            finally:
                left = self.inflight[peer] - 1
                if left:
                    self.inflight[peer] = left
                else:
                    del self.inflight[peer]

        return run

    def _limit(self) -> int:
        """Bytes a request body may have: an argument list and its envelope."""
        return self.services.payload_limit() + 1024

    def _request(self, body: bytes, method: str) -> Request:
        try:
            return decode_request(body, self._limit(), method)
        except BodyError as exc:
            raise _failure(BAD_REQUEST, f"{method} {exc}") from None

    def _stream_id(self, body: bytes, method: str) -> int:
        try:
            return decode_stream(body, self._limit(), method)
        except BodyError as exc:
            raise _failure(BAD_REQUEST, f"{method} {exc}") from None

    def _target(self, req: Request, want: tuple[Kind, ...]) -> tuple[Callable[..., Any], Kind]:
        svc = self.services.registered.get(req.service)
        if svc is None:
            raise _failure(UNKNOWN_SERVICE, f"no service {describe(req.service)}")
        kind = _methods(type(svc)).get(req.method)
        if kind is None:
            raise _failure(UNKNOWN_METHOD, f"{req.service} has no method {describe(req.method)}")
        if kind not in want:
            raise _failure(
                BAD_REQUEST, f"{req.service}.{req.method} is {kind}, not called that way"
            )
        return getattr(svc, req.method), kind

    @staticmethod
    def _bind(fn: Callable[..., Any], req: Request, lead: int = 0) -> None:
        try:
            inspect.signature(fn).bind(*([None] * lead), *req.args, **req.kwargs)
        except TypeError as exc:  # names in it are keyword names of at most 64 chars
            raise _failure(BAD_REQUEST, cut(f"arguments: {exc}")) from None

    def _result(self, value: object, share: int = 1) -> bytes:
        """``value`` encoded, within ``1/share`` of the payload limit (a stream item
        gets half: a batch of items must fit one answer)."""
        try:
            data = pack(value)
        except InvalidArgument as exc:
            raise _failure("internal", f"result {exc.detail}") from None
        limit = self.services.payload_limit() // share
        if len(data) > limit:
            raise _failure("internal", f"result of {len(data)} bytes exceeds {limit}")
        return data

    async def call(self, peer: bytes, body: bytes) -> bytes:
        req = self._request(body, "app.call")
        fn, _ = self._target(req, ("unary",))
        self._bind(fn, req)
        _peer.set(peer)
        try:
            value = await fn(*req.args, **req.kwargs)
        except ServiceError as exc:
            raise _failure(exc.code, exc.message) from None
        return self._result(value)

    async def open(self, peer: bytes, body: bytes) -> bytes:
        req = self._request(body, "app.open")
        assert req.deadline_ms is not None  # decode_request: always there for open
        fn, kind = self._target(req, ("server_stream", "client_stream"))
        self._bind(fn, req, lead=1 if kind == "client_stream" else 0)
        if sum(s.peer == peer for s in self.streams.values()) >= self.limits.max_streams_per_peer:
            raise _failure(TOO_MANY_STREAMS, f"{self.limits.max_streams_per_peer} streams open")
        sid = next(self.ids)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(self.limits.stream_window)
        ctx = contextvars.copy_context()
        ctx.run(_peer.set, peer)
        coro: Coroutine[Any, Any, Any]
        if kind == "server_stream":
            coro = self._produce(fn(*req.args, **req.kwargs), queue)
        else:
            coro = self._consume(fn, queue, req.args, req.kwargs)
        task = asyncio.get_running_loop().create_task(coro, name=f"svc-stream-{sid}", context=ctx)
        stream = _Stream(peer, kind, queue, task)
        self.streams[sid] = stream
        task.add_done_callback(lambda _t: self._finished(sid))
        # At most a day (the longest timeout a client may set): a stream holds up to
        # ``stream_window`` items, and a peer's 49-day deadline would keep them that long.
        deadline = max(0.001, min(req.deadline_ms, MAX_STREAM_MS) / 1000)
        stream.expiry = asyncio.get_running_loop().call_later(deadline, self._drop, sid)
        return pack(sid)

    async def _produce(
        self, gen: AsyncIterator[Any], queue: asyncio.Queue[tuple[str, Any]]
    ) -> None:
        try:
            async for item in gen:
                await queue.put(("item", self._result(item, share=2)))
        except ServiceError as exc:
            await queue.put(("error", _failure(exc.code, exc.message)))
        except RpcFailure as exc:
            await queue.put(("error", exc))
        except Exception as exc:
            self.log.exception("server stream handler failed")
            await queue.put(
                ("error", _failure("internal", f"handler failed: {type(exc).__name__}"))
            )
        else:
            await queue.put(("end", None))

    async def _consume(
        self,
        fn: Callable[..., Awaitable[Any]],
        queue: asyncio.Queue[tuple[str, Any]],
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> bytes:
        async def items() -> AsyncIterator[Any]:
            while True:
                tag, value = await queue.get()
                if tag == "end":
                    return
                yield value

        try:
            return self._result(await fn(items(), *args, **kwargs))
        except ServiceError as exc:
            raise _failure(exc.code, exc.message) from None

    def _finished(self, sid: int) -> None:
        stream = self.streams.get(sid)
        # a finished server stream stays until read (its queue holds the end marker)
        if stream is not None and stream.kind == "client_stream" and stream.task.cancelled():
            self._drop(sid)

    def _drop(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        if stream.expiry is not None:
            stream.expiry.cancel()
        if stream.task.done():
            if not stream.task.cancelled():
                stream.task.exception()  # retrieved: ``end`` or ``next`` reported it
        else:
            stream.task.cancel()

    def _stream(self, peer: bytes, sid: int, kind: Kind) -> tuple[int, _Stream]:
        stream = self.streams.get(sid)
        if stream is None or stream.peer != peer or stream.kind != kind:
            raise _failure(UNKNOWN_STREAM, f"no open {kind} {sid} of yours")
        return sid, stream

    async def next(self, peer: bytes, body: bytes) -> bytes:
        sid, stream = self._stream(peer, self._stream_id(body, "app.next"), "server_stream")
        items: list[bytes] = []
        size = 0
        if stream.held is not None:
            (tag, value), stream.held = stream.held, None
        else:
            tag, value = await stream.queue.get()
        while True:
            if tag != "item" and items:
                stream.held = (tag, value)  # the items first; the outcome next time
                return pack([items, False])
            if tag == "error":
                self._drop(sid)
                raise value
            if tag == "end":
                self._drop(sid)
                return pack([items, True])
            items.append(value)
            size += len(value)
            if size >= self.services.payload_limit() // 2 or stream.queue.empty():
                return pack([items, False])
            tag, value = stream.queue.get_nowait()

    async def push(self, peer: bytes, body: bytes) -> bytes:
        try:
            sid, items = decode_push(body, self._limit())
        except BodyError as exc:
            raise _failure(BAD_REQUEST, f"app.push {exc}") from None
        _, stream = self._stream(peer, sid, "client_stream")
        for item in items:
            if stream.task.done():
                break  # the handler returned or failed early: ``end`` tells which
            await stream.queue.put(("item", item))
        return pack(None)

    async def end(self, peer: bytes, body: bytes) -> bytes:
        sid, stream = self._stream(peer, self._stream_id(body, "app.end"), "client_stream")
        try:
            if not stream.task.done():
                await stream.queue.put(("end", None))
            result: bytes = await asyncio.shield(stream.task)
            return result
        finally:
            self._drop(sid)

    async def cancel(self, peer: bytes, body: bytes) -> bytes:
        """A malformed body is refused; a stream already gone is not an error (the
        cancel of a caller that stopped reading races with the stream's end)."""
        wanted = self._stream_id(body, "app.cancel")
        kinds: tuple[Kind, ...] = ("server_stream", "client_stream")
        for kind in kinds:
            with contextlib.suppress(RpcFailure):
                sid, _ = self._stream(peer, wanted, kind)
                self._drop(sid)
        return pack(None)

    def peer_gone(self, peer: bytes) -> None:
        self.buckets.pop(peer, None)
        for sid in [sid for sid, s in self.streams.items() if s.peer == peer]:
            self._drop(sid)

    def close(self) -> None:
        for sid in list(self.streams):
            self._drop(sid)
