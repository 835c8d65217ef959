"""Anti-entropy between replicas as a pure state machine (no sockets, no clocks).

Three mechanisms, each covering the others' blind spots:

* **Push.** A new local change goes to every peer at once, so in a healthy mesh a
  write reaches everyone within one network delay.
* **Reconciliation sessions.** Periodically a replica opens a session with a peer: the
  two run range-based set reconciliation (:mod:`crdt.reconcile`) over the hashes of
  their applied changes and each sends the changes the other lacks, oldest first
  (topological order). Cost is proportional to the difference, not the history.
  A session is stateless beyond the two id sets, so an interrupted session is
  "resumed" by the next one, which only has the remaining difference to find.
* **Wants.** A session opener announces its heads; after reconciliation, and whenever
  a received change waits for dependencies, the replica asks the sender for the
  missing hashes by name. This closes any gap reconciliation could miss (a crafted
  fingerprint collision) and pulls a pushed change's history.

* **Snapshots.** A replica that compacted its history (:mod:`crdt.snapshot`) cannot
  send the changes below its snapshot's cut. When reconciliation or a want shows that a
  peer lacks one of them, it *offers* the snapshot (checkpoint number, digest, size);
  the peer asks for it only if the consensus log made that digest final for that
  checkpoint on the peer itself (:meth:`SyncEngine.set_final`), then receives it in
  bounded parts, checks the digest of the whole and installs it; the changes above
  the cut keep arriving as signed changes, each verified as usual.

Everything a peer sends is checked: garbage, oversize frames or protocol violations
end that exchange with a :class:`Fault` for the shell to log and rate-limit, and never
change replica state. A withholding peer can only slow us down: sessions with other
peers deliver the same changes.

The wire format is versioned (:data:`SYNC_VERSION`, the first element of every
message); a message of another version is a fault that names both versions.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from crdt.change import HASH_BYTES, Change
from crdt.errors import CrdtError
from crdt.reconcile import DEFAULT_MAX_IDS, DEFAULT_MAX_RANGES, ReconcileError, Reconciler
from crdt.reconcile import Message as ReconMessage
from crdt.replica import Installed, Replica
from crdt.snapshot import Snapshot, SnapshotError, decode_snapshot, snapshot_digest
from p2p.strictwire import Limits, describe, unpack

SYNC_VERSION = 2
"""Version 1 had no version field and no snapshot messages: ``[kind, ...]``."""
MSG_SESSION, MSG_CHANGES, MSG_WANT = 1, 2, 3
MSG_SNAPSHOT_OFFER, MSG_SNAPSHOT_WANT, MSG_SNAPSHOT_PART = 4, 5, 6
MAX_FINAL = 64
"""Final checkpoints remembered for accepting snapshots (the newest ones)."""
MAX_TRANSFERS = 2
"""Snapshots received at once (each may be up to ``max_snapshot_bytes``)."""
MAX_WANT = 4096
MAX_HEADS = 4096
MAX_ROUNDS = 64
_NOT_THE_SENDERS_FAULT = frozenset({"pending-full", "pending-quota", "clock-skew"})
"""Refusals that come from our own limits or clock, not from a bad change."""
# Narrow splits and short id lists: more round trips, fewer fingerprint bytes (measured
# in bench/crdt.py: 4/2 sends ~25% fewer bytes than 16/32 for a 1% difference).
BRANCHING = 4
ID_LIST_THRESHOLD = 2


class SyncProtocolError(CrdtError):
    """A peer's sync message was malformed or broke the protocol."""


@dataclass(frozen=True, slots=True)
class Send:
    """Effect: send ``payload`` to ``peer`` on the CRDT channel."""

    peer: Hashable
    payload: bytes


@dataclass(frozen=True, slots=True)
class Fault:
    """Effect: ``peer`` sent something invalid; the shell logs it and may back off."""

    peer: Hashable
    reason: str


@dataclass(frozen=True, slots=True)
class SnapshotInstalled:
    """A peer's snapshot was verified and installed; the shell persists it (and drops
    ``installed.dropped`` from storage) together with :attr:`SyncResult.applied`."""

    peer: Hashable
    snapshot: Snapshot
    installed: Installed


@dataclass(slots=True)
class SyncResult:
    """What handling one input produced: messages to send, changes applied, faults."""

    sends: list[Send] = field(default_factory=list)
    applied: list[Change] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    snapshot: SnapshotInstalled | None = None


@dataclass(slots=True)
class _Session:
    reconciler: Reconciler
    rounds: int = 0
    peer_heads: tuple[bytes, ...] = ()
    heads_sent: bool = False


@dataclass(slots=True)
class _Incoming:
    """A snapshot transfer we asked a peer for."""

    checkpoint: int
    digest: bytes
    size: int
    data: bytearray = field(default_factory=bytearray)
    progress_at_offer: int = -1


@dataclass(slots=True)
class SyncStats:
    sessions_started: int = 0
    sessions_completed: int = 0
    changes_sent: int = 0
    changes_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    faults: int = 0
    snapshots_offered: int = 0
    snapshots_sent: int = 0
    snapshots_installed: int = 0
    snapshots_refused: int = 0


class SyncEngine:
    """All anti-entropy state of one replica towards its peers."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.stats = SyncStats()
        self._sessions: dict[tuple[Hashable, int, bool], _Session] = {}
        self._next_session = 1
        self._final: dict[int, bytes] = {}
        self._offered: dict[Hashable, int] = {}
        self._incoming: dict[Hashable, _Incoming] = {}

    def set_final(self, checkpoint: int, digest: bytes) -> None:
        """The consensus log made ``digest`` final for checkpoint ``checkpoint``: a peer's
        snapshot of that checkpoint with that digest may be accepted."""
        self._final[checkpoint] = digest
        while len(self._final) > MAX_FINAL:
            del self._final[min(self._final)]

    # -- inputs from the shell -------------------------------------------------------

    def start_session(self, peer: Hashable) -> SyncResult:
        """Open a reconciliation session with ``peer`` (we are the initiator)."""
        result = SyncResult()
        open_here = [k for k in self._sessions if k[0] == peer and k[2]]
        for key in open_here:  # an unfinished earlier session is superseded
            del self._sessions[key]
        sid = self._next_session
        self._next_session += 1
        self._offered.pop(peer, None)
        reconciler = self._reconciler()
        self._sessions[(peer, sid, True)] = _Session(reconciler, heads_sent=True)
        self.stats.sessions_started += 1
        first = reconciler.initiate()
        self._send(result, peer, encode_session(sid, True, self.replica.heads[:MAX_HEADS], first))
        return result

    def push(self, change: Change, peers: Iterable[Hashable]) -> SyncResult:
        """Send a freshly created local change to ``peers``."""
        result = SyncResult()
        payload = encode_changes([change.encoded])
        for peer in peers:
            self._send(result, peer, payload)
            self.stats.changes_sent += 1
        return result

    def peer_gone(self, peer: Hashable) -> None:
        """Forget sessions with a peer whose link went down."""
        for key in [k for k in self._sessions if k[0] == peer]:
            del self._sessions[key]
        self._offered.pop(peer, None)
        self._incoming.pop(peer, None)

    def receive(self, peer: Hashable, data: bytes) -> SyncResult:
        """Handle one message from ``peer``; never raises on bad input."""
        result = SyncResult()
        self.stats.bytes_received += len(data)
        try:
            kind, body = _decode(data, self.replica.limits.max_sync_batch_bytes)
            if kind == MSG_SESSION:
                self._on_session(peer, body, result)
            elif kind == MSG_CHANGES:
                self._on_changes(peer, body, result)
            elif kind == MSG_WANT:
                self._on_want(peer, body, result)
            elif kind == MSG_SNAPSHOT_OFFER:
                self._on_offer(peer, body, result)
            elif kind == MSG_SNAPSHOT_WANT:
                self._on_snapshot_want(peer, body, result)
            else:
                self._on_part(peer, body, result)
        except (SyncProtocolError, ReconcileError) as exc:
            self.peer_gone(peer)
            self.stats.faults += 1
            result.faults.append(Fault(peer, str(exc)))
        return result

    # -- handlers --------------------------------------------------------------------

    def _on_session(self, peer: Hashable, body: list[Any], result: SyncResult) -> None:
        sid, from_initiator, heads, recon_wire = _session_fields(body)
        key = (peer, sid, not from_initiator)
        session = self._sessions.get(key)
        if session is None:
            if not from_initiator:
                return  # a reply to a session we dropped: ignore, the next one will do
            # A peer runs one session with us at a time: its new session supersedes any
            # older one (lost last message, restart), which would otherwise linger.
            for stale in [k for k in self._sessions if k[0] == peer and not k[2]]:
                del self._sessions[stale]
            self._offered.pop(peer, None)
            session = self._sessions[key] = _Session(self._reconciler())
        if heads:
            session.peer_heads = heads
        if recon_wire is None:  # the peer has nothing left to resolve
            self._finish(peer, key, session, result)
            return
        session.rounds += 1
        if session.rounds > MAX_ROUNDS:
            raise SyncProtocolError(f"session exceeded {MAX_ROUNDS} rounds")
        step = session.reconciler.respond(ReconMessage.from_wire(recon_wire))
        self._send_changes(peer, step.have, result)
        reply = step.reply
        heads_out: tuple[bytes, ...] = ()
        if not session.heads_sent:
            session.heads_sent = True
            heads_out = self.replica.heads[:MAX_HEADS]
        self._send(result, peer, encode_session(sid, key[2], heads_out, reply))
        if reply is None:
            self._finish(peer, key, session, result)

    def _finish(
        self, peer: Hashable, key: tuple[Hashable, int, bool], session: _Session, result: SyncResult
    ) -> None:
        del self._sessions[key]
        self.stats.sessions_completed += 1
        wanted = [h for h in session.peer_heads if h not in self.replica]
        wanted.extend(self.replica.missing())
        self._want(peer, wanted, result)

    def _on_changes(self, peer: Hashable, body: list[Any], result: SyncResult) -> None:
        missing: set[bytes] = set()
        for encoded in body:
            if not isinstance(encoded, bytes):
                raise SyncProtocolError("changes: every change is a byte string")
        for encoded in body:
            receipt = self.replica.receive(encoded)
            self.stats.changes_received += 1
            if receipt.status == "applied":
                result.applied.extend(receipt.applied)
            elif receipt.status == "pending":
                missing.update(receipt.missing)
            elif receipt.status == "rejected":
                result.rejected.append((receipt.reason or "rejected", receipt.detail))
        # A full pending buffer (or an author's full share of it) is our limit, not the
        # sender's fault.
        # Nor is a clock ahead of ours by more than the bound: an honest peer whose clock
        # is a little ahead of ours relays what its own bound let in.
        blamed = [r for r in result.rejected if r[0] not in _NOT_THE_SENDERS_FAULT]
        if blamed:
            reason, detail = blamed[0]
            result.faults.append(
                Fault(peer, f"sent {len(blamed)} rejected change(s): {reason}: {detail}")
            )
            self.stats.faults += 1
        # Fix (test_sync cost test): want only deps neither applied nor held as pending;
        # asking for pending ones made the peer send them a second time.
        absent = self.replica.missing()
        self._want(peer, [h for h in missing if h in absent], result)

    def _on_want(self, peer: Hashable, body: list[Any], result: SyncResult) -> None:
        if len(body) > MAX_WANT:
            raise SyncProtocolError(f"want: more than {MAX_WANT} hashes")
        for h in body:
            if not isinstance(h, bytes) or len(h) != HASH_BYTES:
                raise SyncProtocolError("want: every entry is a 32-byte hash")
        self._send_changes(peer, body, result)

    # -- snapshots -------------------------------------------------------------------

    def _offer(self, peer: Hashable, result: SyncResult) -> None:
        """The peer lacks changes below our snapshot: offer it (once per session)."""
        base = self.replica.base
        if base is None or self._offered.get(peer) == base.checkpoint:
            return
        self._offered[peer] = base.checkpoint
        self.stats.snapshots_offered += 1
        size = len(base.encode())
        self._send(result, peer, _frame(MSG_SNAPSHOT_OFFER, base.checkpoint, base.digest, size))

    def _on_offer(self, peer: Hashable, body: list[Any], result: SyncResult) -> None:
        k, digest, size = _snapshot_fields(body, "offer")
        if type(size) is not int or size <= 0:
            raise SyncProtocolError("snapshot offer: bad size")
        final = self._final.get(k)
        if final is None:
            return  # not final here (yet): our log may lag; a later session offers again
        if final != digest:
            raise SyncProtocolError(
                f"snapshot offer: digest {digest.hex()[:16]} for checkpoint {k} is not "
                f"the final one ({final.hex()[:16]})"
            )
        base = self.replica.base
        if base is not None and k <= base.checkpoint:
            return
        if size > self.replica.limits.max_snapshot_bytes:
            self.stats.snapshots_refused += 1
            return
        incoming = self._incoming.get(peer)
        if incoming is not None:
            same = (incoming.checkpoint, incoming.digest) == (k, digest)
            if same and len(incoming.data) != incoming.progress_at_offer:
                incoming.progress_at_offer = len(incoming.data)
                return  # still arriving since the last offer: keep it
            del self._incoming[peer]  # stalled (a part was lost) or superseded
        if len(self._incoming) >= MAX_TRANSFERS:
            return
        self._incoming[peer] = _Incoming(k, digest, size, progress_at_offer=0)
        self._send(result, peer, _frame(MSG_SNAPSHOT_WANT, k, digest))

    def _on_snapshot_want(self, peer: Hashable, body: list[Any], result: SyncResult) -> None:
        k, digest, *_ = _snapshot_fields(body, "want")
        base = self.replica.base
        if base is None or self._offered.get(peer) != k or base.checkpoint != k:
            return  # not offered (in this session), or compacted further since
        if base.digest != digest:
            raise SyncProtocolError("snapshot want: not the digest we offered")
        del self._offered[peer]  # one transfer per offer
        data = base.encode()
        chunk = max(1, self.replica.limits.max_sync_batch_bytes // 2)
        for offset in range(0, len(data), chunk):
            part = data[offset : offset + chunk]
            self._send(result, peer, _frame(MSG_SNAPSHOT_PART, k, digest, offset, len(data), part))
        self.stats.snapshots_sent += 1

    def _on_part(self, peer: Hashable, body: list[Any], result: SyncResult) -> None:
        k, digest, offset, total, chunk = _snapshot_fields(body, "part")
        if type(offset) is not int or type(total) is not int or type(chunk) is not bytes:
            raise SyncProtocolError("snapshot part: expected offset, total and bytes")
        incoming = self._incoming.get(peer)
        if incoming is None or (incoming.checkpoint, incoming.digest) != (k, digest):
            return  # not asked for (any more)
        if total != incoming.size or not chunk or offset + len(chunk) > total:
            del self._incoming[peer]
            raise SyncProtocolError("snapshot part: does not fit the offered size")
        if offset != len(incoming.data):
            if offset > len(incoming.data):  # a part was lost: the next offer restarts it
                del self._incoming[peer]
            return
        incoming.data += chunk
        if len(incoming.data) < total:
            return
        del self._incoming[peer]
        data = bytes(incoming.data)
        if snapshot_digest(data) != digest:
            raise SyncProtocolError(f"snapshot of checkpoint {k}: digest does not match")
        try:
            snapshot = decode_snapshot(data, self.replica.limits)
        except SnapshotError as exc:
            raise SyncProtocolError(f"snapshot of checkpoint {k}: {exc}") from None
        if snapshot.checkpoint != k:
            raise SyncProtocolError(f"snapshot of checkpoint {k} names {snapshot.checkpoint}")
        try:
            installed = self.replica.install(snapshot)
        except SnapshotError:  # it does not contain our own snapshot: our limit, no fault
            self.stats.snapshots_refused += 1
            return
        self.stats.snapshots_installed += 1
        result.snapshot = SnapshotInstalled(peer, snapshot, installed)
        result.applied.extend(installed.applied)
        self._want(peer, self.replica.missing(), result)

    # -- helpers ---------------------------------------------------------------------

    def _reconciler(self) -> Reconciler:
        return Reconciler(
            self.replica.ids,
            branching=BRANCHING,
            id_list_threshold=ID_LIST_THRESHOLD,
            max_ranges=DEFAULT_MAX_RANGES,
            max_ids=DEFAULT_MAX_IDS,
            max_rounds=MAX_ROUNDS,
        )

    def _want(self, peer: Hashable, hashes: Iterable[bytes], result: SyncResult) -> None:
        unique = sorted(set(hashes))[:MAX_WANT]
        if unique:
            self._send(result, peer, encode_want(unique))

    def _send_changes(self, peer: Hashable, hashes: Iterable[bytes], result: SyncResult) -> None:
        """Send the held changes among ``hashes``, oldest first, in bounded batches; if
        some are compacted, offer the snapshot instead of them."""
        budget = self.replica.limits.max_sync_batch_bytes // 2
        batch: list[bytes] = []
        size = 0
        hashes = list(hashes)
        if self.replica.base is not None and any(map(self.replica.is_compacted, hashes)):
            self._offer(peer, result)
        for change in self.replica.ordered(hashes):
            if batch and size + len(change.encoded) > budget:
                self._send(result, peer, encode_changes(batch))
                batch, size = [], 0
            batch.append(change.encoded)
            size += len(change.encoded)
            self.stats.changes_sent += 1
        if batch:
            self._send(result, peer, encode_changes(batch))

    def _send(self, result: SyncResult, peer: Hashable, payload: bytes) -> None:
        self.stats.bytes_sent += len(payload)
        result.sends.append(Send(peer, payload))


# -- wire format -------------------------------------------------------------------------
# Every message is [SYNC_VERSION, kind, *fields]:
# [2, MSG_SESSION, sid, from_initiator, heads, recon | nil]
# [2, MSG_CHANGES, [encoded change, ...]]
# [2, MSG_WANT, [hash, ...]]
# [2, MSG_SNAPSHOT_OFFER, k, digest, size]
# [2, MSG_SNAPSHOT_WANT, k, digest]
# [2, MSG_SNAPSHOT_PART, k, digest, offset, total, bytes]

_FIELDS = {
    MSG_SESSION: 4,
    MSG_CHANGES: 1,
    MSG_WANT: 1,
    MSG_SNAPSHOT_OFFER: 3,
    MSG_SNAPSHOT_WANT: 2,
    MSG_SNAPSHOT_PART: 5,
}


def _frame(kind: int, *fields: Any) -> bytes:
    out: bytes = msgpack.packb([SYNC_VERSION, kind, *fields], use_bin_type=True)
    return out


def encode_session(
    sid: int, from_initiator: bool, heads: Iterable[bytes], recon: ReconMessage | None
) -> bytes:
    """A session message (the opening one carries the initiator's heads)."""
    wire = None if recon is None else recon.to_wire()
    return _frame(MSG_SESSION, sid, from_initiator, list(heads), wire)


def encode_changes(encoded: list[bytes]) -> bytes:
    """A batch of encoded changes."""
    return _frame(MSG_CHANGES, encoded)


def encode_want(hashes: list[bytes]) -> bytes:
    """A request for changes by hash."""
    return _frame(MSG_WANT, hashes)


# The names before they were public (tests/test_decoder_fuzz.py imports them).
_encode_session = encode_session
_encode_changes = encode_changes
_encode_want = encode_want


def _decode(data: bytes, max_bytes: int) -> tuple[int, list[Any]]:
    if isinstance(data, bytes | bytearray | memoryview) and len(data) > max_bytes:
        raise SyncProtocolError(f"message of {len(data)} bytes exceeds {max_bytes}")
    obj = unpack(
        data,
        lambda field, detail: SyncProtocolError(detail),
        Limits(
            max_frame=max_bytes,
            max_bin=max_bytes,
            max_str=max_bytes,
            max_array=max_bytes,
            max_map=max_bytes,
        ),
    )
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise SyncProtocolError("expected [version, kind, ...]")
    version = obj[0]
    if version == SYNC_VERSION and len(obj) >= 2 and type(obj[1]) is int:
        kind = obj[1]
        fields = _FIELDS.get(kind)
        if fields is None:
            raise SyncProtocolError(f"unknown message kind {kind}")
        if len(obj) != fields + 2:
            raise SyncProtocolError(f"kind {kind}: expected {fields} field(s)")
        if kind in (MSG_CHANGES, MSG_WANT):
            if not isinstance(obj[2], list):
                raise SyncProtocolError(f"kind {kind}: expected [version, kind, list]")
            return kind, obj[2]
        return kind, obj[2:]
    v1 = (version == MSG_SESSION and len(obj) == 5) or (
        version in (MSG_CHANGES, MSG_WANT) and len(obj) == 2 and isinstance(obj[1], list)
    )
    if v1:
        raise SyncProtocolError(
            f"sync protocol version mismatch: the peer speaks version 1, this node speaks "
            f"version {SYNC_VERSION}; upgrade the peer"
        )
    if version != SYNC_VERSION:
        raise SyncProtocolError(
            f"sync protocol version mismatch: the peer sent version {describe(version, 24)}, "
            f"this node speaks version {SYNC_VERSION}"
        )
    raise SyncProtocolError("expected [version, kind, ...]")


def _snapshot_fields(body: list[Any], what: str) -> list[Any]:
    """Check the (checkpoint, digest) that every snapshot message starts with."""
    k, digest = body[0], body[1]
    if type(k) is not int or not 0 < k < 1 << 63:
        raise SyncProtocolError(f"snapshot {what}: bad checkpoint number")
    if not isinstance(digest, bytes) or len(digest) != HASH_BYTES:
        raise SyncProtocolError(f"snapshot {what}: digest must be 32 bytes")
    return body


def _session_fields(body: list[Any]) -> tuple[int, bool, tuple[bytes, ...], Any]:
    sid, from_initiator, heads, recon = body
    if type(sid) is not int or not 0 < sid < 1 << 63:
        raise SyncProtocolError("session: bad session id")
    if not isinstance(from_initiator, bool):
        raise SyncProtocolError("session: bad direction flag")
    if not isinstance(heads, list) or len(heads) > MAX_HEADS:
        raise SyncProtocolError(f"session: heads must be a list of at most {MAX_HEADS}")
    for h in heads:
        if not isinstance(h, bytes) or len(h) != HASH_BYTES:
            raise SyncProtocolError("session: every head is a 32-byte hash")
    return sid, from_initiator, tuple(heads), recon
