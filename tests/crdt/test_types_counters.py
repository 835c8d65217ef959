"""GCounter and PNCounter: laws, wire, and counting semantics."""

from __future__ import annotations

import pytest
from crdt_strategies import Writer, check_laws, check_rejects_garbage, garbage, mutate
from hypothesis import given
from hypothesis import strategies as st

from crdt.errors import InvalidOperation
from crdt.types import GCounter, PNCounter


@pytest.mark.parametrize("cls", [GCounter, PNCounter])
@given(data=st.data())
def test_laws(cls: type[GCounter] | type[PNCounter], data: st.DataObject) -> None:
    check_laws(data, cls)


@pytest.mark.parametrize("cls", [GCounter, PNCounter])
@given(data=st.data())
def test_rejects_garbage(cls: type[GCounter] | type[PNCounter], data: st.DataObject) -> None:
    hist_state = cls()
    w = Writer(cls, 1)
    w.do("inc", {"n": 2, "author": w.author})
    hist_state.merge(w.state)
    check_rejects_garbage(cls, data.draw(garbage))
    check_rejects_garbage(cls, mutate(data, hist_state.to_wire()))


def test_gcounter_sums_replicas() -> None:
    a, b = Writer(GCounter, 1), Writer(GCounter, 2)
    ops = [a.do("inc", {"n": 3, "author": a.author}), a.do("inc", {"n": 4, "author": a.author})]
    ops.append(b.do("inc", {"n": 10, "author": b.author}))
    assert ops[1][0] == {"t": 7}  # the op carries the author's new total
    a.receive(*ops)
    a.receive(*ops)  # redelivery changes nothing
    assert a.value() == 17
    b.sync(a)
    assert b.value() == 17 and b.state == a.state


def test_pncounter_dec() -> None:
    a, b = Writer(PNCounter, 1), Writer(PNCounter, 2)
    a.do("inc", {"n": 5, "author": a.author})
    b.do("dec", {"n": 8, "author": b.author})
    b.do("inc", {"n": 1, "author": b.author})
    a.sync(b)
    assert a.value() == -2


@pytest.mark.parametrize(
    ("intent", "args"),
    [
        ("inc", {"n": 0, "author": b"\x01" * 32}),
        ("inc", {"n": True, "author": b"\x01" * 32}),
        ("inc", {"n": 1, "author": b"\x01" * 31}),
        ("inc", {"n": 1}),
        ("inc", 3),
        ("add", {"n": 1, "author": b"\x01" * 32}),
    ],
)
def test_bad_intents(intent: str, args: object) -> None:
    for cls in (GCounter, PNCounter):
        with pytest.raises(InvalidOperation):
            cls().prepare(intent, args)


def test_bad_ops_name_the_field() -> None:
    with pytest.raises(InvalidOperation, match=r"op\.t"):
        GCounter.check_op({"t": -1})
    with pytest.raises(InvalidOperation, match=r"op\.p"):
        PNCounter.check_op({"p": True})
    with pytest.raises(InvalidOperation):
        PNCounter.check_op({"p": 1, "n": 1})
    with pytest.raises(InvalidOperation):
        GCounter.from_wire([[b"\x01" * 32, 0]])  # zero totals are not canonical


def test_total_cannot_overflow() -> None:
    c = GCounter({b"\x01" * 32: 2**63 - 1})
    with pytest.raises(InvalidOperation):
        c.prepare("inc", {"n": 1, "author": b"\x01" * 32})
