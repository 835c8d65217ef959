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
reports exactly that instead of losing votes. Peer data appears in an error only as a short
rendering (:func:`~dagrider.errors.short`), so one frame never makes a long log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from dagrider.coin import CoinShare
from dagrider.errors import DecodeError, short, short_keys
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
        self._decoders: dict[int, tuple[frozenset[str], Callable[[dict[str, Any]], Message]]] = {
            T_VAL: (frozenset("tvx"), lambda m: Val(self._vertex(m["x"], "x"))),
            T_RESP: (frozenset("tvx"), lambda m: VertexResponse(self._vertex(m["x"], "x"))),
            T_ECHO: (frozenset("tvrsd"), lambda m: Echo(*self._vote(m))),
            T_READY: (frozenset("tvrsd"), lambda m: Ready(*self._vote(m))),
            T_REQ: (frozenset("tvrsd"), lambda m: VertexRequest(*self._vote(m))),
            T_COIN: (frozenset("tvwspcz"), self._coin),
            T_CATCHUP: (frozenset("tvrn"), self._catchup),
            T_VOTES: (frozenset("tvey"), self._votes),
        }
        self._max_array = (
            max(limits.max_txs_per_vertex, limits.max_edges, MAX_VOTES_PER_MESSAGE, 8) + 1
        )

    def decode(self, data: bytes) -> Message:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("frame", f"expected bytes, got {type(data).__name__}")
        if len(data) > self.limits.max_message_bytes:
            raise DecodeError(
                "frame", f"{len(data)} bytes exceeds limit {self.limits.max_message_bytes}"
            )
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_bin_len=self.limits.max_tx_bytes + DIGEST_BYTES,
                max_str_len=16,
                # One above each limit, so that the field check below names the field.
                max_array_len=self._max_array,
                max_map_len=16,
                max_ext_len=0,
            )
        except msgpack.ExtraData:
            raise DecodeError("frame", "trailing bytes after message") from None
        except (ValueError, TypeError, BufferError, msgpack.UnpackException, RecursionError) as exc:
            raise DecodeError("frame", f"not valid msgpack ({type(exc).__name__})") from None
        if not isinstance(obj, dict):
            raise DecodeError("frame", f"expected a map, got {type(obj).__name__}")
        t = _int(obj.get("t"), "t")
        if type(obj.get("v")) is not int or obj.get("v") != VERSION:
            raise DecodeError(
                "v",
                f"unsupported wire version {short(obj.get('v'))} (this node speaks version "
                f"{VERSION}; every committee member must run the same wire version)",
            )
        entry = self._decoders.get(t)
        if entry is None:
            raise DecodeError("t", f"unknown message type {t}")
        keys, build = entry
        if obj.keys() != keys:
            # Keys are str or bytes (strict_map_key), which do not sort together.
            extra = short_keys(obj.keys() - keys)
            missing = sorted(keys - obj.keys())
            raise DecodeError("fields", f"unexpected {extra} / missing {missing}")
        return build(obj)

    # -- field decoders -------------------------------------------------------------

    def _round(self, value: object, name: str) -> int:
        r = _int(value, name)
        if not 0 <= r <= self.limits.max_round:
            raise DecodeError(name, f"round {r} out of range 0..{self.limits.max_round}")
        return r

    def _node(self, value: object, name: str) -> int:
        s = _int(value, name)
        if not 0 <= s < self.n:
            raise DecodeError(name, f"node id {s} out of range 0..{self.n - 1}")
        return s

    def _vote(self, m: dict[str, Any]) -> tuple[int, int, bytes]:
        return (
            self._round(m["r"], "round"),
            self._node(m["s"], "source"),
            _bin(m["d"], "digest", DIGEST_BYTES),
        )

    def _votes(self, m: dict[str, Any]) -> Message:
        echoes = self._vote_list(m["e"], "echoes")
        readies = self._vote_list(m["y"], "readies")
        if not echoes and not readies:
            raise DecodeError("echoes", "a Votes message carries at least one vote")
        if len(echoes) + len(readies) > MAX_VOTES_PER_MESSAGE:
            raise DecodeError(
                "echoes", f"{len(echoes) + len(readies)} votes exceeds {MAX_VOTES_PER_MESSAGE}"
            )
        return Votes(echoes, readies)

    def _vote_list(self, value: object, name: str) -> tuple[VoteKey, ...]:
        """Checked in one tight loop: a Votes frame carries thousands of these at n=64."""
        if not isinstance(value, list):
            raise DecodeError(name, "expected a list of [round, source, digest]")
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
            where = f"{name}[{i}]"
            if not isinstance(vote, list) or len(vote) != 3:
                raise DecodeError(where, "expected [round, source, digest]")
            self._round(vote[0], f"{where}.round")
            self._node(vote[1], f"{where}.source")
            _bin(vote[2], f"{where}.digest", DIGEST_BYTES)
        return tuple(out)

    def _coin(self, m: dict[str, Any]) -> Message:
        wave = _int(m["w"], "wave")
        if not 1 <= wave <= self.limits.max_round:
            raise DecodeError("wave", f"wave {wave} out of range")
        return CoinShareMsg(
            CoinShare(
                wave=wave,
                signer=self._node(m["s"], "signer"),
                share=_bin(m["p"], "share", _SCALAR_BYTES),
                challenge=_bin(m["c"], "challenge", _SCALAR_BYTES),
                response=_bin(m["z"], "response", _SCALAR_BYTES),
            )
        )

    def _catchup(self, m: dict[str, Any]) -> Message:
        count = _int(m["n"], "rounds")
        if not 1 <= count <= 100_000:
            raise DecodeError("rounds", f"{count} out of range 1..100000")
        return CatchupRequest(self._round(m["r"], "round"), count)

    def _ref(self, value: object, name: str) -> VertexRef:
        if not isinstance(value, list) or len(value) != 3:
            raise DecodeError(name, "expected [round, source, digest]")
        return VertexRef(
            self._round(value[0], f"{name}.round"),
            self._node(value[1], f"{name}.source"),
            _bin(value[2], f"{name}.digest", DIGEST_BYTES),
        )

    def _vertex(self, value: object, name: str) -> Vertex:
        if not isinstance(value, list) or len(value) != 5:
            raise DecodeError(name, "expected [round, source, block, strong, weak]")
        rnd = self._round(value[0], "round")
        if rnd == 0:
            raise DecodeError("round", "round 0 is genesis and is never broadcast")
        source = self._node(value[1], "source")
        block = value[2]
        if not isinstance(block, list):
            raise DecodeError("block", "expected a list of transactions")
        if len(block) > self.limits.max_txs_per_vertex:
            raise DecodeError(
                "block", f"{len(block)} transactions exceeds {self.limits.max_txs_per_vertex}"
            )
        txs = tuple(_bin(tx, f"block[{i}]", None) for i, tx in enumerate(block))
        for i, tx in enumerate(txs):
            if len(tx) > self.limits.max_tx_bytes:
                raise DecodeError(
                    f"block[{i}]", f"{len(tx)} bytes exceeds {self.limits.max_tx_bytes}"
                )
        strong = self._edges(value[3], "strong_edges")
        weak = self._edges(value[4], "weak_edges")
        if len(strong) + len(weak) > self.limits.max_edges:
            raise DecodeError("edges", f"{len(strong) + len(weak)} exceeds {self.limits.max_edges}")
        return Vertex(rnd, source, txs, strong, weak)

    def _edges(self, value: object, name: str) -> tuple[VertexRef, ...]:
        if not isinstance(value, list):
            raise DecodeError(name, "expected a list of references")
        if len(value) > self.limits.max_edges:
            raise DecodeError(name, f"{len(value)} edges exceeds {self.limits.max_edges}")
        return tuple(self._ref(e, f"{name}[{i}]") for i, e in enumerate(value))


def _int(value: object, name: str) -> int:
    if type(value) is not int:
        raise DecodeError(name, f"expected an integer, got {type(value).__name__}")
    return value


def _bin(value: object, name: str, length: int | None) -> bytes:
    if type(value) is not bytes:
        raise DecodeError(name, f"expected bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise DecodeError(name, f"expected {length} bytes, got {len(value)}")
    return value
