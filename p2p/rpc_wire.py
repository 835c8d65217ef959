"""Wire types of the request/response RPC and their strict msgpack codec (pure).

``p2p.rpc`` multiplexes many concurrent calls over one application channel of a peer
link. Four messages travel on it, in the project's usual envelope
``{t: type, v: version, ...fields}``:

- ``Request(id, method, deadline_ms, body)``: the deadline travels as the *remaining*
  milliseconds (peers' clocks differ), so the server can stop working when the caller
  has given up;
- ``Reply(id, body)`` and ``ErrorReply(id, code, message)`` answer it;
- ``Cancel(id)``: the caller gave up early; the server cancels the handler.

Ids are chosen by the caller and are unique per (caller, direction). The decoder takes
exactly the fields of the type and raises ``RpcDecodeError`` naming the field for
anything else (unknown type or version, missing or extra field, wrong type, oversize,
trailing bytes). It never raises anything else, whatever the bytes, and quotes peer
data in an error only through ``p2p.strictwire.describe`` (at most 100 characters).
``decode_reply_view`` is a fast path for the ``Reply`` layout ``encode`` writes that
returns the body as a view into the frame (large content answers are not copied; the
layout is ``p2p.strictwire.BinTail``, shared with content chunks); it recognises nothing
``decode`` would refuse.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, fields
from typing import ClassVar, Final

from p2p.errors import WireDecodeError
from p2p.strictwire import (
    BinTail,
    Check,
    Invalid,
    Limits,
    MapEnvelope,
    binary,
    dataclass_kind,
    integer,
    text,
)

VERSION: Final = 1
MAX_METHOD_CHARS: Final = 32
MAX_CODE_CHARS: Final = 32
MAX_ERROR_MESSAGE_CHARS: Final = 512
U32: Final = 2**32 - 1
U64: Final = 2**64 - 1


class RpcDecodeError(WireDecodeError):
    """Bytes from a peer are not a valid RPC message; ``field`` names what was wrong."""


@dataclass(frozen=True)
class Request:
    """Call ``method`` with ``body``; the caller waits at most ``deadline_ms`` from now."""

    T: ClassVar[int] = 1
    id: int
    method: str
    deadline_ms: int
    body: bytes


@dataclass(frozen=True)
class Reply:
    """The handler's answer to request ``id``."""

    T: ClassVar[int] = 2
    id: int
    body: bytes


@dataclass(frozen=True)
class ErrorReply:
    """Request ``id`` failed: ``code`` is machine-readable (``"overloaded"``, ...)."""

    T: ClassVar[int] = 3
    id: int
    code: str
    message: str


@dataclass(frozen=True)
class Cancel:
    """The caller of request ``id`` no longer waits for the answer."""

    T: ClassVar[int] = 4
    id: int


RpcMessage = Request | Reply | ErrorReply | Cancel

_CHECKS: Final[dict[str, Check]] = {
    "id": integer(0, U64),
    "method": text(MAX_METHOD_CHARS, empty=False),
    "deadline_ms": integer(0, U32),
    "body": binary(),
    "code": text(MAX_CODE_CHARS, empty=False),
    "message": text(MAX_ERROR_MESSAGE_CHARS),
}
_ENVELOPE: Final = MapEnvelope[RpcMessage](
    RpcDecodeError,
    VERSION,
    (dataclass_kind(cls, _CHECKS) for cls in (Request, Reply, ErrorReply, Cancel)),
    Limits(
        max_frame=1024,  # per call: see _limits
        max_bin=0,
        max_str=MAX_ERROR_MESSAGE_CHARS * 4,
        max_array=8,
        max_map=8,
        max_depth=1,
    ),
)
_REPLY: Final = BinTail(Reply.T, VERSION, "id", "body")
"""``Reply`` without copies: ``packb``'s bytes with one copy of a large body instead of
msgpack's growing buffer (profiled on the serving side of content fetches), and read
back as a view into the frame."""


def encode(msg: RpcMessage) -> bytes:
    """The wire bytes of ``msg``; ``ValueError`` if a field is out of bounds (a caller bug)."""
    if isinstance(msg, Reply) and len(msg.body) <= U32:
        try:
            return _REPLY.encode(_CHECKS["id"](msg.id, "id"), _CHECKS["body"](msg.body, "body"))
        except Invalid as exc:
            raise ValueError(f"Reply.{exc}") from None
    return _ENVELOPE.encode(msg.T, [getattr(msg, f.name) for f in fields(msg)])


@functools.lru_cache(maxsize=8)
def _limits(max_body: int) -> Limits:
    return dataclasses.replace(_ENVELOPE.limits, max_frame=max_body + 1024, max_bin=max_body + 1)


def decode(data: bytes | bytearray | memoryview, max_body: int) -> RpcMessage:
    """Parse one message whose body is at most ``max_body`` bytes, or raise ``RpcDecodeError``."""
    msg = _ENVELOPE.decode(data, _limits(max_body))
    if isinstance(msg, Request | Reply) and len(msg.body) > max_body:
        raise RpcDecodeError("body", f"{len(msg.body)} bytes exceeds {max_body}")
    return msg


def decode_reply_view(
    data: bytes | bytearray | memoryview, max_body: int
) -> tuple[int, memoryview] | None:
    """``(id, view of the body inside data)`` if ``data`` is a ``Reply`` in the layout
    ``encode`` writes, else None (the caller then uses ``decode``, which accepts or
    rejects it with the reason). Never raises.

    Everything recognised here is a message ``decode`` accepts as the same ``Reply``;
    the body is not copied out of the frame (profiled: copying 1 MiB content answers
    out of their frames was a visible part of a fetch).
    """
    return _REPLY.view(data, U64, max_body)
