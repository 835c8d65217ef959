"""The blob store: streamed puts, chunk and range reads, and partial downloads that
resume (with their claimed chunks re-verified) after a restart."""

from __future__ import annotations

import asyncio
import os
import random
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2p.content.manifest import manifest_of
from p2p.content_store import (
    ContentNotFound,
    ContentRangeError,
    ContentStore,
    ContentStoreError,
    ContentTooLarge,
)
from p2p.testing import run

CS = 64 * 1024


def blob_of(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def pieces_of(data: bytes, rng: random.Random) -> AsyncIterator[bytes]:
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 100, CS - 1, CS, CS + 1, 3 * CS, 200_000])
        yield data[pos : pos + n]
        pos += n
        await asyncio.sleep(0)


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 5 * CS + 77])
def test_put_stream_in_any_pieces_stores_the_blob_under_its_cid(tmp_path: Path, size: int) -> None:
    blob = blob_of(size, size)

    async def main() -> None:
        store = ContentStore(tmp_path, chunk_size=CS, fsync=False)
        manifest = await store.put_stream(pieces_of(blob, random.Random(size)))
        expected, leaves = manifest_of(blob, CS)
        assert manifest == expected
        assert store.has(manifest.cid) and store.manifest(manifest.cid) == manifest
        assert store.path(manifest.cid).read_bytes() == blob
        assert await store.leaves(manifest.cid) == leaves
        for i in range(manifest.chunk_count):
            assert await store.read_chunk(manifest.cid, i) == blob[i * CS : (i + 1) * CS]
        assert store.list() == [manifest]
        assert list((tmp_path / "tmp").iterdir()) == []
        again = await store.put_bytes(blob)  # idempotent
        assert again == manifest and store.list() == [manifest]

    run(main())


def test_put_stream_never_holds_the_blob(tmp_path: Path) -> None:
    size = 24 * 1024 * 1024

    async def stream() -> AsyncIterator[bytes]:
        piece = bytes(range(256)) * 256  # 64 KiB
        for _ in range(size // len(piece)):
            yield piece

    async def main() -> None:
        store = ContentStore(tmp_path, chunk_size=1024 * 1024, fsync=False)
        tracemalloc.start()
        try:
            manifest = await store.put_stream(stream())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert manifest.size == size
        assert peak < 6 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte blob"

    run(main(), timeout=30)


def test_import_file_and_range_reads(tmp_path: Path) -> None:
    blob = blob_of(3 * 1024 * 1024 + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(blob)

    async def main() -> None:
        store = ContentStore(tmp_path / "store", chunk_size=CS, fsync=True)
        manifest = await store.import_file(src)
        cid = manifest.cid
        assert manifest == manifest_of(blob, CS)[0]
        rng = random.Random(3)
        ranges: list[tuple[int, int | None]] = [(0, None), (0, 0), (len(blob), None), (5, 6)]
        ranges.append((CS - 1, 3 * CS + 2))
        for _ in range(5):
            a, b = sorted(rng.sample(range(len(blob) + 1), 2))
            ranges.append((a, b))
        for start, end in ranges:
            parts = [p async for p in await store.read_range(cid, start, end)]
            assert b"".join(parts) == blob[start:end]
            assert all(0 < len(p) <= 1024 * 1024 for p in parts)
        for start, end in [(-1, 5), (5, 4), (0, len(blob) + 1)]:
            with pytest.raises(ContentRangeError):
                await store.read_range(cid, start, end)
        with pytest.raises(ContentRangeError):
            await store.read_chunk(cid, manifest.chunk_count)
        with pytest.raises(ContentNotFound):
            await store.read_chunk(bytes(32), 0)
        with pytest.raises(ContentNotFound):
            store.manifest(bytes(32))

    run(main())


def test_index_survives_a_restart_and_delete_removes_everything(tmp_path: Path) -> None:
    async def main() -> None:
        store = ContentStore(tmp_path, chunk_size=CS, fsync=False)
        a = await store.put_bytes(blob_of(CS * 2, 1))
        b = await store.put_bytes(blob_of(10, 2))
        (tmp_path / "tmp" / "put-leftover").write_bytes(b"junk")
        (tmp_path / "blobs" / ("ab" * 32 + ".meta")).write_bytes(b"stray")  # no blob
        again = ContentStore(tmp_path, chunk_size=CS)
        assert sorted(m.cid for m in again.list()) == sorted([a.cid, b.cid])
        assert list((tmp_path / "tmp").iterdir()) == []
        assert not (tmp_path / "blobs" / ("ab" * 32 + ".meta")).exists()
        assert await again.delete(a.cid) is True
        assert await again.delete(a.cid) is False
        assert not again.has(a.cid) and not again.path(a.cid).exists()
        assert [m.cid for m in ContentStore(tmp_path, chunk_size=CS).list()] == [b.cid]

    run(main())


def test_oversize_put_keeps_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        store = ContentStore(tmp_path, chunk_size=CS, max_blob_size=CS, fsync=False)
        with pytest.raises(ContentTooLarge):
            await store.put_bytes(bytes(CS + 1))
        assert store.list() == [] and list((tmp_path / "tmp").iterdir()) == []
        manifest, leaves = manifest_of(bytes(CS + 1), CS)
        with pytest.raises(ContentTooLarge):
            await store.open_partial(manifest, leaves)

    run(main())


def test_partial_download_resumes_after_restart_with_only_verified_chunks(
    tmp_path: Path,
) -> None:
    blob = blob_of(10 * CS + 3)
    manifest, leaves = manifest_of(blob, CS)

    def chunk(i: int) -> bytes:
        return blob[i * CS : (i + 1) * CS]

    async def main() -> None:
        store = ContentStore(tmp_path, chunk_size=CS, fsync=False)
        partial = await store.open_partial(manifest, leaves)
        assert partial.resumed == 0
        with pytest.raises(ContentStoreError):
            await store.open_partial(manifest, leaves)  # one writer at a time
        assert await partial.write_verified(3, chunk(3))
        assert not await partial.write_verified(4, chunk(5))  # wrong data: not written
        assert not await partial.write_verified(10, chunk(10) + b"x")
        for i in (0, 1, 10):
            await partial.write_chunk(i, chunk(i))
        with pytest.raises(ContentStoreError):
            await partial.complete()
        await partial.close()  # "interrupted": the bitmap is saved
        assert store.partials() == [manifest.cid] and not store.has(manifest.cid)

        # bit rot in a chunk the bitmap claims: the resume must not trust it
        part = tmp_path / "partial" / (manifest.cid.hex() + ".part")
        with open(part, "r+b") as f:
            f.seek(CS + 7)
            f.write(b"\xff")
        store = ContentStore(tmp_path, chunk_size=CS, fsync=False)
        partial = await store.open_partial(manifest, leaves)
        assert set(partial.have) == {0, 3, 10} and partial.resumed == 3
        for i in partial.have.missing():
            assert await partial.write_verified(i, chunk(i))
        path = await partial.complete()
        assert path.read_bytes() == blob and store.has(manifest.cid)
        assert store.partials() == [] and list((tmp_path / "partial").iterdir()) == []
        assert ContentStore(tmp_path, chunk_size=CS).has(manifest.cid)

    run(main())


def test_a_partial_of_another_listing_starts_over(tmp_path: Path) -> None:
    blob = blob_of(4 * CS)
    manifest, leaves = manifest_of(blob, CS)

    async def main() -> None:
        store = ContentStore(tmp_path, chunk_size=CS, fsync=False)
        partial = await store.open_partial(manifest, leaves)
        await partial.write_chunk(0, blob[:CS])
        await partial.close()
        meta = tmp_path / "partial" / (manifest.cid.hex() + ".meta")
        meta.write_bytes(meta.read_bytes()[:-1])  # damaged: not this listing
        partial = await store.open_partial(manifest, leaves)
        assert len(partial.have) == 0
        await partial.discard()
        assert store.partials() == []
        assert not os.listdir(tmp_path / "partial")

    run(main())
