"""The iterative Kademlia lookup as a state machine, with optional disjoint paths.

One :class:`Lookup` finds the ``k`` peers closest to a target id (``kind="nodes"``), or
also collects the best valid record stored under the target (``"record"``) or its
provider records (``"providers"``). The caller runs it:

    while not lookup.done:
        for peer in lookup.next_queries(now): send lookup.request(me) to peer
        ... lookup.on_response(peer.key, answer, now) / lookup.on_failure(peer.key, now)

Each path keeps its own candidates sorted by distance and never queries more than
``alpha`` at a time; a query in flight for ``slow_after`` seconds stops counting toward
``alpha`` (it may still answer), so slow or dead peers do not stall the lookup. A path is
done when the ``k`` closest candidates it knows (leaving out failed ones) have all
answered: nothing closer can be learned from anybody it knows.

Disjoint paths (S/Kademlia): the seeds are dealt round-robin to ``disjoint_paths`` paths,
every path learns only from its own answers, and a peer is queried by at most one path.
Peers on a path that lie (hide a record, answer with far or fake contacts) can only
spoil that path, so with ``d`` paths an adversary must sit on all ``d`` to hide a record.

Answers are never trusted: records and provider records are validated (signature, key,
expiry, TTL bound) and invalid ones are counted in ``rejected``; among valid records the
one with the highest ``seq`` wins (``records.supersedes``), so an old or forged record
never beats the current one that any honest peer returned. With ``quorum`` set, a record
lookup stops early once that many peers returned the best record and every path still
running has returned it at least once (liars confined to one path cannot end the
lookup with an old version); ``provider_limit``
stops a provider lookup once that many distinct providers are known.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from p2p.dht.messages import (
    MAX_PEERS,
    FindNode,
    GetProviders,
    GetRecord,
    Nodes,
    ProvidersResult,
    RecordResult,
    Request,
    Response,
)
from p2p.dht.peer import PeerInfo
from p2p.dht.records import (
    MAX_PROVIDER_TTL,
    MAX_RECORD_TTL,
    ProviderRecord,
    Record,
    RecordError,
    supersedes,
    validate_provider,
    validate_record,
)

if TYPE_CHECKING:
    from p2p.dht.config import DhtConfig

LookupKind = Literal["nodes", "record", "providers"]

_NEW: Final = 0
_INFLIGHT: Final = 1
_ANSWERED: Final = 2
_FAILED: Final = 3
_TAKEN: Final = 4  # another path queried this peer


class _Candidate:
    __slots__ = ("dist", "hop", "path", "peer", "sent_at", "state")

    def __init__(self, peer: PeerInfo, dist: int, hop: int, path: _Path) -> None:
        self.peer = peer
        self.dist = dist
        self.hop = hop
        self.path = path
        self.state = _NEW
        self.sent_at = 0.0


_EXPECTED: Final = {"nodes": Nodes, "record": RecordResult, "providers": ProvidersResult}


def _distance(c: _Candidate) -> int:
    return c.dist


class _Path:
    __slots__ = ("by_key", "inflight", "order", "window")

    def __init__(self) -> None:
        self.by_key: dict[bytes, _Candidate] = {}  # everything the path ever learned
        self.order: list[_Candidate] = []  # candidates not failed nor taken, nearest first
        self.inflight: dict[bytes, _Candidate] = {}
        self.window: list[_Candidate] | None = None  # cached k nearest usable; None = stale


@dataclass(frozen=True)
class LookupResult:
    """What a lookup found.

    ``closest``: up to k peers nearest the target that answered, nearest first.
    ``record``: the best valid record (record lookups). ``providers``: valid provider
    records, one per provider. ``outdated``: peers among ``closest`` that answered a
    record lookup without the best record (re-put it to them). ``hops``: the deepest
    answered query (seeds are hop 1). ``queries``/``failures``: requests sent/failed.
    ``rejected``: invalid records or provider records received."""

    closest: tuple[PeerInfo, ...]
    record: Record | None
    providers: tuple[ProviderRecord, ...]
    outdated: tuple[PeerInfo, ...]
    hops: int
    queries: int
    failures: int
    rejected: int


class Lookup:
    """One iterative lookup for ``target`` (see the module docstring)."""

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[PeerInfo],
        *,
        kind: LookupKind = "nodes",
        k: int = 20,
        alpha: int = 3,
        disjoint_paths: int = 1,
        slow_after: float = 1.0,
        quorum: int | None = None,
        provider_limit: int | None = None,
        self_key: bytes | None = None,
        max_record_ttl: float = MAX_RECORD_TTL,
        max_provider_ttl: float = MAX_PROVIDER_TTL,
    ) -> None:
        if len(target) != 32:
            raise ValueError("lookup target must be 32 bytes")
        if kind not in ("nodes", "record", "providers"):
            raise ValueError(f"unknown lookup kind {kind!r}")
        if k < 1 or alpha < 1 or disjoint_paths < 1:
            raise ValueError("k, alpha and disjoint_paths must be >= 1")
        self.target = target
        self.kind: LookupKind = kind
        self.k = k
        self.alpha = alpha
        self.slow_after = slow_after
        self.quorum = quorum
        self.provider_limit = provider_limit
        self.self_key = self_key
        self.max_record_ttl = max_record_ttl
        self.max_provider_ttl = max_provider_ttl
        self._t = int.from_bytes(target, "big")
        self._claimed: dict[bytes, _Path] = {}
        self.responded: list[PeerInfo] = []
        self.queries = 0
        self.failures = 0
        self.rejected = 0
        self._hops = 0
        self._best: Record | None = None
        self._holders: dict[bytes, Record] = {}
        self._providers: dict[bytes, ProviderRecord] = {}
        self._stopped = False
        self._copies: dict[bytes, list[_Candidate]] = {}
        unique: dict[bytes, PeerInfo] = {}
        for peer in seeds:
            if peer.key != self_key and peer.key not in unique:
                unique[peer.key] = peer
        ordered = sorted(unique.values(), key=lambda p: p.int_id ^ self._t)
        n_paths = max(1, min(disjoint_paths, len(ordered)))
        self._paths = [_Path() for _ in range(n_paths)]
        for i, peer in enumerate(ordered):
            self._add(self._paths[i % n_paths], peer, 1)

    @classmethod
    def from_config(
        cls,
        target: bytes,
        seeds: Iterable[PeerInfo],
        config: DhtConfig,
        *,
        kind: LookupKind = "nodes",
        self_key: bytes | None = None,
        provider_limit: int | None = None,
    ) -> Lookup:
        """A lookup with the knobs of ``config``."""
        return cls(
            target,
            seeds,
            kind=kind,
            k=config.k,
            alpha=config.alpha,
            disjoint_paths=config.disjoint_paths,
            slow_after=config.slow_after,
            quorum=config.quorum,
            provider_limit=provider_limit,
            self_key=self_key,
            max_record_ttl=config.max_record_ttl,
            max_provider_ttl=config.max_provider_ttl,
        )

    # -- candidates ------------------------------------------------------------------------

    def _add(self, path: _Path, peer: PeerInfo, hop: int) -> None:
        key = peer.key
        if key in path.by_key or key == self.self_key:
            return
        c = _Candidate(peer, peer.int_id ^ self._t, hop, path)
        path.by_key[key] = c
        if len(self._paths) > 1:
            if key in self._claimed:
                c.state = _TAKEN
                return
            self._copies.setdefault(key, []).append(c)
        bisect.insort(path.order, c, key=_distance)
        window = path.window
        if window is None or len(window) < self.k or c.dist < window[-1].dist:
            path.window = None  # it enters the window

    def _window(self, path: _Path) -> list[_Candidate]:
        """The k nearest candidates of ``path`` that have not failed and that no other
        path has claimed (those are dropped from ``order`` for good). Cached until a
        candidate enters the window or one in it fails or is taken."""
        if path.window is not None:
            return path.window
        out: list[_Candidate] = []
        dead = False
        k = self.k
        for c in path.order:
            if c.state >= _FAILED:
                dead = True
                continue
            out.append(c)
            if len(out) == k:
                break
        if dead:
            path.order = [c for c in path.order if c.state < _FAILED]
        path.window = out
        return out

    # -- driving ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once the lookup has nothing more to learn (or stopped early)."""
        if self._stopped:
            return True
        confirmed = self._confirmed_paths()
        return all(
            p in confirmed or all(c.state == _ANSWERED for c in self._window(p))
            for p in self._paths
        )

    def _confirmed_paths(self) -> list[_Path]:
        """With ``quorum`` peers agreeing on the best record, the paths where at least
        one of them answered; otherwise none. A path that is still running and has not
        returned the best record keeps the lookup going: liars on one path (say, all
        replaying an old version) cannot end the lookup by themselves."""
        if self.quorum is None or self._best is None:
            return []
        agree = [key for key, r in self._holders.items() if r == self._best]
        if len(agree) < self.quorum:
            return []
        paths: list[_Path] = []
        for key in agree:
            path = self._claimed[key]
            if path not in paths:
                paths.append(path)
        return paths

    def request(self, sender: PeerInfo | None) -> Request:
        """The request to send to every peer ``next_queries`` returns."""
        if self.kind == "record":
            return GetRecord(self.target, sender=sender)
        if self.kind == "providers":
            return GetProviders(self.target, sender=sender)
        return FindNode(self.target, sender=sender)

    def next_queries(self, now: float) -> list[PeerInfo]:
        """Peers to query now (each is then in flight until ``on_response`` or
        ``on_failure``): per path, fill up to ``alpha`` non-slow queries in flight with
        the nearest unqueried candidates among the path's k nearest."""
        if self._stopped:
            return []
        out: list[PeerInfo] = []
        confirmed = self._confirmed_paths()
        for path in self._paths:
            if path in confirmed:
                continue
            window = self._window(path)
            busy = sum(1 for c in path.inflight.values() if now - c.sent_at < self.slow_after)
            slots = self.alpha - busy
            for c in window:
                if slots <= 0:
                    break
                if c.state == _NEW:
                    c.state = _INFLIGHT
                    c.sent_at = now
                    path.inflight[c.peer.key] = c
                    self._claimed[c.peer.key] = path
                    for other in self._copies.get(c.peer.key, ()):
                        if other is not c:
                            other.state = _TAKEN
                            other.path.window = None
                    self.queries += 1
                    slots -= 1
                    out.append(c.peer)
        return out

    def next_deadline(self) -> float | None:
        """When the earliest non-slow query in flight becomes slow (call
        ``next_queries`` then); ``None`` if nothing is in flight."""
        times = [c.sent_at + self.slow_after for p in self._paths for c in p.inflight.values()]
        return min(times) if times else None

    def in_flight(self) -> list[PeerInfo]:
        """Peers queried that have neither answered nor failed."""
        return [c.peer for p in self._paths for c in p.inflight.values()]

    def _inflight(self, peer_key: bytes) -> tuple[_Path, _Candidate] | None:
        path = self._claimed.get(peer_key)
        if path is None:
            return None
        c = path.inflight.pop(peer_key, None)
        return None if c is None else (path, c)

    def on_failure(self, peer_key: bytes, now: float) -> None:
        """The query to ``peer_key`` failed or timed out (late or unknown: ignored)."""
        found = self._inflight(peer_key)
        if found is not None:
            path, c = found
            c.state = _FAILED
            path.window = None
            self.failures += 1

    def on_response(self, peer_key: bytes, response: Response, now: float) -> None:
        """``peer_key`` answered our query. An answer of the wrong type counts as a
        failure; answers from peers not in flight (late, unsolicited) are ignored."""
        found = self._inflight(peer_key)
        if found is None:
            return
        path, c = found
        if not isinstance(response, _EXPECTED[self.kind]):
            c.state = _FAILED
            path.window = None
            self.failures += 1
            return
        assert isinstance(response, Nodes | RecordResult | ProvidersResult)
        c.state = _ANSWERED
        self.responded.append(c.peer)
        self._hops = max(self._hops, c.hop)
        for peer in response.closer[:MAX_PEERS]:
            if peer.addrs:
                self._add(path, peer, c.hop + 1)
        if isinstance(response, RecordResult) and response.record is not None:
            self._take_record(peer_key, response.record, now)
        elif isinstance(response, ProvidersResult):
            for rec in response.providers:
                self._take_provider(rec, now)

    def _take_record(self, peer_key: bytes, record: Record, now: float) -> None:
        try:
            validate_record(record, now, key=self.target, max_ttl=self.max_record_ttl)
        except RecordError:
            self.rejected += 1
            return
        self._holders[peer_key] = record
        if self._best is None or supersedes(record, self._best):
            self._best = record
        if self.quorum is not None and self.done:
            self._stopped = True  # nothing more to ask: stop the paths still running

    def _take_provider(self, rec: ProviderRecord, now: float) -> None:
        try:
            validate_provider(rec, now, key=self.target, max_ttl=self.max_provider_ttl)
        except RecordError:
            self.rejected += 1
            return
        held = self._providers.get(rec.provider.key)
        if held is None or rec.expires > held.expires:
            self._providers[rec.provider.key] = rec
        if self.provider_limit is not None and len(self._providers) >= self.provider_limit:
            self._stopped = True

    # -- outcome ---------------------------------------------------------------------------

    @property
    def result(self) -> LookupResult:
        """What was found so far (final once ``done``)."""
        answered = [c for p in self._paths for c in p.by_key.values() if c.state == _ANSWERED]
        answered.sort(key=lambda c: c.dist)
        closest = tuple(c.peer for c in answered[: self.k])
        outdated: tuple[PeerInfo, ...] = ()
        if self.kind == "record" and self._best is not None:
            best = self._best
            outdated = tuple(p for p in closest if self._holders.get(p.key) != best)
        providers = sorted(self._providers.values(), key=lambda r: (-r.expires, r.provider.key))
        return LookupResult(
            closest=closest,
            record=self._best,
            providers=tuple(providers),
            outdated=outdated,
            hops=self._hops,
            queries=self.queries,
            failures=self.failures,
            rejected=self.rejected,
        )
