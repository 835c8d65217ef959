"""Grow-only and positive-negative counters.

A :class:`GCounter` keeps one running total per replica (author key); merge is the
pointwise maximum and the value is the sum. An operation carries the author's *new
total*, not the increment, so applying it twice (or merging it again) changes nothing:
the delta is ``{ctx.author: total}``, a function of the op and its context only.

Because the contract's ``prepare(intent, args)`` does not know who the author is, the
counter intents take the author in their arguments::

    prepare("inc", {"n": 3, "author": <32-byte key>})   -> {"t": <author's total + 3>}

:class:`PNCounter` is two GCounters, P and N::

    prepare("inc", {"n": 3, "author": key})   -> {"p": <author's P total + 3>}
    prepare("dec", {"n": 2, "author": key})   -> {"n": <author's N total + 2>}

``n`` is a positive int; totals stay below 2**63 so every op is a msgpack int.

Caveat: one author must not run two replicas of the same document concurrently (both
would build "total + n" from the same base and the max keeps only one). The author key
is the replica id, so this is the usual one-key-per-replica rule.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from crdt.base import Crdt, Json, OpContext
from crdt.types._wire import (
    HASH_LEN,
    MAX_I64,
    MAX_STATE_ITEMS,
    check_ascending,
    expect_bytes,
    expect_dict,
    expect_int,
    expect_seq,
    fail,
)

_T = frozenset({"t"})
_P = frozenset({"p"})
_N = frozenset({"n"})
_ARGS = frozenset({"n", "author"})
_PN_WIRE = frozenset({"p", "n"})


def _parse_amount(args: Any, intent: str) -> tuple[int, bytes]:
    a = expect_dict(args, intent, _ARGS)
    n = expect_int(a["n"], intent + ".n", 1, MAX_I64)
    author = expect_bytes(a["author"], intent + ".author", HASH_LEN)
    return n, author


def _bump(totals: dict[bytes, int], n: int, author: bytes, field: str) -> int:
    total = totals.get(author, 0) + n
    if total > MAX_I64:
        fail(field, "counter total would exceed 2**63 - 1")
    return total


def _join(mine: dict[bytes, int], theirs: dict[bytes, int]) -> None:
    for author, total in theirs.items():
        if mine.get(author, 0) < total:
            mine[author] = total


def _totals_wire(totals: dict[bytes, int]) -> list[list[Any]]:
    return [[a, totals[a]] for a in sorted(totals)]


def _totals_from_wire(obj: Any, field: str) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    keys: list[bytes] = []
    for entry in expect_seq(obj, field, MAX_STATE_ITEMS):
        pair = expect_seq(entry, field, 2, 2)
        author = expect_bytes(pair[0], field + ".author", HASH_LEN)
        out[author] = expect_int(pair[1], field + ".total", 1, MAX_I64)
        keys.append(author)
    check_ascending(keys, field)
    return out


class GCounter(Crdt):
    """Grow-only counter: ``{author: total}``, merge = pointwise max, value = sum."""

    TYPE: ClassVar[str] = "gcounter"
    __slots__ = ("totals",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, totals: dict[bytes, int] | None = None) -> None:
        self.totals: dict[bytes, int] = totals if totals is not None else {}

    @classmethod
    def check_op(cls, op: Any) -> None:
        expect_int(expect_dict(op, "op", _T)["t"], "op.t", 1, MAX_I64)

    @classmethod
    def delta(cls, op: Any, ctx: OpContext) -> Self:
        return cls({ctx.author: op["t"]})

    def apply(self, op: Any, ctx: OpContext) -> None:
        t = op["t"]
        if self.totals.get(ctx.author, 0) < t:
            self.totals[ctx.author] = t

    def merge(self, other: Self) -> None:
        _join(self.totals, other.totals)

    def copy(self) -> Self:
        return type(self)(dict(self.totals))

    def value(self) -> Json:
        return sum(self.totals.values())

    def prepare(self, intent: str, args: Any) -> Any:
        if intent != "inc":
            fail("intent", f"gcounter has no intent {intent!r} (use 'inc')")
        n, author = _parse_amount(args, intent)
        return {"t": _bump(self.totals, n, author, intent)}

    def to_wire(self) -> Any:
        return _totals_wire(self.totals)

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        return cls(_totals_from_wire(obj, "gcounter"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GCounter) or type(other) is not type(self):
            return NotImplemented
        return self.totals == other.totals

    def __repr__(self) -> str:
        return f"GCounter(value={self.value()}, replicas={len(self.totals)})"


class PNCounter(Crdt):
    """Counter with decrements: two grow-only totals per author, value = P - N."""

    TYPE: ClassVar[str] = "pncounter"
    __slots__ = ("neg", "pos")
    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self, pos: dict[bytes, int] | None = None, neg: dict[bytes, int] | None = None
    ) -> None:
        self.pos: dict[bytes, int] = pos if pos is not None else {}
        self.neg: dict[bytes, int] = neg if neg is not None else {}

    @classmethod
    def check_op(cls, op: Any) -> None:
        if type(op) is dict and op.keys() == _N:
            expect_int(op["n"], "op.n", 1, MAX_I64)
        else:
            expect_int(expect_dict(op, "op", _P)["p"], "op.p", 1, MAX_I64)

    @classmethod
    def delta(cls, op: Any, ctx: OpContext) -> Self:
        if "p" in op:
            return cls({ctx.author: op["p"]}, {})
        return cls({}, {ctx.author: op["n"]})

    def apply(self, op: Any, ctx: OpContext) -> None:
        if "p" in op:
            totals, t = self.pos, op["p"]
        else:
            totals, t = self.neg, op["n"]
        if totals.get(ctx.author, 0) < t:
            totals[ctx.author] = t

    def merge(self, other: Self) -> None:
        _join(self.pos, other.pos)
        _join(self.neg, other.neg)

    def copy(self) -> Self:
        return type(self)(dict(self.pos), dict(self.neg))

    def value(self) -> Json:
        return sum(self.pos.values()) - sum(self.neg.values())

    def prepare(self, intent: str, args: Any) -> Any:
        if intent == "inc":
            n, author = _parse_amount(args, intent)
            return {"p": _bump(self.pos, n, author, intent)}
        if intent == "dec":
            n, author = _parse_amount(args, intent)
            return {"n": _bump(self.neg, n, author, intent)}
        fail("intent", f"pncounter has no intent {intent!r} (use 'inc' or 'dec')")

    def to_wire(self) -> Any:
        return {"p": _totals_wire(self.pos), "n": _totals_wire(self.neg)}

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        d = expect_dict(obj, "pncounter", _PN_WIRE)
        return cls(
            _totals_from_wire(d["p"], "pncounter.p"), _totals_from_wire(d["n"], "pncounter.n")
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter) or type(other) is not type(self):
            return NotImplemented
        return self.pos == other.pos and self.neg == other.neg

    def __repr__(self) -> str:
        return f"PNCounter(value={self.value()}, replicas={len(self.pos.keys() | self.neg.keys())})"
