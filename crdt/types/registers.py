"""Registers: last-writer-wins and multi-value.

:class:`LWWRegister` keeps the value written by the greatest ``OpContext.order``
(hybrid logical clock first, ties broken by author key, then change hash and index), so
a causally later write always wins and concurrent writes resolve the same way
everywhere::

    prepare("set", <JSON value>)  -> {"v": <value>}

:class:`MVRegister` keeps *every* value written concurrently and lets a later write
supersede exactly what its author had seen (a causal-context delta CRDT: entries
``{dot: value}`` plus the set of dots seen)::

    prepare("set", <JSON value>)  -> {"v": <value>, "seen": [[hash, index], ...]}

``seen`` lists the dots of the values the author currently shows. JSON values are
``None``, ``bool``, 64-bit ``int``, finite ``float``, ``str``, ``list`` and ``dict`` with
``str`` keys (see :func:`crdt.types._wire.check_json`); ``prepare`` normalises tuples
to lists and sorts dict keys, so an op equals its own msgpack round trip.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from crdt.base import Crdt, Dot, Json, OpContext
from crdt.types._wire import (
    HASH_LEN,
    MAX_INDEX,
    MAX_ITEMS,
    MAX_STATE_ITEMS,
    Order,
    check_ascending,
    check_json,
    dots_wire,
    expect_bytes,
    expect_dict,
    expect_int,
    expect_seq,
    fail,
    parse_dot_set,
    parse_dots,
    parse_order,
    prepare_json,
)

_V = frozenset({"v"})
_MV_OP = frozenset({"v", "seen"})
_LWW_WIRE = frozenset({"k", "v"})
_MV_WIRE = frozenset({"e", "c"})


class LWWRegister(Crdt):
    """Last-writer-wins register; ``value()`` is ``None`` until the first write."""

    TYPE: ClassVar[str] = "lww"
    __slots__ = ("key", "val")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, key: Order | None = None, val: Json = None) -> None:
        self.key = key
        self.val = val

    @classmethod
    def check_op(cls, op: Any) -> None:
        check_json(expect_dict(op, "op", _V)["v"], "op.v")

    @classmethod
    def delta(cls, op: Any, ctx: OpContext) -> Self:
        return cls(ctx.order, op["v"])

    def apply(self, op: Any, ctx: OpContext) -> None:
        order = ctx.order
        if self.key is None or self.key < order:
            self.key = order
            self.val = op["v"]

    def merge(self, other: Self) -> None:
        # Equal keys mean the same operation, hence the same value.
        if other.key is not None and (self.key is None or self.key < other.key):
            self.key = other.key
            self.val = other.val

    def copy(self) -> Self:
        # Values are never mutated in place, so sharing them is safe.
        return type(self)(self.key, self.val)

    def value(self) -> Json:
        return self.val

    def prepare(self, intent: str, args: Any) -> Any:
        if intent != "set":
            fail("intent", f"lww has no intent {intent!r} (use 'set')")
        return {"v": prepare_json(args, "set")}

    def to_wire(self) -> Any:
        return {"k": None if self.key is None else list(self.key), "v": self.val}

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        d = expect_dict(obj, "lww", _LWW_WIRE)
        if d["k"] is None:
            if d["v"] is not None:
                fail("lww.v", "must be nil while the register was never set")
            return cls()
        key = parse_order(d["k"], "lww.k")
        check_json(d["v"], "lww.v")
        return cls(key, d["v"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWRegister) or type(other) is not type(self):
            return NotImplemented
        return self.key == other.key and (self.key is None or self.val == other.val)

    def __repr__(self) -> str:
        return f"LWWRegister({self.val!r:.60})"


class MVRegister(Crdt):
    """Multi-value register: concurrent writes are all kept, ``value()`` lists them.

    The list is sorted by dot (change hash, index): arbitrary but the same everywhere.
    Invariant: every entry's dot is in the context.
    """

    TYPE: ClassVar[str] = "mvreg"
    __slots__ = ("ctx", "entries")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, entries: dict[Dot, Json] | None = None, ctx: set[Dot] | None = None) -> None:
        self.entries: dict[Dot, Json] = entries if entries is not None else {}
        self.ctx: set[Dot] = ctx if ctx is not None else set()

    @classmethod
    def check_op(cls, op: Any) -> None:
        d = expect_dict(op, "op", _MV_OP)
        check_json(d["v"], "op.v")
        parse_dots(d["seen"], "op.seen", MAX_ITEMS)

    @classmethod
    def delta(cls, op: Any, ctx: OpContext) -> Self:
        dot = ctx.dot
        seen = {(h, i) for h, i in op["seen"]}
        seen.add(dot)
        return cls({dot: op["v"]}, seen)

    def apply(self, op: Any, ctx: OpContext) -> None:
        dot = ctx.dot
        entries, seen = self.entries, self.ctx
        if dot not in seen:
            entries[dot] = op["v"]
            seen.add(dot)
        for h, i in op["seen"]:
            d = (h, i)
            if d != dot:
                entries.pop(d, None)
                seen.add(d)

    def merge(self, other: Self) -> None:
        mine, theirs = self.entries, other.entries
        for d in [d for d in mine if d in other.ctx and d not in theirs]:
            del mine[d]
        for d, v in theirs.items():
            if d not in self.ctx:
                mine[d] = v
        self.ctx |= other.ctx

    def copy(self) -> Self:
        return type(self)(dict(self.entries), set(self.ctx))

    def value(self) -> Json:
        return [self.entries[d] for d in sorted(self.entries)]

    def prepare(self, intent: str, args: Any) -> Any:
        if intent != "set":
            fail("intent", f"mvreg has no intent {intent!r} (use 'set')")
        if len(self.entries) > MAX_ITEMS:
            fail("set", f"more than {MAX_ITEMS} concurrent values to supersede")
        return {"v": prepare_json(args, "set"), "seen": dots_wire(self.entries)}

    def to_wire(self) -> Any:
        return {
            "e": [[h, i, self.entries[(h, i)]] for h, i in sorted(self.entries)],
            "c": dots_wire(self.ctx),
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        d = expect_dict(obj, "mvreg", _MV_WIRE)
        entries: dict[Dot, Json] = {}
        order: list[Dot] = []
        for e in expect_seq(d["e"], "mvreg.e", MAX_STATE_ITEMS):
            triple = expect_seq(e, "mvreg.e", 3, 3)
            dot = (
                expect_bytes(triple[0], "mvreg.e.hash", HASH_LEN),
                expect_int(triple[1], "mvreg.e.index", 0, MAX_INDEX),
            )
            check_json(triple[2], "mvreg.e.value")
            entries[dot] = triple[2]
            order.append(dot)
        check_ascending(order, "mvreg.e")
        ctx = parse_dot_set(d["c"], "mvreg.c")
        if not ctx.issuperset(entries):
            fail("mvreg.c", "does not cover every entry")
        return cls(entries, ctx)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MVRegister) or type(other) is not type(self):
            return NotImplemented
        return self.ctx == other.ctx and self.entries == other.entries

    def __repr__(self) -> str:
        return f"MVRegister({len(self.entries)} values, {len(self.ctx)} dots seen)"
