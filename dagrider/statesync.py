"""State transfer between members: checkpoint votes, certificates, and the log they end.

Wire messages of the ``STATE`` frame channel with a strict decoder (any malformed input
raises :class:`~dagrider.errors.DecodeError`, nothing else), and :class:`Transfer`, the
pure machine that fetches the committed log up to a certified checkpoint from several
peers at once, in segments, checks each against the certificate's hash chain and bans
a peer whose bytes do not match. Pure: no I/O, no clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from dagrider.checkpoint import Certificate, CertificateError, Checkpoint, chain_next, entry_hash
from dagrider.errors import DecodeError
from dagrider.messages import NodeId
from dagrider.ordering import OrderingState
from dagrider.params import Limits as BlockLimits
from p2p.strictwire import Limits, describe, unpack

VERSION = 2
"""2: a log answer names the index it answers from and the hash chain before it, so
that segments fetched from different peers can each be checked."""
T_VOTE, T_CERT_REQ, T_CERT, T_LOG_REQ, T_LOG, T_PRUNED = 1, 2, 3, 4, 5, 6
MAX_FRAME = 16 * 1024 * 1024
LOG_CHUNK_BYTES = 4 * 1024 * 1024  # block bytes in one LogRows answer
MAX_ROWS = 100_000


@dataclass(frozen=True)
class CheckpointVote:
    checkpoint: Checkpoint
    signature: bytes


@dataclass(frozen=True)
class CertificateRequest:
    """Ask for the latest certificate and the ordering state it certifies."""


@dataclass(frozen=True)
class CertificateOffer:
    certificate: Certificate
    state: OrderingState


@dataclass(frozen=True)
class LogRequest:
    """Log rows with vertex index in [first, until)."""

    first: int
    until: int


_TX_HEADER = 5  # bytes of a msgpack bin32 header, the largest a transaction can have


def _block_limits(limits: BlockLimits | None) -> Limits:
    """What msgpack may allocate for one block: one flat array of binaries."""
    if limits is None:
        return Limits(MAX_FRAME, MAX_FRAME, 0, MAX_FRAME, 0, max_depth=1)
    count = limits.max_txs_per_vertex
    frame = _TX_HEADER + limits.max_block_bytes + count * _TX_HEADER
    return Limits(frame, limits.max_tx_bytes, 0, count, 0, max_depth=1)


def _block_error(field: str, detail: str) -> DecodeError:
    """The envelope's errors (about the whole frame) as errors of the row's ``block``."""
    return DecodeError("block", detail)


@dataclass(frozen=True)
class LogRow:
    """One committed vertex with transactions, as the store keeps it."""

    index: int
    tx_index: int
    round: int
    source: int
    wave: int
    block: bytes  # :func:`dagrider.checkpoint.pack_block`

    def entry(self) -> bytes:
        return entry_hash(self.index, self.tx_index, self.round, self.source, self.wave, self.block)

    def transactions(self, limits: BlockLimits | None = None) -> list[bytes]:
        """The row's transactions, unpacked with limits: a peer's block is read before
        its row is verified against the certificate's chain, so a crafted one (a 16 MiB
        array of empty arrays would make a gigabyte of Python lists) must fail as a
        :class:`DecodeError` on field ``block`` before msgpack builds it.

        ``limits``: the committee's (a committed block obeys them: at most
        ``max_txs_per_vertex`` transactions of at most ``max_tx_bytes``, at most
        ``max_block_bytes`` in all); None bounds the block only by the frame it came
        in (for rows already verified against a certificate).
        """
        wire = _block_limits(limits)
        txs = unpack(self.block, _block_error, wire)
        if type(txs) is not list or not all(type(t) is bytes for t in txs):
            raise DecodeError("block", f"expected a list of transactions, got {describe(txs)}")
        if limits is not None:
            total = sum(map(len, txs))
            if total > limits.max_block_bytes:
                raise DecodeError(
                    "block", f"{total} bytes of transactions exceeds {limits.max_block_bytes}"
                )
        return txs


@dataclass(frozen=True)
class LogRows:
    """An answer to ``LogRequest(first, until)``: rows from ``first`` on, and the log's
    hash chain over the rows before ``first`` (the serving peer's claim; checked when
    the segment after it is)."""

    first: int
    rows: tuple[LogRow, ...]
    done: bool  # no rows in the asked range after these
    chain: bytes


@dataclass(frozen=True)
class LogPruned:
    """The asked rows are gone (``[storage] keep_log_entries``). ``base``, if any, is a
    certificate at or above the first row still held: the chain value from which this
    peer can serve a verifiable suffix."""

    base: Certificate | None


StateMessage = (
    CheckpointVote | CertificateRequest | CertificateOffer | LogRequest | LogRows | LogPruned
)


# -- encoding -----------------------------------------------------------------------------


def _cp(c: Checkpoint) -> list[Any]:
    return [c.committee, c.index, c.tx_index, c.chain, c.ordering, c.crdt]


def _cert(c: Certificate) -> list[Any]:
    return [_cp(c.checkpoint), [[s, sig] for s, sig in c.signatures]]


def pack_ordering(s: OrderingState) -> list[Any]:
    return [
        s.next_wave,
        s.decided_wave,
        s.last_leader_round,
        s.next_index,
        s.next_tx_index,
        [[d, r] for d, r in s.ordered],
        [[w, x] for w, x in s.leaders],
        s.chain,
    ]


def encode(msg: StateMessage) -> bytes:
    body: list[Any]
    match msg:
        case CheckpointVote(cp, sig):
            body = [T_VOTE, VERSION, _cp(cp), sig]
        case CertificateRequest():
            body = [T_CERT_REQ, VERSION]
        case CertificateOffer(cert, state):
            body = [T_CERT, VERSION, *_cert(cert), pack_ordering(state)]
        case LogRequest(first, until):
            body = [T_LOG_REQ, VERSION, first, until]
        case LogRows(first, rows, done, chain):
            packed = [[r.index, r.tx_index, r.round, r.source, r.wave, r.block] for r in rows]
            body = [T_LOG, VERSION, first, packed, done, chain]
        case LogPruned(base):
            body = [T_PRUNED, VERSION, None if base is None else _cert(base)]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


# -- strict decoding ------------------------------------------------------------------------


def _int(v: object, name: str, low: int = 0, high: int = 2**62) -> int:
    if type(v) is not int or not low <= v <= high:
        raise DecodeError(name, f"expected an integer in {low}..{high}, got {describe(v)}")
    return v


def _bin(v: object, name: str, length: int | None = 32) -> bytes:
    if type(v) is not bytes or (length is not None and len(v) != length):
        want = "bytes" if length is None else f"{length} bytes"
        raise DecodeError(name, f"expected {want}, got {describe(v)}")
    return v


def _list(v: object, name: str, length: int | None = None) -> list[Any]:
    if type(v) is not list or (length is not None and len(v) != length):
        want = "a list" if length is None else f"a list of {length}"
        raise DecodeError(name, f"expected {want}, got {describe(v)}")
    return v


def _checkpoint(v: object) -> Checkpoint:
    c = _list(v, "checkpoint", 6)
    return Checkpoint(
        _bin(c[0], "committee"),
        _int(c[1], "index"),
        _int(c[2], "tx_index"),
        _bin(c[3], "chain"),
        _bin(c[4], "ordering"),
        _bin(c[5], "crdt"),
    )


def _certificate(cp: object, sigs: object) -> Certificate:
    signatures = tuple(
        (_int(x[0], "signer", 0, 10_000), _bin(x[1], "signature", 64))
        for x in (_list(y, "signatures", 2) for y in _list(sigs, "signatures"))
    )
    return Certificate(_checkpoint(cp), signatures)


def unpack_ordering(v: object) -> OrderingState:
    s = _list(v, "state", 8)
    ordered = tuple(
        (_bin(e[0], "ordered.digest"), _int(e[1], "ordered.round"))
        for e in (_list(x, "ordered", 2) for x in _list(s[5], "ordered"))
    )
    leaders = tuple(
        (_int(e[0], "leaders.wave"), _int(e[1], "leaders.leader"))
        for e in (_list(x, "leaders", 2) for x in _list(s[6], "leaders"))
    )
    return OrderingState(
        _int(s[0], "next_wave"),
        _int(s[1], "decided_wave"),
        _int(s[2], "last_leader_round"),
        _int(s[3], "next_index"),
        _int(s[4], "next_tx_index"),
        ordered,
        leaders,
        _bin(s[7], "chain"),
    )


_LIMITS = Limits(
    max_frame=MAX_FRAME, max_bin=MAX_FRAME, max_str=64, max_array=MAX_ROWS, max_map=0, max_depth=4
)
"""Deepest valid nesting: frame, signatures, one signature; frame, ordering state, its
ordered list, one entry; frame, pruned base, its signatures, one signature (4 levels)."""


def decode(data: bytes | bytearray | memoryview) -> StateMessage:
    """Decode one STATE frame; raises only :class:`DecodeError`."""
    obj = unpack(data, DecodeError, _LIMITS)
    m = _list(obj, "frame")
    if len(m) < 2:
        raise DecodeError("frame", "expected [type, version, ...]")
    t = _int(m[0], "t", 1, T_PRUNED)
    if type(m[1]) is not int or m[1] != VERSION:
        raise DecodeError(
            "v", f"unsupported state-sync version {describe(m[1])} (this node: {VERSION})"
        )
    arity = {T_VOTE: 4, T_CERT_REQ: 2, T_CERT: 5, T_LOG_REQ: 4, T_LOG: 6, T_PRUNED: 3}[t]
    if len(m) != arity:
        raise DecodeError("frame", f"type {t} has {arity} fields, got {len(m)}")
    if t == T_VOTE:
        return CheckpointVote(_checkpoint(m[2]), _bin(m[3], "signature", 64))
    if t == T_CERT_REQ:
        return CertificateRequest()
    if t == T_CERT:
        return CertificateOffer(_certificate(m[2], m[3]), unpack_ordering(m[4]))
    if t == T_PRUNED:
        if m[2] is None:
            return LogPruned(None)
        c = _list(m[2], "base", 2)
        return LogPruned(_certificate(c[0], c[1]))
    if t == T_LOG_REQ:
        return LogRequest(_int(m[2], "first"), _int(m[3], "until"))
    rows = tuple(
        LogRow(
            _int(r[0], "row.index"),
            _int(r[1], "row.tx_index"),
            _int(r[2], "row.round"),
            _int(r[3], "row.source", 0, 10_000),
            _int(r[4], "row.wave"),
            _bin(r[5], "row.block", None),
        )
        for r in (_list(x, "row", 6) for x in _list(m[3], "rows"))
    )
    if type(m[4]) is not bool:
        raise DecodeError("done", f"expected true or false, got {describe(m[4])}")
    return LogRows(_int(m[2], "first"), rows, m[4], _bin(m[5], "chain"))


# -- the transfer ---------------------------------------------------------------------------


SEGMENT_SPAN = 1024
"""Vertex indices per segment (segment edges are multiples of it, so a transfer that
restarts from the same position finds the same segments it already holds)."""
IN_FLIGHT_PER_PEER = 2  # segments one peer serves at once


@dataclass
class Segment:
    """Log rows ``[first, until)``, fetched from one peer in chunks.

    ``start_chain`` is the serving peer's claim for the chain before ``first``; the
    segment is *verified* once its rows extend that claim to the (already verified)
    chain value where the next segment starts, or to the certificate's for the last
    one. A verified segment authenticates its own ``start_chain`` in turn (a hash chain
    cannot be made to reach a certified value from a false start), so the check runs
    from the certificate backwards and each segment can come from a different peer.
    """

    first: int
    until: int
    peer: NodeId | None = None
    rows: list[LogRow] = field(default_factory=list)
    start_chain: bytes | None = None
    chain: bytes = b""  # over the rows so far, from start_chain
    position: int = 0  # next vertex index expected at or above
    start_tx: int | None = None  # the first row's transaction index
    tx_position: int | None = None
    complete: bool = False
    verified: bool = False
    stored: bool = False  # verified rows handed to the shell (see Transfer.verified)

    def __post_init__(self) -> None:
        self.position = self.first

    def reset(self) -> None:
        self.peer, self.rows, self.start_chain, self.chain = None, [], None, b""
        self.position, self.start_tx, self.tx_position = self.first, None, None
        self.complete = False


@dataclass
class Transfer:
    """Fetch log rows ``[start, certificate.index)`` from several peers and check them.

    The range is cut into segments (:data:`SEGMENT_SPAN` vertex indices); each idle
    peer serves up to :data:`IN_FLIGHT_PER_PEER` of them at once. Within a segment rows
    must come in order, contiguous, inside the range, each with transactions; across
    segments the check runs backwards from the certificate (see :class:`Segment`). A
    peer that breaks any of this is banned for the transfer: its unverified segments go
    to other peers, while what it served that already verified is kept (verified bytes
    are the certified log whoever sent them). A segment restored from an interrupted
    transfer (:meth:`restore`) is checked like a fetched one.
    """

    certificate: Certificate
    state: OrderingState
    start: int
    start_tx: int
    start_chain: bytes
    peers: list[NodeId]
    banned: set[NodeId] = field(default_factory=set)
    segments: list[Segment] = field(default_factory=list)
    finished: bool = False
    failure: str | None = None  # our own log disagrees with the certified one
    rebased: bool = False  # fetching a certified suffix: the log will have a gap
    span: int = SEGMENT_SPAN
    # The committee's limits: a block over them is malformed before any chain check.
    limits: BlockLimits | None = None

    def __post_init__(self) -> None:
        self._cut()

    def _cut(self) -> None:
        edges = [self.start]
        nxt = (self.start // self.span + 1) * self.span
        while nxt < self.target.index:
            edges.append(nxt)
            nxt += self.span
        edges.append(self.target.index)
        self.segments = [Segment(a, b) for a, b in itertools.pairwise(edges) if a < b]
        if not self.segments:  # nothing to fetch: the certificate is where we are
            self._verify()

    @property
    def target(self) -> Checkpoint:
        return self.certificate.checkpoint

    @property
    def rows(self) -> list[LogRow]:
        """Every verified row, in order (all of them once ``finished``)."""
        return [r for s in self.segments if s.verified for r in s.rows]

    @property
    def position(self) -> int:
        """Where the unverified part starts (for status: how far the transfer got)."""
        done = [s for s in self.segments if s.verified]
        return self.start if not done else min(s.first for s in done)

    @property
    def serving(self) -> list[NodeId]:
        return sorted({s.peer for s in self.segments if s.peer is not None and not s.complete})

    def requests(self) -> list[tuple[NodeId, LogRequest]]:
        """Give idle peers segments to serve; the requests to send now."""
        if self.finished or self.failure is not None:
            return []
        load: dict[NodeId, int] = {p: 0 for p in self.peers if p not in self.banned}
        for s in self.segments:
            if s.peer is not None and not s.complete and s.peer in load:
                load[s.peer] += 1
        out: list[tuple[NodeId, LogRequest]] = []
        for s in self.segments:
            if s.complete or s.peer is not None or not load:
                continue
            peer = min(load, key=lambda p: (load[p], self.peers.index(p)))
            if load[peer] >= IN_FLIGHT_PER_PEER:
                break
            s.peer = peer
            load[peer] += 1
            out.append((peer, LogRequest(s.position, s.until)))
        return out

    def outstanding(self) -> list[tuple[NodeId, LogRequest]]:
        """Every request in flight (to send again when answers may have been lost)."""
        return [
            (s.peer, LogRequest(s.position, s.until))
            for s in self.segments
            if s.peer is not None and not s.complete
        ]

    def ban(self, peer: NodeId) -> None:
        """``peer`` failed us (bad bytes, or gone): its unverified segments go back."""
        self.banned.add(peer)
        for s in self.segments:
            if s.peer == peer and not s.verified:
                s.reset()

    def rebase(self, base: Checkpoint) -> bool:
        """Fetch only the suffix from a certified ``base`` (a serving peer pruned the
        rows before it); False if ``base`` cannot serve this target."""
        ok = self.start < base.index <= self.target.index
        if not ok or not self.start_tx <= base.tx_index <= self.target.tx_index:
            return False
        self.start, self.start_tx, self.start_chain = base.index, base.tx_index, base.chain
        self.rebased = True
        self._cut()
        return True

    def restore(self, first: int, until: int, start_chain: bytes, rows: Sequence[LogRow]) -> bool:
        """Take a segment kept from an interrupted transfer (unverified: it is checked
        as if just fetched); False if it is not one of this transfer's segments."""
        for s in self.segments:
            if (s.first, s.until) == (first, until) and not s.complete:
                s.start_chain, s.chain = start_chain, start_chain
                if self._take(s, rows) is not None:
                    s.reset()
                    return False
                s.complete = True
                self._verify()
                return True
        return False

    def on_rows(self, peer: NodeId, msg: LogRows) -> list[tuple[NodeId, str]]:
        """Take one answer; returns the peers banned because of it, with the reason
        (the sender, or the server of an earlier segment this one proved wrong)."""
        seg = next(
            (
                s
                for s in self.segments
                if s.peer == peer and not s.complete and s.position == msg.first
            ),
            None,
        )
        if seg is None or self.finished:
            return []  # late, repeated or unasked: ignore
        if seg.start_chain is None:
            seg.start_chain = seg.chain = msg.chain
        elif msg.chain != seg.chain:
            return self._banned(peer, f"log rows from {msg.first} do not continue its last answer")
        why = self._take(seg, msg.rows)
        if why is not None:
            return self._banned(peer, why)
        if msg.done:
            seg.complete = True
            return self._verify()
        return []

    def _banned(self, peer: NodeId, why: str) -> list[tuple[NodeId, str]]:
        self.ban(peer)
        return [(peer, why)]

    def _take(self, s: Segment, rows: Sequence[LogRow]) -> str | None:
        for r in rows:
            if not s.position <= r.index < s.until:
                return f"log row {r.index} outside [{s.position}, {s.until})"
            if s.tx_position is not None and r.tx_index != s.tx_position:
                return f"log row {r.index} starts at transaction {r.tx_index}, not {s.tx_position}"
            try:
                count = len(r.transactions(self.limits))
            except DecodeError as exc:
                return f"log row {r.index} has a malformed block ({exc})"
            if count == 0:
                return f"log row {r.index} has no transactions"
            if s.start_tx is None:
                s.start_tx = r.tx_index
            s.chain = chain_next(s.chain, r.entry())
            s.position = r.index + 1
            s.tx_position = r.tx_index + count
            s.rows.append(r)
        return None

    def _verify(self) -> list[tuple[NodeId, str]]:
        """Check complete segments from the certificate backwards, as far as they
        reach; ban the server of a segment that does not chain to its anchor."""
        bans: list[tuple[NodeId, str]] = []
        chain, tx = self.target.chain, self.target.tx_index
        for s in reversed(self.segments):
            if not s.verified:
                if not s.complete:
                    return bans
                ends = s.tx_position if s.tx_position is not None else tx
                if s.chain != chain or ends != tx:
                    peer = s.peer
                    s.reset()
                    if peer is not None:
                        bans += self._banned(
                            peer,
                            f"log rows [{s.first}, {s.until}) do not match the certified chain",
                        )
                    return bans
                s.verified = True
            assert s.start_chain is not None
            chain = s.start_chain
            tx = s.start_tx if s.start_tx is not None else tx
        # Every segment verified: the certified log starts where ours ends.
        if chain != self.start_chain or tx != self.start_tx:
            self.failure = (
                f"the certified log does not extend ours at index {self.start} "
                "(our log differs from what f+1 members signed)"
            )
        else:
            self.finished = True
        return bans

    def verified(self) -> list[Segment]:
        """Verified segments not yet handed out (the shell keeps them on disk, so an
        interrupted transfer resumes with them); marks them handed out."""
        out = [s for s in self.segments if s.verified and not s.stored]
        for s in out:
            s.stored = True
        return out


def checkpoint_of(committee: bytes, state: OrderingState, gc_depth: int, crdt: bytes) -> Checkpoint:
    """The checkpoint a member signs when its ordering passes ``state`` (both shells)."""
    return Checkpoint(
        committee,
        state.next_index,
        state.next_tx_index,
        state.chain,
        state.digest(gc_depth),
        crdt,
    )


class LogPosition(Protocol):
    """Where a log ends: :class:`~dagrider.ordering.Ordering` or its state."""

    @property
    def next_index(self) -> int: ...
    @property
    def next_tx_index(self) -> int: ...
    @property
    def chain(self) -> bytes: ...


@dataclass(frozen=True)
class OfferTaken:
    """What to make of a certificate offer (:func:`take_offer`): a fault to report
    (the offer is refused), or a transfer to start, or neither (nothing to do)."""

    fault: str | None = None
    transfer: Transfer | None = None


def take_offer(
    sender: NodeId,
    offer: CertificateOffer,
    *,
    committee: bytes,
    keys: Mapping[NodeId, bytes],
    f: int,
    gc_depth: int,
    position: LogPosition,
    process_round: int,
    busy: bool,
    peers: Sequence[NodeId],
    limits: BlockLimits,
) -> OfferTaken:
    """The decision both shells (the daemon's ``dagrider/node/state_sync.py`` and the
    simulator's ``sim/state_sync.py``) make on an offer they asked for.

    Every offer is checked, even one no longer needed, so a peer that offers a forged
    certificate, or a state its certificate does not vouch for, is reported whether or
    not it came first. A valid offer starts a transfer from our log's ``position`` (the
    ordering's next index, transaction index and chain) only when we are not ``busy``
    with one, it is ahead of our log, and installing it moves our process forward
    (its GC floor is above our round; otherwise catch-up does the job). The sender
    serves first, then the other ``peers``."""
    cert, state = offer.certificate, offer.state
    try:
        cert.verify(committee, keys, f)
    except CertificateError as exc:
        return OfferTaken(fault=f"certificate refused: {exc}")
    cp = cert.checkpoint
    if state.digest(gc_depth) != cp.ordering or (
        state.next_index,
        state.next_tx_index,
        state.chain,
    ) != (cp.index, cp.tx_index, cp.chain):
        return OfferTaken(fault="ordering state does not match its certificate")
    if busy or cp.index <= position.next_index:
        return OfferTaken()  # busy, or no newer than what we have
    if max(0, state.last_leader_round - gc_depth) <= process_round:
        return OfferTaken()  # installing it would not move us forward: catch-up will do
    return OfferTaken(
        transfer=Transfer(
            cert,
            state,
            position.next_index,
            position.next_tx_index,
            position.chain,
            [sender, *(p for p in peers if p != sender)],
            limits=limits,
        )
    )
