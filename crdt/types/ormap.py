"""Observed-remove map whose values are nested CRDTs.

Presence of keys is an add-wins OR-Set (a :class:`~crdt.types.orset.DotKernel`) over
*entries* ``(key, type name)``; each entry owns a nested CRDT state of that type. Two
writers that concurrently use different types under one key therefore never conflict:
both entries exist, and ``value()`` shows the one with the greatest type name (e.g.
``"pncounter"`` over ``"lww"``). Maps nest (an ``"ormap"`` entry holds a map) up to
:data:`~crdt.types._wire.MAX_DEPTH` levels.

Intents::

    prepare("update", {"key": str, "type": name, "intent": str, "args": nested args})
        -> {"up": key, "type": name, "op": <nested op>}
    prepare("remove", {"key": str})
        -> {"rm": key, "dots": [[hash, index], ...]}

``args`` are what the nested type's own ``prepare`` takes (counters need the author:
``{"n": 1, "author": key}``). An update re-adds its entry, tagged with the op's dot; a
remove names the presence dots it observed for *every* type under that key. Removing
an absent key raises :class:`InvalidOperation`.

Semantics worth knowing:

* **Add wins**: an update concurrent with a remove keeps the key.
* **Removing does not reset the nested state.** Nested states are never discarded, only
  hidden; re-adding a key (or an update concurrent with the remove) shows the merged
  history of every write ever made under that entry -- a counter continues from its old
  total. A reset would need a causal context inside every nested type.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self, TypeVar

from crdt.base import Crdt, Json, OpContext
from crdt.errors import InvalidOperation
from crdt.types._wire import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_KEY_BYTES,
    MAX_STATE_ITEMS,
    check_ascending,
    dots_wire,
    expect_dict,
    expect_seq,
    expect_str,
    fail,
    parse_dots,
)
from crdt.types.orset import DotKernel

Entry = tuple[str, str]
"""(key, nested type name)."""

_UP = frozenset({"up", "type", "op"})
_RM = frozenset({"rm", "dots"})
_WIRE = frozenset({"p", "v"})
_UPDATE_ARGS = frozenset({"key", "type", "intent", "args"})
_REMOVE_ARGS = frozenset({"key"})
_MAX_TYPE_NAME = 64


_REGISTRY: dict[str, type[Crdt]] = {}
"""Filled by :mod:`crdt.types` once every type is defined (it imports this module)."""


def _nested_type(name: Any, field: str) -> type[Crdt]:
    # Hot path (twice per operation): a dict hit for known names, the full check otherwise.
    cls = _REGISTRY.get(name) if type(name) is str else None
    if cls is not None:
        return cls
    expect_str(name, field, _MAX_TYPE_NAME)
    raise InvalidOperation(f"{field}: unknown CRDT type {name!r:.60}")


def _entry_wire(e: Entry) -> list[Any]:
    return [e[0], e[1]]


def _parse_entry(row: list[Any]) -> Entry:
    key = expect_str(row[0], "ormap.key", MAX_KEY_BYTES)
    _nested_type(row[1], "ormap.type")
    return (key, row[1])


def _entry_sort(e: Entry) -> Entry:
    return e


class ORMap(Crdt):
    """Map of key -> nested CRDT with add-wins keys (see the module docstring)."""

    TYPE: ClassVar[str] = "ormap"
    __slots__ = ("presence", "values")
    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self, presence: DotKernel[Entry] | None = None, values: dict[Entry, Crdt] | None = None
    ) -> None:
        self.presence: DotKernel[Entry] = presence if presence is not None else DotKernel()
        self.values: dict[Entry, Crdt] = values if values is not None else {}

    # -- operations ---------------------------------------------------------------

    @classmethod
    def check_op(cls, op: Any) -> None:
        _check_op(op, 0)

    @classmethod
    def delta(cls, op: Any, ctx: OpContext) -> Self:
        out = cls()
        if "up" in op:
            entry = (op["up"], op["type"])
            out.presence.add(entry, ctx.dot)
            out.values[entry] = _nested_type(op["type"], "op.type").delta(op["op"], ctx)
        else:
            out.presence.ctx.update((h, i) for h, i in op["dots"])
        return out

    def apply(self, op: Any, ctx: OpContext) -> None:
        if "up" in op:
            entry = (op["up"], op["type"])
            self.presence.add(entry, ctx.dot)
            nested = self.values.get(entry)
            if nested is None:
                sub = _nested_type(op["type"], "op.type")
                self.values[entry] = sub.delta(op["op"], ctx)
            else:
                nested.apply(op["op"], ctx)
        else:
            self.presence.remove([(h, i) for h, i in op["dots"]])

    def merge(self, other: Self) -> None:
        self.presence.merge(other.presence)
        values = self.values
        for entry, theirs in other.values.items():
            mine = values.get(entry)
            if mine is None:
                values[entry] = theirs.copy()
            else:
                mine.merge(theirs)

    def copy(self) -> Self:
        return type(self)(self.presence.copy(), {e: v.copy() for e, v in self.values.items()})

    def value(self) -> Json:
        # Ascending (key, type): the greatest type name of a key is written last.
        shown: dict[str, Json] = {}
        for entry in sorted(self.presence.keys):
            shown[entry[0]] = self.values[entry].value()
        return shown

    def get(self, key: str) -> Crdt | None:
        """The nested state shown under ``key`` (None if the key is absent)."""
        present = [e for e in self.presence.keys if e[0] == key]
        return self.values[max(present)] if present else None

    def prepare(self, intent: str, args: Any) -> Any:
        if intent == "update":
            a = expect_dict(args, "update", _UPDATE_ARGS)
            key = expect_str(a["key"], "update.key", MAX_KEY_BYTES)
            sub = _nested_type(a["type"], "update.type")
            nested_intent = expect_str(a["intent"], "update.intent", _MAX_TYPE_NAME)
            nested = self.values.get((key, sub.TYPE))
            if nested is None:
                nested = sub()
            elif nested_intent in ("remove", "delete") and not self.presence.keys.get(
                (key, sub.TYPE)
            ):
                # A removed entry's state is only hidden: removing or deleting inside it
                # must not succeed (and silently re-add the entry with its old contents).
                fail("update", f"key {key!r:.60} is not present")
            op = {"up": key, "type": sub.TYPE, "op": nested.prepare(nested_intent, a["args"])}
            type(self).check_op(op)  # enforces the nesting depth
            return op
        if intent == "remove":
            key = expect_str(
                expect_dict(args, "remove", _REMOVE_ARGS)["key"], "remove.key", MAX_KEY_BYTES
            )
            dots = [d for e, tags in self.presence.keys.items() if e[0] == key for d in tags]
            if not dots:
                fail("remove", f"key {key!r:.60} is not present")
            if len(dots) > MAX_ITEMS:
                fail("remove", f"key carries more than {MAX_ITEMS} tags")
            return {"rm": key, "dots": dots_wire(dots)}
        fail("intent", f"ormap has no intent {intent!r} (use 'update' or 'remove')")

    # -- wire ---------------------------------------------------------------------

    def to_wire(self) -> Any:
        return {
            "p": self.presence.to_wire(_entry_wire, _entry_sort),
            "v": [[k, t, self.values[(k, t)].to_wire()] for k, t in sorted(self.values)],
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        return _from_wire(cls, obj, 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ORMap) or type(other) is not type(self):
            return NotImplemented
        return self.presence == other.presence and self.values == other.values

    def __repr__(self) -> str:
        return f"ORMap({len(self.presence.keys)} entries shown, {len(self.values)} kept)"


_M = TypeVar("_M", bound=ORMap)


def _nested(exc: InvalidOperation, key: str) -> InvalidOperation:
    return InvalidOperation(f"ormap[{key!r:.60}]: {exc}")


def _check_op(op: Any, depth: int) -> None:
    if type(op) is dict and op.keys() == _UP:
        key = expect_str(op["up"], "op.up", MAX_KEY_BYTES)
        sub = _nested_type(op["type"], "op.type")
        try:
            if issubclass(sub, ORMap):
                if depth + 1 >= MAX_DEPTH:
                    fail("op", f"maps nested deeper than {MAX_DEPTH}")
                _check_op(op["op"], depth + 1)
            else:
                sub.check_op(op["op"])
        except InvalidOperation as exc:
            raise _nested(exc, key) from None
        return
    d = expect_dict(op, "op", _RM)
    expect_str(d["rm"], "op.rm", MAX_KEY_BYTES)
    parse_dots(d["dots"], "op.dots", MAX_ITEMS, 1)


def _from_wire(cls: type[_M], obj: Any, depth: int) -> _M:
    d = expect_dict(obj, "ormap", _WIRE)
    presence = DotKernel.from_wire(d["p"], "ormap.p", 2, _parse_entry, _entry_sort)
    values: dict[Entry, Crdt] = {}
    order: list[Entry] = []
    for row in expect_seq(d["v"], "ormap.v", MAX_STATE_ITEMS):
        key, tname, wire = expect_seq(row, "ormap.v", 3, 3)
        key = expect_str(key, "ormap.v.key", MAX_KEY_BYTES)
        sub = _nested_type(tname, "ormap.v.type")
        try:
            if issubclass(sub, ORMap):
                if depth + 1 >= MAX_DEPTH:
                    fail("ormap", f"maps nested deeper than {MAX_DEPTH}")
                values[(key, tname)] = _from_wire(sub, wire, depth + 1)
            else:
                values[(key, tname)] = sub.from_wire(wire)
        except InvalidOperation as exc:
            raise _nested(exc, key) from None
        order.append((key, tname))
    check_ascending(order, "ormap.v")
    missing = presence.keys.keys() - values.keys()
    if missing:
        fail("ormap.v", f"no nested state for present entry {min(missing)!r:.80}")
    return cls(presence, values)
