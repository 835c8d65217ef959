"""State transfer between members: checkpoint votes, certificates, and the log they end.

Wire messages of the ``STATE`` frame channel with a strict decoder (any malformed input
raises :class:`~dagrider.errors.DecodeError`, nothing else), and :class:`Transfer`, the
pure machine that fetches the committed log up to a certified checkpoint from peers,
one at a time, checks it against the certificate's hash chain and bans a peer whose
bytes do not match. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dagrider.checkpoint import Certificate, Checkpoint, chain_next, entry_hash
from dagrider.errors import DecodeError, short
from dagrider.messages import NodeId
from dagrider.ordering import OrderingState

VERSION = 1
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

    def transactions(self) -> list[bytes]:
        txs = msgpack.unpackb(self.block, raw=False)
        if not isinstance(txs, list) or not all(type(t) is bytes for t in txs):
            raise DecodeError("block", "expected a list of transactions")
        return txs


@dataclass(frozen=True)
class LogRows:
    rows: tuple[LogRow, ...]
    done: bool  # no rows in the asked range after these


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
        case LogRows(rows, done):
            packed = [[r.index, r.tx_index, r.round, r.source, r.wave, r.block] for r in rows]
            body = [T_LOG, VERSION, packed, done]
        case LogPruned(base):
            body = [T_PRUNED, VERSION, None if base is None else _cert(base)]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


# -- strict decoding ------------------------------------------------------------------------


def _int(v: object, name: str, low: int = 0, high: int = 2**62) -> int:
    if type(v) is not int or not low <= v <= high:
        raise DecodeError(name, f"expected an integer in {low}..{high}, got {short(v)}")
    return v


def _bin(v: object, name: str, length: int | None = 32) -> bytes:
    if type(v) is not bytes or (length is not None and len(v) != length):
        want = "bytes" if length is None else f"{length} bytes"
        raise DecodeError(name, f"expected {want}, got {short(v)}")
    return v


def _list(v: object, name: str, length: int | None = None) -> list[Any]:
    if type(v) is not list or (length is not None and len(v) != length):
        want = "a list" if length is None else f"a list of {length}"
        raise DecodeError(name, f"expected {want}, got {short(v)}")
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


def decode(data: bytes | bytearray | memoryview) -> StateMessage:
    """Decode one STATE frame; raises only :class:`DecodeError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("frame", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_FRAME:
        raise DecodeError("frame", f"{len(data)} bytes exceeds {MAX_FRAME}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_FRAME,
            max_str_len=64,
            max_array_len=MAX_ROWS,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise DecodeError("frame", "trailing bytes after message") from None
    except (ValueError, TypeError, BufferError, msgpack.UnpackException, RecursionError) as exc:
        raise DecodeError("frame", f"not valid msgpack ({type(exc).__name__})") from None
    m = _list(obj, "frame")
    if len(m) < 2:
        raise DecodeError("frame", "expected [type, version, ...]")
    t = _int(m[0], "t", 1, T_PRUNED)
    if type(m[1]) is not int or m[1] != VERSION:
        raise DecodeError(
            "v", f"unsupported state-sync version {short(m[1])} (this node: {VERSION})"
        )
    arity = {T_VOTE: 4, T_CERT_REQ: 2, T_CERT: 5, T_LOG_REQ: 4, T_LOG: 4, T_PRUNED: 3}[t]
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
        for r in (_list(x, "row", 6) for x in _list(m[2], "rows"))
    )
    if type(m[3]) is not bool:
        raise DecodeError("done", f"expected true or false, got {short(m[3])}")
    return LogRows(rows, m[3])


# -- the transfer ---------------------------------------------------------------------------


@dataclass
class Transfer:
    """Fetch log rows ``[start, certificate.index)`` and check them against the chain.

    One peer serves at a time, in chunks; rows must come in order, contiguous with what
    was verified, inside the range. When the peer says ``done``, the chain must equal
    the certificate's and the counters must line up; a peer that breaks any of this is
    banned for the transfer and the fetch restarts (from ``start``: without a
    certified chain value in between, nothing a banned peer sent can be kept) with the
    next peer. Memory is the fetched rows: the range a lagging node needs.
    """

    certificate: Certificate
    state: OrderingState
    start: int
    start_tx: int
    start_chain: bytes
    peers: list[NodeId]
    banned: set[NodeId] = field(default_factory=set)
    serving: NodeId | None = None
    rows: list[LogRow] = field(default_factory=list)
    chain: bytes = b""
    position: int = 0  # next vertex index expected at or above
    tx_position: int = 0
    finished: bool = False
    rebased: bool = False  # fetching a certified suffix: the log will have a gap

    def __post_init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.rows = []
        self.chain = self.start_chain
        self.position = self.start
        self.tx_position = self.start_tx
        self.serving = next((p for p in self.peers if p not in self.banned), None)

    @property
    def target(self) -> Checkpoint:
        return self.certificate.checkpoint

    def request(self) -> tuple[NodeId, LogRequest] | None:
        """Who to ask next, and for what (None: finished, or nobody left to ask)."""
        if self.finished or self.serving is None:
            return None
        return self.serving, LogRequest(self.position, self.target.index)

    def ban(self, peer: NodeId) -> None:
        """``peer`` failed us (bad bytes, or gone): move to the next peer."""
        self.banned.add(peer)
        if peer == self.serving:
            self._reset()

    def rebase(self, base: Checkpoint) -> bool:
        """Fetch only the suffix from a certified ``base`` (the serving peer pruned the
        rows before it); False if ``base`` cannot serve this target."""
        ok = self.start < base.index <= self.target.index
        if not ok or not self.start_tx <= base.tx_index <= self.target.tx_index:
            return False
        self.start, self.start_tx, self.start_chain = base.index, base.tx_index, base.chain
        self.rebased = True
        serving = self.serving
        self._reset()
        self.serving = serving
        return True

    def on_rows(self, peer: NodeId, msg: LogRows) -> str | None:
        """Take one answer; returns a reason when ``peer`` is banned for it."""
        if peer != self.serving or self.finished:
            return None  # late or unasked: ignore
        why = self._check(msg.rows)
        if why is None and msg.done:
            if self.chain != self.target.chain:
                why = "log rows do not match the certificate's hash chain"
            elif self.tx_position > self.target.tx_index:
                why = "log rows run past the certificate's transaction index"
            elif self.tx_position != self.target.tx_index:
                why = "log rows end before the certificate's transaction index"
            else:
                self.finished = True
        if why is not None:
            self.ban(peer)
        return why

    def _check(self, rows: Sequence[LogRow]) -> str | None:
        for r in rows:
            if not self.position <= r.index < self.target.index:
                return f"log row {r.index} outside [{self.position}, {self.target.index})"
            if r.tx_index != self.tx_position:
                return (
                    f"log row {r.index} starts at transaction {r.tx_index}, not {self.tx_position}"
                )
            try:
                count = len(r.transactions())
            except (DecodeError, ValueError, TypeError, RecursionError, msgpack.UnpackException):
                return f"log row {r.index} has a malformed block"
            if count == 0:
                return f"log row {r.index} has no transactions"
            self.chain = chain_next(self.chain, r.entry())
            self.position = r.index + 1
            self.tx_position += count
            self.rows.append(r)
        return None
