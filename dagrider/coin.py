"""Cachin–Kursawe–Shoup threshold common coin (see PROTOCOL.md, "The common coin").

DAG-Rider elects each wave's leader only after the wave is over, from a coin that no
coalition of f processes can predict or bias. The coin of wave ``w`` is ``H(h_w^x)``
for a secret ``x`` shared among the n processes with a degree-f polynomial:

* process ``i`` (coin index ``node_id + 1``, since index 0 is the secret itself)
  releases ``s_i = h_w^{x_i}`` with a Chaum–Pedersen proof that it used the same
  exponent as its public verification key ``y_i = g^{x_i}``;
* any ``t = f + 1`` verified shares interpolate ``h_w^x`` in the exponent, and every
  such set gives the same value, so all correct processes agree on the leader.

This module is pure: no clock, no sockets, no randomness. Dealing takes a
``random_bytes`` callable, and the proof nonce is derived from the secret share and
the wave (RFC 6979 style), so the same share is produced after a restart.

Results of share verification and interpolation are memoised in bounded module-level
caches. They are pure functions of their arguments, so this changes no behaviour; it
only avoids repeating the same curve operations when many simulated nodes in one
process check the same shares.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from dagrider.errors import InvalidShare
from dagrider.group import (
    BASE_POINT,
    POINT_BYTES,
    SCALAR_BYTES,
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
    scalar_reduce,
    scalar_to_int,
    sub,
)

_TAG_WAVE = b"dagrider/coin/wave-base/v1"
_TAG_NONCE = b"dagrider/coin/nonce/v1"
_TAG_CHALLENGE = b"dagrider/coin/dleq/v1"
_VALUE_PERSON = b"dagrider-coin/1"
_MAX_WAVE = 2**64 - 1


@dataclass(frozen=True)
class CoinPublicKey:
    """The published side of a dealing: one verification key per node and ``t``.

    ``verification_keys[node_id]`` is ``y_i = g^{x_i}`` for coin index ``node_id + 1``.
    Construction checks every key is a valid group point so that verification later
    can trust them.
    """

    verification_keys: tuple[bytes, ...]
    threshold: int

    def __post_init__(self) -> None:
        n = len(self.verification_keys)
        if not 1 <= self.threshold <= n:
            raise ValueError(f"CoinPublicKey.threshold must be in 1..{n}, got {self.threshold}")
        for node_id, key in enumerate(self.verification_keys):
            if not is_valid_point(key):
                raise ValueError(f"CoinPublicKey.verification_keys[{node_id}] is not a valid point")

    @property
    def n(self) -> int:
        """Number of share holders."""
        return len(self.verification_keys)


@dataclass(frozen=True)
class CoinSecretShare:
    """One node's secret exponent ``x_i``; never leaves the node's key file."""

    node_id: int
    scalar: bytes

    def __repr__(self) -> str:
        """Keep the secret out of logs and tracebacks."""
        return f"CoinSecretShare(node_id={self.node_id}, scalar=<redacted>)"


@dataclass(frozen=True)
class CoinShare:
    """A released coin share with its proof; also the body of the wire message.

    ``challenge`` and ``response`` are the Chaum–Pedersen proof ``(c, z)``; the
    commitments ``a`` and ``b`` are recomputed by the verifier, which keeps the message
    at three 32-byte fields.
    """

    wave: int
    signer: int
    share: bytes
    challenge: bytes
    response: bytes


# --------------------------------------------------------------------------- dealing


def deal(
    n: int, threshold: int, random_bytes: Callable[[int], bytes]
) -> tuple[CoinPublicKey, list[CoinSecretShare]]:
    """Trusted-dealer setup: share a random secret with a degree ``threshold-1`` polynomial.

    Coefficients come from 64 random bytes each, reduced mod Q (negligible bias). A
    dealing in which the secret or any share is zero is drawn again: libsodium cannot
    represent the identity those would produce.
    """
    if n < 1:
        raise ValueError(f"deal: n must be >= 1, got {n}")
    if not 1 <= threshold <= n:
        raise ValueError(f"deal: threshold must be in 1..{n}, got {threshold}")
    while True:
        coefficients = [_random_scalar_int(random_bytes) for _ in range(threshold)]
        xs = [_evaluate(coefficients, node_id + 1) for node_id in range(n)]
        if coefficients[0] != 0 and all(xs):
            break
    secrets = [CoinSecretShare(i, scalar_from_int(x)) for i, x in enumerate(xs)]
    keys = tuple(base_mult(secret.scalar) for secret in secrets)
    return CoinPublicKey(keys, threshold), secrets


def _random_scalar_int(random_bytes: Callable[[int], bytes]) -> int:
    wide = random_bytes(64)
    if len(wide) != 64:
        raise ValueError(f"random_bytes(64) returned {len(wide)} bytes")
    return scalar_to_int(scalar_reduce(wide))


def _evaluate(coefficients: list[int], x: int) -> int:
    """Horner evaluation of the polynomial at ``x`` over Z_q."""
    acc = 0
    for coefficient in reversed(coefficients):
        acc = (acc * x + coefficient) % Q
    return acc


# --------------------------------------------------------------------------- shares


def wave_base(domain: bytes, wave: int) -> bytes:
    """``h_w``: the wave's group element, bound to the committee through ``domain``.

    Binding the committee id keeps two committees (or a test and a production run)
    from ever sharing coin values even if keys were reused.
    """
    _check_wave(wave)
    return _wave_base(bytes(domain), wave)


@lru_cache(maxsize=256)
def _wave_base(domain: bytes, wave: int) -> bytes:
    return hash_to_point(_TAG_WAVE, domain, wave.to_bytes(8, "big"))


def make_share(secret: CoinSecretShare, public_key_y: bytes, wave: int, domain: bytes) -> CoinShare:
    """Release ``s_i = h_w^{x_i}`` for ``wave`` with its Chaum–Pedersen proof.

    The nonce ``k`` is a hash of the secret share, the domain and the wave: it is
    unpredictable to others yet the same on every call, so a restarted node re-sends an
    identical share instead of a second proof with a fresh nonce.
    """
    if base_mult(secret.scalar) != public_key_y:
        raise ValueError(f"make_share: secret of node {secret.node_id} does not match its key")
    h = wave_base(domain, wave)
    wave_bytes = wave.to_bytes(8, "big")
    k = hash_to_scalar(_TAG_NONCE, bytes(domain), secret.scalar, wave_bytes)
    share = mult(h, secret.scalar)
    a = base_mult(k)
    b = mult(h, k)
    c = _challenge(h, public_key_y, share, a, b)
    z = scalar_add(k, scalar_mul(c, secret.scalar))
    return CoinShare(wave=wave, signer=secret.node_id, share=share, challenge=c, response=z)


def _challenge(h: bytes, y: bytes, share: bytes, a: bytes, b: bytes) -> bytes:
    return hash_to_scalar(_TAG_CHALLENGE, BASE_POINT, h, y, share, a, b)


def verify_share(pub: CoinPublicKey, share: CoinShare, domain: bytes) -> None:
    """Raise :class:`InvalidShare` naming the first problem, or return if the share is good."""
    reason = _structural_problem(pub, share)
    if reason is None:
        h = wave_base(domain, share.wave)
        reason = _proof_problem(pub.verification_keys[share.signer], h, share)
    if reason is not None:
        raise InvalidShare(
            f"coin share of signer {share.signer!r} for wave {share.wave!r}: {reason}"
        )


def _structural_problem(pub: CoinPublicKey, share: CoinShare) -> str | None:
    """Cheap checks (types, index range, lengths, scalar encodings) before any curve work."""
    if not _is_plain_int(share.wave) or not 0 <= share.wave <= _MAX_WAVE:
        return f"bad wave {share.wave!r}"
    if not _is_plain_int(share.signer) or not 0 <= share.signer < pub.n:
        return f"bad signer index {share.signer!r} (n={pub.n})"
    for name, value, size in (
        ("share", share.share, POINT_BYTES),
        ("challenge", share.challenge, SCALAR_BYTES),
        ("response", share.response, SCALAR_BYTES),
    ):
        if not isinstance(value, bytes) or len(value) != size:
            length = len(value) if isinstance(value, bytes) else type(value).__name__
            return f"wrong length: {name} must be {size} bytes, got {length}"
    if not is_canonical_scalar(share.challenge):
        return "challenge is not a reduced scalar"
    if not is_canonical_scalar(share.response):
        return "response is not a reduced scalar"
    return None


def _proof_problem(y: bytes, h: bytes, share: CoinShare) -> str | None:
    return _proof_problem_cached(y, h, share.share, share.challenge, share.response)


@lru_cache(maxsize=8192)
def _proof_problem_cached(y: bytes, h: bytes, s: bytes, c: bytes, z: bytes) -> str | None:
    """Check the share point and the DLEQ proof; ``None`` means valid.

    Recomputes ``a = g^z / y^c`` and ``b = h^z / s^c`` and accepts iff the challenge
    hashes back to ``c``; that is the same equation as ``g^z = a*y^c, h^z = b*s^c``.
    """
    if not is_valid_point(s):
        return "share is not a valid group point"
    try:
        a = sub(base_mult(z), mult(y, c))
        b = sub(mult(h, z), mult(s, c))
    except GroupError:
        # A zero response or challenge: an honest prover produces one with probability
        # about 2^-252, so refusing it costs nothing and keeps the identity out.
        return "proof mismatch (degenerate challenge or response)"
    if _challenge(h, y, s, a, b) != c:
        return "proof mismatch"
    return None


# --------------------------------------------------------------------------- combining


def combine(pub: CoinPublicKey, shares: Sequence[CoinShare], domain: bytes) -> bytes:
    """Verify and interpolate the first ``threshold`` distinct signers' shares of one wave.

    Returns the 32-byte coin value. Raises ``ValueError`` for too few distinct signers
    or mixed waves, :class:`InvalidShare` if a chosen share does not verify (it does not
    go looking for replacements: :class:`WaveCoin` is the tolerant collector).
    """
    if not shares:
        raise ValueError("combine: no shares")
    wave = shares[0].wave
    chosen: dict[int, CoinShare] = {}
    for share in shares:
        if share.wave != wave:
            raise ValueError(f"combine: shares of waves {wave!r} and {share.wave!r} mixed")
        if len(chosen) < pub.threshold and share.signer not in chosen:
            chosen[share.signer] = share
    if len(chosen) < pub.threshold:
        raise ValueError(
            f"combine: need {pub.threshold} shares from distinct signers, got {len(chosen)}"
        )
    for share in chosen.values():
        verify_share(pub, share, domain)
    return _coin_value({signer: share.share for signer, share in chosen.items()})


def leader_of(coin_value: bytes, n: int) -> int:
    """Map a coin value to a 0-based node id; the bias of a 256-bit value mod n is negligible."""
    if n < 1:
        raise ValueError(f"leader_of: n must be >= 1, got {n}")
    if len(coin_value) != 32:
        raise ValueError(f"leader_of: coin value must be 32 bytes, got {len(coin_value)}")
    return int.from_bytes(coin_value, "big") % n


def _coin_value(points_by_signer: dict[int, bytes]) -> bytes:
    signers = tuple(sorted(points_by_signer))
    return _coin_value_cached(tuple((i, points_by_signer[i]) for i in signers))


@lru_cache(maxsize=1024)
def _coin_value_cached(indexed_points: tuple[tuple[int, bytes], ...]) -> bytes:
    """``H(prod s_i^lambda_i)``: Lagrange interpolation at 0, in the exponent."""
    coefficients = _lagrange_at_zero(tuple(signer + 1 for signer, _ in indexed_points))
    acc: bytes | None = None
    for (_, point), coefficient in zip(indexed_points, coefficients, strict=True):
        term = mult(point, coefficient)
        acc = term if acc is None else add(acc, term)
    assert acc is not None
    return hashlib.blake2b(acc, digest_size=32, person=_VALUE_PERSON).digest()


@lru_cache(maxsize=1024)
def _lagrange_at_zero(indices: tuple[int, ...]) -> tuple[bytes, ...]:
    """``lambda_i = prod_{j != i} j / (j - i) mod Q`` for the sorted coin indices."""
    out = []
    for i in indices:
        numerator, denominator = 1, 1
        for j in indices:
            if j != i:
                numerator = numerator * j % Q
                denominator = denominator * (j - i) % Q
        out.append(scalar_from_int(numerator * pow(denominator, -1, Q)))
    return tuple(out)


# --------------------------------------------------------------------------- collector


class WaveCoin:
    """Collects shares for one wave; verifies lazily: keeps unverified shares and only
    verifies when at least `threshold` are pending, stopping once `threshold` verified
    ones exist (so a node does about f+1 verifications per wave, not n). Invalid shares
    are dropped and reported, never counted. A second share from the same signer is
    ignored.

    "Pending" counts verified plus unverified shares: verification starts as soon as
    they could reach the threshold, and each invalid share found costs exactly one
    extra verification. Cheap structural checks run at once on arrival. The shell must
    only pass shares whose ``signer`` is the authenticated sender, otherwise a forger
    could occupy an honest signer's slot.
    """

    def __init__(self, pub: CoinPublicKey, wave: int, domain: bytes) -> None:
        self._pub = pub
        self._wave = wave
        self._h = wave_base(domain, wave)
        self._seen: set[int] = set()
        self._pending: deque[CoinShare] = deque()
        self._verified: dict[int, bytes] = {}
        self._verifications = 0
        self._value: bytes | None = None

    @property
    def wave(self) -> int:
        """The wave this collector serves."""
        return self._wave

    @property
    def value(self) -> bytes | None:
        """The coin value once ``threshold`` shares verified, else ``None``."""
        return self._value

    @property
    def verifications(self) -> int:
        """Proof verifications performed so far; exposed for metrics and tests."""
        return self._verifications

    def add(self, share: CoinShare) -> list[tuple[int, str]]:
        """Offer one share; returns ``(signer, reason)`` for shares found invalid now."""
        if self._value is not None:
            return []
        if share.wave != self._wave:
            return [(share.signer, f"share is for wave {share.wave!r}, not {self._wave}")]
        reason = _structural_problem(self._pub, share)
        if reason is not None:
            if _is_plain_int(share.signer) and 0 <= share.signer < self._pub.n:
                self._seen.add(share.signer)
            return [(share.signer, reason)]
        if share.signer in self._seen:
            return []
        self._seen.add(share.signer)
        self._pending.append(share)
        return self._progress()

    def _progress(self) -> list[tuple[int, str]]:
        threshold = self._pub.threshold
        invalid: list[tuple[int, str]] = []
        while (
            len(self._verified) < threshold
            and len(self._verified) + len(self._pending) >= threshold
        ):
            share = self._pending.popleft()
            self._verifications += 1
            y = self._pub.verification_keys[share.signer]
            reason = _proof_problem(y, self._h, share)
            if reason is None:
                self._verified[share.signer] = share.share
            else:
                invalid.append((share.signer, reason))
        if len(self._verified) >= threshold:
            self._value = _coin_value(self._verified)
            self._pending.clear()
        return invalid


def _check_wave(wave: int) -> None:
    if not _is_plain_int(wave) or not 0 <= wave <= _MAX_WAVE:
        raise ValueError(f"wave must be an int in 0..2^64-1, got {wave!r}")


def _is_plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
