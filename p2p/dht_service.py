"""The asyncio shell of the Kademlia DHT: RPC in and out, lookups, timers.

The protocol lives in the pure package ``p2p.dht`` (routing table, stores, the lookup
machine, the request handler ``DhtCore``). This shell only moves data between it and
the network, and owns the clock:

- **Serving.** One ``RpcEndpoint`` on ``FrameKind.DHT`` with one method, ``"dht"``,
  whose body is a ``p2p.dht.messages`` request. Bytes that do not decode are logged with
  the reason and answered ``"malformed"``; a sender claiming another key than the link's
  is answered ``"sender-mismatch"``; neither changes any state.
- **Lookups.** A ``Lookup`` machine says whom to ask; the shell keeps up to ``alpha``
  queries per path in flight (``rpc.call`` with ``request_timeout``), dials each peer
  first (``ensure_link``), and feeds answers, failures and timeouts back to the machine
  and to the routing table. Queries still in flight when the lookup is done are
  cancelled (the peer cancels its handler too).
- **Modes.** ``server_mode()`` is asked on every request: True puts our ``PeerInfo`` in
  ``sender`` so that peers add us to their tables; False (behind a NAT, not dialable)
  leaves it out: we can look things up but nobody routes through us.
- **Timers.** Bootstrap (ping the configured peers, look up our own id, refresh every
  bucket), then periodically: expiry sweep, bucket refresh, a few liveness pings,
  republish of our records, of stored records that are due, and of our provider records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from p2p.dht.config import DhtConfig
from p2p.dht.lookup import Lookup, LookupKind, LookupResult
from p2p.dht.messages import (
    AddProvider,
    DhtDecodeError,
    Ping,
    PutRecord,
    PutResult,
    Request,
    Response,
    decode_request,
    decode_response,
    encode,
)
from p2p.dht.peer import PeerInfo, node_id
from p2p.dht.records import Record, RecordError, record_key, sign_provider, sign_record, supersedes
from p2p.dht.server import DhtCore, DhtRequestError
from p2p.dht_seq import SeqFile
from p2p.errors import P2PError, PeerNotConnected
from p2p.framing import FrameKind
from p2p.identity import short_id
from p2p.logs import log_event
from p2p.rpc import RpcConfig, RpcEndpoint, RpcFailure
from p2p.transport import PeerTransport

__all__ = ["METHOD", "DhtConfig", "DhtQueryError", "DhtService", "PeerInfo", "Record"]

METHOD: Final = "dht"
RPC_CONFIG: Final = RpcConfig(max_request_bytes=64 * 1024, max_response_bytes=64 * 1024)
LIVENESS_PINGS_PER_TICK: Final = 3
MODE_CHECK_S: Final = 1.0
"""How often the service notices a server -> client switch (NAT reachability turned
private) and tells its contacts, so that they stop handing out our address."""
BOOTSTRAP_RETRY_S: Final = 0.5
"""First retry of a bootstrap that found nobody (doubling up to the maintenance tick):
bootstrap peers that start after us are found within seconds, not a tick later."""


class DhtQueryError(P2PError):
    """A request of ours to one peer failed (no link, timeout, error answer, bad bytes)."""


class DhtService:
    """One node's DHT: serves peers' requests and runs our lookups (see module doc)."""

    def __init__(
        self,
        transport: PeerTransport,
        self_info: PeerInfo,
        config: DhtConfig,
        *,
        bootstrap: Sequence[PeerInfo],
        server_mode: Callable[[], bool],
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
        rpc_config: RpcConfig = RPC_CONFIG,
        seq_file: Path | None = None,
    ) -> None:
        """``seq_file``: where the ``seq`` of our own records is kept across restarts (in
        the data directory); None keeps it in memory only (tests, throwaway nodes)."""
        if self_info.key != transport.identity.public_key:
            raise ValueError("self_info.key must be the transport's identity key")
        self.transport = transport
        self.self_info = self_info
        self.config = config
        self.core = DhtCore(self_info, config, now=clock())
        self._bootstrap = tuple(p for p in bootstrap if p.key != self_info.key)
        self._server_mode = server_mode
        self._log = logger or logging.getLogger("p2p.dht")
        self._clock = clock
        self._identity = transport.identity
        self.rpc = RpcEndpoint(
            transport, FrameKind.DHT, {METHOD: self._serve}, rpc_config, self._log
        )
        self._own_records: dict[bytes, Record] = {}
        self._seqs = SeqFile(seq_file) if seq_file is not None else None
        self._own_republish_at: dict[bytes, float] = {}
        self._providing: dict[bytes, float] = {}  # content key -> next announcement
        self._pinging: set[bytes] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._maintainer: asyncio.Task[None] | None = None
        self._liveness_cursor = 0
        self._stats: Counter[str] = Counter()
        self.ready = asyncio.Event()
        """Set once the first bootstrap attempt is over (whatever its outcome)."""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the maintenance loop (it bootstraps first) and the mode watcher."""
        if self._maintainer is None:
            self._maintainer = asyncio.create_task(self._maintain(), name="dht-maintain")
            self._spawn(self._watch_mode(), "dht-mode")

    async def _watch_mode(self) -> None:
        """On a switch to client mode, ping every contact without a sender: a request
        without one makes the receiver drop us from its table (``DhtCore.handle``)."""
        server = self._server_mode()
        while True:
            await asyncio.sleep(MODE_CHECK_S)
            now_server = self._server_mode()
            if server and not now_server:
                self._stats["became_client"] += 1
                log_event(self._log, logging.INFO, "dht client mode", table=len(self.core.routing))
                for peer in self.core.routing.peers():
                    self._ping_later(peer)
            server = now_server

    async def close(self) -> None:
        """Stop timers and background work, fail our pending calls, stop serving."""
        tasks = [*self._background]
        if self._maintainer is not None:
            tasks.append(self._maintainer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.rpc.close()

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def _tick(self) -> float:
        c = self.config
        shortest = min(c.refresh_interval, c.republish_interval, c.provider_republish_interval)
        return max(0.05, min(60.0, shortest / 10))

    async def _maintain(self) -> None:
        try:
            await self.bootstrap()
        except Exception:
            self._log.exception("dht bootstrap failed")
        self.ready.set()
        retry = BOOTSTRAP_RETRY_S
        while True:
            alone = len(self.core.routing) == 0 and bool(self._bootstrap)
            await asyncio.sleep(min(retry, self._tick) if alone else self._tick)
            retry = retry * 2 if alone else BOOTSTRAP_RETRY_S
            try:
                await self._maintenance_round()
            except Exception:
                self._log.exception("dht maintenance failed")

    async def _maintenance_round(self) -> None:
        now = self._clock()
        expired = self.core.records.expire(now) + self.core.providers.expire(now)
        self._stats["expired"] += expired
        if len(self.core.routing) == 0 and self._bootstrap:
            await self.bootstrap()
            return
        for target in self.core.routing.stale_buckets(
            now, self.config.refresh_interval, os.urandom(32)
        ):
            self._stats["refreshes"] += 1
            await self._lookup(target, "nodes")
        self._ping_some()
        await self._republish(now)

    # -- bootstrap and liveness -------------------------------------------------------------

    async def bootstrap(self) -> None:
        """Ping the configured peers, look up our own id, then refresh every bucket."""
        await asyncio.gather(
            *(self._query(p, Ping(sender=self._sender())) for p in self._bootstrap)
        )
        await self._lookup(self.self_info.id, "nodes")
        targets = self.core.routing.stale_buckets(self._clock(), 0.0, os.urandom(32))
        await asyncio.gather(*(self._lookup(t, "nodes") for t in targets))
        self._stats["bootstraps"] += 1
        log_event(
            self._log,
            logging.INFO,
            "dht bootstrapped",
            peer=short_id(self.self_info.key),
            table=len(self.core.routing),
        )

    def _ping_some(self) -> None:
        """Ping a few table entries per tick, round robin, so dead entries get noticed."""
        peers = self.core.routing.peers()
        for _ in range(min(LIVENESS_PINGS_PER_TICK, len(peers))):
            self._liveness_cursor = (self._liveness_cursor + 1) % len(peers)
            self._ping_later(peers[self._liveness_cursor])

    def _ping_later(self, peer: PeerInfo) -> None:
        if peer.key in self._pinging:
            return
        self._pinging.add(peer.key)

        async def ping() -> None:
            try:
                await self._query(peer, Ping(sender=self._sender()))
            finally:
                self._pinging.discard(peer.key)

        self._stats["liveness_pings"] += 1
        self._spawn(ping(), f"dht-ping-{short_id(peer.key)}")

    def _run_liveness_checks(self) -> None:
        for check in self.core.take_liveness_checks():
            self._ping_later(check.peer)

    # -- serving ----------------------------------------------------------------------------

    async def _serve(self, peer: bytes, body: bytes) -> bytes:
        try:
            request = decode_request(body)
        except DhtDecodeError as exc:
            self._stats["malformed_requests"] += 1
            log_event(
                self._log,
                logging.WARNING,
                "dht request refused",
                peer=short_id(peer),
                code="malformed",
                reason=str(exc),
            )
            raise RpcFailure("malformed", str(exc)) from None
        try:
            response = self.core.handle(peer, request, self._clock())
        except DhtRequestError as exc:
            self._stats["refused_requests"] += 1
            log_event(
                self._log,
                logging.WARNING,
                "dht request refused",
                peer=short_id(peer),
                code=exc.code,
                reason=exc.detail,
            )
            raise RpcFailure(exc.code, exc.detail) from None
        if isinstance(response, PutResult) and not response.stored:
            log_event(
                self._log,
                logging.INFO,
                "dht store refused",
                peer=short_id(peer),
                request=type(request).__name__,
                reason=response.reason,
            )
        self._run_liveness_checks()
        return encode(response)

    # -- querying ---------------------------------------------------------------------------

    def _sender(self) -> PeerInfo | None:
        return self.self_info if self._server_mode() else None

    async def ensure_link(self, peer: PeerInfo) -> bool:
        """A live link to ``peer``, dialling its addresses in turn if needed."""
        if self.transport.has_link(peer.key):
            return True
        for addr in peer.addrs:
            try:
                await self.transport.connect(peer.key, addr, timeout=self.config.request_timeout)
                return True
            except (PeerNotConnected, TimeoutError) as exc:
                log_event(
                    self._log,
                    logging.DEBUG,
                    "dht dial failed",
                    peer=short_id(peer.key),
                    addr=addr,
                    reason=str(exc) or "timed out",
                )
        return False

    async def request(self, peer: PeerInfo, request: Request) -> Response:
        """Send one request to ``peer`` (dialling it first); ``DhtQueryError`` on failure."""
        if not await self.ensure_link(peer):
            raise DhtQueryError(f"cannot reach {short_id(peer.key)} at {list(peer.addrs)}")
        try:
            raw = await self.rpc.call(
                peer.key, METHOD, encode(request), timeout=self.config.request_timeout
            )
            return decode_response(raw)
        except (P2PError, TimeoutError) as exc:
            raise DhtQueryError(f"{type(request).__name__} to {short_id(peer.key)}: {exc}") from exc

    async def _query(self, peer: PeerInfo, request: Request) -> Response | None:
        """``request`` with the routing table told of the outcome; None on failure."""
        try:
            response = await self.request(peer, request)
        except DhtQueryError as exc:
            self._stats["query_failures"] += 1
            log_event(
                self._log,
                logging.DEBUG,
                "dht query failed",
                peer=short_id(peer.key),
                reason=str(exc),
            )
            self.core.peer_failed(peer.key, self._clock())
            return None
        self._stats["queries"] += 1
        self.core.peer_responded(peer, self._clock())
        self._run_liveness_checks()
        return response

    async def _lookup(
        self, target: bytes, kind: LookupKind, *, provider_limit: int | None = None
    ) -> LookupResult:
        seeds = self.core.routing.closest(target, self.config.k) or list(self._bootstrap)
        lookup = Lookup.from_config(
            target,
            seeds,
            self.config,
            kind=kind,
            self_key=self.self_info.key,
            provider_limit=provider_limit,
        )
        self.core.routing.touch(target, self._clock())
        request = lookup.request(self._sender())
        inflight: dict[asyncio.Task[Response | None], tuple[PeerInfo, float]] = {}
        self._stats["lookups"] += 1
        try:
            while not lookup.done:
                now = self._clock()
                for peer in lookup.next_queries(now):
                    task = asyncio.create_task(self._query(peer, request))
                    inflight[task] = (peer, now)
                if not inflight:
                    break
                slow_at = [
                    t + self.config.slow_after
                    for _, t in inflight.values()
                    if t + self.config.slow_after > now
                ]
                timeout = min(slow_at) - now if slow_at else None
                finished, _ = await asyncio.wait(
                    inflight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in finished:
                    peer, _sent = inflight.pop(task)
                    response = task.result()
                    if response is None:
                        lookup.on_failure(peer.key, self._clock())
                    else:
                        lookup.on_response(peer.key, response, self._clock())
        finally:
            for task in inflight:
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
        result = lookup.result
        self._stats["lookup_hops"] += result.hops
        self._stats["lookup_queries"] += result.queries
        self._stats["rejected_records"] += result.rejected
        return result

    async def _store_at(self, peers: Sequence[PeerInfo], request: PutRecord | AddProvider) -> int:
        answers = await asyncio.gather(*(self._query(p, request) for p in peers))
        stored = 0
        for peer, answer in zip(peers, answers, strict=True):
            if isinstance(answer, PutResult) and answer.stored:
                stored += 1
            elif isinstance(answer, PutResult):
                log_event(
                    self._log,
                    logging.INFO,
                    "dht store refused by peer",
                    peer=short_id(peer.key),
                    reason=answer.reason,
                )
        return stored

    # -- public operations ------------------------------------------------------------------

    async def find_peer(self, key: bytes) -> PeerInfo | None:
        """The server-mode peer with public ``key``, from our table or a lookup."""
        known = self.core.routing.get(key)
        if known is not None:
            return known
        result = await self._lookup(node_id(key), "nodes")
        return next((p for p in result.closest if p.key == key), None)

    async def put_record(self, name: bytes, value: bytes, *, ttl: float) -> int:
        """Sign and store our record ``name`` at the k closest peers (and locally); the
        number of peers that stored it. ``RecordError``/``ValueError`` on bad input."""
        if not 0 < ttl <= self.config.max_record_ttl:
            raise ValueError(f"ttl {ttl} not in (0, {self.config.max_record_ttl}]")
        now = self._clock()
        previous = self._own_records.get(name)
        seq = max(int(now * 1000), previous.seq + 1 if previous is not None else 0)
        if self._seqs is not None:  # persisted before the record is signed or sent
            seq = self._seqs.next(name, seq)
        record = sign_record(self._identity, name, value, seq, math.ceil(now + ttl))
        self._own_records[name] = record
        self._own_republish_at[name] = now + self.config.republish_interval
        return await self._publish(record)

    async def _publish(self, record: Record) -> int:
        with contextlib.suppress(RecordError):
            self.core.records.put(record, self._clock())
        result = await self._lookup(record.key, "nodes")
        return await self._store_at(result.closest, PutRecord(record, sender=self._sender()))

    async def get_record(self, author: bytes, name: bytes) -> Record | None:
        """The newest valid record ``name`` of ``author`` that we or the network hold."""
        key = record_key(author, name)
        local = self.core.records.get(key, self._clock())
        result = await self._lookup(key, "record")
        best = result.record
        if local is not None and (best is None or supersedes(local, best)):
            best = local
        if best is not None and result.outdated:
            self._spawn(
                self._store_at(result.outdated, PutRecord(best, sender=self._sender())),
                "dht-repair",
            )
        return best

    async def provide(self, key: bytes) -> int:
        """Announce us as a provider of content ``key``; re-announced while held. The
        number of peers that stored the announcement."""
        if len(key) != 32:
            raise ValueError("content key must be 32 bytes")
        self._providing[key] = self._clock() + self.config.provider_republish_interval
        return await self._announce(key)

    async def _announce(self, key: bytes) -> int:
        now = self._clock()
        rec = sign_provider(
            self._identity, key, self.self_info.addrs, math.ceil(now + self.config.provider_ttl)
        )
        with contextlib.suppress(RecordError):
            self.core.providers.add(rec, now)
        result = await self._lookup(key, "nodes")
        return await self._store_at(result.closest, AddProvider(rec, sender=self._sender()))

    def set_addrs(self, addrs: tuple[tuple[str, int], ...]) -> None:
        """Our dialable addresses changed (NAT traversal verified a mapping, or found us
        private and relays hold reservations for us): requests carry them from now on,
        and every provider record we keep up is signed again with them at once."""
        if addrs == self.self_info.addrs:
            return
        self.self_info = PeerInfo(self.self_info.key, addrs)
        for key in list(self._providing):
            self._spawn(self._announce(key), "dht-reannounce")

    def stop_providing(self, key: bytes) -> None:
        """Stop re-announcing ``key`` (existing announcements expire on their own)."""
        self._providing.pop(key, None)

    async def find_providers(self, key: bytes, *, limit: int = 20) -> list[PeerInfo]:
        """Up to ``limit`` other peers that announced ``key``, freshest first."""
        now = self._clock()
        found: dict[bytes, PeerInfo] = {}
        for rec in self.core.providers.get(key, now):
            found.setdefault(rec.provider.key, rec.provider)
        if len(found) < limit + 1:
            result = await self._lookup(key, "providers", provider_limit=limit + 1)
            for rec in result.providers:
                found.setdefault(rec.provider.key, rec.provider)
        found.pop(self.self_info.key, None)
        return list(found.values())[:limit]

    async def _republish(self, now: float) -> None:
        for name, at in list(self._own_republish_at.items()):
            record = self._own_records[name]
            if record.expires <= now:
                del self._own_records[name], self._own_republish_at[name]
            elif at <= now:
                self._own_republish_at[name] = now + self.config.republish_interval
                self._stats["republished"] += 1
                await self._publish(record)
        for record in self.core.records.due_for_republish(now):
            self.core.records.mark_republished(record.key, now)
            if record.author != self.self_info.key:
                self._stats["republished"] += 1
                result = await self._lookup(record.key, "nodes")
                await self._store_at(result.closest, PutRecord(record, sender=self._sender()))
        for key, at in list(self._providing.items()):
            if at <= now:
                self._providing[key] = now + self.config.provider_republish_interval
                self._stats["reprovided"] += 1
                await self._announce(key)

    # -- introspection ----------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """Routing table, stores, lookup counters and RPC counters, for /status and tests."""
        return {
            "mode": "server" if self._server_mode() else "client",
            "routing_table": len(self.core.routing),
            "buckets": {
                str(i): n for i, n in sorted(self.core.routing.bucket_sizes().items()) if n
            },
            "records": len(self.core.records),
            "providers": len(self.core.providers),
            "provider_keys": self.core.providers.keys(),
            "own_records": len(self._own_records),
            "providing": len(self._providing),
            "served": self.core.served,
            "stats": dict(self._stats),
            "rpc": self.rpc.stats(),
        }
