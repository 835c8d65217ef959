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
    Kind,
    ServiceError,
    ServiceLimits,
    _failure,
    _methods,
    _peer,
    pack,
    unpack,
)
from p2p.ratelimit import TokenBucket
from p2p.rpc import RpcFailure

if TYPE_CHECKING:
    from dagrider.sdk.services import Services

# -- server side ---------------------------------------------------------------------


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

    def _decode(self, body: bytes) -> Any:
        try:
            return unpack(body, self.services.payload_limit() + 1024)
        except ValueError as exc:
            raise _failure(BAD_REQUEST, str(exc)) from None

    def _target(self, head: object, want: tuple[Kind, ...]) -> tuple[Callable[..., Any], Kind]:
        if not (
            isinstance(head, list) and len(head) == 2 and all(isinstance(x, str) for x in head)
        ):
            raise _failure(BAD_REQUEST, "target: expected [service, method]")
        svc_name, method = head
        svc = self.services.registered.get(svc_name)
        if svc is None:
            raise _failure(UNKNOWN_SERVICE, f"no service {svc_name[:64]!r}")
        kind = _methods(type(svc)).get(method)
        if kind is None:
            raise _failure(UNKNOWN_METHOD, f"{svc_name} has no method {method[:64]!r}")
        if kind not in want:
            raise _failure(BAD_REQUEST, f"{svc_name}.{method} is {kind}, not called that way")
        return getattr(svc, method), kind

    @staticmethod
    def _bind(fn: Callable[..., Any], args: object, kwargs: object, lead: int = 0) -> None:
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _failure(BAD_REQUEST, "arguments: expected [args, kwargs]")
        try:
            inspect.signature(fn).bind(*([None] * lead), *args, **kwargs)
        except TypeError as exc:
            raise _failure(BAD_REQUEST, f"arguments: {exc}") from None

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
        msg = self._decode(body)
        if not (isinstance(msg, list) and len(msg) == 3):
            raise _failure(BAD_REQUEST, "call: expected [target, args, kwargs]")
        fn, _ = self._target(msg[0], ("unary",))
        self._bind(fn, msg[1], msg[2])
        _peer.set(peer)
        try:
            value = await fn(*msg[1], **msg[2])
        except ServiceError as exc:
            raise _failure(exc.code, exc.message) from None
        return self._result(value)

    async def open(self, peer: bytes, body: bytes) -> bytes:
        msg = self._decode(body)
        if not (isinstance(msg, list) and len(msg) == 4 and type(msg[3]) is int):
            raise _failure(BAD_REQUEST, "open: expected [target, args, kwargs, deadline_ms]")
        fn, kind = self._target(msg[0], ("server_stream", "client_stream"))
        self._bind(fn, msg[1], msg[2], lead=1 if kind == "client_stream" else 0)
        if sum(s.peer == peer for s in self.streams.values()) >= self.limits.max_streams_per_peer:
            raise _failure(TOO_MANY_STREAMS, f"{self.limits.max_streams_per_peer} streams open")
        sid = next(self.ids)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(self.limits.stream_window)
        ctx = contextvars.copy_context()
        ctx.run(_peer.set, peer)
        coro: Coroutine[Any, Any, Any]
        if kind == "server_stream":
            coro = self._produce(fn(*msg[1], **msg[2]), queue)
        else:
            coro = self._consume(fn, queue, msg[1], msg[2])
        task = asyncio.get_running_loop().create_task(coro, name=f"svc-stream-{sid}", context=ctx)
        stream = _Stream(peer, kind, queue, task)
        self.streams[sid] = stream
        task.add_done_callback(lambda _t: self._finished(sid))
        deadline = max(0.001, min(msg[3], 2**32 - 1) / 1000)
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

    def _stream(self, peer: bytes, sid: object, kind: Kind) -> tuple[int, _Stream]:
        stream = self.streams.get(sid) if type(sid) is int else None
        if stream is None or stream.peer != peer or stream.kind != kind:
            raise _failure(UNKNOWN_STREAM, f"no open {kind} {sid!r} of yours")
        assert type(sid) is int
        return sid, stream

    async def next(self, peer: bytes, body: bytes) -> bytes:
        msg = self._decode(body)
        if not (isinstance(msg, list) and len(msg) == 1):
            raise _failure(BAD_REQUEST, "next: expected [stream]")
        sid, stream = self._stream(peer, msg[0], "server_stream")
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
        msg = self._decode(body)
        if not (isinstance(msg, list) and len(msg) == 2 and isinstance(msg[1], list)):
            raise _failure(BAD_REQUEST, "push: expected [stream, items]")
        _, stream = self._stream(peer, msg[0], "client_stream")
        for item in msg[1]:
            if stream.task.done():
                break  # the handler returned or failed early: ``end`` tells which
            await stream.queue.put(("item", item))
        return pack(None)

    async def end(self, peer: bytes, body: bytes) -> bytes:
        msg = self._decode(body)
        if not (isinstance(msg, list) and len(msg) == 1):
            raise _failure(BAD_REQUEST, "end: expected [stream]")
        sid, stream = self._stream(peer, msg[0], "client_stream")
        try:
            if not stream.task.done():
                await stream.queue.put(("end", None))
            result: bytes = await asyncio.shield(stream.task)
            return result
        finally:
            self._drop(sid)

    async def cancel(self, peer: bytes, body: bytes) -> bytes:
        msg = self._decode(body)
        if isinstance(msg, list) and len(msg) == 1:
            with contextlib.suppress(RpcFailure):
                sid, _ = self._stream(peer, msg[0], "server_stream")
                self._drop(sid)
            with contextlib.suppress(RpcFailure):
                sid, _ = self._stream(peer, msg[0], "client_stream")
                self._drop(sid)
        return pack(None)

    def peer_gone(self, peer: bytes) -> None:
        self.buckets.pop(peer, None)
        for sid in [sid for sid, s in self.streams.items() if s.peer == peer]:
            self._drop(sid)

    def close(self) -> None:
        for sid in list(self.streams):
            self._drop(sid)
