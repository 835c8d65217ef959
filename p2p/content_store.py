"""Blobs on disk, named by CID: streamed puts, chunk and range reads, resumable downloads.

The asyncio shell of the content layer's storage (the pure part is ``p2p.content``).
Layout under ``root`` (the node's ``<data dir>/content``)::

    blobs/<cid hex>          the blob's bytes
    blobs/<cid hex>.meta     manifest (49 bytes) followed by the leaf list (32 bytes a chunk)
    partial/<cid hex>.part   a download in progress: a sparse file of the blob's size
    partial/<cid hex>.meta   its manifest and (verified) leaves
    partial/<cid hex>.have   its have-bitmap (``p2p.content.bitmap``), saved every few chunks
    tmp/                     puts being written (removed at start)

Choices, and why:

- **Streaming.** ``put_stream`` never holds more than about one chunk plus one piece in
  memory: pieces are batched to whole chunks, and each batch is hashed and written in a
  worker thread (``asyncio.to_thread``; SHA-256 and ``write`` release the GIL), so a
  multi-gigabyte upload neither blocks the event loop nor grows the heap. The file is
  written under ``tmp/`` and renamed into place once its CID is known: a reader never
  sees a half-written blob, and a crash leaves only garbage in ``tmp/``.
- **Publishing order.** ``.meta`` is renamed into place before the blob; a blob is
  present only when both are (a crash between the two leaves a stray ``.meta``, ignored
  and removed at start).
- **No re-hash on serve.** ``read_chunk`` returns what is on disk. Verifying is the
  fetcher's job (every chunk against its leaf); hashing on every serve would double the
  CPU cost of serving and still not help a fetcher talking to a dishonest node.
- **Resume.** A partial download keeps its bitmap on disk. On reopen, every chunk the
  bitmap claims is re-hashed against its leaf (the bitmap may have been saved before the
  data reached the disk), so a crash at any point resumes with only verified chunks.
  ``complete`` fsyncs and renames the ``.part`` into ``blobs/`` atomically.
- **Thread hops.** Chunk reads and writes run in worker threads (``_in_thread``). Measured
  here: a hop costs ~90 µs of latency, more than a 1 MiB ``pread`` from the page cache
  (~45 µs), but a cold disk read takes milliseconds that must not stall the loop, and the
  fetcher hashes and writes a chunk in one hop; with many requests in flight the latency
  overlaps and the 200 MB loopback fetch is bound by TLS, not by the hops.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Final, TypeVar

from p2p.content.bitmap import Bitmap, BitmapError
from p2p.content.manifest import (
    DEFAULT_CHUNK_SIZE,
    HASH_BYTES,
    MANIFEST_BYTES,
    Chunker,
    Manifest,
    ManifestError,
    check_chunk_size,
    cid_to_text,
    decode_manifest,
    leaf_at,
    leaf_hash,
    verify_chunk,
    verify_listing,
)
from p2p.errors import P2PError

T = TypeVar("T")
GiB: Final = 1024**3
READ_PIECE: Final = 1024 * 1024
"""Largest piece ``read_range`` yields."""
SAVE_EVERY: Final = 64
"""A partial download saves its bitmap after this many new chunks (and on ``save``)."""


class ContentStoreError(P2PError):
    """Base of the store's errors."""


class ContentNotFound(ContentStoreError, LookupError):
    """No complete blob under this CID."""


class ContentRangeError(ContentStoreError, ValueError):
    """A byte range or chunk index outside the blob."""


class ContentTooLarge(ContentStoreError, ValueError):
    """A blob over the store's ``max_blob_size``."""


async def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker thread; if the caller is cancelled, wait for the call to
    end before re-raising.

    ``asyncio.to_thread`` alone is not enough for calls on a descriptor or file object
    that the caller closes on the way out: cancelling it either drops a call still queued
    in the executor (then bookkeeping done by the call never happens: a fetch hung on this
    once) or leaves a ``pwrite`` running on a descriptor that the cancelled caller closes
    at once, and that the OS may hand to another file. Shielded, the call always runs to
    its end, and the caller's cleanup runs after it.
    """
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if not fut.done():
            await asyncio.wait({fut})
        if not fut.cancelled():
            fut.exception()  # retrieved: the caller is gone
        raise


def _write_atomic(path: Path, data: bytes, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise ContentStoreError(f"short read: {len(data)} of {length} bytes at {offset}")
    return data


class PartialBlob:
    """A download in progress: chunks are written as they arrive, in any order.

    Made by ``ContentStore.open_partial``; the caller writes only chunks it has verified
    (``verify_chunk``), then calls ``complete``; ``close`` keeps the partial on disk for
    a later resume.
    """

    def __init__(
        self,
        store: ContentStore,
        manifest: Manifest,
        leaves: bytes,
        have: Bitmap,
        fd: int,
        resumed: int = 0,
    ) -> None:
        self.store = store
        self.resumed = resumed
        """Chunks already held (and re-verified) when the partial was opened."""
        self.manifest = manifest
        self.leaves = leaves
        self.cid = manifest.cid
        self.have = have
        self._fd: int | None = fd
        self._unsaved = 0
        self._saving: asyncio.Lock = asyncio.Lock()
        self._ops = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    async def _on_fd(self, fn: Callable[[int], T]) -> T:
        """Run ``fn(fd)`` in a worker thread; ``close`` waits for every such call to end,
        even one whose awaiting task was cancelled (the thread runs on regardless), so the
        descriptor is never closed under a running ``pwrite`` (or reused by another file)."""
        if self._fd is None:
            raise ContentStoreError("partial download is closed")
        fd = self._fd
        loop = asyncio.get_running_loop()
        self._ops += 1
        self._quiet.clear()

        def run() -> T:
            try:
                return fn(fd)
            finally:
                loop.call_soon_threadsafe(self._op_done)

        return await _in_thread(run)

    def _op_done(self) -> None:
        self._ops -= 1
        if self._ops == 0:
            self._quiet.set()

    async def write_chunk(self, index: int, data: bytes) -> None:
        """Write verified chunk ``index`` and mark it held."""
        offset, length = self.manifest.chunk_span(index)
        if len(data) != length:
            raise ContentRangeError(f"chunk {index} is {length} bytes, got {len(data)}")
        written = await self._on_fd(lambda fd: os.pwrite(fd, data, offset))
        if written != length:
            raise ContentStoreError(f"short write of chunk {index}")
        await self._mark(index)

    async def write_verified(self, index: int, data: bytes | memoryview) -> bool:
        """Check ``data`` against chunk ``index``'s leaf and, if it matches, write it.

        One worker-thread hop for both the hash and the write (SHA-256 releases the GIL,
        so the event loop keeps moving frames meanwhile). False, and nothing written, if
        the data is not the chunk.
        """

        def check_and_write(fd: int) -> bool:
            if not verify_chunk(self.manifest, self.leaves, index, data):
                return False
            offset = index * self.manifest.chunk_size
            if os.pwrite(fd, data, offset) != len(data):
                raise ContentStoreError(f"short write of chunk {index}")
            return True

        if not await self._on_fd(check_and_write):
            return False
        await self._mark(index)
        return True

    async def _mark(self, index: int) -> None:
        if index not in self.have:
            self.have.add(index)
            self._unsaved += 1
            if self._unsaved >= SAVE_EVERY:
                await self.save()

    async def save(self) -> None:
        """Persist the have-bitmap now (a crash after this resumes from here)."""
        async with self._saving:
            self._unsaved = 0
            path = self.store._partial_path(self.cid, ".have")
            await _in_thread(_write_atomic, path, self.have.to_bytes(), False)

    async def complete(self) -> Path:
        """Move the finished blob into the store; its path. ``ContentStoreError`` if not
        every chunk is held."""
        if not self.have.complete:
            raise ContentStoreError(
                f"{len(self.have)} of {self.have.length} chunks held; cannot complete"
            )
        if self._fd is None:
            raise ContentStoreError("partial download is closed")
        await self._quiet.wait()
        fd, self._fd = self._fd, None
        try:
            path = await _in_thread(self.store._finish_partial, self, fd)
        finally:
            self.store._open_partials.discard(self.cid)
        return path

    async def close(self) -> None:
        """Save the bitmap and release the file; the partial stays for a later resume."""
        if self._fd is None:
            return
        await self._quiet.wait()
        await self.save()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self.store._open_partials.discard(self.cid)

    async def discard(self) -> None:
        """Close and delete the partial download."""
        await self.close()
        await asyncio.to_thread(self.store._remove_partial_files, self.cid)


class ContentStore:
    """Complete blobs and partial downloads under ``root`` (see the module doc)."""

    def __init__(
        self,
        root: Path | str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_blob_size: int = 64 * GiB,
        fsync: bool = True,
    ) -> None:
        self.root = Path(root)
        self.chunk_size = check_chunk_size(chunk_size)
        self.max_blob_size = max_blob_size
        self.fsync = fsync
        self._blobs = self.root / "blobs"
        self._partial = self.root / "partial"
        self._tmp = self.root / "tmp"
        for d in (self._blobs, self._partial, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                stale.unlink()
        self._index: dict[bytes, Manifest] = {}
        self._open_partials: set[bytes] = set()
        self._load_index()

    def _load_index(self) -> None:
        for meta in self._blobs.glob("*.meta"):
            try:
                cid = bytes.fromhex(meta.stem)
                with open(meta, "rb") as f:
                    manifest = decode_manifest(f.read(MANIFEST_BYTES))
                data = self._blobs / meta.stem
                if manifest.cid != cid or data.stat().st_size != manifest.size:
                    raise ManifestError("meta", "does not match its blob")
            except (ValueError, OSError):
                with contextlib.suppress(OSError):
                    meta.unlink()  # a stray or damaged .meta: the blob is not published
                continue
            self._index[cid] = manifest

    # -- paths ---------------------------------------------------------------------------

    def path(self, cid: bytes) -> Path:
        """Where the blob's bytes are (whether or not it is present)."""
        return self._blobs / cid_to_text(cid)

    def _meta_path(self, cid: bytes) -> Path:
        return self._blobs / (cid_to_text(cid) + ".meta")

    def _partial_path(self, cid: bytes, suffix: str) -> Path:
        return self._partial / (cid_to_text(cid) + suffix)

    # -- queries -------------------------------------------------------------------------

    def has(self, cid: bytes) -> bool:
        return cid in self._index

    def manifest(self, cid: bytes) -> Manifest:
        """The manifest of a stored blob; ``ContentNotFound`` if absent."""
        m = self._index.get(cid)
        if m is None:
            raise ContentNotFound(f"no blob {cid.hex()}")
        return m

    def list(self) -> list[Manifest]:
        """Manifests of every complete blob (``m.cid`` is its id), in CID order."""
        return [self._index[c] for c in sorted(self._index)]

    def partials(self) -> builtins.list[bytes]:
        """CIDs of the partial downloads on disk."""
        out: builtins.list[bytes] = []
        for p in self._partial.glob("*.meta"):
            with contextlib.suppress(ValueError):
                out.append(bytes.fromhex(p.stem))
        return sorted(out)

    async def leaves(self, cid: bytes) -> bytes:
        """The concatenated leaf list of a stored blob."""
        m = self.manifest(cid)
        path = self._meta_path(cid)

        def read() -> bytes:
            with open(path, "rb") as f:
                f.seek(MANIFEST_BYTES)
                return f.read(m.chunk_count * HASH_BYTES)

        try:
            leaves = await asyncio.to_thread(read)
        except FileNotFoundError:
            raise ContentNotFound(f"no blob {cid.hex()}") from None
        if len(leaves) != m.chunk_count * HASH_BYTES:
            raise ContentStoreError(f"leaf list of {cid.hex()} is truncated")
        return leaves

    async def read_chunk(self, cid: bytes, index: int) -> bytes:
        """Chunk ``index`` as stored (not re-verified: see the module doc)."""
        m = self.manifest(cid)
        try:
            offset, length = m.chunk_span(index)
        except ManifestError:
            raise ContentRangeError(f"chunk {index} not in [0, {m.chunk_count})") from None
        path = self.path(cid)

        def read() -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                return _read_exact(fd, length, offset)
            finally:
                os.close(fd)

        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError:
            raise ContentNotFound(f"no blob {cid.hex()}") from None

    async def read_range(
        self, cid: bytes, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of a blob in pieces of at most 1 MiB (HTTP ranges).

        ``ContentNotFound`` / ``ContentRangeError`` are raised before the first piece.
        """
        m = self.manifest(cid)
        stop = m.size if end is None else end
        if not 0 <= start <= stop <= m.size:
            raise ContentRangeError(f"range [{start}, {stop}) outside a {m.size}-byte blob")
        try:
            fd = os.open(self.path(cid), os.O_RDONLY)  # cheap; a thread hop could leak it
        except FileNotFoundError:
            raise ContentNotFound(f"no blob {cid.hex()}") from None
        return self._pieces(fd, start, stop)

    async def _pieces(self, fd: int, start: int, stop: int) -> AsyncIterator[bytes]:
        try:
            pos = start
            while pos < stop:
                n = min(READ_PIECE, stop - pos)
                yield await _in_thread(_read_exact, fd, n, pos)
                pos += n
        finally:
            os.close(fd)

    # -- writing -------------------------------------------------------------------------

    async def put_stream(
        self, pieces: AsyncIterable[bytes], *, chunk_size: int | None = None
    ) -> Manifest:
        """Store a blob given as pieces of any size; its manifest (``.cid`` names it).

        ``ContentTooLarge`` past ``max_blob_size`` (nothing is kept).
        """
        chunker = Chunker(chunk_size or self.chunk_size, self.max_blob_size)
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                pending = bytearray()
                block_size = chunker.chunk_size
                async for piece in pieces:
                    if not pending and len(piece) >= block_size:
                        await _in_thread(self._absorb, chunker, f, piece)
                        continue
                    pending += piece
                    if len(pending) >= block_size:
                        block, pending = bytes(pending), bytearray()
                        await _in_thread(self._absorb, chunker, f, block)
                if pending:
                    await _in_thread(self._absorb, chunker, f, bytes(pending))
                last, manifest, leaves = chunker.finish()
                if last is not None:
                    await _in_thread(f.write, last)
                if self.fsync:
                    await _in_thread(os.fsync, f.fileno())
            await _in_thread(self._publish, tmp, manifest, leaves)
            self._index[manifest.cid] = manifest
        except ManifestError as exc:
            raise ContentTooLarge(str(exc)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return manifest

    @staticmethod
    def _absorb(chunker: Chunker, f: object, piece: bytes) -> None:
        for chunk in chunker.feed(piece):
            f.write(chunk)  # type: ignore[attr-defined]

    async def put_bytes(self, data: bytes, *, chunk_size: int | None = None) -> Manifest:
        """``put_stream`` of one in-memory blob (tests, small payloads)."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(one(), chunk_size=chunk_size)

    async def import_file(self, path: Path | str, *, chunk_size: int | None = None) -> Manifest:
        """Copy a file into the store (read in chunk-size pieces, never whole)."""
        size = chunk_size or self.chunk_size
        src = Path(path)

        async def pieces() -> AsyncIterator[bytes]:
            f = open(src, "rb")  # noqa: SIM115 (closed below; opening is cheap)
            try:
                while True:
                    piece = await _in_thread(f.read, size)
                    if not piece:
                        return
                    yield piece
            finally:
                f.close()

        return await self.put_stream(pieces(), chunk_size=size)

    def _publish(self, tmp: Path, manifest: Manifest, leaves: bytes) -> None:
        """Rename a finished blob into place (``.meta`` first); no-op if already stored."""
        cid = manifest.cid
        if cid in self._index and self.path(cid).exists():
            return
        _write_atomic(self._meta_path(cid), manifest.encode() + leaves, self.fsync)
        os.replace(tmp, self.path(cid))
        if self.fsync:
            _fsync_dir(self._blobs)

    async def delete(self, cid: bytes) -> bool:
        """Remove a blob (and any partial download of it); whether a blob was there."""
        existed = self._index.pop(cid, None) is not None

        def remove() -> None:
            for p in (self.path(cid), self._meta_path(cid)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            if cid not in self._open_partials:
                self._remove_partial_files(cid)

        await asyncio.to_thread(remove)
        return existed

    # -- partial downloads ---------------------------------------------------------------

    async def open_partial(self, manifest: Manifest, leaves: bytes) -> PartialBlob:
        """Start or resume the download of ``manifest`` (whose ``leaves`` were verified).

        Resuming re-verifies every chunk the saved bitmap claims. ``ContentTooLarge`` over
        ``max_blob_size``; ``ContentStoreError`` if this blob is already being written.
        """
        verify_listing(manifest.cid, manifest, leaves)
        if manifest.size > self.max_blob_size:
            raise ContentTooLarge(f"{manifest.size} bytes exceeds {self.max_blob_size}")
        cid = manifest.cid
        if cid in self._open_partials:
            raise ContentStoreError(f"download of {cid.hex()} already in progress")
        self._open_partials.add(cid)
        fut = asyncio.get_running_loop().run_in_executor(
            None, self._open_partial_sync, manifest, leaves
        )
        try:
            fd, have, resumed = await asyncio.shield(fut)
        except BaseException:
            self._open_partials.discard(cid)
            if not fut.done():
                await asyncio.wait({fut})
            if not fut.cancelled() and fut.exception() is None:
                os.close(fut.result()[0])  # opened for a caller that is gone
            raise
        return PartialBlob(self, manifest, leaves, have, fd, resumed)

    def _open_partial_sync(self, manifest: Manifest, leaves: bytes) -> tuple[int, Bitmap, int]:
        cid = manifest.cid
        meta = manifest.encode() + leaves
        meta_path = self._partial_path(cid, ".meta")
        part_path = self._partial_path(cid, ".part")
        have_path = self._partial_path(cid, ".have")
        have = Bitmap(manifest.chunk_count)
        try:
            same = meta_path.read_bytes() == meta and part_path.exists()
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(FileNotFoundError, BitmapError):
                have = Bitmap.from_bytes(have_path.read_bytes(), manifest.chunk_count)
        else:
            self._remove_partial_files(cid)
            _write_atomic(meta_path, meta, self.fsync)
        fd = os.open(part_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, manifest.size)
            for index in list(have):
                offset, length = manifest.chunk_span(index)
                data = os.pread(fd, length, offset)
                if len(data) != length or leaf_hash(data) != leaf_at(leaves, index):
                    have.discard(index)
        except BaseException:
            os.close(fd)
            raise
        return fd, have, len(have)

    def _finish_partial(self, partial: PartialBlob, fd: int) -> Path:
        cid = partial.cid
        try:
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        _write_atomic(self._meta_path(cid), partial.manifest.encode() + partial.leaves, self.fsync)
        os.replace(self._partial_path(cid, ".part"), self.path(cid))
        if self.fsync:
            _fsync_dir(self._blobs)
        self._index[cid] = partial.manifest  # from the worker thread: one atomic dict store
        self._remove_partial_files(cid)
        return self.path(cid)

    def _remove_partial_files(self, cid: bytes) -> None:
        for suffix in (".part", ".have", ".meta", ".have.tmp", ".meta.tmp"):
            with contextlib.suppress(FileNotFoundError):
                self._partial_path(cid, suffix).unlink()


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
