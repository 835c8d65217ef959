"""Declaring application services: the base class, the method decorators, errors,
limits and the msgpack payload codec (see :mod:`dagrider.sdk.services`)."""

from __future__ import annotations

import contextvars
import inspect
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, TypeVar

import msgpack

from dagrider.sdk.errors import (
    DagriderError,
    InvalidArgument,
)
from p2p.rpc import RpcFailure

__all__ = [
    "WIRE_METHODS",
    "Service",
    "ServiceError",
    "ServiceLimits",
    "client_stream",
    "current_peer",
    "pack",
    "server_stream",
    "unary",
    "unpack",
]

WIRE_METHODS: Final = ("app.call", "app.open", "app.next", "app.push", "app.end", "app.cancel")
"""The RPC methods of application services on the shared channel (namespace ``app.``)."""
OVERLOADED: Final = "overloaded"
RATE_LIMITED: Final = "rate-limited"
BAD_REQUEST: Final = "bad-request"
UNKNOWN_SERVICE: Final = "unknown-service"
UNKNOWN_METHOD: Final = "unknown-method"
UNKNOWN_STREAM: Final = "unknown-stream"
TOO_MANY_STREAMS: Final = "too-many-streams"
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_KIND_ATTR: Final = "__dagrider_rpc_kind__"

Kind = Literal["unary", "server_stream", "client_stream"]
F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound="Service")

_peer: contextvars.ContextVar[bytes] = contextvars.ContextVar("dagrider_service_peer")


def current_peer() -> bytes:
    """Inside a service handler: the authenticated public key of the calling peer."""
    try:
        return _peer.get()
    except LookupError:
        raise DagriderError("current_peer() is only known inside a service handler") from None


def _mark(kind: Kind) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        if not inspect.iscoroutinefunction(fn) and not inspect.isasyncgenfunction(fn):
            raise TypeError(f"@{kind} needs an async def, got {fn!r}")
        if (kind == "server_stream") != inspect.isasyncgenfunction(fn):
            raise TypeError(f"@{kind} {fn.__name__}: server streams (only) are async generators")
        setattr(fn, _KIND_ATTR, kind)
        return fn

    return decorate


unary = _mark("unary")
"""Mark ``async def m(self, *args) -> result`` as a request/response method."""
server_stream = _mark("server_stream")
"""Mark ``async def m(self, *args) -> AsyncIterator[item]`` (a generator) as a method
that answers with a stream of items."""
client_stream = _mark("client_stream")
"""Mark ``async def m(self, items: AsyncIterator[item], *args) -> result`` as a method
that takes a stream of items from the caller and answers once."""


class ServiceError(Exception):
    """Raise in a handler to answer the caller with ``code`` (e.g. ``"not-found"``):
    the caller gets a :class:`~dagrider.RemoteError` with this code and message."""

    def __init__(self, code: str, message: str = "") -> None:
        if not _NAME.fullmatch(code) or len(code) > 32:
            raise ValueError(f"error code {code!r}: lowercase letters, digits, '-', '.', '_'")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Service:
    """Base class of an application service; set ``name`` (lowercase, 1..64 chars:
    letters, digits, ``.``, ``-``, ``_``) and mark methods with :func:`unary`,
    :func:`server_stream` or :func:`client_stream`."""

    name: ClassVar[str]


_METHODS: weakref.WeakKeyDictionary[type[Service], dict[str, Kind]] = weakref.WeakKeyDictionary()
"""Marked methods per service class, found once (a dict per class; never mutated)."""


def _methods(cls: type[Service]) -> dict[str, Kind]:
    cached = _METHODS.get(cls)
    if cached is not None:
        return cached
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument("service", f"{cls.__name__}.name={name!r} is not a valid name")
    out: dict[str, Kind] = {}
    for attr in dir(cls):
        kind = getattr(getattr(cls, attr, None), _KIND_ATTR, None)
        if kind is not None:
            if not _NAME.fullmatch(attr):
                raise InvalidArgument("service", f"method name {attr!r} is not a valid name")
            out[attr] = kind
    if not out:
        raise InvalidArgument("service", f"{cls.__name__} has no @unary/@server_stream/... method")
    _METHODS[cls] = out
    return out


@dataclass(frozen=True)
class ServiceLimits:
    """Limits of the application services of one node, per calling peer; beyond them a
    call is refused at once with ``rate-limited``, ``overloaded`` or
    ``too-many-streams`` rather than queued."""

    max_payload_bytes: int = 60 * 1024
    """Largest encoded argument list or result; a stream item at most half of it. It
    cannot exceed the shared channel's message size less 1 KiB (63 KiB)."""
    max_streams_per_peer: int = 32
    """Open streams (of both directions) one peer may hold at once."""
    stream_window: int = 64
    """Items a server stream's producer runs ahead of the reader / a client stream's
    queue holds before ``push`` waits."""
    requests_per_s: float = 200.0
    """Wire calls (each unary call, each stream batch) per second from one peer. The
    shared channel itself takes 500 requests per second per peer, DHT and application
    together; the default leaves the DHT at least 300 of them."""
    burst: float = 400.0
    max_inflight_per_peer: int = 32
    """Calls of one peer being handled at once."""

    def __post_init__(self) -> None:
        for name in (
            "max_payload_bytes",
            "max_streams_per_peer",
            "stream_window",
            "requests_per_s",
            "max_inflight_per_peer",
        ):
            if not getattr(self, name) > 0:
                raise InvalidArgument(name, "must be positive")
        if self.burst < 1:
            raise InvalidArgument("burst", "must be at least 1")


# -- payloads -------------------------------------------------------------------------


def pack(value: object) -> bytes:
    """msgpack of an argument or result; :class:`~dagrider.InvalidArgument` if it holds
    something msgpack cannot carry (objects, sets, non-string keys...)."""
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument("payload", f"not encodable as msgpack: {exc}") from None
    return data


def unpack(data: bytes, limit: int) -> Any:
    """Decode peer bytes strictly: plain msgpack only (no extension types, so never a
    code object or pickle), string map keys, bounded sizes; ``ValueError`` otherwise."""
    if len(data) > limit:
        raise ValueError(f"{len(data)} bytes exceeds {limit}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise ValueError(f"not valid msgpack ({type(exc).__name__})") from None


def _failure(code: str, message: str) -> RpcFailure:
    return RpcFailure(code, message[:400])
