"""Finality checkpoints: a signed head set carried as a transaction of the consensus log.

A node periodically submits its replica's heads, signed with its key, as an ordinary
transaction. Once the log orders it, every correct node sees the same checkpoint at
the same log position, so "checkpoint k" (the k-th valid checkpoint in log order) names
the same causal cut everywhere, and the state of that cut is the same join of the same
changes on every node that holds them. The head hashes are the proof: they pin every
change of the cut by hash.

Anyone can submit a transaction, so a checkpoint counts only if it is signed by one of
the configured keys (the committee's) over this committee's domain; everything else
that merely looks like one is ignored, deterministically, on every node.

Attestations (format version 2). A checkpoint transaction may also carry up to
``MAX_ATTESTS`` attestations ``(k, digest)``: "the state of checkpoint k's cut, encoded
as a :class:`~crdt.snapshot.Snapshot`, has this digest, computed from changes I
verified". A checkpoint becomes *final* (its history may be compacted, and a snapshot of
it may be accepted from a peer) once enough distinct committee members attested the
same digest for it (f + 1 of n = 3f + 1 by default: at least one of them is correct, so
the digest is the true state of the cut). The tally is a function of the log alone and
so the same on every node. Version 1 transactions (heads only) are still read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from itertools import pairwise

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from crdt.change import HASH_BYTES, KEY_BYTES, SIGNATURE_BYTES, Signer
from p2p.strictwire import Limits, unpack

MAGIC = b"\x00drcrdt-ckpt\x00"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_CHECKPOINT_HEADS = 4096
MAX_ATTESTS = 8
DIGEST_BYTES = 32

Attestation = tuple[int, bytes]
"""(checkpoint number k, snapshot digest of k's cut)."""


@dataclass(frozen=True, slots=True)
class CheckpointClaim:
    """A validly signed head set (and attestations) found in a transaction."""

    signer: bytes
    heads: tuple[bytes, ...]
    attests: tuple[Attestation, ...] = ()


def attest_quorum(members: int) -> int:
    """Matching attestations that make a checkpoint final: f + 1 for n = 3f + 1 + r."""
    return (max(members, 1) - 1) // 3 + 1


def is_checkpoint(tx: bytes) -> bool:
    """Cheap pre-filter for the commit path: does ``tx`` claim to be a checkpoint?"""
    return tx.startswith(MAGIC)


def _body(
    version: int,
    domain: bytes,
    signer: bytes,
    heads: tuple[bytes, ...],
    attests: tuple[Attestation, ...],
) -> bytes:
    fields: list[object] = [version, domain, signer, list(heads)]
    if version >= 2:
        fields.append([[k, d] for k, d in attests])
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return MAGIC + packed


def encode_checkpoint(
    signer: Signer,
    domain: bytes,
    heads: Iterable[bytes],
    attests: Iterable[Attestation] = (),
) -> bytes:
    """The transaction bytes announcing ``heads`` (sorted) as a checkpoint candidate,
    with attestations of earlier checkpoints' digests (sorted by k, the newest kept)."""
    ordered = tuple(sorted(set(heads)))[:MAX_CHECKPOINT_HEADS]
    latest: dict[int, bytes] = {}
    for k, digest in attests:
        latest.setdefault(k, digest)
    claims = tuple(sorted(latest.items()))[-MAX_ATTESTS:]
    key = signer.public_key
    signature = signer.sign(_body(VERSION, domain, key, ordered, claims))
    wire = [VERSION, key, list(ordered), [[k, d] for k, d in claims], signature]
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return MAGIC + packed


def decode_checkpoint(
    tx: bytes, domain: bytes, signers: Collection[bytes]
) -> CheckpointClaim | None:
    """The claim in ``tx`` if it is a well-formed checkpoint signed by one of ``signers``.

    ``None`` for anything else: a checkpoint either counts on every node or on none.
    """
    if not tx.startswith(MAGIC):
        return None
    body = tx[len(MAGIC) :]
    try:
        obj = unpack(body, _Refused, _limits(len(body)))
    except _Refused:
        return None
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        return None
    version = obj[0]
    if version not in READABLE_VERSIONS or len(obj) != version + 3:
        return None
    if version == 1:
        _, key, heads, signature = obj
        raw_attests: object = []
    else:
        _, key, heads, raw_attests, signature = obj
    attests = _attestations(raw_attests)
    if attests is None:
        return None
    if not isinstance(key, bytes) or len(key) != KEY_BYTES or key not in signers:
        return None
    if not isinstance(heads, list) or len(heads) > MAX_CHECKPOINT_HEADS:
        return None
    if not all(isinstance(h, bytes) and len(h) == HASH_BYTES for h in heads):
        return None
    if any(a >= b for a, b in pairwise(heads)):
        return None
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return None
    head_tuple = tuple(heads)
    try:
        VerifyKey(key).verify(_body(version, domain, key, head_tuple, attests), signature)
    except (BadSignatureError, ValueError):
        return None
    return CheckpointClaim(key, head_tuple, attests)


class _Refused(Exception):
    """Raised by the envelope on bytes that are not one msgpack value; never escapes."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")


def _limits(size: int) -> Limits:
    return Limits(max_frame=size, max_bin=size, max_str=0, max_array=size, max_map=0, max_depth=3)


def _attestations(obj: object) -> tuple[Attestation, ...] | None:
    """Parsed attestations: at most MAX_ATTESTS, strictly increasing k; None if not."""
    if not isinstance(obj, list) or len(obj) > MAX_ATTESTS:
        return None
    out: list[Attestation] = []
    for item in obj:
        if not isinstance(item, list) or len(item) != 2:
            return None
        k, digest = item
        if type(k) is not int or not 0 < k < 1 << 63:
            return None
        if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
            return None
        if out and k <= out[-1][0]:
            return None
        out.append((k, digest))
    return tuple(out)
