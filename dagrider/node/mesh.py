"""The mesh side of a node: the Kademlia DHT and the content layer on its peer transport.

Members and peers both run it. It wires the content layer's needs (who provides a CID,
how to reach a peer, how to announce ourselves) to the DHT, keeps the addresses the DHT
taught us so that a provider can be dialled, and adapts the content service to what the
HTTP routes need (:class:`~dagrider.node.content_api.ContentBackend`).

With NAT traversal on, what we advertise follows what it learns
(:mod:`p2p.nat.advertise`): verified reachable addresses (a UPnP mapping included), our
listen address unless it is private and peers see us elsewhere, and once we are private,
our relays' addresses, with a signed relay record naming the relays so that a peer that
cannot dial us finds a relay through the DHT (:meth:`Mesh._ensure_link`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from dagrider.node.config import NodeConfig
from dagrider.node.content_api import (
    BadContentId,
    BlobInfo,
    ContentBackend,
    ContentUnavailable,
    UploadTooLarge,
)
from dagrider.node.metrics import Metrics
from p2p.content.manifest import CidTextError, cid_from_text, cid_to_text
from p2p.content_service import ContentConfig, ContentFetchError, ContentService
from p2p.content_store import ContentNotFound, ContentStore, ContentTooLarge
from p2p.dht.messages import Ping
from p2p.dht.peer import PeerInfo
from p2p.dht_service import DhtConfig, DhtQueryError, DhtService
from p2p.identity import Identity
from p2p.mdns import Announcement, MdnsDiscovery
from p2p.nat.advertise import (
    RELAYS_RECORD,
    RelayRecordError,
    advertised_addrs,
    decode_relays,
    encode_relays,
)
from p2p.nat_service import NatService
from p2p.transport import PeerTransport

Addr = tuple[str, int]
KNOWN_ADDRESSES = 4096
"""Peers whose DHT-learned addresses we remember for dialling (LRU)."""
KNOWN_FAILURES = 256
"""Failed fetches whose reason ``/v1/content/{cid}/status`` still reports."""
RELAY_RECORD_TTL = 3600.0
"""Lifetime of our signed relay record; the DHT republishes it while we run, and a
change of reservations replaces it at once."""
RELAYED_CONNECT_TIMEOUT = 20.0
"""Longest wait for a link through a relay found in the DHT (relay dial + circuit + TLS)."""


class Mesh:
    """The DHT and content services of one node, and the glue between them."""

    def __init__(
        self,
        cfg: NodeConfig,
        transport: PeerTransport,
        identity: Identity,
        *,
        bootstrap: Mapping[bytes, Addr],
        advertise: tuple[Addr, ...],
        server_mode: Callable[[], bool],
        logger: logging.Logger,
        nat: NatService | None = None,
    ) -> None:
        self.log = logger
        self.transport = transport
        self.nat = nat
        self._listen = advertise
        self._explicit = bool(cfg.dht_advertise)  # the operator's word is taken as said
        self._relays_value: bytes | None = None
        self._readvertise: asyncio.Task[None] | None = None
        self._readvertise_again = False
        if nat is not None:  # nothing private until peers tell us where they see us
            advertise = self._advertised()
            nat.listeners.append(self._nat_changed)
        self.self_info = PeerInfo(identity.public_key, advertise)
        self._known: OrderedDict[bytes, PeerInfo] = OrderedDict()
        seeds = [PeerInfo(key, (addr,)) for key, addr in bootstrap.items()]
        for seed in seeds:
            self._remember(seed)
        self.dht = DhtService(
            transport,
            self.self_info,
            DhtConfig(k=cfg.dht_k, alpha=cfg.dht_alpha, disjoint_paths=cfg.dht_disjoint_paths),
            bootstrap=seeds,
            server_mode=server_mode,
            logger=logger.getChild("dht"),
            seq_file=cfg.data_dir / "dht-seq.json",  # our records' seq survives restarts
        )
        self.store = ContentStore(
            cfg.data_dir / "content",
            chunk_size=cfg.content_chunk_size,
            max_blob_size=cfg.content_max_blob_bytes,
            fsync=cfg.fsync,
        )
        self.content = ContentService(
            transport,
            self.store,
            find_providers=self._find_providers,
            ensure_link=self._ensure_link,
            provide=self.dht.provide,
            config=ContentConfig(
                chunk_size=cfg.content_chunk_size, max_blob_size=cfg.content_max_blob_bytes
            ),
            logger=logger.getChild("content"),
        )
        self._backend = _Backend(self)
        self._started = False
        self._announcer: asyncio.Task[None] | None = None
        self._server_mode = server_mode
        self.mdns: MdnsDiscovery | None = None
        self._discovery: asyncio.Task[None] | None = None
        if cfg.mdns_enabled:  # [discovery] mdns: LAN peers, dialled through the transport
            self.mdns = MdnsDiscovery(
                identity.public_key, advertise, self._discovered, logger.getChild("mdns")
            )

    def start(self) -> None:
        """Start the DHT (bootstrap, refresh) and re-announce the blobs held."""
        self.dht.start()
        self._announcer = asyncio.create_task(self._announce_held(), name="mesh-announce")
        self._started = True
        if self.mdns is not None:
            self._discovery = asyncio.create_task(self._start_mdns(self.mdns), name="mesh-mdns")

    async def _start_mdns(self, mdns: MdnsDiscovery) -> None:
        """Join the multicast group and announce; a LAN without multicast costs the
        node its discovery, not its start."""
        try:
            await mdns.start()
        except OSError as exc:
            self.log.warning("mdns unavailable", extra={"reason": str(exc)})

    async def _discovered(self, found: Announcement) -> None:
        """A LAN peer announced itself: dial it through the authenticated transport
        (the TLS handshake proves its key) and introduce ourselves to its DHT, which
        then routes to us; its own discovery of us does the same the other way."""
        info = PeerInfo(found.key, found.addrs)
        if not await self.dht.ensure_link(info):
            if self.mdns is not None:
                self.mdns.forget(found.key)
            return
        self._remember(info)
        sender = self.self_info if self._server_mode() and self.self_info.addrs else None
        try:
            await self.dht.request(info, Ping(sender=sender))
        except DhtQueryError as exc:
            self.log.info("mdns peer did not answer", extra={"reason": str(exc)})

    async def _announce_held(self) -> None:
        """After bootstrap: announce the blobs kept from an earlier run (the DHT
        republishes them from then on) and resume the downloads a stop interrupted."""
        await self.dht.ready.wait()
        for manifest in self.store.list():
            try:
                await self.dht.provide(manifest.cid)
            except Exception as exc:  # the DHT retries at its republish interval
                self.log.warning(
                    "announce failed", extra={"cid": cid_to_text(manifest.cid), "reason": str(exc)}
                )
        for cid in self.store.partials():
            self.log.info("resuming download", extra={"cid": cid_to_text(cid)})
            self._backend.start_fetch(cid)

    async def close(self) -> None:
        if self.nat is not None and self._nat_changed in self.nat.listeners:
            self.nat.listeners.remove(self._nat_changed)
        if self._readvertise is not None:
            self._readvertise.cancel()
            await asyncio.gather(self._readvertise, return_exceptions=True)
        if not self._started:
            return
        if self._announcer is not None:
            self._announcer.cancel()
            await asyncio.gather(self._announcer, return_exceptions=True)
        if self._discovery is not None:
            await asyncio.gather(self._discovery, return_exceptions=True)
        if self.mdns is not None:
            await self.mdns.close()
        await self._backend.close()
        await self.content.close()
        await self.dht.close()

    def content_backend(self) -> ContentBackend:
        return self._backend

    # -- glue ---------------------------------------------------------------------------

    def _remember(self, info: PeerInfo) -> None:
        if not info.addrs:
            return
        self._known[info.key] = info
        self._known.move_to_end(info.key)
        while len(self._known) > KNOWN_ADDRESSES:
            self._known.popitem(last=False)

    async def _find_providers(self, cid: bytes) -> list[bytes]:
        found = await self.dht.find_providers(cid)
        for info in found:
            self._remember(info)
        return [info.key for info in found if info.key != self.self_info.key]

    async def _ensure_link(self, key: bytes) -> bool:
        """A link to ``key``: at an address we know or the DHT finds, else through a
        relay named in its signed relay record (a peer behind a NAT)."""
        if self.transport.has_link(key):
            return True
        info = self._known.get(key)
        if info is None:
            info = await self.dht.find_peer(key)
            if info is not None:
                self._remember(info)
        if info is not None and await self.dht.ensure_link(info):
            return True
        return await self._connect_relayed(key)

    async def _connect_relayed(self, key: bytes) -> bool:
        if self.nat is None:
            return False
        try:
            record = await self.dht.get_record(key, RELAYS_RECORD)
        except Exception as exc:  # a failed lookup is "no relay known", not a crash
            self.log.info("relay record lookup failed", extra={"reason": str(exc)})
            return False
        if record is None:
            return False
        try:
            relays = decode_relays(record.value)
        except RelayRecordError as exc:
            self.log.info("bad relay record", extra={"reason": str(exc)})
            return False
        if not relays:
            return False
        return await self.nat.connect_via(key, relays, RELAYED_CONNECT_TIMEOUT)

    # -- what we advertise (NAT traversal on) -----------------------------------------

    def _advertised(self) -> tuple[Addr, ...]:
        nat = self.nat
        assert nat is not None
        started = nat.server is not None  # its clock needs the running loop
        return advertised_addrs(
            listen=self._listen,
            explicit=self._explicit,
            status=nat.reach.status,
            reachable=nat.reach.reachable,
            observed=nat.observed_addrs(),
            relays=nat.reservation_addrs() if started else {},
        )

    def _nat_changed(self) -> None:
        """NAT traversal learned something: re-sign our records (coalesced, in a task)."""
        if self._readvertise is not None and not self._readvertise.done():
            self._readvertise_again = True
            return
        self._readvertise = asyncio.get_running_loop().create_task(
            self._update_advertisement(), name="mesh-advertise"
        )

    async def _update_advertisement(self) -> None:
        while True:
            self._readvertise_again = False
            addrs = self._advertised()
            if addrs != self.dht.self_info.addrs:
                self.log.info("advertised addresses", extra={"addrs": [list(a) for a in addrs]})
                self.dht.set_addrs(addrs)
                self.self_info = self.dht.self_info
            assert self.nat is not None
            value = encode_relays(self.nat.reservation_addrs())
            if value != self._relays_value and (
                self._relays_value is not None or value != encode_relays({})
            ):
                try:
                    await self.dht.put_record(RELAYS_RECORD, value, ttl=RELAY_RECORD_TTL)
                    self._relays_value = value
                except Exception as exc:  # retried on the next change
                    self.log.warning("relay record not published", extra={"reason": str(exc)})
            if not self._readvertise_again:
                return

    # -- introspection ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {"dht": self.dht.status(), "content": self.content.status()}
        if self.mdns is not None:
            st["mdns"] = self.mdns.status()
        return st

    def add_metrics(self, r: Metrics) -> None:
        """Scrape-time gauges and counters over the DHT's and the content layer's own
        numbers: nothing is counted twice, nothing costs anything between scrapes."""
        for name, help_text, read in self._gauges():
            r.gauge(name, help_text).set_function(read)
        for name, help_text, read in self._counters():
            r.counter(name, help_text).set_function(read)

    def _dht_stat(self, key: str) -> Callable[[], float]:
        def read() -> float:
            stats = self.dht.status().get("stats")
            raw = stats.get(key, 0) if isinstance(stats, dict) else 0
            return float(raw) if isinstance(raw, int | float) else 0.0

        return read

    def _content_stat(self, key: str) -> Callable[[], float]:
        def read() -> float:
            raw = self.content.status().get(key, 0)
            return float(raw) if isinstance(raw, int | float) else 0.0

        return read

    def _active_fetches(self) -> float:
        fetches = self.content.status().get("fetches")
        return float(len(fetches)) if isinstance(fetches, dict) else 0.0

    def _gauges(self) -> list[tuple[str, str, Callable[[], float]]]:
        """Current sizes (they go up and down)."""
        core = self.dht.core
        return [
            ("dagrider_dht_routing_peers", "Peers in the routing table", lambda: len(core.routing)),
            ("dagrider_dht_records", "Signed records stored for others", lambda: len(core.records)),
            (
                "dagrider_dht_provider_records",
                "Provider records stored",
                lambda: len(core.providers),
            ),
            ("dagrider_content_blobs", "Complete blobs held", lambda: len(self.store.list())),
            (
                "dagrider_content_fetches_active",
                "Fetches in progress",
                self._active_fetches,
            ),
        ]

    def _counters(self) -> list[tuple[str, str, Callable[[], float]]]:
        """Running totals since the node started."""
        return [
            ("dagrider_dht_lookups_total", "DHT lookups started", self._dht_stat("lookups")),
            (
                "dagrider_dht_query_failures_total",
                "DHT queries that timed out or failed",
                self._dht_stat("query_failures"),
            ),
            (
                "dagrider_dht_requests_served_total",
                "DHT requests this node answered",
                lambda: float(self.dht.core.served),
            ),
            (
                "dagrider_content_bytes_served_total",
                "Chunk bytes served to peers",
                self._content_stat("bytes_served"),
            ),
            (
                "dagrider_content_bytes_fetched_total",
                "Verified chunk bytes fetched from peers",
                self._content_stat("bytes_fetched"),
            ),
            (
                "dagrider_content_bad_chunks_total",
                "Fetched chunks that failed verification",
                self._content_stat("bad_chunks"),
            ),
            (
                "dagrider_content_fetches_completed_total",
                "Fetches that completed",
                self._content_stat("fetches_completed"),
            ),
            (
                "dagrider_content_fetches_failed_total",
                "Fetches that failed",
                self._content_stat("fetches_failed"),
            ),
        ]


class _Backend:
    """:class:`ContentBackend` over the mesh: what the HTTP routes see."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._fetches: dict[bytes, asyncio.Task[BlobInfo]] = {}
        self._failures: OrderedDict[bytes, str] = OrderedDict()

    def parse_cid(self, text: str) -> bytes:
        try:
            return cid_from_text(text)
        except CidTextError as exc:
            raise BadContentId(str(exc)) from None

    async def close(self) -> None:
        tasks = list(self._fetches.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _info(self, cid: bytes) -> BlobInfo | None:
        try:
            m = self.mesh.store.manifest(cid)
        except ContentNotFound:
            return None
        return BlobInfo(cid_to_text(cid), m.size, m.chunk_size, m.chunk_count)

    async def put_stream(self, chunks: AsyncIterator[bytes], limit: int) -> BlobInfo:
        async def bounded() -> AsyncIterator[bytes]:
            total = 0
            async for piece in chunks:
                total += len(piece)
                if total > limit:
                    raise UploadTooLarge(f"upload exceeds the {limit}-byte limit; nothing kept")
                yield piece

        try:
            manifest = await self.mesh.content.put_stream(bounded())
        except ContentTooLarge as exc:
            raise UploadTooLarge(str(exc)) from None
        info = self._info(manifest.cid)
        assert info is not None
        return info

    def local(self, cid: bytes) -> BlobInfo | None:
        return self._info(cid)

    def blobs(self) -> list[BlobInfo]:
        return [
            BlobInfo(cid_to_text(m.cid), m.size, m.chunk_size, m.chunk_count)
            for m in self.mesh.store.list()
        ]

    def _fetch_task(self, cid: bytes) -> asyncio.Task[BlobInfo]:
        task = self._fetches.get(cid)
        if task is None:
            task = asyncio.create_task(self._run_fetch(cid), name=f"fetch-{cid.hex()[:8]}")
            self._fetches[cid] = task
            task.add_done_callback(lambda t: self._fetch_done(cid, t))
        return task

    def _fetch_done(self, cid: bytes, task: asyncio.Task[BlobInfo]) -> None:
        if self._fetches.get(cid) is task:
            del self._fetches[cid]
        if not task.cancelled() and task.exception() is not None:
            self._failures[cid] = str(task.exception())  # shown by fetch_status
            while len(self._failures) > KNOWN_FAILURES:
                self._failures.popitem(last=False)

    async def _run_fetch(self, cid: bytes) -> BlobInfo:
        try:
            await self.mesh.content.fetch(cid)
        except ContentFetchError as exc:
            raise ContentUnavailable(
                exc.reason, status=404 if "no provider" in exc.reason else 502
            ) from None
        info = self._info(cid)
        if info is None:
            raise ContentUnavailable(f"content {cid.hex()} vanished after its fetch", status=500)
        return info

    async def fetch(self, cid: bytes) -> BlobInfo:
        return await asyncio.shield(self._fetch_task(cid))

    def start_fetch(self, cid: bytes) -> None:
        self._failures.pop(cid, None)
        self._fetch_task(cid)

    def fetch_status(self, cid: bytes) -> dict[str, Any] | None:
        task = self._fetches.get(cid)
        if task is None:
            failure = self._failures.get(cid)
            return None if failure is None else {"state": "failed", "error": failure}
        fetches = self.mesh.content.status().get("fetches")
        progress = fetches.get(cid_to_text(cid)) if isinstance(fetches, dict) else None
        doc: dict[str, Any] = {"state": "fetching"}
        if isinstance(progress, dict):
            doc.update(progress)
        return doc

    async def read_range(self, cid: bytes, start: int, end: int) -> AsyncIterator[bytes]:
        async for piece in await self.mesh.store.read_range(cid, start, end):
            yield piece

    async def providers(self, cid: bytes) -> list[dict[str, Any]]:
        found = await self.mesh.dht.find_providers(cid)
        if self.local(cid) is not None:
            found.insert(0, self.mesh.self_info)
        return [
            {"key": p.key.hex(), "addrs": [f"{h}:{port}" for h, port in p.addrs]} for p in found
        ]
