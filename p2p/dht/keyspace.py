"""The 256-bit XOR metric of Kademlia, on 32-byte ids.

``distance(a, b) = int(a) XOR int(b)`` is a metric (zero only for equal ids, symmetric,
triangle inequality) and unidirectional: for an id ``a`` and a distance ``d`` there is
exactly one ``b`` with ``distance(a, b) == d``, so lookups for one key from anywhere
converge on the same peers.

Buckets: relative to our own id, bucket ``i`` (0..255) holds the ids at distance
``[2**i, 2**(i+1))``, i.e. sharing exactly ``255 - i`` leading bits with us. Bucket 255
is half of the keyspace, bucket 0 is one id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeVar

ID_BYTES: Final = 32
ID_BITS: Final = 256

T = TypeVar("T")


def as_int(id_: bytes) -> int:
    """A 32-byte id as a big-endian integer; ``ValueError`` for any other length."""
    if len(id_) != ID_BYTES:
        raise ValueError(f"ids are {ID_BYTES} bytes, got {len(id_)}")
    return int.from_bytes(id_, "big")


def from_int(value: int) -> bytes:
    """The 32-byte id of an integer in ``0 .. 2**256 - 1``."""
    return value.to_bytes(ID_BYTES, "big")


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two ids, as an integer in ``0 .. 2**256 - 1``."""
    return as_int(a) ^ as_int(b)


def common_prefix_len(a: bytes, b: bytes) -> int:
    """Number of leading bits ``a`` and ``b`` share (256 when equal)."""
    return ID_BITS - distance(a, b).bit_length()


def bucket_index(self_id: bytes, other: bytes) -> int:
    """The bucket (0..255) of ``other`` in ``self_id``'s table; ``ValueError`` if equal."""
    d = distance(self_id, other)
    if d == 0:
        raise ValueError("an id has no bucket in its own table")
    return d.bit_length() - 1


def id_in_bucket(self_id: bytes, index: int, nonce: bytes) -> bytes:
    """An id in bucket ``index`` of ``self_id``'s table, chosen by the caller's ``nonce``.

    The top bits come from the bucket, the low ``index`` bits from ``nonce`` (at least
    32 bytes): a refresh target that involves no randomness of our own."""
    if not 0 <= index < ID_BITS:
        raise ValueError(f"bucket index {index} not in 0..{ID_BITS - 1}")
    low = as_int(nonce[:ID_BYTES]) & ((1 << index) - 1)
    return from_int(as_int(self_id) ^ ((1 << index) | low))


def closer(target: bytes, a: bytes, b: bytes) -> bool:
    """Whether ``a`` is strictly closer to ``target`` than ``b``."""
    t = as_int(target)
    return (as_int(a) ^ t) < (as_int(b) ^ t)


def sort_by_distance(target: bytes, items: Iterable[T], id_of: Callable[[T], bytes]) -> list[T]:
    """``items`` sorted by the XOR distance of ``id_of(item)`` to ``target``, nearest first
    (ties, i.e. equal ids, keep their input order)."""
    t = as_int(target)
    return sorted(items, key=lambda item: as_int(id_of(item)) ^ t)


def sort_ids(target: bytes, ids: Iterable[bytes]) -> list[bytes]:
    """Ids sorted by distance to ``target``."""
    return sort_by_distance(target, ids, lambda i: i)
