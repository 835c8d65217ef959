"""Content ids: chunking, the Merkle tree over chunk hashes, the manifest and its CID.

A blob is cut into fixed-size chunks (the last one may be shorter; an empty blob has no
chunk). Each chunk is hashed into a *leaf*; the leaves are combined into a binary Merkle
tree whose root goes into a small fixed-layout ``Manifest``; the content id (CID) is the
hash of the manifest's canonical bytes. So a CID commits to the size, the chunk size and
every byte of the blob, and a fetcher that holds the CID can check, before it trusts
anything a provider says:

1. ``H(manifest) == cid`` (the manifest is the one named by the CID);
2. ``len(leaves) == ceil(size / chunk_size)`` and ``merkle(leaves) == root``;
3. for each chunk as it arrives, ``leaf(chunk) == leaves[i]`` (and its exact length),

which is what ``verify_listing`` and ``verify_chunk`` do. The full leaf list (32 bytes per
chunk: 2 MiB for a 64 GiB blob in 1 MiB chunks) is sent once, so that each chunk can be
checked on its own without per-chunk proofs.

Hash: SHA-256 (``hashlib``), with a distinct domain tag for leaves, inner nodes, the
empty tree and the CID so that no value of one kind can be passed off as another (a
leaf can never equal an inner node: the second-preimage trick against Merkle trees). It
measured ~1.4 GB/s here against ~0.5 GB/s for BLAKE2b (SHA extensions), and it is the
hash every platform accelerates.

Odd nodes: at each level, when the number of nodes is odd, the last node is *promoted*
unchanged to the next level (it is not duplicated: duplicating the last node makes
``[a, b, c]`` and ``[a, b, c, c]`` share a root, a known malleability). Pairing is
always left to right: level ``k+1`` is ``node(n0, n1), node(n2, n3), ...`` followed by
the promoted last node if any. The root of one leaf is the leaf itself; the root of zero
leaves is ``H(EMPTY_TAG)``. The number of leaves is fixed by the manifest, so the shape
of the tree is never ambiguous.

Manifest bytes (49, big-endian): ``b"DRCM" | version u8 | size u64 | chunk_size u32 |
root 32``. Fixed layout rather than msgpack: one value has exactly one encoding, which
the CID needs. CID text: 64 lowercase hex characters (URL-safe, copy-paste friendly,
trivially canonical).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from p2p.errors import P2PError

HASH_BYTES: Final = 32
CID_BYTES: Final = 32
MANIFEST_VERSION: Final = 1
MIN_CHUNK_SIZE: Final = 64 * 1024
MAX_CHUNK_SIZE: Final = 4 * 1024 * 1024
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
MAX_BLOB_SIZE: Final = 2**40
"""Protocol-level ceiling (1 TiB); nodes configure a lower one (``max_blob_size``)."""

LEAF_TAG: Final = b"dagrider/content/leaf/v1\x00"
NODE_TAG: Final = b"dagrider/content/node/v1\x00"
EMPTY_TAG: Final = b"dagrider/content/empty/v1\x00"
CID_TAG: Final = b"dagrider/content/cid/v1\x00"
_MAGIC: Final = b"DRCM"
_LAYOUT: Final = struct.Struct(">4sBQI32s")
MANIFEST_BYTES: Final = _LAYOUT.size

_LEAF_STATE: Final = hashlib.sha256(LEAF_TAG)
_NODE_STATE: Final = hashlib.sha256(NODE_TAG)
EMPTY_ROOT: Final = hashlib.sha256(EMPTY_TAG).digest()


class ManifestError(P2PError, ValueError):
    """A manifest, leaf list or CID is malformed or does not match; ``field`` says which."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class CidTextError(ManifestError):
    """Text that is not a CID (wrong length, not lowercase hex)."""

    def __init__(self, detail: str) -> None:
        super().__init__("cid", detail)


def check_chunk_size(chunk_size: int) -> int:
    """``chunk_size`` if it is a power of two in [64 KiB, 4 MiB], else ``ManifestError``."""
    if type(chunk_size) is not int or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ManifestError(
            "chunk_size", f"{chunk_size!r} not in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"
        )
    if chunk_size & (chunk_size - 1):
        raise ManifestError("chunk_size", f"{chunk_size} is not a power of two")
    return chunk_size


def chunk_count(size: int, chunk_size: int) -> int:
    """``ceil(size / chunk_size)``: the number of chunks (and leaves) of a blob."""
    return -(-size // chunk_size)


def leaf_hash(chunk: bytes | bytearray | memoryview) -> bytes:
    """The leaf of one chunk: ``H(LEAF_TAG || chunk)`` (no copy of the chunk)."""
    h = _LEAF_STATE.copy()
    h.update(chunk)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An inner node: ``H(NODE_TAG || left || right)``."""
    h = _NODE_STATE.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def merkle_root(leaves: bytes) -> bytes:
    """The root over ``leaves`` (concatenated 32-byte leaf hashes); see the module doc."""
    if len(leaves) % HASH_BYTES:
        raise ManifestError("leaves", f"{len(leaves)} bytes is not a multiple of {HASH_BYTES}")
    level = [leaves[i : i + HASH_BYTES] for i in range(0, len(leaves), HASH_BYTES)]
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])  # odd node promoted unchanged
        level = nxt
    return level[0]


def leaf_at(leaves: bytes, index: int) -> bytes:
    """The ``index``-th 32-byte leaf of a concatenated leaf list."""
    return leaves[index * HASH_BYTES : (index + 1) * HASH_BYTES]


@dataclass(frozen=True)
class Manifest:
    """What a CID names: version, blob size, chunk size and Merkle root of the chunks.

    Construction validates every field, so a ``Manifest`` in hand is always well formed
    (a decoded one too). ``size`` is bounded by ``MAX_BLOB_SIZE``; nodes apply a lower,
    configured limit on what they accept to fetch or store.
    """

    version: int
    size: int
    chunk_size: int
    root: bytes

    def __post_init__(self) -> None:
        if self.version != MANIFEST_VERSION:
            raise ManifestError("version", f"unsupported manifest version {self.version!r}")
        if type(self.size) is not int or not 0 <= self.size <= MAX_BLOB_SIZE:
            raise ManifestError("size", f"{self.size!r} not in [0, {MAX_BLOB_SIZE}]")
        check_chunk_size(self.chunk_size)
        if type(self.root) is not bytes or len(self.root) != HASH_BYTES:
            raise ManifestError("root", f"expected {HASH_BYTES} bytes")

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``; ``ManifestError`` if out of range."""
        if not 0 <= index < self.chunk_count:
            raise ManifestError("index", f"{index} not in [0, {self.chunk_count})")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def chunk_length(self, index: int) -> int:
        return self.chunk_span(index)[1]

    def encode(self) -> bytes:
        """The canonical 49 bytes that the CID hashes."""
        return _LAYOUT.pack(_MAGIC, self.version, self.size, self.chunk_size, self.root)

    @property
    def cid(self) -> bytes:
        """``H(CID_TAG || encode())``: the 32-byte content id."""
        return hashlib.sha256(CID_TAG + self.encode()).digest()


def decode_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes; ``ManifestError`` naming the field for anything malformed."""
    if type(data) is not bytes or len(data) != MANIFEST_BYTES:
        raise ManifestError("manifest", f"expected {MANIFEST_BYTES} bytes")
    magic, version, size, chunk_size, root = _LAYOUT.unpack(data)
    if magic != _MAGIC:
        raise ManifestError("manifest", "bad magic")
    return Manifest(version, size, chunk_size, root)


def build_manifest(leaves: bytes, size: int, chunk_size: int) -> Manifest:
    """The manifest of a blob of ``size`` bytes whose chunk leaves are ``leaves``."""
    check_chunk_size(chunk_size)
    if len(leaves) != chunk_count(size, chunk_size) * HASH_BYTES:
        raise ManifestError("leaves", "leaf count does not match size / chunk_size")
    return Manifest(MANIFEST_VERSION, size, chunk_size, merkle_root(leaves))


def manifest_of(blob: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Manifest, bytes]:
    """Manifest and concatenated leaves of an in-memory blob (tests, small payloads)."""
    check_chunk_size(chunk_size)
    view = memoryview(blob)
    leaves = b"".join(leaf_hash(view[i : i + chunk_size]) for i in range(0, len(blob), chunk_size))
    return build_manifest(leaves, len(blob), chunk_size), leaves


def verify_listing(cid: bytes, manifest: Manifest, leaves: bytes) -> None:
    """Check a provider's manifest and leaf list against the CID we asked for.

    ``ManifestError`` with field ``cid`` (the manifest is not the one named), ``leaves``
    (wrong count) or ``root`` (the leaves are not the manifest's). Nothing a provider
    sends is trusted before this passes.
    """
    if manifest.cid != cid:
        raise ManifestError("cid", "manifest does not hash to the requested cid")
    expected = manifest.chunk_count
    if len(leaves) != expected * HASH_BYTES:
        raise ManifestError("leaves", f"{len(leaves) // HASH_BYTES} leaves for {expected} chunks")
    if merkle_root(leaves) != manifest.root:
        raise ManifestError("root", "leaves do not hash to the manifest root")


def verify_chunk(
    manifest: Manifest, leaves: bytes, index: int, data: bytes | bytearray | memoryview
) -> bool:
    """Whether ``data`` is exactly chunk ``index`` of the blob (length and leaf hash)."""
    if not 0 <= index < manifest.chunk_count or len(data) != manifest.chunk_length(index):
        return False
    return leaf_hash(data) == leaf_at(leaves, index)


class Chunker:
    """Re-slices a stream of arbitrary pieces into ``chunk_size`` chunks, hashing them.

    ``feed`` returns the complete chunks it can cut (the caller writes them out), so
    nothing more than one chunk is ever buffered; ``finish`` returns the last short
    chunk (if any) and the final manifest and leaves. Pieces that already are whole
    chunks while the buffer is empty pass through without a copy.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, max_size: int = MAX_BLOB_SIZE):
        self.chunk_size = check_chunk_size(chunk_size)
        self.max_size = max_size
        self._buf = bytearray()
        self._leaves = bytearray()
        self.size = 0

    def _hashed(self, chunk: bytes) -> bytes:
        self._leaves += leaf_hash(chunk)
        return chunk

    def feed(self, piece: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``piece``; the chunks now complete. ``ManifestError`` past ``max_size``."""
        n = len(piece)
        if self.size + n > self.max_size:
            raise ManifestError("size", f"blob exceeds {self.max_size} bytes")
        self.size += n
        cs = self.chunk_size
        out: list[bytes] = []
        if not self._buf and n == cs and isinstance(piece, bytes):
            out.append(self._hashed(piece))
            return out
        view = memoryview(piece)
        pos = 0
        if self._buf:
            take = min(cs - len(self._buf), n)
            self._buf += view[:take]
            pos = take
            if len(self._buf) == cs:
                out.append(self._hashed(bytes(self._buf)))
                self._buf.clear()
        while n - pos >= cs:
            out.append(self._hashed(bytes(view[pos : pos + cs])))
            pos += cs
        if pos < n:
            self._buf += view[pos:]
        return out

    def finish(self) -> tuple[bytes | None, Manifest, bytes]:
        """(last partial chunk or None, manifest, leaves). The chunker is spent after."""
        last = None
        if self._buf:
            last = self._hashed(bytes(self._buf))
            self._buf.clear()
        leaves = bytes(self._leaves)
        return last, build_manifest(leaves, self.size, self.chunk_size), leaves


def cid_to_text(cid: bytes) -> str:
    """The 64-character lowercase hex form of a CID (URL-safe)."""
    if type(cid) is not bytes or len(cid) != CID_BYTES:
        raise ValueError(f"a cid is {CID_BYTES} bytes")
    return cid.hex()


_HEX: Final = frozenset("0123456789abcdef")


def cid_from_text(text: str) -> bytes:
    """Parse the text form; ``CidTextError`` saying why for anything else."""
    if not isinstance(text, str):
        raise CidTextError(f"expected a string, got {type(text).__name__}")
    if len(text) != 2 * CID_BYTES:
        raise CidTextError(f"expected {2 * CID_BYTES} hex characters, got {len(text)}")
    if not set(text) <= _HEX:
        raise CidTextError("expected lowercase hex characters [0-9a-f]")
    return bytes.fromhex(text)
