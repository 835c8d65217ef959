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
quotes peer data in an error only through ``p2p.strictwire.describe`` (at most 100
characters).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Final, TypeVar

from p2p.content.manifest import (
    CID_BYTES,
    HASH_BYTES,
    MAX_CHUNK_SIZE,
    Manifest,
    ManifestError,
    decode_manifest,
)
from p2p.errors import WireDecodeError
from p2p.strictwire import (
    BinTail,
    Check,
    Invalid,
    Limits,
    MapEnvelope,
    binary,
    boolean,
    dataclass_kind,
    integer,
)

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

# -- field checks ------------------------------------------------------------------------


def _manifest(value: object, name: str) -> Manifest:
    if type(value) is not bytes:
        raise Invalid(name, f"expected bytes, got {type(value).__name__}")
    try:
        return decode_manifest(value)
    except ManifestError as exc:
        raise Invalid(name, str(exc)) from None


def _leaves(value: object, name: str) -> bytes:
    if type(value) is not bytes:
        raise Invalid(name, f"expected bytes, got {type(value).__name__}")
    if len(value) % HASH_BYTES:
        raise Invalid(name, f"{len(value)} bytes is not a whole number of leaves")
    if len(value) > MAX_PAGE_LEAVES * HASH_BYTES:
        raise Invalid(name, f"more than {MAX_PAGE_LEAVES} leaves in one page")
    return value


_index = integer(0, MAX_INDEX)
_data = binary(top=MAX_CHUNK_SIZE)
_CHECKS: Final[dict[str, Check]] = {
    "cid": binary(CID_BYTES),
    "start": _index,
    "index": _index,
    "manifest": _manifest,
    "leaves": _leaves,
    "data": _data,
    "have": boolean,
}
_ENVELOPE: Final = MapEnvelope[ContentMessage](
    ContentDecodeError,
    VERSION,
    (
        dataclass_kind(cls, _CHECKS)
        for cls in (GetManifest, ManifestPage, GetChunk, ChunkData, Have, HaveReply)
    ),
    Limits(
        max_frame=MAX_MESSAGE_BYTES,
        max_bin=MAX_CHUNK_SIZE + 1,
        max_str=16,
        max_array=0,
        max_map=8,
        max_depth=1,
    ),
)
_CHUNK: Final = BinTail(ChunkData.T, VERSION, "index", "data")
"""``ChunkData`` without copies: ``packb``'s bytes with one copy of the chunk instead of
several (profiled: ``packb`` of 1 MiB chunks was the largest item of the serving path
after TLS), and read back as a view (copying 1 MiB chunks out of each answer was a
visible part of a fetch)."""


def encode(msg: ContentMessage) -> bytes:
    """The wire bytes of ``msg``; ``ValueError`` if a field is out of bounds (a caller bug)."""
    if isinstance(msg, ChunkData):
        try:
            return _CHUNK.encode(_index(msg.index, "index"), _data(msg.data, "data"))
        except Invalid as exc:
            raise ValueError(f"ChunkData.{exc}") from None
    values = [getattr(msg, f.name) for f in fields(msg)]
    return _ENVELOPE.encode(msg.T, [v.encode() if isinstance(v, Manifest) else v for v in values])


def decode(data: bytes | memoryview) -> ContentMessage:
    """Parse one message, or raise ``ContentDecodeError`` naming the offending field."""
    return _ENVELOPE.decode(data)


def decode_chunk(data: bytes | memoryview) -> tuple[int, memoryview]:
    """``decode_as(data, ChunkData)`` as ``(index, view of the chunk bytes inside data)``.

    The layout ``encode`` writes is recognised directly (``p2p.strictwire.BinTail``) and the
    chunk is not copied out of ``data``; anything else (another key order, any error)
    goes through ``decode_as``, so exactly the same messages are accepted and rejected.
    """
    fast = _CHUNK.view(data, MAX_INDEX, MAX_CHUNK_SIZE)
    if fast is not None:
        return fast
    msg = decode_as(data, ChunkData)
    return msg.index, memoryview(msg.data)


M = TypeVar("M", GetManifest, ManifestPage, GetChunk, ChunkData, Have, HaveReply)


def decode_as(data: bytes | memoryview, cls: type[M]) -> M:
    """``decode`` and insist on one message type (``ContentDecodeError`` on field ``t``)."""
    msg = decode(data)
    if not isinstance(msg, cls):
        raise ContentDecodeError("t", f"expected {cls.__name__}, got {type(msg).__name__}")
    return msg
