"""The Kademlia routing table: 256 k-buckets with LRU order, replacement caches, liveness.

Bucket ``i`` holds up to ``k`` server-mode peers at XOR distance ``[2**i, 2**(i+1))``
from us, least recently seen first. Kademlia prefers old contacts (a peer that has been
up for long is likely to stay up, and an attacker cannot flush a bucket by introducing
new ids), so a new contact for a full bucket does not displace anybody: it waits in the
bucket's replacement cache and the table asks the caller to ping the least recently seen
entry (:class:`CheckLiveness`). That entry leaves only if it fails, and the freshest
replacement takes its place.

Failures: an entry is dropped after ``max_failures`` consecutive failures, or after one
when a replacement is waiting (an unresponsive entry should not block a live peer).

Client-mode peers (behind a NAT, not dialable) never enter the table; callers only pass
peers that announced themselves as servers on an authenticated link, or that answered
our queries at a dialed address.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from p2p.dht.keyspace import ID_BITS, as_int, bucket_index, id_in_bucket
from p2p.dht.peer import PeerInfo


@dataclass(frozen=True)
class CheckLiveness:
    """Ping ``peer``: an answer -> ``RoutingTable.seen(peer, now)``; a failure or
    timeout -> ``RoutingTable.failed(peer.key, now)``."""

    peer: PeerInfo


class _Entry:
    __slots__ = ("failures", "last_seen", "peer")

    def __init__(self, peer: PeerInfo, last_seen: float) -> None:
        self.peer = peer
        self.last_seen = last_seen
        self.failures = 0


class _Bucket:
    __slots__ = ("entries", "pinging", "replacements", "touched")

    def __init__(self, touched: float) -> None:
        self.entries: dict[bytes, _Entry] = {}  # insertion order: least recently seen first
        self.replacements: dict[bytes, _Entry] = {}  # oldest first
        self.pinging: bytes | None = None
        self.touched = touched


class RoutingTable:
    """k-buckets around ``self_id``; see the module docstring for the policy."""

    def __init__(
        self,
        self_id: bytes,
        *,
        k: int = 20,
        max_failures: int = 3,
        replacements: int | None = None,
        now: float = 0.0,
    ) -> None:
        if len(self_id) != 32:
            raise ValueError("self_id must be 32 bytes")
        if k < 1 or max_failures < 1:
            raise ValueError("k and max_failures must be >= 1")
        self.self_id = self_id
        self.k = k
        self.max_failures = max_failures
        self.max_replacements = k if replacements is None else replacements
        self._self_int = as_int(self_id)
        self._created = now
        self._buckets: dict[int, _Bucket] = {}
        self._index: dict[bytes, int] = {}  # key -> bucket index, for entries only
        self._present: list[int] | None = None  # non-empty bucket indices, sorted (cache)

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def get(self, key: bytes) -> PeerInfo | None:
        """The entry for ``key`` (newest addresses), or ``None``."""
        i = self._index.get(key)
        return None if i is None else self._buckets[i].entries[key].peer

    def peers(self) -> list[PeerInfo]:
        """Every entry, bucket by bucket (tests, status)."""
        return [e.peer for b in self._buckets.values() for e in b.entries.values()]

    def bucket(self, index: int) -> list[PeerInfo]:
        """Entries of bucket ``index``, least recently seen first."""
        b = self._buckets.get(index)
        return [] if b is None else [e.peer for e in b.entries.values()]

    def replacement_cache(self, index: int) -> list[PeerInfo]:
        """Replacements waiting for bucket ``index``, oldest first."""
        b = self._buckets.get(index)
        return [] if b is None else [e.peer for e in b.replacements.values()]

    def bucket_sizes(self) -> dict[int, int]:
        """Non-empty buckets and their sizes."""
        return {i: len(b.entries) for i, b in sorted(self._buckets.items()) if b.entries}

    def closest(
        self, target: bytes, count: int | None = None, *, exclude: Container[bytes] = ()
    ) -> list[PeerInfo]:
        """Up to ``count`` (default ``k``) entries nearest to ``target``, nearest first,
        leaving out keys in ``exclude``."""
        n = self.k if count is None else count
        if n <= 0:
            return []
        t = as_int(target)
        d = self._self_int ^ t
        top = d.bit_length() - 1  # the target's own bucket (-1: the target is us)
        out: list[PeerInfo] = []

        def take(indices: list[int]) -> None:
            # Entries of these buckets sorted together by distance to the target.
            peers = [
                e.peer
                for i in indices
                for key, e in self._buckets[i].entries.items()
                if key not in exclude
            ]
            peers.sort(key=lambda p: p.int_id ^ t)
            out.extend(peers[: n - len(out)])

        # XOR order relative to the target: the target's bucket first (distance below
        # 2**top), then every nearer bucket together (distance in [2**top, 2**(top+1))),
        # then each farther bucket in turn (bucket j: distance in [2**j, 2**(j+1))).
        present = self._present
        if present is None:
            present = self._present = sorted(i for i, b in self._buckets.items() if b.entries)
        if top >= 0 and top in present:
            take([top])
        if len(out) < n:
            take([i for i in present if i < top])
        for i in present:
            if len(out) >= n:
                break
            if i > top:
                take([i])
        return out

    # -- updates ---------------------------------------------------------------------------

    def _bucket_for(self, index: int) -> _Bucket:
        b = self._buckets.get(index)
        if b is None:
            b = self._buckets[index] = _Bucket(self._created)
        return b

    def seen(self, peer: PeerInfo, now: float) -> CheckLiveness | None:
        """``peer`` (a server-mode peer) proved alive at ``now``: refresh, add, or queue it.

        Returns a :class:`CheckLiveness` when the bucket is full and its least recently
        seen entry should be pinged (at most one ping per bucket at a time)."""
        if peer.id == self.self_id:
            return None
        index = bucket_index(self.self_id, peer.id)
        b = self._bucket_for(index)
        entry = b.entries.get(peer.key)
        if entry is not None:
            entry.peer = peer
            entry.last_seen = now
            entry.failures = 0
            b.entries[peer.key] = b.entries.pop(peer.key)  # most recently seen last
            if b.pinging == peer.key:
                b.pinging = None
            return None
        if len(b.entries) < self.k:
            b.replacements.pop(peer.key, None)
            b.entries[peer.key] = _Entry(peer, now)
            self._index[peer.key] = index
            self._present = None
            return None
        # full: the newcomer waits; the oldest entry must prove it is still alive
        b.replacements.pop(peer.key, None)
        b.replacements[peer.key] = _Entry(peer, now)
        while len(b.replacements) > self.max_replacements:
            del b.replacements[next(iter(b.replacements))]
        if b.pinging is not None and b.pinging in b.entries:
            return None
        oldest = next(iter(b.entries.values()))
        b.pinging = oldest.peer.key
        return CheckLiveness(oldest.peer)

    def failed(self, key: bytes, now: float) -> bool:
        """A request to ``key`` failed or timed out; True if the entry was dropped (and
        the freshest replacement, if any, took its place)."""
        index = self._index.get(key)
        if index is None:
            for b in self._buckets.values():
                b.replacements.pop(key, None)
            return False
        b = self._buckets[index]
        entry = b.entries[key]
        entry.failures += 1
        if entry.failures < self.max_failures and not b.replacements:
            return False
        self._drop(index, key)
        return True

    def remove(self, key: bytes) -> bool:
        """Forget ``key`` at once (e.g. it sent garbage); True if it was an entry."""
        index = self._index.get(key)
        if index is None:
            for b in self._buckets.values():
                b.replacements.pop(key, None)
            return False
        self._drop(index, key)
        return True

    def _drop(self, index: int, key: bytes) -> None:
        b = self._buckets[index]
        del b.entries[key]
        del self._index[key]
        self._present = None
        if b.pinging == key:
            b.pinging = None
        if b.replacements:
            fresh_key = next(reversed(b.replacements))
            b.entries[fresh_key] = b.replacements.pop(fresh_key)
            b.entries[fresh_key].failures = 0
            self._index[fresh_key] = index

    # -- refresh ---------------------------------------------------------------------------

    def touch(self, target: bytes, now: float) -> None:
        """A lookup for ``target`` ran: its bucket needs no refresh for a while."""
        if target != self.self_id:
            self._bucket_for(bucket_index(self.self_id, target)).touched = now

    def stale_buckets(self, now: float, refresh_interval: float, nonce: bytes) -> list[bytes]:
        """Lookup targets, one per bucket not touched for ``refresh_interval``, from the
        bucket of our closest entry up to the farthest (nearer buckets are empty in any
        network: a peer there would be closer than our closest). Each target lies inside
        its bucket, its free bits taken from the caller's 32-byte ``nonce``; the buckets
        returned count as touched ``now``."""
        if not self._index:
            return []
        low = min(self._index.values())
        targets: list[bytes] = []
        for i in range(low, ID_BITS):
            b = self._bucket_for(i)
            if now - b.touched >= refresh_interval:
                b.touched = now
                targets.append(id_in_bucket(self.self_id, i, nonce))
        return targets

    def sparse_buckets(
        self, now: float, nonce: bytes, *, above: int = -1, fewer_than: int | None = None
    ) -> list[bytes]:
        """Lookup targets for the buckets with index > ``above`` that hold fewer than
        ``fewer_than`` (default k) entries, marked touched ``now``: the refresh step of
        joining. After the lookup
        of its own id, a new node passes ``above`` = the bucket of the farthest of the k
        peers that lookup found; without this step whole regions of the keyspace can
        stay unknown to it (nobody there ever contacts it), and lookups through it stall.
        Full buckets, and buckets nearer than our closest entry, are skipped."""
        if not self._index:
            return []
        start = max(above + 1, min(self._index.values()))
        limit = self.k if fewer_than is None else fewer_than
        targets: list[bytes] = []
        for i in range(start, ID_BITS):
            b = self._bucket_for(i)
            if len(b.entries) < limit:
                b.touched = now
                targets.append(id_in_bucket(self.self_id, i, nonce))
        return targets
