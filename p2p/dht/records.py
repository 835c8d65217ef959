"""Signed DHT records: author-signed values with sequence numbers and expiry, and
provider records ("this peer holds content X").

A ``Record`` is stored under ``record_key(author, name)``, a hash of the author's key and
the name, so only the holder of the author's private key can write under that key: a
record is valid only with the author's Ed25519 signature over a domain-separated,
fixed-layout encoding of all its fields. A higher ``seq`` replaces a lower one; an
equal ``seq`` with a different value is an equivocation ("conflict"). ``expires`` is
absolute unix seconds, bounded by a maximum TTL so nobody pins a record forever.

A ``ProviderRecord`` is signed by the *provider* (the peer that holds the content), so a
node cannot announce somebody else as provider, nor rewrite a provider's addresses.

Every check fails with a :class:`RecordError` whose ``reason`` is one of the stable
codes below; peers see that code in ``PutResult.reason``. Signatures are made and
checked by libsodium (PyNaCl), never here.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Final, Protocol

from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import SigningKey, VerifyKey

from p2p.dht.peer import KEY_BYTES, PeerInfo
from p2p.errors import P2PError

MAX_NAME: Final = 64
MAX_VALUE: Final = 16 * 1024
SIGNATURE_BYTES: Final = 64
U64: Final = 2**64 - 1
MAX_RECORD_TTL: Final = 7 * 24 * 3600
"""Default longest lifetime of a record (seconds from now); the author re-puts to extend."""
MAX_PROVIDER_TTL: Final = 48 * 3600
"""Default longest lifetime of a provider record; providers re-announce well before."""
CLOCK_SKEW: Final = 300
"""Seconds of clock difference tolerated when judging ``too-far-future``."""
MAX_ADDRS: Final = 8
MAX_HOST_CHARS: Final = 45

RECORD_DOMAIN: Final = b"dagrider/dht/record/v1\x00"
PROVIDER_DOMAIN: Final = b"dagrider/dht/provider/v1\x00"
RECORD_KEY_DOMAIN: Final = b"dagrider/dht/record-key/v1\x00"

# Stable reason codes (PutResult.reason, RecordError.reason, store answers).
MALFORMED: Final = "malformed"
OVERSIZE: Final = "oversize"
BAD_SIGNATURE: Final = "bad-signature"
EXPIRED: Final = "expired"
STALE_SEQ: Final = "stale-seq"
CONFLICT: Final = "conflict"
WRONG_KEY: Final = "wrong-key"
TOO_FAR_FUTURE: Final = "too-far-future"
FULL: Final = "full"
REASONS: Final = frozenset(
    {MALFORMED, OVERSIZE, BAD_SIGNATURE, EXPIRED, STALE_SEQ, CONFLICT, WRONG_KEY}
    | {TOO_FAR_FUTURE, FULL}
)


class RecordError(P2PError, ValueError):
    """A record or provider record failed a check; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Signer(Protocol):
    """Whatever holds a private Ed25519 key (``p2p.identity.Identity`` is one)."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class KeySigner:
    """An Ed25519 signer from a 32-byte seed (libsodium via PyNaCl): tests and simulator."""

    def __init__(self, seed: bytes) -> None:
        self._key = SigningKey(seed)
        self._public = bytes(self._key.verify_key)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, NaclValueError, TypeError, ValueError):
        return False
    return True


def record_key(author: bytes, name: bytes) -> bytes:
    """The DHT key of ``author``'s record ``name``: ``sha256(domain + author + name)``
    (the author key has a fixed length, so the concatenation is unambiguous)."""
    return hashlib.sha256(RECORD_KEY_DOMAIN + author + name).digest()


@dataclass(frozen=True)
class Record:
    """A value published by ``author`` under ``name``; build with :func:`sign_record`."""

    author: bytes
    name: bytes
    value: bytes
    seq: int
    expires: int
    signature: bytes

    @functools.cached_property
    def key(self) -> bytes:
        """The DHT key this record lives under (``record_key(author, name)``)."""
        return record_key(self.author, self.name)

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers (see :func:`record_signing_bytes`)."""
        return record_signing_bytes(self.author, self.name, self.value, self.seq, self.expires)

    def __repr__(self) -> str:
        return (
            f"Record({self.author.hex()[:8]}/{self.name[:16]!r} seq={self.seq} "
            f"expires={self.expires} value={len(self.value)}B)"
        )


def record_signing_bytes(author: bytes, name: bytes, value: bytes, seq: int, expires: int) -> bytes:
    """Domain, author (32), name (u8 length + bytes), value (u32 length + bytes), seq (u64),
    expires (u64): a fixed layout, so one record has exactly one signed encoding."""
    return b"".join(
        (
            RECORD_DOMAIN,
            author,
            struct.pack(">B", len(name)),
            name,
            struct.pack(">I", len(value)),
            value,
            struct.pack(">QQ", seq, expires),
        )
    )


def _check_record_shape(record: Record) -> None:
    if type(record.author) is not bytes or len(record.author) != KEY_BYTES:
        raise RecordError(MALFORMED, f"author must be {KEY_BYTES} bytes")
    if type(record.name) is not bytes or type(record.value) is not bytes:
        raise RecordError(MALFORMED, "name and value must be bytes")
    if len(record.name) > MAX_NAME:
        raise RecordError(OVERSIZE, f"name of {len(record.name)} bytes exceeds {MAX_NAME}")
    if len(record.value) > MAX_VALUE:
        raise RecordError(OVERSIZE, f"value of {len(record.value)} bytes exceeds {MAX_VALUE}")
    for field in ("seq", "expires"):
        v = getattr(record, field)
        if type(v) is not int or not 0 <= v <= U64:
            raise RecordError(MALFORMED, f"{field} must be an integer in 0..2**64-1")
    if type(record.signature) is not bytes or len(record.signature) != SIGNATURE_BYTES:
        raise RecordError(MALFORMED, f"signature must be {SIGNATURE_BYTES} bytes")


def _check_expiry(expires: int, now: float, max_ttl: float) -> None:
    if expires <= now:
        raise RecordError(EXPIRED, f"expired at {expires}, now {now:.0f}")
    if expires > now + max_ttl + CLOCK_SKEW:
        raise RecordError(TOO_FAR_FUTURE, f"expires {expires - now:.0f}s from now > {max_ttl}s")


def validate_record(
    record: Record, now: float, *, key: bytes | None = None, max_ttl: float = MAX_RECORD_TTL
) -> None:
    """Raise :class:`RecordError` unless ``record`` is well formed, lives under ``key``
    (when given), is unexpired, expires within ``max_ttl`` and is signed by its author.

    Checks run cheapest first; the signature is checked last (it costs ~50 µs)."""
    if not isinstance(record, Record):
        raise RecordError(MALFORMED, f"expected a Record, got {type(record).__name__}")
    _check_record_shape(record)
    if key is not None and record.key != key:
        raise RecordError(WRONG_KEY, "record does not belong under the requested key")
    _check_expiry(record.expires, now, max_ttl)
    if not verify_signature(record.author, record.signed_bytes(), record.signature):
        raise RecordError(BAD_SIGNATURE, f"not signed by author {record.author.hex()[:8]}")


def sign_record(signer: Signer, name: bytes, value: bytes, seq: int, expires: int) -> Record:
    """A record of ``signer``'s, signed; ``RecordError`` (oversize/malformed) on bad fields."""
    unsigned = Record(signer.public_key, name, value, seq, expires, bytes(SIGNATURE_BYTES))
    _check_record_shape(unsigned)
    signature = signer.sign(unsigned.signed_bytes())
    return Record(signer.public_key, name, value, seq, expires, signature)


def supersedes(new: Record, old: Record) -> bool:
    """Whether ``new`` should replace ``old`` (same key): higher seq wins; at equal seq
    (an author equivocating or re-signing) the later expiry, then the larger signature,
    so that every node picks the same one."""
    return (new.seq, new.expires, new.signature) > (old.seq, old.expires, old.signature)


def check_replace(new: Record, stored: Record | None) -> None:
    """Raise ``stale-seq`` if ``new`` is older than ``stored``, ``conflict`` if it has the
    same seq but another value. Equal seq and value (a republish, maybe with a later
    expiry) passes."""
    if stored is None:
        return
    if new.seq < stored.seq:
        raise RecordError(STALE_SEQ, f"seq {new.seq} older than stored {stored.seq}")
    if new.seq == stored.seq and new.value != stored.value:
        raise RecordError(CONFLICT, f"seq {new.seq} already stored with another value")


# -- provider records --------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderRecord:
    """``provider`` holds the content ``key`` until ``expires``; signed by the provider."""

    key: bytes
    provider: PeerInfo
    expires: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The exact bytes the provider's signature covers."""
        return provider_signing_bytes(self.key, self.provider, self.expires)

    def __repr__(self) -> str:
        return f"ProviderRecord({self.key.hex()[:8]} by {self.provider!r} expires={self.expires})"


def provider_signing_bytes(key: bytes, provider: PeerInfo, expires: int) -> bytes:
    """Domain, content key (32), provider key (32), addresses (u8 count; each u8 host
    length, UTF-8 host, u16 port), expires (u64)."""
    parts = [PROVIDER_DOMAIN, key, provider.key, struct.pack(">B", len(provider.addrs))]
    for host, port in provider.addrs:
        raw = host.encode()
        parts += [struct.pack(">B", len(raw)), raw, struct.pack(">H", port)]
    parts.append(struct.pack(">Q", expires))
    return b"".join(parts)


def _check_provider_shape(rec: ProviderRecord) -> None:
    if type(rec.key) is not bytes or len(rec.key) != KEY_BYTES:
        raise RecordError(MALFORMED, f"content key must be {KEY_BYTES} bytes")
    if not isinstance(rec.provider, PeerInfo):
        raise RecordError(MALFORMED, "provider must be a PeerInfo")
    if len(rec.provider.addrs) > MAX_ADDRS:
        raise RecordError(OVERSIZE, f"{len(rec.provider.addrs)} addresses exceeds {MAX_ADDRS}")
    for addr in rec.provider.addrs:
        if (
            type(addr) is not tuple
            or len(addr) != 2
            or type(addr[0]) is not str
            or not 0 < len(addr[0]) <= MAX_HOST_CHARS
            or type(addr[1]) is not int
            or not 0 < addr[1] < 65536
        ):
            raise RecordError(MALFORMED, f"bad provider address {addr!r}")
    if type(rec.expires) is not int or not 0 <= rec.expires <= U64:
        raise RecordError(MALFORMED, "expires must be an integer in 0..2**64-1")
    if type(rec.signature) is not bytes or len(rec.signature) != SIGNATURE_BYTES:
        raise RecordError(MALFORMED, f"signature must be {SIGNATURE_BYTES} bytes")


def validate_provider(
    rec: ProviderRecord, now: float, *, key: bytes | None = None, max_ttl: float = MAX_PROVIDER_TTL
) -> None:
    """Raise :class:`RecordError` unless ``rec`` is well formed, for ``key`` (when given),
    unexpired, within ``max_ttl`` and signed by the provider it names."""
    if not isinstance(rec, ProviderRecord):
        raise RecordError(MALFORMED, f"expected a ProviderRecord, got {type(rec).__name__}")
    _check_provider_shape(rec)
    if key is not None and rec.key != key:
        raise RecordError(WRONG_KEY, "provider record is for another key")
    _check_expiry(rec.expires, now, max_ttl)
    if not verify_signature(rec.provider.key, rec.signed_bytes(), rec.signature):
        raise RecordError(BAD_SIGNATURE, f"not signed by provider {rec.provider.key.hex()[:8]}")


def sign_provider(
    signer: Signer, key: bytes, addrs: tuple[tuple[str, int], ...], expires: int
) -> ProviderRecord:
    """Announce ``signer`` (reachable at ``addrs``) as a provider of ``key``."""
    unsigned = ProviderRecord(
        key, PeerInfo(signer.public_key, addrs), expires, bytes(SIGNATURE_BYTES)
    )
    _check_provider_shape(unsigned)
    return ProviderRecord(key, unsigned.provider, expires, signer.sign(unsigned.signed_bytes()))
