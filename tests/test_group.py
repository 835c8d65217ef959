"""The group wrappers: encodings, algebra laws, and clean refusals of bad inputs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from dagrider import group
from dagrider.group import (
    BASE_POINT,
    GroupError,
    Q,
    add,
    base_mult,
    hash_to_point,
    hash_to_scalar,
    is_canonical_scalar,
    is_valid_point,
    mult,
    scalar_add,
    scalar_from_int,
    scalar_mul,
    scalar_negate,
    scalar_reduce,
    scalar_to_int,
    sub,
)

# RFC 8032 base point encoding (y = 4/5, sign bit 0).
ED25519_BASE = bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666")
IDENTITY = (1).to_bytes(32, "little")
# A point of order 2 on the curve (y = -1): on the curve, not in the prime-order group.
ORDER_TWO = ((2**255 - 19) - 1).to_bytes(32, "little")

nonzero_ints = st.integers(min_value=1, max_value=Q - 1)


def test_base_point_is_the_ed25519_generator() -> None:
    assert BASE_POINT == ED25519_BASE
    assert is_valid_point(BASE_POINT)


@given(st.integers(min_value=-(2**300), max_value=2**300))
@settings(max_examples=examples(2))
def test_scalar_int_round_trip_reduces_mod_q(value: int) -> None:
    encoded = scalar_from_int(value)
    assert len(encoded) == 32
    assert scalar_to_int(encoded) == value % Q


def test_scalar_to_int_refuses_non_canonical_and_wrong_length() -> None:
    with pytest.raises(GroupError):
        scalar_to_int(Q.to_bytes(32, "little"))
    with pytest.raises(GroupError):
        scalar_to_int(b"\x01" * 31)
    assert is_canonical_scalar((Q - 1).to_bytes(32, "little"))
    assert not is_canonical_scalar(Q.to_bytes(32, "little"))
    assert not is_canonical_scalar(b"\x00" * 33)


def test_scalar_reduce() -> None:
    wide = (5 * Q + 17).to_bytes(64, "little")
    assert scalar_to_int(scalar_reduce(wide)) == 17
    with pytest.raises(GroupError, match="64 bytes"):
        scalar_reduce(b"\x00" * 32)


@given(nonzero_ints, nonzero_ints)
def test_scalar_ops_match_integer_arithmetic(a: int, b: int) -> None:
    sa, sb = scalar_from_int(a), scalar_from_int(b)
    assert scalar_to_int(scalar_add(sa, sb)) == (a + b) % Q
    assert scalar_to_int(scalar_mul(sa, sb)) == (a * b) % Q
    assert scalar_to_int(scalar_negate(sa)) == (-a) % Q


@given(nonzero_ints, nonzero_ints)
def test_exponent_laws(a: int, b: int) -> None:
    """g^a * g^b = g^(a+b) and (g^a)^b = g^(ab): what the coin's algebra relies on."""
    ga, gb = base_mult(scalar_from_int(a)), base_mult(scalar_from_int(b))
    if (a + b) % Q:
        assert add(ga, gb) == base_mult(scalar_from_int(a + b))
    assert mult(ga, scalar_from_int(b)) == base_mult(scalar_from_int(a * b))
    assert sub(add(ga, gb), gb) == ga


def test_sub_of_equal_points_is_identity() -> None:
    assert sub(BASE_POINT, BASE_POINT) == IDENTITY


def test_hash_to_scalar_is_deterministic_and_framed() -> None:
    one = hash_to_scalar(b"tag", b"ab", b"c")
    assert one == hash_to_scalar(b"tag", b"ab", b"c")
    assert is_canonical_scalar(one)
    assert one != hash_to_scalar(b"tag", b"a", b"bc")
    assert one != hash_to_scalar(b"tag", b"abc")
    assert one != hash_to_scalar(b"tag2", b"ab", b"c")
    with pytest.raises(TypeError):
        hash_to_scalar(b"tag", 5)  # type: ignore[arg-type]


def test_hash_to_point_gives_distinct_valid_points() -> None:
    points = {hash_to_point(b"wave", i.to_bytes(8, "big")) for i in range(20)}
    assert len(points) == 20
    assert all(is_valid_point(p) for p in points)
    assert hash_to_point(b"x") == hash_to_point(b"x")
    assert hash_to_point(b"x", b"") != hash_to_point(b"x")


@pytest.mark.parametrize(
    ("point", "scalar"),
    [
        (IDENTITY, scalar_from_int(3)),
        (ORDER_TWO, scalar_from_int(3)),
        (b"\xff" * 32, scalar_from_int(3)),
        (BASE_POINT, scalar_from_int(0)),
        (BASE_POINT, Q.to_bytes(32, "little")),
        (BASE_POINT[:31], scalar_from_int(3)),
    ],
    ids=["identity", "small-order", "garbage", "zero-scalar", "scalar-q", "short-point"],
)
def test_mult_refuses_with_group_error(point: bytes, scalar: bytes) -> None:
    with pytest.raises(GroupError):
        mult(point, scalar)


def test_base_mult_refuses_zero_and_non_canonical() -> None:
    with pytest.raises(GroupError, match="identity"):
        base_mult(scalar_from_int(0))
    with pytest.raises(GroupError):
        base_mult(b"\xff" * 32)


def test_add_refuses_wrong_length() -> None:
    with pytest.raises(GroupError):
        add(BASE_POINT, b"\x00" * 31)


@pytest.mark.parametrize(
    "data",
    [IDENTITY, ORDER_TWO, b"\x00" * 32, BASE_POINT[:31], BASE_POINT + b"\x00"],
    ids=["identity", "small-order", "zero", "short", "long"],
)
def test_is_valid_point_refuses(data: bytes) -> None:
    assert not is_valid_point(data)


def test_is_valid_point_refuses_non_bytes() -> None:
    assert not is_valid_point(bytearray(BASE_POINT))  # type: ignore[arg-type]


def test_group_error_is_a_value_error() -> None:
    assert issubclass(group.GroupError, ValueError)
