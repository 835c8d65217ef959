"""Certified checkpoints of the committed log: what a node that fell behind trusts.

At every ``checkpoint_interval`` committed vertices (taken at the first wave boundary
past each multiple, which every correct node crosses with the same log), the ordering
emits a :class:`~dagrider.effects.CheckpointReached` with its state. Every member signs
the same :class:`Checkpoint` (committee, log position, hash chain of the log, ordering
state digest, CRDT cut digest) with its identity key; f+1 matching signatures from
distinct members make a :class:`Certificate`: at least one correct member vouches for
it, so a node that verifies one can install the state it names instead of replaying
history its peers no longer keep.

The hash chain covers every committed vertex that carries transactions, in log order,
over exactly the fields a log row keeps (index, transaction index, round, source, wave,
the packed block), so a node can verify fetched log rows against a certificate alone.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import nacl.signing
from nacl.exceptions import BadSignatureError

from dagrider.messages import Digest, NodeId

CHAIN_GENESIS = bytes(32)
_ENTRY_PERSON = b"dagrider-logent"
_CHAIN_PERSON = b"dagrider-chain"
_ORDER_PERSON = b"dagrider-order"
_CKPT_TAG = b"dagrider-checkpoint-v1"


def pack_block(block: Sequence[bytes]) -> bytes:
    """The canonical bytes of a block, as the store keeps it in a log row."""
    packed: bytes = msgpack.packb(list(block), use_bin_type=True)
    return packed


def entry_hash(index: int, tx_index: int, rnd: int, source: int, wave: int, block: bytes) -> bytes:
    """Hash of one log entry; ``block`` is :func:`pack_block` of its transactions."""
    body = msgpack.packb([index, tx_index, rnd, source, wave, block], use_bin_type=True)
    return hashlib.blake2b(body, digest_size=32, person=_ENTRY_PERSON).digest()


def chain_next(chain: bytes, entry: bytes) -> bytes:
    """Extend the log's hash chain by one entry hash."""
    return hashlib.blake2b(chain + entry, digest_size=32, person=_CHAIN_PERSON).digest()


def ordering_digest(
    decided_wave: int,
    last_leader_round: int,
    next_index: int,
    next_tx_index: int,
    chain: bytes,
    ordered: Iterable[tuple[Digest, int]],
    gc_depth: int,
) -> bytes:
    """Digest of the part of an ordering state every correct node agrees on at a
    checkpoint: counters, the chain, and the ordered digests at or above the GC floor
    (what each node still holds below it depends on when it last pruned)."""
    floor = max(0, last_leader_round - gc_depth)
    kept = sorted((r, d) for d, r in ordered if r >= floor)
    body = msgpack.packb(
        [decided_wave, last_leader_round, next_index, next_tx_index, chain, kept],
        use_bin_type=True,
    )
    return hashlib.blake2b(body, digest_size=32, person=_ORDER_PERSON).digest()


@dataclass(frozen=True)
class Checkpoint:
    """What members sign: the committed log up to ``index`` (vertices) and the state
    that resumes ordering there."""

    committee: bytes
    index: int  # committed vertices before this point (the next log index)
    tx_index: int  # committed transactions before this point
    chain: bytes
    ordering: bytes  # :func:`ordering_digest`
    crdt: bytes  # digest of the CRDT cut in force at this position (zeros: none)

    def signing_bytes(self) -> bytes:
        body: bytes = msgpack.packb(
            [
                _CKPT_TAG,
                self.committee,
                self.index,
                self.tx_index,
                self.chain,
                self.ordering,
                self.crdt,
            ],
            use_bin_type=True,
        )
        return body

    def sign(self, key: nacl.signing.SigningKey) -> bytes:
        sig: bytes = key.sign(self.signing_bytes()).signature
        return sig


class CertificateError(ValueError):
    """A certificate that does not prove what it claims (named reason)."""


@dataclass(frozen=True)
class Certificate:
    """A checkpoint with signatures from distinct members, sorted by signer."""

    checkpoint: Checkpoint
    signatures: tuple[tuple[NodeId, bytes], ...]

    def verify(self, committee: bytes, keys: Mapping[NodeId, bytes], f: int) -> None:
        """Raise :class:`CertificateError` unless f+1 distinct members signed it."""
        if self.checkpoint.committee != committee:
            raise CertificateError("certificate of another committee")
        signers = [s for s, _ in self.signatures]
        if len(set(signers)) != len(signers):
            raise CertificateError("a member signed twice")
        if len(signers) < f + 1:
            raise CertificateError(f"{len(signers)} signatures, need {f + 1}")
        message = self.checkpoint.signing_bytes()
        for signer, sig in self.signatures:
            key = keys.get(signer)
            if key is None:
                raise CertificateError(f"signer {signer} is not a member")
            try:
                nacl.signing.VerifyKey(key).verify(message, sig)
            except (BadSignatureError, ValueError, TypeError):
                raise CertificateError(f"bad signature of member {signer}") from None


@dataclass
class _Votes:
    by_body: dict[Checkpoint, dict[NodeId, bytes]] = field(default_factory=dict)
    voted: set[NodeId] = field(default_factory=set)


class CheckpointCollector:
    """Gathers signed checkpoint votes into certificates.

    Bounded: votes are kept only for checkpoints above the latest certificate and at
    most ``window`` checkpoints ahead of our own position, one vote per member per
    index; a second, different vote from a member for the same index is reported.
    Signatures are verified on arrival (the shell passes only the authenticated
    sender's votes).
    """

    def __init__(
        self,
        committee: bytes,
        keys: Mapping[NodeId, bytes],
        f: int,
        interval: int,
        window: int = 4,
    ) -> None:
        self.committee = committee
        self.keys = dict(keys)
        self.f = f
        self.interval = interval
        self.window = window
        self.position = 0  # our own log position (next index)
        self.latest: Certificate | None = None
        self._votes: dict[int, _Votes] = {}

    def add(
        self, signer: NodeId, checkpoint: Checkpoint, signature: bytes
    ) -> str | Certificate | None:
        """Offer one vote: a new certificate, a reason it was refused, or None."""
        if checkpoint.committee != self.committee:
            return "checkpoint vote for another committee"
        floor = self.latest.checkpoint.index if self.latest is not None else 0
        if checkpoint.index <= floor:
            return None  # settled already
        if checkpoint.index > self.position + self.window * max(1, self.interval):
            return None  # too far ahead of us to hold; it will be asked for again
        key = self.keys.get(signer)
        if key is None:
            return f"checkpoint vote from non-member {signer}"
        try:
            nacl.signing.VerifyKey(key).verify(checkpoint.signing_bytes(), signature)
        except (BadSignatureError, ValueError, TypeError):
            return f"bad checkpoint signature from {signer}"
        votes = self._votes.setdefault(checkpoint.index, _Votes())
        if signer in votes.voted:
            mine = any(signer in sigs and cp == checkpoint for cp, sigs in votes.by_body.items())
            return None if mine else f"second, different checkpoint vote from {signer}"
        votes.voted.add(signer)
        sigs = votes.by_body.setdefault(checkpoint, {})
        sigs[signer] = signature
        if len(sigs) < self.f + 1:
            return None
        cert = Certificate(checkpoint, tuple(sorted(sigs.items())))
        self.latest = cert
        for index in [i for i in self._votes if i <= checkpoint.index]:
            del self._votes[index]
        return cert

    def adopt(self, cert: Certificate) -> None:
        """Take a verified certificate (from the store or a peer) as the latest."""
        if self.latest is None or cert.checkpoint.index > self.latest.checkpoint.index:
            self.latest = cert
            for index in [i for i in self._votes if i <= cert.checkpoint.index]:
                del self._votes[index]
