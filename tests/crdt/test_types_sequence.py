"""RGA list and text: laws, wire, positions, concurrent inserts, no run interleaving."""

from __future__ import annotations

import pytest
from crdt_strategies import (
    INTENTS,
    Writer,
    check_laws,
    check_rejects_garbage,
    garbage,
    mutate,
    roundtrip,
)
from hypothesis import given
from hypothesis import strategies as st

from crdt.errors import InvalidOperation
from crdt.types import RGA, Text


@pytest.mark.parametrize("cls", [RGA, Text])
@given(data=st.data())
def test_laws(cls: type[RGA] | type[Text], data: st.DataObject) -> None:
    check_laws(data, cls, n_replicas=3, max_steps=20)


@pytest.mark.parametrize("cls", [RGA, Text])
@given(data=st.data())
def test_rejects_garbage(cls: type[RGA] | type[Text], data: st.DataObject) -> None:
    a = Writer(cls, 1)
    arg = "text" if cls is Text else "items"
    a.do("insert", {"index": 0, arg: "ab" if cls is Text else ["a", "b"]})
    a.do("delete", {"index": 1, "count": 1})
    check_rejects_garbage(cls, data.draw(garbage))
    check_rejects_garbage(cls, mutate(data, a.state.to_wire()))


def visible_ids(state: RGA | Text) -> list[object]:
    """Every visible id in order, through the public API (a delete-all op)."""
    n = len(state)
    return state.prepare("delete", {"index": 0, "count": n})["ids"] if n else []


@pytest.mark.parametrize("cls", [RGA, Text])
@given(data=st.data())
def test_incremental_cache_matches_a_fresh_walk(
    cls: type[RGA] | type[Text], data: st.DataObject
) -> None:
    """Warm caches patched by inserts, deletes and merges equal a from-scratch walk."""
    writers = [Writer(cls, n) for n in (1, 2, 3)]
    for _ in range(data.draw(st.integers(1, 40))):
        w = data.draw(st.sampled_from(writers))
        if data.draw(st.integers(0, 2)) == 0:
            w.sync(data.draw(st.sampled_from(writers)))
        else:
            intent, args = INTENTS[cls.TYPE](data, w.state, w.author)
            w.do(intent, args)
        assert visible_ids(w.state) == visible_ids(w.state.copy())
        assert w.value() == w.state.copy().value()
        assert roundtrip(w.state.to_wire()) == roundtrip(w.state.copy().to_wire())


@given(data=st.data())
def test_text_matches_a_plain_string(data: st.DataObject) -> None:
    """Single-writer edits behave exactly like string slicing."""
    w, model = Writer(Text, 1), ""
    for _ in range(data.draw(st.integers(1, 30))):
        if model and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(model) - 1))
            n = data.draw(st.integers(1, len(model) - i))
            w.do("delete", {"index": i, "count": n})
            model = model[:i] + model[i + n :]
        else:
            i = data.draw(st.integers(0, len(model)))
            s = data.draw(st.text(min_size=1, max_size=5))
            w.do("insert", {"index": i, "text": s})
            model = model[:i] + s + model[i:]
        assert w.value() == model
        assert len(w.state) == len(model)


def test_list_insert_delete_positions() -> None:
    a = Writer(RGA, 1)
    a.do("insert", {"index": 0, "items": [1, 2, 3]})
    a.do("insert", {"index": 1, "items": ["x"]})
    a.do("insert", {"index": 4, "items": [{"k": None}]})
    assert a.value() == [1, "x", 2, 3, {"k": None}]
    a.do("delete", {"index": 0, "count": 2})
    assert a.value() == [2, 3, {"k": None}]
    a.do("insert", {"index": 0, "items": [0]})
    assert a.value() == [0, 2, 3, {"k": None}]


def test_concurrent_inserts_newer_first_runs_not_interleaved() -> None:
    a, b = Writer(Text, 1), Writer(Text, 2)
    base = a.do("insert", {"index": 0, "text": "[]"})
    b.receive(base)
    x = a.do("insert", {"index": 1, "text": "aaa"}, hlc=10)
    y = b.do("insert", {"index": 1, "text": "bbb"}, hlc=11)
    a.receive(y)
    b.receive(x)
    assert a.value() == b.value() == "[bbbaaa]"  # newer run first, each run whole


def test_forward_typing_runs_do_not_interleave() -> None:
    a, b = Writer(Text, 1), Writer(Text, 2)
    a_ops, b_ops = [], []
    for i, ch in enumerate("hello"):
        a_ops.append(a.do("insert", {"index": i, "text": ch}))
    for i, ch in enumerate("WORLD"):
        b_ops.append(b.do("insert", {"index": i, "text": ch}))
    a.receive(*b_ops)
    b.receive(*a_ops)
    assert a.value() == b.value()
    assert a.value() in ("helloWORLD", "WORLDhello")


def test_delete_concurrent_with_insert_keeps_insert() -> None:
    a, b = Writer(Text, 1), Writer(Text, 2)
    base = a.do("insert", {"index": 0, "text": "abc"})
    b.receive(base)
    d = a.do("delete", {"index": 0, "count": 3})
    i = b.do("insert", {"index": 2, "text": "X"})
    a.receive(i)
    b.receive(d, d)
    assert a.value() == b.value() == "X"


@pytest.mark.parametrize(
    ("intent", "args"),
    [
        ("insert", {"index": 1, "text": "x"}),
        ("insert", {"index": -1, "text": "x"}),
        ("insert", {"index": 0, "text": ""}),
        ("insert", {"index": 0, "text": "x" * 4097}),
        ("insert", {"index": True, "text": "x"}),
        ("delete", {"index": 0, "count": 1}),
        ("delete", {"index": 0, "count": 0}),
        ("move", {"index": 0}),
    ],
)
def test_out_of_range_and_bad_intents(intent: str, args: object) -> None:
    with pytest.raises(InvalidOperation):
        Text().prepare(intent, args)


def test_bad_ops_name_the_field() -> None:
    good_id = [1, b"\x01" * 32, b"\x02" * 32, 0, 0]
    with pytest.raises(InvalidOperation, match=r"op\.after"):
        Text.check_op({"after": [1, b"\x01" * 32, b"\x02" * 32, 0], "items": "x"})
    with pytest.raises(InvalidOperation, match=r"op\.items"):
        Text.check_op({"after": good_id, "items": ["x"]})
    with pytest.raises(InvalidOperation, match=r"op\.items"):
        RGA.check_op({"after": None, "items": []})
    with pytest.raises(InvalidOperation, match=r"op\.ids"):
        RGA.check_op({"ids": []})
    with pytest.raises(InvalidOperation, match=r"op\.ids\.i"):
        RGA.check_op({"ids": [[1, b"\x01" * 32, b"\x02" * 32, 0, 4096]]})
    Text.check_op({"ids": [good_id]})
