"""Strict parsing helpers shared by the CRDT types.

Why one module: every replica must reach the *same* verdict on the same bytes, so every
type checks structure the same way -- exact types (``bool`` is not an ``int``), exact
field sets, bounded sizes -- and reports failures as :class:`InvalidOperation` naming the
field. Arrays may arrive as ``list`` (msgpack's default) or ``tuple`` (``use_list=False``);
both are accepted, nothing else is.

Canonical forms built here (sorted dot lists, ``[hash, index]`` pairs) are what make
``msgpack.packb(state.to_wire())`` byte-identical for equal states.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from crdt.base import Dot, Json
from crdt.errors import InvalidOperation

HASH_LEN = 32
"""Length of a change hash and of an author key (Ed25519 public key)."""
MAX_ITEMS = 4096
"""Most items (dots, elements, sequence items) one operation may carry."""
MAX_KEY_BYTES = 256
"""Longest map key / set element (UTF-8 bytes for ``str``)."""
MAX_U64 = (1 << 64) - 1
MAX_I64 = (1 << 63) - 1
MIN_I64 = -(1 << 63)
MAX_INDEX = (1 << 32) - 1
"""Largest operation index within one change."""
MAX_DEPTH = 16
"""Deepest nesting of JSON values and of maps inside maps."""
MAX_JSON_NODES = 65536
"""Most scalars/containers in one JSON value."""
MAX_STATE_ITEMS = 1 << 24
"""Sanity bound on the length of any array in a wire state."""

Order = tuple[int, bytes, bytes, int]
"""``OpContext.order``: (hlc, author, change_hash, index)."""


def fail(field: str, msg: str) -> NoReturn:
    raise InvalidOperation(f"{field}: {msg}")


def _tname(obj: object) -> str:
    return type(obj).__name__


def expect_dict(obj: Any, field: str, keys: frozenset[str]) -> dict[str, Any]:
    """A dict whose key set is exactly ``keys``."""
    if type(obj) is not dict:
        fail(field, f"expected a map, got {_tname(obj)}")
    if obj.keys() != keys:
        fail(field, f"expected fields {sorted(keys)}, got {sorted(map(repr, obj))}")
    return obj


def expect_seq(obj: Any, field: str, max_len: int, min_len: int = 0) -> Sequence[Any]:
    if type(obj) is not list and type(obj) is not tuple:
        fail(field, f"expected an array, got {_tname(obj)}")
    if not min_len <= len(obj) <= max_len:
        fail(field, f"length {len(obj)} outside [{min_len}, {max_len}]")
    return obj


def expect_int(obj: Any, field: str, lo: int, hi: int) -> int:
    if type(obj) is not int:
        fail(field, f"expected an int, got {_tname(obj)}")
    if not lo <= obj <= hi:
        fail(field, f"{obj} outside [{lo}, {hi}]")
    return obj


def expect_bytes(obj: Any, field: str, size: int) -> bytes:
    """Exactly ``size`` bytes (hashes and keys)."""
    if type(obj) is not bytes:
        fail(field, f"expected bytes, got {_tname(obj)}")
    if len(obj) != size:
        fail(field, f"expected {size} bytes, got {len(obj)}")
    return obj


def expect_str(obj: Any, field: str, max_bytes: int, min_len: int = 0) -> str:
    if type(obj) is not str:
        fail(field, f"expected a str, got {_tname(obj)}")
    if obj.isascii() and min_len <= len(obj) <= max_bytes:
        return obj  # fast path: ASCII length is the UTF-8 length
    try:
        n = len(obj.encode("utf-8"))
    except UnicodeEncodeError:
        fail(field, "not encodable as UTF-8")
    if n > max_bytes:
        fail(field, f"{n} bytes exceeds {max_bytes}")
    if len(obj) < min_len:
        fail(field, f"shorter than {min_len}")
    return obj


def parse_dot(obj: Any, field: str) -> Dot:
    pair = expect_seq(obj, field, 2, 2)
    return (expect_bytes(pair[0], field, HASH_LEN), expect_int(pair[1], field, 0, MAX_INDEX))


def parse_dots(obj: Any, field: str, max_len: int, min_len: int = 0) -> list[Dot]:
    return [parse_dot(d, field) for d in expect_seq(obj, field, max_len, min_len)]


def parse_dot_set(obj: Any, field: str) -> set[Dot]:
    """A canonical (strictly ascending) dot list from a wire state."""
    dots = parse_dots(obj, field, MAX_STATE_ITEMS)
    check_ascending(dots, field)
    return set(dots)


def check_ascending(keys: Sequence[Any], field: str) -> None:
    """Wire states list entries strictly ascending: canonical and duplicate-free."""
    for i in range(1, len(keys)):
        if not keys[i - 1] < keys[i]:
            fail(field, "entries not strictly ascending")


def dot_wire(dot: Dot) -> list[Any]:
    return [dot[0], dot[1]]


def dots_wire(dots: Iterable[Dot]) -> list[list[Any]]:
    return [[h, i] for h, i in sorted(dots)]


def parse_order(obj: Any, field: str) -> Order:
    seq = expect_seq(obj, field, 4, 4)
    return (
        expect_int(seq[0], field + ".hlc", 0, MAX_U64),
        expect_bytes(seq[1], field + ".author", HASH_LEN),
        expect_bytes(seq[2], field + ".hash", HASH_LEN),
        expect_int(seq[3], field + ".index", 0, MAX_INDEX),
    )


def check_json(value: Any, field: str) -> None:
    """Raise unless ``value`` is a JSON value msgpack can encode deterministically.

    Allowed: ``None``, ``bool``, 64-bit ``int``, finite ``float``, UTF-8 ``str``, ``list``
    and ``dict`` with ``str`` keys; nesting at most :data:`MAX_DEPTH`, at most
    :data:`MAX_JSON_NODES` nodes. Non-finite floats are refused (not JSON, and NaN is
    not equal to itself, which would break state equality).
    """
    budget = MAX_JSON_NODES
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        budget -= 1
        if budget < 0:
            fail(field, f"more than {MAX_JSON_NODES} nodes")
        t = type(v)
        if v is None or t is bool or t is str:
            if t is str:
                expect_str(v, field, 1 << 24)
        elif t is int:
            if not MIN_I64 <= v <= MAX_U64:
                fail(field, "int outside the 64-bit range")
        elif t is float:
            if not math.isfinite(v):
                fail(field, "non-finite float")
        elif t is list or t is dict:
            if depth >= MAX_DEPTH:
                fail(field, f"nested deeper than {MAX_DEPTH}")
            if t is dict:
                for k, item in v.items():
                    if type(k) is not str:
                        fail(field, f"map key must be a str, got {_tname(k)}")
                    expect_str(k, field, 1 << 24)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)
        else:
            fail(field, f"not a JSON value: {_tname(v)}")


def normalize_json(value: Any, field: str, depth: int = 0) -> Json:
    """The canonical form of a local JSON value: tuples become lists, dict keys sorted.

    Used by ``prepare`` so an operation equals its own msgpack round trip; the result
    is then validated with :func:`check_json`.
    """
    if depth > MAX_DEPTH:
        fail(field, f"nested deeper than {MAX_DEPTH}")
    if type(value) is list or type(value) is tuple:
        return [normalize_json(v, field, depth + 1) for v in value]
    if type(value) is dict:
        keys = sorted(value, key=_key_sort)
        return {k: normalize_json(value[k], field, depth + 1) for k in keys}
    return value


def prepare_json(value: Any, field: str) -> Json:
    """Normalize then validate a JSON value given by a local caller."""
    out = normalize_json(value, field)
    check_json(out, field)
    return out


def _key_sort(k: Any) -> tuple[str, str]:
    return (type(k).__name__, k if type(k) is str else repr(k))
