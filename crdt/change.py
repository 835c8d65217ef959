"""Signed, hash-linked changes: the unit in which CRDT updates travel and are stored.

A change is a batch of operations on one document, the author's Ed25519 public key,
the hashes of the changes it depends on (the author's heads when it wrote it), a
hybrid logical clock and one signature over the canonical encoding. Its identity is
the BLAKE2b-256 hash of its encoded bytes, so a dependency hash pins the entire causal
history: nobody can substitute a different history under the same hashes (Kleppmann,
"Making CRDTs Byzantine Fault Tolerant", PaPoC 2022).

Everything a replica decides about a change alone (structure, sizes, signature) lives
here and is deterministic: two correct replicas reach the same verdict on the same
bytes. What needs the dependencies (authorisation is static; the clock rule needs the
dependencies' clocks) is checked in :mod:`crdt.replica`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from crdt.errors import CrdtError, InvalidOperation
from crdt.limits import CrdtLimits
from p2p.strictwire import Limits, cut, unpack

VERSION = 1
HASH_BYTES = 32
KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_HLC = (1 << 63) - 1
_SIGNING_CONTEXT = b"dagrider-crdt-change-v1\x00"
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class ChangeRejected(CrdtError):
    """A change failed a check; :attr:`reason` is a stable machine-readable code.

    Codes: ``malformed``, ``oversize``, ``bad-signature``, ``unauthorized``,
    ``clock`` (not later than its dependencies), ``pending-full``. ``detail`` is cut
    at ``p2p.strictwire.DETAIL_CHARS``: a change full of long keys never makes a long log line.
    """

    def __init__(self, reason: str, detail: str) -> None:
        detail = cut(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _malformed(field: str, detail: str) -> ChangeRejected:
    return ChangeRejected("malformed", f"change: {detail}")


def _limits(size: int) -> Limits:
    """A change is checked field by field after unpacking; msgpack may only allocate
    what the frame's own size allows (no ext types, str/bytes keys, its length)."""
    return Limits(max_frame=size, max_bin=size, max_str=size, max_array=size, max_map=size)


class Signer(Protocol):
    """Whatever holds the author's private key."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class KeySigner:
    """An Ed25519 signer from a 32-byte seed (libsodium via PyNaCl)."""

    def __init__(self, seed: bytes) -> None:
        self._key = SigningKey(seed)
        self._public = bytes(self._key.verify_key)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


def hash_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def namespace_of(doc: str) -> str:
    """``"config/peers"`` -> ``"config"``; the namespace decides who may write."""
    return doc.partition("/")[0]


def check_doc_id(doc: object, limits: CrdtLimits) -> str:
    """A document id is ``namespace/name``; raise :class:`ChangeRejected` otherwise."""
    if not isinstance(doc, str):
        raise ChangeRejected("malformed", "doc: not a string")
    namespace, slash, name = doc.partition("/")
    if not slash or not _NAMESPACE.fullmatch(namespace):
        raise ChangeRejected(
            "malformed", f"doc: {doc[:80]!r} is not 'namespace/name' (namespace [a-z0-9_.-])"
        )
    if not name or len(doc.encode()) > limits.max_doc_id_bytes or not name.isprintable():
        raise ChangeRejected("malformed", f"doc: name must be 1..{limits.max_doc_id_bytes} bytes")
    return doc


@dataclass(frozen=True, slots=True)
class Change:
    """One verified change. Build with :func:`sign_change`, parse with :func:`decode_change`."""

    doc: str
    deps: tuple[bytes, ...]
    author: bytes
    hlc: int
    ops: tuple[Any, ...]
    signature: bytes
    encoded: bytes
    hash: bytes

    def __repr__(self) -> str:
        return (
            f"Change({self.hash.hex()[:12]} doc={self.doc!r} author={self.author.hex()[:8]} "
            f"hlc={self.hlc} deps={len(self.deps)} ops={len(self.ops)})"
        )


def _signed_body(doc: str, deps: tuple[bytes, ...], author: bytes, hlc: int, ops: Any) -> bytes:
    body: bytes = msgpack.packb([VERSION, doc, list(deps), author, hlc, ops], use_bin_type=True)
    return _SIGNING_CONTEXT + body


def sign_change(
    signer: Signer,
    doc: str,
    deps: tuple[bytes, ...] | list[bytes],
    hlc: int,
    ops: list[Any],
    limits: CrdtLimits,
) -> Change:
    """Sign and encode a change; it passes :func:`decode_change` with these limits."""
    deps_sorted = tuple(sorted(set(deps)))
    author = signer.public_key
    signature = signer.sign(_signed_body(doc, deps_sorted, author, hlc, ops))
    encoded: bytes = msgpack.packb(
        [VERSION, doc, list(deps_sorted), author, hlc, ops, signature], use_bin_type=True
    )
    # Parsed and checked like any received change, but our own fresh signature is not
    # verified again (~65 us, a third of a one-op write).
    return decode_change(encoded, limits, verify=False)


_VERIFY_KEYS: dict[bytes, VerifyKey] = {}


def _verify_key(author: bytes) -> VerifyKey:
    key = _VERIFY_KEYS.get(author)
    if key is None:
        if len(_VERIFY_KEYS) > 4096:
            _VERIFY_KEYS.clear()
        key = _VERIFY_KEYS[author] = VerifyKey(author)
    return key


def decode_change(data: bytes, limits: CrdtLimits, *, verify: bool = True) -> Change:
    """Parse and check one encoded change; raise :class:`ChangeRejected` naming the flaw.

    The encoding must be canonical (re-encoding the parsed change gives the same bytes)
    so that one change has exactly one hash. ``verify=False`` skips the signature for
    changes read back from the node's own database, which were verified on the way in.
    """
    from crdt.types import ORMap

    if not isinstance(data, bytes | bytearray):
        raise ChangeRejected("malformed", "change: not bytes")
    if len(data) > limits.max_change_bytes:
        raise ChangeRejected(
            "oversize", f"change: {len(data)} bytes > limit {limits.max_change_bytes}"
        )
    obj = unpack(data, _malformed, _limits(len(data)))
    if not isinstance(obj, list) or len(obj) != 7:
        raise ChangeRejected("malformed", "change: expected a 7-element array")
    version, doc, deps, author, hlc, ops, signature = obj
    if type(version) is not int or version != VERSION:
        raise ChangeRejected("malformed", f"version: expected {VERSION}")
    check_doc_id(doc, limits)
    if not isinstance(deps, list) or len(deps) > limits.max_deps:
        raise ChangeRejected("malformed", f"deps: expected a list of at most {limits.max_deps}")
    for dep in deps:
        if not isinstance(dep, bytes) or len(dep) != HASH_BYTES:
            raise ChangeRejected("malformed", "deps: every dependency is a 32-byte hash")
    if any(a >= b for a, b in pairwise(deps)):
        raise ChangeRejected("malformed", "deps: not sorted and unique")
    if not isinstance(author, bytes) or len(author) != KEY_BYTES:
        raise ChangeRejected("malformed", "author: expected a 32-byte Ed25519 key")
    if type(hlc) is not int or not 0 < hlc <= MAX_HLC:
        raise ChangeRejected("malformed", "hlc: expected a positive 63-bit integer")
    if not isinstance(ops, list) or not 0 < len(ops) <= limits.max_ops:
        raise ChangeRejected("malformed", f"ops: expected 1..{limits.max_ops} operations")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise ChangeRejected("malformed", "signature: expected 64 bytes")
    for index, op in enumerate(ops):
        try:
            ORMap.check_op(op)
        except InvalidOperation as exc:
            raise ChangeRejected("malformed", f"ops[{index}]: {exc}") from None
    deps_t = tuple(deps)
    canonical = msgpack.packb([VERSION, doc, deps, author, hlc, ops, signature], use_bin_type=True)
    if canonical != data:
        raise ChangeRejected("malformed", "change: encoding is not canonical")
    if verify:
        try:
            _verify_key(author).verify(_signed_body(doc, deps_t, author, hlc, ops), signature)
        except (BadSignatureError, ValueError):
            raise ChangeRejected(
                "bad-signature", f"signature does not verify under author {author.hex()[:16]}"
            ) from None
    return Change(doc, deps_t, author, hlc, tuple(ops), signature, bytes(data), hash_bytes(data))
