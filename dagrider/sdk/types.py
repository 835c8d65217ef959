"""Plain, immutable values the Python API hands to applications.

They are the API's own types, not the daemon's internal rows, so that the internals can
change without breaking applications; every field is documented where it is declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Blob",
    "Committed",
    "DocumentChange",
    "NetworkInfo",
    "PeerStatus",
    "Provider",
    "SignedRecord",
    "TxState",
]


@dataclass(frozen=True, slots=True)
class Committed:
    """One committed transaction at its position in the total order.

    ``index`` is the same on every correct member; ``round``/``source`` name the DAG
    vertex that carried it, ``wave`` the wave whose leader committed it, and
    ``committed_at`` this node's unix time of the commit.
    """

    index: int
    tx_id: str
    data: bytes
    round: int
    source: int
    wave: int
    committed_at: float


@dataclass(frozen=True, slots=True)
class TxState:
    """Where a transaction is: ``pending`` (waiting to be ordered), ``committed`` (with
    its ``index``, ``round`` and ``wave``) or ``unknown`` to this node."""

    tx_id: str
    state: Literal["pending", "committed", "unknown"]
    index: int | None = None
    round: int | None = None
    wave: int | None = None


@dataclass(frozen=True, slots=True)
class DocumentChange:
    """A signed change applied to a CRDT document, local or received from a peer.

    ``author`` is the hex Ed25519 key that signed it; ``ops`` the number of operations.
    """

    doc: str
    hash: str
    author: str
    ops: int
    local: bool


@dataclass(frozen=True, slots=True)
class Blob:
    """A blob held by this node: its content id (CID, 64 hex digits) and size."""

    cid: str
    size: int


@dataclass(frozen=True, slots=True)
class Provider:
    """A peer that announced it holds a blob: its key and the addresses it advertised."""

    key: bytes
    addresses: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A DHT record: ``value`` published by ``author`` under ``name``.

    Only the author's key can produce it (the signature is checked before the API
    returns it); ``seq`` increases with every put, ``expires`` is unix seconds.
    """

    author: bytes
    name: bytes
    value: bytes
    seq: int
    expires: int


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer as this node sees it.

    ``path`` is ``"direct"``, ``"relayed"`` (through ``relay``) or None without a live
    link; ``rtt`` is the link's keep-alive round-trip time in seconds, None while not
    measured; ``address`` is the remote socket address of the link.
    """

    key: bytes
    connected: bool
    path: Literal["direct", "relayed"] | None
    relay: bytes | None
    rtt: float | None
    address: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """This node's view of its own network position.

    ``reachability``: ``"public"`` when peers confirmed they could dial us back,
    ``"private"`` when they could not, ``"unknown"`` before enough answers (or without
    ``[nat] enabled``). ``nat_type``: ``"endpoint_independent"`` (one public port for
    every peer: hole punching works), ``"endpoint_dependent"`` (symmetric NAT: expect
    relays), or ``"unknown"`` (also without ``[nat] enabled``). ``relays`` are the
    relays holding a reservation for us. ``observed`` are our addresses as peers saw them.
    """

    key: bytes
    listen: tuple[str, int]
    reachability: Literal["public", "private", "unknown"]
    nat_type: str
    observed: tuple[tuple[str, int], ...]
    relays: tuple[bytes, ...]
