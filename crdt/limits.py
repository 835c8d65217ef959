"""Bounds on what one peer can make a replica parse, hold or allocate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CrdtLimits:
    """Every size a Byzantine peer could otherwise choose for us.

    ``max_pending`` bounds changes held while their dependencies are missing: they are
    not part of our change set, so anti-entropy offers them again later and dropping
    one loses nothing. ``max_pending_per_author`` and ``max_pending_bytes_per_author``
    are each author's share of that buffer (count and encoded bytes), so one authorised
    writer cannot fill it and starve the others.

    ``max_snapshot_bytes`` bounds one encoded compaction snapshot (see
    :mod:`crdt.snapshot`) that a peer may send us.
    """

    max_change_bytes: int = 1 << 20
    max_ops: int = 4096
    max_deps: int = 1024
    max_doc_id_bytes: int = 256
    max_pending: int = 10_000
    max_pending_per_author: int = 2_000
    max_pending_bytes_per_author: int = 16 << 20
    max_sync_batch_bytes: int = 4 << 20
    max_snapshot_bytes: int = 256 << 20
