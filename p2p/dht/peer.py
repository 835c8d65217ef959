"""The DHT's contact type: a peer's transport key, its Kademlia id, and where to dial it.

A peer is named everywhere in ``p2p`` by its raw 32-byte Ed25519 public key (the key
the TLS link authenticates). Kademlia needs ids spread uniformly over the 256-bit
keyspace and needs them bound to that key, so the id is a hash of the key:

    id = sha256(b"dagrider/dht/id/v1" + key)

Nobody can choose an id without finding a key that hashes to it, and the id of an
authenticated link's peer is known without trusting anything the peer says.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Final

Addr = tuple[str, int]
"""A dialable TCP address: (host, port)."""

KEY_BYTES: Final = 32
ID_BYTES: Final = 32
ID_DOMAIN: Final = b"dagrider/dht/id/v1"


def node_id(key: bytes) -> bytes:
    """The 32-byte Kademlia id of the Ed25519 public ``key`` (see the module docstring)."""
    return hashlib.sha256(ID_DOMAIN + key).digest()


@dataclass(frozen=True)
class PeerInfo:
    """A DHT contact: transport key plus addresses (empty for a client-mode peer).

    Two ``PeerInfo`` with the same key but other addresses are different values; the
    routing table is keyed by ``key`` and keeps the newest addresses it saw.
    """

    key: bytes
    addrs: tuple[Addr, ...] = ()

    def __post_init__(self) -> None:
        if type(self.key) is not bytes or len(self.key) != KEY_BYTES:
            raise ValueError(f"PeerInfo.key must be {KEY_BYTES} bytes")
        if type(self.addrs) is not tuple:
            raise ValueError("PeerInfo.addrs must be a tuple of (host, port)")

    @functools.cached_property
    def id(self) -> bytes:
        """The Kademlia id (``node_id(key)``), computed once."""
        return node_id(self.key)

    @functools.cached_property
    def int_id(self) -> int:
        """``id`` as a big-endian integer, for fast XOR distances."""
        return int.from_bytes(self.id, "big")

    def __repr__(self) -> str:
        return f"PeerInfo({self.key.hex()[:8]}, {list(self.addrs)})"
