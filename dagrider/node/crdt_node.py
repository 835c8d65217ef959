"""The CRDT store inside the node: replica, anti-entropy over the peer links, checkpoints.

This is the shell around the pure :mod:`crdt` code: it feeds the
:class:`~crdt.sync.SyncEngine` frames from the CRDT channel and timer ticks, persists
every applied change before telling anyone about it (a write the API acknowledged
survives a crash), performs the engine's sends, and turns ordered checkpoint
transactions into numbered, agreed causal cuts.

Compaction. Every ``attest_every``-th checkpoint is a compaction candidate: a committee
member that holds its cut (and at least ``compact_min_changes`` changes of it above its
current snapshot) attests the digest of its snapshot in its next checkpoint transaction.
When ``attest_quorum`` members (f + 1 by default) attested the same digest, the
checkpoint is *final* on every node alike; a node then replaces the changes below it by
the snapshot, in memory and in SQLite in one transaction, and may hand the snapshot to
peers that lack changes below it. A node accepts a peer's snapshot only for a
checkpoint final in its own view of the log, with that digest (see :mod:`crdt.sync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from crdt.change import Change, KeySigner
from crdt.checkpoint import (
    MAX_ATTESTS,
    Attestation,
    attest_quorum,
    decode_checkpoint,
    encode_checkpoint,
    is_checkpoint,
)
from crdt.document import Intent, prepare_ops
from crdt.replica import AccessPolicy, CutCompacted, MissingChanges, Replica
from crdt.snapshot import Snapshot, SnapshotError, decode_snapshot, snapshot_digest
from crdt.sync import SyncEngine, SyncResult
from dagrider.node.crdt_store import AttestationRow, CheckpointRow, CrdtStore, SnapshotRow
from dagrider.node.store import Store
from p2p.framing import FrameKind

SCAN_PAGE = 10_000
SUBSCRIBER_QUEUE = 1024
COMPACT_MIN_CHANGES = 10_000
"""Default: compact once a final checkpoint's cut holds this many uncompacted changes."""
ATTEST_EVERY = 16
MAX_CLOCK_SKEW_MS = 60_000
"""Default of ``[crdt] max_clock_skew_ms``: NTP keeps honest clocks within milliseconds;
a minute tolerates a badly set one, and is the most a peer can push the store's clock
ahead of real time."""
"""Default: every 16th checkpoint is a compaction candidate whose digest members attest."""
CANDIDATES_LOOKED_AT = 4


class UnknownDocument(LookupError):
    """Nobody has written this document (404)."""


class UnknownCheckpoint(LookupError):
    """No checkpoint with this number has been ordered yet (404)."""


class CheckpointCompacted(LookupError):
    """The checkpoint's cut lies below (or beside) the compacted history (410)."""


class CheckpointIncomplete(Exception):
    """The checkpoint's cut names changes this node has not received yet (409)."""

    def __init__(self, missing: int) -> None:
        super().__init__(
            f"{missing} change(s) of this checkpoint have not reached this node yet; retry"
        )
        self.missing = missing


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """What subscribers (the SSE stream) learn about each applied change."""

    doc: str
    hash: str
    author: str
    hlc: int
    ops: int
    local: bool


def state_hash(wire: Any) -> str:
    """Hex BLAKE2b-256 of a canonical state encoding: equal states, equal hashes."""
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=32).hexdigest()


class CrdtNode:
    """One node's replicated CRDT store."""

    def __init__(
        self,
        *,
        seed: bytes,
        writers: Mapping[str, Collection[bytes]],
        checkpoint_signers: Collection[bytes],
        domain: bytes,
        store: CrdtStore,
        log_store: Store | None,
        send: Callable[[bytes, bytes, int], bool],
        connected: Callable[[], Collection[bytes]],
        submit: Callable[[Sequence[bytes]], object] | None,
        sync_interval: float,
        checkpoint_interval: float,
        logger: logging.Logger,
        compact_min_changes: int = COMPACT_MIN_CHANGES,
        attest_every: int = ATTEST_EVERY,
        attest_quorum: int | None = None,
        max_clock_skew_ms: int | None = MAX_CLOCK_SKEW_MS,
    ) -> None:
        """``max_clock_skew_ms``: how far ahead of this node's clock a peer's change may
        be stamped (``[crdt] max_clock_skew_ms``); see ``Replica.receive``."""
        self.signer = KeySigner(seed)
        self.replica = Replica(
            AccessPolicy({ns: frozenset(k) for ns, k in writers.items()}),
            max_clock_skew_ms=max_clock_skew_ms,
        )
        self.engine = SyncEngine(self.replica)
        self.checkpoint_signers = frozenset(checkpoint_signers)
        self.domain = domain
        self.store = store
        self.log_store = log_store
        self._send = send
        self._connected = connected
        self._submit = submit
        self.sync_interval = sync_interval
        self.checkpoint_interval = checkpoint_interval
        self.log = logger
        self._checkpoints: list[CheckpointRow] = []
        self._scanned = -1
        self._last_submitted: tuple[bytes, ...] = ()
        self._subscribers: set[asyncio.Queue[ChangeEvent | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._peer_turn = 0
        self.faults = 0
        self.rejected = 0
        self.compact_min_changes = compact_min_changes
        self.attest_every = max(1, attest_every)
        self.attest_quorum = attest_quorum or _quorum(self.checkpoint_signers)
        self._attests: dict[int, dict[bytes, bytes]] = {}  # k -> signer -> digest
        self._final: dict[int, bytes] = {}  # k -> final snapshot digest
        self._attested: set[int] = set()  # candidates we attested
        self._prepared: dict[int, Snapshot] = {}  # our snapshots of candidates
        self._settled: set[int] = set()  # final checkpoints never to compact at
        self.compactions = 0

    # -- lifecycle ---------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the replica from the database and catch up on checkpoints."""
        stored = self.store.snapshot()
        if stored is not None:  # our own file: parsed, not re-verified against the log
            if snapshot_digest(stored.data) != stored.digest:
                raise SnapshotError("the stored snapshot does not match its digest")
            self.replica.install(decode_snapshot(stored.data, self.replica.limits))
        for data in self.store.changes():
            receipt = self.replica.receive(data, verify=False)
            if receipt.status not in ("applied", "pending", "duplicate"):
                self.log.warning("stored change not re-applied", extra={"reason": receipt.reason})
        self._checkpoints = self.store.checkpoints()
        for att in self.store.attestations():
            self._attests.setdefault(att.k, {}).setdefault(att.signer, att.digest)
        for k in sorted(self._attests):
            self._tally(k)
        self._scanned = self.store.scanned()
        self._rescan_log()
        self.log.info(
            "crdt store loaded",
            extra={"changes": len(self.replica), "checkpoints": len(self._checkpoints)},
        )

    def start(self) -> None:
        """Start anti-entropy, and, on a committee member, checkpoint submissions.

        A mesh peer (no ``submit``, no ``log_store``) replicates documents but neither
        orders checkpoints nor sees them: it does not follow the consensus log.
        """
        self._tasks = [asyncio.create_task(self._sync_loop(), name="crdt-sync")]
        if self._submit is not None:
            self._tasks.append(asyncio.create_task(self._checkpoint_loop(), name="crdt-checkpoint"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    # -- peer side ---------------------------------------------------------------------

    def on_frame(self, peer: bytes, data: bytes) -> None:
        self.replica.observe_time(int(time.time() * 1000))
        self._perform(self.engine.receive(peer, data), local=False)

    def on_connected(self, peer: bytes) -> None:
        self._perform(self.engine.start_session(peer), local=False)

    def on_disconnected(self, peer: bytes) -> None:
        self.engine.peer_gone(peer)

    def _perform(self, result: SyncResult, *, local: bool) -> None:
        got = result.snapshot
        if got is not None:
            snap = got.snapshot
            self.store.save_snapshot(
                SnapshotRow(snap.checkpoint, snap.digest, snap.encode()),
                got.installed.dropped,
                [(c.hash, c.encoded) for c in result.applied],
            )
            self._prepared.clear()
            self.log.info(
                "crdt snapshot installed",
                extra={
                    "k": snap.checkpoint,
                    "peer": _hex(got.peer)[:16],
                    "changes": len(snap.clocks),
                    "bytes": len(snap.encode()),
                },
            )
            if result.applied:
                self._notify(result.applied, local=local)
        elif result.applied:
            self.store.add_changes((c.hash, c.encoded) for c in result.applied)
            self._notify(result.applied, local=local)
        for fault in result.faults:
            self.faults += 1
            self.log.warning(
                "crdt peer fault", extra={"peer": _hex(fault.peer)[:16], "reason": fault.reason}
            )
        self.rejected += len(result.rejected)
        for send in result.sends:
            assert isinstance(send.peer, bytes)
            self._send(send.peer, send.payload, FrameKind.CRDT)

    async def _sync_loop(self) -> None:
        """One reconciliation session per interval, with the connected peers in turn."""
        while True:
            await asyncio.sleep(self.sync_interval)
            peers = sorted(self._connected())
            if peers:
                self._peer_turn = (self._peer_turn + 1) % len(peers)
                self._perform(self.engine.start_session(peers[self._peer_turn]), local=False)

    # -- local writes and reads ---------------------------------------------------------

    def update(self, doc: str, intents: Sequence[Intent]) -> Change:
        """Apply ``intents`` to ``doc`` as one signed change, persist it, push it."""
        ops = prepare_ops(self.replica.document(doc), intents, self.signer.public_key)
        change, receipt = self.replica.create(self.signer, doc, ops, int(time.time() * 1000))
        self.store.add_changes((c.hash, c.encoded) for c in receipt.applied)
        self._notify(list(receipt.applied), local=True)
        self._perform(self.engine.push(change, self._connected()), local=True)
        return change

    def documents(self) -> list[dict[str, Any]]:
        return [{"doc": doc} for doc in self.replica.documents()]

    def read(self, doc: str, checkpoint: int | None = None) -> dict[str, Any]:
        """The value of ``doc`` now, or as of checkpoint ``checkpoint`` with its proof."""
        if checkpoint is None:
            state = self.replica.document(doc)
            if state is None:
                raise UnknownDocument(f"document {doc!r} does not exist")
            return {
                "doc": doc,
                "value": state.value(),
                "state_hash": state_hash(state.to_wire()),
                "heads": [h.hex() for h in self.replica.heads],
            }
        row = self.checkpoint(checkpoint)
        try:
            docs = self.replica.state_at(row.heads)
        except MissingChanges as exc:
            raise CheckpointIncomplete(len(exc.missing)) from None
        except CutCompacted as exc:
            raise CheckpointCompacted(
                f"checkpoint {checkpoint}'s history was compacted into the snapshot of "
                f"checkpoint {exc.checkpoint}; read that checkpoint or a later one"
            ) from None
        state = docs.get(doc)
        if state is None:
            raise UnknownDocument(f"document {doc!r} does not exist at checkpoint {checkpoint}")
        return {
            "doc": doc,
            "value": state.value(),
            "state_hash": state_hash(state.to_wire()),
            "checkpoint": _checkpoint_json(row),
        }

    def checkpoint(self, k: int) -> CheckpointRow:
        if not 1 <= k <= len(self._checkpoints):
            raise UnknownCheckpoint(
                f"checkpoint {k} has not been ordered yet (latest is {len(self._checkpoints)})"
            )
        return self._checkpoints[k - 1]

    def checkpoint_count(self) -> int:
        return len(self._checkpoints)

    def checkpoints(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return [_checkpoint_json(r) for r in self._checkpoints[after : after + limit]]

    def status(self) -> dict[str, Any]:
        st = self.engine.stats
        base = self.replica.base
        return {
            "changes": len(self.replica),
            "documents": len(self.replica.documents()),
            "heads": len(self.replica.heads),
            "pending": self.replica.pending_count,
            "checkpoints": len(self._checkpoints),
            "final_checkpoint": max(self._final, default=0),
            "compaction": {
                "snapshot_checkpoint": 0 if base is None else base.checkpoint,
                "compacted_changes": len(self.replica) - self.replica.live_count,
                "live_changes": self.replica.live_count,
                "compactions": self.compactions,
                "snapshots_installed": st.snapshots_installed,
                "snapshots_sent": st.snapshots_sent,
            },
            "sync": {
                "sessions_started": st.sessions_started,
                "sessions_completed": st.sessions_completed,
                "changes_sent": st.changes_sent,
                "changes_received": st.changes_received,
                "bytes_sent": st.bytes_sent,
                "bytes_received": st.bytes_received,
                "faults": self.faults,
                "rejected_changes": self.rejected,
            },
        }

    def subscribe(self) -> asyncio.Queue[ChangeEvent | None]:
        """A queue of every applied change from now on; ``None`` means the node stops.

        A subscriber that falls :data:`SUBSCRIBER_QUEUE` events behind is dropped
        (it receives ``None``) rather than making the node buffer without bound.
        """
        queue: asyncio.Queue[ChangeEvent | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ChangeEvent | None]) -> None:
        self._subscribers.discard(queue)

    def _notify(self, changes: Sequence[Change], *, local: bool) -> None:
        if not self._subscribers:
            return
        for queue in list(self._subscribers):
            for c in changes:
                event = ChangeEvent(c.doc, c.hash.hex(), c.author.hex(), c.hlc, len(c.ops), local)
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._subscribers.discard(queue)
                    while not queue.empty():
                        queue.get_nowait()
                    queue.put_nowait(None)
                    break

    # -- checkpoints -------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        """Submit our heads as a checkpoint candidate whenever they changed (with any
        attestations due), and compact when a final checkpoint allows it."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            self.submit_checkpoint()
            self.compact()

    def submit_checkpoint(self) -> bool:
        heads = self.replica.heads
        if self._submit is None or not heads:
            return False
        attests = self._attestations_due()
        if heads == self._last_submitted and not attests:
            return False
        try:
            self._submit([encode_checkpoint(self.signer, self.domain, heads, attests)])
        except Exception as exc:  # mempool full: the next interval tries again
            self.log.info("checkpoint not submitted", extra={"reason": str(exc)})
            return False
        self._last_submitted = heads
        self._attested.update(k for k, _ in attests)
        return True

    # -- compaction --------------------------------------------------------------------

    def _attestations_due(self) -> list[Attestation]:
        """Digests of the newest compaction candidates we hold and have not attested."""
        if self.compact_min_changes <= 0:
            return []
        base = self.replica.base
        floor = 0 if base is None else base.checkpoint
        latest = len(self._checkpoints) - len(self._checkpoints) % self.attest_every
        lowest = max(floor, latest - CANDIDATES_LOOKED_AT * self.attest_every)
        out: list[Attestation] = []
        for k in range(latest, lowest, -self.attest_every):
            if k in self._attested or k in self._final or len(out) >= MAX_ATTESTS:
                continue
            snap = self._candidate(k)
            if snap is not None:
                out.append((k, snap.digest))
        return out

    def _candidate(self, k: int) -> Snapshot | None:
        """Our snapshot of checkpoint ``k`` if we hold its cut and it is worth compacting."""
        snap = self._prepared.get(k)
        if snap is not None:
            return snap
        heads = self._checkpoints[k - 1].heads
        try:
            above = len(self.replica.causal_past(heads))
            if above < self.compact_min_changes or not heads:
                return None
            snap = self.replica.snapshot_at(k, heads)
        except (MissingChanges, CutCompacted):
            return None
        while len(self._prepared) >= 2:
            del self._prepared[min(self._prepared)]
        self._prepared[k] = snap
        return snap

    def compact(self) -> bool:
        """Compact below the newest final checkpoint we can; True if we did."""
        if self.compact_min_changes <= 0:
            return False
        base = self.replica.base
        floor = 0 if base is None else base.checkpoint
        for k in sorted((k for k in self._final if k > floor), reverse=True)[:8]:
            if k in self._settled:
                continue
            snap = self._candidate(k)
            if snap is None:
                continue
            if snap.digest != self._final[k]:
                self._settled.add(k)
                self.log.error(
                    "crdt checkpoint digest differs from the attested one: not compacting",
                    extra={"k": k, "ours": snap.digest.hex()[:16]},
                )
                continue
            dropped = self.replica.compact(snap)
            self.store.save_snapshot(SnapshotRow(k, snap.digest, snap.encode()), dropped)
            self._prepared.clear()
            self.compactions += 1
            self.log.info(
                "crdt history compacted",
                extra={"k": k, "dropped": len(dropped), "bytes": len(snap.encode())},
            )
            return True
        return False

    def _tally(self, k: int) -> None:
        """Make checkpoint ``k`` final once a quorum attested one digest for it."""
        if k in self._final:
            return
        votes: dict[bytes, int] = {}
        for digest in self._attests.get(k, {}).values():
            votes[digest] = votes.get(digest, 0) + 1
            if votes[digest] >= self.attest_quorum:
                self._final[k] = digest
                self.engine.set_final(k, digest)
                return

    def final_checkpoints(self) -> dict[int, bytes]:
        """Final checkpoints (number -> snapshot digest) seen in the log."""
        return dict(self._final)

    def on_commit(self, first_index: int, txs: Sequence[bytes]) -> None:
        """Called for every committed vertex, in log order, after it is persisted."""
        if first_index <= self._scanned:
            return
        for offset, tx in enumerate(txs):
            if is_checkpoint(tx):
                self._consider(first_index + offset, tx)
        self._scanned = max(self._scanned, first_index + len(txs) - 1)

    def _consider(self, index: int, tx: bytes) -> None:
        claim = decode_checkpoint(tx, self.domain, self.checkpoint_signers)
        if claim is None:
            return
        attested: list[AttestationRow] = []
        for k, digest in claim.attests:  # only of checkpoints ordered before this one
            votes = self._attests.setdefault(k, {}) if k <= len(self._checkpoints) else None
            if votes is not None and claim.signer not in votes:
                votes[claim.signer] = digest
                attested.append(AttestationRow(k, claim.signer, digest))
                self._tally(k)
        if self._checkpoints and self._checkpoints[-1].heads == claim.heads:
            if attested:
                self.store.add_checkpoint(None, index, attested)
            return  # the same cut again: no new checkpoint
        row = CheckpointRow(len(self._checkpoints) + 1, index, claim.signer, claim.heads)
        self._checkpoints.append(row)
        self.store.add_checkpoint(row, index, attested)
        missing = [h for h in claim.heads if h not in self.replica]
        if missing:
            self.log.info(
                "checkpoint waits for changes", extra={"k": row.k, "missing": len(missing)}
            )

    def _rescan_log(self) -> None:
        """Find checkpoints committed after the last one recorded (crash repair)."""
        while self.log_store is not None:
            rows = self.log_store.log_after(self._scanned, SCAN_PAGE)
            if not rows:
                break
            for row in rows:
                if is_checkpoint(row.data):
                    self._consider(row.index, row.data)
            self._scanned = rows[-1].index
        self.store.set_scanned(self._scanned)


def _checkpoint_json(row: CheckpointRow) -> dict[str, Any]:
    return {
        "k": row.k,
        "log_index": row.log_index,
        "signer": row.signer.hex(),
        "heads": [h.hex() for h in row.heads],
    }


def _quorum(signers: Collection[bytes]) -> int:
    return attest_quorum(len(signers))


def _hex(peer: object) -> str:
    return peer.hex() if isinstance(peer, bytes) else str(peer)
