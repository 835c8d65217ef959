"""Declaring application services: the base class, the method decorators, errors,
limits and the wire codec of their bodies (see :mod:`dagrider.sdk.services`).

Bodies from a peer are decoded by the shared strict envelope (:mod:`p2p.strictwire`),
as every other codec of the project: limits on the frame, on every string, binary,
array and map, and on nesting; then one schema per wire method (``app.call`` takes
``[target, args, kwargs]``...). A body that does not fit is a :class:`BodyError`
naming the part that was wrong (``frame``, ``target.service``, ``kwargs``,
``deadline_ms``...), and the error text quotes at most
:data:`~p2p.strictwire.VALUE_CHARS` characters of the peer's value, so one bad call
never makes a long log line or error answer.
"""

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
from p2p import strictwire
from p2p.rpc import RpcFailure
from p2p.strictwire import Invalid, Limits, cut, describe, integer, text

__all__ = [
    "VALUE_DEPTH",
    "WIRE_METHODS",
    "BodyError",
    "Request",
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


# -- payloads and bodies -----------------------------------------------------------------

VALUE_DEPTH: Final = 32
"""Deepest nesting of one argument, result or stream item (each list or map is a level).
A deeper value is refused before any handler sees it: 60 KiB of nested lists would
otherwise hand a handler (or its ``json.dumps``, its ``repr``) a thousand levels."""
_BODY_LEVELS: Final = 2  # the body's own list, and the args, kwargs or items around a value
NAME_CHARS: Final = 64
"""Longest service, method or keyword-argument name a body may carry."""
_SHAPES: Final = {
    "app.call": ("target", "args", "kwargs"),
    "app.open": ("target", "args", "kwargs", "deadline_ms"),
    "app.next": ("stream",),
    "app.push": ("stream", "items"),
    "app.end": ("stream",),
    "app.cancel": ("stream",),
}
"""The body of each wire method: a list of these parts, in this order."""
_STREAM_ID = integer(1, 2**63 - 1)
_DEADLINE_MS = integer(0, 2**64 - 1)
_NAME_TEXT = text(NAME_CHARS, empty=False)


class BodyError(ValueError):
    """A body, argument or result that is not what its wire method takes. ``field``
    names the part (``frame``, ``target.method``, ``kwargs``, ``items``...); the
    ``detail`` quotes at most :data:`~p2p.strictwire.VALUE_CHARS` characters of the
    peer's value and is at most :data:`~p2p.strictwire.DETAIL_CHARS` long."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        self.detail = cut(detail)
        super().__init__(f"{field}: {self.detail}")


@dataclass(frozen=True)
class Request:
    """A decoded ``app.call`` or ``app.open`` body (``deadline_ms`` only for ``open``)."""

    service: str
    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    deadline_ms: int | None = None


def pack(value: object) -> bytes:
    """msgpack of an argument or result; :class:`~dagrider.InvalidArgument` if it holds
    something msgpack cannot carry (objects, sets, non-string keys...)."""
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument("payload", f"not encodable as msgpack: {exc}") from None
    return data


def _limits(limit: int, depth: int) -> Limits:
    return Limits(
        max_frame=limit,
        max_bin=limit,
        max_str=limit,
        max_array=limit,
        max_map=limit,
        max_depth=depth,
    )


def unpack(data: bytes, limit: int) -> Any:
    """One argument list, result or stream item from a peer, strictly: plain msgpack
    only (no extension types, so never a code object or pickle), str or bytes map
    keys, at most ``limit`` bytes and :data:`VALUE_DEPTH` levels, nothing after the
    value; :class:`BodyError` (a ``ValueError``) naming what was wrong otherwise."""
    return strictwire.unpack(data, BodyError, _limits(limit, VALUE_DEPTH))


def _body(data: bytes, limit: int, method: str) -> list[Any]:
    """The parts of a ``method`` body (see ``_SHAPES``), unpacked with limits."""
    obj = strictwire.unpack(data, BodyError, _limits(limit, VALUE_DEPTH + _BODY_LEVELS))
    parts = _SHAPES[method]
    if type(obj) is not list or len(obj) != len(parts):
        shape = ", ".join(parts)
        raise BodyError("frame", f"{method} takes [{shape}], got {describe(obj)}")
    return obj


def _kwargs(value: object, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise Invalid(name, f"expected a map, got {type(value).__name__}")
    for key in value:
        if type(key) is not str or not key.isidentifier() or len(key) > NAME_CHARS:
            raise Invalid(name, f"key {describe(key)} is not a keyword name")
    return value


def _list(value: object, name: str) -> list[Any]:
    if type(value) is not list:
        raise Invalid(name, f"expected an array, got {type(value).__name__}")
    return value


def decode_request(data: bytes, limit: int, method: str) -> Request:
    """An ``app.call`` or ``app.open`` body: ``[[service, method], args, kwargs]``,
    and ``deadline_ms`` last for ``open``. :class:`BodyError` naming the part."""
    m = _body(data, limit, method)
    try:
        target = _list(m[0], "target")
        if len(target) != 2:
            raise Invalid("target", f"expected [service, method], got {len(target)} items")
        service = _NAME_TEXT(target[0], "target.service")
        name = _NAME_TEXT(target[1], "target.method")
        args = _list(m[1], "args")
        kwargs = _kwargs(m[2], "kwargs")
        deadline = _DEADLINE_MS(m[3], "deadline_ms") if len(m) == 4 else None
    except Invalid as exc:
        raise BodyError(exc.field, exc.detail) from None
    return Request(service, name, args, kwargs, deadline)


def decode_stream(data: bytes, limit: int, method: str) -> int:
    """The stream id of an ``app.next``, ``app.end`` or ``app.cancel`` body."""
    m = _body(data, limit, method)
    try:
        return int(_STREAM_ID(m[0], "stream"))
    except Invalid as exc:
        raise BodyError(exc.field, exc.detail) from None


def decode_push(data: bytes, limit: int) -> tuple[int, list[Any]]:
    """An ``app.push`` body: ``[stream, items]``."""
    m = _body(data, limit, "app.push")
    try:
        return int(_STREAM_ID(m[0], "stream")), _list(m[1], "items")
    except Invalid as exc:
        raise BodyError(exc.field, exc.detail) from None


def decode_opened(data: bytes, limit: int) -> int:
    """The answer to ``app.open``: the new stream's id."""
    obj = strictwire.unpack(data, BodyError, _limits(limit, 1))
    try:
        return int(_STREAM_ID(obj, "stream"))
    except Invalid as exc:
        raise BodyError(exc.field, exc.detail) from None


def decode_batch(data: bytes, limit: int) -> tuple[list[bytes], bool]:
    """The answer to ``app.next``: ``[items, done]``, each item an encoded value (bin)
    the caller unpacks with :func:`unpack` as it yields it."""
    obj = strictwire.unpack(data, BodyError, _limits(limit, 2))
    try:
        m = _list(obj, "batch")
        if len(m) != 2:
            raise Invalid("batch", f"expected [items, done], got {len(m)} items")
        items = _list(m[0], "items")
        for i, item in enumerate(items):
            if type(item) is not bytes:
                raise Invalid(f"items[{i}]", f"expected bytes, got {type(item).__name__}")
        done = strictwire.boolean(m[1], "done")
    except Invalid as exc:
        raise BodyError(exc.field, exc.detail) from None
    return items, done


def _failure(code: str, message: str) -> RpcFailure:
    return RpcFailure(code, message[:400])
