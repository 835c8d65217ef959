"""The document layer: parsing intents, coalescing counters, the independence rule,
nested paths and removal, down to the values a replica shows."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.change import KeySigner
from crdt.document import MAX_INTENTS, MAX_KEY_BYTES, MAX_PATH, Intent, parse_intents, prepare_ops
from crdt.errors import InvalidOperation
from crdt.replica import AccessPolicy, Replica
from crdt.types import ORMap

ALICE = KeySigner(b"\x01" * 32)
DOC = "app/doc"


def replica() -> Replica:
    return Replica(AccessPolicy.open_to([ALICE.public_key]))


def update(r: Replica, *ops: dict[str, Any], doc: str = DOC) -> Any:
    intents = parse_intents({"ops": list(ops)})
    prepared = prepare_ops(r.document(doc), intents, ALICE.public_key)
    r.create(ALICE, doc, prepared, 1)
    return r.value(doc)


def op(path: list[str], type_: str | None, action: str, args: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "action": action}
    if type_ is not None:
        out["type"] = type_
    if action != "remove":
        out["args"] = args
    return out


# -- parsing -----------------------------------------------------------------------------------


def test_parse_intents_builds_intents() -> None:
    intents = parse_intents(
        {
            "ops": [
                {"path": ["views"], "type": "pncounter", "action": "inc", "args": 3},
                {"path": ["profile", "name"], "type": "lww", "action": "set", "args": "ada"},
                {"path": ["old"], "action": "remove"},
                {"path": ["older"], "action": "remove", "type": "lww"},
                {"path": ["oldest"], "action": "remove", "type": 5},
                {"path": ["x"], "type": "orset", "action": "add"},
            ]
        }
    )
    assert intents == [
        Intent(("views",), "inc", "pncounter", 3),
        Intent(("profile", "name"), "set", "lww", "ada"),
        Intent(("old",), "remove"),
        Intent(("older",), "remove", None),  # no args: the key goes
        Intent(("oldest",), "remove", None),
        Intent(("x",), "add", "orset", None),
    ]


GOOD = {"path": ["a"], "type": "lww", "action": "set", "args": 1}
PARSE_ERRORS: dict[str, tuple[Any, str]] = {
    "not a dict": ([GOOD], "body"),
    "no ops": ({}, "body"),
    "extra key": ({"ops": [GOOD], "x": 1}, "body"),
    "ops not a list": ({"ops": GOOD}, "ops: "),
    "ops empty": ({"ops": []}, "ops: "),
    "ops too many": ({"ops": [GOOD] * (MAX_INTENTS + 1)}, "ops: "),
    "op not a dict": ({"ops": [GOOD, "set"]}, "ops[1]: expected an object"),
    "unknown field": ({"ops": [{**GOOD, "when": 1}]}, "ops[0]: unknown field(s) ['when']"),
    "path missing": ({"ops": [{"type": "lww", "action": "set"}]}, "ops[0].path"),
    "path str": ({"ops": [{**GOOD, "path": "a"}]}, "ops[0].path"),
    "path empty": ({"ops": [{**GOOD, "path": []}]}, "ops[0].path"),
    "path too long": ({"ops": [{**GOOD, "path": ["a"] * (MAX_PATH + 1)}]}, "ops[0].path"),
    "path key int": ({"ops": [{**GOOD, "path": ["a", 1]}]}, "ops[0].path"),
    "path key empty": ({"ops": [{**GOOD, "path": [""]}]}, "ops[0].path"),
    "path key long": (
        {"ops": [GOOD, {**GOOD, "path": ["é" * (MAX_KEY_BYTES // 2 + 1)]}]},
        "ops[1].path",
    ),
    "action missing": ({"ops": [{"path": ["a"], "type": "lww"}]}, "ops[0].action"),
    "action int": ({"ops": [{**GOOD, "action": 1}]}, "ops[0].action"),
    "type missing": ({"ops": [{"path": ["a"], "action": "set"}]}, "ops[0].type"),
    "type int": ({"ops": [{**GOOD, "type": 3}]}, "ops[0].type"),
    "type unknown": ({"ops": [GOOD, {**GOOD, "type": "lwww"}]}, "ops[1].type"),
    "element remove without type": (
        {"ops": [{"path": ["a"], "action": "remove", "args": 1}]},
        "ops[0].type",
    ),
}


@pytest.mark.parametrize("name", sorted(PARSE_ERRORS))
def test_parse_errors_name_the_field(name: str) -> None:
    body, where = PARSE_ERRORS[name]
    with pytest.raises(InvalidOperation) as info:
        parse_intents(body)
    assert str(info.value).startswith(where), str(info.value)


def test_limits_at_the_boundary_parse() -> None:
    assert len(parse_intents({"ops": [GOOD] * MAX_INTENTS})) == MAX_INTENTS
    deep = parse_intents({"ops": [{**GOOD, "path": ["k"] * MAX_PATH}]})
    assert len(deep[0].path) == MAX_PATH
    long_key = "é" * (MAX_KEY_BYTES // 2)
    assert parse_intents({"ops": [{**GOOD, "path": [long_key]}]})[0].path == (long_key,)


# -- counters ------------------------------------------------------------------------------------


def test_increments_of_one_counter_add_up_into_one_op() -> None:
    intents = parse_intents(
        {"ops": [op(["v"], "gcounter", "inc", 2), op(["v"], "gcounter", "inc", 3)]}
    )
    ops = prepare_ops(None, intents, ALICE.public_key)
    assert ops == [{"up": "v", "type": "gcounter", "op": {"t": 5}}]
    r = replica()
    assert update(r, op(["v"], "gcounter", "inc", 2), op(["v"], "gcounter", "inc", 3)) == {"v": 5}
    assert update(r, *[op(["v"], "gcounter", "inc", 1)] * 4) == {"v": 9}


def test_pncounter_inc_and_dec_in_one_update() -> None:
    r = replica()
    value = update(
        r,
        op(["n"], "pncounter", "inc", 10),
        op(["n"], "pncounter", "dec", 3),
        op(["n"], "pncounter", "inc", 1),
        op(["n"], "pncounter", "dec", 2),
    )
    assert value == {"n": 6}
    ops = prepare_ops(
        r.document(DOC),
        parse_intents({"ops": [op(["n"], "pncounter", "dec", 1)]}),
        ALICE.public_key,
    )
    assert len(ops) == 1
    assert update(r, op(["n"], "pncounter", "dec", 1), op(["m", "n"], "gcounter", "inc", 1)) == {
        "n": 5,
        "m": {"n": 1},
    }


@pytest.mark.parametrize("args", [0, -1, True, 1.5, "2", None])
def test_counter_steps_must_be_positive_integers(args: Any) -> None:
    intents = parse_intents({"ops": [op(["views"], "gcounter", "inc", args)]})
    with pytest.raises(InvalidOperation, match="views: inc takes a positive integer"):
        prepare_ops(None, intents, ALICE.public_key)


# -- independence --------------------------------------------------------------------------------

CONFLICTS: dict[str, tuple[list[dict[str, Any]], str]] = {
    "same value twice": (
        [op(["a"], "lww", "set", 1), op(["a"], "lww", "set", 2)],
        "ops[1] and ops[0] both touch a",
    ),
    "same path other type": (
        [op(["a"], "lww", "set", 1), op(["a"], "mvreg", "set", 2)],
        "ops[1] and ops[0] both touch a",
    ),
    "counter and register": (
        [op(["a"], "gcounter", "inc", 1), op(["a"], "lww", "set", 2)],
        "ops[1] and ops[0] both touch a",
    ),
    "register then counter": (
        [op(["a"], "lww", "set", 2), op(["a"], "gcounter", "inc", 1)],
        "ops[1] and ops[0] both touch a",
    ),
    "two counter types": (
        [op(["a"], "gcounter", "inc", 1), op(["a"], "pncounter", "inc", 1)],
        "ops[1] and ops[0] both touch a",
    ),
    "remove and update": (
        [op(["a"], None, "remove"), op(["a"], "lww", "set", 1)],
        "ops[1] and ops[0] both touch a",
    ),
    "map then value inside": (
        [op(["m"], None, "remove"), op(["m", "x"], "lww", "set", 1)],
        "ops[1] and ops[0] both touch m",
    ),
    "value inside then map": (
        [op(["m", "x"], "lww", "set", 1), op(["m"], None, "remove")],
        "ops[1] and ops[0] both touch m",
    ),
    "counter inside counter": (
        [op(["c"], "gcounter", "inc", 1), op(["c", "d"], "gcounter", "inc", 1)],
        "ops[1] and ops[0] both touch c",
    ),
    "deep prefix, third op": (
        [
            op(["z"], "lww", "set", 0),
            op(["m", "x", "y"], "text", "insert", {}),
            op(["m", "x"], None, "remove"),
        ],
        "ops[2] and ops[1] both touch m/x",
    ),
    "same text twice": (
        [
            op(["t"], "text", "insert", {"index": 0, "text": "a"}),
            op(["t"], "text", "insert", {"index": 0, "text": "b"}),
        ],
        "ops[1] and ops[0] both touch t",
    ),
}


@pytest.mark.parametrize("name", sorted(CONFLICTS))
def test_dependent_intents_are_refused(name: str) -> None:
    ops, message = CONFLICTS[name]
    intents = parse_intents({"ops": ops})
    with pytest.raises(InvalidOperation) as info:
        prepare_ops(None, intents, ALICE.public_key)
    assert str(info.value).startswith(message), str(info.value)
    assert "separate updates" in str(info.value)


def test_siblings_and_cousins_are_independent() -> None:
    r = replica()
    value = update(
        r,
        op(["m", "x"], "lww", "set", 1),
        op(["m", "y"], "gcounter", "inc", 2),
        op(["m", "z", "deep"], "orset", "add", "e"),
        op(["mx"], "lww", "set", 3),
        op(["n", "x"], "text", "insert", {"index": 0, "text": "hi"}),
    )
    assert value == {"m": {"x": 1, "y": 2, "z": {"deep": ["e"]}}, "mx": 3, "n": {"x": "hi"}}


# -- nesting and removal ---------------------------------------------------------------------------


def test_nested_paths_build_nested_maps() -> None:
    r = replica()
    assert update(r, op(["profile", "name"], "lww", "set", "ada")) == {"profile": {"name": "ada"}}
    update(r, op(["profile", "langs"], "rga", "insert", {"index": 0, "items": ["py", "c"]}))
    update(r, op(["profile", "langs"], "rga", "insert", {"index": 1, "items": ["go"]}))
    update(r, op(["profile", "bio"], "text", "insert", {"index": 0, "text": "hello"}))
    value = update(r, op(["profile", "bio"], "text", "delete", {"index": 1, "count": 3}))
    assert value == {"profile": {"name": "ada", "langs": ["py", "go", "c"], "bio": "ho"}}
    ops = prepare_ops(
        r.document(DOC), parse_intents({"ops": [op(["profile", "name"], "lww", "set", "x")]}), b""
    )
    assert ops == [
        {"up": "profile", "type": "ormap", "op": {"up": "name", "type": "lww", "op": {"v": "x"}}}
    ]


def test_deepest_path() -> None:
    r = replica()
    path = [f"k{i}" for i in range(MAX_PATH)]
    value = update(r, op(path, "lww", "set", "bottom"))
    for key in path:
        assert list(value) == [key]
        value = value[key]
    assert value == "bottom"


def test_remove_keys_at_any_depth() -> None:
    r = replica()
    update(
        r,
        op(["a"], "lww", "set", 1),
        op(["b"], "orset", "add", 2),
        op(["m", "x"], "lww", "set", 3),
        op(["m", "y"], "lww", "set", 4),
    )
    assert update(r, op(["a"], None, "remove"), op(["m", "x"], None, "remove")) == {
        "b": [2],
        "m": {"y": 4},
    }
    assert update(r, op(["m"], None, "remove")) == {"b": [2]}
    # remove of an absent key is an error, as is removal under an absent map
    for path in (["a"], ["nope"], ["b", "c"]):
        with pytest.raises(InvalidOperation, match="not present"):
            prepare_ops(r.document(DOC), parse_intents({"ops": [op(path, None, "remove")]}), b"")
    # re-adding a removed counter continues from its old total (documented semantics)
    update(r, op(["c"], "gcounter", "inc", 5))
    update(r, op(["c"], None, "remove"))
    assert update(r, op(["c"], "gcounter", "inc", 1)) == {"b": [2], "c": 6}


def test_removing_inside_a_removed_map_is_refused() -> None:
    r = replica()
    update(r, op(["m", "x"], "lww", "set", 3), op(["m", "y"], "lww", "set", 4))
    assert update(r, op(["m"], None, "remove")) == {}
    with pytest.raises(InvalidOperation, match="not present"):
        update(r, op(["m", "y"], None, "remove"))
    assert r.value(DOC) == {}


def test_remove_removes_every_type_under_the_key() -> None:
    r = replica()
    update(r, op(["k"], "lww", "set", 1))
    update(r, op(["k"], "mvreg", "set", 2))
    assert update(r, op(["k"], None, "remove")) == {}


def test_type_errors_surface_from_prepare() -> None:
    bad = [
        op(["s"], "orset", "remove", "absent"),
        op(["t"], "text", "delete", {"index": 0, "count": 1}),
        op(["t"], "text", "insert", {"index": 5, "text": "x"}),
        op(["r"], "lww", "frobnicate", 1),
        op(["g"], "gcounter", "dec", 1),
    ]
    for item in bad:
        with pytest.raises(InvalidOperation):
            prepare_ops(ORMap(), parse_intents({"ops": [item]}), ALICE.public_key)


# -- one update equals the same intents one by one -------------------------------------------------

PATHS = [["a"], ["b"], ["m", "x"], ["m", "y"], ["m"], ["n", "p", "q"]]


@st.composite
def intent_ops(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(st.sampled_from(PATHS))
    kind = draw(st.sampled_from(["lww", "mvreg", "gcounter", "pncounter", "orset", "text", "rm"]))
    if kind == "rm":
        return op(path, None, "remove")
    if kind in ("gcounter", "pncounter"):
        action = "inc" if kind == "gcounter" else draw(st.sampled_from(["inc", "dec"]))
        return op(path, kind, action, draw(st.integers(1, 5)))
    if kind == "orset":
        return op(path, kind, "add", draw(st.sampled_from(["x", "y", 1])))
    if kind == "text":
        return op(path, kind, "insert", {"index": 0, "text": draw(st.text("ab", min_size=1))})
    return op(path, kind, "set", draw(st.integers(0, 9)))


@given(
    setup=st.lists(intent_ops(), max_size=6), batch=st.lists(intent_ops(), min_size=1, max_size=5)
)
def test_an_accepted_update_equals_its_intents_applied_one_by_one(
    setup: list[dict[str, Any]], batch: list[dict[str, Any]]
) -> None:
    together, apart = replica(), replica()
    for item in setup:
        for r in (together, apart):
            with contextlib.suppress(InvalidOperation):
                update(r, item)
    try:
        expected_error = None
        update(together, *batch)
    except InvalidOperation as exc:
        expected_error = exc
    if expected_error is not None:
        return
    for item in batch:
        update(apart, item)
    assert together.value(DOC) == apart.value(DOC)


def test_an_orset_element_is_removed_with_args_and_the_key_without() -> None:
    r = replica()
    update(r, op(["tags"], "orset", "add", "x"), op(["other"], "lww", "set", 1))
    update(r, op(["tags"], "orset", "add", "y"))
    assert update(r, {"path": ["tags"], "type": "orset", "action": "remove", "args": "x"}) == {
        "other": 1,
        "tags": ["y"],
    }
    assert update(r, {"path": ["tags"], "action": "remove"}) == {"other": 1}
