"""Wire types of the content channel and their strict msgpack codec.

The content layer speaks request/response over ``p2p.rpc`` on frame kind
``FrameKind.CONTENT``; the RPC layer carries a method name and an opaque body, and the
bodies are these messages:

========================  ====================  =====================================
method                    request               answer
========================  ====================  =====================================
``METHOD_MANIFEST``       ``GetManifest``       ``ManifestPage`` (manifest + leaves)
``METHOD_CHUNK``          ``GetChunk``          ``ChunkData``
``METHOD_HAVE``           ``Have``              ``HaveReply``
========================  ====================  =====================================

The leaf list is paged (``MAX_PAGE_LEAVES`` leaves, 1 MiB, per answer) so that a large
blob's listing never needs a huge frame; the fetcher asks page after page from
``start = 0`` until it holds ``manifest.chunk_count`` leaves. A server that cannot answer
raises ``RpcFailure`` with one of the ``ERR_*`` codes.

Envelope: the project's ``{t: type, v: version, ...fields}``; the decoder takes exactly
the fields of the type, checks every type and bound, and raises ``ContentDecodeError``
naming the field for anything else (unknown type, missing or extra field, wrong type,
oversize, trailing bytes). It never raises anything else, whatever the bytes, and
renders peer data in an error only as a short, cut ``short(...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, TypeVar

import msgpack

from p2p.content.manifest import (
    CID_BYTES,
    HASH_BYTES,
    MAX_CHUNK_SIZE,
    Manifest,
    ManifestError,
    decode_manifest,
)
from p2p.errors import WireDecodeError, short, short_keys

VERSION: Final = 1
METHOD_MANIFEST: Final = "content.manifest"
METHOD_CHUNK: Final = "content.chunk"
METHOD_HAVE: Final = "content.have"

ERR_NOT_FOUND: Final = "not-found"
"""The server holds no complete blob under this CID."""
ERR_MALFORMED: Final = "malformed"
"""The request body did not decode (or was the wrong message for the method)."""
ERR_BAD_INDEX: Final = "bad-index"
"""A chunk index or page start outside the blob."""

MAX_PAGE_LEAVES: Final = 32 * 1024
"""Leaves per ``ManifestPage``: 1 MiB of hashes, 32 GiB of blob at 1 MiB chunks."""
MAX_INDEX: Final = 2**32 - 1
MAX_MESSAGE_BYTES: Final = MAX_CHUNK_SIZE + 1024


class ContentDecodeError(WireDecodeError):
    """Bytes from a peer are not a valid content message; ``field`` names what was wrong."""


@dataclass(frozen=True)
class GetManifest:
    """Ask for the manifest of ``cid`` and the leaves from index ``start`` on."""

    T: ClassVar[int] = 1
    cid: bytes
    start: int = 0


@dataclass(frozen=True)
class ManifestPage:
    """The manifest and leaves ``[start, start + len(leaves) / 32)`` of the listing."""

    T: ClassVar[int] = 2
    manifest: Manifest
    start: int
    leaves: bytes


@dataclass(frozen=True)
class GetChunk:
    """Ask for chunk ``index`` of ``cid``."""

    T: ClassVar[int] = 3
    cid: bytes
    index: int


@dataclass(frozen=True)
class ChunkData:
    """The bytes of chunk ``index`` (unverified: the fetcher checks them against the leaf)."""

    T: ClassVar[int] = 4
    index: int
    data: bytes


@dataclass(frozen=True)
class Have:
    """Ask whether the peer holds the complete blob ``cid``."""

    T: ClassVar[int] = 5
    cid: bytes


@dataclass(frozen=True)
class HaveReply:
    T: ClassVar[int] = 6
    have: bool


ContentMessage = GetManifest | ManifestPage | GetChunk | ChunkData | Have | HaveReply

# -- field codecs ------------------------------------------------------------------------


def _index(value: object, name: str) -> int:
    if type(value) is not int:
        raise ContentDecodeError(name, f"expected an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_INDEX:
        raise ContentDecodeError(name, f"{value} out of range 0..{MAX_INDEX}")
    return value


def _cid(value: object, name: str) -> bytes:
    if type(value) is not bytes or len(value) != CID_BYTES:
        raise ContentDecodeError(name, f"expected {CID_BYTES} bytes")
    return value


def _manifest(value: object, name: str) -> Manifest:
    if isinstance(value, Manifest):  # encode side
        return value
    if type(value) is not bytes:
        raise ContentDecodeError(name, "expected bytes")
    try:
        return decode_manifest(value)
    except ManifestError as exc:
        raise ContentDecodeError(name, str(exc)) from None


def _leaves(value: object, name: str) -> bytes:
    if type(value) is not bytes:
        raise ContentDecodeError(name, "expected bytes")
    if len(value) % HASH_BYTES:
        raise ContentDecodeError(name, f"{len(value)} bytes is not a whole number of leaves")
    if len(value) > MAX_PAGE_LEAVES * HASH_BYTES:
        raise ContentDecodeError(name, f"more than {MAX_PAGE_LEAVES} leaves in one page")
    return value


def _data(value: object, name: str) -> bytes:
    if type(value) is not bytes:
        raise ContentDecodeError(name, "expected bytes")
    if len(value) > MAX_CHUNK_SIZE:
        raise ContentDecodeError(name, f"{len(value)} bytes exceeds {MAX_CHUNK_SIZE}")
    return value


def _bool(value: object, name: str) -> bool:
    if type(value) is not bool:
        raise ContentDecodeError(name, f"expected a boolean, got {type(value).__name__}")
    return value


_Check = Callable[[object, str], Any]
_CHECKS: Final[dict[str, _Check]] = {
    "cid": _cid,
    "start": _index,
    "index": _index,
    "manifest": _manifest,
    "leaves": _leaves,
    "data": _data,
    "have": _bool,
}
_TYPES: Final[dict[int, type[Any]]] = {
    cls.T: cls for cls in (GetManifest, ManifestPage, GetChunk, ChunkData, Have, HaveReply)
}
_FIELDS: Final[dict[int, tuple[str, ...]]] = {
    t: tuple(f.name for f in fields(cls)) for t, cls in _TYPES.items()
}


def _bin_header(n: int) -> bytes:
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


_CHUNK_PREFIX: Final = b"".join(
    [b"\x84", *(msgpack.packb(x) for x in ("t", ChunkData.T, "v", VERSION, "index"))]
)
_DATA_KEY: Final = msgpack.packb("data")


def _encode_chunk(msg: ChunkData) -> bytes:
    """``ChunkData`` without msgpack's growing buffer: the same bytes as ``packb`` gives
    (a test checks), with one copy of the chunk instead of several (profiled: ``packb``
    of 1 MiB chunks was the largest item of the serving path after TLS)."""
    _index(msg.index, "index")
    _data(msg.data, "data")
    head = _CHUNK_PREFIX + msgpack.packb(msg.index) + _DATA_KEY + _bin_header(len(msg.data))
    return b"".join((head, msg.data))


def encode(msg: ContentMessage) -> bytes:
    """The wire bytes of ``msg``; ``ValueError`` if a field is out of bounds (a caller bug)."""
    if isinstance(msg, ChunkData):
        try:
            return _encode_chunk(msg)
        except ContentDecodeError as exc:
            raise ValueError(f"ChunkData.{exc}") from None
    body: dict[str, object] = {"t": msg.T, "v": VERSION}
    for name in _FIELDS[msg.T]:
        value = getattr(msg, name)
        try:
            _CHECKS[name](value, name)
        except ContentDecodeError as exc:
            raise ValueError(f"{type(msg).__name__}.{exc}") from None
        body[name] = value.encode() if isinstance(value, Manifest) else value
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def decode(data: bytes | memoryview) -> ContentMessage:
    """Parse one message, or raise ``ContentDecodeError`` naming the offending field."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ContentDecodeError("frame", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ContentDecodeError("frame", f"{len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_CHUNK_SIZE + 1,
            max_str_len=16,
            max_array_len=0,
            max_map_len=8,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise ContentDecodeError("frame", "trailing bytes after message") from None
    except (ValueError, TypeError, BufferError, msgpack.UnpackException, RecursionError) as exc:
        raise ContentDecodeError("frame", f"not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ContentDecodeError("frame", f"expected a map, got {type(obj).__name__}")
    t = obj.get("t")
    if type(t) is not int:
        raise ContentDecodeError("t", f"expected an integer, got {type(t).__name__}")
    if type(obj.get("v")) is not int or obj.get("v") != VERSION:
        raise ContentDecodeError("v", f"unsupported version {short(obj.get('v'))}")
    cls = _TYPES.get(t)
    if cls is None:
        raise ContentDecodeError("t", f"unknown message type {t}")
    names = _FIELDS[t]
    keys = obj.keys() - {"t", "v"}
    if keys != set(names):
        extra = short_keys(keys - set(names))
        missing = sorted(set(names) - keys)
        raise ContentDecodeError(
            "fields", f"{cls.__name__}: unexpected {extra} / missing {missing}"
        )
    msg: ContentMessage = cls(**{n: _CHECKS[n](obj[n], n) for n in names})
    return msg


_UINT_FORMS: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4}
_BIN_WIDTH: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def decode_chunk(data: bytes | memoryview) -> tuple[int, memoryview]:
    """``decode_as(data, ChunkData)`` as ``(index, view of the chunk bytes inside data)``.

    The chunk is not copied out of ``data`` (profiled: copying 1 MiB chunks out of each
    answer was a visible part of a fetch). The layout ``encode`` writes is recognised
    directly; anything else (another key order, a wider integer form, any error) goes
    through ``decode_as``, so exactly the same messages are accepted and rejected.
    """
    size = len(data)
    pos = len(_CHUNK_PREFIX)
    head = bytes(data[: pos + 5 + len(_DATA_KEY) + 5])
    flat = not isinstance(data, memoryview) or (data.itemsize == 1 and data.c_contiguous)
    if flat and size <= MAX_MESSAGE_BYTES and head.startswith(_CHUNK_PREFIX):
        first = head[pos] if len(head) > pos else -1
        index = -1
        if 0 <= first < 0x80:
            index, pos = first, pos + 1
        elif first in _UINT_FORMS:
            width = _UINT_FORMS[first]
            if pos + 1 + width <= len(head):
                index = int.from_bytes(head[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        if index >= 0 and head.startswith(_DATA_KEY, pos):
            pos += len(_DATA_KEY)
            width = _BIN_WIDTH.get(head[pos] if pos < len(head) else -1, -1)
            length = size - pos - 1 - width if width >= 0 else -1
            if 0 <= length <= MAX_CHUNK_SIZE and head.startswith(_bin_header(length), pos):
                return index, memoryview(data)[size - length :]
    msg = decode_as(data, ChunkData)
    return msg.index, memoryview(msg.data)


M = TypeVar("M", GetManifest, ManifestPage, GetChunk, ChunkData, Have, HaveReply)


def decode_as(data: bytes | memoryview, cls: type[M]) -> M:
    """``decode`` and insist on one message type (``ContentDecodeError`` on field ``t``)."""
    msg = decode(data)
    if not isinstance(msg, cls):
        raise ContentDecodeError("t", f"expected {cls.__name__}, got {type(msg).__name__}")
    return msg
