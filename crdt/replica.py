"""One replica of the CRDT store: the verified change DAG and the state it materialises.

A change is applied only when every dependency has been applied and it passed every
check; until then it waits in a bounded buffer and is *not* part of the replica's
change set, so anti-entropy keeps offering it and nothing is lost by dropping it.
Every check is a deterministic function of the change and its dependencies, hence two
correct replicas that hold the same changes agree on which were applied and (by the
merge laws of :mod:`crdt.types`) hold the same state, whatever order the changes
arrived in. A Byzantine author can only add changes that every correct replica will
accept alike: forging someone else's change needs their key, and equivocation (two
changes on the same heads) simply yields two concurrent changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from crdt.base import Json, OpContext
from crdt.change import (
    Change,
    ChangeRejected,
    Signer,
    check_doc_id,
    decode_change,
    hash_bytes,
    namespace_of,
    sign_change,
)
from crdt.errors import CrdtError, InvalidOperation
from crdt.limits import CrdtLimits
from crdt.reconcile import IdSet
from crdt.types import ORMap

WILDCARD = "*"
HLC_SOFT_MAX = 1 << 62
"""Clocks above this may only creep up from their dependencies (at most HLC_MAX_STEP per
change): an honest clock (wall ms << 16, ~2**57 today) never gets there, and a Byzantine
writer cannot push the clock to the 63-bit ceiling and so block every later write."""
HLC_MAX_STEP = 1 << 16
_REJECTED_MEMORY = 100_000


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Which keys may write which namespace; the same on every replica (plain config).

    ``writers[namespace]`` lists the Ed25519 public keys allowed to author changes to
    documents ``namespace/...``; ``writers["*"]`` applies to namespaces not listed. A
    namespace with neither entry is read-only.
    """

    writers: Mapping[str, frozenset[bytes]] = field(default_factory=dict)

    @classmethod
    def open_to(cls, keys: Iterable[bytes]) -> AccessPolicy:
        """Every namespace writable by ``keys``."""
        return cls({WILDCARD: frozenset(keys)})

    def may_write(self, author: bytes, doc: str) -> bool:
        namespace = namespace_of(doc)
        allowed = self.writers.get(namespace)
        if allowed is None:
            allowed = self.writers.get(WILDCARD, frozenset())
        return author in allowed


Status = Literal["applied", "duplicate", "pending", "rejected"]


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of one received change.

    ``applied`` lists every change applied as a consequence, in order: the change
    itself and any waiting changes it released. ``missing`` names dependencies still
    absent when the status is ``pending``.
    """

    status: Status
    hash: bytes | None
    reason: str | None = None
    detail: str = ""
    applied: tuple[Change, ...] = ()
    missing: tuple[bytes, ...] = ()


class MissingChanges(CrdtError):
    """A causal cut names changes this replica does not hold (yet)."""

    def __init__(self, missing: frozenset[bytes]) -> None:
        super().__init__(f"{len(missing)} change(s) of the cut are not held here")
        self.missing = missing


class Replica:
    """The change DAG, its heads, the pending buffer and the materialised documents."""

    def __init__(self, policy: AccessPolicy, limits: CrdtLimits | None = None) -> None:
        self.policy = policy
        self.limits = limits or CrdtLimits()
        self._changes: dict[bytes, Change] = {}
        self._ids = IdSet()
        self._heads: set[bytes] = set()
        self._docs: dict[str, ORMap] = {}
        self._pending: dict[bytes, Change] = {}
        self._waiting: dict[bytes, set[bytes]] = {}
        self._rejected: OrderedDict[bytes, str] = OrderedDict()
        self._snapshots: OrderedDict[
            frozenset[bytes], tuple[dict[str, ORMap], frozenset[bytes]]
        ] = OrderedDict()
        self._last_hlc = 0

    # -- queries ---------------------------------------------------------------------

    @property
    def heads(self) -> tuple[bytes, ...]:
        """Hashes of applied changes that no applied change depends on, sorted."""
        return tuple(sorted(self._heads))

    @property
    def ids(self) -> IdSet:
        """The hashes of all applied changes (for reconciliation); do not mutate."""
        return self._ids

    def __len__(self) -> int:
        return len(self._changes)

    def __contains__(self, change_hash: object) -> bool:
        return change_hash in self._changes

    def get(self, change_hash: bytes) -> Change | None:
        return self._changes.get(change_hash)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def missing(self) -> frozenset[bytes]:
        """Dependencies of waiting changes that are neither applied nor waiting."""
        return frozenset(h for h in self._waiting if h not in self._pending)

    def documents(self) -> list[str]:
        return sorted(self._docs)

    def document(self, doc: str) -> ORMap | None:
        """The live state of ``doc`` (do not mutate), or None if nobody wrote it."""
        return self._docs.get(doc)

    def value(self, doc: str) -> Json:
        state = self._docs.get(doc)
        return None if state is None else state.value()

    def rejection(self, change_hash: bytes) -> str | None:
        """Why a change (by hash) was rejected here, if it was and is remembered."""
        return self._rejected.get(change_hash)

    def ordered(self, hashes: Iterable[bytes]) -> list[Change]:
        """The held changes among ``hashes`` in a topological order.

        A change's clock exceeds its dependencies' clocks, so (hlc, hash) order is
        topological; it is also deterministic, which keeps replays identical.
        """
        found = [c for c in (self._changes.get(h) for h in hashes) if c is not None]
        found.sort(key=lambda c: (c.hlc, c.hash))
        return found

    def causal_past(self, heads: Iterable[bytes]) -> list[Change]:
        """Every change reachable from ``heads`` (inclusive), topologically ordered.

        Raises :class:`MissingChanges` when some of them are not held here.
        """
        return self.ordered(self._past(heads))

    def _past(self, heads: Iterable[bytes]) -> set[bytes]:
        seen: set[bytes] = set()
        missing: set[bytes] = set()
        stack = list(heads)
        while stack:
            h = stack.pop()
            if h in seen:
                continue
            seen.add(h)
            change = self._changes.get(h)
            if change is None:
                missing.add(h)
                continue
            stack.extend(d for d in change.deps if d not in seen)
        if missing:
            raise MissingChanges(frozenset(missing))
        return seen

    def state_at(self, heads: Iterable[bytes]) -> dict[str, ORMap]:
        """The documents as of the causal cut ``heads`` (for finality checkpoints).

        Identical on every replica that holds the cut, because it is the join of the
        same deltas. Cached for a few recent cuts; callers must not mutate the result.
        Successive checkpoints usually contain one another, so a new cut starts from
        the largest cached cut inside it and joins only the changes in between.
        """
        key = frozenset(heads)
        cached = self._snapshots.get(key)
        if cached is not None:
            self._snapshots.move_to_end(key)
            return cached[0]
        past = frozenset(self._past(key))
        base: tuple[dict[str, ORMap], frozenset[bytes]] | None = None
        for docs_b, past_b in self._snapshots.values():
            fits = len(past_b) <= len(past) and past_b <= past
            if fits and (base is None or len(past_b) > len(base[1])):
                base = (docs_b, past_b)
        docs: dict[str, ORMap] = {}
        todo: Iterable[bytes] = past
        if base is not None:
            docs = {name: state.copy() for name, state in base[0].items()}
            todo = past - base[1]
        for change in self.ordered(todo):
            state = docs.get(change.doc)
            if state is None:
                docs[change.doc] = _delta(change)
            else:
                state.merge(_delta(change))
        self._snapshots[key] = (docs, past)
        while len(self._snapshots) > 8:
            self._snapshots.popitem(last=False)
        return docs

    # -- updates ---------------------------------------------------------------------

    def receive(self, data: bytes, *, verify: bool = True) -> Receipt:
        """Decode, check and (when its dependencies are here) apply one encoded change."""
        known = hash_bytes(data) if len(data) <= self.limits.max_change_bytes else None
        if known is not None and (known in self._changes or known in self._pending):
            return Receipt("duplicate", known)  # no need to parse or verify it again
        try:
            change = decode_change(data, self.limits, verify=verify)
        except ChangeRejected as exc:
            return Receipt("rejected", None, exc.reason, exc.detail)
        return self.add(change)

    def add(self, change: Change) -> Receipt:
        """Apply a decoded change, or hold it until its dependencies arrive."""
        h = change.hash
        if h in self._changes or h in self._pending:
            return Receipt("duplicate", h)
        known = self._rejected.get(h)
        if known is not None:
            return Receipt("rejected", h, "rejected", f"previously rejected: {known}")
        if not self.policy.may_write(change.author, change.doc):
            return self._reject(
                change,
                "unauthorized",
                f"author {change.author.hex()[:16]} may not write namespace "
                f"{namespace_of(change.doc)!r}",
            )
        for dep in change.deps:
            why = self._rejected.get(dep)
            if why is not None:
                return self._reject(change, "bad-dependency", f"depends on rejected {dep.hex()}")
        missing = tuple(d for d in change.deps if d not in self._changes)
        if missing:
            if len(self._pending) >= self.limits.max_pending:
                return Receipt(
                    "rejected",
                    h,
                    "pending-full",
                    f"{len(self._pending)} changes already wait for dependencies",
                    missing=missing,
                )
            self._pending[h] = change
            for dep in missing:
                self._waiting.setdefault(dep, set()).add(h)
            return Receipt(
                "pending",
                h,
                "missing-dependencies",
                f"{len(missing)} dependencies not yet received",
                missing=missing,
            )
        applied: list[Change] = []
        failure = self._apply(change)
        if failure is not None:
            return failure
        applied.append(change)
        self._release(h, applied)
        return Receipt("applied", h, applied=tuple(applied))

    def create(
        self, signer: Signer, doc: str, ops: list[object], now_ms: int
    ) -> tuple[Change, Receipt]:
        """Sign a local change on the current heads and apply it.

        ``ops`` are root-map operations (see :mod:`crdt.document` for building them
        from intents). The clock is the hybrid of ``now_ms`` and the largest clock seen,
        so it is later than every dependency even when the wall clock lags.
        """
        try:
            check_doc_id(doc, self.limits)
        except ChangeRejected as exc:
            raise InvalidOperation(exc.detail) from None
        # Depending on at most max_deps heads is safe: deltas carry what they observed,
        # so deps only pin history; the other heads stay heads for the next change.
        deps = tuple(sorted(self._heads)[: self.limits.max_deps])
        floor = max((self._changes[d].hlc for d in deps), default=0)
        hlc = max(now_ms << 16, floor + 1, self._last_hlc + 1)
        try:
            change = sign_change(signer, doc, deps, hlc, list(ops), self.limits)
        # Fix (test_replica): msgpack raises OverflowError/TypeError/ValueError for
        # what it cannot encode (a clock >= 2**64, an unencodable op value).
        except (ChangeRejected, OverflowError, TypeError, ValueError) as exc:
            raise InvalidOperation(str(exc)) from None
        receipt = self.add(change)
        if receipt.status != "applied":
            raise InvalidOperation(f"own change not applied: {receipt.reason}: {receipt.detail}")
        return change, receipt

    # -- internals -------------------------------------------------------------------

    def _apply(self, change: Change) -> Receipt | None:
        """Apply a change whose dependencies are all applied; a Receipt if rejected."""
        floor = max((self._changes[d].hlc for d in change.deps), default=0)
        if change.hlc <= floor:
            return self._reject(
                change, "clock", f"hlc {change.hlc} is not later than its dependencies ({floor})"
            )
        if change.hlc > max(floor, HLC_SOFT_MAX) + HLC_MAX_STEP:
            return self._reject(
                change,
                "clock",
                f"hlc {change.hlc} jumps more than 2**16 past 2**62 and its dependencies",
            )
        try:
            delta = _delta(change)
        except InvalidOperation as exc:
            return self._reject(change, "malformed", str(exc))
        state = self._docs.get(change.doc)
        if state is None:
            self._docs[change.doc] = delta
        else:
            state.merge(delta)
        h = change.hash
        self._changes[h] = change
        self._ids.add(h)
        self._heads.difference_update(change.deps)
        self._heads.add(h)
        self._last_hlc = max(self._last_hlc, change.hlc)
        return None

    def _release(self, applied_hash: bytes, applied: list[Change]) -> None:
        """Apply waiting changes whose last missing dependency just arrived."""
        ready = [applied_hash]
        while ready:
            h = ready.pop()
            for waiter_hash in sorted(self._waiting.pop(h, ())):
                waiter = self._pending.get(waiter_hash)
                if waiter is None or any(d not in self._changes for d in waiter.deps):
                    continue
                del self._pending[waiter_hash]
                if self._apply(waiter) is None:
                    applied.append(waiter)
                    ready.append(waiter_hash)
                else:
                    self._drop_waiters_of(waiter_hash)

    def _drop_waiters_of(self, rejected_hash: bytes) -> None:
        """Changes waiting on a rejected change can never apply: reject them too."""
        stack = [rejected_hash]
        while stack:
            for waiter_hash in self._waiting.pop(stack.pop(), ()):
                waiter = self._pending.pop(waiter_hash, None)
                if waiter is not None:
                    self._remember_rejected(waiter_hash, "bad-dependency")
                    stack.append(waiter_hash)
                    # Fix (test_replica): also forget the waiter under its other missing
                    # deps, or missing() keeps naming (and sync keeps wanting) them forever.
                    for dep in waiter.deps:
                        others = self._waiting.get(dep)
                        if others is not None:
                            others.discard(waiter_hash)
                            if not others:
                                del self._waiting[dep]

    def _reject(self, change: Change, reason: str, detail: str) -> Receipt:
        self._remember_rejected(change.hash, reason)
        self._drop_waiters_of(change.hash)
        return Receipt("rejected", change.hash, reason, detail)

    def _remember_rejected(self, change_hash: bytes, reason: str) -> None:
        self._rejected[change_hash] = reason
        while len(self._rejected) > _REJECTED_MEMORY:
            self._rejected.popitem(last=False)


def _delta(change: Change) -> ORMap:
    """The join of the change's operations, built apart so a bad op changes nothing."""
    delta = ORMap()
    h, author, hlc = change.hash, change.author, change.hlc
    for index, op in enumerate(change.ops):
        delta.apply(op, OpContext(h, index, author, hlc))
    return delta
