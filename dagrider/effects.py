"""Effects: what the pure core asks its shell to do. The core never performs them.

A shell (the simulator, the daemon) executes them in list order. Ordering matters for
persistence: a vote (ECHO/READY) appears in a ``Broadcast`` effect and the shell writes
it to its store before the bytes leave the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dagrider.messages import Message, NodeId, Vertex, VertexRef

if TYPE_CHECKING:  # ordering imports effects
    from dagrider.ordering import OrderingState


@dataclass(frozen=True)
class Send:
    """Send ``msg`` to one peer."""

    to: NodeId
    msg: Message


@dataclass(frozen=True)
class Broadcast:
    """Send ``msg`` to every other member (the core has already applied it to itself)."""

    msg: Message


@dataclass(frozen=True)
class Delivered:
    """Reliable broadcast delivered this vertex (persist it: it is part of the DAG)."""

    vertex: Vertex


@dataclass(frozen=True)
class Proposed:
    """This process created its vertex for a round (persist before its VAL leaves).

    ``fresh``: its block was just taken from the front of the mempool (the shell marks
    that many pending transactions as proposed); False for a vertex re-proposed from
    the store after a restart, whose transactions left the mempool the first time.
    """

    vertex: Vertex
    fresh: bool = True


@dataclass(frozen=True)
class Requeued:
    """Transactions of our own vertex that can no longer be ordered went back to the
    mempool (persist them as pending again). ``vertex`` is that vertex's digest: with
    garbage collection, a vertex that reached too few peers before its round fell below
    the floor is never ordered (the paper's validity assumes unbounded memory); its
    transactions are, through a later vertex."""

    txs: tuple[bytes, ...]
    vertex: bytes = b""


@dataclass(frozen=True)
class RoundAdvanced:
    """The process moved to ``round`` (its DAG holds 2f+1 vertices of ``round - 1``)."""

    round: int


@dataclass(frozen=True)
class AwaitBatch:
    """The process may propose for ``round`` but waits for a fuller batch.

    The shell calls ``propose_now(round)`` when its batch timer fires. ``idle`` says the
    mempool is empty: the shell waits its (longer) idle interval instead, so an idle
    committee rests rather than spinning empty rounds. When a transaction arrives
    during an idle wait the process emits a second, non-idle ``AwaitBatch`` for the
    same round; whichever timer fires first proposes (``propose_now`` is idempotent).
    """

    round: int
    idle: bool = False


@dataclass(frozen=True)
class LeaderDecided:
    """Outcome of one wave: its leader was committed (directly or recursively) or skipped."""

    wave: int
    leader: VertexRef | None
    committed: bool
    direct: bool


@dataclass(frozen=True)
class Commit:
    """One vertex appended to the total order.

    ``index`` is its position among ordered vertices, ``tx_index`` the global log index of
    its first transaction; both are the same on every correct process.
    """

    index: int
    tx_index: int
    vertex: Vertex
    wave: int
    leader: VertexRef
    # The block packed as a log row keeps it (the ordering packs it once for the log's
    # hash chain; the store writes the same bytes). Empty: not packed (no transactions).
    packed: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True)
class CheckpointReached:
    """The log passed a checkpoint position; ``state`` resumes ordering exactly there.
    The shell signs the checkpoint, persists the state and serves it (see
    :mod:`dagrider.checkpoint`)."""

    state: OrderingState


@dataclass(frozen=True)
class Misbehaviour:
    """A peer sent something a correct peer never sends; the shell may score or log it."""

    peer: NodeId
    reason: str


Effect = (
    Send
    | Broadcast
    | Delivered
    | Proposed
    | Requeued
    | RoundAdvanced
    | AwaitBatch
    | LeaderDecided
    | Commit
    | CheckpointReached
    | Misbehaviour
)
