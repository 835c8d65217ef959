"""The shell's bookkeeping of client transactions between ingest and commit (sans-I/O).

The pure :class:`~dagrider.process.Process` keeps the pending transactions themselves
(a FIFO it takes blocks from). The node needs three more things about them, all per
*ingest batch* rather than per transaction, so that a transaction costs no Python
object or hash beyond the one id computed at ingest:

* **ids and times**: :class:`Ledger` mirrors the process's FIFO as a deque of pieces
  (submit time, ids of consecutive transactions). A proposal takes its block from the
  front, so the ledger cuts the same count off its front: the block's ids (handed to
  the store's commit index instead of re-hashing) and their submit times (the
  submit-to-proposal latency) come out without looking at a transaction.
* **stage latencies**: proposal, reliable-broadcast delivery and commit times of our
  own vertices and of every delivered vertex, for the per-stage histograms.
* **admission**: :class:`Admission` turns the measured drain rate of the mempool (an
  EWMA of transactions per second leaving it for our vertices) into the largest
  backlog that still clears in ``max_delay`` seconds, and into a ``Retry-After`` for
  what is over it. A fixed mempool size is either too small for a fast committee or
  lets a slow one queue minutes of work; the measured rate is neither.

Time is always an argument (``now``), so the tests drive it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from dagrider.node.batch import ID_BYTES, batch_ids

__all__ = ["ADMIT_MAX_DELAY", "Admission", "Flight", "Ledger", "Piece"]

ADMIT_MAX_DELAY = 0.5
"""Seconds of measured drain a node's mempool may hold: past it, submissions get 429."""
DELIVERED_TRACKED = 4096  # delivered-but-uncommitted vertices whose delivery time is kept


@dataclass
class Piece:
    """Consecutive pending transactions submitted together: their ids (32 bytes each)
    and when they were accepted."""

    submitted: float
    ids: bytes

    @property
    def count(self) -> int:
        return len(self.ids) // ID_BYTES


@dataclass
class Flight:
    """One of our vertices on its way to the log: when it was proposed and delivered,
    and the pieces of its block (for the submit-to-commit latency)."""

    proposed: float
    pieces: list[Piece]
    delivered: float | None = None


@dataclass
class Ledger:
    """Ids and submit times of pending transactions, per batch, in the process's order."""

    pieces: deque[Piece] = field(default_factory=deque)
    flights: dict[bytes, Flight] = field(default_factory=dict)  # own vertex digest ->
    delivered_at: dict[bytes, float] = field(default_factory=dict)  # any vertex digest ->

    def __len__(self) -> int:
        return sum(p.count for p in self.pieces)

    def added(self, ids: bytes, now: float, *, front: bool = False) -> None:
        """Transactions entered the process's mempool (at its back, or its front for
        requeued ones)."""
        if not ids:
            return
        if front:
            self.pieces.appendleft(Piece(now, ids))
        else:
            self.pieces.append(Piece(now, ids))

    def requeued(self, txs: Sequence[bytes], now: float) -> None:
        """The process put an unordered block of ours back at the front (rare: hashed)."""
        self.added(batch_ids(txs), now, front=True)

    def take(self, count: int) -> list[Piece]:
        """Cut ``count`` transactions off the front (the block of a fresh proposal)."""
        out: list[Piece] = []
        pieces = self.pieces
        while count > 0 and pieces:
            head = pieces[0]
            n = head.count
            if n <= count:
                out.append(pieces.popleft())
                count -= n
            else:
                cut = count * ID_BYTES
                out.append(Piece(head.submitted, head.ids[:cut]))
                head.ids = head.ids[cut:]
                count = 0
        return out

    def proposed(self, digest: bytes, count: int, now: float) -> tuple[bytes, list[Piece]]:
        """Our fresh vertex took ``count`` transactions: (their ids, their pieces)."""
        pieces = self.take(count)
        self.flights[digest] = Flight(now, pieces)
        while len(self.flights) > DELIVERED_TRACKED:
            del self.flights[next(iter(self.flights))]
        return b"".join(p.ids for p in pieces), pieces

    def delivered(self, digest: bytes, now: float) -> Flight | None:
        """Reliable broadcast delivered a vertex; our own one's flight, if any."""
        self.delivered_at[digest] = now
        while len(self.delivered_at) > DELIVERED_TRACKED:
            del self.delivered_at[next(iter(self.delivered_at))]
        flight = self.flights.get(digest)
        if flight is not None and flight.delivered is None:
            flight.delivered = now
            return flight
        return None

    def committed(self, digest: bytes) -> tuple[float | None, Flight | None]:
        """A vertex was ordered: (when it was delivered, our flight if it was ours)."""
        return self.delivered_at.pop(digest, None), self.flights.pop(digest, None)

    def is_pending(self, tx_id: bytes) -> bool:
        """Whether a transaction waits in the mempool or in one of our vertices not yet
        ordered. A scan of the id lists (C speed: 32 bytes per pending transaction)
        rather than a set kept per transaction: status queries are rare, ingest is not."""
        pieces = [*self.pieces, *(p for f in self.flights.values() for p in f.pieces)]
        for piece in pieces:
            ids = piece.ids
            at = ids.find(tx_id)
            while at >= 0:
                if at % ID_BYTES == 0:
                    return True
                at = ids.find(tx_id, at + 1)
        return False


@dataclass
class Admission:
    """Admission control from the measured drain rate of this node's mempool.

    ``drained(count, now)`` is called whenever transactions leave the mempool for one of
    our vertices; the rate is an EWMA with time constant ``tau`` seconds. A submission
    is admitted while the backlog, with it, clears within ``max_delay`` seconds at that
    rate; ``floor`` (two full vertices) keeps an idle or just-started node from
    refusing work before it has a rate, and ``hard_cap`` (``[mempool] max_pending``)
    bounds memory whatever the rate says.
    """

    floor: int
    hard_cap: int
    max_delay: float = ADMIT_MAX_DELAY
    tau: float = 2.0
    rate: float = 0.0  # transactions per second leaving the mempool (EWMA)
    _since: float | None = None
    _count: int = 0

    def drained(self, count: int, now: float) -> None:
        if self._since is None:
            self._since = now
        self._count += count
        dt = now - self._since
        if dt >= 0.25:  # fold in quarter-second samples: proposals come in bursts
            sample = self._count / dt
            alpha = 1.0 - math.exp(-dt / self.tau)
            self.rate += alpha * (sample - self.rate)
            self._since, self._count = now, 0

    def limit(self) -> int:
        """The largest backlog admitted now, in transactions."""
        return int(min(self.hard_cap, max(self.floor, self.rate * self.max_delay)))

    def check(self, pending: int, incoming: int) -> float | None:
        """None to admit ``incoming`` on top of ``pending``; else seconds to wait: the
        time the measured drain needs to bring the backlog under the limit (>= 50 ms).

        A batch is admitted whole while the backlog is under the limit, even if it
        then overshoots (by at most one batch, itself bounded by the body size):
        refusing a batch larger than the room left would refuse a client whose
        batches outgrow the limit forever, however often it came back.
        """
        limit = self.limit()
        if pending < limit and pending + incoming <= self.hard_cap:
            return None
        rate = max(self.rate, self.floor / max(self.max_delay, 1e-3))
        return max(0.05, (pending + incoming - limit) / rate)
