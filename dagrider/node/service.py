"""The seam between the client API and the node.

``api.py`` talks only to a ``NodeService``; the daemon implements it over the mempool,
the committed log and the process, and the API tests implement it in memory. Keeping
the seam a ``Protocol`` of plain calls means the HTTP layer never learns how the node
stores, orders or limits anything, and the node never learns HTTP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dagrider.node.metrics import Metrics

__all__ = [
    "TX_ID_HEX_LEN",
    "LogEntry",
    "MempoolFull",
    "NodeService",
    "StorageCorrupt",
    "StorageUnavailable",
    "TxStatus",
    "TxTooLarge",
    "tx_id",
]

TX_ID_HEX_LEN = 64
"""A transaction id is the hex BLAKE2b-256 digest of its bytes: 64 lowercase hex digits."""


def tx_id(data: bytes) -> str:
    """The id of a transaction: hex BLAKE2b-256 of its bytes.

    Content-addressed, so a client can compute the id of what it sent without waiting
    for the node (the batch ingest does not return every id), and the same bytes have
    the same id on every node.
    """
    return hashlib.blake2b(data, digest_size=32).hexdigest()


class NotAMember(Exception):
    """A mesh peer was asked to order transactions; only committee members do."""


class MempoolFull(Exception):
    """The mempool cannot take the batch; nothing of it was enqueued.

    The API answers 429 with ``Retry-After: ceil(retry_after)``: back-pressure instead
    of a silent drop.
    """

    def __init__(self, reason: str = "mempool full", *, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class TxTooLarge(Exception):
    """A transaction of the batch exceeds the node's limit; nothing was enqueued (413)."""


class StorageUnavailable(Exception):
    """The node cannot write to its store (disk full, I/O error): it accepts nothing and
    advances nothing until a write succeeds again (507 Insufficient Storage, with the
    cause). Nothing is lost: what was not written was neither acknowledged nor sent."""

    def __init__(self, cause: str, *, retry_after: float = 5.0) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


class StorageCorrupt(Exception):
    """A stored row does not match its hash (bit rot, a garbled or truncated file). The
    node never serves such a row: it stops with exit code 3, naming the position."""


@dataclass(frozen=True)
class LogEntry:
    """One committed transaction at its position in the total order.

    ``index`` is the global transaction index (the same on every correct node);
    ``round``/``source`` name the vertex that carried it and ``wave`` the wave whose
    leader committed it; ``committed_at`` is this node's unix time of the commit.
    """

    index: int
    tx_id: str
    data: bytes
    round: int
    source: int
    wave: int
    committed_at: float


@dataclass(frozen=True)
class TxStatus:
    """Where a transaction is: waiting in this node's mempool or an unordered vertex
    (``pending``, no position yet), in the log (``committed``, with its position), or
    not known to this node (``unknown``)."""

    tx_id: str
    state: Literal["pending", "committed", "unknown"]
    index: int | None
    round: int | None
    wave: int | None


class NodeService(Protocol):
    """What the client API needs from a node. Every call but ``wait_for_log`` is
    synchronous and must be cheap: the API calls them on the event loop."""

    @property
    def max_tx_bytes(self) -> int:
        """Largest accepted transaction in bytes; the API refuses bigger ones (413) before
        calling ``submit``. A plain attribute satisfies this too."""
        ...

    def submit(self, txs: Sequence[bytes]) -> list[str]:
        """Enqueue a batch atomically and return the ids (``tx_id``) in order.

        ``txs`` may be a ``RecordBatch`` (the record-batch ingest), whose raw records
        and ids the node stores as they came instead of re-encoding them.

        Raises ``MempoolFull`` or ``TxTooLarge``; either way nothing was enqueued.
        """
        ...

    def tx_status(self, tx_id: str) -> TxStatus:
        """The state of a transaction by id (``state="unknown"`` if never seen)."""
        ...

    def log(self, after: int, limit: int) -> list[LogEntry]:
        """Committed entries with ``index > after`` in order, at most ``limit``
        (``after=-1`` starts at the beginning)."""
        ...

    def log_head(self) -> int:
        """Index of the last committed transaction that ``log`` can return (it is on
        disk), -1 if none."""
        ...

    async def wait_for_log(self, after: int, timeout: float) -> None:
        """Return once ``log_head() > after``, or after ``timeout`` seconds; never raise on
        timeout. Must be safe to cancel."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: round, wave, last committed leader, peers and their link
        state, mempool size..."""
        ...

    def metrics(self) -> Metrics:
        """The node's registry (the API renders it, followed by its own, on /metrics)."""
        ...
