"""The strict msgpack envelope every wire codec of the project shares (pure, no I/O).

Bytes from a peer reach a decoder in four layers that are the same for every codec:
unpack them with limits (:func:`unpack`: frame size, string, binary, array and map
lengths, no ext types, str/bytes map keys only, optional nesting depth), check the type
and version tags, check that the map holds exactly the fields of that message kind,
and check each field. :class:`MapEnvelope` does all four for the ``{t, v, ...fields}``
maps of the consensus, NAT, DHT, content and RPC codecs, from one :class:`Kind` (the
schema) per message type; positional codecs (state sync, the CRDT layer) use
:func:`unpack` alone. :class:`BinTail` is the one zero-copy path: a ``{t, v, int, bin}``
message written by hand and read back as a view into the frame.

Errors: field checks raise :class:`Invalid`, which the envelope turns into the codec's
own error class (``factory(field, detail)``), so callers keep catching
``DhtDecodeError``, ``DecodeError``... Peer data enters an error text only through
:func:`describe`, which keeps at most :data:`VALUE_CHARS` characters of it and says how
long the value was: one frame never makes a long log line, and the line still says
which field was wrong and what kind of value was there.

This package imports nothing of the project: the consensus core (``dagrider``), the
network (``p2p``) and the CRDT store (``crdt``) all use it without depending on each
other.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Generic, TypeVar

import msgpack

VALUE_CHARS: Final = 100
"""Longest rendering of one peer-chosen value in an error text (:func:`describe`)."""
KEY_CHARS: Final = 24
"""Longest rendering of one unexpected map key; at most :data:`KEYS_SHOWN` are named."""
KEYS_SHOWN: Final = 3
DETAIL_CHARS: Final = 240
"""Longest detail text an error keeps, whatever built it (:func:`cut`)."""

ErrorFactory = Callable[[str, str], Exception]
"""Builds a codec's own error from (field, detail); usually the error class itself."""
Check = Callable[[object, str], Any]
"""A field check: ``check(wire value, field name)`` returns the typed value or raises
:class:`Invalid` naming the field."""
M = TypeVar("M")


class Invalid(Exception):
    """A field check failed; the envelope re-raises it as the codec's own error class.

    Checks raise this rather than a codec's error so that one check serves every codec
    (and the encoders, which turn it into ``ValueError``).
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


# -- bounded renderings ----------------------------------------------------------------


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` with a few items per level and three levels, so that a value up to
    1024 levels deep (whose ``repr`` raises ``RecursionError``) or holding megabyte
    strings renders in bounded time. Bytes are cut before ``repr``."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdict = 4
        self.maxstring = self.maxother = VALUE_CHARS
        self.maxlong = 40

    def repr_bytes(self, x: bytes, level: int) -> str:
        cut = len(x) > self.maxstring
        return repr(x[: self.maxstring]) + ("..." if cut else "")

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return self.repr_bytes(bytes(x[: self.maxstring + 1]), level)

    def repr_memoryview(self, x: memoryview, level: int) -> str:
        return f"<memoryview of {x.nbytes} bytes>"


_REPR = _BoundedRepr()


def _size(value: object) -> str:
    if isinstance(value, str):
        return f"{len(value)} chars"
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    if isinstance(value, list | tuple | dict | set | frozenset):
        return f"{len(value)} items"
    return type(value).__name__


def describe(value: object, limit: int = VALUE_CHARS) -> str:
    """``repr(value)`` in at most ``limit`` characters, in bounded time and memory.

    A cut rendering ends in ``…`` and says how long the original was
    (``b'PPPPP… (16000 bytes)'``), so the log line still tells a wrong type from an
    oversize value. Safe on any msgpack value, however long or deeply nested.
    """
    text = _REPR.repr(value)
    if len(text) <= limit and "..." not in text:
        return text
    note = f"… ({_size(value)})"
    if limit <= len(note) + 8:
        return cut(text, limit)
    return text[: limit - len(note)] + note


def describe_keys(keys: Iterable[object]) -> str:
    """Map keys for an error text: a stable order (str and bytes keys do not sort
    together), at most :data:`KEYS_SHOWN` of at most :data:`KEY_CHARS` each."""
    ordered = sorted(keys, key=_key_order)
    shown = ", ".join(describe(k, KEY_CHARS) for k in ordered[:KEYS_SHOWN])
    more = f", … {len(ordered)} keys" if len(ordered) > KEYS_SHOWN else ""
    return f"[{shown}{more}]"


def _key_order(key: object) -> tuple[str, object]:
    return (type(key).__name__, key if type(key) in (str, bytes, int) else "")


def cut(text: str, limit: int = DETAIL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, ending in "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- unpacking with limits --------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What :func:`unpack` lets msgpack allocate: set each just above the largest valid
    field, so that a field check (which names the field) trips before msgpack does."""

    max_frame: int
    max_bin: int
    max_str: int
    max_array: int
    max_map: int
    max_depth: int | None = None
    """Deepest nesting of arrays and maps (the top-level map is depth 1); None leaves
    msgpack's own limit (1024 levels) and the field checks to refuse deep values."""


def unpack(data: object, error: ErrorFactory, limits: Limits) -> object:
    """The one msgpack value in ``data``, or ``error("frame", why)``.

    Refuses non-bytes, views of items wider than a byte, oversize frames, ext types,
    map keys that are not str or bytes, lengths over ``limits``, trailing bytes and
    anything msgpack cannot parse; never raises anything but ``error``'s exception.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error("frame", f"expected bytes, got {type(data).__name__}")
    if isinstance(data, memoryview) and (data.itemsize != 1 or not data.c_contiguous):
        raise error("frame", f"expected a flat byte buffer, got a view of {data.format!r}")
    if len(data) > limits.max_frame:
        raise error("frame", f"{len(data)} bytes exceeds {limits.max_frame}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=limits.max_bin,
            max_str_len=limits.max_str,
            max_array_len=limits.max_array,
            max_map_len=limits.max_map,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise error("frame", "not msgpack: trailing bytes after the message") from None
    except (ValueError, TypeError, BufferError, msgpack.UnpackException, RecursionError) as exc:
        raise error("frame", f"not msgpack ({type(exc).__name__})") from None
    if limits.max_depth is not None and _deeper_than(obj, limits.max_depth):
        raise error("frame", f"nested deeper than {limits.max_depth} levels")
    return obj


def _deeper_than(obj: object, depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)] if type(obj) is list or type(obj) is dict else []
    while stack:
        value, level = stack.pop()
        items = value.values() if type(value) is dict else value
        if level > depth:
            return True
        stack.extend((x, level + 1) for x in items if type(x) is list or type(x) is dict)
    return False


# -- schemas ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One field of a message kind: its wire ``key``, the ``check`` that turns the wire
    value into the typed one, and the ``name`` errors use (default: the key)."""

    key: str
    check: Check
    name: str = ""
    required: bool = True
    default: Any = None
    """The value of an absent optional field (the check does not run on it)."""

    @property
    def label(self) -> str:
        return self.name or self.key


@dataclass(frozen=True)
class Kind(Generic[M]):
    """The schema of one message type: ``build(*checked values in field order)``."""

    tag: int
    name: str
    fields: tuple[Field, ...]
    build: Callable[..., M]


def dataclass_kind(cls: type[M], checks: Mapping[str, Check]) -> Kind[M]:
    """The kind of a frozen dataclass message with a ``T`` tag: one field per dataclass
    field, keyed by its name, checked by ``checks[name]``, built by ``cls(*values)``."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    tag: int = getattr(cls, "T")  # noqa: B009  (a ClassVar mypy cannot see on type[M])
    return Kind(tag, cls.__name__, tuple(Field(n, checks[n]) for n in names), cls)


@dataclass(frozen=True)
class _Plan(Generic[M]):
    """A kind prepared for decoding: its key sets and (key, check, label) triples."""

    kind: Kind[M]
    every: frozenset[str]
    required: frozenset[str]
    checks: tuple[tuple[str, Check, str], ...]


class MapEnvelope(Generic[M]):
    """The ``{t: type, v: version, ...fields}`` envelope with one :class:`Kind` per type.

    :meth:`decode` accepts exactly the declared fields of the declared kinds (unknown
    keys, missing required fields, unknown types, other versions are errors naming the
    field ``fields``, ``t`` or ``v``) and raises nothing but ``error``'s exception.
    """

    def __init__(
        self,
        error: ErrorFactory,
        version: int,
        kinds: Iterable[Kind[M]],
        limits: Limits,
        *,
        version_name: str = "version",
        version_hint: str = "",
    ) -> None:
        self.error = error
        self.version = version
        self.limits = limits
        self.version_name = version_name
        self.version_hint = version_hint
        self.kinds: dict[int, Kind[M]] = {}
        self._plans: dict[int, _Plan[M]] = {}
        for kind in kinds:
            if kind.tag in self.kinds:
                raise ValueError(f"two kinds with tag {kind.tag}")
            self.kinds[kind.tag] = kind
            every = frozenset({"t", "v", *(f.key for f in kind.fields)})
            required = frozenset({"t", "v", *(f.key for f in kind.fields if f.required)})
            if len(every) != len(kind.fields) + 2:
                raise ValueError(f"{kind.name}: duplicate or reserved field keys")
            checks = tuple((f.key, f.check, f.label) for f in kind.fields)
            self._plans[kind.tag] = _Plan(kind, every, required, checks)

    def decode(self, data: object, limits: Limits | None = None) -> M:
        """One message of a declared kind, or the codec's error naming the field."""
        error = self.error
        obj = unpack(data, error, limits or self.limits)
        if type(obj) is not dict:
            raise error("frame", f"expected a map, got {type(obj).__name__}")
        t = obj.get("t")
        if type(t) is not int:
            raise error("t", f"expected an integer message type, got {describe(t)}")
        v = obj.get("v")
        if type(v) is not int or v != self.version:
            raise error("v", f"unsupported {self.version_name} {describe(v)}{self.version_hint}")
        plan = self._plans.get(t)
        if plan is None:
            raise error("t", f"unknown message type {t}")
        kind = plan.kind
        keys = obj.keys()
        try:
            if keys == plan.every:  # every field present: the common case, kept short
                return kind.build(*[check(obj[key], label) for key, check, label in plan.checks])
            if not plan.every >= keys >= plan.required:
                extra = describe_keys(keys - plan.every)
                missing = sorted(plan.required - keys)
                raise error("fields", f"{kind.name}: unexpected {extra} / missing {missing}")
            return kind.build(
                *[f.check(obj[f.key], f.label) if f.key in obj else f.default for f in kind.fields]
            )
        except Invalid as exc:
            raise error(exc.field, exc.detail) from None

    def encode(self, tag: int, values: Sequence[object]) -> bytes:
        """``{t, v, ...fields}`` in field order, each value checked as the decoder would;
        ``ValueError`` naming kind and field if one fails (a caller bug)."""
        kind = self.kinds[tag]
        body: dict[str, object] = {"t": tag, "v": self.version}
        for f, value in zip(kind.fields, values, strict=True):
            try:
                f.check(value, f.label)
            except Invalid as exc:
                raise ValueError(f"{kind.name}.{exc.field}: {exc.detail}") from None
            body[f.key] = value
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed


# -- field checks -------------------------------------------------------------------------


def integer(lo: int, hi: int) -> Check:
    """An int (never a bool) in ``lo..hi``."""

    def check(value: object, name: str) -> int:
        if type(value) is not int:
            raise Invalid(name, f"expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise Invalid(name, f"{value} out of range {lo}..{hi}")
        return value

    return check


def binary(size: int | None = None, top: int | None = None) -> Check:
    """Bytes of exactly ``size`` or at most ``top`` bytes (or any length)."""

    def check(value: object, name: str) -> bytes:
        if type(value) is not bytes:
            raise Invalid(name, f"expected bytes, got {type(value).__name__}")
        if size is not None and len(value) != size:
            raise Invalid(name, f"expected {size} bytes, got {len(value)}")
        if top is not None and len(value) > top:
            raise Invalid(name, f"{len(value)} bytes exceeds {top}")
        return value

    return check


def text(top: int, *, empty: bool = True, ascii: bool = False) -> Check:
    """A str of at most ``top`` characters (non-empty unless ``empty``; ASCII if asked)."""

    def check(value: object, name: str) -> str:
        if type(value) is not str:
            raise Invalid(name, f"expected a string, got {type(value).__name__}")
        if len(value) > top:
            raise Invalid(name, f"{len(value)} characters exceeds {top}")
        if not empty and not value:
            raise Invalid(name, "must not be empty")
        if ascii and not value.isascii():
            raise Invalid(name, f"expected ASCII, got {describe(value)}")
        return value

    return check


def boolean(value: object, name: str) -> bool:
    """True or False (msgpack keeps them apart from 0 and 1)."""
    if type(value) is not bool:
        raise Invalid(name, f"expected a boolean, got {type(value).__name__}")
    return value


def array(value: object, name: str, top: int, length: int | None = None) -> list[Any]:
    """A list of at most ``top`` (or exactly ``length``) items, unchecked."""
    if type(value) is not list:
        raise Invalid(name, f"expected an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise Invalid(name, f"expected {length} items, got {len(value)}")
    if len(value) > top:
        raise Invalid(name, f"{len(value)} items exceeds {top}")
    return value


def optional(check: Check) -> Check:
    """``None`` or what ``check`` accepts."""

    def run(value: object, name: str) -> Any:
        return None if value is None else check(value, name)

    return run


def items(check: Check, top: int) -> Check:
    """A list of at most ``top`` values, each checked as ``name[i]``; a tuple."""

    def run(value: object, name: str) -> tuple[Any, ...]:
        return tuple(check(x, f"{name}[{i}]") for i, x in enumerate(array(value, name, top)))

    return run


# -- the zero-copy path ---------------------------------------------------------------------

_UINT_WIDTH: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN_WIDTH: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def bin_header(n: int) -> bytes:
    """The msgpack header of a bin of ``n`` bytes (the shortest form, as ``packb``)."""
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


class BinTail:
    """A ``{t, v, <number>, <payload>}`` message with a large bin last (an RPC reply,
    a content chunk), written and read without copying the payload.

    :meth:`encode` gives exactly the bytes ``msgpack.packb`` gives for the dict in that
    key order, with one copy of the payload instead of msgpack's growing buffer
    (profiled on the serving side of content fetches). :meth:`view` recognises exactly
    that layout and returns the payload as a view into the frame; it never raises, and
    returns None for anything else (the caller then asks its :class:`MapEnvelope`,
    which accepts or refuses with the reason). Everything :meth:`view` recognises the
    strict decoder accepts as the same message (checked by ``tests/test_decoder_fuzz.py``).
    """

    def __init__(self, tag: int, version: int, number_key: str, payload_key: str) -> None:
        self._prefix = b"\x84" + b"".join(
            msgpack.packb(x) for x in ("t", tag, "v", version, number_key)
        )
        self._payload_key: bytes = msgpack.packb(payload_key)
        self._head = len(self._prefix) + 9 + len(self._payload_key) + 5

    def encode(self, number: int, payload: bytes) -> bytes:
        """The frame (the caller has checked both values)."""
        head = self._prefix + msgpack.packb(number) + self._payload_key + bin_header(len(payload))
        return b"".join((head, payload))

    def view(
        self, data: object, max_number: int, max_payload: int
    ) -> tuple[int, memoryview] | None:
        """``(number, view of the payload inside data)``, or None if ``data`` is not a
        byte buffer holding this layout with ``number <= max_number`` and a payload of
        at most ``max_payload`` bytes."""
        if isinstance(data, memoryview):
            if data.itemsize != 1 or not data.c_contiguous:
                return None
        elif not isinstance(data, bytes | bytearray):
            return None
        size = len(data)
        head = bytes(data[: self._head])
        if not head.startswith(self._prefix):
            return None
        pos = len(self._prefix)
        first = head[pos] if pos < len(head) else -1
        if 0 <= first < 0x80:
            number, pos = first, pos + 1
        elif first in _UINT_WIDTH:
            width = _UINT_WIDTH[first]
            if pos + 1 + width > len(head):
                return None
            number = int.from_bytes(head[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        else:
            return None
        if number > max_number or not head.startswith(self._payload_key, pos):
            return None
        pos += len(self._payload_key)
        width = _BIN_WIDTH.get(head[pos] if pos < len(head) else -1, -1)
        if width < 0:
            return None
        length = size - pos - 1 - width
        if not 0 <= length <= min(max_payload, 2**32 - 1):
            return None
        if not head.startswith(bin_header(length), pos):
            return None
        return number, memoryview(data)[size - length :]
