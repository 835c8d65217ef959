"""The XOR metric and bucket arithmetic of ``p2p.dht.keyspace`` and peer ids."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.dht.keyspace import (
    ID_BITS,
    as_int,
    bucket_index,
    closer,
    common_prefix_len,
    distance,
    from_int,
    id_in_bucket,
    sort_by_distance,
    sort_ids,
)
from p2p.dht.peer import PeerInfo, node_id

ids = st.binary(min_size=32, max_size=32)


@given(ids, ids)
def test_distance_is_symmetric_and_zero_only_for_equal(a: bytes, b: bytes) -> None:
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)
    assert distance(a, a) == 0


@given(ids, ids, ids)
def test_triangle_inequality(a: bytes, b: bytes, c: bytes) -> None:
    assert distance(a, c) <= distance(a, b) + distance(b, c)
    # XOR is even an ultrametric-like: d(a,c) = d(a,b) ^ d(b,c)
    assert distance(a, c) == distance(a, b) ^ distance(b, c)


@given(ids, st.integers(min_value=0, max_value=2**256 - 1))
def test_unidirectional(a: bytes, d: int) -> None:
    b = from_int(as_int(a) ^ d)
    assert distance(a, b) == d


@given(ids, ids)
def test_bucket_index_and_prefix(a: bytes, b: bytes) -> None:
    if a == b:
        assert common_prefix_len(a, b) == ID_BITS
        with pytest.raises(ValueError):
            bucket_index(a, b)
        return
    i = bucket_index(a, b)
    assert 2**i <= distance(a, b) < 2 ** (i + 1)
    assert common_prefix_len(a, b) == ID_BITS - 1 - i
    assert bucket_index(b, a) == i


@given(ids, st.integers(min_value=0, max_value=255), st.binary(min_size=32, max_size=32))
def test_id_in_bucket_lands_in_that_bucket(self_id: bytes, index: int, nonce: bytes) -> None:
    target = id_in_bucket(self_id, index, nonce)
    assert bucket_index(self_id, target) == index
    assert id_in_bucket(self_id, index, nonce) == target  # no randomness of its own


def test_id_in_bucket_rejects_bad_index() -> None:
    with pytest.raises(ValueError):
        id_in_bucket(bytes(32), 256, bytes(32))


@given(ids, st.lists(ids, max_size=30))
def test_sort_by_distance(target: bytes, items: list[bytes]) -> None:
    ordered = sort_ids(target, items)
    assert sorted(ordered) == sorted(items)
    for x, y in itertools.pairwise(ordered):
        assert not closer(target, y, x)
    assert sort_by_distance(target, items, lambda i: i) == ordered


def test_as_int_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        as_int(b"short")


def test_peer_id_is_the_documented_hash() -> None:
    key = bytes(range(32))
    assert node_id(key) == hashlib.sha256(b"dagrider/dht/id/v1" + key).digest()
    p = PeerInfo(key, (("127.0.0.1", 1),))
    assert p.id == node_id(key)
    assert p.int_id == int.from_bytes(p.id, "big")
    assert p == PeerInfo(key, (("127.0.0.1", 1),))
    assert p != PeerInfo(key)
    assert "PeerInfo(00010203" in repr(p)


@pytest.mark.parametrize("bad", [b"x" * 31, "x" * 32, None])
def test_peer_info_rejects_bad_keys(bad: object) -> None:
    with pytest.raises(ValueError):
        PeerInfo(bad)  # type: ignore[arg-type]


def test_peer_info_rejects_list_addrs() -> None:
    with pytest.raises(ValueError):
        PeerInfo(bytes(32), [("1.2.3.4", 1)])  # type: ignore[arg-type]
