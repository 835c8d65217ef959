"""OR-Map of nested CRDTs: laws, wire, add-wins keys, nested merge and nested maps."""

from __future__ import annotations

from typing import Any

import pytest
from crdt_strategies import Writer, check_laws, check_rejects_garbage, garbage, mutate
from hypothesis import given
from hypothesis import strategies as st

from crdt.errors import InvalidOperation
from crdt.types import ORMap


def up(key: str, tname: str, intent: str, args: Any) -> dict[str, Any]:
    return {"key": key, "type": tname, "intent": intent, "args": args}


@given(data=st.data())
def test_laws(data: st.DataObject) -> None:
    check_laws(data, ORMap, n_replicas=3, max_steps=16)


@given(data=st.data())
def test_rejects_garbage(data: st.DataObject) -> None:
    a = Writer(ORMap, 1)
    a.do("update", up("c", "pncounter", "inc", {"n": 2, "author": a.author}))
    a.do("update", up("m", "ormap", "update", up("s", "orset", "add", "x")))
    a.do("update", up("t", "text", "insert", {"index": 0, "text": "hi"}))
    a.do("remove", {"key": "t"})
    check_rejects_garbage(ORMap, data.draw(garbage))
    check_rejects_garbage(ORMap, mutate(data, a.state.to_wire()))


def test_update_and_nested_merge() -> None:
    a, b = Writer(ORMap, 1), Writer(ORMap, 2)
    x = a.do("update", up("hits", "gcounter", "inc", {"n": 2, "author": a.author}))
    y = b.do("update", up("hits", "gcounter", "inc", {"n": 5, "author": b.author}))
    z = b.do("update", up("name", "lww", "set", "bob"))
    a.receive(y, z)
    b.receive(x)
    assert a.value() == b.value() == {"hits": 7, "name": "bob"}
    assert a.state == b.state


def test_concurrent_update_and_remove_add_wins_and_keeps_history() -> None:
    a, b = Writer(ORMap, 1), Writer(ORMap, 2)
    first = a.do("update", up("c", "pncounter", "inc", {"n": 3, "author": a.author}))
    b.receive(first)
    rm = b.do("remove", {"key": "c"})
    assert b.value() == {}
    more = a.do("update", up("c", "pncounter", "inc", {"n": 1, "author": a.author}))
    a.receive(rm)
    b.receive(more)
    # The key survives, and its counter shows the whole history (3 + 1), not a reset.
    assert a.value() == b.value() == {"c": 4}


def test_remove_then_readd_shows_merged_history() -> None:
    a = Writer(ORMap, 1)
    a.do("update", up("s", "orset", "add", "old"))
    a.do("remove", {"key": "s"})
    assert a.value() == {}
    a.do("update", up("s", "orset", "add", "new"))
    assert a.value() == {"s": ["new", "old"]}


def test_two_types_under_one_key_do_not_conflict() -> None:
    a, b = Writer(ORMap, 1), Writer(ORMap, 2)
    x = a.do("update", up("k", "lww", "set", 1))
    y = b.do("update", up("k", "pncounter", "inc", {"n": 9, "author": b.author}))
    a.receive(y)
    b.receive(x)
    assert a.value() == b.value() == {"k": 9}  # "pncounter" > "lww"
    assert a.state.get("k") is not None and a.state.get("k").TYPE == "pncounter"  # type: ignore[union-attr]
    a.do("remove", {"key": "k"})  # removes every type under the key
    assert a.value() == {}


def test_nested_maps() -> None:
    a, b = Writer(ORMap, 1), Writer(ORMap, 2)
    x = a.do(
        "update",
        up("doc", "ormap", "update", up("title", "text", "insert", {"index": 0, "text": "Hi"})),
    )
    b.receive(x)
    y = b.do(
        "update",
        up("doc", "ormap", "update", up("title", "text", "insert", {"index": 2, "text": "!"})),
    )
    z = a.do("update", up("doc", "ormap", "update", up("tags", "orset", "add", "new")))
    a.receive(y)
    b.receive(z)
    assert a.value() == b.value() == {"doc": {"tags": ["new"], "title": "Hi!"}}
    w = a.do("update", up("doc", "ormap", "remove", {"key": "tags"}))
    b.receive(w)
    assert b.value() == {"doc": {"title": "Hi!"}}


def test_nesting_depth_is_bounded() -> None:
    args: Any = up("leaf", "lww", "set", 1)
    for _ in range(20):
        args = up("m", "ormap", "update", args)
    with pytest.raises(InvalidOperation, match="deeper"):
        ORMap().prepare("update", args)


def test_errors() -> None:
    m = ORMap()
    with pytest.raises(InvalidOperation, match="not present"):
        m.prepare("remove", {"key": "nope"})
    with pytest.raises(InvalidOperation, match="unknown CRDT type"):
        m.prepare("update", up("k", "nosuch", "set", 1))
    with pytest.raises(InvalidOperation, match="ormap\\['k'\\]"):
        ORMap.check_op({"up": "k", "type": "gcounter", "op": {"t": 0}})
    with pytest.raises(InvalidOperation, match=r"op\.up"):
        ORMap.check_op({"up": "k" * 300, "type": "gcounter", "op": {"t": 1}})
    with pytest.raises(InvalidOperation, match="nested state"):
        a = Writer(ORMap, 1)
        a.do("update", up("k", "lww", "set", 1))
        wire = a.state.to_wire()
        wire["v"] = []
        ORMap.from_wire(wire)
