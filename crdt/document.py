"""From what a user asks for (intents on paths of a document) to root-map operations.

A document is an add-wins OR-Map (:class:`crdt.types.ORMap`) whose values are typed
CRDTs, nested maps included; a path names a value by its keys from the root. An
update is a list of intents, for example::

    {"path": ["views"], "type": "pncounter", "action": "inc", "args": 3}
    {"path": ["profile", "name"], "type": "lww", "action": "set", "args": "ada"}
    {"path": ["tags"], "type": "orset", "action": "remove", "args": "beta"}
    {"path": ["old"], "action": "remove"}

``remove`` without ``args`` removes the key at ``path`` from its map; with ``args`` it
is the value's own ``remove`` (an OR-Set element).

All intents of one update become one signed change and are prepared against the
document as it was before the change, so they must be independent: one update touches
a value at most once and never both a map and a value inside it (an ``insert`` cannot
refer to a character inserted by the same change, whose id is not known until the
change is signed). Increments of one counter are the exception: they add up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crdt.errors import InvalidOperation
from crdt.types import ORMap, type_named

MAX_PATH = 16
MAX_KEY_BYTES = 256
MAX_INTENTS = 4096
COUNTER_TYPES = frozenset({"gcounter", "pncounter"})


@dataclass(frozen=True, slots=True)
class Intent:
    """One requested update: ``action`` with ``args`` on the ``type`` value at ``path``.

    ``action == "remove"`` with ``type`` None removes the key at ``path`` from its map.
    """

    path: tuple[str, ...]
    action: str
    type: str | None = None
    args: Any = None


def parse_intents(body: object) -> list[Intent]:
    """Parse ``{"ops": [...]}`` (the HTTP/CLI form); :class:`InvalidOperation` names the flaw."""
    if not isinstance(body, dict) or set(body) != {"ops"}:
        raise InvalidOperation('body: expected {"ops": [...]}')
    ops = body["ops"]
    if not isinstance(ops, list) or not 0 < len(ops) <= MAX_INTENTS:
        raise InvalidOperation(f"ops: expected a list of 1..{MAX_INTENTS} operations")
    return [_parse_one(i, op) for i, op in enumerate(ops)]


def _parse_one(i: int, op: object) -> Intent:
    where = f"ops[{i}]"
    if not isinstance(op, dict):
        raise InvalidOperation(f"{where}: expected an object")
    unknown = set(op) - {"path", "type", "action", "args"}
    if unknown:
        raise InvalidOperation(f"{where}: unknown field(s) {sorted(unknown)}")
    path = op.get("path")
    if not isinstance(path, list) or not 0 < len(path) <= MAX_PATH:
        raise InvalidOperation(f"{where}.path: expected a list of 1..{MAX_PATH} keys")
    for key in path:
        if not isinstance(key, str) or not 0 < len(key.encode()) <= MAX_KEY_BYTES:
            raise InvalidOperation(f"{where}.path: keys are strings of 1..{MAX_KEY_BYTES} bytes")
    action = op.get("action")
    if not isinstance(action, str):
        raise InvalidOperation(f"{where}.action: expected a string")
    kind = op.get("type")
    if action == "remove" and "args" not in op:
        return Intent(tuple(path), action, None)
    if not isinstance(kind, str):
        raise InvalidOperation(f"{where}.type: expected a type name")
    try:
        type_named(kind)  # raises InvalidOperation for an unknown type
    except InvalidOperation as exc:  # Fix (test_document): name the op, like every other error
        raise InvalidOperation(f"{where}.{exc}") from None
    return Intent(tuple(path), action, kind, op.get("args"))


def prepare_ops(state: ORMap | None, intents: Sequence[Intent], author: bytes) -> list[Any]:
    """Root-map operations for ``intents`` by ``author``, against ``state`` (None: empty)."""
    root = state if state is not None else ORMap()
    ops: list[Any] = []
    for intent in _coalesce(intents):
        *parents, key = intent.path
        args: dict[str, Any]
        if intent.action == "remove" and intent.type is None:
            action, args = "remove", {"key": key}
        else:
            assert intent.type is not None
            inner = intent.args
            if intent.type in COUNTER_TYPES:
                inner = {"n": intent.args, "author": author}
            action = "update"
            args = {"key": key, "type": intent.type, "intent": intent.action, "args": inner}
        for parent in reversed(parents):
            args = {"key": parent, "type": "ormap", "intent": action, "args": args}
            action = "update"
        ops.append(root.prepare(action, args))
    return ops


def _coalesce(intents: Sequence[Intent]) -> list[Intent]:
    """Merge increments of one counter in one update (they would otherwise overwrite)
    and refuse updates whose intents are not independent (see the module docstring)."""
    out: list[Intent] = []
    touched: dict[tuple[str, ...], int] = {}  # paths changed, by first intent
    inside: dict[tuple[str, ...], int] = {}  # proper prefixes of those paths
    for i, intent in enumerate(intents):
        counter = intent.type in COUNTER_TYPES and intent.action in ("inc", "dec")
        for depth in range(1, len(intent.path) + 1):
            prefix = intent.path[:depth]
            other = touched.get(prefix)
            if other is None:
                continue
            same_counter = (
                counter
                and depth == len(intent.path)
                and intents[other].type == intent.type
                and intents[other].action in ("inc", "dec")
            )
            if not same_counter:
                raise InvalidOperation(
                    f"ops[{i}] and ops[{other}] both touch {'/'.join(prefix)}: one update "
                    "changes a value at most once; send them as separate updates"
                )
        j = inside.get(intent.path)
        if j is not None:  # an earlier intent changed something inside this value
            raise InvalidOperation(
                f"ops[{i}] and ops[{j}] both touch {'/'.join(intent.path)}: one update "
                "changes a value at most once; send them as separate updates"
            )
        touched.setdefault(intent.path, i)
        for depth in range(1, len(intent.path)):
            inside.setdefault(intent.path[:depth], i)
    index: dict[tuple[tuple[str, ...], str | None, str], int] = {}
    for intent in intents:
        if intent.type in COUNTER_TYPES and intent.action in ("inc", "dec"):
            if type(intent.args) is not int or intent.args <= 0:
                raise InvalidOperation(
                    f"{'/'.join(intent.path)}: {intent.action} takes a positive integer"
                )
            slot = (intent.path, intent.type, intent.action)
            if slot in index:
                prev = out[index[slot]]
                out[index[slot]] = Intent(
                    prev.path, prev.action, prev.type, prev.args + intent.args
                )
                continue
            index[slot] = len(out)
        out.append(intent)
    return out
