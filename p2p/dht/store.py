"""Bounded stores for the records and provider records this node keeps for others.

Both stores validate what they accept (signature, key, expiry, TTL bound), so nothing
unverified is ever served. They never evict a live entry to make room: a full store
refuses (reason ``full``), so a flood of new keys cannot push out existing records.

Records: a higher ``seq`` replaces a lower one, an older one is ``stale-seq``, the same
seq with another value is ``conflict``, and the same record again (a republish) just
refreshes it. Every stored record is re-put to the k closest peers every
``republish_interval`` unless somebody re-put it to us in the meantime (then they did
the work: Kademlia's republish optimisation).
"""

from __future__ import annotations

from p2p.dht.records import (
    FULL,
    MAX_PROVIDER_TTL,
    MAX_RECORD_TTL,
    ProviderRecord,
    Record,
    RecordError,
    check_replace,
    supersedes,
    validate_provider,
    validate_record,
)


class _Stored:
    __slots__ = ("record", "republish_at")

    def __init__(self, record: Record, republish_at: float) -> None:
        self.record = record
        self.republish_at = republish_at


class RecordStore:
    """Records by DHT key, at most ``max_records`` of them."""

    def __init__(
        self,
        *,
        max_records: int = 10_000,
        max_ttl: float = MAX_RECORD_TTL,
        republish_interval: float = 3600.0,
    ) -> None:
        self.max_records = max_records
        self.max_ttl = max_ttl
        self.republish_interval = republish_interval
        self._records: dict[bytes, _Stored] = {}

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: Record, now: float) -> bool:
        """Validate and store ``record``; True if the stored value changed (new key,
        newer seq or later expiry), False for a plain republish. Raises
        :class:`RecordError` (and changes nothing) if it is refused."""
        validate_record(record, now, max_ttl=self.max_ttl)
        key = record.key
        held = self._records.get(key)
        if held is not None and held.record.expires <= now:
            del self._records[key]
            held = None
        if held is None:
            if len(self._records) >= self.max_records:
                self.expire(now)
                if len(self._records) >= self.max_records:
                    raise RecordError(FULL, f"store holds {self.max_records} records")
            self._records[key] = _Stored(record, now + self.republish_interval)
            return True
        check_replace(record, held.record)
        changed = supersedes(record, held.record)
        if changed:
            held.record = record
        held.republish_at = now + self.republish_interval
        return changed

    def get(self, key: bytes, now: float) -> Record | None:
        """The unexpired record under ``key``, if any."""
        held = self._records.get(key)
        if held is None:
            return None
        if held.record.expires <= now:
            del self._records[key]
            return None
        return held.record

    def expire(self, now: float) -> int:
        """Drop expired records; returns how many."""
        dead = [k for k, h in self._records.items() if h.record.expires <= now]
        for k in dead:
            del self._records[k]
        return len(dead)

    def due_for_republish(self, now: float) -> list[Record]:
        """Unexpired records whose republish time has come (call ``mark_republished``
        after re-putting each one)."""
        return [
            h.record
            for h in self._records.values()
            if h.republish_at <= now and h.record.expires > now
        ]

    def mark_republished(self, key: bytes, now: float) -> None:
        """``key`` was re-put at ``now``: next time in ``republish_interval``."""
        held = self._records.get(key)
        if held is not None:
            held.republish_at = now + self.republish_interval

    def records(self) -> list[Record]:
        """Everything held (status, tests)."""
        return [h.record for h in self._records.values()]


class ProviderStore:
    """Provider records by content key: at most ``max_keys`` keys and ``max_per_key``
    providers per key; one record per (key, provider), the latest expiry kept."""

    def __init__(
        self,
        *,
        max_keys: int = 10_000,
        max_per_key: int = 20,
        max_ttl: float = MAX_PROVIDER_TTL,
    ) -> None:
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self.max_ttl = max_ttl
        self._by_key: dict[bytes, dict[bytes, ProviderRecord]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())

    def keys(self) -> int:
        """Number of content keys with providers."""
        return len(self._by_key)

    def add(self, rec: ProviderRecord, now: float) -> bool:
        """Validate and store ``rec``; True if new or extended. Raises
        :class:`RecordError` (and changes nothing) if refused."""
        validate_provider(rec, now, max_ttl=self.max_ttl)
        providers = self._by_key.get(rec.key)
        if providers is None:
            if len(self._by_key) >= self.max_keys:
                self.expire(now)
                if len(self._by_key) >= self.max_keys:
                    raise RecordError(FULL, f"store holds providers for {self.max_keys} keys")
            providers = self._by_key[rec.key] = {}
        held = providers.get(rec.provider.key)
        if held is None:
            live = {p: r for p, r in providers.items() if r.expires > now}
            if len(live) >= self.max_per_key:
                raise RecordError(FULL, f"{self.max_per_key} providers already held for key")
            providers.clear()
            providers.update(live)
            providers[rec.provider.key] = rec
            return True
        if rec.expires < held.expires:
            return False
        providers[rec.provider.key] = rec  # newer announcement (maybe new addresses)
        return rec != held

    def get(self, key: bytes, now: float, limit: int | None = None) -> list[ProviderRecord]:
        """Unexpired providers of ``key``, latest expiry first, at most ``limit``."""
        providers = self._by_key.get(key)
        if not providers:
            return []
        live = sorted(
            (r for r in providers.values() if r.expires > now),
            key=lambda r: (-r.expires, r.provider.key),
        )
        return live if limit is None else live[:limit]

    def expire(self, now: float) -> int:
        """Drop expired provider records (and empty keys); returns how many."""
        removed = 0
        for key in list(self._by_key):
            providers = self._by_key[key]
            dead = [p for p, r in providers.items() if r.expires <= now]
            for p in dead:
                del providers[p]
            removed += len(dead)
            if not providers:
                del self._by_key[key]
        return removed
