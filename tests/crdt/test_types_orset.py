"""Add-wins OR-Set: laws, wire, and add-wins semantics."""

from __future__ import annotations

import pytest
from crdt_strategies import Writer, check_laws, check_rejects_garbage, garbage, mutate
from hypothesis import given
from hypothesis import strategies as st

from crdt.errors import InvalidOperation
from crdt.types import ORSet


@given(data=st.data())
def test_laws(data: st.DataObject) -> None:
    check_laws(data, ORSet, n_replicas=3, max_steps=20)


@given(data=st.data())
def test_rejects_garbage(data: st.DataObject) -> None:
    a = Writer(ORSet, 1)
    a.do("add", "x")
    a.do("add", 7)
    a.do("remove", "x")
    check_rejects_garbage(ORSet, data.draw(garbage))
    check_rejects_garbage(ORSet, mutate(data, a.state.to_wire()))


def test_add_remove_and_sorted_mixed_value() -> None:
    a = Writer(ORSet, 1)
    for e in ["b", 3, b"z", -1, "a", b"", 3]:
        a.do("add", e)
    assert a.value() == [-1, 3, "a", "b", b"", b"z"]
    a.do("remove", 3)
    assert a.value() == [-1, "a", "b", b"", b"z"]
    assert 3 not in a.state and "a" in a.state and True not in a.state


def test_concurrent_add_and_remove_add_wins() -> None:
    a, b = Writer(ORSet, 1), Writer(ORSet, 2)
    add = a.do("add", "e")
    b.receive(add)
    rm = b.do("remove", "e")
    again = a.do("add", "e")  # concurrent with the remove
    a.receive(rm)
    b.receive(again)
    assert a.value() == b.value() == ["e"]
    # A remove that observed every add does remove it.
    final = b.do("remove", "e")
    a.receive(final)
    assert a.value() == b.value() == []


def test_remove_absent_is_invalid() -> None:
    with pytest.raises(InvalidOperation, match="not present"):
        ORSet().prepare("remove", "nope")


@pytest.mark.parametrize("elem", [True, 1.5, None, [1], "x" * 257, b"x" * 257, 2**63])
def test_bad_elements(elem: object) -> None:
    with pytest.raises(InvalidOperation):
        ORSet().prepare("add", elem)
    with pytest.raises(InvalidOperation):
        ORSet.check_op({"add": elem})


def test_bad_ops() -> None:
    with pytest.raises(InvalidOperation, match=r"op\.dots"):
        ORSet.check_op({"rm": "x", "dots": []})
    with pytest.raises(InvalidOperation, match=r"op\.dots"):
        ORSet.check_op({"rm": "x", "dots": [[b"\x01" * 31, 0]]})
    with pytest.raises(InvalidOperation):
        ORSet.check_op({"add": "x", "extra": 1})
