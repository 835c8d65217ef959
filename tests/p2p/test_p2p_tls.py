"""TLS 1.3 mutual authentication and the key pin, driven in memory (no sockets).

The handshakes run over ``ssl.MemoryBIO`` pairs, so a test can also play a relay that
tampers with the bytes in flight.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from p2p.errors import PeerAuthError
from p2p.identity import Identity
from p2p.tls import check_pin, client_context, peer_public_key, server_context

A = Identity.from_seed(b"\x0a" * 32)
B = Identity.from_seed(b"\x0b" * 32)
M = Identity.from_seed(b"\x0c" * 32)

Tamper = Callable[[bytes], bytes]


def handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, tamper_to_client: Tamper | None = None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a full handshake through memory BIOs; the server reads the client's Finished."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_side=False)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        flight = s_out.read()
        if flight and tamper_to_client is not None:
            flight = tamper_to_client(flight)
        c_in.write(flight)
        if all(done.values()):
            with pytest.raises(ssl.SSLWantReadError):
                s.read(1)  # TLS 1.3: the server only checks the client's flight here
            return c, s
    raise AssertionError("handshake did not finish")


def test_mutual_tls13_authenticates_both_keys() -> None:
    c, s = handshake(client_context(A), server_context(B))
    assert c.version() == s.version() == "TLSv1.3"
    assert peer_public_key(c) == B.public_key
    assert peer_public_key(s) == A.public_key


def test_tls12_is_refused() -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(old, server_context(B))


def test_client_without_certificate_is_refused() -> None:
    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.check_hostname = False
    anon.verify_mode = ssl.CERT_NONE
    with pytest.raises(ssl.SSLError, match="did not return a certificate"):
        handshake(anon, server_context(B))


def _self_signed_context(identity: Identity) -> ssl.SSLContext:
    """A client presenting a plain self-signed certificate over its own key."""
    key = serialization.load_pem_private_key(identity.private_key_pem(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(1)
        .not_valid_before(datetime.datetime(2000, 1, 1))
        .not_valid_after(datetime.datetime(9999, 1, 1))
        .sign(key, None)  # type: ignore[arg-type]
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (Path(tmp) / "k").write_bytes(identity.private_key_pem())
        ctx.load_cert_chain(Path(tmp) / "c", Path(tmp) / "k")
    return ctx


def test_self_signed_client_certificate_fails_the_chain_check() -> None:
    """Why certificates are anchor-issued: OpenSSL will not take an unknown self-signed one."""
    with pytest.raises(ssl.SSLError, match=r"(?i)certificate verify failed"):
        handshake(_self_signed_context(A), server_context(B))


def test_someone_elses_certificate_is_useless_without_its_private_key() -> None:
    """M copies B's certificate (public) but holds only its own key. TLS 1.3 needs the
    CertificateVerify signature by the certificate's key over this session's transcript,
    so OpenSSL refuses even to configure such a server or client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c").write_bytes(B.certificate_pem)
        (Path(tmp) / "k").write_bytes(M.private_key_pem())
        with pytest.raises(ssl.SSLError, match=r"(?i)key values mismatch"):
            ctx.load_cert_chain(Path(tmp) / "c", Path(tmp) / "k")


def test_a_relay_that_alters_the_handshake_breaks_it() -> None:
    """A relay between A and the real B cannot substitute anything: B's signature covers
    the whole transcript, so flipping any byte of B's encrypted flight fails the handshake."""

    def flip_last(flight: bytes) -> bytes:
        return flight[:-1] + bytes([flight[-1] ^ 1])

    with pytest.raises(ssl.SSLError):
        handshake(client_context(A), server_context(B), tamper_to_client=flip_last)


def test_pin_check_rules() -> None:
    a, b = A.public_key, B.public_key
    assert check_pin(b, expected=b) == b
    with pytest.raises(PeerAuthError, match=f"presented key {B.short_id}, expected {A.short_id}"):
        check_pin(b, expected=a)
    assert check_pin(b, allowed={a, b}) == b
    with pytest.raises(PeerAuthError, match="not allowed"):
        check_pin(b, allowed={a})
    assert check_pin(b, allowed=None) == b
    with pytest.raises(PeerAuthError, match="our own key"):
        check_pin(a, own=a)


def test_peer_public_key_needs_tls() -> None:
    with pytest.raises(PeerAuthError, match="not TLS"):
        peer_public_key(None)
