"""Byzantine strategies over the real message types.

A Byzantine node runs a real :class:`~dagrider.process.Process` (so it knows what a
correct node would send) and a strategy rewrites its outgoing traffic. Everything it
sends is bytes on the simulated wire, decoded by the receivers' strict codec.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from dagrider.codec import encode
from dagrider.effects import Broadcast, Effect, Send
from dagrider.messages import CoinShareMsg, Echo, Message, Ready, Val, Vertex, VertexRef


@dataclass(frozen=True)
class Outbound:
    """Bytes for some recipients; ``msg`` is the decoded form when it is well formed."""

    to: tuple[int, ...]
    data: bytes
    msg: Message | None


Strategy = Callable[[int, int, list[Effect], random.Random], list[Outbound]]
"""(me, n, effects of the inner process, rng) -> what actually goes on the wire."""


def _others(me: int, n: int) -> tuple[int, ...]:
    return tuple(i for i in range(n) if i != me)


def _out(to: tuple[int, ...], msg: Message) -> Outbound:
    return Outbound(to, encode(msg), msg)


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
            out += [_out(a, Val(v)), _out(b, Val(twin))]
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
            out += [_out(a, e.msg), _out(b, fake)]
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
            out.append(_out(_others(me, n), CoinShareMsg(rng.choice(forged))))
        else:
            out += honest(me, n, [e], rng)
    return out


def bad_edges(me: int, n: int, effects: list[Effect], rng: random.Random) -> list[Outbound]:
    """Propose vertices that break the DAG rules in one of several ways."""
    out: list[Outbound] = []
    for e in effects:
        if isinstance(e, Broadcast) and isinstance(e.msg, Val):
            out.append(_out(_others(me, n), Val(_break_edges(e.msg.vertex, rng))))
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
        out.append(Outbound(target, rng.choice(junk), None))
    return out


STRATEGIES: dict[str, Strategy] = {
    "silent": silent,
    "equivocate": equivocate,
    "conflicting-votes": conflicting_votes,
    "bad-coin": bad_coin,
    "bad-edges": bad_edges,
    "garbage": garbage,
}


def by_name(name: str, rng: random.Random) -> tuple[str, Strategy]:
    """A strategy by name; ``mixed`` draws one per node from the seeded RNG."""
    if name == "mixed":
        pick = rng.choice(sorted(STRATEGIES))
        return pick, STRATEGIES[pick]
    if name == "none":
        return "honest", honest
    try:
        return name, STRATEGIES[name]
    except KeyError:
        choices = sorted([*STRATEGIES, "mixed", "none"])
        raise ValueError(f"unknown Byzantine strategy {name!r}; choose from {choices}") from None
