"""The type registry, and properties every registered type shares."""

from __future__ import annotations

import pytest
from crdt_strategies import check_rejects_garbage, garbage
from hypothesis import given
from hypothesis import strategies as st

from crdt.base import Crdt
from crdt.errors import InvalidOperation
from crdt.types import TYPES, type_named


def test_registry_names() -> None:
    assert sorted(TYPES) == sorted(
        ["gcounter", "lww", "mvreg", "orset", "ormap", "pncounter", "rga", "text"]
    )
    for name, cls in TYPES.items():
        assert name == cls.TYPE and type_named(name) is cls


@pytest.mark.parametrize("name", ["", "GCounter", "nope", None, 3, b"lww"])
def test_unknown_type(name: object) -> None:
    with pytest.raises(InvalidOperation, match="unknown CRDT type"):
        type_named(name)


@pytest.mark.parametrize("cls", list(TYPES.values()), ids=list(TYPES))
def test_empty_state(cls: type[Crdt]) -> None:
    s = cls()
    assert s == cls.from_wire(s.to_wire()) and s == s.copy()
    assert s != object() and repr(s)
    with pytest.raises(InvalidOperation, match="intent"):
        s.prepare("no-such-intent", None)


@given(name=st.sampled_from(sorted(TYPES)), obj=garbage)
def test_garbage_only_raises_invalid_operation(name: str, obj: object) -> None:
    check_rejects_garbage(TYPES[name], obj)
