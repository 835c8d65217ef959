"""LWW and multi-value registers: laws, wire, and who wins."""

from __future__ import annotations

import pytest
from crdt_strategies import (
    Writer,
    check_laws,
    check_rejects_garbage,
    garbage,
    mutate,
    roundtrip,
)
from hypothesis import given
from hypothesis import strategies as st

from crdt.base import OpContext
from crdt.errors import InvalidOperation
from crdt.types import LWWRegister, MVRegister


@pytest.mark.parametrize("cls", [LWWRegister, MVRegister])
@given(data=st.data())
def test_laws(cls: type[LWWRegister] | type[MVRegister], data: st.DataObject) -> None:
    check_laws(data, cls)


@pytest.mark.parametrize("cls", [LWWRegister, MVRegister])
@given(data=st.data())
def test_rejects_garbage(cls: type[LWWRegister] | type[MVRegister], data: st.DataObject) -> None:
    a, b = Writer(cls, 1), Writer(cls, 2)
    a.do("set", {"x": [1, 2.5]})
    b.do("set", "y")
    a.sync(b)
    check_rejects_garbage(cls, data.draw(garbage))
    check_rejects_garbage(cls, mutate(data, a.state.to_wire()))


def test_lww_later_wins_and_ties_break_by_author() -> None:
    a, b = Writer(LWWRegister, 1), Writer(LWWRegister, 2)
    assert a.value() is None
    late = a.do("set", "late", hlc=20)
    early = b.do("set", "early", hlc=10)
    b.receive(late)
    a.receive(early)
    assert a.value() == b.value() == "late"
    # Same clock: the greater author key wins, in either delivery order.
    c, d = Writer(LWWRegister, 3), Writer(LWWRegister, 4)
    x, y = c.do("set", "from-3", hlc=30), d.do("set", "from-4", hlc=30)
    c.receive(y)
    d.receive(x)
    assert c.value() == d.value() == "from-4"


def test_lww_normalises_values() -> None:
    op = LWWRegister().prepare("set", {"b": (1, 2), "a": None})
    assert op == {"v": {"a": None, "b": [1, 2]}} and list(op["v"]) == ["a", "b"]
    assert roundtrip(op) == op


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), {1: 2}, b"bytes", 2**64, object(), "\ud800"]
)
def test_non_json_values_rejected(value: object) -> None:
    for cls in (LWWRegister, MVRegister):
        with pytest.raises(InvalidOperation):
            cls().prepare("set", value)


def test_deep_json_rejected() -> None:
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidOperation, match="deeper"):
        LWWRegister().prepare("set", deep)
    with pytest.raises(InvalidOperation, match="deeper"):
        LWWRegister.check_op({"v": deep})


def test_mv_keeps_concurrent_values_and_later_set_supersedes() -> None:
    a, b = Writer(MVRegister, 1), Writer(MVRegister, 2)
    x, y = a.do("set", "x"), b.do("set", "y")
    a.receive(y)
    b.receive(x)
    assert sorted(a.value()) == ["x", "y"] and a.value() == b.value()
    z = a.do("set", "z")  # a saw both
    b.receive(z)
    assert a.value() == b.value() == ["z"]


def test_mv_set_concurrent_with_supersede_survives() -> None:
    a, b, c = Writer(MVRegister, 1), Writer(MVRegister, 2), Writer(MVRegister, 3)
    x = a.do("set", "x")
    b.receive(x)
    y = b.do("set", "y")  # supersedes x
    w = c.do("set", "w")  # concurrent with both
    for r in (a, b, c):
        r.receive(x, y, w)
    assert a.value() == b.value() == c.value()
    assert sorted(a.value()) == ["w", "y"]


def test_mv_wire_requires_context_to_cover_entries() -> None:
    with pytest.raises(InvalidOperation, match="cover"):
        MVRegister.from_wire({"e": [[b"\x01" * 32, 0, 1]], "c": []})


def test_lww_value_must_be_nil_when_unset() -> None:
    with pytest.raises(InvalidOperation):
        LWWRegister.from_wire({"k": None, "v": 3})
    ctx = OpContext(b"\x01" * 32, 0, b"\x02" * 32, 5)
    reg = LWWRegister.delta({"v": 3}, ctx)
    assert LWWRegister.from_wire(roundtrip(reg.to_wire())) == reg
