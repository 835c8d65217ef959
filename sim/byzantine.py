"""Byzantine strategies over the real message types.

A Byzantine node runs a real :class:`~dagrider.process.Process` (so it knows what a
correct node would send) and a strategy rewrites its outgoing traffic. Everything it
sends is bytes on the simulated wire, decoded by the receivers' strict codec.

Every frame that deviates from what a correct node would send is marked ``attack``;
the runner counts them (and the frames a strategy withheld) so that a run can show the
fault was exercised. Stateless strategies are plain functions; stateful ones (they
learn their round, delivered vertices and coin shares from the effects of the inner
process) are small classes, one instance per node, made by :func:`by_name`. All their
randomness comes from the ``rng`` they are given, so a run replays exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import msgpack

from dagrider.codec import encode
from dagrider.coin import CoinShare
from dagrider.effects import Broadcast, Delivered, Effect, Proposed, RoundAdvanced, Send
from dagrider.messages import (
    DIGEST_BYTES,
    CatchupRequest,
    CoinShareMsg,
    Echo,
    Message,
    Ready,
    Val,
    Vertex,
    VertexRef,
    VertexRequest,
    VertexResponse,
)
from dagrider.params import Limits, Parameters
from dagrider.rbc import pack_votes


@dataclass(frozen=True)
class Outbound:
    """Bytes for some recipients; ``msg`` is the decoded form when it is well formed.

    ``attack`` marks a frame a correct node would not have sent.
    """

    to: tuple[int, ...]
    data: bytes
    msg: Message | None
    attack: bool = False


Strategy = Callable[[int, int, list[Effect], random.Random], list[Outbound]]
"""(me, n, effects of the inner process, rng) -> what actually goes on the wire."""

StrategyFactory = Callable[[Parameters, random.Random], Strategy]
"""Makes one node's strategy from the committee's parameters (limits, GC depth); what it
draws from the RNG at setup (before the run) does not depend on the protocol's code."""


def _others(me: int, n: int) -> tuple[int, ...]:
    return tuple(i for i in range(n) if i != me)


def _out(to: tuple[int, ...], msg: Message, attack: bool = False) -> Outbound:
    return Outbound(to, encode(msg), msg, attack)


def honest(me: int, n: int, effects: list[Effect], rng: random.Random) -> list[Outbound]:
    out: list[Outbound] = []
    for e in effects:
        if isinstance(e, Broadcast):
            out.append(_out(_others(me, n), e.msg))
        elif isinstance(e, Send):
            out.append(_out((e.to,), e.msg))
    return out


def silent(me: int, n: int, effects: list[Effect], rng: random.Random) -> list[Outbound]:
    return []


def _split(me: int, n: int, rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    peers = list(_others(me, n))
    rng.shuffle(peers)
    half = len(peers) // 2
    return tuple(sorted(peers[:half])), tuple(sorted(peers[half:]))


def equivocate(me: int, n: int, effects: list[Effect], rng: random.Random) -> list[Outbound]:
    """Send one vertex to half the committee and a different one to the other half."""
    out: list[Outbound] = []
    for e in effects:
        if isinstance(e, Broadcast) and isinstance(e.msg, Val):
            v = e.msg.vertex
            twin = replace(v, block=(*v.block, b"equivocation-%d" % rng.randrange(1 << 30)))
            a, b = _split(me, n, rng)
            out += [_out(a, Val(v)), _out(b, Val(twin), attack=True)]
        else:
            out += honest(me, n, [e], rng)
    return out


def conflicting_votes(me: int, n: int, effects: list[Effect], rng: random.Random) -> list[Outbound]:
    """Vote for the real digest to some peers and for a random one to the others."""
    out: list[Outbound] = []
    for e in effects:
        if isinstance(e, Broadcast) and isinstance(e.msg, Echo | Ready):
            fake = replace(e.msg, digest=rng.randbytes(32))
            a, b = _split(me, n, rng)
            out += [_out(a, e.msg), _out(b, fake, attack=True)]
        else:
            out += honest(me, n, [e], rng)
    return out


def bad_coin(me: int, n: int, effects: list[Effect], rng: random.Random) -> list[Outbound]:
    """Release coin shares whose point or proof is wrong (early, too: a wave ahead)."""
    out: list[Outbound] = []
    for e in effects:
        if isinstance(e, Broadcast) and isinstance(e.msg, CoinShareMsg):
            s = e.msg.share
            forged = [
                replace(s, share=rng.randbytes(32)),
                replace(s, response=rng.randbytes(32)),
                replace(s, wave=s.wave + 1),
            ]
            out.append(_out(_others(me, n), CoinShareMsg(rng.choice(forged)), attack=True))
        else:
            out += honest(me, n, [e], rng)
    return out


def bad_edges(me: int, n: int, effects: list[Effect], rng: random.Random) -> list[Outbound]:
    """Propose vertices that break the DAG rules in one of several ways."""
    out: list[Outbound] = []
    for e in effects:
        if isinstance(e, Broadcast) and isinstance(e.msg, Val):
            out.append(_out(_others(me, n), Val(_break_edges(e.msg.vertex, rng)), attack=True))
        else:
            out += honest(me, n, [e], rng)
    return out


def _break_edges(v: Vertex, rng: random.Random) -> Vertex:
    strong = v.strong_edges
    fake = VertexRef(max(0, v.round - 1), v.source, rng.randbytes(32))
    choice = rng.randrange(5)
    if choice == 0:  # too few strong edges
        return replace(v, strong_edges=strong[: len(strong) // 2])
    if choice == 1:  # weak edge into round r-1
        return replace(v, weak_edges=(*v.weak_edges, strong[0]))
    if choice == 2:  # strong edge to a vertex nobody delivered: stays buffered forever
        return replace(v, strong_edges=(*strong[:-1], replace(strong[-1], digest=fake.digest)))
    if choice == 3 and v.round > 2:  # weak edge to an already reachable vertex
        return replace(v, weak_edges=(VertexRef(v.round - 2, 0, rng.randbytes(32)),))
    return replace(v, strong_edges=(*strong, strong[0]))  # duplicate strong edge


def garbage(me: int, n: int, effects: list[Effect], rng: random.Random) -> list[Outbound]:
    """Behave honestly but also spray malformed, oversize and mistyped frames."""
    out = honest(me, n, effects, rng)
    if effects:
        target = (rng.choice(_others(me, n)),)
        junk = [
            rng.randbytes(rng.randrange(1, 64)),
            b"\x81\xa1t\x01" + rng.randbytes(8),
            encode(Echo(1, 0, b"\x00" * 32))[:-3],
            b"\xc6\x7f\xff\xff\xff",  # bin32 header announcing 2 GiB
            b"\xdc\xff\xff" + b"\xc0" * 16,
        ]
        out.append(Outbound(target, rng.choice(junk), None, attack=True))
    return out


# --------------------------------------------------------------------------- stateful


def _own_round(effects: list[Effect], current: int) -> int:
    """The inner process's round after ``effects`` (it proposes or skips into it)."""
    for e in effects:
        if isinstance(e, Proposed):
            current = max(current, e.vertex.round)
        elif isinstance(e, RoundAdvanced):
            current = max(current, e.round)
    return current


def _fake_strong_edges(rnd: int, n: int, rng: random.Random) -> tuple[VertexRef, ...]:
    """2f+1 well-formed strong edges into round ``rnd - 1`` to vertices that do not exist."""
    quorum = 2 * ((n - 1) // 3) + 1
    sources = sorted(rng.sample(range(n), quorum))
    return tuple(VertexRef(rnd - 1, s, rng.randbytes(DIGEST_BYTES)) for s in sources)


FUTURE_OFFSETS = (27, 28, 100, 10_000)
"""How far ahead ``future-vertex`` goes: 27 and 28 sit just past half the default GC
depth (50), where a process used to decide it was far behind its peers and stop
proposing; 100 is well inside any window; 10 000 is the edge of the RBC lookahead."""


@dataclass
class FutureVertex:
    """Honest, except that once (at round >= ``start_round``) it broadcasts a well-formed
    VAL of its own vertex ``offset`` rounds ahead, whose 2f+1 strong edges name vertices
    that do not exist. Correct nodes deliver it (it is well formed and its source sent
    it) and then hold a vertex from far in the future. :func:`by_name` draws ``offset``
    from :data:`FUTURE_OFFSETS` when it makes the node.
    """

    offset: int = 28
    start_round: int = 8
    round: int = 0
    sent: Vertex | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        self.detail = f"offset {self.offset}, not sent yet"

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out = honest(me, n, effects, rng)
        self.round = _own_round(effects, self.round)
        if self.sent is None and self.round >= self.start_round:
            rnd = self.round + self.offset
            self.sent = Vertex(rnd, me, (), _fake_strong_edges(rnd, n, rng), ())
            self.detail = f"VAL for round {rnd} (own round {self.round} + {self.offset})"
            out.append(_out(_others(me, n), Val(self.sent), attack=True))
        return out


class _BigBlock:
    """One large block, built once and shared by every vertex made from it (so the
    simulator's own memory stays small), with a fast path that packs the block once
    instead of once per vertex.

    ``max_txs_per_vertex`` transactions of equal size, as large as ``block_bytes`` in
    all allows and so that a VAL carrying the block and ``edges`` references stays just
    under ``max_message_bytes``.
    """

    MARGIN = 4096  # room for larger round numbers than the probe's

    def __init__(self, limits: Limits, block_bytes: int, edges: int, rng: random.Random) -> None:
        count = limits.max_txs_per_vertex
        probe_tx = 256  # a bin16 header (3 bytes) from 256 bytes on
        ref = VertexRef(2**40, 0, bytes(DIGEST_BYTES))
        probe = Vertex(2**40, 0, (b"\x00" * probe_tx,) * count, (ref,) * edges, ())
        fixed = len(encode(Val(probe))) - count * (probe_tx + 3)
        size = (limits.max_message_bytes - self.MARGIN - fixed) // count - 3
        size = max(1, min(size, limits.max_tx_bytes, block_bytes // count))
        self.block: tuple[bytes, ...] = tuple(rng.randbytes(size) for _ in range(count))
        self.packed: bytes = msgpack.packb(list(self.block), use_bin_type=True)
        self.fast: bool | None = None  # None: not checked against the slow path yet

    def vertex(self, rnd: int, source: int, strong: tuple[VertexRef, ...]) -> tuple[Vertex, bytes]:
        """The vertex and its encoded VAL (the same bytes as ``encode(Val(vertex))``)."""
        if self.fast:
            return self._fast(rnd, source, strong)
        v = Vertex(rnd, source, self.block, strong, ())
        data = encode(Val(v))
        if self.fast is None:  # first use: the fast path must agree with the real one
            try:
                quick, quick_data = self._fast(rnd, source, strong)
                self.fast = vars(quick) == vars(v) and quick_data == data
            except Exception:  # the vertex layout changed: stay on the slow path
                self.fast = False
        return v, data

    def _fast(self, rnd: int, source: int, strong: tuple[VertexRef, ...]) -> tuple[Vertex, bytes]:
        # canonical body: [round, source, block, strong, weak]; block packed once.
        pack = msgpack.Packer(use_bin_type=True)
        body = b"".join(
            [
                pack.pack_array_header(5),
                pack.pack(rnd),
                pack.pack(source),
                self.packed,
                pack.pack([[e.round, e.source, e.digest] for e in strong]),
                pack.pack([]),
            ]
        )
        values: dict[str, object] = {
            "round": rnd,
            "source": source,
            "block": self.block,
            "strong_edges": strong,
            "weak_edges": (),
            "digest": _digest_of_body(body),
            "size": len(body),  # newer Vertex: bytes of the canonical encoding
        }
        v: Vertex = object.__new__(Vertex)
        for f in dataclasses.fields(Vertex):
            object.__setattr__(v, f.name, values[f.name])  # KeyError: unknown layout
        data = b"".join([pack.pack_map_header(3), pack.pack("t"), pack.pack(1), pack.pack("x")])
        data += body + pack.pack("v") + pack.pack(1)
        return v, data


def _digest_of_body(packed_body: bytes) -> bytes:
    """``vertex_digest`` from the packed canonical body (checked against it on first use)."""
    h = hashlib.blake2b(packed_body, digest_size=DIGEST_BYTES, person=b"dagrider-vertex")
    return h.digest()


@dataclass
class Flood:
    """Honest, plus traffic meant to exhaust memory and bandwidth, all well formed:

    * VALs of its own with ``max_txs_per_vertex`` transactions for rounds ``round+2``
      up to ``round+ahead`` with random strong edges: at most ``vals_per_round`` new
      ones each time it proposes, ``max_vals`` per run. They alternate between the
      largest block the codec lets through (just under ``max_message_bytes``) and, when
      the limits have ``max_block_bytes``, the largest block a correct node may store;
    * ECHO and READY for random digests in the future instances of every source;
    * copies of its real coin share with the wave changed to future waves (they fail
      verification, but only once enough shares for the wave are pending).

    It withholds its requests for its own flooded instances (it knows the vertices), so
    that correct nodes' answers do not dominate the simulator's time.
    """

    limits: Limits = field(default_factory=Limits)
    ahead: int = 40
    vals_per_round: int = 4
    max_vals: int = 48
    max_votes: int = 4_000
    coin_waves_ahead: int = 32
    max_coin_shares: int = 256
    round: int = 0
    flooded_to: int = 0
    vals: int = 0
    val_bytes: int = 0
    votes: int = 0
    coin_shares: int = 0
    coin_waves: set[int] = field(default_factory=set)
    flooded: set[int] = field(default_factory=set)
    blocks: list[_BigBlock] = field(default_factory=list)
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out: list[Outbound] = []
        for e in effects:
            if (
                isinstance(e, Send)
                and isinstance(e.msg, VertexRequest)
                and e.msg.source == me
                and e.msg.round in self.flooded
            ):
                continue  # withheld: we know our own flooded vertex
            out += honest(me, n, [e], rng)
            if isinstance(e, Broadcast) and isinstance(e.msg, CoinShareMsg):
                out += self._coin(me, n, e.msg.share)
        proposed = any(isinstance(e, Proposed) for e in effects)
        self.round = _own_round(effects, self.round)
        if proposed:
            out += self._vals_and_votes(me, n, rng)
        self.detail = (
            f"{self.vals} VALs ({self.val_bytes / 1e6:.0f} MB), {self.votes} votes, "
            f"{self.coin_shares} coin shares"
        )
        return out

    def _vals_and_votes(self, me: int, n: int, rng: random.Random) -> list[Outbound]:
        out: list[Outbound] = []
        others = _others(me, n)
        first = max(self.flooded_to, self.round + 1) + 1
        last = min(self.round + self.ahead, first + self.vals_per_round - 1)
        for rnd in range(first, last + 1):
            if self.vals >= self.max_vals:
                break
            if not self.blocks:
                self.blocks = self._make_blocks(n, rng)
            big = self.blocks[self.vals % len(self.blocks)]
            v, data = big.vertex(rnd, me, _fake_strong_edges(rnd, n, rng))
            out.append(Outbound(others, data, Val(v), attack=True))
            self.val_bytes += len(data)
            self.flooded.add(rnd)
            self.flooded_to = rnd
            self.vals += 1
            for source in range(n):
                if self.votes >= self.max_votes:
                    break
                for vote in (Echo, Ready):
                    out.append(_out(others, vote(rnd, source, rng.randbytes(32)), attack=True))
                    self.votes += 1
        return out

    def _make_blocks(self, n: int, rng: random.Random) -> list[_BigBlock]:
        edges = 2 * ((n - 1) // 3) + 1
        limits = self.limits
        blocks = [_BigBlock(limits, limits.max_message_bytes, edges, rng)]
        stored: object = getattr(limits, "max_block_bytes", None)  # newer Limits only
        if isinstance(stored, int) and stored < limits.max_message_bytes:
            blocks.append(_BigBlock(limits, stored, edges, rng))
        return blocks

    def _coin(self, me: int, n: int, share: CoinShare) -> list[Outbound]:
        out: list[Outbound] = []
        for wave in range(share.wave + 1, share.wave + 1 + self.coin_waves_ahead):
            if self.coin_shares >= self.max_coin_shares:
                break
            if wave in self.coin_waves:
                continue
            self.coin_waves.add(wave)
            self.coin_shares += 1
            out.append(_out(_others(me, n), CoinShareMsg(replace(share, wave=wave)), attack=True))
        return out


@dataclass
class RequestAmplification:
    """Honest, plus: every delivered vertex carrying at least ``min_block_bytes`` of
    transactions is requested (``VertexRequest``) from every peer ``repeats`` times,
    spread over later calls (``per_call`` vertices per call). Each request is a few
    dozen bytes; each answer is the whole vertex.
    """

    repeats: int = 20
    min_block_bytes: int = 1024
    per_call: int = 2
    queue: deque[tuple[VertexRequest, int]] = field(default_factory=deque)
    sent: int = 0
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out = honest(me, n, effects, rng)
        for e in effects:
            if isinstance(e, Delivered) and e.vertex.source != me:
                v = e.vertex
                if sum(len(tx) for tx in v.block) >= self.min_block_bytes:
                    self.queue.append((VertexRequest(v.round, v.source, v.digest), self.repeats))
        others = _others(me, n)
        for _ in range(min(self.per_call, len(self.queue))):
            req, left = self.queue.popleft()
            out.append(_out(others, req, attack=True))
            self.sent += 1
            if left > 1:
                self.queue.append((req, left - 1))
        self.detail = f"{self.sent} request broadcasts"
        return out


@dataclass
class MaxWeakEdges:
    """Honest, except that its vertices carry as many weak edges as ``max_edges``
    allows: one per (round, source) from round-2 down to the GC depth, with random
    digests (vertices that do not exist), so they stay buffered until GC.
    """

    limits: Limits = field(default_factory=Limits)
    gc_depth: int = 50
    padded: int = 0
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out: list[Outbound] = []
        for e in effects:
            if isinstance(e, Broadcast) and isinstance(e.msg, Val):
                v = self._pad(e.msg.vertex, n, rng)
                out.append(_out(_others(me, n), Val(v), attack=v is not e.msg.vertex))
            else:
                out += honest(me, n, [e], rng)
        self.detail = f"{self.padded} padded vertices"
        return out

    def _pad(self, v: Vertex, n: int, rng: random.Random) -> Vertex:
        room = self.limits.max_edges - len(v.strong_edges) - len(v.weak_edges)
        taken = {(e.round, e.source) for e in v.weak_edges}
        extra: list[VertexRef] = []
        low = max(1, v.round - self.gc_depth)
        for rnd in range(v.round - 2, low - 1, -1):
            for source in range(n):
                if len(extra) >= room:
                    break
                if (rnd, source) not in taken:
                    extra.append(VertexRef(rnd, source, rng.randbytes(DIGEST_BYTES)))
        if not extra:
            return v
        self.padded += 1
        return replace(v, weak_edges=(*v.weak_edges, *extra))


@dataclass
class CatchupFlood:
    """Honest, except that with every step it also asks every peer to replay
    ``rounds`` rounds from its store (a CatchupRequest from round 0 or a random round
    at or below its own, the largest count the codec allows): a member that turns small
    requests into other members' whole stores. Correct members answer a peer at most
    once per catch-up period after a burst (:class:`dagrider.catchup.CatchupServer`),
    cover at most ``chunk_rounds`` rounds and 16 MiB per answer, and report the excess.
    """

    rounds: int = 100_000
    round: int = 0
    sent: int = 0
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out = honest(me, n, effects, rng)
        self.round = _own_round(effects, self.round)
        start = 0 if rng.random() < 0.5 else rng.randint(0, max(0, self.round))
        out.append(_out(_others(me, n), CatchupRequest(start, self.rounds), attack=True))
        self.sent += 1
        self.detail = f"{self.sent} catch-up request broadcasts"
        return out


# ------------------------------------------------- one field at a time, its worst value


def _fake_digest(rng: random.Random) -> bytes:
    return rng.randbytes(DIGEST_BYTES)


@dataclass
class DoubleVote:
    """Honest, except that every vote it casts also goes to every peer a second time
    for a random digest: two ECHOs (or READYs) from one voter for one instance, which
    Bracha counts once and reports. Every other step the votes go out packed as a
    correct node's flush packs them (:func:`dagrider.rbc.pack_votes`: one
    :class:`~dagrider.messages.Votes` frame for the real ones, one for the fakes; a
    lone vote stays lone), else as lone frames, so both receiving paths meet them.
    """

    steps: int = 0
    doubled: int = 0
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out: list[Outbound] = []
        real: list[Echo | Ready] = []
        for e in effects:
            if isinstance(e, Broadcast) and isinstance(e.msg, Echo | Ready):
                real.append(e.msg)
            else:
                out += honest(me, n, [e], rng)
        if not real:
            return out
        self.steps += 1
        fake = [replace(v, digest=_fake_digest(rng)) for v in real]
        others = _others(me, n)
        if self.steps % 2:  # as a correct flush packs them (a lone vote stays lone)
            out += [_out(others, m) for m in pack_votes(real)]
            out += [_out(others, m, attack=True) for m in pack_votes(fake)]
        else:
            out += [_out(others, v) for v in real]
            out += [_out(others, v, attack=True) for v in fake]
        self.doubled += len(fake)
        self.detail = f"{self.doubled} votes doubled with a random digest"
        return out


@dataclass
class DoubleVal:
    """Honest, plus three misuses of VAL, each to every peer:

    * a second vertex for the round it just proposed in (another block), right after
      the first: a peer that echoed the first reports a second VAL;
    * one step later, that second vertex again: a peer that delivered the first by then
      reports conflicting proposals for a delivered round;
    * the last vertex another member proposed that its process delivered, sent as a VAL
      of its own (only the source's VAL counts: reported, never echoed).
    """

    pending: list[Vertex] = field(default_factory=list)  # twins to send again next step
    relay: Vertex | None = None
    twins: int = 0
    relayed: int = 0
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out = honest(me, n, effects, rng)
        others = _others(me, n)
        again, self.pending = self.pending, []
        out += [_out(others, Val(v), attack=True) for v in again]
        for e in effects:
            if isinstance(e, Delivered) and e.vertex.source != me:
                self.relay = e.vertex
            elif isinstance(e, Broadcast) and isinstance(e.msg, Val):
                v = e.msg.vertex
                twin = replace(v, block=(*v.block, b"twin-%d" % rng.randrange(1 << 30)))
                out.append(_out(others, Val(twin), attack=True))
                self.pending.append(twin)
                self.twins += 1
                if self.relay is not None:
                    out.append(_out(others, Val(self.relay), attack=True))
                    self.relay = None
                    self.relayed += 1
        self.detail = f"{self.twins} second VALs, {self.relayed} VALs of other sources"
        return out


EDGE_RULES = (
    "strong edge into round r-2",
    "weak edge beyond the GC depth",
    "two weak edges to one slot",
    "weak edge to a vertex its strong edges reach",
)


@dataclass
class EdgeRules:
    """Honest, except that its proposals each break one DAG rule that the codec cannot
    see, in rotation (:data:`EDGE_RULES`): a strong edge into round r-2, a weak edge to
    a round beyond the GC depth, two weak edges to one (round, source), and a weak edge
    to a real vertex that its strong edges already reach. Peers refuse the first three
    before echoing them; the last is delivered and inserted (a redundant edge changes
    no path), and reported by every peer that inserts it.
    """

    gc_depth: int = 50
    proposals: int = 0
    broken: dict[str, int] = field(default_factory=dict)
    delivered: dict[bytes, Vertex] = field(default_factory=dict)
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out: list[Outbound] = []
        for e in effects:
            if isinstance(e, Delivered):
                self._remember(e.vertex)
            if isinstance(e, Broadcast) and isinstance(e.msg, Val) and e.msg.vertex.round > 2:
                v, rule = self._break(e.msg.vertex)
                out.append(_out(_others(me, n), Val(v), attack=v is not e.msg.vertex))
                if v is not e.msg.vertex:
                    self.broken[rule] = self.broken.get(rule, 0) + 1
            else:
                out += honest(me, n, [e], rng)
        self.detail = ", ".join(f"{k} x{c}" for k, c in sorted(self.broken.items()))
        return out

    def _remember(self, v: Vertex) -> None:
        self.delivered[v.digest] = v
        if len(self.delivered) > 64 * 4:  # a few rounds are enough: drop the oldest
            low = min(u.round for u in self.delivered.values())
            self.delivered = {d: u for d, u in self.delivered.items() if u.round > low}

    def _break(self, v: Vertex) -> tuple[Vertex, str]:
        rule = EDGE_RULES[self.proposals % len(EDGE_RULES)]
        self.proposals += 1
        strong = v.strong_edges
        if rule == EDGE_RULES[0]:
            low = replace(strong[-1], round=v.round - 2)
            return replace(v, strong_edges=(*strong[:-1], low)), rule
        if rule == EDGE_RULES[1]:
            # Genesis while the window still reaches round 1, else one round past it.
            rnd = max(0, v.round - self.gc_depth - 1)
            far = VertexRef(rnd, 0, b"\x00" * DIGEST_BYTES)
            return replace(v, weak_edges=(*v.weak_edges, far)), rule
        if rule == EDGE_RULES[2]:
            twice = VertexRef(v.round - 2, 0, b"\x01" * DIGEST_BYTES)
            return replace(v, weak_edges=(*v.weak_edges, twice, twice)), rule
        parent = self.delivered.get(strong[0].digest)
        taken = {(e.round, e.source) for e in v.weak_edges}
        if parent is None or (parent.strong_edges[0].round, parent.strong_edges[0].source) in taken:
            return v, rule
        redundant = parent.strong_edges[0]  # round r-2, reached through ``parent``
        return replace(v, weak_edges=(*v.weak_edges, redundant)), rule


@dataclass
class BadFetch:
    """The fetch path's worst values: it answers every ``VertexRequest`` with a forged
    vertex of the asked (round, source) instead of the real one (the asker holds the
    delivered digest and reports the mismatch), and withholds its own VAL from one peer
    per round so that a peer has to fetch. For every vertex it delivers it also asks a
    peer for that digest under a wrong round or source, and sends a random peer an
    unasked vertex for an instance nobody delivered.
    """

    forged: int = 0
    odd_requests: int = 0
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out: list[Outbound] = []
        others = _others(me, n)
        for e in effects:
            if isinstance(e, Send) and isinstance(e.msg, VertexResponse):
                v = e.msg.vertex
                fake = replace(v, block=(*v.block, b"forged-%d" % rng.randrange(1 << 30)))
                out.append(_out((e.to,), VertexResponse(fake), attack=True))
                self.forged += 1
            elif isinstance(e, Broadcast) and isinstance(e.msg, Val):
                skip = rng.choice(others)
                out.append(_out(tuple(p for p in others if p != skip), e.msg))
            else:
                out += honest(me, n, [e], rng)
            if isinstance(e, Delivered) and e.vertex.source != me:
                v = e.vertex
                to = (rng.choice(others),)
                wrong = (
                    VertexRequest(v.round + 1, v.source, v.digest)
                    if rng.random() < 0.5
                    else VertexRequest(v.round, (v.source + 1) % n, v.digest)
                )
                unasked = Vertex(v.round + 1, v.source, (b"unasked",), v.strong_edges, ())
                out += [_out(to, wrong, attack=True), _out(to, VertexResponse(unasked), True)]
                self.odd_requests += 1
        self.detail = f"{self.forged} forged answers, {self.odd_requests} odd requests"
        return out


@dataclass
class CoinMisuse:
    """Honest, plus with every coin share it releases: the share signed by another
    member (only a member's own share counts from it: reported before any curve work),
    the share moved a thousand waves ahead (beyond any coin a process keeps), and its
    last four earlier shares again (for waves decided by now, or nearly)."""

    released: list[CoinShare] = field(default_factory=list)
    misused: int = 0
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        out = honest(me, n, effects, rng)
        others = _others(me, n)
        for e in effects:
            if not (isinstance(e, Broadcast) and isinstance(e.msg, CoinShareMsg)):
                continue
            s = e.msg.share
            forged = [replace(s, signer=rng.choice(others)), replace(s, wave=s.wave + 1000)]
            forged += self.released[-4:]
            out += [_out(others, CoinShareMsg(x), attack=True) for x in forged]
            self.misused += len(forged)
            self.released.append(s)
        self.detail = f"{self.misused} misused coin shares"
        return out


@dataclass
class Replay:
    """Honest, plus two of its own earlier frames again with every step, drawn
    uniformly from everything it sent so far (a reservoir of ``keep`` frames), to a
    random peer, as raw bytes for its decoder: stale VALs and votes (for rounds the
    peer may have collected), repeated requests and coin shares of decided waves. A
    correct network may duplicate frames; a correct member does not repeat requests.
    """

    keep: int = 256
    per_step: int = 2
    seen: int = 0
    frames: list[Outbound] = field(default_factory=list)
    replayed: int = 0
    detail: str = ""

    def __call__(
        self, me: int, n: int, effects: list[Effect], rng: random.Random
    ) -> list[Outbound]:
        fresh = honest(me, n, effects, rng)
        again: list[Outbound] = []
        for _ in range(self.per_step if self.frames else 0):
            old = rng.choice(self.frames)  # as bytes: the peer's strict decoder reads them
            again.append(Outbound((rng.choice(_others(me, n)),), old.data, None, True))
        self.replayed += len(again)
        for ob in fresh:  # reservoir sampling: every frame so far equally likely kept
            self.seen += 1
            if len(self.frames) < self.keep:
                self.frames.append(ob)
            elif (k := rng.randrange(self.seen)) < self.keep:
                self.frames[k] = ob
        self.detail = f"{self.replayed} frames replayed"
        return fresh + again


def _stateless(strategy: Strategy) -> StrategyFactory:
    return lambda params, rng: strategy


# Strategies that act only on client transactions (request-amplification asks for
# vertices with at least 1 KiB of them): a run without client load never meets them.
NEEDS_CLIENT_LOAD = frozenset({"request-amplification"})

STRATEGIES: dict[str, StrategyFactory] = {
    "silent": _stateless(silent),
    "equivocate": _stateless(equivocate),
    "conflicting-votes": _stateless(conflicting_votes),
    "bad-coin": _stateless(bad_coin),
    "bad-edges": _stateless(bad_edges),
    "garbage": _stateless(garbage),
    "future-vertex": lambda params, rng: FutureVertex(offset=rng.choice(FUTURE_OFFSETS)),
    "flood": lambda params, rng: Flood(limits=params.limits),
    "request-amplification": lambda params, rng: RequestAmplification(),
    "max-weak-edges": lambda params, rng: MaxWeakEdges(params.limits, params.gc_depth),
    "catchup-flood": lambda params, rng: CatchupFlood(),
    "double-vote": lambda params, rng: DoubleVote(),
    "double-val": lambda params, rng: DoubleVal(),
    "edge-rules": lambda params, rng: EdgeRules(params.gc_depth),
    "bad-fetch": lambda params, rng: BadFetch(),
    "coin-misuse": lambda params, rng: CoinMisuse(),
    "replay": lambda params, rng: Replay(),
}


def by_name(
    name: str, rng: random.Random, params: Parameters | None = None, client_load: bool = True
) -> tuple[str, Strategy]:
    """A new strategy instance by name; ``mixed`` draws one per node from the seeded RNG
    (without client load, only among those that do not need it)."""
    params = params or Parameters()
    if name == "mixed":
        pick = rng.choice(
            sorted(s for s in STRATEGIES if client_load or s not in NEEDS_CLIENT_LOAD)
        )
        return pick, STRATEGIES[pick](params, rng)
    if name == "none":
        return "honest", honest
    try:
        return name, STRATEGIES[name](params, rng)
    except KeyError:
        choices = sorted([*STRATEGIES, "mixed", "none"])
        raise ValueError(f"unknown Byzantine strategy {name!r}; choose from {choices}") from None


def detail(strategy: Strategy) -> str:
    """What a stateful strategy has done so far (empty for stateless ones)."""
    text = getattr(strategy, "detail", "")
    return text if isinstance(text, str) else ""
