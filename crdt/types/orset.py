"""Add-wins observed-remove set, and the causal dot kernel it is built on.

Every add is tagged with its operation's dot; a remove names the dots its author
*observed* for the element. An add concurrent with a remove carries a dot the remove
did not name, so the element stays: **add wins**. State = live ``{dot: element}`` plus
the context (every dot ever seen); merge keeps a live dot iff the other side has it
live too or has never seen it.

Intents (elements are msgpack scalars: ``str`` and ``bytes`` of at most 256 bytes,
64-bit ``int``; ``bool`` is not an int here)::

    prepare("add", elem)     -> {"add": elem}
    prepare("remove", elem)  -> {"rm": elem, "dots": [[hash, index], ...]}

Removing an element that is not present raises :class:`InvalidOperation` (nothing was
observed, so there would be nothing to remove). The ``dots`` of a remove are removed
wherever they live; ``rm`` records the element for auditing only.

``value()`` is the sorted list of elements: ints first, then strs, then bytes, each
in natural order. ``bytes`` elements appear as ``bytes``; a JSON front end must encode
them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Generic, Self, TypeVar

from crdt.base import Crdt, Dot, Json, OpContext
from crdt.types._wire import (
    MAX_I64,
    MAX_ITEMS,
    MAX_KEY_BYTES,
    MAX_STATE_ITEMS,
    MIN_I64,
    check_ascending,
    dots_wire,
    expect_dict,
    expect_seq,
    fail,
    parse_dot_set,
    parse_dots,
)

K = TypeVar("K", bound=Hashable)

_ADD = frozenset({"add"})
_RM = frozenset({"rm", "dots"})
_WIRE = frozenset({"e", "c"})


class DotKernel(Generic[K]):
    """Causal context plus live dots, each tagging one key; the core of OR-Set/OR-Map.

    ``where`` maps each live dot to its key, ``keys`` maps each present key to its live
    dots, ``ctx`` holds every dot seen (live or removed). Invariant: live dots are in
    ``ctx`` and ``where``/``keys`` describe the same relation.
    """

    __slots__ = ("ctx", "keys", "where")

    def __init__(self) -> None:
        self.where: dict[Dot, K] = {}
        self.keys: dict[K, set[Dot]] = {}
        self.ctx: set[Dot] = set()

    def add(self, key: K, dot: Dot) -> bool:
        """Join the delta "``key`` tagged with ``dot``"; False if ``dot`` was seen."""
        if dot in self.ctx:
            return False
        self.ctx.add(dot)
        self.where[dot] = key
        tags = self.keys.get(key)
        if tags is None:
            self.keys[key] = {dot}
        else:
            tags.add(dot)
        return True

    def _kill(self, dot: Dot) -> bool:
        """Forget a live dot; True if its key lost its last dot."""
        key = self.where.pop(dot)
        tags = self.keys[key]
        tags.discard(dot)
        if tags:
            return False
        del self.keys[key]
        return True

    def remove(self, dots: list[Dot]) -> bool:
        """Join the delta "context ``dots``, nothing live"; True if a key vanished."""
        vanished = False
        for dot in dots:
            if dot in self.where and self._kill(dot):
                vanished = True
            self.ctx.add(dot)
        return vanished

    def merge(self, other: DotKernel[K]) -> None:
        where, octx, owhere = self.where, other.ctx, other.where
        # Drop our live dots that the other side has seen and no longer holds.
        if len(octx) < len(where):
            dead = [d for d in octx if d in where and d not in owhere]
        else:
            dead = [d for d in where if d in octx and d not in owhere]
        for d in dead:
            self._kill(d)
        ctx = self.ctx
        for d, key in owhere.items():
            if d not in ctx:
                where[d] = key
                tags = self.keys.get(key)
                if tags is None:
                    self.keys[key] = {d}
                else:
                    tags.add(d)
        ctx |= octx

    def copy(self) -> DotKernel[K]:
        out: DotKernel[K] = DotKernel()
        out.where = dict(self.where)
        out.keys = {k: set(v) for k, v in self.keys.items()}
        out.ctx = set(self.ctx)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DotKernel):
            return NotImplemented
        return self.where == other.where and self.ctx == other.ctx

    __hash__ = None  # type: ignore[assignment]

    def to_wire(self, key_wire: Callable[[K], list[Any]], sort_key: Callable[[K], Any]) -> Any:
        """``{"e": [[*key_wire(key), [dots]], ...] by sort_key, "c": [dots]}``."""
        keys = sorted(self.keys, key=sort_key)
        return {
            "e": [[*key_wire(k), dots_wire(self.keys[k])] for k in keys],
            "c": dots_wire(self.ctx),
        }

    @classmethod
    def from_wire(
        cls,
        obj: Any,
        field: str,
        key_len: int,
        parse_key: Callable[[list[Any]], K],
        sort_key: Callable[[K], Any],
    ) -> DotKernel[K]:
        d = expect_dict(obj, field, _WIRE)
        out: DotKernel[K] = cls()
        order: list[Any] = []
        for entry in expect_seq(d["e"], field + ".e", MAX_STATE_ITEMS):
            row = expect_seq(entry, field + ".e", key_len + 1, key_len + 1)
            key = parse_key(list(row[:key_len]))
            dots = parse_dot_set(row[key_len], field + ".e.dots")
            if not dots:
                fail(field + ".e.dots", "a present key needs at least one dot")
            for dot in dots:
                if dot in out.where:
                    fail(field + ".e.dots", "one dot tags two keys")
                out.where[dot] = key
            out.keys[key] = dots
            order.append(sort_key(key))
        check_ascending(order, field + ".e")
        out.ctx = parse_dot_set(d["c"], field + ".c")
        if not out.ctx.issuperset(out.where):
            fail(field + ".c", "does not cover every live dot")
        return out


Elem = int | str | bytes

_TAG = {int: 0, str: 1, bytes: 2}


def elem_sort_key(e: Elem) -> tuple[int, Elem]:
    """Total order across mixed element types: ints, then strs, then bytes."""
    return (_TAG[type(e)], e)


def check_elem(e: Any, field: str) -> Elem:
    t = type(e)
    if t is int:
        if not MIN_I64 <= e <= MAX_I64:
            fail(field, "int element outside the signed 64-bit range")
    elif t is str:
        try:
            n = len(e.encode("utf-8"))
        except UnicodeEncodeError:
            fail(field, "not encodable as UTF-8")
        if n > MAX_KEY_BYTES:
            fail(field, f"element of {n} bytes exceeds {MAX_KEY_BYTES}")
    elif t is bytes:
        if len(e) > MAX_KEY_BYTES:
            fail(field, f"element of {len(e)} bytes exceeds {MAX_KEY_BYTES}")
    else:
        fail(field, f"element must be int, str or bytes, got {t.__name__}")
    return e  # type: ignore[no-any-return]


def _elem_wire(e: Elem) -> list[Any]:
    return [e]


def _parse_elem(row: list[Any]) -> Elem:
    return check_elem(row[0], "orset.e.elem")


class ORSet(Crdt):
    """Add-wins observed-remove set of scalars (see the module docstring)."""

    TYPE: ClassVar[str] = "orset"
    __slots__ = ("_value", "kernel")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, kernel: DotKernel[Elem] | None = None) -> None:
        self.kernel: DotKernel[Elem] = kernel if kernel is not None else DotKernel()
        self._value: list[Elem] | None = None

    @classmethod
    def check_op(cls, op: Any) -> None:
        if type(op) is dict and op.keys() == _ADD:
            check_elem(op["add"], "op.add")
            return
        d = expect_dict(op, "op", _RM)
        check_elem(d["rm"], "op.rm")
        parse_dots(d["dots"], "op.dots", MAX_ITEMS, 1)

    @classmethod
    def delta(cls, op: Any, ctx: OpContext) -> Self:
        out = cls()
        if "add" in op:
            out.kernel.add(op["add"], ctx.dot)
        else:
            out.kernel.ctx.update((h, i) for h, i in op["dots"])
        return out

    def apply(self, op: Any, ctx: OpContext) -> None:
        if "add" in op:
            e = op["add"]
            if self.kernel.add(e, ctx.dot) and len(self.kernel.keys[e]) == 1:
                self._value = None
        elif self.kernel.remove([(h, i) for h, i in op["dots"]]):
            self._value = None

    def merge(self, other: Self) -> None:
        self.kernel.merge(other.kernel)
        self._value = None

    def copy(self) -> Self:
        return type(self)(self.kernel.copy())

    def value(self) -> Json:
        if self._value is None:
            self._value = sorted(self.kernel.keys, key=elem_sort_key)
        return list(self._value)

    def __contains__(self, elem: object) -> bool:
        return elem in self.kernel.keys and type(elem) is not bool

    def prepare(self, intent: str, args: Any) -> Any:
        if intent == "add":
            return {"add": check_elem(args, "add")}
        if intent == "remove":
            e = check_elem(args, "remove")
            dots = self.kernel.keys.get(e)
            if not dots:
                fail("remove", f"element {e!r:.60} is not present")
            if len(dots) > MAX_ITEMS:
                fail("remove", f"element carries more than {MAX_ITEMS} tags")
            return {"rm": e, "dots": dots_wire(dots)}
        fail("intent", f"orset has no intent {intent!r} (use 'add' or 'remove')")

    def to_wire(self) -> Any:
        return self.kernel.to_wire(_elem_wire, elem_sort_key)

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        return cls(DotKernel.from_wire(obj, "orset", 1, _parse_elem, elem_sort_key))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ORSet) or type(other) is not type(self):
            return NotImplemented
        return self.kernel == other.kernel

    def __repr__(self) -> str:
        return f"ORSet({len(self.kernel.keys)} elements)"
