"""The request side of a DHT node: answer peers' requests from the routing table and stores.

``DhtCore.handle(peer_key, request, now)`` is everything a node does when asked; the
shell calls it with the key the link authenticated. A request's ``sender`` is the
requester's own claim to be a server-mode peer: it enters the routing table only when
its key is the authenticated ``peer_key`` (else the request is refused with
``DhtRequestError("sender-mismatch")``, and nothing changes). Client-mode requesters
(``sender=None``) are answered but never added: they are not dialable.

Refused stores are answered, not raised: ``PutResult(False, reason)`` with the
``p2p.dht.records`` reason code. Answers only contain server-mode peers from the
routing table, never the requester itself.
"""

from __future__ import annotations

from p2p.dht.config import DhtConfig
from p2p.dht.messages import (
    AddProvider,
    FindNode,
    GetProviders,
    GetRecord,
    Nodes,
    Ping,
    Pong,
    ProvidersResult,
    PutRecord,
    PutResult,
    RecordResult,
    Request,
    Response,
)
from p2p.dht.peer import PeerInfo
from p2p.dht.records import RecordError
from p2p.dht.routing import CheckLiveness, RoutingTable
from p2p.dht.store import ProviderStore, RecordStore
from p2p.errors import P2PError

SENDER_MISMATCH = "sender-mismatch"


class DhtRequestError(P2PError):
    """A request is refused as a whole (the shell answers an RPC error with ``code``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class DhtCore:
    """One node's DHT state: routing table, record store, provider store."""

    def __init__(
        self, self_info: PeerInfo, config: DhtConfig | None = None, *, now: float = 0.0
    ) -> None:
        self.self_info = self_info
        self.config = config if config is not None else DhtConfig()
        self.routing = RoutingTable(
            self_info.id,
            k=self.config.k,
            max_failures=self.config.max_failures,
            replacements=self.config.replacements,
            now=now,
        )
        self.records = RecordStore(
            max_records=self.config.max_records,
            max_ttl=self.config.max_record_ttl,
            republish_interval=self.config.republish_interval,
        )
        self.providers = ProviderStore(
            max_keys=self.config.max_provider_keys,
            max_per_key=self.config.max_providers_per_key,
            max_ttl=self.config.max_provider_ttl,
        )
        self._checks: list[CheckLiveness] = []
        self.served = 0

    # -- the routing table from both directions -------------------------------------------

    def peer_responded(self, peer: PeerInfo, now: float) -> None:
        """A server-mode ``peer`` we dialed answered us: it is alive."""
        if peer.key != self.self_info.key and peer.addrs:
            check = self.routing.seen(peer, now)
            if check is not None:
                self._checks.append(check)

    def peer_failed(self, key: bytes, now: float) -> None:
        """A request of ours to ``key`` failed or timed out."""
        self.routing.failed(key, now)

    def take_liveness_checks(self) -> list[CheckLiveness]:
        """Pings the routing table asked for since the last call (answer ->
        ``peer_responded``, failure -> ``peer_failed``)."""
        checks, self._checks = self._checks, []
        return checks

    def closest(self, target: bytes, exclude: bytes | None = None) -> tuple[PeerInfo, ...]:
        """Our k nearest entries to ``target``, leaving out ``exclude``."""
        skip = () if exclude is None else (exclude,)
        return tuple(self.routing.closest(target, self.config.k, exclude=skip))

    # -- requests --------------------------------------------------------------------------

    def handle(self, peer_key: bytes, request: Request, now: float) -> Response:
        """Answer ``request`` from the authenticated ``peer_key`` (see module docstring)."""
        sender = request.sender
        if sender is not None:
            if sender.key != peer_key:
                raise DhtRequestError(
                    SENDER_MISMATCH,
                    f"sender {sender.key.hex()[:8]} on a link of {peer_key.hex()[:8]}",
                )
            self.peer_responded(sender, now)
        else:
            # A request without a sender comes from a client (e.g. a node that learned it
            # is behind a NAT): it must not stay a contact we hand out to others.
            self.routing.remove(peer_key)
        self.served += 1
        if isinstance(request, Ping):
            return Pong()
        if isinstance(request, FindNode):
            return Nodes(self.closest(request.target, peer_key))
        if isinstance(request, GetRecord):
            return RecordResult(
                self.records.get(request.key, now), self.closest(request.key, peer_key)
            )
        if isinstance(request, GetProviders):
            return ProvidersResult(
                tuple(self.providers.get(request.key, now, self.config.max_providers_per_answer)),
                self.closest(request.key, peer_key),
            )
        if isinstance(request, PutRecord):
            try:
                self.records.put(request.record, now)
            except RecordError as exc:
                return PutResult(False, exc.reason)
            return PutResult(True)
        if isinstance(request, AddProvider):
            try:
                self.providers.add(request.record, now)
            except RecordError as exc:
                return PutResult(False, exc.reason)
            return PutResult(True)
        raise DhtRequestError("malformed", f"not a request: {type(request).__name__}")
