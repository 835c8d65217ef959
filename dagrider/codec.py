"""msgpack encoding of consensus messages with a strict decoder.

Envelope: a map ``{"t": type, "v": version, ...fields}``. The decoder accepts exactly
the fields of the type, with exact Python types (``bool`` is not an ``int``), sizes
within :class:`~dagrider.params.Limits` and node ids within the committee. Anything
else, including trailing bytes, raises :class:`~dagrider.errors.DecodeError` naming
the field; no other exception escapes :meth:`Codec.decode`, whatever the bytes (checked
by ``tests/test_decoder_fuzz.py``).

Version 2 added :class:`~dagrider.messages.Votes` (every ECHO/READY of one step in one
frame). A node never mixes versions silently: a frame of another version is a
``DecodeError`` on field ``v`` that names both versions, so a committee half upgraded
reports exactly that instead of losing votes. The envelope (limits, tags, exact field
sets) is :class:`p2p.strictwire.MapEnvelope`; peer data appears in an error only through
``p2p.strictwire.describe`` (at most 100 characters), so one frame never makes a long log line.
"""

from __future__ import annotations

from typing import Any

import msgpack

from dagrider.coin import CoinShare
from dagrider.errors import DecodeError
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
    VoteKey,
    Votes,
    canonical_vertex_body,
)
from dagrider.params import Limits
from p2p.strictwire import Field, Invalid, Kind, MapEnvelope, binary, integer
from p2p.strictwire import Limits as WireLimits

VERSION = 2
"""Wire version of every consensus frame. 2: :class:`~dagrider.messages.Votes` added."""
T_VAL, T_ECHO, T_READY, T_COIN, T_REQ, T_RESP, T_CATCHUP, T_VOTES = 1, 2, 3, 4, 5, 6, 7, 8
MAX_VOTES_PER_MESSAGE = 8192
"""ECHOs plus READYs in one :class:`~dagrider.messages.Votes` frame (about 330 KB at
most); :func:`dagrider.rbc.coalesce_votes` splits larger steps."""
_SCALAR_BYTES = 32


def encode(msg: Message) -> bytes:
    """Serialise one message; the inverse of :meth:`Codec.decode`."""
    body: dict[str, Any]
    match msg:
        case Val(vertex):
            body = {"t": T_VAL, "x": canonical_vertex_body(vertex)}
        case VertexResponse(vertex):
            body = {"t": T_RESP, "x": canonical_vertex_body(vertex)}
        case Echo(r, s, d):
            body = {"t": T_ECHO, "r": r, "s": s, "d": d}
        case Ready(r, s, d):
            body = {"t": T_READY, "r": r, "s": s, "d": d}
        case Votes(echoes, readies):
            body = {"t": T_VOTES, "e": echoes, "y": readies}
        case VertexRequest(r, s, d):
            body = {"t": T_REQ, "r": r, "s": s, "d": d}
        case CatchupRequest(r, count):
            body = {"t": T_CATCHUP, "r": r, "n": count}
        case CoinShareMsg(share):
            body = {
                "t": T_COIN,
                "w": share.wave,
                "s": share.signer,
                "p": share.share,
                "c": share.challenge,
                "z": share.response,
            }
    body["v"] = VERSION
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


class Codec:
    """Strict decoder bound to one committee size and one set of limits."""

    def __init__(self, n: int, limits: Limits) -> None:
        self.n = n
        self.limits = limits
        self._tx = binary(top=limits.max_tx_bytes)
        rnd, node, digest = self._round, self._node, binary(DIGEST_BYTES)
        scalar = binary(_SCALAR_BYTES)
        vertex = self._vertex
        vote = (Field("r", rnd, "round"), Field("s", node, "source"), Field("d", digest, "digest"))
        kinds: tuple[Kind[Message], ...] = (
            Kind(T_VAL, "Val", (Field("x", vertex, "x"),), lambda v: Val(v)),
            Kind(T_RESP, "VertexResponse", (Field("x", vertex, "x"),), VertexResponse),
            Kind(T_ECHO, "Echo", vote, Echo),
            Kind(T_READY, "Ready", vote, Ready),
            Kind(T_REQ, "VertexRequest", vote, VertexRequest),
            Kind(
                T_COIN,
                "CoinShareMsg",
                (
                    Field("w", integer(1, limits.max_round), "wave"),
                    Field("s", node, "signer"),
                    Field("p", scalar, "share"),
                    Field("c", scalar, "challenge"),
                    Field("z", scalar, "response"),
                ),
                lambda *share: CoinShareMsg(CoinShare(*share)),
            ),
            Kind(
                T_CATCHUP,
                "CatchupRequest",
                (Field("r", rnd, "round"), Field("n", integer(1, 100_000), "rounds")),
                CatchupRequest,
            ),
            Kind(
                T_VOTES,
                "Votes",
                (Field("e", self._vote_list, "echoes"), Field("y", self._vote_list, "readies")),
                _votes,
            ),
        )
        max_array = max(limits.max_txs_per_vertex, limits.max_edges, MAX_VOTES_PER_MESSAGE, 8)
        self._envelope = MapEnvelope(
            DecodeError,
            VERSION,
            kinds,
            WireLimits(
                max_frame=limits.max_message_bytes,
                max_bin=limits.max_tx_bytes + DIGEST_BYTES,
                max_str=16,
                # One above each limit, so that the field check names the field.
                max_array=max_array + 1,
                max_map=16,
            ),
            version_name="wire version",
            version_hint=(
                f" (this node speaks version {VERSION}; every committee member must run "
                "the same wire version)"
            ),
        )

    def decode(self, data: bytes) -> Message:
        """One message, or :class:`~dagrider.errors.DecodeError` naming the field. No
        depth limit beyond msgpack's own: every field check refuses an unexpected
        nesting itself, and a depth walk would cost a pass over every vote of a frame."""
        return self._envelope.decode(data)

    # -- field checks (raise p2p.strictwire.Invalid; the envelope makes it a DecodeError) ---

    def _round(self, value: object, name: str) -> int:
        if type(value) is not int:
            raise Invalid(name, f"expected an integer, got {type(value).__name__}")
        if not 0 <= value <= self.limits.max_round:
            raise Invalid(name, f"round {value} out of range 0..{self.limits.max_round}")
        return value

    def _node(self, value: object, name: str) -> int:
        if type(value) is not int:
            raise Invalid(name, f"expected an integer, got {type(value).__name__}")
        if not 0 <= value < self.n:
            raise Invalid(name, f"node id {value} out of range 0..{self.n - 1}")
        return value

    def _vote_list(self, value: object, name: str) -> tuple[VoteKey, ...]:
        """Checked in one tight loop: a Votes frame carries thousands of these at n=64."""
        if not isinstance(value, list):
            raise Invalid(name, "expected a list of [round, source, digest]")
        n = self.n
        max_round = self.limits.max_round
        out: list[VoteKey] = []
        for i, vote in enumerate(value):
            if (
                type(vote) is list
                and len(vote) == 3
                and type(r := vote[0]) is int
                and 0 <= r <= max_round
                and type(s := vote[1]) is int
                and 0 <= s < n
                and type(d := vote[2]) is bytes
                and len(d) == DIGEST_BYTES
            ):
                out.append((r, s, d))
                continue
            # Slow path, only for a bad vote: name exactly what is wrong.
            self._ref(vote, f"{name}[{i}]")
        return tuple(out)

    def _ref(self, value: object, name: str) -> VertexRef:
        if not isinstance(value, list) or len(value) != 3:
            raise Invalid(name, "expected [round, source, digest]")
        return VertexRef(
            self._round(value[0], f"{name}.round"),
            self._node(value[1], f"{name}.source"),
            _digest(value[2], f"{name}.digest"),
        )

    def _vertex(self, value: object, name: str) -> Vertex:
        if not isinstance(value, list) or len(value) != 5:
            raise Invalid(name, "expected [round, source, block, strong, weak]")
        rnd = self._round(value[0], "round")
        if rnd == 0:
            raise Invalid("round", "round 0 is genesis and is never broadcast")
        source = self._node(value[1], "source")
        block = value[2]
        if not isinstance(block, list):
            raise Invalid("block", "expected a list of transactions")
        if len(block) > self.limits.max_txs_per_vertex:
            raise Invalid(
                "block", f"{len(block)} transactions exceeds {self.limits.max_txs_per_vertex}"
            )
        txs = tuple(self._tx(t, f"block[{i}]") for i, t in enumerate(block))
        strong = self._edges(value[3], "strong_edges")
        weak = self._edges(value[4], "weak_edges")
        if len(strong) + len(weak) > self.limits.max_edges:
            raise Invalid("edges", f"{len(strong) + len(weak)} exceeds {self.limits.max_edges}")
        return Vertex(rnd, source, txs, strong, weak)

    def _edges(self, value: object, name: str) -> tuple[VertexRef, ...]:
        if not isinstance(value, list):
            raise Invalid(name, "expected a list of references")
        if len(value) > self.limits.max_edges:
            raise Invalid(name, f"{len(value)} edges exceeds {self.limits.max_edges}")
        return tuple(self._ref(e, f"{name}[{i}]") for i, e in enumerate(value))


_digest = binary(DIGEST_BYTES)


def _votes(echoes: tuple[VoteKey, ...], readies: tuple[VoteKey, ...]) -> Message:
    if not echoes and not readies:
        raise Invalid("echoes", "a Votes message carries at least one vote")
    if len(echoes) + len(readies) > MAX_VOTES_PER_MESSAGE:
        raise Invalid(
            "echoes", f"{len(echoes) + len(readies)} votes exceeds {MAX_VOTES_PER_MESSAGE}"
        )
    return Votes(echoes, readies)
