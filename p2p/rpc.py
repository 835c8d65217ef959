"""Request/response RPC with deadlines and cancellation over one application channel.

The DHT and the content layer both need "ask a peer, get one answer or a clear failure":
many calls in flight on one link, each with its own deadline, cancellable by the caller,
bounded on the server so that one peer cannot make us work without limit. An
``RpcEndpoint`` is that, for one frame kind of a ``PeerTransport``; it is both the
client and the server of its channel. The wire format is ``p2p.rpc_wire``.

Policy, in one place:

- **Deadlines travel.** A request carries the caller's remaining time; the server cancels
  the handler when it passes and sends nothing (nobody waits). Cancelling a caller's
  ``call`` sends ``Cancel`` and the server cancels that handler.
- **Server limits per peer.** A token bucket (``requests_per_s``/``burst``) and a cap on
  concurrent handlers (``max_inflight_per_peer``); beyond them the request is answered
  at once with ``"rate-limited"`` / ``"overloaded"`` rather than queued.
- **Bad input.** A malformed frame is logged with its reason, counted and dropped (no
  state changes; one bad frame does not cost the link). An unknown method is answered
  ``"unknown-method"``; a handler that raises ``RpcFailure`` answers its code, any other
  exception answers ``"internal"`` and is logged; a response over
  ``max_response_bytes`` answers ``"internal"`` too, never a dropped link.
- **Back-pressure.** Responses (up to ~1 MiB chunks) go out with ``send_wait``.
- **Links.** A lost link fails the peer's pending calls with ``PeerNotConnected`` and
  cancels its handlers. A replaced link is not a loss (the transport drains it); if one
  is lost undrained while its successor is live, only the calls sent on it fail.
  ``call`` never dials: the caller makes the link first.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from p2p.errors import P2PError, PeerNotConnected
from p2p.identity import short_id
from p2p.logs import log_event
from p2p.ratelimit import TokenBucket
from p2p.rpc_wire import (
    MAX_CODE_CHARS,
    MAX_ERROR_MESSAGE_CHARS,
    MAX_METHOD_CHARS,
    U32,
    U64,
    Cancel,
    ErrorReply,
    Reply,
    Request,
    RpcDecodeError,
    RpcMessage,
    decode,
    decode_reply_view,
    encode,
)
from p2p.transport import PeerTransport

__all__ = [
    "Handler",
    "RpcConfig",
    "RpcEndpoint",
    "RpcError",
    "RpcFailure",
    "RpcOverloaded",
    "RpcRemoteError",
    "RpcTimeout",
]

Handler = Callable[[bytes, bytes], Awaitable[bytes]]
"""``(peer public key, request body) -> response body``; raise ``RpcFailure`` to refuse."""

WIRE_OVERHEAD: Final = 1024
"""Bytes an envelope adds around a body, at most (ids, method, code, message)."""

OVERLOADED: Final = "overloaded"
RATE_LIMITED: Final = "rate-limited"
UNKNOWN_METHOD: Final = "unknown-method"
INTERNAL: Final = "internal"
TOO_LARGE: Final = "too-large"


class RpcError(P2PError):
    """Base of everything ``call`` raises on purpose (besides ``PeerNotConnected``)."""


class RpcTimeout(RpcError, TimeoutError):
    """The deadline passed before an answer came."""


class RpcRemoteError(RpcError):
    """The peer answered with an error ``code`` and a human ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class RpcOverloaded(RpcRemoteError):
    """The peer refused for load (``"overloaded"`` or ``"rate-limited"``): try elsewhere."""


class RpcFailure(Exception):
    """Raised by a handler to answer an error with ``code`` (e.g. ``"not-found"``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RpcConfig:
    """Limits of one endpoint; the defaults fit a DHT plus ~1 MiB content chunks."""

    max_request_bytes: int = 64 * 1024
    max_response_bytes: int = 4 * 1024 * 1024
    max_inflight_per_peer: int = 64
    """Server side: concurrent handler tasks per peer; more are answered "overloaded"."""
    max_pending_calls: int = 4096
    """Client side: calls waiting for an answer, over all peers."""
    requests_per_s: float = 500.0
    burst: float = 1000.0

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_response_bytes", "max_inflight_per_peer"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RpcConfig.{name}={getattr(self, name)!r}: must be positive")
        if self.max_pending_calls <= 0:
            raise ValueError(f"RpcConfig.max_pending_calls={self.max_pending_calls}: must be > 0")
        if self.requests_per_s <= 0 or self.burst < 1:
            raise ValueError(
                f"RpcConfig.requests_per_s={self.requests_per_s}, burst={self.burst}: "
                "rate must be positive and burst at least 1"
            )


@dataclass(eq=False)
class _Pending:
    peer: bytes
    future: asyncio.Future[bytes | memoryview]
    link: int | None = None
    """The transport's ``link_generation`` the request went out on (None: not sent yet)."""


def _remote_error(code: str, message: str) -> RpcRemoteError:
    if code in (OVERLOADED, RATE_LIMITED):
        return RpcOverloaded(code, message)
    return RpcRemoteError(code, message)


class RpcEndpoint:
    """Client and server of one RPC channel (frame ``kind``) on ``transport``."""

    def __init__(
        self,
        transport: PeerTransport,
        kind: int,
        handlers: Mapping[str, Handler],
        config: RpcConfig | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config = config or RpcConfig()
        for method in handlers:
            if not 0 < len(method) <= MAX_METHOD_CHARS:
                raise ValueError(f"method name {method!r} must have 1..{MAX_METHOD_CHARS} chars")
        largest = max(config.max_request_bytes, config.max_response_bytes) + WIRE_OVERHEAD
        if largest > transport.config.max_frame:
            raise ValueError(
                f"RPC messages of up to {largest} bytes exceed the transport's "
                f"max_frame {transport.config.max_frame}"
            )
        self._transport = transport
        self._kind = kind
        self._handlers = dict(handlers)
        self._log = logger or logging.getLogger("p2p.rpc")
        self._max_body = max(config.max_request_bytes, config.max_response_bytes)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._serving: dict[bytes, dict[int, asyncio.Task[None]]] = {}
        self._buckets: dict[bytes, TokenBucket] = {}
        self._stats: Counter[str] = Counter()
        self._closed = False
        transport.register_channel(kind, self.on_frame)
        transport.subscribe(on_disconnected=self.on_disconnected)

    # -- handlers ------------------------------------------------------------------------

    def add_handler(self, method: str, handler: Handler) -> None:
        """Serve ``method`` from now on (a layer that shares this channel, such as the
        application services of :mod:`dagrider.sdk.services` on the DHT's channel).

        ``ValueError`` for a name outside 1..``MAX_METHOD_CHARS`` characters or one
        already served: two layers never answer the same method.
        """
        if not 0 < len(method) <= MAX_METHOD_CHARS:
            raise ValueError(f"method name {method!r} must have 1..{MAX_METHOD_CHARS} chars")
        if method in self._handlers:
            raise ValueError(f"method {method!r} is already served on this channel")
        self._handlers[method] = handler

    def remove_handler(self, method: str) -> None:
        """Stop serving ``method`` (later requests are answered ``unknown-method``);
        handlers already running finish. ``KeyError`` if it is not served."""
        del self._handlers[method]

    # -- client --------------------------------------------------------------------------

    async def call(self, peer: bytes, method: str, body: bytes, *, timeout: float) -> bytes:
        """Ask ``peer`` to run ``method`` on ``body``; its answer, within ``timeout`` seconds.

        ``PeerNotConnected`` without a live link or if it is lost while we wait;
        ``RpcTimeout`` when the deadline passes; ``RpcRemoteError`` (``RpcOverloaded``
        for load refusals) when the peer answers an error; ``RpcError`` if this endpoint
        is closed or has ``max_pending_calls`` waiting. ``ValueError`` for a method name
        or body over the limits (a caller bug). Cancelling the caller cancels the call
        on the peer too.
        """
        result = await self._call(peer, method, body, timeout)
        return result if type(result) is bytes else bytes(result)

    async def call_view(
        self, peer: bytes, method: str, body: bytes, *, timeout: float
    ) -> memoryview:
        """``call``, with the answer as a read-only view into the received frame instead
        of a copy (for large answers such as content chunks); raises as ``call`` does."""
        return memoryview(await self._call(peer, method, body, timeout))

    async def _call(
        self, peer: bytes, method: str, body: bytes, timeout: float
    ) -> bytes | memoryview:
        if not 0 < len(method) <= MAX_METHOD_CHARS:
            raise ValueError(f"method name {method!r} must have 1..{MAX_METHOD_CHARS} chars")
        if len(body) > self.config.max_request_bytes:
            raise ValueError(
                f"request body of {len(body)} bytes exceeds {self.config.max_request_bytes}"
            )
        if self._closed:
            raise RpcError("RPC endpoint is closed")
        if len(self._pending) >= self.config.max_pending_calls:
            self._stats["calls_refused"] += 1
            raise RpcError(f"{len(self._pending)} calls pending (max_pending_calls)")
        if not self._transport.has_link(peer):
            raise PeerNotConnected(f"no link to peer {short_id(peer)}")
        call_id = next(self._ids) & U64
        deadline_ms = min(U32, max(1, int(timeout * 1000)))
        frame = encode(Request(call_id, method, deadline_ms, body))
        future: asyncio.Future[bytes | memoryview] = asyncio.get_running_loop().create_future()
        pending = self._pending[call_id] = _Pending(peer, future)
        self._stats["calls"] += 1
        try:
            async with asyncio.timeout(timeout):
                await self._transport.send_wait(peer, frame, self._kind)
                pending.link = self._transport.link_generation(peer)
                result = await future
        except TimeoutError:
            self._stats["timeouts"] += 1
            self._send_cancel(peer, call_id)
            raise RpcTimeout(
                f"{method} to {short_id(peer)}: no answer within {timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            self._stats["cancelled"] += 1
            self._send_cancel(peer, call_id)
            raise
        except RpcRemoteError:
            self._stats["remote_errors"] += 1
            raise
        except PeerNotConnected:
            self._stats["disconnects"] += 1
            raise
        finally:
            self._pending.pop(call_id, None)
        self._stats["answers"] += 1
        return result

    def _send_cancel(self, peer: bytes, call_id: int) -> None:
        if not self._transport.try_send(peer, encode(Cancel(call_id)), self._kind):
            self._stats["cancels_unsent"] += 1

    # -- inbound -------------------------------------------------------------------------

    def on_frame(self, peer: bytes, data: bytes) -> None:
        """Dispatch one frame of our channel (the transport's channel callback)."""
        if self._closed:
            return
        fast = decode_reply_view(data, self._max_body)
        if fast is not None:
            self._on_reply(peer, *fast)
            return
        try:
            msg = decode(data, self._max_body)
        except RpcDecodeError as exc:
            self._stats["malformed"] += 1
            log_event(
                self._log,
                logging.WARNING,
                "rpc frame dropped",
                peer=short_id(peer),
                reason=str(exc),
                size=len(data),
            )
            return
        if isinstance(msg, Request):
            self._on_request(peer, msg)
        elif isinstance(msg, Cancel):
            task = self._serving.get(peer, {}).get(msg.id)
            if task is not None:
                self._stats["cancels_received"] += 1
                task.cancel()
        else:
            self._on_answer(peer, msg)

    def _on_answer(self, peer: bytes, msg: RpcMessage) -> None:
        assert isinstance(msg, Reply | ErrorReply)
        if isinstance(msg, Reply):
            self._on_reply(peer, msg.id, msg.body)
            return
        pending = self._pending.get(msg.id)
        if pending is None or pending.peer != peer or pending.future.done():
            self._stats["unexpected_answers"] += 1  # late (we gave up) or not ours
            return
        pending.future.set_exception(_remote_error(msg.code, msg.message))

    def _on_reply(self, peer: bytes, call_id: int, body: bytes | memoryview) -> None:
        pending = self._pending.get(call_id)
        if pending is None or pending.peer != peer or pending.future.done():
            self._stats["unexpected_answers"] += 1  # late (we gave up) or not ours
            return
        pending.future.set_result(body)

    def _on_request(self, peer: bytes, req: Request) -> None:
        self._stats["requests"] += 1
        serving = self._serving.setdefault(peer, {})
        if req.id in serving:
            self._stats["malformed"] += 1
            log_event(
                self._log,
                logging.WARNING,
                "rpc frame dropped",
                peer=short_id(peer),
                reason=f"id: request {req.id} is already in progress",
            )
            return
        now = asyncio.get_running_loop().time()
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = TokenBucket(self.config.requests_per_s, self.config.burst, now)
            self._buckets[peer] = bucket
        if not bucket.consume(1, now):
            self._refuse(peer, req, RATE_LIMITED, f"over {self.config.requests_per_s:g} req/s")
            return
        if len(req.body) > self.config.max_request_bytes:
            self._refuse(
                peer,
                req,
                TOO_LARGE,
                f"request body of {len(req.body)} bytes exceeds {self.config.max_request_bytes}",
            )
            return
        handler = self._handlers.get(req.method)
        if handler is None:
            self._refuse(peer, req, UNKNOWN_METHOD, f"no method {req.method!r}")
            return
        if len(serving) >= self.config.max_inflight_per_peer:
            self._refuse(
                peer, req, OVERLOADED, f"{len(serving)} requests in progress from this peer"
            )
            return
        task = asyncio.create_task(
            self._serve(peer, req, handler), name=f"rpc-{req.method}-{short_id(peer)}"
        )
        serving[req.id] = task
        task.add_done_callback(functools.partial(self._served, peer, req.id))

    def _served(self, peer: bytes, call_id: int, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("rpc serve task failed", exc_info=task.exception())
        serving = self._serving.get(peer)
        if serving is not None and serving.get(call_id) is task:
            del serving[call_id]
            if not serving:
                del self._serving[peer]

    def _refuse(self, peer: bytes, req: Request, code: str, message: str) -> None:
        """Answer at once, without back-pressure: a refusal must not queue behind work."""
        self._stats[f"refused_{code}"] += 1
        log_event(
            self._log,
            logging.DEBUG,
            "rpc refused",
            peer=short_id(peer),
            method=req.method[:MAX_METHOD_CHARS],
            code=code,
        )
        if not self._transport.try_send(peer, _error_frame(req.id, code, message), self._kind):
            self._stats["refusals_unsent"] += 1  # the caller times out instead

    async def _serve(self, peer: bytes, req: Request, handler: Handler) -> None:
        try:
            async with asyncio.timeout(req.deadline_ms / 1000) as scope:
                answer = await self._run(peer, req, handler)
                await self._transport.send_wait(peer, answer, self._kind)
                self._stats["served"] += 1
        except TimeoutError:
            if not scope.expired():
                raise
            self._stats["deadline_expired"] += 1
        except PeerNotConnected:
            self._stats["answers_lost"] += 1

    async def _run(self, peer: bytes, req: Request, handler: Handler) -> bytes:
        """The encoded answer to ``req``: its reply, or the error it deserves."""
        try:
            body = await handler(peer, req.body)
        except RpcFailure as failure:
            self._stats["served_errors"] += 1
            return _error_frame(req.id, failure.code, failure.message)
        except Exception as exc:
            self._stats["internal_errors"] += 1
            self._log.exception("rpc handler %s failed for %s", req.method, short_id(peer))
            return _error_frame(req.id, INTERNAL, f"handler failed: {type(exc).__name__}")
        if not isinstance(body, bytes):
            self._stats["internal_errors"] += 1
            self._log.error("rpc handler %s returned %s", req.method, type(body).__name__)
            return _error_frame(req.id, INTERNAL, "handler returned no bytes")
        if len(body) > self.config.max_response_bytes:
            self._stats["internal_errors"] += 1
            log_event(
                self._log,
                logging.ERROR,
                "rpc response too large",
                method=req.method,
                size=len(body),
                limit=self.config.max_response_bytes,
            )
            return _error_frame(
                req.id,
                INTERNAL,
                f"response of {len(body)} bytes exceeds {self.config.max_response_bytes}",
            )
        return encode(Reply(req.id, body))

    # -- links and lifecycle ---------------------------------------------------------------

    def on_disconnected(self, peer: bytes) -> None:
        """The link to ``peer`` is gone: fail its pending calls, cancel its handlers.

        If the peer still has a live link (a replaced link that did not drain was lost),
        only the calls whose request went out on an older link fail; calls on the live
        one, and the handlers (whose answers go out on it), carry on."""
        live = self._transport.link_generation(peer)
        if live is not None:
            for pending in self._pending.values():
                stale = pending.link is not None and pending.link != live
                if pending.peer == peer and stale and not pending.future.done():
                    pending.future.set_exception(
                        PeerNotConnected(
                            f"the link to peer {short_id(peer)} that carried the call was lost"
                        )
                    )
            return
        self._buckets.pop(peer, None)
        lost = [p for p in self._pending.values() if p.peer == peer and not p.future.done()]
        for pending in lost:
            pending.future.set_exception(
                PeerNotConnected(f"link to peer {short_id(peer)} lost during the call")
            )
        for task in self._serving.get(peer, {}).values():
            task.cancel()

    async def close(self) -> None:
        """Fail every pending call, cancel every handler and ignore frames from now on."""
        if self._closed:
            return
        self._closed = True
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(RpcError("RPC endpoint closed"))
        tasks = [t for serving in self._serving.values() for t in serving.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stats(self) -> dict[str, int]:
        """Counters (calls, answers, timeouts, remote_errors, requests, served, refused_*,
        malformed, ...) and the gauges ``pending`` and ``serving``."""
        out = dict(self._stats)
        out["pending"] = len(self._pending)
        out["serving"] = sum(len(s) for s in self._serving.values())
        return out


def _error_frame(call_id: int, code: str, message: str) -> bytes:
    code = code[:MAX_CODE_CHARS] or INTERNAL
    return encode(ErrorReply(call_id, code, message[:MAX_ERROR_MESSAGE_CHARS]))
