"""Byzantine replicas of the CRDT store, for :mod:`sim.crdt_runner`.

Each Byzantine replica runs a real :class:`~crdt.replica.Replica` and
:class:`~crdt.sync.SyncEngine` (so it knows what a correct replica would send, and can
lie plausibly about it) and a behaviour that rewrites or adds to its traffic. Every
attack is bytes on the simulated wire, checked by the receivers' shipped decoders; no
attack reaches into a correct replica's memory. The behaviours map to the threats the
store claims to withstand (see :mod:`crdt.replica` and :mod:`crdt.sync`):

* ``forger``: changes under a correct author's key with a bad signature, tampered
  copies of real changes, validly signed changes by a key outside the access policy,
  writes to a namespace it may not write, and authorised changes that depend on those.
* ``equivocator``: an authorised writer that signs two different changes on the same
  heads and sends one to half of its peers and the other to the rest.
* ``withholder``: pushes the tip of a private chain whose history it never reveals
  (except, now and then, to one peer), ignores wants, abandons sessions half way.
* ``garbage``: random bytes, and mutated (flipped, truncated, extended, re-typed)
  copies of valid sync messages.
* ``liar``: well-formed but random reconciliation messages and heads.

Everything is a deterministic function of the simulator's RNG, passed in per call.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import msgpack

from crdt.change import VERSION, Change, KeySigner, sign_change
from crdt.document import Intent, prepare_ops
from crdt.errors import InvalidOperation
from crdt.limits import CrdtLimits
from crdt.reconcile import FINGERPRINT_LEN, ID_LEN, Message, Mode, Range
from crdt.replica import AccessPolicy, Replica
from crdt.sync import (
    MSG_CHANGES,
    MSG_SESSION,
    MSG_SNAPSHOT_OFFER,
    MSG_SNAPSHOT_PART,
    MSG_SNAPSHOT_WANT,
    MSG_WANT,
    SYNC_VERSION,
    SyncEngine,
    SyncResult,
    encode_changes,
    encode_session,
)


@dataclass(frozen=True, slots=True)
class Packet:
    """Bytes a Byzantine replica puts on the wire for one peer."""

    dst: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Setting:
    """What a Byzantine replica knows when it starts: plain config, like a correct one.

    ``victims`` are the public keys of the correct replicas (public knowledge: they are
    in the access policy); ``restricted_doc`` is a document this replica may not write.
    """

    me: int
    peers: tuple[int, ...]
    seed: bytes
    policy: AccessPolicy
    victims: tuple[bytes, ...]
    docs: tuple[str, ...]
    restricted_doc: str
    limits: CrdtLimits


def changes_message(encoded: list[bytes]) -> bytes:
    """A ``MSG_CHANGES`` frame in the sync wire format (see :mod:`crdt.sync`)."""
    return encode_changes(encoded)


def raw_change(
    doc: str, deps: list[bytes], author: bytes, hlc: int, ops: list[Any], signature: bytes
) -> bytes:
    """The canonical encoding of a change with an arbitrary (e.g. wrong) signature.

    Canonical on purpose: the receiver must get past every structural check to the
    signature check, which is the one a forger attacks.
    """
    out: bytes = msgpack.packb(
        [VERSION, doc, sorted(set(deps)), author, hlc, ops, signature], use_bin_type=True
    )
    return out


def _kind_of(data: bytes) -> int | None:
    """The message kind of a sync frame, or None if it is not one."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # any garbage: not a frame
        return None
    if isinstance(obj, list) and len(obj) >= 2 and obj[0] == SYNC_VERSION and type(obj[1]) is int:
        return obj[1]
    return None


class ByzantineReplica:
    """The honest baseline: a real replica that writes, pushes and syncs correctly.

    Subclasses override :meth:`attack` (unsolicited traffic on every tick) and
    :meth:`filter` (what happens to the traffic the honest engine produces). Writing
    honestly too makes a Byzantine author's valid changes part of what must converge.
    """

    kind: ClassVar[str] = "honest"

    def __init__(self, setting: Setting) -> None:
        self.s = setting
        self.signer = KeySigner(setting.seed)
        self.replica = Replica(setting.policy, setting.limits)
        self.engine = SyncEngine(self.replica)
        self.created = 0
        self.attacks = 0
        self.equivocations: list[tuple[bytes, bytes]] = []

    # -- driven by the simulator ---------------------------------------------------------

    def receive(self, src: int, data: bytes, rng: random.Random) -> list[Packet]:
        return self.filter(src, data, self.engine.receive(src, data), rng)

    def tick(self, now_ms: int, rng: random.Random) -> list[Packet]:
        out: list[Packet] = []
        if rng.random() < 0.3:
            out += self._honest_write(now_ms, rng)
        if rng.random() < 0.3:
            peer = rng.choice(self.s.peers)
            out += self._sends(self.engine.start_session(peer))
        out += self.attack(now_ms, rng)
        return out

    def peer_gone(self, peer: int) -> None:
        self.engine.peer_gone(peer)

    # -- behaviour hooks ---------------------------------------------------------------

    def attack(self, now_ms: int, rng: random.Random) -> list[Packet]:
        return []

    def filter(self, src: int, data: bytes, result: SyncResult, rng: random.Random) -> list[Packet]:
        return self._sends(result)

    # -- helpers -------------------------------------------------------------------------

    def _sends(self, result: SyncResult) -> list[Packet]:
        return [Packet(cast(int, s.peer), s.payload) for s in result.sends]

    def _to_all(self, data: bytes, peers: tuple[int, ...] | None = None) -> list[Packet]:
        return [Packet(p, data) for p in (self.s.peers if peers is None else peers)]

    def _ops(self, doc: str, author: bytes, rng: random.Random) -> list[Any]:
        """Valid operations for ``doc`` (an LWW set or a counter bump)."""
        if rng.random() < 0.5:
            intent = Intent(("title",), "set", "lww", f"byz-{rng.randrange(1 << 20)}")
        else:
            intent = Intent(("views",), "inc", "pncounter", rng.randrange(1, 9))
        return prepare_ops(self.replica.document(doc), [intent], author)

    def _clock(self, deps: tuple[bytes, ...], now_ms: int) -> int:
        """A clock later than every dependency (what a correct author would pick)."""
        floor = 0
        for d in deps:
            held = self.replica.get(d)
            if held is not None:
                floor = max(floor, held.hlc)
        return max(now_ms << 16, floor + 1)

    def _honest_write(self, now_ms: int, rng: random.Random) -> list[Packet]:
        doc = rng.choice(self.s.docs)
        try:
            ops = self._ops(doc, self.signer.public_key, rng)
            change, _ = self.replica.create(self.signer, doc, ops, now_ms)
        except InvalidOperation:
            return []
        self.created += 1
        return self._sends(self.engine.push(change, self.s.peers))

    def _heads(self) -> tuple[bytes, ...]:
        return self.replica.heads[: self.s.limits.max_deps]


class Forger(ByzantineReplica):
    """Changes that must never be applied by a correct replica, in several disguises."""

    kind: ClassVar[str] = "forger"

    def attack(self, now_ms: int, rng: random.Random) -> list[Packet]:
        if rng.random() < 0.4:
            return []
        self.attacks += 1
        doc = rng.choice(self.s.docs)
        deps = self._heads()
        hlc = self._clock(deps, now_ms)
        variant = rng.randrange(5)
        encoded: list[bytes]
        if variant == 0:  # a correct author's key, a made-up signature
            victim = rng.choice(self.s.victims)
            ops = self._ops(doc, victim, rng)
            encoded = [raw_change(doc, list(deps), victim, hlc, ops, rng.randbytes(64))]
        elif variant == 1:  # a real change of a correct author, tampered, old signature
            real = self._victim_change(rng)
            if real is None:
                return []
            ops = self._ops(real.doc, real.author, rng)
            encoded = [
                raw_change(real.doc, list(real.deps), real.author, real.hlc, ops, real.signature)
            ]
        elif variant == 2:  # validly signed by a key nobody authorised
            outsider = KeySigner(rng.randbytes(32))
            ops = self._ops(doc, outsider.public_key, rng)
            encoded = [sign_change(outsider, doc, deps, hlc, ops, self.s.limits).encoded]
        elif variant == 3:  # our own (authorised) key, a namespace we may not write
            doc = self.s.restricted_doc
            ops = self._ops(doc, self.signer.public_key, rng)
            encoded = [sign_change(self.signer, doc, deps, hlc, ops, self.s.limits).encoded]
        else:  # an authorised change that depends on an unauthorised one
            outsider = KeySigner(rng.randbytes(32))
            bad = sign_change(
                outsider, doc, deps, hlc, self._ops(doc, outsider.public_key, rng), self.s.limits
            )
            ops = self._ops(doc, self.signer.public_key, rng)
            child = sign_change(self.signer, doc, (bad.hash,), hlc + 1, ops, self.s.limits)
            encoded = [bad.encoded, child.encoded]
            if rng.random() < 0.5:
                encoded.reverse()
        return self._to_all(changes_message(encoded))

    def _victim_change(self, rng: random.Random) -> Change | None:
        victims = set(self.s.victims)
        held = [c for c in self.replica.ordered(self.replica.heads) if c.author in victims]
        return rng.choice(held) if held else None


class Equivocator(ByzantineReplica):
    """Two different changes on the same heads, each to a different half of the peers."""

    kind: ClassVar[str] = "equivocator"

    def attack(self, now_ms: int, rng: random.Random) -> list[Packet]:
        if rng.random() < 0.5:
            return []
        doc = rng.choice(self.s.docs)
        deps = self._heads()
        hlc = self._clock(deps, now_ms)
        me = self.signer.public_key
        try:
            a = sign_change(self.signer, doc, deps, hlc, self._ops(doc, me, rng), self.s.limits)
            b = sign_change(self.signer, doc, deps, hlc, self._ops(doc, me, rng), self.s.limits)
        except InvalidOperation:
            return []
        if a.hash == b.hash:
            return []
        self.attacks += 1
        self.equivocations.append((a.hash, b.hash))
        if rng.random() < 0.5:  # build on one twin: later changes pull it in via deps
            self.replica.add(a)
        peers = list(self.s.peers)
        rng.shuffle(peers)
        half = len(peers) // 2
        return self._to_all(changes_message([a.encoded]), tuple(sorted(peers[:half]))) + (
            self._to_all(changes_message([b.encoded]), tuple(sorted(peers[half:])))
        )


class Withholder(ByzantineReplica):
    """Changes whose history never comes; wants ignored; sessions abandoned half way."""

    kind: ClassVar[str] = "withholder"

    def __init__(self, setting: Setting) -> None:
        super().__init__(setting)
        self.chains: list[list[Change]] = []
        self._budget: dict[tuple[int, int], int] = {}

    def attack(self, now_ms: int, rng: random.Random) -> list[Packet]:
        out: list[Packet] = []
        if self.chains and rng.random() < 0.15:  # reveal one old chain to one peer only
            old = self.chains.pop(rng.randrange(len(self.chains)))
            data = changes_message([c.encoded for c in old])
            out.append(Packet(rng.choice(self.s.peers), data))
        if rng.random() < 0.5:
            return out
        self.attacks += 1
        deps = self._heads()
        chain: list[Change] = []
        for _ in range(rng.randrange(2, 5)):
            doc = rng.choice(self.s.docs)
            hlc = self._clock(deps, now_ms) if not chain else chain[-1].hlc + 1
            ops = self._ops(doc, self.signer.public_key, rng)
            chain.append(sign_change(self.signer, doc, deps, hlc, ops, self.s.limits))
            deps = (chain[-1].hash,)
        self.chains.append(chain)
        return out + self._to_all(changes_message([chain[-1].encoded]))

    def filter(self, src: int, data: bytes, result: SyncResult, rng: random.Random) -> list[Packet]:
        if _kind_of(data) == MSG_WANT:
            return []  # the engine answered; we do not send the answer
        return self._session_limited(self._sends(result), rng)

    def tick(self, now_ms: int, rng: random.Random) -> list[Packet]:
        return self._session_limited(super().tick(now_ms, rng), rng)

    def _session_limited(self, packets: list[Packet], rng: random.Random) -> list[Packet]:
        """Forward the first 1..3 messages of each session, then go quiet on it."""
        out: list[Packet] = []
        for p in packets:
            if _kind_of(p.data) == MSG_SESSION:
                sid = msgpack.unpackb(p.data, raw=False)[2]
                key = (p.dst, int(sid))
                left = self._budget.setdefault(key, rng.randrange(1, 4))
                if left <= 0:
                    continue
                self._budget[key] = left - 1
            out.append(p)
        return out


class Garbage(ByzantineReplica):
    """Random bytes and mangled copies of real frames, besides honest traffic."""

    kind: ClassVar[str] = "garbage"

    def __init__(self, setting: Setting) -> None:
        super().__init__(setting)
        self.seen: list[bytes] = []

    def filter(self, src: int, data: bytes, result: SyncResult, rng: random.Random) -> list[Packet]:
        self._remember(data)
        out = []
        for p in self._sends(result):
            self._remember(p.data)
            out.append(Packet(p.dst, self._mangle(p.data, rng)) if rng.random() < 0.3 else p)
        return out

    def attack(self, now_ms: int, rng: random.Random) -> list[Packet]:
        if rng.random() < 0.3:
            return []
        self.attacks += 1
        choice = rng.randrange(4)
        if choice == 0 or not self.seen:
            junk = rng.randbytes(rng.randrange(0, 96))
        elif choice == 1:
            junk = self._mangle(rng.choice(self.seen), rng)
        elif choice == 2:
            junk = self._retyped(rng)
        else:
            junk = self._bent_change(rng)
        return [Packet(rng.choice(self.s.peers), junk)]

    def _remember(self, data: bytes) -> None:
        self.seen.append(data)
        del self.seen[:-32]

    @staticmethod
    def _mangle(data: bytes, rng: random.Random) -> bytes:
        if not data:
            return rng.randbytes(8)
        how = rng.randrange(3)
        if how == 0:  # flip a few bytes
            buf = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
            return bytes(buf)
        if how == 1:  # truncate
            return data[: rng.randrange(len(data))]
        return data + rng.randbytes(rng.randrange(1, 16))  # trailing bytes

    def _retyped(self, rng: random.Random) -> bytes:
        """Valid msgpack, invalid frame: wrong kinds, types, arities, sizes."""
        v = SYNC_VERSION
        shapes: list[Any] = [
            [v, MSG_CHANGES, [rng.randbytes(20)]],
            [v, MSG_CHANGES, [1, 2, 3]],
            [v, MSG_CHANGES, "x"],
            [v, MSG_WANT, [rng.randbytes(31)]],
            [v, MSG_SESSION, 0, True, [], None],
            [v, MSG_SESSION, 1, "yes", [], None],
            [v, MSG_SESSION, 1, True, [rng.randbytes(5)], None],
            [v, MSG_SESSION, 1, True, [], [[None, 7, None]]],
            [v, MSG_SESSION, 1, True, []],
            [v, MSG_SNAPSHOT_OFFER, rng.randrange(1, 9), rng.randbytes(32), 1 << 20],
            [v, MSG_SNAPSHOT_WANT, rng.randrange(1, 9), rng.randbytes(32)],
            [v, MSG_SNAPSHOT_PART, 1, rng.randbytes(32), 0, 10, rng.randbytes(10)],
            [v, MSG_SNAPSHOT_OFFER, 0, b"", -1],
            [MSG_SESSION, 1, True, [], None],  # an older protocol version
            [v + 1, MSG_WANT, []],
            [v, 9, []],
            {"t": 1},
            [],
        ]
        out: bytes = msgpack.packb(rng.choice(shapes), use_bin_type=True)
        return out

    def _bent_change(self, rng: random.Random) -> bytes:
        """A real change with one byte flipped, in a well-formed frame."""
        held = self.replica.ordered(self.replica.heads)
        if not held:
            return rng.randbytes(16)
        return changes_message([self._mangle(rng.choice(held).encoded, rng)])


class Liar(ByzantineReplica):
    """Well-formed reconciliation messages with random content, and made-up heads."""

    kind: ClassVar[str] = "liar"

    def filter(self, src: int, data: bytes, result: SyncResult, rng: random.Random) -> list[Packet]:
        honest = [p for p in self._sends(result) if _kind_of(p.data) != MSG_SESSION]
        if _kind_of(data) != MSG_SESSION:
            return honest
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if len(obj) < 4:
            return honest
        sid, from_initiator = obj[2], obj[3]
        if type(sid) is not int or type(from_initiator) is not bool or not 0 < sid < 1 << 63:
            return honest
        return [*honest, Packet(src, self._session(sid, not from_initiator, rng))]

    def attack(self, now_ms: int, rng: random.Random) -> list[Packet]:
        if rng.random() < 0.4:
            return []
        self.attacks += 1
        sid = rng.randrange(1, 1 << 20)
        return [Packet(rng.choice(self.s.peers), self._session(sid, rng.random() < 0.8, rng))]

    def _session(self, sid: int, from_initiator: bool, rng: random.Random) -> bytes:
        real = list(self.replica.heads)
        heads = sorted({*rng.sample(real, min(len(real), 2)), rng.randbytes(ID_LEN)})
        recon = None if rng.random() < 0.1 else random_recon(rng, list(self.replica.ids))
        return encode_session(sid, from_initiator, heads, recon)


def random_recon(rng: random.Random, real_ids: list[bytes]) -> Message:
    """A random reconciliation message that passes :func:`crdt.reconcile.check_message`.

    Bounds and ids are drawn from one sorted pool (real ids mixed with random ones), so
    every range's ids lie in ``[lower, upper)`` as the format demands.
    """
    made_up = (rng.randbytes(ID_LEN) for _ in range(6))
    pool = sorted({*rng.sample(real_ids, min(len(real_ids), 6)), *made_up})
    cuts = sorted(rng.sample(range(1, len(pool)), rng.randrange(0, min(4, len(pool) - 1) + 1)))
    uppers: list[bytes | None] = [pool[c] for c in cuts]
    uppers.append(None)
    ranges: list[Range] = []
    start = 0
    for k, upper in enumerate(uppers):
        end = cuts[k] if k < len(cuts) else len(pool)
        mode = rng.choice((Mode.SKIP, Mode.FINGERPRINT, Mode.IDS))
        if mode is Mode.SKIP:
            ranges.append(Range(upper, mode))
        elif mode is Mode.FINGERPRINT:
            ranges.append(Range(upper, mode, fingerprint=rng.randbytes(FINGERPRINT_LEN)))
        else:
            ids = tuple(x for x in pool[start:end] if rng.random() < 0.7)
            ranges.append(Range(upper, mode, ids=ids, want_reply=rng.random() < 0.5))
        start = end
    return Message(tuple(ranges))


BEHAVIOURS: dict[str, Callable[[Setting], ByzantineReplica]] = {
    cls.kind: cls for cls in (Forger, Equivocator, Withholder, Garbage, Liar)
}
"""Every Byzantine behaviour by name (``--byzantine`` takes a comma list of these)."""
