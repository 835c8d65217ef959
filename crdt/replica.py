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

Compaction. The changes in the causal past of a final checkpoint can be replaced by a
:class:`~crdt.snapshot.Snapshot` of that cut (:meth:`Replica.compact`, or
:meth:`Replica.install` for one received from a peer). The replica then keeps the
snapshot's states and the hash and clock of every compacted change, but not the changes
themselves: a compacted hash still counts as applied (as a dependency, for
reconciliation, and when the change arrives again it is a duplicate), and its clock
keeps the clock rule checkable for later changes that depend on it.
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
from crdt.snapshot import Snapshot, SnapshotError
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


class CutCompacted(CrdtError):
    """A causal cut does not contain the replica's snapshot: its state is no longer known.

    After compaction the replica can materialise only cuts whose past contains the
    snapshot's cut (the snapshot's own cut included); an older or concurrent cut would
    need changes that were compacted away.
    """

    def __init__(self, checkpoint: int) -> None:
        super().__init__(
            f"the cut's history was compacted into the snapshot of checkpoint {checkpoint}"
        )
        self.checkpoint = checkpoint


@dataclass(frozen=True, slots=True)
class Installed:
    """What :meth:`Replica.install` did: ``dropped`` are the held changes the snapshot
    replaced (delete them from storage); ``applied`` are waiting changes it released."""

    dropped: tuple[bytes, ...]
    applied: tuple[Change, ...]


class Replica:
    """The change DAG, its heads, the pending buffer and the materialised documents."""

    def __init__(
        self,
        policy: AccessPolicy,
        limits: CrdtLimits | None = None,
        *,
        max_clock_skew_ms: int | None = None,
    ) -> None:
        """``max_clock_skew_ms``: how far ahead of our time (``observe_time``) a received
        change's clock may be; None accepts any clock up to ``HLC_SOFT_MAX``."""
        if max_clock_skew_ms is not None and max_clock_skew_ms < 0:
            raise ValueError(f"max_clock_skew_ms={max_clock_skew_ms} must be >= 0")
        self.policy = policy
        self.limits = limits or CrdtLimits()
        self.max_clock_skew_ms = max_clock_skew_ms
        self._now_ms: int | None = None
        self._changes: dict[bytes, Change] = {}
        self._ids = IdSet()
        self._heads: set[bytes] = set()
        self._docs: dict[str, ORMap] = {}
        self._pending: dict[bytes, Change] = {}
        self._pending_use: dict[bytes, list[int]] = {}  # author -> [count, bytes] pending
        self._waiting: dict[bytes, set[bytes]] = {}
        self._base: Snapshot | None = None
        self._clocks: dict[bytes, int] = {}  # compacted hash -> its clock
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
        """The hashes of all applied changes, compacted ones included (for
        reconciliation); do not mutate."""
        return self._ids

    def __len__(self) -> int:
        """Applied changes, compacted ones included."""
        return len(self._changes) + len(self._clocks)

    def __contains__(self, change_hash: object) -> bool:
        """Whether the change is applied here (held, or compacted into the snapshot)."""
        return change_hash in self._changes or change_hash in self._clocks

    def get(self, change_hash: bytes) -> Change | None:
        """The held change; None when unknown or compacted (see :meth:`is_compacted`)."""
        return self._changes.get(change_hash)

    def is_compacted(self, change_hash: bytes) -> bool:
        return change_hash in self._clocks

    @property
    def live_count(self) -> int:
        """Changes held in full (not compacted)."""
        return len(self._changes)

    @property
    def base(self) -> Snapshot | None:
        """The snapshot the history was compacted into, if any; do not mutate."""
        return self._base

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def pending_of(self, author: bytes) -> tuple[int, int]:
        """How many changes (and encoded bytes) of ``author`` wait for dependencies."""
        use = self._pending_use.get(author)
        return (0, 0) if use is None else (use[0], use[1])

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
        """Every held change reachable from ``heads`` (inclusive), topologically ordered.

        Compacted changes are not held and so not listed (the snapshot stands for them).
        Raises :class:`MissingChanges` when some of them are not held here.
        """
        return self.ordered(self._walk(heads)[0])

    def _walk(self, heads: Iterable[bytes]) -> tuple[set[bytes], set[bytes]]:
        """(held changes reachable from ``heads``, compacted hashes the walk reached)."""
        seen: set[bytes] = set()
        reached: set[bytes] = set()
        missing: set[bytes] = set()
        clocks = self._clocks
        stack = list(heads)
        while stack:
            h = stack.pop()
            if h in seen or h in reached:
                continue
            change = self._changes.get(h)
            if change is None:
                if h in clocks:
                    reached.add(h)
                else:
                    missing.add(h)
                continue
            seen.add(h)
            stack.extend(d for d in change.deps if d not in seen)
        if missing:
            raise MissingChanges(frozenset(missing))
        return seen, reached

    def _cut_past(self, heads: frozenset[bytes]) -> frozenset[bytes]:
        """The held part of the cut's past; :class:`CutCompacted` unless the cut
        contains the snapshot's cut (then the rest of its past is the snapshot)."""
        past, reached = self._walk(heads)
        base = self._base
        # (The empty cut is always known.)
        if base is not None and (past or reached) and not reached.issuperset(base.heads):
            raise CutCompacted(base.checkpoint)
        return frozenset(past)

    def state_at(self, heads: Iterable[bytes]) -> dict[str, ORMap]:
        """The documents as of the causal cut ``heads`` (for finality checkpoints).

        Identical on every replica that holds the cut, because it is the join of the
        same deltas. Cached for a few recent cuts; callers must not mutate the result.
        Successive checkpoints usually contain one another, so a new cut starts from
        the largest cached cut inside it and joins only the changes in between. After
        compaction a cut must contain the snapshot's cut (:class:`CutCompacted`
        otherwise), and its state is the snapshot's joined with the held changes above.
        """
        key = frozenset(heads)
        if not key:
            return {}
        cached = self._snapshots.get(key)
        if cached is not None:
            self._snapshots.move_to_end(key)
            return cached[0]
        past = self._cut_past(key)
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
        elif self._base is not None:
            docs = {name: state.copy() for name, state in self._base.docs.items()}
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

    # -- compaction ------------------------------------------------------------------

    def snapshot_at(self, checkpoint: int, heads: Iterable[bytes]) -> Snapshot:
        """The snapshot of the cut ``heads`` (checkpoint number ``checkpoint``).

        Raises :class:`MissingChanges` when the cut is not fully held here and
        :class:`CutCompacted` when it does not contain the current snapshot.
        """
        key = frozenset(heads)
        if not key:
            raise SnapshotError("an empty cut has no snapshot")
        past = self._cut_past(key)
        docs = self.state_at(key)
        clocks = dict(self._clocks)
        for h in past:
            clocks[h] = self._changes[h].hlc
        copies = {name: state.copy() for name, state in docs.items()}
        return Snapshot(checkpoint, tuple(sorted(key)), clocks, copies)

    def compact(self, snapshot: Snapshot) -> tuple[bytes, ...]:
        """Replace the held changes of ``snapshot``'s cut by it; return their hashes.

        ``snapshot`` must be this replica's own :meth:`snapshot_at` of a cut it holds
        (it is not checked against the changes again). Documents, heads, the pending
        buffer and the id set are unchanged: only the changes' bodies go.
        """
        if self._base is not None and snapshot.checkpoint <= self._base.checkpoint:
            raise SnapshotError(
                f"checkpoint {snapshot.checkpoint} is not after the current snapshot "
                f"(checkpoint {self._base.checkpoint})"
            )
        dropped = tuple(h for h in snapshot.clocks if h in self._changes)
        if len(dropped) + len(self._clocks) != len(snapshot.clocks) or any(
            h not in snapshot.clocks for h in self._clocks
        ):
            raise SnapshotError("snapshot does not cover exactly the cut held here")
        for h in dropped:
            del self._changes[h]
        self._clocks = dict(snapshot.clocks)
        self._base = snapshot
        self._snapshots.clear()
        return dropped

    def install(self, snapshot: Snapshot) -> Installed:
        """Adopt a verified snapshot of a cut this replica may lack changes of.

        The caller vouches for ``snapshot`` (its digest is final for its checkpoint); it
        must contain the current snapshot's cut (:class:`SnapshotError` otherwise, and
        nothing changes). Held changes below the cut are dropped, the documents become
        the join of the snapshot and the current states (the states of the held changes
        above the cut), and waiting changes whose dependencies it supplies are applied.
        """
        base = self._base
        if base is not None:
            if snapshot.checkpoint <= base.checkpoint:
                raise SnapshotError(
                    f"checkpoint {snapshot.checkpoint} is not after the current snapshot "
                    f"(checkpoint {base.checkpoint})"
                )
            if any(h not in snapshot.clocks for h in base.heads):
                raise SnapshotError(
                    f"checkpoint {snapshot.checkpoint}'s cut does not contain the current "
                    f"snapshot (checkpoint {base.checkpoint})"
                )
        clocks = snapshot.clocks
        dropped = tuple(h for h in self._changes if h in clocks)
        for h in dropped:
            del self._changes[h]
        docs = {name: state.copy() for name, state in snapshot.docs.items()}
        for name, state in self._docs.items():
            mine = docs.get(name)
            if mine is None:
                docs[name] = state
            else:
                mine.merge(state)
        self._docs = docs
        depended = {d for c in self._changes.values() for d in c.deps}
        heads = {h for h in self._heads if h not in clocks}
        heads.update(h for h in snapshot.heads if h not in depended)
        self._heads = heads
        self._clocks = dict(clocks)
        self._ids.update(clocks)
        self._base = snapshot
        self._snapshots.clear()
        self._last_hlc = max(self._last_hlc, snapshot.max_hlc)
        for h in [h for h in self._pending if h in clocks]:  # below the cut: not needed
            below = self._unpend(h)
            for dep in below.deps if below is not None else ():
                self._forget_waiter(dep, h)
        applied: list[Change] = []
        for h in sorted(h for h in self._waiting if h in clocks):
            self._release(h, applied)
        return Installed(dropped, tuple(applied))

    # -- updates ---------------------------------------------------------------------

    def observe_time(self, now_ms: int) -> None:
        """Time is now ``now_ms`` (wall clock, ms): the reference of the clock-skew bound.

        Until the first call no bound applies, which is what reloading our own stored
        changes needs (they were accepted once; a clock that stepped back since must not
        drop them)."""
        self._now_ms = now_ms

    def receive(self, data: bytes, *, verify: bool = True) -> Receipt:
        """Decode, check and (when its dependencies are here) apply one encoded change.

        A change whose clock is more than ``max_clock_skew_ms`` ahead of the observed time
        is refused ("clock-skew") but not remembered as rejected: anti-entropy offers it
        again, and once our time has caught up it is applied. So a writer with a fast
        clock is delayed, never forked off, and no peer can make a clock run far ahead
        of the correct replicas' time (which would make every later honest write sort
        before it)."""
        known = hash_bytes(data) if len(data) <= self.limits.max_change_bytes else None
        if known is not None and (known in self._changes or known in self._pending):
            return Receipt("duplicate", known)  # no need to parse or verify it again
        if known is not None and known in self._clocks:
            return self._below_cut(known)
        try:
            change = decode_change(data, self.limits, verify=verify)
        except ChangeRejected as exc:
            return Receipt("rejected", None, exc.reason, exc.detail)
        skew = self._too_far_ahead(change)
        if skew is not None:
            return skew
        return self.add(change)

    def _too_far_ahead(self, change: Change) -> Receipt | None:
        bound, now = self.max_clock_skew_ms, self._now_ms
        if bound is None or now is None:
            return None
        wall = change.hlc >> 16
        if wall - now <= bound:
            return None
        return Receipt(
            "rejected",
            change.hash,
            "clock-skew",
            f"hlc wall time {wall} ms is {wall - now} ms ahead of ours ({now}); at most "
            f"{bound} ms is accepted; it is taken once our clock catches up",
        )

    def add(self, change: Change) -> Receipt:
        """Apply a decoded change, or hold it until its dependencies arrive."""
        h = change.hash
        if h in self._changes or h in self._pending:
            return Receipt("duplicate", h)
        if h in self._clocks:
            return self._below_cut(h)
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
        missing = tuple(d for d in change.deps if d not in self)
        if missing:
            limits = self.limits
            if len(self._pending) >= limits.max_pending:
                return Receipt(
                    "rejected",
                    h,
                    "pending-full",
                    f"{len(self._pending)} changes already wait for dependencies",
                    missing=missing,
                )
            count, size = self.pending_of(change.author)
            if (
                count >= limits.max_pending_per_author
                or size + len(change.encoded) > limits.max_pending_bytes_per_author
            ):
                return Receipt(
                    "rejected",
                    h,
                    "pending-quota",
                    f"author {change.author.hex()[:16]} already has {count} change(s) "
                    f"({size} bytes) waiting for dependencies; quota "
                    f"{limits.max_pending_per_author} changes, "
                    f"{limits.max_pending_bytes_per_author} bytes",
                    missing=missing,
                )
            self._pending[h] = change
            use = self._pending_use.setdefault(change.author, [0, 0])
            use[0] += 1
            use[1] += len(change.encoded)
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
        floor = max((self._hlc_of(d) for d in deps), default=0)
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
        floor = max((self._hlc_of(d) for d in change.deps), default=0)
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
                if waiter is None or any(d not in self for d in waiter.deps):
                    continue
                self._unpend(waiter_hash)
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
                waiter = self._unpend(waiter_hash)
                if waiter is not None:
                    self._remember_rejected(waiter_hash, "bad-dependency")
                    stack.append(waiter_hash)
                    # Fix (test_replica): also forget the waiter under its other missing
                    # deps, or missing() keeps naming (and sync keeps wanting) them forever.
                    for dep in waiter.deps:
                        self._forget_waiter(dep, waiter_hash)

    def _unpend(self, change_hash: bytes) -> Change | None:
        """Take a change out of the pending buffer (its waiting entries stay)."""
        change = self._pending.pop(change_hash, None)
        if change is not None:
            use = self._pending_use[change.author]
            use[0] -= 1
            use[1] -= len(change.encoded)
            if use[0] == 0:
                del self._pending_use[change.author]
        return change

    def _forget_waiter(self, dep: bytes, waiter_hash: bytes) -> None:
        others = self._waiting.get(dep)
        if others is not None:
            others.discard(waiter_hash)
            if not others:
                del self._waiting[dep]

    def _hlc_of(self, change_hash: bytes) -> int:
        change = self._changes.get(change_hash)
        return change.hlc if change is not None else self._clocks[change_hash]

    def _below_cut(self, change_hash: bytes) -> Receipt:
        checkpoint = self._base.checkpoint if self._base is not None else 0
        return Receipt(
            "duplicate",
            change_hash,
            "compacted",
            f"already part of the snapshot of checkpoint {checkpoint}",
        )

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
