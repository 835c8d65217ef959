"""Range-based set reconciliation of change ids (Meyer 2023; the "negentropy" protocol).

Why: two replicas that each hold ~10^5 change hashes and differ in a handful must find
the difference without shipping the whole set. Both sides sort their ids and talk about
half-open *ranges* of the id space: a range whose fingerprints agree is done; a range
that differs is either listed outright (when it is small) or split into ``branching``
sub-ranges whose fingerprints go back. The work is proportional to the number of
differences times ``log(n)``, and no per-peer state (no Merkle tree) is kept between
sessions, so a peer cannot make us build anything for it.

Everything here is pure: no I/O, no clock, no randomness. The shell moves
:class:`Message` objects (or their :func:`encode`-d bytes) between peers and fetches
the changes named in :attr:`Step.need`.

Termination, even against a Byzantine peer. Every honest reply is a function of the
incoming message alone, and for a range that is not settled it either (a) answers an id
list, which settles the range on both sides one message later, or (b) splits it into
sub-ranges that each hold strictly fewer of the splitter's ids (a split needs more than
``id_list_threshold >= 1`` ids and makes at least two non-empty pieces), or (c) lists
its ids because it holds at most ``id_list_threshold``. So along any chain of ranges the
sum of both sides' counts strictly decreases at every split, and every chain ends in a
settled range. When a reply would exceed the peer's limits, the unprocessed suffix of
the id space goes back as one fingerprint. Since ``max_ranges >= branching + 2`` (a
merged SKIP, one split, the remainder), the first range that needs more than a SKIP is
always answered in full, so the leftmost unsettled range gets deeper every round and the
settled frontier moves right. (An earlier version reserved too little and livelocked on
tight limits, re-sending "SKIP, remainder" forever; the small-limits test pins that.)
A lying peer can break all of that, which is why :class:`Reconciler` also counts
rounds and stops at ``max_rounds``, why every incoming message is validated against
``max_ranges``/``max_ids`` before anything is allocated for it, and why every reply
respects the same limits.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import accumulate
from typing import Any

import msgpack

from crdt.errors import CrdtError
from p2p.strictwire import Limits, cut, describe, unpack

ID_LEN = 32
FINGERPRINT_LEN = 16
MAX_BOUND_LEN = ID_LEN
"""A bound longer than an id separates nothing an id-long bound could not."""

DEFAULT_MAX_RANGES = 4096
DEFAULT_MAX_IDS = 4096
DEFAULT_MAX_ROUNDS = 64

_MOD = 1 << (8 * ID_LEN)


class ReconcileError(CrdtError):
    """A reconciliation message or session is malformed; the text names what and where.

    Peer data appears in it only through ``p2p.strictwire.describe``, and the text is cut
    at ``p2p.strictwire.DETAIL_CHARS`` whatever its source.
    """

    def __init__(self, message: str) -> None:
        super().__init__(cut(message))


def _undecodable(field: str, detail: str) -> ReconcileError:
    return ReconcileError(f"undecodable message: {detail}")


def fingerprint_of(total: int, count: int) -> bytes:
    """Fingerprint of a range from the sum of its ids (as integers) and its count.

    The *sum* modulo 2**256 is used, not the XOR: with XOR an attacker can pick ids whose
    XOR is zero (or equals any target) by Gaussian elimination over GF(2), i.e. craft a
    set that collides with another one and hide changes from us. Sums have no such
    linear-algebra shortcut once hashed with the count. The hash (first 16 bytes of
    BLAKE2b-512) hides the linear structure and binds the count, so ranges of different
    sizes never share a fingerprint by construction.
    """
    data = (total % _MOD).to_bytes(ID_LEN, "big") + count.to_bytes(8, "big")
    return hashlib.blake2b(data).digest()[:FINGERPRINT_LEN]


def _check_id(value: object) -> bytes:
    if type(value) is not bytes or len(value) != ID_LEN:
        raise ReconcileError(f"id must be {ID_LEN} bytes, got {describe(value, 80)}")
    return value


class IdSet:
    """A sorted set of 32-byte ids with O(log n) range fingerprints.

    Adds are a bisect and a list insert (memmove; cheap up to ~10^5 ids). Range sums come
    from prefix sums of the ids as integers; an add only drops them and the next
    fingerprint rebuilds them in one C-level pass, because a replica adds in bursts and
    reconciles in sessions that ask for many fingerprints of an unchanged set. Ids added
    during a session may or may not be reported by it; the next session catches them.
    """

    __slots__ = ("_ids", "_ints", "_prefix")

    def __init__(self, ids: Iterable[bytes] = ()) -> None:
        self._ids: list[bytes] = sorted({_check_id(x) for x in ids})
        self._ints: list[int] = [int.from_bytes(x, "big") for x in self._ids]
        self._prefix: list[int] | None = None

    def add(self, id_: bytes) -> bool:
        """Insert ``id_``; False when it was already present."""
        _check_id(id_)
        i = bisect_left(self._ids, id_)
        if i < len(self._ids) and self._ids[i] == id_:
            return False
        self._ids.insert(i, id_)
        self._ints.insert(i, int.from_bytes(id_, "big"))
        self._prefix = None
        return True

    def update(self, ids: Iterable[bytes]) -> int:
        """Insert many ids in one sort (a snapshot's); return how many were new."""
        new = {_check_id(x) for x in ids if x not in self}
        if new:
            self._ids = sorted(new.union(self._ids))
            self._ints = [int.from_bytes(x, "big") for x in self._ids]
            self._prefix = None
        return len(new)

    def __contains__(self, item: object) -> bool:
        if type(item) is not bytes:
            return False
        i = bisect_left(self._ids, item)
        return i < len(self._ids) and self._ids[i] == item

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._ids)

    def span(self, lo: bytes = b"", hi: bytes | None = None) -> tuple[int, int]:
        """Positions ``[i, j)`` of the ids in the half-open range ``[lo, hi)``."""
        i = bisect_left(self._ids, lo)
        j = len(self._ids) if hi is None else bisect_left(self._ids, hi)
        return i, max(i, j)

    def count(self, lo: bytes = b"", hi: bytes | None = None) -> int:
        i, j = self.span(lo, hi)
        return j - i

    def between(self, lo: bytes = b"", hi: bytes | None = None) -> list[bytes]:
        """The ids in ``[lo, hi)``, sorted."""
        i, j = self.span(lo, hi)
        return self._ids[i:j]

    def fingerprint(self, lo: bytes = b"", hi: bytes | None = None) -> bytes:
        """Fingerprint of the ids in ``[lo, hi)`` (``hi=None``: to the end)."""
        return self._fingerprint_at(*self.span(lo, hi))

    def _fingerprint_at(self, i: int, j: int) -> bytes:
        prefix = self._prefix
        if prefix is None:
            prefix = self._prefix = list(accumulate(self._ints, initial=0))
        return fingerprint_of(prefix[j] - prefix[i], j - i)

    def _separator(self, m: int) -> bytes:
        """Shortest bound ``s`` with ``ids[m-1] < s <= ids[m]`` (needs ``0 < m < len``).

        Bounds are prefixes, so a split costs ~log256(n) bytes per bound, not 32.
        """
        highest_differing_bit = (self._ints[m] ^ self._ints[m - 1]).bit_length() - 1
        return self._ids[m][: ID_LEN - highest_differing_bit // 8]


class Mode(IntEnum):
    """What a range of a message says."""

    SKIP = 0
    """Nothing to do here: the range agrees or is already settled."""
    FINGERPRINT = 1
    """The sender's fingerprint of the range; the receiver compares it with its own."""
    IDS = 2
    """All of the sender's ids in the range, optionally asking for the receiver's."""


@dataclass(frozen=True, slots=True)
class Range:
    """One range of a message; its lower bound is the previous range's upper bound.

    ``upper=None`` is infinity. Only the field of ``mode`` is meaningful: ``fingerprint``
    for FINGERPRINT, ``ids`` (sorted) and ``want_reply`` for IDS.
    """

    upper: bytes | None
    mode: Mode
    fingerprint: bytes = b""
    ids: tuple[bytes, ...] = ()
    want_reply: bool = False

    def to_wire(self) -> list[Any]:
        if self.mode is Mode.SKIP:
            payload: Any = None
        elif self.mode is Mode.FINGERPRINT:
            payload = self.fingerprint
        else:
            payload = [self.want_reply, b"".join(self.ids)]
        return [self.upper, int(self.mode), payload]


@dataclass(frozen=True, slots=True)
class Message:
    """A reconciliation message: ranges that cover the whole id space, in order.

    Wire form (msgpack): ``[range, ...]`` with ``range = [upper, mode, payload]``;
    ``upper`` is bin of 1..32 bytes, strictly increasing, or nil (infinity) for the last
    range only; ``mode`` 0 SKIP has payload nil, 1 FINGERPRINT has a 16-byte bin, 2 IDS
    has ``[want_reply: bool, ids: bin]`` where ``ids`` is the sorted ids concatenated
    (32 bytes each; one bin instead of a list saves two bytes per id and makes the size
    check a single length test).
    """

    ranges: tuple[Range, ...]

    def to_wire(self) -> list[Any]:
        return [r.to_wire() for r in self.ranges]

    @classmethod
    def from_wire(
        cls, obj: object, *, max_ranges: int = DEFAULT_MAX_RANGES, max_ids: int = DEFAULT_MAX_IDS
    ) -> Message:
        """Parse and fully validate; any malformed input raises :class:`ReconcileError`."""
        if not isinstance(obj, list | tuple):
            raise ReconcileError(f"message must be a list of ranges, got {type(obj).__name__}")
        if len(obj) > max_ranges:
            raise ReconcileError(f"message has {len(obj)} ranges, limit is {max_ranges}")
        ranges = tuple(_range_from_wire(i, item) for i, item in enumerate(obj))
        msg = cls(ranges)
        check_message(msg, max_ranges=max_ranges, max_ids=max_ids)
        return msg

    @property
    def id_count(self) -> int:
        return sum(len(r.ids) for r in self.ranges)


def _range_from_wire(index: int, item: object) -> Range:
    where = f"range {index}"
    if not isinstance(item, list | tuple) or len(item) != 3:
        raise ReconcileError(f"{where}: must be [upper, mode, payload], got {describe(item, 80)}")
    upper, mode, payload = item
    if upper is not None and type(upper) is not bytes:
        raise ReconcileError(
            f"{where}: upper bound must be bytes or nil, got {describe(upper, 80)}"
        )
    if type(mode) is not int or mode not in (0, 1, 2):
        raise ReconcileError(f"{where}: unknown mode {describe(mode, 80)}")
    if mode == Mode.SKIP:
        if payload is not None:
            raise ReconcileError(f"{where}: SKIP payload must be nil, got {describe(payload, 80)}")
        return Range(upper, Mode.SKIP)
    if mode == Mode.FINGERPRINT:
        if type(payload) is not bytes:
            raise ReconcileError(f"{where}: fingerprint must be bytes, got {describe(payload, 80)}")
        return Range(upper, Mode.FINGERPRINT, fingerprint=payload)
    if not isinstance(payload, list | tuple) or len(payload) != 2:
        raise ReconcileError(
            f"{where}: IDS payload must be [want_reply, ids], got {describe(payload, 80)}"
        )
    want, blob = payload
    if type(want) is not bool:
        raise ReconcileError(f"{where}: want_reply must be a bool, got {describe(want, 80)}")
    if type(blob) is not bytes or len(blob) % ID_LEN:
        raise ReconcileError(f"{where}: ids must be a bin of whole {ID_LEN}-byte ids")
    ids = tuple(blob[k : k + ID_LEN] for k in range(0, len(blob), ID_LEN))
    return Range(upper, Mode.IDS, ids=ids, want_reply=want)


def check_message(msg: Message, *, max_ranges: int, max_ids: int) -> None:
    """Raise :class:`ReconcileError` unless ``msg`` is well-formed and within limits.

    Run on every incoming message, including ones built in memory, because the
    reconciler's arithmetic (spans, splits, differences) assumes all of it.
    """
    ranges = msg.ranges
    if type(ranges) is not tuple or not ranges:
        raise ReconcileError("message must have at least one range")
    if len(ranges) > max_ranges:
        raise ReconcileError(f"message has {len(ranges)} ranges, limit is {max_ranges}")
    total_ids = 0
    lo = b""
    last = len(ranges) - 1
    for index, r in enumerate(ranges):
        where = f"range {index}"
        if type(r) is not Range or type(r.mode) is not Mode:
            raise ReconcileError(f"{where}: not a Range")
        hi = r.upper
        if hi is None:
            if index != last:
                raise ReconcileError(f"{where}: only the last range may end at infinity")
        else:
            if type(hi) is not bytes or not 0 < len(hi) <= MAX_BOUND_LEN:
                raise ReconcileError(f"{where}: upper bound must be 1..{MAX_BOUND_LEN} bytes")
            if hi <= lo:
                raise ReconcileError(f"{where}: upper bound {hi.hex()} not above {lo.hex()}")
            if index == last:
                raise ReconcileError(f"{where}: the last range must end at infinity")
        if r.mode is not Mode.FINGERPRINT and r.fingerprint:
            raise ReconcileError(f"{where}: fingerprint given for mode {r.mode.name}")
        if r.mode is not Mode.IDS and (r.ids or r.want_reply):
            raise ReconcileError(f"{where}: ids given for mode {r.mode.name}")
        if r.mode is Mode.FINGERPRINT and (
            type(r.fingerprint) is not bytes or len(r.fingerprint) != FINGERPRINT_LEN
        ):
            raise ReconcileError(f"{where}: fingerprint must be {FINGERPRINT_LEN} bytes")
        if r.mode is Mode.IDS:
            if type(r.ids) is not tuple or type(r.want_reply) is not bool:
                raise ReconcileError(f"{where}: malformed id list")
            total_ids += len(r.ids)
            if total_ids > max_ids:
                raise ReconcileError(f"message has more than {max_ids} ids")
            prev = lo
            for k, id_ in enumerate(r.ids):
                if type(id_) is not bytes or len(id_) != ID_LEN:
                    raise ReconcileError(f"{where}: id {k} is not {ID_LEN} bytes")
                if id_ < prev or (k and id_ == prev):
                    raise ReconcileError(f"{where}: id {k} is unsorted or below the range")
                prev = id_
            if r.ids and hi is not None and r.ids[-1] >= hi:
                raise ReconcileError(f"{where}: id {r.ids[-1].hex()} is not below the bound")
        if hi is not None:
            lo = hi


def encode(msg: Message) -> bytes:
    """The bytes of ``msg`` on the wire."""
    data: bytes = msgpack.packb(msg.to_wire(), use_bin_type=True)
    return data


def decode(
    data: bytes, *, max_ranges: int = DEFAULT_MAX_RANGES, max_ids: int = DEFAULT_MAX_IDS
) -> Message:
    """Parse bytes from a peer; msgpack itself is capped so it cannot allocate past limits."""
    limits = Limits(
        max_frame=1 << 62,  # the per-item limits below bound what msgpack allocates
        max_bin=max(max_ids * ID_LEN, FINGERPRINT_LEN, MAX_BOUND_LEN),
        max_str=0,
        max_array=max(max_ranges, 3),
        max_map=0,
        max_depth=4,  # message, range, IDS payload, its ids
    )
    obj = unpack(data, _undecodable, limits)
    return Message.from_wire(obj, max_ranges=max_ranges, max_ids=max_ids)


@dataclass(frozen=True, slots=True)
class Step:
    """What one incoming message taught us and what to send back.

    ``reply`` is None when nothing is left to resolve: the session is over, and the shell
    tells the peer so (closing the stream or a "done" frame), since the peer is waiting.
    ``have`` are ids we hold that the peer lacks (we send those changes); ``need`` are
    ids the peer holds that we lack (we ask for those). Each id is reported once per
    session.
    """

    reply: Message | None
    have: list[bytes] = field(default_factory=list)
    need: list[bytes] = field(default_factory=list)


class _Builder:
    """Accumulates reply ranges, merging adjacent SKIPs (they carry no information)."""

    __slots__ = ("ids", "ranges")

    def __init__(self) -> None:
        self.ranges: list[Range] = []
        self.ids = 0

    def add(self, r: Range) -> None:
        if r.mode is Mode.SKIP and self.ranges and self.ranges[-1].mode is Mode.SKIP:
            self.ranges[-1] = r
            return
        self.ranges.append(r)
        self.ids += len(r.ids)

    def fits(self, answer: list[Range], reserve: int, max_ranges: int, max_ids: int) -> bool:
        """Whether ``answer`` plus ``reserve`` more ranges stay within the limits."""
        merges = bool(self.ranges) and self.ranges[-1].mode is Mode.SKIP
        new = len(answer) - (merges and answer[0].mode is Mode.SKIP)
        ids = self.ids + sum(len(r.ids) for r in answer)
        return len(self.ranges) + new + reserve <= max_ranges and ids <= max_ids

    def extend(self, answer: list[Range]) -> None:
        for r in answer:
            self.add(r)

    def message(self) -> Message | None:
        if all(r.mode is Mode.SKIP for r in self.ranges):
            return None
        return Message(tuple(self.ranges))


class Reconciler:
    """One side of one reconciliation session over an :class:`IdSet`.

    The initiator calls :meth:`initiate` and sends the result; from then on both sides
    call :meth:`respond` on each incoming message and send the reply until a reply is
    None. ``max_ranges``/``max_ids`` bound every message in both directions (both sides
    must use the same values); ``max_rounds`` bounds how many messages we answer.
    """

    def __init__(
        self,
        ids: IdSet,
        *,
        branching: int = 16,
        id_list_threshold: int = 32,
        max_ranges: int,
        max_ids: int,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
    ) -> None:
        if branching < 2:
            raise ReconcileError(f"branching must be at least 2, got {branching}")
        if id_list_threshold < 1:
            raise ReconcileError(f"id_list_threshold must be at least 1, got {id_list_threshold}")
        if max_ranges < branching + 2:
            # A merged SKIP, one full split and the remainder: enough for progress.
            raise ReconcileError(f"max_ranges={max_ranges} cannot hold a split plus a remainder")
        if max_ids < id_list_threshold:
            raise ReconcileError(f"max_ids={max_ids} cannot hold one id list")
        if max_rounds < 1:
            raise ReconcileError(f"max_rounds must be at least 1, got {max_rounds}")
        self._ids = ids
        self._branching = branching
        self._threshold = id_list_threshold
        self._max_ranges = max_ranges
        self._max_ids = max_ids
        self._max_rounds = max_rounds
        self._rounds = 0
        self._done = False
        self._reported: set[bytes] = set()

    @property
    def rounds(self) -> int:
        """Messages answered so far."""
        return self._rounds

    @property
    def done(self) -> bool:
        return self._done

    def initiate(self) -> Message:
        """The opening message: our fingerprint of everything, or our ids if few."""
        n = len(self._ids)
        if n <= self._threshold:
            return Message((Range(None, Mode.IDS, ids=tuple(self._ids), want_reply=True),))
        return Message((Range(None, Mode.FINGERPRINT, fingerprint=self._ids.fingerprint()),))

    def respond(self, msg: Message) -> Step:
        """Process a peer's message; raise :class:`ReconcileError` if it is malformed."""
        if self._done:
            raise ReconcileError("session already finished")
        if self._rounds >= self._max_rounds:
            raise ReconcileError(f"peer kept the session going past max_rounds={self._max_rounds}")
        self._rounds += 1
        check_message(msg, max_ranges=self._max_ranges, max_ids=self._max_ids)
        out = _Builder()
        have: list[bytes] = []
        need: list[bytes] = []
        lo = b""
        cut: bytes | None = None
        last = len(msg.ranges) - 1
        for index, r in enumerate(msg.ranges):
            i, j = self._ids.span(lo, r.upper)
            if r.mode is Mode.IDS:
                self._learn(r.ids, i, j, have, need)
            if cut is None:
                answer = self._answer(r, i, j)
                # Keep a slot for the remainder unless this range is the remainder.
                if out.fits(answer, 0 if index == last else 1, self._max_ranges, self._max_ids):
                    out.extend(answer)
                else:
                    cut = lo
            if r.upper is not None:
                lo = r.upper
        if cut is not None:
            i, j = self._ids.span(cut, None)
            fp = self._ids._fingerprint_at(i, j)
            out.add(Range(None, Mode.FINGERPRINT, fingerprint=fp))
        reply = out.message()
        if reply is None:
            self._done = True
        return Step(reply, have, need)

    def _answer(self, r: Range, i: int, j: int) -> list[Range]:
        """Our answer to one incoming range, which holds our ``ids[i:j]``."""
        ids = self._ids
        if r.mode is Mode.FINGERPRINT:
            if r.fingerprint == ids._fingerprint_at(i, j):
                return [Range(r.upper, Mode.SKIP)]
            if j - i <= self._threshold:
                return [Range(r.upper, Mode.IDS, ids=tuple(ids._ids[i:j]), want_reply=True)]
            return self._split(r.upper, i, j)
        if r.mode is Mode.IDS and r.want_reply:
            ours = ids._ids[i:j]
            if ours == list(r.ids):
                return [Range(r.upper, Mode.SKIP)]
            if j - i <= self._threshold:
                return [Range(r.upper, Mode.IDS, ids=tuple(ours))]
            # Too many to list: the peer's short list already told us both differences
            # on our side; fingerprints let the peer list its ids for smaller pieces.
            return self._split(r.upper, i, j)
        return [Range(r.upper, Mode.SKIP)]

    def _split(self, upper: bytes | None, i: int, j: int) -> list[Range]:
        """Fingerprints of ``branching`` sub-ranges holding about equal shares of ours."""
        ids = self._ids
        count = j - i
        pieces = min(self._branching, count)
        out = []
        start = i
        for k in range(1, pieces):
            m = i + count * k // pieces
            fp = ids._fingerprint_at(start, m)
            out.append(Range(ids._separator(m), Mode.FINGERPRINT, fingerprint=fp))
            start = m
        out.append(Range(upper, Mode.FINGERPRINT, fingerprint=ids._fingerprint_at(start, j)))
        return out

    def _learn(
        self, theirs: Sequence[bytes], i: int, j: int, have: list[bytes], need: list[bytes]
    ) -> None:
        """The peer listed all its ids in our ``[i, j)``: record both differences."""
        ours = self._ids._ids[i:j]
        their_set = set(theirs)
        reported = self._reported
        for id_ in ours:
            if id_ not in their_set and id_ not in reported:
                reported.add(id_)
                have.append(id_)
        for id_ in theirs:
            if id_ not in self._ids and id_ not in reported:
                reported.add(id_)
                need.append(id_)


@dataclass(frozen=True, slots=True)
class ReconcileStats:
    """Outcome of :func:`reconcile_local`: cost and the differences each side found."""

    rounds: int
    """Messages sent in total, the opening one included."""
    bytes_a_to_b: int
    bytes_b_to_a: int
    a_have: frozenset[bytes]
    a_need: frozenset[bytes]
    b_have: frozenset[bytes]
    b_need: frozenset[bytes]

    @property
    def total_bytes(self) -> int:
        return self.bytes_a_to_b + self.bytes_b_to_a


def reconcile_local(
    a: IdSet,
    b: IdSet,
    *,
    branching: int = 16,
    id_list_threshold: int = 32,
    max_ranges: int = DEFAULT_MAX_RANGES,
    max_ids: int = DEFAULT_MAX_IDS,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
) -> ReconcileStats:
    """Run a whole session between two in-memory sets, ``a`` initiating.

    Every message goes through :func:`encode`/:func:`decode`, so the sizes are the real
    wire sizes and the wire path is exercised too.
    """

    def make(ids: IdSet) -> Reconciler:
        return Reconciler(
            ids,
            branching=branching,
            id_list_threshold=id_list_threshold,
            max_ranges=max_ranges,
            max_ids=max_ids,
            max_rounds=max_rounds,
        )

    sides = (make(a), make(b))
    sent = [0, 0]
    found: list[tuple[set[bytes], set[bytes]]] = [(set(), set()), (set(), set())]
    msg: Message | None = sides[0].initiate()
    sender = 0
    rounds = 0
    while msg is not None:
        data = encode(msg)
        sent[sender] += len(data)
        rounds += 1
        receiver = 1 - sender
        step = sides[receiver].respond(decode(data, max_ranges=max_ranges, max_ids=max_ids))
        found[receiver][0].update(step.have)
        found[receiver][1].update(step.need)
        msg = step.reply
        sender = receiver
    return ReconcileStats(
        rounds=rounds,
        bytes_a_to_b=sent[0],
        bytes_b_to_a=sent[1],
        a_have=frozenset(found[0][0]),
        a_need=frozenset(found[0][1]),
        b_have=frozenset(found[1][0]),
        b_need=frozenset(found[1][1]),
    )
