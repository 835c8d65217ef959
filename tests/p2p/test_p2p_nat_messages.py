"""The NAT channel codec: every message round-trips; anything else is one error type."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.nat.messages import (
    MAX_ADDRS,
    MAX_CIRCUIT_CHUNK,
    NAT_CHANNEL_KIND,
    CircuitClose,
    CircuitData,
    ConnectRequest,
    ConnectResponse,
    DialBack,
    DialRequest,
    DialResponse,
    Identify,
    NatDecodeError,
    PunchConnect,
    PunchSync,
    ReserveRequest,
    ReserveResponse,
    Status,
    StopConnect,
    StopResponse,
    decode,
    encode,
)

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addrs = st.tuples(ipv4 | ipv6, st.integers(1, 65535))
addr_lists = st.lists(addrs, max_size=MAX_ADDRS).map(tuple)
keys = st.binary(min_size=32, max_size=32)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
statuses = st.sampled_from(Status)

messages = st.one_of(
    st.builds(Identify, addrs, addr_lists),
    st.builds(DialRequest, u64, addr_lists),
    st.builds(DialResponse, u64, statuses, st.none() | addrs),
    st.builds(DialBack, u64),
    st.just(ReserveRequest()),
    st.builds(ReserveResponse, statuses, u32, u32, u64, st.none() | addrs),
    st.builds(ConnectRequest, keys),
    st.builds(ConnectResponse, statuses, keys, u64, u32, u64),
    st.builds(StopConnect, keys, u64, u32, u64),
    st.builds(StopResponse, u64, statuses),
    st.builds(CircuitData, u64, st.binary(max_size=2048)),
    st.builds(CircuitClose, u64, statuses),
    st.builds(PunchConnect, u32, addr_lists),
    st.builds(PunchSync, u32),
)


def test_channel_kind_is_the_registered_application_kind() -> None:
    from p2p.framing import KNOWN_KINDS, FrameKind

    assert NAT_CHANNEL_KIND not in KNOWN_KINDS  # an application channel, not a link kind
    assert FrameKind.NAT == NAT_CHANNEL_KIND


@given(messages)
def test_round_trip(msg: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[arg-type]


@given(st.binary(max_size=512))
def test_garbage_raises_only_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except NatDecodeError as exc:
        assert exc.field
    except Exception as exc:  # pragma: no cover - the property under test
        pytest.fail(f"{type(exc).__name__} escaped the decoder: {exc}")


@given(messages, st.data())
def test_mutated_messages_raise_only_decode_error(msg: object, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(NatDecodeError):
        decode(bytes(raw))


def _raw(**fields: object) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


_MALFORMED = [
    (_raw(t=7, v=1, dst=b"x" * 31), "dst"),
    (_raw(t=7, v=1, dst="x" * 32), "dst"),
    (_raw(t=7, v=2, dst=b"x" * 32), "v"),
    (_raw(t=99, v=1), "t"),
    (_raw(t=-1, v=1), "t"),
    (_raw(t=7, v=1), "fields"),
    (_raw(t=7, v=1, dst=b"x" * 32, extra=1), "fields"),
    (_raw(t=14, v=1, attempt=2**32), "attempt"),
    (_raw(t=14, v=1, attempt=True), "attempt"),
    (_raw(t=12, v=1, circuit=1, status=200), "status"),
    (_raw(t=1, v=1, observed=["example.org", 1], listen=[]), "observed"),
    (_raw(t=1, v=1, observed=["1.2.3.4", 0], listen=[]), "observed"),
    (_raw(t=1, v=1, observed=["1.2.3.4", 1, 2], listen=[]), "observed"),
    (_raw(t=1, v=1, observed=["1.2.3.4", 1], listen=[["1.2.3.4", 70000]]), "listen[0]"),
    (_raw(t=2, v=1, nonce=1, addrs=[["1.2.3.4", 1]] * (MAX_ADDRS + 1)), "addrs"),
    (_raw(t=11, v=1, circuit=1, data=b"x" * (MAX_CIRCUIT_CHUNK + 1)), "data"),
    (_raw(t=11, v=1, circuit=1, data=b"x" * (MAX_CIRCUIT_CHUNK + 2)), "frame"),
    (_raw(t=14, v=1, attempt=1) + b"\x00", "frame"),
    (msgpack.packb([14, 1, 1]), "frame"),
    (b"", "frame"),
]


@pytest.mark.parametrize(("raw", "field"), _MALFORMED, ids=[f for _, f in _MALFORMED])
def test_malformed_input_names_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(NatDecodeError) as info:
        decode(raw)
    assert info.value.field == field


def test_encode_rejects_out_of_bounds_fields() -> None:
    with pytest.raises(ValueError, match="dst"):
        encode(ConnectRequest(b"short"))
    with pytest.raises(ValueError, match="addrs"):
        encode(PunchConnect(1, (("1.2.3.4", 1),) * (MAX_ADDRS + 1)))
