"""Typed wrappers over libsodium's Ed25519 prime-order group.

The threshold coin needs a group of prime order ``q`` in which discrete logarithms are
hard. libsodium already implements the Ed25519 prime-order subgroup in constant time;
this module only gives its byte-level API names, types and one error type, so that the
coin never handles raw ``nacl`` exceptions and never does curve arithmetic itself.

Encodings: a *scalar* is 32 bytes, little-endian, reduced mod ``Q``; a *point* is the
32-byte Ed25519 encoding. libsodium refuses to multiply invalid or small-order points
and refuses results equal to the identity (which a zero scalar always gives); those
refusals surface here as :class:`GroupError`.
"""

from __future__ import annotations

import hashlib
from typing import TypeAlias

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_errors

from dagrider.errors import DagriderError

Scalar: TypeAlias = bytes
Point: TypeAlias = bytes

Q = 2**252 + 27742317777372353535851937790883648493
"""Order of the prime-order subgroup (often called ``L`` in Ed25519 papers)."""

SCALAR_BYTES = 32
POINT_BYTES = 32

_H2S_PERSON = b"dagrider-h2s/1"
_H2P_PERSON = b"dagrider-h2p/1"
_MAX_H2P_ATTEMPTS = 256


class GroupError(DagriderError, ValueError):
    """A group operation got a malformed input or would produce the identity.

    It is a ``ValueError`` too, so callers that only know "bad value" still catch it.
    """


def scalar_from_int(value: int) -> Scalar:
    """Encode ``value mod Q``; negative values wrap, as field arithmetic expects."""
    return (value % Q).to_bytes(SCALAR_BYTES, "little")


def scalar_to_int(scalar: Scalar) -> int:
    """Decode a canonical scalar; refuses wrong lengths and values >= Q."""
    _require_scalar(scalar, "scalar")
    return int.from_bytes(scalar, "little")


def is_canonical_scalar(data: bytes) -> bool:
    """True for exactly the 32-byte encodings of 0..Q-1.

    Proof verifiers use it to refuse non-reduced challenges and responses, which would
    otherwise give a second encoding of the same proof.
    """
    return len(data) == SCALAR_BYTES and int.from_bytes(data, "little") < Q


def scalar_reduce(wide: bytes) -> Scalar:
    """Reduce a 64-byte little-endian integer mod Q.

    Reducing 512 uniform bits gives a scalar whose bias is about 2^-259: this is how
    hashes and random bytes become scalars.
    """
    if len(wide) != 64:
        raise GroupError(f"scalar_reduce: expected 64 bytes, got {len(wide)}")
    result: bytes = _sodium.crypto_core_ed25519_scalar_reduce(wide)
    return result


def scalar_add(a: Scalar, b: Scalar) -> Scalar:
    """``a + b mod Q``."""
    _require_scalar(a, "a")
    _require_scalar(b, "b")
    result: bytes = _sodium.crypto_core_ed25519_scalar_add(a, b)
    return result


def scalar_mul(a: Scalar, b: Scalar) -> Scalar:
    """``a * b mod Q``."""
    _require_scalar(a, "a")
    _require_scalar(b, "b")
    result: bytes = _sodium.crypto_core_ed25519_scalar_mul(a, b)
    return result


def scalar_negate(a: Scalar) -> Scalar:
    """``-a mod Q``: lets verifiers subtract in the exponent with one multiplication."""
    _require_scalar(a, "a")
    result: bytes = _sodium.crypto_core_ed25519_scalar_negate(a)
    return result


def hash_to_scalar(*parts: bytes) -> Scalar:
    """Hash byte strings to a uniform scalar (BLAKE2b-512, then reduce mod Q).

    Every part is length-prefixed, so ``(b"ab", b"c")`` and ``(b"a", b"bc")`` never
    collide, and the BLAKE2b personalisation keeps these hashes apart from every other
    BLAKE2b use in the project. Callers put their own purpose tag in the first part.
    """
    digest = hashlib.blake2b(_frame(parts), digest_size=64, person=_H2S_PERSON).digest()
    return scalar_reduce(digest)


def hash_to_point(*parts: bytes) -> Point:
    """Hash byte strings to a point of the prime-order group whose log nobody knows.

    BLAKE2b-256 feeds libsodium's Elligator 2 map (``from_uniform``), which clears the
    cofactor. If the result is not a valid point (the identity, with negligible
    probability) a counter is appended and the hash is retried, so the function is
    total and still deterministic.
    """
    framed = _frame(parts)
    for counter in range(_MAX_H2P_ATTEMPTS):
        data = framed + counter.to_bytes(1, "big")
        uniform = hashlib.blake2b(data, digest_size=32, person=_H2P_PERSON).digest()
        point: bytes = _sodium.crypto_core_ed25519_from_uniform(uniform)
        if is_valid_point(point):
            return point
    raise GroupError("hash_to_point: no valid point after 256 attempts")  # pragma: no cover


def base_mult(scalar: Scalar) -> Point:
    """``g^scalar`` for the standard Ed25519 base point ``g``.

    Raises :class:`GroupError` for the zero scalar, whose result (the identity) libsodium
    will not return.
    """
    _require_scalar(scalar, "scalar")
    try:
        result: bytes = _sodium.crypto_scalarmult_ed25519_base_noclamp(scalar)
    except _nacl_errors.CryptoError as exc:
        raise GroupError("base_mult: the result is the identity (zero scalar)") from exc
    return result


def mult(point: Point, scalar: Scalar) -> Point:
    """``point^scalar`` without clamping, so that the exponent is exactly ``scalar``.

    Raises :class:`GroupError` when ``point`` is not a valid prime-order point (libsodium
    checks that, which is why shares received from peers can be fed here) or when the
    result is the identity.
    """
    _require_point_length(point, "point")
    _require_scalar(scalar, "scalar")
    try:
        result: bytes = _sodium.crypto_scalarmult_ed25519_noclamp(scalar, point)
    except _nacl_errors.CryptoError as exc:
        raise GroupError(
            "mult: point is not a valid prime-order point or the result is the identity"
        ) from exc
    return result


def add(p: Point, q: Point) -> Point:
    """Group operation ``p * q`` (written additively by libsodium).

    libsodium only checks that the inputs decode to curve points, so callers pass
    points they validated or computed themselves. The identity is a legal result.
    """
    _require_point_length(p, "p")
    _require_point_length(q, "q")
    try:
        result: bytes = _sodium.crypto_core_ed25519_add(p, q)
    except _nacl_errors.CryptoError as exc:
        raise GroupError("add: an input does not decode to a curve point") from exc
    return result


def sub(p: Point, q: Point) -> Point:
    """``p * q^-1``; same input rules as :func:`add`."""
    _require_point_length(p, "p")
    _require_point_length(q, "q")
    try:
        result: bytes = _sodium.crypto_core_ed25519_sub(p, q)
    except _nacl_errors.CryptoError as exc:
        raise GroupError("sub: an input does not decode to a curve point") from exc
    return result


def is_valid_point(data: bytes) -> bool:
    """True iff ``data`` encodes a canonical point of the prime-order subgroup.

    Small-order points, the identity included, are refused: a share equal to one of
    them would leak nothing useful yet break the exponent algebra.
    """
    if not isinstance(data, bytes) or len(data) != POINT_BYTES:
        return False
    return bool(_sodium.crypto_core_ed25519_is_valid_point(data))


def _frame(parts: tuple[bytes, ...]) -> bytes:
    """Length-prefix each part so that the concatenation is injective."""
    out = bytearray()
    for part in parts:
        if not isinstance(part, bytes | bytearray):
            raise TypeError(f"hash parts must be bytes, got {type(part).__name__}")
        out += len(part).to_bytes(8, "big")
        out += part
    return bytes(out)


def _require_scalar(scalar: bytes, name: str) -> None:
    if not isinstance(scalar, bytes) or not is_canonical_scalar(scalar):
        raise GroupError(f"{name}: expected a canonical 32-byte scalar (< Q)")


def _require_point_length(point: bytes, name: str) -> None:
    if not isinstance(point, bytes) or len(point) != POINT_BYTES:
        raise GroupError(f"{name}: expected a 32-byte point encoding")


BASE_POINT: Point = base_mult(scalar_from_int(1))
"""The generator ``g``, hashed into Chaum–Pedersen challenges."""
