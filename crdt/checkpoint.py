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
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from itertools import pairwise

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from crdt.change import HASH_BYTES, KEY_BYTES, SIGNATURE_BYTES, Signer

MAGIC = b"\x00drcrdt-ckpt\x00"
VERSION = 1
MAX_CHECKPOINT_HEADS = 4096


@dataclass(frozen=True, slots=True)
class CheckpointClaim:
    """A validly signed head set found in a transaction."""

    signer: bytes
    heads: tuple[bytes, ...]


def is_checkpoint(tx: bytes) -> bool:
    """Cheap pre-filter for the commit path: does ``tx`` claim to be a checkpoint?"""
    return tx.startswith(MAGIC)


def _body(domain: bytes, signer: bytes, heads: tuple[bytes, ...]) -> bytes:
    packed: bytes = msgpack.packb([VERSION, domain, signer, list(heads)], use_bin_type=True)
    return MAGIC + packed


def encode_checkpoint(signer: Signer, domain: bytes, heads: Iterable[bytes]) -> bytes:
    """The transaction bytes announcing ``heads`` (sorted) as a checkpoint candidate."""
    ordered = tuple(sorted(set(heads)))[:MAX_CHECKPOINT_HEADS]
    key = signer.public_key
    signature = signer.sign(_body(domain, key, ordered))
    packed: bytes = msgpack.packb([VERSION, key, list(ordered), signature], use_bin_type=True)
    return MAGIC + packed


def decode_checkpoint(
    tx: bytes, domain: bytes, signers: Collection[bytes]
) -> CheckpointClaim | None:
    """The claim in ``tx`` if it is a well-formed checkpoint signed by one of ``signers``.

    ``None`` for anything else: a checkpoint either counts on every node or on none.
    """
    if not tx.startswith(MAGIC):
        return None
    try:
        obj = msgpack.unpackb(tx[len(MAGIC) :], raw=False, use_list=True)
    except Exception:
        return None
    if not isinstance(obj, list) or len(obj) != 4:
        return None
    version, key, heads, signature = obj
    if type(version) is not int or version != VERSION:
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
        VerifyKey(key).verify(_body(domain, key, head_tuple), signature)
    except (BadSignatureError, ValueError):
        return None
    return CheckpointClaim(key, head_tuple)
