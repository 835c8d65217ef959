"""Wire types of the consensus: vertices, reliable-broadcast votes, coin shares, catch-up.

All messages are frozen dataclasses; ``dagrider.codec`` turns them into bytes and back
with a strict schema. A vertex's digest is BLAKE2b-256 over its canonical encoding, so
that ECHO and READY can vote on 32 bytes instead of the whole batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgpack

from dagrider.coin import CoinShare

NodeId = int
Digest = bytes
DIGEST_BYTES = 32
_VERTEX_PERSON = b"dagrider-vertex"


@dataclass(frozen=True, order=True)
class VertexRef:
    """A reference to a vertex: (round, source, digest). Ordered by round, then source."""

    round: int
    source: NodeId
    digest: Digest


@dataclass(frozen=True)
class Vertex:
    """One process's proposal for one round: a block of transactions plus DAG edges.

    ``strong_edges`` point at round ``round - 1``; ``weak_edges`` at older rounds that
    the strong edges do not already reach (they make orphaned vertices orderable).
    """

    round: int
    source: NodeId
    block: tuple[bytes, ...]
    strong_edges: tuple[VertexRef, ...]
    weak_edges: tuple[VertexRef, ...]
    digest: Digest = field(init=False, repr=False, compare=False)
    # Bytes of the canonical encoding: what holding this vertex costs, charged to its
    # source by the per-peer budgets (computed with the digest, from the same packing).
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        packed = msgpack.packb(canonical_vertex_body(self), use_bin_type=True)
        digest = hashlib.blake2b(packed, digest_size=DIGEST_BYTES, person=_VERTEX_PERSON)
        object.__setattr__(self, "digest", digest.digest())
        object.__setattr__(self, "size", len(packed))

    @property
    def ref(self) -> VertexRef:
        return VertexRef(self.round, self.source, self.digest)

    def edges(self) -> tuple[VertexRef, ...]:
        return self.strong_edges + self.weak_edges


def canonical_vertex_body(v: Vertex) -> list[object]:
    """The canonical, order-preserving body of a vertex, shared by digest and codec."""
    return [
        v.round,
        v.source,
        list(v.block),
        [[e.round, e.source, e.digest] for e in v.strong_edges],
        [[e.round, e.source, e.digest] for e in v.weak_edges],
    ]


def vertex_digest(v: Vertex) -> Digest:
    packed = msgpack.packb(canonical_vertex_body(v), use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=DIGEST_BYTES, person=_VERTEX_PERSON).digest()


def genesis(n: int) -> tuple[Vertex, ...]:
    """Round 0: one fixed, empty vertex per source, known to everyone without broadcast."""
    return tuple(Vertex(0, source, (), (), ()) for source in range(n))


@dataclass(frozen=True)
class Val:
    """Bracha VAL: the source's vertex. Only counts when it comes from ``vertex.source``."""

    vertex: Vertex


@dataclass(frozen=True)
class Echo:
    """Bracha ECHO for (source, round): a vote on a digest, at most one per voter."""

    round: int
    source: NodeId
    digest: Digest


@dataclass(frozen=True)
class Ready:
    """Bracha READY for (source, round): at most one per voter, ever."""

    round: int
    source: NodeId
    digest: Digest


VoteKey = tuple[int, NodeId, Digest]
"""(round, source, digest) of one ECHO or READY inside a :class:`Votes` message."""


@dataclass(frozen=True)
class Votes:
    """Every ECHO and READY one process cast in one step, in one message per peer.

    Bracha costs O(n^2) votes per instance and n instances per round; sent one per
    frame, the per-frame cost (framing, TLS records, decode, dispatch) dominates at
    n >= 31. A step (one event-loop iteration of the daemon, one slot of the simulator)
    usually casts many votes, so the shell sends them together (see
    :func:`dagrider.rbc.coalesce_votes`). Each entry counts exactly like the lone
    :class:`Echo` or :class:`Ready` it replaces; plain tuples keep decoding cheap.
    """

    echoes: tuple[VoteKey, ...]
    readies: tuple[VoteKey, ...]


@dataclass(frozen=True)
class CoinShareMsg:
    """A process's share of the coin of one wave, with its DLEQ proof."""

    share: CoinShare


@dataclass(frozen=True)
class VertexRequest:
    """Catch-up: ask a peer for the vertex with this (round, source, digest)."""

    round: int
    source: NodeId
    digest: Digest


@dataclass(frozen=True)
class VertexResponse:
    """Catch-up answer; accepted only if its digest matches a delivered or requested one."""

    vertex: Vertex


@dataclass(frozen=True)
class CatchupRequest:
    """Ask a peer to resend what it has from ``round`` on (up to ``rounds`` rounds).

    Served by the daemon from its store for a node that was down longer than the
    in-memory GC window: the peer answers with its own READY votes, the vertices and its
    coin shares, which the lagging node runs through normal reliable broadcast.
    """

    round: int
    rounds: int


Message = (
    Val | Echo | Ready | Votes | CoinShareMsg | VertexRequest | VertexResponse | CatchupRequest
)
