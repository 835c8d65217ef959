"""The shared wire envelope (``p2p.strictwire``): every rejection path, the quoting cap, the
schema rules, the field checks and the one zero-copy path.

The codecs built on it (consensus, state sync, NAT, DHT, content, RPC, CRDT) are fuzzed
together in ``tests/test_decoder_fuzz.py``; this module pins the envelope's own contract
with a toy codec, so that a change to it fails here first, with a small example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.strictwire import (
    DETAIL_CHARS,
    KEYS_SHOWN,
    VALUE_CHARS,
    BinTail,
    Field,
    Invalid,
    Kind,
    Limits,
    MapEnvelope,
    array,
    binary,
    boolean,
    cut,
    dataclass_kind,
    describe,
    describe_keys,
    integer,
    items,
    optional,
    text,
    unpack,
)

MAX_ERROR_CHARS = 300
"""What a log line of one refused frame may cost, whatever the frame holds."""


class ToyError(Exception):
    """The toy codec's own error: callers catch it, never ``Invalid``."""

    def __init__(self, field: str, detail: str) -> None:
        detail = cut(detail)
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class Hello:
    T: ClassVar[int] = 1
    name: str
    port: int


@dataclass(frozen=True)
class Blob:
    T: ClassVar[int] = 2
    key: bytes
    data: bytes


def _pair(a: int, b: int) -> tuple[int, int]:
    if a > b:
        raise Invalid("lo", f"{a} above hi {b}")
    return (a, b)


LIMITS = Limits(
    max_frame=2_000_000,
    max_bin=1_100_000,
    max_str=1_100_000,
    max_array=16,
    max_map=8,
    max_depth=3,
)
TOY = MapEnvelope[Any](
    ToyError,
    3,
    (
        dataclass_kind(Hello, {"name": text(20, empty=False), "port": integer(1, 65535)}),
        dataclass_kind(Blob, {"key": binary(4), "data": binary(top=1_000_000)}),
        Kind(
            5,
            "Range",
            (
                Field("a", integer(0, 100), "lo"),
                Field("b", integer(0, 100), "hi", required=False, default=100),
            ),
            _pair,
        ),
        Kind(6, "Tags", (Field("x", items(text(8), 4), "tags"),), tuple),
    ),
    LIMITS,
    version_hint=" (toy)",
)


def frame(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def refused(data: object, envelope: MapEnvelope[Any] = TOY) -> ToyError:
    with pytest.raises(ToyError) as info:
        envelope.decode(data)
    assert len(str(info.value)) <= MAX_ERROR_CHARS, str(info.value)[:MAX_ERROR_CHARS]
    return info.value


# -- describe, describe_keys, cut ----------------------------------------------------------


@pytest.mark.parametrize("value", [0, -5, 2**64 - 1, None, True, 1.5, "abc", b"\x00\xff", [1, "x"]])
def test_short_values_are_quoted_whole(value: object) -> None:
    assert describe(value) == repr(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("S" * 1_000_000, "1000000 chars"),
        (b"B" * 1_000_000, "1000000 bytes"),
        (bytearray(5000), "5000 bytes"),
        (list(range(10_000)), "10000 items"),
        ({str(i): i for i in range(500)}, "500 items"),
    ],
)
def test_long_values_are_cut_and_say_how_long_they_were(value: object, size: str) -> None:
    text_ = describe(value)
    assert len(text_) <= VALUE_CHARS
    assert text_.endswith(f"… ({size})")


def test_describe_is_bounded_on_deep_and_odd_values() -> None:
    deep: list[Any] = []
    for _ in range(5000):  # repr() of this raises RecursionError
        deep = [deep]
    assert len(describe(deep)) <= VALUE_CHARS
    assert describe(memoryview(b"x" * 10)) == "<memoryview of 10 bytes>"
    for limit in (1, 5, 20, 40):
        assert len(describe("y" * 1000, limit)) <= limit


def test_describe_keys_orders_mixed_keys_and_names_a_few() -> None:
    assert describe_keys(["b", b"a", "a"]) == "[b'a', 'a', 'b']"
    many = describe_keys([f"key{i}" * 1000 for i in range(50)])
    assert many.count("'key") == KEYS_SHOWN and "50 keys" in many
    assert len(many) < 3 * VALUE_CHARS


def test_cut() -> None:
    assert cut("abc", 3) == "abc"
    assert cut("abcd", 3) == "ab…"
    assert len(cut("z" * 10_000)) == DETAIL_CHARS


# -- unpack: every rejection path ---------------------------------------------------------

SMALL = Limits(max_frame=64, max_bin=4, max_str=4, max_array=3, max_map=2, max_depth=2)


def unpack_refusal(data: object, limits: Limits = SMALL) -> str:
    with pytest.raises(ToyError) as info:
        unpack(data, ToyError, limits)
    assert info.value.field == "frame"
    return info.value.detail


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("text", "expected bytes, got str"),
        (None, "expected bytes, got NoneType"),
        (memoryview(bytes(8)).cast("I"), "flat byte buffer"),
        (bytes(65), "65 bytes exceeds 64"),
        (b"\xc1", "not msgpack (FormatError)"),
        (b"\x92\x01", "not msgpack"),  # truncated
        (b"", "not msgpack"),
        (frame(1) + b"\x00", "trailing bytes"),
        (b"\xd4\x01\x00", "not msgpack"),  # ext type
        (frame({1: 2}), "not msgpack"),  # int map key
        (frame(b"12345"), "not msgpack"),  # bin over max_bin
        (frame("12345"), "not msgpack"),  # str over max_str
        (frame([1, 2, 3, 4]), "not msgpack"),  # array over max_array
        (frame({"a": 1, "b": 2, "c": 3}), "not msgpack"),  # map over max_map
        (frame([[[1]]]), "nested deeper than 2 levels"),
        (frame({"a": [{"b": 1}]}), "nested deeper than 2 levels"),
    ],
)
def test_unpack_refuses(data: object, why: str) -> None:
    assert why in unpack_refusal(data)


def test_without_a_depth_limit_msgpack_s_own_applies() -> None:
    wide = Limits(max_frame=4096, max_bin=4, max_str=4, max_array=3, max_map=2)
    assert unpack(b"\x91" * 1000 + b"\x90", ToyError, wide) is not None
    assert "not msgpack" in unpack_refusal(b"\x91" * 2000 + b"\x90", wide)


@pytest.mark.parametrize(
    "value", [None, 7, "abcd", b"abcd", [1, [2, 3]], {"a": [1]}, {b"k": "v", "s": None}]
)
def test_unpack_accepts_what_fits(value: object) -> None:
    assert unpack(frame(value), ToyError, SMALL) == value
    assert unpack(memoryview(frame(value)), ToyError, SMALL) == value
    assert unpack(bytearray(frame(value)), ToyError, SMALL) == value


# -- the envelope -------------------------------------------------------------------------


def test_every_kind_decodes_and_round_trips() -> None:
    hello, blob = Hello("node", 7001), Blob(b"kkkk", b"d" * 1000)
    for msg in (hello, blob):
        data = TOY.encode(msg.T, list(vars(msg).values()))
        assert data == frame({"t": msg.T, "v": 3, **vars(msg)})
        assert TOY.decode(data) == msg
    assert TOY.decode(frame({"t": 6, "v": 3, "x": ["a", "b"]})) == ("a", "b")


@pytest.mark.parametrize(
    ("obj", "field", "why"),
    [
        ([1, 3], "frame", "expected a map, got list"),
        ({"v": 3, "name": "n", "port": 1}, "t", "expected an integer message type, got None"),
        ({"t": True, "v": 3}, "t", "got True"),
        ({"t": "S" * 1000, "v": 3}, "t", "(1000 chars)"),
        ({"t": 1, "name": "n", "port": 1}, "v", "unsupported version None (toy)"),
        ({"t": 1, "v": 2, "name": "n", "port": 1}, "v", "unsupported version 2 (toy)"),
        ({"t": 1, "v": False, "name": "n", "port": 1}, "v", "unsupported version False"),
        ({"t": 9, "v": 3}, "t", "unknown message type 9"),
        ({"t": 1, "v": 3, "name": "n"}, "fields", "Hello: unexpected [] / missing ['port']"),
        ({"t": 1, "v": 3, "name": "n", "port": 1, "x": 0}, "fields", "unexpected ['x']"),
        ({"t": 1, "v": 3, "name": "n", b"port": 1}, "fields", "unexpected [b'port']"),
        ({"t": 5, "v": 3, "b": 1}, "fields", "missing ['a']"),
        ({"t": 1, "v": 3, "name": "", "port": 1}, "name", "must not be empty"),
        ({"t": 1, "v": 3, "name": "n", "port": 0}, "port", "0 out of range 1..65535"),
        ({"t": 1, "v": 3, "name": "n", "port": 1.0}, "port", "expected an integer, got float"),
        ({"t": 2, "v": 3, "key": b"kk", "data": b""}, "key", "expected 4 bytes, got 2"),
        ({"t": 5, "v": 3, "a": 50, "b": 10}, "lo", "50 above hi 10"),  # raised by build
        ({"t": 6, "v": 3, "x": ["ok", 5]}, "tags[1]", "expected a string, got int"),
        ({"t": 6, "v": 3, "x": ["a"] * 5}, "tags", "5 items exceeds 4"),
    ],
)
def test_rejections_name_the_field(obj: dict[Any, Any], field: str, why: str) -> None:
    error = refused(frame(obj))
    assert type(error) is ToyError
    assert error.field == field
    assert why in error.detail, error.detail


def test_optional_fields_take_their_default_and_are_checked_when_present() -> None:
    assert TOY.decode(frame({"t": 5, "v": 3, "a": 1})) == (1, 100)
    assert TOY.decode(frame({"t": 5, "v": 3, "a": 1, "b": 2})) == (1, 2)
    assert refused(frame({"t": 5, "v": 3, "a": 1, "b": -1})).field == "hi"


def test_a_megabyte_bad_value_makes_a_short_error_naming_the_field() -> None:
    """The issue's case: one frame, one megabyte string where a short one belongs."""
    error = refused(frame({"t": 1, "v": 3, "name": "n", "port": "P" * 1_000_000}))
    assert error.field == "port" and len(str(error)) < MAX_ERROR_CHARS
    error = refused(frame({"t": 2, "v": 3, "key": "K" * 1_000_000, "data": b""}))
    assert error.field == "key" and len(str(error)) < MAX_ERROR_CHARS
    error = refused(frame({"t": 1, "v": "V" * 1_000_000, "name": "n", "port": 1}))
    assert error.field == "v" and "(1000000 chars)" in str(error)
    assert len(str(error)) < MAX_ERROR_CHARS
    error = refused(frame({"t": 1, "v": 3, "name": "n", "port": 1, "K" * 1_000_000: 0}))
    assert error.field == "fields" and len(str(error)) < MAX_ERROR_CHARS


def test_encode_checks_fields_like_the_decoder() -> None:
    with pytest.raises(ValueError, match=r"Hello\.port: 0 out of range"):
        TOY.encode(Hello.T, ["n", 0])
    with pytest.raises(ValueError, match=r"Blob\.key: expected 4 bytes"):
        TOY.encode(Blob.T, [b"k", b""])


def test_schemas_are_checked_when_the_envelope_is_built() -> None:
    hello = dataclass_kind(Hello, {"name": text(4), "port": integer(0, 1)})
    with pytest.raises(ValueError, match="two kinds with tag 1"):
        MapEnvelope[Any](ToyError, 1, (hello, hello), LIMITS)
    clash = Kind(3, "Clash", (Field("t", boolean),), bool)
    with pytest.raises(ValueError, match="reserved"):
        MapEnvelope[Any](ToyError, 1, (clash,), LIMITS)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(["t", "v", "name", "port", "key", "a", "b", "x"]), inner)
    ),
    max_leaves=20,
)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_the_codec_error(data: bytes) -> None:
    try:
        TOY.decode(data)
    except ToyError as exc:
        assert len(str(exc)) <= MAX_ERROR_CHARS


@given(msgpack_values, st.sampled_from([1, 2, 5, 6]))
def test_arbitrary_values_decode_or_raise_the_codec_error(value: Any, t: int) -> None:
    obj = {"t": t, "v": 3, **value} if isinstance(value, dict) else value
    try:
        TOY.decode(frame(obj))
    except ToyError as exc:
        assert len(str(exc)) <= MAX_ERROR_CHARS


# -- field checks -------------------------------------------------------------------------


def invalid(check: Any, value: object, *args: Any) -> str:
    with pytest.raises(Invalid) as info:
        check(value, "f", *args)
    assert info.value.field == "f"
    return info.value.detail


def test_field_checks() -> None:
    assert integer(0, 9)(9, "f") == 9
    assert "got bool" in invalid(integer(0, 9), True)
    assert "10 out of range" in invalid(integer(0, 9), 10)
    assert binary()(b"", "f") == b""
    assert "got bytearray" in invalid(binary(), bytearray(1))
    assert "3 bytes exceeds 2" in invalid(binary(top=2), b"abc")
    assert text(3)("", "f") == ""
    assert "4 characters exceeds 3" in invalid(text(3), "abcd")
    assert "expected ASCII" in invalid(text(3, ascii=True), "é")
    assert boolean(False, "f") is False
    assert "got int" in invalid(boolean, 0)
    assert array([1], "f", 2) == [1]
    assert "got tuple" in invalid(array, (1,), 2)
    assert "expected 2 items, got 1" in invalid(array, [1], 2, 2)
    assert "3 items exceeds 2" in invalid(array, [1, 2, 3], 2)
    assert optional(integer(0, 1))(None, "f") is None
    assert "out of range" in invalid(optional(integer(0, 1)), 2)
    assert items(integer(0, 1), 2)([0, 1], "f") == (0, 1)
    with pytest.raises(Invalid) as info:
        items(integer(0, 1), 2)([0, 5], "f")
    assert info.value.field == "f[1]"


# -- the zero-copy path -------------------------------------------------------------------

TAIL = BinTail(4, 1, "n", "payload")
numbers = st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
sizes = st.sampled_from([0, 1, 255, 256, 65535, 65536, 70_000])


@given(numbers, sizes, st.sampled_from(["bytes", "bytearray", "view"]))
def test_bin_tail_is_packb_and_reads_back_as_a_view(number: int, size: int, kind: str) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = TAIL.encode(number, payload)
    assert data == frame({"t": 4, "v": 1, "n": number, "payload": payload})
    buffer: bytes | bytearray | memoryview = (
        data if kind == "bytes" else bytearray(data) if kind == "bytearray" else memoryview(data)
    )
    got = TAIL.view(buffer, 2**64 - 1, 70_000)
    assert got is not None and got[0] == number and got[1] == payload
    assert got[1].obj is (buffer.obj if isinstance(buffer, memoryview) else buffer)
    if number:  # one above the caller's bound: not recognised
        assert TAIL.view(data, number - 1, 70_000) is None
    if size:
        assert TAIL.view(data, 2**64 - 1, size - 1) is None


@pytest.mark.parametrize(
    "data",
    [
        "not bytes",
        memoryview(TAIL.encode(1, b"abcd")).cast("I"),
        frame({"t": 4, "v": 1, "payload": b"ab", "n": 1}),  # another key order
        frame({"t": 4, "v": 2, "n": 1, "payload": b"ab"}),  # another version
        frame({"t": 3, "v": 1, "n": 1, "payload": b"ab"}),  # another type
        frame({"t": 4, "v": 1, "n": -1, "payload": b"ab"}),
        frame({"t": 4, "v": 1, "n": 1, "payload": "ab"}),  # a str, not a bin
        TAIL.encode(1, b"abc") + b"\x00",  # trailing byte: the length no longer matches
        TAIL.encode(1, b"abc")[:-1],
        TAIL.encode(2**40, b"")[:14],  # cut inside the number
        b"",
    ],
)
def test_bin_tail_recognises_nothing_else(data: Any) -> None:
    assert TAIL.view(data, 2**64 - 1, 100) is None
