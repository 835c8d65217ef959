"""Content service over real transports on loopback: fetch from several providers, with
one killed mid-transfer, one serving a bit-rotted file, and a fetch resumed after cancel."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p2p.content.fetch import FetchConfig
from p2p.content.manifest import Manifest
from p2p.content.messages import (
    METHOD_CHUNK,
    METHOD_HAVE,
    METHOD_MANIFEST,
    GetChunk,
    GetManifest,
    Have,
    HaveReply,
    ManifestPage,
    decode_as,
    encode,
)
from p2p.content_service import ContentConfig, ContentFetchError, ContentService
from p2p.content_store import ContentStore
from p2p.identity import Identity
from p2p.rpc import RpcRemoteError
from p2p.testing import LoopFactory, run, running
from p2p.transport import PeerTransport

CS = 64 * 1024
CONFIG = ContentConfig(
    chunk_size=CS,
    chunk_timeout=2.0,
    manifest_timeout=2.0,
    link_timeout=2.0,
    provider_refreshes=1,
    refresh_delay=0.05,
    fetch=FetchConfig(window_initial=4, window_max=8, backoff_initial=0.05),
)


@dataclass
class Node:
    key: bytes
    transport: PeerTransport
    service: ContentService
    provided: list[bytes] = field(default_factory=list)

    @property
    def store(self) -> ContentStore:
        return self.service.store

    def served(self) -> int:
        served = self.service.status()["chunks_served"]
        assert isinstance(served, int)
        return served


@contextlib.asynccontextmanager
async def mesh(tmp: Path, n: int, config: ContentConfig = CONFIG) -> AsyncIterator[list[Node]]:
    """``n`` nodes; ``find_providers`` answers the nodes whose store holds the blob
    (even after they are closed: a DHT's provider records outlive their providers)."""
    nodes: list[Node] = []
    addrs: dict[bytes, tuple[str, int]] = {}
    async with contextlib.AsyncExitStack() as stack:
        for i in range(n):
            ident = Identity.generate()
            transport, _ = await stack.enter_async_context(running(ident))
            addrs[ident.public_key] = transport.listen_address

            async def find(cid: bytes) -> list[bytes]:
                return [x.key for x in nodes if x.store.has(cid)]

            async def ensure(key: bytes, t: PeerTransport = transport) -> bool:
                await t.connect(key, addrs[key], timeout=2.0)
                return True

            provided: list[bytes] = []

            async def provide(cid: bytes, out: list[bytes] = provided) -> int:
                out.append(cid)
                return 1

            store = ContentStore(tmp / f"node{i}", chunk_size=CS, fsync=False)
            service = ContentService(
                transport,
                store,
                find_providers=find,
                ensure_link=ensure,
                provide=provide,
                config=config,
            )
            stack.push_async_callback(service.close)
            nodes.append(Node(ident.public_key, transport, service, provided))
        yield nodes


def blob_of(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


async def put(nodes: list[Node], blob: bytes) -> Manifest:
    manifest = None
    for n in nodes:
        manifest = await n.store.put_bytes(blob)
    assert manifest is not None
    return manifest


def test_fetch_from_several_providers(tmp_path: Path, loop_factory: LoopFactory) -> None:
    blob = blob_of(2 * 1024 * 1024 + 1234)

    async def main() -> None:
        async with mesh(tmp_path, 4) as nodes:
            *providers, fetcher = nodes
            manifest = await put(providers, blob)
            seen: list[tuple[int, int]] = []
            path = await fetcher.service.fetch(
                manifest.cid, progress=lambda a, b: seen.append((a, b))
            )
            assert path.read_bytes() == blob
            assert fetcher.store.has(manifest.cid)
            assert fetcher.provided == [manifest.cid]
            assert seen[0] == (0, len(blob)) and seen[-1] == (len(blob), len(blob))
            assert [a for a, _ in seen] == sorted(a for a, _ in seen)
            assert sum(p.served() for p in providers) >= manifest.chunk_count
            assert sum(1 for p in providers if p.served() > 0) >= 2, "not spread"
            status = fetcher.service.status()
            assert status["bytes_fetched"] == len(blob) and status["bad_chunks"] == 0
            assert status["fetches_completed"] == 1 and status["fetches"] == {}
            # a second fetch is local, and a fetch from a holder is instant
            assert await fetcher.service.fetch(manifest.cid) == path
            assert fetcher.service.status()["chunks_fetched"] == manifest.chunk_count

    run(main(), timeout=20, loop_factory=loop_factory)


def test_provider_killed_mid_transfer(tmp_path: Path) -> None:
    blob = blob_of(6 * 1024 * 1024)

    async def main() -> None:
        async with mesh(tmp_path, 3) as nodes:
            victim, survivor, fetcher = nodes
            manifest = await put([victim, survivor], blob)
            kill: list[asyncio.Task[None]] = []

            async def die() -> None:
                await victim.service.close()  # stops answering: pending requests time out...
                await victim.transport.close()  # ...or fail with the link

            def progress(held: int, total: int) -> None:
                if held >= total // 4 and not kill:
                    kill.append(asyncio.create_task(die()))

            path = await fetcher.service.fetch(manifest.cid, progress=progress)
            assert path.read_bytes() == blob
            await asyncio.gather(*kill)
            assert 0 < victim.served() < manifest.chunk_count
            assert survivor.served() > 0

    run(main(), timeout=25)


def test_provider_with_a_corrupted_file_is_banned(tmp_path: Path) -> None:
    blob = blob_of(3 * 1024 * 1024)

    async def main() -> None:
        async with mesh(tmp_path, 3) as nodes:
            rotten, honest, fetcher = nodes
            manifest = await put([rotten, honest], blob)
            # bit rot on disk: the store serves what is there (it does not re-hash)
            with open(rotten.store.path(manifest.cid), "r+b") as f:
                for i in range(manifest.chunk_count):
                    f.seek(i * CS + 100)
                    f.write(b"\x00\x01\x02")
            path = await fetcher.service.fetch(manifest.cid)
            assert path.read_bytes() == blob
            status = fetcher.service.status()
            assert status["bad_chunks"] == status["providers_banned"] == 1
            # banned at the first bad chunk: the rotten node served at most one round
            assert rotten.served() <= CONFIG.fetch.window_max + 1
            assert honest.served() >= manifest.chunk_count - rotten.served()

    run(main(), timeout=20)


def test_provider_with_a_forged_listing_is_banned(tmp_path: Path) -> None:
    blob = blob_of(CS * 5)

    async def main() -> None:
        async with mesh(tmp_path, 3) as nodes:
            liar, honest, fetcher = nodes
            manifest = await put([liar, honest], blob)
            leaves = await liar.store.leaves(manifest.cid)
            forged = bytes([leaves[0] ^ 1]) + leaves[1:]

            async def lie(peer: bytes, body: bytes) -> bytes:
                return encode(ManifestPage(manifest, 0, forged))

            liar.service.rpc._handlers[METHOD_MANIFEST] = lie
            path = await fetcher.service.fetch(manifest.cid)
            assert path.read_bytes() == blob
            assert fetcher.service.status()["providers_banned"] == 1
            assert liar.served() == 0  # banned before any chunk was asked of it

    run(main())


def test_cancelled_fetch_resumes_from_its_partial_download(tmp_path: Path) -> None:
    blob = blob_of(4 * 1024 * 1024 + 3)

    async def main() -> None:
        async with mesh(tmp_path, 2) as (provider, fetcher):
            manifest = await put([provider], blob)
            halfway = asyncio.Event()

            def progress(held: int, total: int) -> None:
                if held >= total // 2:
                    halfway.set()

            task = asyncio.create_task(fetcher.service.fetch(manifest.cid, progress=progress))
            await halfway.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert fetcher.store.partials() == [manifest.cid]
            assert not fetcher.store.has(manifest.cid)
            served_before = provider.served()
            assert served_before < manifest.chunk_count

            starts: list[int] = []
            path = await fetcher.service.fetch(
                manifest.cid, progress=lambda held, _t: starts.append(held)
            )
            assert path.read_bytes() == blob
            assert starts[0] >= len(blob) // 2, "did not resume"
            resumed = provider.served() - served_before
            assert resumed <= manifest.chunk_count - manifest.chunk_count // 2 + 16
            assert fetcher.store.partials() == []

    run(main(), timeout=20)


def test_close_cancels_fetches_in_progress_and_keeps_their_partials(tmp_path: Path) -> None:
    blob = blob_of(4 * 1024 * 1024)

    async def main() -> None:
        async with mesh(tmp_path, 2) as (provider, fetcher):
            manifest = await put([provider], blob)
            started = asyncio.Event()

            def progress(held: int, total: int) -> None:
                if held > 0:
                    started.set()

            owner = asyncio.create_task(fetcher.service.fetch(manifest.cid, progress=progress))
            await started.wait()
            joiner = asyncio.create_task(fetcher.service.fetch(manifest.cid))
            await asyncio.sleep(0)
            await fetcher.service.close()
            with pytest.raises(asyncio.CancelledError):
                await owner
            with pytest.raises(ContentFetchError, match="cancelled"):
                await joiner
            assert fetcher.store.partials() == [manifest.cid]

    run(main())


def test_concurrent_fetches_of_one_cid_share_the_work(tmp_path: Path) -> None:
    blob = blob_of(1024 * 1024)

    async def main() -> None:
        async with mesh(tmp_path, 2) as (provider, fetcher):
            manifest = await put([provider], blob)
            a, b = await asyncio.gather(
                fetcher.service.fetch(manifest.cid), fetcher.service.fetch(manifest.cid)
            )
            assert a == b and a.read_bytes() == blob
            assert provider.served() <= manifest.chunk_count + 2

    run(main())


def test_no_provider_is_a_specific_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path, 2) as (_, fetcher):
            with pytest.raises(ContentFetchError) as err:
                await fetcher.service.fetch(bytes(32))
            assert err.value.reason == "no providers"
            assert fetcher.service.status()["fetches_failed"] == 1

    run(main())


def test_server_answers_bad_requests_with_specific_codes(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(tmp_path, 2) as (server, client):
            manifest = await server.store.put_bytes(blob_of(3 * CS))
            await client.transport.connect(server.key, server.transport.listen_address)
            rpc = client.service.rpc

            async def code(method: str, body: bytes) -> str:
                with pytest.raises(RpcRemoteError) as err:
                    await rpc.call(server.key, method, body, timeout=2)
                return err.value.code

            assert await code(METHOD_CHUNK, b"\x00garbage") == "malformed"
            assert await code(METHOD_CHUNK, encode(Have(manifest.cid))) == "malformed"
            assert await code(METHOD_CHUNK, encode(GetChunk(bytes(32), 0))) == "not-found"
            assert await code(METHOD_CHUNK, encode(GetChunk(manifest.cid, 3))) == "bad-index"
            assert await code(METHOD_MANIFEST, encode(GetManifest(manifest.cid, 3))) == (
                "bad-index"
            )
            body = await rpc.call(server.key, METHOD_HAVE, encode(Have(manifest.cid)), timeout=2)
            assert decode_as(body, HaveReply).have is True
            status = server.service.status()
            assert status["chunks_served"] == 0  # refusals served nothing

    run(main())
