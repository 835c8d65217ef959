"""Hypothesis strategies and law checks for the CRDT types (reusable by other suites).

Lives at ``tests/`` top level (imported as ``crdt_strategies``) because a module under
``tests/crdt/`` would be reached as ``crdt.*`` and clash with the real package.

The core is :func:`simulate`: a few replicas with distinct authors take turns either
turning a random *intent* into an operation on their own state (``prepare``; the op
then takes a msgpack round trip and passes ``check_op`` like a received one) or
merging another replica's state. Clocks only grow, so an op's hlc exceeds that of every
op its author had seen; ops of one "change" share its hash and hlc and differ by index.
:func:`check_laws` then checks the merge laws and wire properties on the result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from hypothesis import strategies as st

from crdt.base import Crdt, OpContext
from crdt.errors import InvalidOperation
from crdt.types import TYPES, ORMap

Intent = tuple[str, Any]
IntentGen = Callable[[st.DataObject, Crdt, bytes], Intent]
"""Draws a local intent for a replica's current state (author given for counters)."""

authors = st.binary(min_size=32, max_size=32)
hashes = st.binary(min_size=32, max_size=32)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
set_elements = (
    st.integers(-3, 3)
    | st.sampled_from(["a", "b", "c", ""])
    | st.sampled_from([b"", b"x", b"\x00"])
)
map_keys = st.sampled_from(["k", "x", "y"])

garbage = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.tuples(inner, inner)
        | st.dictionaries(
            st.text(max_size=6) | st.binary(max_size=4) | st.integers(), inner, max_size=4
        )
    ),
    max_leaves=20,
)
"""Arbitrary msgpack-like objects (plus out-of-range ints, NaN, tuples) for rejection tests."""


def roundtrip(obj: Any) -> Any:
    """What a peer decodes from ``obj``: msgpack with bin type, default options."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True))


def wire_bytes(state: Crdt) -> bytes:
    return bytes(msgpack.packb(state.to_wire(), use_bin_type=True))


def mutate(data: st.DataObject, obj: Any) -> Any:
    """``obj`` with one randomly chosen node replaced by garbage."""
    if data.draw(st.integers(0, 3)) == 0 or not isinstance(obj, list | tuple | dict) or not obj:
        return data.draw(garbage)
    if isinstance(obj, dict):
        k = data.draw(st.sampled_from(sorted(obj, key=repr)))
        out = dict(obj)
        if data.draw(st.booleans()):
            out[k] = mutate(data, obj[k])
        else:
            out[data.draw(st.text(max_size=3))] = data.draw(garbage)
        return out
    i = data.draw(st.integers(0, len(obj) - 1))
    items = list(obj)
    items[i] = mutate(data, items[i])
    return items


# -- intents ----------------------------------------------------------------------


def _counter_gen(data: st.DataObject, state: Crdt, author: bytes) -> Intent:
    intent = "inc" if state.TYPE == "gcounter" else data.draw(st.sampled_from(["inc", "dec"]))
    return intent, {"n": data.draw(st.integers(1, 50)), "author": author}


def _set_gen(data: st.DataObject, state: Crdt, author: bytes) -> Intent:
    return "set", data.draw(json_values)


def _orset_gen(data: st.DataObject, state: Crdt, author: bytes) -> Intent:
    present = state.value()
    if present and data.draw(st.integers(0, 2)) == 0:
        return "remove", data.draw(st.sampled_from(present))
    return "add", data.draw(set_elements)


def _seq_gen(data: st.DataObject, state: Crdt, author: bytes) -> Intent:
    length = len(state.value())
    if length and data.draw(st.integers(0, 2)) == 0:
        index = data.draw(st.integers(0, length - 1))
        return "delete", {"index": index, "count": data.draw(st.integers(1, length - index))}
    index = data.draw(st.integers(0, length))
    if state.TYPE == "text":
        return "insert", {
            "index": index,
            "text": data.draw(st.text("abcxyz", min_size=1, max_size=4)),
        }
    return "insert", {
        "index": index,
        "items": data.draw(st.lists(json_scalars, min_size=1, max_size=3)),
    }


_NESTED = ["gcounter", "pncounter", "lww", "mvreg", "orset", "text", "rga", "ormap"]


def _ormap_gen(data: st.DataObject, state: Crdt, author: bytes, depth: int = 0) -> Intent:
    assert isinstance(state, ORMap)
    present = sorted(state.value())
    if present and data.draw(st.integers(0, 3)) == 0:
        return "remove", {"key": data.draw(st.sampled_from(present))}
    key = data.draw(map_keys)
    tname = data.draw(st.sampled_from(_NESTED[:-1] if depth >= 1 else _NESTED))
    nested = state.values.get((key, tname)) or TYPES[tname]()
    if tname == "ormap":
        intent, args = _ormap_gen(data, nested, author, depth + 1)
    else:
        intent, args = INTENTS[tname](data, nested, author)
    return "update", {"key": key, "type": tname, "intent": intent, "args": args}


INTENTS: dict[str, IntentGen] = {
    "gcounter": _counter_gen,
    "pncounter": _counter_gen,
    "lww": _set_gen,
    "mvreg": _set_gen,
    "orset": _orset_gen,
    "ormap": _ormap_gen,
    "rga": _seq_gen,
    "text": _seq_gen,
}
"""An intent generator for every registered type."""


# -- replicas -----------------------------------------------------------------------


@dataclass
class History:
    """Outcome of :func:`simulate`: final replica states and every op with its context."""

    replicas: list[Crdt]
    ops: list[tuple[Any, OpContext]] = field(default_factory=list)


def simulate(
    data: st.DataObject,
    cls: type[Crdt],
    n_replicas: int = 3,
    max_steps: int = 16,
    gen: IntentGen | None = None,
) -> History:
    """Random ops and merges on ``n_replicas`` replicas (see the module docstring)."""
    gen = gen or INTENTS[cls.TYPE]
    keys = data.draw(st.lists(authors, min_size=n_replicas, max_size=n_replicas, unique=True))
    hist = History([cls() for _ in keys])
    hlc = data.draw(st.integers(0, 2**40))
    seq = 0
    for _ in range(data.draw(st.integers(1, max_steps))):
        r = data.draw(st.integers(0, n_replicas - 1))
        if n_replicas > 1 and data.draw(st.integers(0, 3)) == 0:
            other = data.draw(st.integers(0, n_replicas - 1))
            hist.replicas[r].merge(hist.replicas[other])
            continue
        hlc += data.draw(st.integers(1, 3))
        seq += 1
        change = hashlib.sha256(seq.to_bytes(8, "big") + keys[r]).digest()
        for index in range(data.draw(st.integers(1, 2))):
            state = hist.replicas[r]
            intent, args = gen(data, state, keys[r])
            try:
                op = roundtrip(state.prepare(intent, args))
            except InvalidOperation:
                continue
            cls.check_op(op)
            ctx = OpContext(change, index, keys[r], hlc)
            state.apply(op, ctx)
            hist.ops.append((op, ctx))
    return hist


def build(cls: type[Crdt], ops: Sequence[tuple[Any, OpContext]], via_delta: bool = True) -> Crdt:
    """A fresh state with ``ops`` applied in the given order."""
    state = cls()
    for op, ctx in ops:
        if via_delta:
            state.merge(cls.delta(op, ctx))
        else:
            state.apply(op, ctx)
    return state


def joined(a: Crdt, b: Crdt) -> Crdt:
    out = a.copy()
    out.merge(b)
    return out


def check_laws(data: st.DataObject, cls: type[Crdt], **kw: Any) -> History:
    """Merge laws, order independence, apply == merge(delta), wire round trip."""
    hist = simulate(data, cls, **kw)
    ops = hist.ops

    # apply (fast path) equals merge(delta), step by step.
    fast, slow = cls(), cls()
    for op, ctx in ops:
        fast.apply(op, ctx)
        slow.merge(cls.delta(op, ctx))
        assert fast == slow, (op, ctx)
        assert fast.value() == slow.value() == fast.copy().value()  # caches == fresh
    everything = fast

    # Any delivery order, and any grouping into replicas, converges.
    shuffled = build(cls, data.draw(st.permutations(ops)))
    assert shuffled == everything
    assert shuffled.value() == everything.value()
    assert wire_bytes(shuffled) == wire_bytes(everything)
    union = cls()
    for replica in hist.replicas:
        assert replica.value() == replica.copy().value()
        union.merge(replica)
        assert union.value() == union.copy().value()
    assert union == everything
    assert union.value() == everything.value()

    # Merge laws on states made of random subsets of the ops.
    subsets = [
        data.draw(st.lists(st.sampled_from(ops), max_size=len(ops))) if ops else []
        for _ in range(3)
    ]
    a, b, c = (build(cls, s) for s in subsets)
    b_before = b.copy()
    assert joined(a, b) == joined(b, a)
    assert joined(joined(a, b), c) == joined(a, joined(b, c))
    assert joined(a, a) == a
    assert joined(a, everything) == everything
    assert b == b_before, "merge must not change its argument"
    assert wire_bytes(joined(a, b)) == wire_bytes(joined(b, a))

    # Wire: strict round trip, canonical bytes, copies are independent.
    for state in (a, b, everything):
        back = cls.from_wire(roundtrip(state.to_wire()))
        assert back == state
        assert back.value() == state.value()
        assert wire_bytes(back) == wire_bytes(state)
        twin = state.copy()
        assert twin == state
    if ops:
        twin = a.copy()
        for op, ctx in ops:
            twin.apply(op, ctx)
        assert twin == everything
        assert a == build(cls, subsets[0])
    return hist


SOME_CTX = OpContext(b"\x07" * 32, 1, b"\x05" * 32, 1000)


def check_rejects_garbage(cls: type[Crdt], obj: Any) -> None:
    """``from_wire`` and ``check_op`` either accept ``obj`` or raise InvalidOperation.

    What ``from_wire`` accepts must be canonical (re-encodes to the same bytes); what
    ``check_op`` accepts must apply cleanly.
    """
    try:
        state = cls.from_wire(obj)
    except InvalidOperation:
        pass
    else:
        assert wire_bytes(state) == msgpack.packb(obj, use_bin_type=True)
        state.value()
    try:
        cls.check_op(obj)
    except InvalidOperation:
        pass
    else:
        state = cls()
        state.apply(obj, SOME_CTX)
        assert state == cls.delta(obj, SOME_CTX)
        state.value()


class Writer:
    """One replica for example-based tests: intents become ops with a growing clock.

    ``do`` prepares on the writer's own state, round-trips the op through msgpack,
    checks and applies it, and returns ``(op, ctx)`` for delivery elsewhere. Receiving
    ops or syncing advances the clock past everything seen, as a hybrid clock would.
    """

    def __init__(self, cls: type[Crdt], n: int) -> None:
        self.cls = cls
        self.author = bytes([n]) * 32
        self.state = cls()
        self.clock = 0
        self.changes = 0

    def do(self, intent: str, args: Any, hlc: int | None = None) -> tuple[Any, OpContext]:
        self.clock = max(self.clock + 1, hlc or 0)
        self.changes += 1
        change = hashlib.sha256(self.author + self.changes.to_bytes(8, "big")).digest()
        op = roundtrip(self.state.prepare(intent, args))
        self.cls.check_op(op)
        ctx = OpContext(change, 0, self.author, self.clock if hlc is None else hlc)
        self.state.apply(op, ctx)
        return op, ctx

    def receive(self, *ops: tuple[Any, OpContext]) -> None:
        for op, ctx in ops:
            self.state.apply(op, ctx)
            self.clock = max(self.clock, ctx.hlc)

    def sync(self, other: Writer) -> None:
        self.state.merge(other.state)
        self.clock = max(self.clock, other.clock)

    def value(self) -> Any:
        return self.state.value()
