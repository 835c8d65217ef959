"""A node's network identity: one Ed25519 key, and the X.509 certificate TLS needs for it.

Peers are named by their raw 32-byte Ed25519 public key (the committee file lists those
keys), never by a certificate authority. TLS still wants certificates, so every node
wraps its key in one deterministic certificate. Only the key inside matters: a link is
authenticated by pinning the peer's certificate key (see ``p2p.tls``).

Why the certificate is *issued by a public anchor* rather than self-signed: a TLS server
can only request a client certificate with ``verify_mode`` CERT_OPTIONAL/REQUIRED, and
then OpenSSL insists on a chain to a trust anchor, and the stdlib ``ssl`` module has no
verify callback to waive that. A self-signed client certificate is therefore refused
unless the server already holds that exact certificate, and we only know keys. So every
node certificate is signed by a fixed "anchor" whose private key is derived from a
published constant: anybody can mint such a certificate for their own key, so the chain
check proves nothing and costs nothing, and OpenSSL is satisfied. What proves identity is
TLS 1.3's CertificateVerify: the peer signs this session's handshake transcript with the
private key of the certificate it presented, and we then compare that key with the pin.

Certificates are a pure function of the seed (fixed serial and dates, deterministic
Ed25519 signatures), which keeps tests and key files reproducible.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2p.errors import IdentityError

SEED_SIZE: Final = 32
KEY_SIZE: Final = 32
SHORT_ID_HEX: Final = 8

# Public by design: see the module docstring. Changing it changes every certificate.
ANCHOR_SEED: Final = hashlib.sha256(b"dagrider/p2p/tls-anchor/v1").digest()
_NOT_BEFORE: Final = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
# RFC 5280 4.1.2.5: 99991231235959Z means "no well-defined expiration date".
_NOT_AFTER: Final = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def peer_id(public_key: bytes) -> str:
    """Hex of the raw public key: the stable name of a peer in stats and configs."""
    return public_key.hex()


def short_id(public_key: bytes) -> str:
    """First bytes of ``peer_id``, for log lines."""
    return public_key.hex()[:SHORT_ID_HEX]


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@functools.cache
def _anchor() -> tuple[Ed25519PrivateKey, x509.Certificate]:
    key = Ed25519PrivateKey.from_private_bytes(ANCHOR_SEED)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dagrider p2p anchor")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, None)
    )
    return key, cert


def anchor_certificate_der() -> bytes:
    """DER of the public anchor that every node certificate chains to (the TLS trust store)."""
    return _anchor()[1].public_bytes(serialization.Encoding.DER)


def _node_certificate(key: Ed25519PrivateKey) -> x509.Certificate:
    anchor_key, anchor_cert = _anchor()
    raw = _raw(key.public_key())
    serial = int.from_bytes(hashlib.sha256(raw).digest()[:19], "big") | 1
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, raw.hex())]))
        .issuer_name(anchor_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"urn:dagrider:peer:{raw.hex()}")]
            ),
            critical=False,
        )
        .sign(anchor_key, None)
    )


class Identity:
    """This node's Ed25519 key and its TLS certificate. Holds the private key: never log it."""

    __slots__ = ("_cert", "_key", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key: bytes = _raw(private_key.public_key())
        self._cert = _node_certificate(private_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity of a 32-byte RFC 8032 seed (the same key PyNaCl's ``SigningKey`` makes)."""
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            size = len(seed) if isinstance(seed, bytes | bytearray) else type(seed).__name__
            raise IdentityError(f"identity seed must be {SEED_SIZE} bytes, got {size}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (tests, throw-away clients)."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def peer_id(self) -> str:
        """Hex of the public key."""
        return peer_id(self.public_key)

    @property
    def short_id(self) -> str:
        """Short hex prefix for logs."""
        return short_id(self.public_key)

    @property
    def certificate(self) -> x509.Certificate:
        """The anchor-issued certificate over ``public_key`` that TLS presents."""
        return self._cert

    @property
    def certificate_der(self) -> bytes:
        """The certificate in DER, as peers see it in the handshake."""
        return self._cert.public_bytes(serialization.Encoding.DER)

    @property
    def certificate_pem(self) -> bytes:
        """The certificate in PEM, for ``ssl.SSLContext.load_cert_chain``."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message`` by this identity (signed DHT records)."""
        return self._key.sign(message)

    def private_key_pem(self, password: bytes | None = None) -> bytes:
        """PKCS#8 PEM of the private key, encrypted under ``password`` if one is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def __repr__(self) -> str:
        return f"Identity({self.short_id})"


def _key_kind(public: object) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return f"RSA-{public.key_size}"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"EC {public.curve.name}"
    if isinstance(public, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public).__name__


def public_key_from_cert_der(der: bytes) -> bytes:
    """The raw Ed25519 key of a DER certificate; ``IdentityError`` for any other content."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError(f"peer certificate is not valid DER X.509: {exc}") from exc
    try:
        public = cert.public_key()
    except (ValueError, TypeError) as exc:  # unsupported algorithm
        raise IdentityError(f"peer certificate key cannot be parsed: {exc}") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise IdentityError(f"peer certificate key is {_key_kind(public)}, expected Ed25519")
    return _raw(public)
