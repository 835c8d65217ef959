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
trailing bytes). It never raises anything else, whatever the bytes, and renders peer
data in an error only as a short, cut ``short(...)``. ``decode_reply_view`` is a fast path
for the ``Reply`` layout ``encode`` writes that returns the body as a view into the frame
(large content answers are not copied); it recognises nothing ``decode`` would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final

import msgpack

from p2p.errors import WireDecodeError, short, short_keys

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


def _u64(value: object, name: str) -> int:
    if type(value) is not int:
        raise RpcDecodeError(name, f"expected an integer, got {type(value).__name__}")
    if not 0 <= value <= U64:
        raise RpcDecodeError(name, f"{value} out of range 0..{U64}")
    return value


def _u32(value: object, name: str) -> int:
    number = _u64(value, name)
    if number > U32:
        raise RpcDecodeError(name, f"{number} out of range 0..{U32}")
    return number


def _text(limit: int, *, empty: bool) -> Callable[[object, str], str]:
    def check(value: object, name: str) -> str:
        if type(value) is not str:
            raise RpcDecodeError(name, f"expected a string, got {type(value).__name__}")
        if len(value) > limit:
            raise RpcDecodeError(name, f"{len(value)} characters exceeds {limit}")
        if not empty and not value:
            raise RpcDecodeError(name, "must not be empty")
        return value

    return check


def _bytes(value: object, name: str) -> bytes:
    if type(value) is not bytes:
        raise RpcDecodeError(name, f"expected bytes, got {type(value).__name__}")
    return value


_CHECKS: Final[dict[str, Callable[[object, str], Any]]] = {
    "id": _u64,
    "method": _text(MAX_METHOD_CHARS, empty=False),
    "deadline_ms": _u32,
    "body": _bytes,
    "code": _text(MAX_CODE_CHARS, empty=False),
    "message": _text(MAX_ERROR_MESSAGE_CHARS, empty=True),
}
_TYPES: Final[dict[int, type[Any]]] = {cls.T: cls for cls in (Request, Reply, ErrorReply, Cancel)}
_FIELDS: Final[dict[int, tuple[str, ...]]] = {
    t: tuple(f.name for f in fields(cls)) for t, cls in _TYPES.items()
}


_REPLY_PREFIX: Final = b"\x84" + b"".join(
    msgpack.packb(x) for x in ("t", Reply.T, "v", VERSION, "id")
)
_BODY_KEY: Final = msgpack.packb("body")
_UINT_WIDTH: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN_WIDTH: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def encode(msg: RpcMessage) -> bytes:
    """The wire bytes of ``msg``; ``ValueError`` if a field is out of bounds (a caller bug)."""
    body: dict[str, object] = {"t": msg.T, "v": VERSION}
    for name in _FIELDS[msg.T]:
        value = getattr(msg, name)
        try:
            _CHECKS[name](value, name)
        except RpcDecodeError as exc:
            raise ValueError(f"{type(msg).__name__}.{exc}") from None
        body[name] = value
    if isinstance(msg, Reply) and len(msg.body) <= U32:
        # the bytes packb gives (a test checks), with one copy of a large body instead
        # of msgpack's growing buffer (profiled on the serving side of content fetches)
        head = _REPLY_PREFIX + msgpack.packb(msg.id) + _BODY_KEY + _bin_header(len(msg.body))
        return b"".join((head, msg.body))
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def decode(data: bytes | bytearray | memoryview, max_body: int) -> RpcMessage:
    """Parse one message whose body is at most ``max_body`` bytes, or raise ``RpcDecodeError``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RpcDecodeError("frame", f"expected bytes, got {type(data).__name__}")
    if len(data) > max_body + 1024:
        raise RpcDecodeError("frame", f"{len(data)} bytes exceeds {max_body + 1024}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=len(data),
            max_str_len=MAX_ERROR_MESSAGE_CHARS * 4,
            max_array_len=8,
            max_map_len=8,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise RpcDecodeError("frame", "trailing bytes after message") from None
    except (ValueError, TypeError, BufferError, msgpack.UnpackException, RecursionError) as exc:
        raise RpcDecodeError("frame", f"not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise RpcDecodeError("frame", f"expected a map, got {type(obj).__name__}")
    t = obj.get("t")
    if type(t) is not int:
        raise RpcDecodeError("t", f"expected an integer, got {type(t).__name__}")
    if type(obj.get("v")) is not int or obj.get("v") != VERSION:
        raise RpcDecodeError("v", f"unsupported version {short(obj.get('v'))}")
    cls = _TYPES.get(t)
    if cls is None:
        raise RpcDecodeError("t", f"unknown message type {t}")
    names = _FIELDS[t]
    keys = obj.keys() - {"t", "v"}
    if keys != set(names):
        extra = short_keys(keys - set(names))
        missing = sorted(set(names) - keys)
        raise RpcDecodeError("fields", f"{cls.__name__}: unexpected {extra} / missing {missing}")
    values = {n: _CHECKS[n](obj[n], n) for n in names}
    if "body" in values and len(values["body"]) > max_body:
        raise RpcDecodeError("body", f"{len(values['body'])} bytes exceeds {max_body}")
    msg: RpcMessage = cls(**values)
    return msg


def decode_reply_view(
    data: bytes | bytearray | memoryview, max_body: int
) -> tuple[int, memoryview] | None:
    """``(id, view of the body inside data)`` if ``data`` is a ``Reply`` in the layout
    ``encode`` writes, else None (the caller then uses ``decode``, which accepts or
    rejects it with the reason). Never raises; a memoryview is always left to ``decode``.

    Everything recognised here is a message ``decode`` accepts as the same ``Reply``;
    the body is not copied out of the frame (profiled: copying 1 MiB content answers
    out of their frames was a visible part of a fetch).
    """
    if not isinstance(data, bytes | bytearray):  # a view: let ``decode`` judge it
        return None
    size = len(data)
    if size > max_body + 1024 or not data.startswith(_REPLY_PREFIX):
        return None
    pos = len(_REPLY_PREFIX)
    first = data[pos] if pos < size else -1
    if 0 <= first < 0x80:
        call_id, pos = first, pos + 1
    elif first in _UINT_WIDTH:
        width = _UINT_WIDTH[first]
        if pos + 1 + width > size:
            return None
        call_id = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
        pos += 1 + width
    else:
        return None
    if not data.startswith(_BODY_KEY, pos):
        return None
    pos += len(_BODY_KEY)
    width = _BIN_WIDTH.get(data[pos] if pos < size else -1, -1)
    if width < 0:
        return None
    length = size - pos - 1 - width
    if not 0 <= length <= min(max_body, U32) or not data.startswith(_bin_header(length), pos):
        return None
    return call_id, memoryview(data)[size - length :]
