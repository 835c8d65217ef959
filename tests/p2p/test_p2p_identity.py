"""Identities are deterministic Ed25519 keys in anchor-issued certificates."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nacl.signing import SigningKey

from p2p.errors import IdentityError
from p2p.identity import Identity, anchor_certificate_der, public_key_from_cert_der

SEED = bytes(range(32))


def test_from_seed_is_deterministic_and_matches_pynacl() -> None:
    a, b = Identity.from_seed(SEED), Identity.from_seed(SEED)
    assert a.public_key == b.public_key == bytes(SigningKey(SEED).verify_key)
    assert a.certificate_der == b.certificate_der
    assert a.peer_id == a.public_key.hex() and len(a.peer_id) == 64
    assert a.peer_id.startswith(a.short_id)
    assert a.short_id in repr(a)


def test_certificate_carries_the_key_and_chains_to_the_anchor() -> None:
    ident = Identity.from_seed(SEED)
    assert public_key_from_cert_der(ident.certificate_der) == ident.public_key
    anchor = x509.load_der_x509_certificate(anchor_certificate_der())
    ident.certificate.verify_directly_issued_by(anchor)
    assert ident.certificate.not_valid_after_utc.year == 9999
    assert ident.certificate_pem.startswith(b"-----BEGIN CERTIFICATE-----")


def test_private_key_pem_round_trips_with_and_without_password() -> None:
    ident = Identity.from_seed(SEED)
    for password in (None, b"pw"):
        key = serialization.load_pem_private_key(ident.private_key_pem(password), password)
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert raw == ident.public_key


@pytest.mark.parametrize("seed", [b"", b"x" * 31, b"x" * 33])
def test_seed_must_be_32_bytes(seed: bytes) -> None:
    with pytest.raises(IdentityError, match="32 bytes"):
        Identity.from_seed(seed)


def test_non_ed25519_certificate_is_refused_clearly() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(IdentityError, match="EC secp256r1, expected Ed25519"):
        public_key_from_cert_der(cert.public_bytes(serialization.Encoding.DER))


def test_garbage_der_is_refused() -> None:
    with pytest.raises(IdentityError, match="not valid DER"):
        public_key_from_cert_der(b"\x30\x03junk")
