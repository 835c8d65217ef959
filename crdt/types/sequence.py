"""Replicated sequences (RGA): a list of JSON values and a text string.

Every inserted item has an id ``[hlc, author, change_hash, index, i]``: the inserting
op's ``OpContext.order`` followed by the item's position ``i`` within the op, so ids
sort by op order, then position. Each item hangs under a parent: the first item of an
insert under the item it was typed after (``None`` = the head), item ``i`` under item
``i - 1``. The document is the depth-first walk of that tree, children visited in
*descending* id order (newest first -- the RGA rule: a causally later insert has a
greater id than everything its author saw, so it lands right after its anchor).

State is grow-only -- inserted runs ``{op order: (after, items)}`` and tombstones of
deleted ids -- so merge is a union and deletes are idempotent. Storing whole runs
(instead of one entry per item) keeps text compact; it is the same lattice as the
per-item map of the RGA paper.

Interleaving: a run typed forwards forms a chain, so two runs inserted concurrently at
the same position never interleave (the newer run comes first, whole). Characters
typed *backwards* (each inserted before the previous one, i.e. at the same index) are
separate runs and can interleave with another writer doing the same.

Intents::

    rga:   prepare("insert", {"index": int, "items": [json, ...]})
    text:  prepare("insert", {"index": int, "text": str})
               -> {"after": id | None, "items": [...] (rga) or str (text)}
    both:  prepare("delete", {"index": int, "count": int})
               -> {"ids": [id, ...]}

``index`` counts visible items (code points for text); insert allows ``0..len``,
delete needs ``index + count <= len``; an op holds 1..4096 items. Anything out of range
raises :class:`InvalidOperation`. The materialised order is cached and rebuilt lazily
after a change, so ``value()``/``prepare`` after every op cost O(n).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, ClassVar, Self

from crdt.base import Crdt, Json, OpContext
from crdt.types._wire import (
    HASH_LEN,
    MAX_INDEX,
    MAX_ITEMS,
    MAX_STATE_ITEMS,
    MAX_U64,
    Order,
    check_ascending,
    check_json,
    expect_bytes,
    expect_dict,
    expect_int,
    expect_seq,
    expect_str,
    fail,
    parse_order,
    prepare_json,
)

RunKey = Order
ElemId = tuple[int, bytes, bytes, int, int]
Items = Any  # list[Json] for RGA, str for Text
Run = tuple[ElemId | None, Items]

_INSERT = frozenset({"after", "items"})
_DELETE = frozenset({"ids"})
_WIRE = frozenset({"r", "d"})
_RANGE = frozenset({"index", "count"})


def parse_id(obj: Any, field: str) -> ElemId:
    seq = expect_seq(obj, field, 5, 5)
    return (
        expect_int(seq[0], field + ".hlc", 0, MAX_U64),
        expect_bytes(seq[1], field + ".author", HASH_LEN),
        expect_bytes(seq[2], field + ".hash", HASH_LEN),
        expect_int(seq[3], field + ".index", 0, MAX_INDEX),
        expect_int(seq[4], field + ".i", 0, MAX_ITEMS - 1),
    )


def _id_wire(e: ElemId | None) -> list[Any] | None:
    return None if e is None else list(e)


def _find(lst: list[ElemId], e: ElemId, hint: int) -> int:
    """``lst.index(e)``, searching forward from about ``hint`` first.

    ``hint`` is a *visible* index (the last edit); an item's position in the full
    order is never smaller than its visible index, so the forward scan usually stops
    at once -- editing is local.
    """
    lo = max(0, hint - 16)
    try:
        return lst.index(e, lo)
    except ValueError:
        return lst.index(e, 0, lo + 1)


_BURY_BUDGET = 32
"""Tombstones per change patched into the cache one by one; more rebuild it lazily."""


class _Sequence(Crdt):
    """RGA core; subclasses choose the item representation.

    Caches (all derived, rebuilt lazily when ``None``): ``_order`` every reachable item
    id in document order (tombstones included), ``_visible`` the live ones, ``_value``
    the user value. An insert whose place is obvious -- its run is the newest child of
    its anchor, or sits just before an older sibling, and nothing hangs under it yet --
    is spliced into the caches in place; anything else drops them.
    """

    __slots__ = ("_anchors", "_hint", "_kids", "_order", "_value", "_visible", "dead", "runs")
    __hash__ = None  # type: ignore[assignment]
    _ITEMS_ARG: ClassVar[str]

    def __init__(
        self, runs: dict[RunKey, Run] | None = None, dead: dict[RunKey, set[int]] | None = None
    ) -> None:
        self.runs: dict[RunKey, Run] = runs if runs is not None else {}
        self.dead: dict[RunKey, set[int]] = dead if dead is not None else {}
        self._kids: dict[ElemId | None, list[RunKey]] = {}
        self._anchors: dict[RunKey, list[int]] = {}
        for key, (after, _) in self.runs.items():
            self._link(key, after)
        self._order: list[ElemId] | None = None
        self._visible: list[ElemId] | None = None
        self._value: Any = None
        self._hint = 0

    # -- item representation hooks --------------------------------------------

    @classmethod
    def _check_items(cls, items: Any, field: str) -> None:
        raise NotImplementedError

    @classmethod
    def _prepare_items(cls, items: Any, field: str) -> Items:
        raise NotImplementedError

    @classmethod
    def _join(cls, pieces: list[Any]) -> Json:
        """The value from a list of single items."""
        raise NotImplementedError

    @classmethod
    def _splice_value(cls, value: Any, at: int, pieces: list[Any], drop: int) -> Any:
        """``value`` with ``drop`` items at ``at`` replaced by ``pieces``."""
        raise NotImplementedError

    # -- operations -------------------------------------------------------------

    @classmethod
    def check_op(cls, op: Any) -> None:
        if type(op) is dict and op.keys() == _DELETE:
            for e in expect_seq(op["ids"], "op.ids", MAX_ITEMS, 1):
                parse_id(e, "op.ids")
            return
        d = expect_dict(op, "op", _INSERT)
        if d["after"] is not None:
            parse_id(d["after"], "op.after")
        cls._check_items(d["items"], "op.items")

    @classmethod
    def delta(cls, op: Any, ctx: OpContext) -> Self:
        out = cls()
        out.apply(op, ctx)
        return out

    def apply(self, op: Any, ctx: OpContext) -> None:
        if "ids" in op:
            budget = _BURY_BUDGET
            for e in op["ids"]:
                budget = self._bury((e[0], e[1], e[2], e[3]), e[4], budget)
            return
        key = ctx.order
        if key not in self.runs:
            after, items = op["after"], op["items"]
            if type(items) is tuple:  # decoded with use_list=False
                items = list(items)
            self._add_run(key, None if after is None else tuple(after), items)

    def merge(self, other: Self) -> None:
        runs = self.runs
        for key, (after, items) in other.runs.items():
            if key not in runs:
                self._add_run(key, after, items)  # runs are never mutated: share
        budget = _BURY_BUDGET
        for key, offsets in other.dead.items():
            mine = self.dead.get(key)
            if mine is None or not mine.issuperset(offsets):
                for i in sorted(offsets):
                    budget = self._bury(key, i, budget)

    def copy(self) -> Self:
        return type(self)(dict(self.runs), {k: set(v) for k, v in self.dead.items()})

    # -- incremental upkeep ------------------------------------------------------

    def _link(self, key: RunKey, after: ElemId | None) -> None:
        lst = self._kids.get(after)
        if lst is None:
            self._kids[after] = [key]
            if after is not None:
                self._anchors.setdefault(after[:4], []).append(after[4])
        else:
            lst.append(key)

    def _drop_caches(self) -> None:
        self._order = self._visible = self._value = None

    def _is_dead(self, e: ElemId) -> bool:
        offsets = self.dead.get(e[:4])
        return offsets is not None and e[4] in offsets

    def _add_run(self, key: RunKey, after: ElemId | None, items: Items) -> None:
        self.runs[key] = (after, items)
        self._link(key, after)
        if self._order is not None and not self._splice(key, after, items):
            self._drop_caches()

    def _splice(self, key: RunKey, after: ElemId | None, items: Items) -> bool:
        """Put a new run into the caches in place; False if that needs a full walk."""
        order = self._order
        assert order is not None
        if key in self._anchors:
            return False  # orphans already hang under it
        # Siblings in walk order (descending); the anchor's next item counts as one.
        smaller: tuple[RunKey, ElemId] | None = None
        greater = False
        if after is not None:
            anchor_run = self.runs.get(after[:4])
            if anchor_run is None or after[4] >= len(anchor_run[1]):
                return True  # anchor unknown: the run is unreachable for now
            if after[4] + 1 < len(anchor_run[1]):
                cont = after[:4]
                if cont > key:
                    greater = True
                else:
                    smaller = (cont, (*cont, after[4] + 1))
        for c in self._kids[after]:
            if c > key:
                greater = True
            elif c < key and (smaller is None or c > smaller[0]):
                smaller = (c, (*c, 0))
        try:
            if smaller is not None:
                at = _find(order, smaller[1], self._hint)
            elif greater:
                return False  # would go after a sibling's whole subtree
            else:
                at = 0 if after is None else _find(order, after, self._hint) + 1
        except ValueError:
            return True  # anchor unreachable
        ids = [(*key, i) for i in range(len(items))]
        order[at:at] = ids
        dead = self.dead.get(key)
        live = ids if not dead else [e for e in ids if e[4] not in dead]
        visible = self._visible
        if not live or visible is None:
            if live:
                self._value = None
            return True
        q = at - 1
        while q >= 0 and self._is_dead(order[q]):
            q -= 1
        v = 0 if q < 0 else _find(visible, order[q], self._hint) + 1
        visible[v:v] = live
        self._hint = v + len(live)
        if self._value is not None:
            pieces = [items[e[4]] for e in live]
            self._value = self._splice_value(self._value, v, pieces, 0)
        return True

    def _bury(self, key: RunKey, i: int, budget: int) -> int:
        """Tombstone item ``(key, i)``; patch or drop the caches. Returns the budget."""
        offsets = self.dead.get(key)
        if offsets is None:
            self.dead[key] = {i}
        elif i in offsets:
            return budget
        else:
            offsets.add(i)
        visible = self._visible
        if visible is None or key not in self.runs:
            return budget
        if budget <= 0:
            self._visible = self._value = None
            return budget
        try:
            at = _find(visible, (*key, i), self._hint)
        except ValueError:
            return budget - 1  # unreachable item
        del visible[at]
        self._hint = at
        if self._value is not None:
            self._value = self._splice_value(self._value, at, [], 1)
        return budget - 1

    # -- materialisation ---------------------------------------------------------

    def _visible_ids(self) -> list[ElemId]:
        if self._order is None:
            self._order = self._walk()
            self._visible = None
        if self._visible is None:
            dead = self.dead
            order = self._order
            self._visible = [e for e in order if not self._is_dead(e)] if dead else list(order)
            self._value = None
        return self._visible

    def _walk(self) -> list[ElemId]:
        """Depth-first walk from the head, children newest first; orphans are skipped."""
        runs, kids, anchors = self.runs, self._kids, self._anchors
        for offs in anchors.values():
            offs.sort()
        order: list[ElemId] = []
        stack: list[tuple[RunKey, int]] = [(k, 0) for k in sorted(kids.get(None, ()))]
        while stack:
            key, j = stack.pop()
            n = len(runs[key][1])
            found = anchors.get(key)
            anchor = -1
            if found is not None:
                idx = bisect_left(found, j)
                if idx < len(found) and found[idx] < n:
                    anchor = found[idx]
            if anchor < 0:
                order.extend([(*key, i) for i in range(j, n)])
                continue
            order.extend([(*key, i) for i in range(j, anchor + 1)])
            children = kids[(*key, anchor)]
            if len(children) > 1:
                children = sorted(children)
            # Children of item (key, anchor), newest first: the runs newer than this
            # one, then this run's next item, then older runs (only a forged op can
            # anchor an older run inside a newer one). Pushed in reverse.
            for c in children:
                if c < key:
                    stack.append((c, 0))
            if anchor + 1 < n:
                stack.append((key, anchor + 1))
            for c in children:
                if c > key:
                    stack.append((c, 0))
        return order

    def __len__(self) -> int:
        return len(self._visible_ids())

    def value(self) -> Json:
        visible = self._visible_ids()
        if self._value is None:
            runs = self.runs
            self._value = self._join([runs[e[:4]][1][e[4]] for e in visible])
        return self._value if isinstance(self._value, str) else list(self._value)

    def prepare(self, intent: str, args: Any) -> Any:
        visible = self._visible_ids()
        length = len(visible)
        if intent == "insert":
            a = expect_dict(args, "insert", frozenset({"index", self._ITEMS_ARG}))
            index = expect_int(a["index"], "insert.index", 0, length)
            items = self._prepare_items(a[self._ITEMS_ARG], "insert." + self._ITEMS_ARG)
            after = None if index == 0 else list(visible[index - 1])
            self._hint = index
            return {"after": after, "items": items}
        if intent == "delete":
            a = expect_dict(args, "delete", _RANGE)
            index = expect_int(a["index"], "delete.index", 0, length)
            count = expect_int(a["count"], "delete.count", 1, min(MAX_ITEMS, length - index))
            self._hint = index
            return {"ids": [list(e) for e in visible[index : index + count]]}
        fail("intent", f"{self.TYPE} has no intent {intent!r} (use 'insert' or 'delete')")

    # -- wire ---------------------------------------------------------------------

    def to_wire(self) -> Any:
        runs, dead = self.runs, self.dead
        return {
            "r": [[*k, _id_wire(runs[k][0]), runs[k][1]] for k in sorted(runs)],
            "d": [[*k, sorted(dead[k])] for k in sorted(dead)],
        }

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        name = cls.TYPE
        d = expect_dict(obj, name, _WIRE)
        runs: dict[RunKey, Run] = {}
        keys: list[RunKey] = []
        for row in expect_seq(d["r"], name + ".r", MAX_STATE_ITEMS):
            r = expect_seq(row, name + ".r", 6, 6)
            key = parse_order(r[:4], name + ".r")
            after = None if r[4] is None else parse_id(r[4], name + ".r.after")
            cls._check_items(r[5], name + ".r.items")
            runs[key] = (after, r[5] if type(r[5]) is not tuple else list(r[5]))
            keys.append(key)
        check_ascending(keys, name + ".r")
        dead: dict[RunKey, set[int]] = {}
        keys = []
        for row in expect_seq(d["d"], name + ".d", MAX_STATE_ITEMS):
            r = expect_seq(row, name + ".d", 5, 5)
            key = parse_order(r[:4], name + ".d")
            offs = [
                expect_int(i, name + ".d.i", 0, MAX_ITEMS - 1)
                for i in expect_seq(r[4], name + ".d", MAX_ITEMS, 1)
            ]
            check_ascending(offs, name + ".d.i")
            dead[key] = set(offs)
            keys.append(key)
        check_ascending(keys, name + ".d")
        return cls(runs, dead)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Sequence) or type(other) is not type(self):
            return NotImplemented
        return self.runs == other.runs and self.dead == other.dead

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.runs)} runs, {len(self.dead)} with deletions)"


class RGA(_Sequence):
    """Replicated list of JSON values."""

    TYPE: ClassVar[str] = "rga"
    _ITEMS_ARG: ClassVar[str] = "items"
    __slots__ = ()

    @classmethod
    def _check_items(cls, items: Any, field: str) -> None:
        for v in expect_seq(items, field, MAX_ITEMS, 1):
            check_json(v, field)

    @classmethod
    def _prepare_items(cls, items: Any, field: str) -> Items:
        out = [prepare_json(v, field) for v in expect_seq(items, field, MAX_ITEMS, 1)]
        return out

    @classmethod
    def _join(cls, pieces: list[Any]) -> Json:
        return pieces

    @classmethod
    def _splice_value(cls, value: Any, at: int, pieces: list[Any], drop: int) -> Any:
        value[at : at + drop] = pieces
        return value


class Text(_Sequence):
    """Replicated text; items are code points, an op's items one ``str``."""

    TYPE: ClassVar[str] = "text"
    _ITEMS_ARG: ClassVar[str] = "text"
    __slots__ = ()

    @classmethod
    def _check_items(cls, items: Any, field: str) -> None:
        s = expect_str(items, field, 4 * MAX_ITEMS, 1)
        if len(s) > MAX_ITEMS:
            fail(field, f"more than {MAX_ITEMS} characters")

    @classmethod
    def _prepare_items(cls, items: Any, field: str) -> Items:
        cls._check_items(items, field)
        return items

    @classmethod
    def _join(cls, pieces: list[Any]) -> Json:
        return "".join(pieces)

    @classmethod
    def _splice_value(cls, value: Any, at: int, pieces: list[Any], drop: int) -> Any:
        return value[:at] + "".join(pieces) + value[at + drop :]
