"""Compaction snapshots: the materialised state of a final checkpoint's causal cut.

Once a checkpoint is *final* (ordered in the consensus log and its state digest
attested by enough committee members, see :mod:`crdt.checkpoint`), the changes in its
causal past can be replaced by one :class:`Snapshot`:

* ``checkpoint``: the number ``k`` of the checkpoint (the same cut on every node);
* ``heads``: the cut's head hashes, sorted (exactly the checkpoint's head set);
* ``clocks``: hash -> hybrid logical clock of *every* change in the cut's past. The
  hashes let a replica recognise a change below the cut when it arrives again (it is
  neither re-applied nor wanted), keep reconciliation over the same id set as a
  replica with the full history, and the clocks keep the clock rule
  (:mod:`crdt.replica`) checkable for a later change that depends on a compacted one;
* ``docs``: every document's state at the cut (:meth:`crdt.replica.Replica.state_at`).

Encoding (``SNAPSHOT_VERSION`` 1), one canonical msgpack array::

    [1, k, [head, ...], ids, [hlc, ...], [[doc, ormap_wire], ...]]

``ids`` is one byte string of the sorted 32-byte hashes back to back, ``hlc`` lists the
clocks in the same order, documents are sorted by id. The digest is BLAKE2b-256 of a
domain-separation prefix and these bytes. Every honest replica that holds the cut
builds byte-identical encodings (the states are joins of the same deltas and ``to_wire``
is canonical), so a digest is a name for the state of a cut that nodes can attest and
compare. A received snapshot is trusted only when its digest equals the one the
consensus log made final for checkpoint ``k``; :func:`decode_snapshot` still parses it
defensively and insists on the canonical form.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import pairwise

import msgpack

from crdt.change import HASH_BYTES, MAX_HLC, ChangeRejected, check_doc_id
from crdt.errors import CrdtError, InvalidOperation
from crdt.limits import CrdtLimits
from crdt.types import ORMap
from p2p.strictwire import Limits, describe, unpack

SNAPSHOT_VERSION = 1
_DIGEST_CONTEXT = b"dagrider-crdt-snapshot-v1\x00"


class SnapshotError(CrdtError):
    """An encoded snapshot is malformed, or a snapshot cannot be installed here."""


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """The state of checkpoint ``checkpoint``'s cut; see the module docstring.

    Treat every field as read-only: a replica shares ``docs`` with its caches.
    """

    checkpoint: int
    heads: tuple[bytes, ...]
    clocks: dict[bytes, int]
    docs: dict[str, ORMap]
    _encoded: list[bytes] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return (
            f"Snapshot(k={self.checkpoint} heads={len(self.heads)} "
            f"changes={len(self.clocks)} docs={len(self.docs)})"
        )

    def encode(self) -> bytes:
        """The canonical encoding (computed once, then cached)."""
        if not self._encoded:
            ids = sorted(self.clocks)
            wire = [
                SNAPSHOT_VERSION,
                self.checkpoint,
                list(self.heads),
                b"".join(ids),
                [self.clocks[h] for h in ids],
                [[doc, self.docs[doc].to_wire()] for doc in sorted(self.docs)],
            ]
            self._encoded.append(msgpack.packb(wire, use_bin_type=True))
        return self._encoded[0]

    @property
    def digest(self) -> bytes:
        return snapshot_digest(self.encode())

    @property
    def max_hlc(self) -> int:
        return max(self.clocks.values(), default=0)


def snapshot_digest(encoded: bytes) -> bytes:
    """BLAKE2b-256 of an encoded snapshot: what committee members attest."""
    return hashlib.blake2b(_DIGEST_CONTEXT + encoded, digest_size=32).digest()


def decode_snapshot(data: bytes, limits: CrdtLimits) -> Snapshot:
    """Parse and check an encoded snapshot; raise :class:`SnapshotError` naming the flaw."""
    if not isinstance(data, bytes | bytearray):
        raise SnapshotError("snapshot: not bytes")
    if len(data) > limits.max_snapshot_bytes:
        raise SnapshotError(f"snapshot: {len(data)} bytes > limit {limits.max_snapshot_bytes}")
    size = len(data)
    obj = unpack(
        data,
        lambda field, detail: SnapshotError(f"snapshot: {detail}"),
        Limits(max_frame=size, max_bin=size, max_str=size, max_array=size, max_map=size),
    )
    if not isinstance(obj, list) or len(obj) != 6:
        raise SnapshotError("snapshot: expected a 6-element array")
    version, k, heads, ids, hlcs, docs = obj
    if type(version) is not int or version != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"snapshot: format version {describe(version, 40)}, this node reads {SNAPSHOT_VERSION}"
        )
    if type(k) is not int or not 0 < k < 1 << 63:
        raise SnapshotError("snapshot: checkpoint number must be a positive integer")
    if type(ids) is not bytes or len(ids) % HASH_BYTES:
        raise SnapshotError("snapshot: ids must be whole 32-byte hashes")
    hashes = [ids[i : i + HASH_BYTES] for i in range(0, len(ids), HASH_BYTES)]
    if any(a >= b for a, b in pairwise(hashes)):
        raise SnapshotError("snapshot: ids not sorted and unique")
    if not isinstance(hlcs, list) or len(hlcs) != len(hashes):
        raise SnapshotError("snapshot: expected one clock per id")
    if not all(type(c) is int and 0 < c <= MAX_HLC for c in hlcs):
        raise SnapshotError("snapshot: clocks must be positive 63-bit integers")
    clocks = dict(zip(hashes, hlcs, strict=True))
    if not isinstance(heads, list) or not heads:
        raise SnapshotError("snapshot: heads must be a non-empty list")
    if not all(type(h) is bytes and len(h) == HASH_BYTES for h in heads):
        raise SnapshotError("snapshot: every head is a 32-byte hash")
    if any(a >= b for a, b in pairwise(heads)):
        raise SnapshotError("snapshot: heads not sorted and unique")
    if any(h not in clocks for h in heads):
        raise SnapshotError("snapshot: a head is not among the snapshot's changes")
    if not isinstance(docs, list):
        raise SnapshotError("snapshot: documents must be a list")
    states: dict[str, ORMap] = {}
    previous = ""
    for row in docs:
        if not isinstance(row, list) or len(row) != 2 or not isinstance(row[0], str):
            raise SnapshotError("snapshot: each document is [id, state]")
        doc, wire = row
        try:
            check_doc_id(doc, limits)
        except ChangeRejected as exc:
            raise SnapshotError(f"snapshot: {exc.detail}") from None
        if doc <= previous:
            raise SnapshotError("snapshot: documents not sorted and unique")
        previous = doc
        try:
            states[doc] = ORMap.from_wire(wire)
        except InvalidOperation as exc:
            raise SnapshotError(f"snapshot: document {describe(doc, 80)}: {exc}") from None
    snapshot = Snapshot(k, tuple(heads), clocks, states)
    if snapshot.encode() != bytes(data):
        raise SnapshotError("snapshot: encoding is not canonical")
    return snapshot
