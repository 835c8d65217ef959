"""The content layer's asyncio shell: serve blobs to peers, fetch blobs from providers.

``ContentService`` owns one ``RpcEndpoint`` on ``FrameKind.CONTENT`` and a
``ContentStore``. It depends on the DHT only through three callables
(``find_providers``, ``ensure_link``, ``provide``) so it can be tested with plain
functions and reused over any discovery mechanism.

Serving: ``GetManifest`` / ``GetChunk`` / ``Have`` answered from the store; refusals use
the codes of ``p2p.content.messages`` (``not-found``, ``malformed``, ``bad-index``).
Chunk reads are bounded by a semaphore (``serve_concurrency``), so the memory of reads in
progress is at most that many chunks whatever the number of peers.

Fetching (``fetch``), in order:

1. ask ``find_providers(cid)``; get the manifest and the paged leaf list from the first
   provider that answers, and check them against the CID (``verify_listing``); a
   provider whose listing does not match is banned for this fetch;
2. open (or resume) the partial download in the store;
3. run the pure ``FetchScheduler``: many chunk requests in flight across providers, each
   an ``rpc.call`` with a deadline; each answer is hashed against its leaf and written
   in one worker-thread hop, then reported to the scheduler (bad data bans the
   provider; timeouts and lost links retry elsewhere; endgame duplicates are cancelled);
4. when every provider is gone, ask ``find_providers`` again (``provider_refreshes``
   times) before giving up with ``ContentFetchError`` naming the reason;
5. move the blob into place and announce it with ``provide(cid)``.

Cancelling ``fetch`` keeps the partial download, which the next ``fetch`` resumes.
Concurrent fetches of one CID share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from p2p.content.fetch import FetchConfig, FetchScheduler, Request
from p2p.content.manifest import (
    DEFAULT_CHUNK_SIZE,
    HASH_BYTES,
    MAX_CHUNK_SIZE,
    Manifest,
    ManifestError,
    check_chunk_size,
    cid_to_text,
    verify_listing,
)
from p2p.content.messages import (
    ERR_BAD_INDEX,
    ERR_MALFORMED,
    ERR_NOT_FOUND,
    MAX_PAGE_LEAVES,
    METHOD_CHUNK,
    METHOD_HAVE,
    METHOD_MANIFEST,
    ChunkData,
    ContentDecodeError,
    GetChunk,
    GetManifest,
    Have,
    HaveReply,
    ManifestPage,
    decode_as,
    decode_chunk,
    encode,
)
from p2p.content_store import ContentNotFound, ContentStore, ContentStoreError, PartialBlob
from p2p.errors import P2PError, PeerNotConnected
from p2p.framing import FrameKind
from p2p.identity import short_id
from p2p.logs import log_event
from p2p.rpc import RpcConfig, RpcEndpoint, RpcError, RpcFailure, RpcOverloaded, RpcRemoteError
from p2p.transport import PeerTransport

GiB: Final = 1024**3
_FATAL_CODES: Final = frozenset({ERR_NOT_FOUND, ERR_BAD_INDEX, ERR_MALFORMED})
"""Answers that mean "this provider will not serve this blob": drop it for the fetch."""


class ContentFetchError(P2PError):
    """A fetch gave up; ``reason`` says why (no providers, all banned, too large...)."""

    def __init__(self, cid: bytes, reason: str) -> None:
        super().__init__(f"fetch of {cid.hex()} failed: {reason}")
        self.cid = cid
        self.reason = reason


def _content_rpc() -> RpcConfig:
    return RpcConfig(
        max_request_bytes=4 * 1024,
        max_response_bytes=MAX_CHUNK_SIZE + 64 * 1024,
        max_inflight_per_peer=64,
        requests_per_s=5000.0,
        burst=5000.0,
    )


@dataclass(frozen=True)
class ContentConfig:
    """Every limit of the content service; defaults suit a laptop on a LAN.

    ``rpc`` answers chunks up to ``MAX_CHUNK_SIZE`` and allows thousands of chunk
    requests a second (500/s, the RPC default, would cap 64 KiB chunks at 32 MB/s).
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_blob_size: int = 64 * GiB
    chunk_timeout: float = 20.0
    manifest_timeout: float = 10.0
    link_timeout: float = 10.0
    provider_refreshes: int = 2
    refresh_delay: float = 1.0
    serve_concurrency: int = 32
    fetch: FetchConfig = field(default_factory=FetchConfig)
    rpc: RpcConfig = field(default_factory=_content_rpc)

    def __post_init__(self) -> None:
        check_chunk_size(self.chunk_size)
        for name in ("max_blob_size", "chunk_timeout", "manifest_timeout", "link_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ContentConfig.{name}={getattr(self, name)!r}: must be > 0")
        if self.provider_refreshes < 0 or self.refresh_delay < 0:
            raise ValueError("ContentConfig.provider_refreshes/refresh_delay must be >= 0")
        if self.serve_concurrency < 1:
            raise ValueError("ContentConfig.serve_concurrency must be >= 1")
        if self.rpc.max_response_bytes < MAX_CHUNK_SIZE + 1024:
            raise ValueError("ContentConfig.rpc.max_response_bytes must fit a 4 MiB chunk")


ProgressFn = Callable[[int, int], None]


@dataclass(eq=False)
class _Fetch:
    """One download in progress (the state the shell keeps around the scheduler)."""

    cid: bytes
    manifest: Manifest
    partial: PartialBlob
    sched: FetchScheduler
    progress: ProgressFn | None
    tasks: dict[Request, asyncio.Task[None]] = field(default_factory=dict)
    links: dict[bytes, asyncio.Task[bool]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    have_bytes: int = 0
    error: BaseException | None = None


class ContentService:
    """Serves the local store on the content channel and fetches blobs from providers."""

    def __init__(
        self,
        transport: PeerTransport,
        store: ContentStore,
        *,
        find_providers: Callable[[bytes], Awaitable[Sequence[bytes]]],
        ensure_link: Callable[[bytes], Awaitable[bool]],
        provide: Callable[[bytes], Awaitable[object]],
        config: ContentConfig | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config = config or ContentConfig()
        self.store = store
        self._transport = transport
        self._self_key = transport.identity.public_key
        self._find_providers = find_providers
        self._ensure_link = ensure_link
        self._provide = provide
        self._log = logger or logging.getLogger("p2p.content")
        self._serve_slots = asyncio.Semaphore(config.serve_concurrency)
        self._leaf_cache: dict[bytes, bytes] = {}
        self._fetches: dict[bytes, _Fetch] = {}
        self._joins: dict[bytes, asyncio.Future[Path]] = {}
        self._owners: set[asyncio.Task[object]] = set()
        self._stats: Counter[str] = Counter()
        self.rpc = RpcEndpoint(
            transport,
            int(FrameKind.CONTENT),
            {
                METHOD_MANIFEST: self._serve_manifest,
                METHOD_CHUNK: self._serve_chunk,
                METHOD_HAVE: self._serve_have,
            },
            config.rpc,
            logger=self._log,
        )

    async def close(self) -> None:
        """Cancel fetches in progress (their partial downloads stay) and stop serving.

        The tasks that called ``fetch`` are cancelled; tasks that joined them get
        ``ContentFetchError("fetch cancelled")``.
        """
        owners = list(self._owners)
        for task in owners:
            task.cancel()
        await asyncio.gather(*owners, return_exceptions=True)
        await self.rpc.close()

    # -- serving -------------------------------------------------------------------------

    async def _serve_manifest(self, peer: bytes, body: bytes) -> bytes:
        req = _decode_request(body, GetManifest)
        manifest = self._stored(req.cid)
        if req.start > manifest.chunk_count or (req.start == manifest.chunk_count > 0):
            raise RpcFailure(ERR_BAD_INDEX, f"page start {req.start} past the last leaf")
        leaves = self._leaf_cache.get(req.cid)
        if leaves is None:
            try:
                leaves = await self.store.leaves(req.cid)
            except ContentNotFound:
                raise RpcFailure(ERR_NOT_FOUND, "no such blob") from None
            if len(self._leaf_cache) >= 16:
                self._leaf_cache.pop(next(iter(self._leaf_cache)))
            self._leaf_cache[req.cid] = leaves
        page = leaves[req.start * HASH_BYTES : (req.start + MAX_PAGE_LEAVES) * HASH_BYTES]
        self._stats["manifests_served"] += 1
        return encode(ManifestPage(manifest, req.start, page))

    async def _serve_chunk(self, peer: bytes, body: bytes) -> bytes:
        req = _decode_request(body, GetChunk)
        manifest = self._stored(req.cid)
        if req.index >= manifest.chunk_count:
            raise RpcFailure(ERR_BAD_INDEX, f"chunk {req.index} not in [0, {manifest.chunk_count})")
        async with self._serve_slots:
            try:
                data = await self.store.read_chunk(req.cid, req.index)
            except ContentNotFound:
                raise RpcFailure(ERR_NOT_FOUND, "no such blob") from None
        self._stats["chunks_served"] += 1
        self._stats["bytes_served"] += len(data)
        return encode(ChunkData(req.index, data))

    async def _serve_have(self, peer: bytes, body: bytes) -> bytes:
        req = _decode_request(body, Have)
        return encode(HaveReply(self.store.has(req.cid)))

    def _stored(self, cid: bytes) -> Manifest:
        try:
            return self.store.manifest(cid)
        except ContentNotFound:
            raise RpcFailure(ERR_NOT_FOUND, "no such blob") from None

    # -- putting -------------------------------------------------------------------------

    async def put_stream(
        self, pieces: AsyncIterable[bytes], *, chunk_size: int | None = None
    ) -> Manifest:
        """Store a streamed blob and announce it; its manifest (``.cid``)."""
        manifest = await self.store.put_stream(pieces, chunk_size=chunk_size)
        await self._announce(manifest.cid)
        return manifest

    async def import_file(self, path: Path | str, *, chunk_size: int | None = None) -> Manifest:
        """Copy a file into the store and announce it; its manifest."""
        manifest = await self.store.import_file(path, chunk_size=chunk_size)
        await self._announce(manifest.cid)
        return manifest

    async def _announce(self, cid: bytes) -> None:
        try:
            await self._provide(cid)
        except Exception as exc:  # a blob held but not yet announced is still served
            log_event(
                self._log, logging.WARNING, "provide failed", cid=cid_to_text(cid), reason=exc
            )

    # -- fetching ------------------------------------------------------------------------

    async def fetch(self, cid: bytes, *, progress: ProgressFn | None = None) -> Path:
        """The local path of blob ``cid``, downloading it from providers if needed.

        ``progress(bytes_held, total)`` is called as chunks arrive. ``ContentFetchError``
        when no provider can deliver it; cancelling keeps the partial download.
        """
        if self.store.has(cid):
            return self.store.path(cid)
        joined = self._joins.get(cid)
        if joined is not None:  # someone else is fetching it: wait for the same result
            return await asyncio.shield(joined)
        fut: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._joins[cid] = fut
        owner = asyncio.current_task()
        if owner is not None:
            self._owners.add(owner)
        try:
            path = await self._fetch(cid, progress)
        except BaseException as exc:
            if not fut.done():
                if isinstance(exc, asyncio.CancelledError):
                    fut.set_exception(ContentFetchError(cid, "fetch cancelled"))
                else:
                    fut.set_exception(exc)
                fut.exception()  # retrieved: joiners may be none
            self._stats["fetches_failed"] += 1
            raise
        finally:
            self._joins.pop(cid, None)
            if owner is not None:
                self._owners.discard(owner)
        if not fut.done():
            fut.set_result(path)
        self._stats["fetches_completed"] += 1
        return path

    async def _providers(self, cid: bytes, banned: set[bytes]) -> list[bytes]:
        try:
            found = await self._find_providers(cid)
        except Exception as exc:
            log_event(self._log, logging.WARNING, "find providers failed", reason=exc)
            return []
        out: list[bytes] = []
        for key in found:
            if key != self._self_key and key not in banned and key not in out:
                out.append(key)
        return out

    async def _link(self, key: bytes) -> bool:
        if self._transport.has_link(key):
            return True
        try:
            async with asyncio.timeout(self.config.link_timeout):
                return await self._ensure_link(key)
        except (TimeoutError, PeerNotConnected, OSError):
            return False

    async def _fetch(self, cid: bytes, progress: ProgressFn | None) -> Path:
        banned: set[bytes] = set()
        providers = await self._providers(cid, banned)
        listing = await self._listing(cid, providers, banned)
        refreshes = 0
        while listing is None and refreshes < self.config.provider_refreshes:
            refreshes += 1
            await asyncio.sleep(self.config.refresh_delay * refreshes)
            providers = await self._providers(cid, banned)
            listing = await self._listing(cid, providers, banned)
        if listing is None:
            reason = "no provider answered with the manifest" if providers else "no providers"
            raise ContentFetchError(cid, reason)
        manifest, leaves = listing
        try:
            partial = await self.store.open_partial(manifest, leaves)
        except ContentStoreError as exc:
            raise ContentFetchError(cid, str(exc)) from None
        sched = FetchScheduler.for_manifest(manifest, partial.have, self.config.fetch)
        sched.add_providers(k for k in providers if k not in banned)
        st = _Fetch(cid, manifest, partial, sched, progress)
        st.have_bytes = sum(manifest.chunk_length(i) for i in partial.have)
        self._fetches[cid] = st
        log_event(
            self._log,
            logging.INFO,
            "fetch started",
            cid=cid_to_text(cid),
            size=manifest.size,
            chunks=manifest.chunk_count,
            resumed=partial.resumed,
            providers=len(providers),
        )
        try:
            await self._run(st, refreshes, banned)
            path = await partial.complete()
        finally:
            self._fetches.pop(cid, None)
            tasks = list(st.tasks.values()) + list(st.links.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await partial.close()
        log_event(self._log, logging.INFO, "fetch done", cid=cid_to_text(cid), size=manifest.size)
        await self._announce(cid)
        return path

    async def _run(self, st: _Fetch, refreshes: int, banned: set[bytes]) -> None:
        loop = asyncio.get_running_loop()
        sched = st.sched
        self._report(st)
        while not sched.done:
            if st.error is not None:
                raise st.error
            now = loop.time()
            for req in sched.next_requests(now):
                st.tasks[req] = asyncio.create_task(
                    self._get_chunk(st, req), name=f"content-chunk-{req.index}"
                )
            if sched.failed:
                if refreshes >= self.config.provider_refreshes:
                    raise ContentFetchError(st.cid, sched.reason)
                refreshes += 1
                await asyncio.sleep(self.config.refresh_delay * refreshes)
                fresh = await self._providers(st.cid, banned | set(sched.banned))
                sched.add_providers(fresh)
                continue
            wakeup = sched.next_wakeup(now)
            st.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if wakeup is None else max(0.0, wakeup - now)):
                    await st.wake.wait()

    async def _get_chunk(self, st: _Fetch, req: Request) -> None:
        """One chunk request: its outcome goes to the scheduler, then the loop wakes up."""
        key, index = req.provider, req.index
        outcome: str
        cancel: list[Request] = []
        try:
            link = st.links.get(key)
            if link is None or (link.done() and not self._transport.has_link(key)):
                link = st.links[key] = asyncio.create_task(self._link(key))
            if not await asyncio.shield(link):  # shared by this provider's requests
                outcome = "no-link"
            else:
                body = await self.rpc.call_view(
                    key,
                    METHOD_CHUNK,
                    encode(GetChunk(st.cid, index)),
                    timeout=self.config.chunk_timeout,
                )
                got, data = decode_chunk(body)
                ok = got == index and await st.partial.write_verified(index, data)
                outcome = "ok" if ok else "bad"
        except ContentDecodeError:
            outcome = "bad"
        except RpcOverloaded:
            outcome = "busy"
        except RpcRemoteError as exc:
            outcome = "refused" if exc.code in _FATAL_CODES else "failed"
        except (RpcError, PeerNotConnected):
            outcome = "failed"
        except Exception as exc:  # a local failure (disk): stop the fetch with it
            st.error = exc
            outcome = "failed"
        finally:
            if st.tasks.get(req) is asyncio.current_task():
                del st.tasks[req]
        now = asyncio.get_running_loop().time()
        sched = st.sched
        if outcome in ("ok", "bad"):
            cancel = sched.on_chunk(key, index, outcome == "ok", now)
        elif outcome in ("no-link", "refused"):
            sched.on_failure(key, index, now, drop=True, reason=f"{short_id(key)}: {outcome}")
        else:
            sched.on_failure(key, index, now, reason=f"{short_id(key)}: requests {outcome}")
        if outcome == "ok":
            self._stats["chunks_fetched"] += 1
            length = st.manifest.chunk_length(index)
            self._stats["bytes_fetched"] += length
            st.have_bytes = min(st.manifest.size, st.have_bytes + length)
            self._report(st)
        elif outcome == "bad":
            self._stats["bad_chunks"] += 1
            self._stats["providers_banned"] += 1
            log_event(
                self._log,
                logging.WARNING,
                "provider banned",
                peer=short_id(key),
                cid=cid_to_text(st.cid),
                chunk=index,
                reason="chunk failed verification",
            )
        for other in cancel:
            task = st.tasks.pop(other, None)
            if task is not None:
                task.cancel()
        st.wake.set()

    def _report(self, st: _Fetch) -> None:
        if st.progress is not None:
            try:
                st.progress(st.have_bytes, st.manifest.size)
            except Exception:
                self._log.exception("content progress callback failed")

    async def _listing(
        self, cid: bytes, providers: Sequence[bytes], banned: set[bytes]
    ) -> tuple[Manifest, bytes] | None:
        """The verified manifest and leaves from the first provider that has them."""
        for key in providers:
            if key in banned or not await self._link(key):
                continue
            try:
                return await self._listing_from(cid, key)
            except (ManifestError, ContentDecodeError) as exc:
                banned.add(key)
                self._stats["providers_banned"] += 1
                log_event(
                    self._log,
                    logging.WARNING,
                    "provider banned",
                    peer=short_id(key),
                    cid=cid_to_text(cid),
                    reason=f"bad listing: {exc}",
                )
            except (RpcError, PeerNotConnected) as exc:
                log_event(
                    self._log,
                    logging.INFO,
                    "manifest request failed",
                    peer=short_id(key),
                    cid=cid_to_text(cid),
                    reason=exc,
                )
            except ContentFetchError:
                raise
        return None

    async def _listing_from(self, cid: bytes, key: bytes) -> tuple[Manifest, bytes]:
        pages: list[bytes] = []
        manifest: Manifest | None = None
        held = 0
        while True:
            body = await self.rpc.call(
                key,
                METHOD_MANIFEST,
                encode(GetManifest(cid, held)),
                timeout=self.config.manifest_timeout,
            )
            page = decode_as(body, ManifestPage)
            if manifest is None:
                manifest = page.manifest
                if manifest.cid != cid:
                    raise ManifestError("cid", "manifest does not hash to the requested cid")
                if manifest.size > self.config.max_blob_size:
                    raise ContentFetchError(
                        cid, f"blob of {manifest.size} bytes exceeds {self.config.max_blob_size}"
                    )
            elif page.manifest != manifest:
                raise ManifestError("manifest", "changed between pages")
            count = len(page.leaves) // HASH_BYTES
            if page.start != held or held + count > manifest.chunk_count:
                raise ManifestError("leaves", f"page at {page.start} with {count} leaves")
            pages.append(page.leaves)
            held += count
            if held == manifest.chunk_count:
                break
            if count == 0:
                raise ManifestError("leaves", "empty page before the end of the listing")
        leaves = b"".join(pages)
        verify_listing(cid, manifest, leaves)
        return manifest, leaves

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """Counters (bytes/chunks served and fetched, bad chunks, bans) and fetches."""
        return {
            **{
                name: self._stats[name]
                for name in (
                    "bytes_served",
                    "chunks_served",
                    "manifests_served",
                    "bytes_fetched",
                    "chunks_fetched",
                    "bad_chunks",
                    "providers_banned",
                    "fetches_completed",
                    "fetches_failed",
                )
            },
            "fetches": {
                cid_to_text(cid): {
                    "size": st.manifest.size,
                    "have_bytes": st.have_bytes,
                    **st.sched.status(),
                }
                for cid, st in self._fetches.items()
            },
            "rpc": self.rpc.stats(),
        }


Req = TypeVar("Req", GetManifest, GetChunk, Have)


def _decode_request(body: bytes, cls: type[Req]) -> Req:
    try:
        return decode_as(body, cls)
    except ContentDecodeError as exc:
        raise RpcFailure(ERR_MALFORMED, str(exc)) from None
