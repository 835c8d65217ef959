"""TLS 1.3 contexts for mutually authenticated peer links, and the key pin check.

How a link is authenticated (see ``p2p.identity`` for why certificates are anchor-issued):

1. Both sides present their certificate (mutual TLS): the server sets
   ``verify_mode = CERT_REQUIRED``, which is what makes OpenSSL send a CertificateRequest.
2. OpenSSL checks the chain against the public anchor. That check is vacuous by design
   (anyone can mint an anchor-issued certificate for *their own* key); it only keeps
   OpenSSL from refusing a certificate it cannot chain, since the stdlib has no verify
   callback.
3. TLS 1.3 makes each side sign the handshake transcript (CertificateVerify) with the
   private key of the certificate it sent. The transcript includes both sides' fresh
   ephemeral key shares, so the proof is bound to this session: it cannot be replayed
   or relayed into another connection, and a certificate copied without its private
   key is useless.
4. After the handshake we read the peer's certificate and compare its raw Ed25519 key
   with the pin: the dialer with the key it meant to reach, the acceptor with its
   allowed set (or accepts any key in open mode and reports the key it authenticated).

TLS 1.3 only, no session tickets (resumption would skip the certificate exchange), no
hostname checks (peers have keys, not names).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Collection
from pathlib import Path

from p2p.errors import IdentityError, PeerAuthError
from p2p.identity import Identity, anchor_certificate_der, public_key_from_cert_der, short_id


def _base(purpose: int, identity: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=anchor_certificate_der())
    _load_identity(ctx, identity)
    return ctx


def _load_identity(ctx: ssl.SSLContext, identity: Identity) -> None:
    """``load_cert_chain`` only reads files: write the certificate and the private key
    encrypted under a one-time random password into a private directory, load, delete.
    What touches the disk is useless without the password, which never leaves memory."""
    password = os.urandom(32).hex().encode()
    with tempfile.TemporaryDirectory(prefix="p2p-tls-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_bytes(identity.certificate_pem)
        key_path.write_bytes(identity.private_key_pem(password))
        ctx.load_cert_chain(cert_path, key_path, password=password)


def server_context(identity: Identity) -> ssl.SSLContext:
    """Context for accepted connections: presents our certificate, requires the peer's."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, identity)
    ctx.num_tickets = 0
    return ctx


def client_context(identity: Identity) -> ssl.SSLContext:
    """Context for dialled connections: presents our certificate, requires the peer's."""
    return _base(ssl.PROTOCOL_TLS_CLIENT, identity)


def peer_public_key(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes:
    """The raw Ed25519 key of the certificate the peer proved it holds in this handshake."""
    if ssl_object is None:
        raise PeerAuthError("link is not TLS")
    if ssl_object.version() != "TLSv1.3":
        raise PeerAuthError(f"peer negotiated {ssl_object.version()}, TLSv1.3 is required")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerAuthError("peer presented no certificate")
    try:
        return public_key_from_cert_der(der)
    except IdentityError as exc:
        raise PeerAuthError(str(exc)) from exc


def check_pin(
    actual: bytes,
    *,
    expected: bytes | None = None,
    allowed: Collection[bytes] | None = None,
    own: bytes | None = None,
) -> bytes:
    """Return ``actual`` if it is acceptable, else raise ``PeerAuthError``.

    ``expected`` is the dialer's pin; ``allowed`` the acceptor's set (``None`` = open);
    ``own`` refuses a connection to ourselves.
    """
    if own is not None and actual == own:
        raise PeerAuthError("peer presented our own key (connected to ourselves?)")
    if expected is not None and actual != expected:
        raise PeerAuthError(f"peer presented key {short_id(actual)}, expected {short_id(expected)}")
    if allowed is not None and actual not in allowed:
        raise PeerAuthError(f"peer key {short_id(actual)} is not allowed")
    return actual
