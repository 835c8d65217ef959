"""The copy-avoiding fast paths accept and reject exactly what the general codecs do.

``rpc_wire.decode_reply_view`` and ``content.messages.decode_chunk`` recognise the layout
their encoders write and hand back views into the frame; anything else must fall back to
the strict decoders. ``FrameDecoder`` gathers frames longer than one read as pieces.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.content.messages import (
    MAX_CHUNK_SIZE,
    ChunkData,
    ContentDecodeError,
    decode_as,
    decode_chunk,
)
from p2p.content.messages import encode as encode_content
from p2p.framing import FrameDecoder, FrameKind, encode_frame
from p2p.rpc_wire import (
    Cancel,
    ErrorReply,
    Reply,
    Request,
    RpcDecodeError,
    decode,
    decode_reply_view,
    encode,
)

MAX_BODY = 70_000
ids = st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
sizes = st.sampled_from([0, 1, 31, 32, 255, 256, 65535, 65536, MAX_BODY, MAX_BODY + 1])


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    """One small corruption, biased to the header and the end (where the fast path looks)."""
    b = bytearray(data)
    op = draw(st.integers(0, 4))
    if op == 0 and b:
        b[draw(st.integers(0, min(len(b), 30) - 1))] = draw(st.integers(0, 255))
    elif op == 1:
        b += draw(st.binary(min_size=1, max_size=3))
    elif op == 2 and b:
        del b[-draw(st.integers(1, min(3, len(b)))) :]
    elif op == 3 and len(b) > 20:
        del b[draw(st.integers(0, 19))]
    return bytes(b)


@st.composite
def rpc_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        frame = encode(Request(1, "m", 5, b"x"))
    elif kind == 1:
        frame = encode(ErrorReply(2, "c", "m"))
    elif kind == 2:
        frame = encode(Cancel(3))
    elif kind == 3:  # valid, but not the layout encode writes
        frame = msgpack.packb({"t": 2, "v": 1, "body": b"xy", "id": draw(ids)})
    else:
        frame = encode(Reply(draw(ids), bytes(draw(sizes))))
    return mutate(frame, draw) if draw(st.booleans()) else frame


@given(rpc_frames())
def test_reply_fast_path_agrees_with_decode(frame: bytes) -> None:
    fast = decode_reply_view(frame, MAX_BODY)
    try:
        ref = decode(frame, MAX_BODY)
    except RpcDecodeError:
        assert fast is None
        return
    if fast is not None:
        assert isinstance(ref, Reply)
        assert (ref.id, ref.body) == (fast[0], bytes(fast[1]))
        assert fast[1].obj is frame  # a view, not a copy


@given(ids, sizes)
def test_reply_encoding_is_packb_and_takes_the_fast_path(call_id: int, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = encode(Reply(call_id, body))
    assert frame == msgpack.packb({"t": 2, "v": 1, "id": call_id, "body": body})
    fast = decode_reply_view(frame, MAX_BODY)
    if size <= MAX_BODY:
        assert fast is not None and fast[0] == call_id and fast[1] == body
    else:
        assert fast is None


@st.composite
def chunk_frames(draw: st.DrawFn) -> bytes:
    index = draw(st.sampled_from([0, 1, 127, 128, 65535, 65536, 2**32 - 1]))
    size = draw(st.sampled_from([0, 1, 255, 256, 65536]))
    if draw(st.booleans()):
        frame = encode_content(ChunkData(index, bytes(size)))
    else:  # other key order, out-of-range index, oversize chunk
        frame = msgpack.packb(
            {"t": 4, "v": 1, "data": b"ab", "index": index}
            if draw(st.booleans())
            else {"t": 4, "v": 1, "index": 2**32, "data": b"ab"}
        )
    return mutate(frame, draw) if draw(st.booleans()) else frame


@given(chunk_frames(), st.booleans())
def test_chunk_fast_path_agrees_with_decode_as(frame: bytes, as_view: bool) -> None:
    data: bytes | memoryview = memoryview(frame) if as_view else frame
    try:
        ref = decode_as(frame, ChunkData)
    except ContentDecodeError as exc:
        with pytest.raises(ContentDecodeError, match=str(exc.field)):
            decode_chunk(data)
        return
    index, view = decode_chunk(data)
    assert (index, bytes(view)) == (ref.index, ref.data)


def test_chunk_fast_path_returns_a_view_and_refuses_oversize() -> None:
    frame = encode_content(ChunkData(7, b"z" * 1000))
    index, view = decode_chunk(frame)
    assert index == 7 and view.obj is frame and bytes(view) == b"z" * 1000
    big = msgpack.packb({"t": 4, "v": 1, "index": 1, "data": bytes(MAX_CHUNK_SIZE + 1)})
    with pytest.raises(ContentDecodeError):
        decode_chunk(big)


def test_a_frame_longer_than_many_reads_is_gathered_whole() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = encode_frame(FrameKind.DATA, payload) + encode_frame(FrameKind.PING, b"p")
    decoder = FrameDecoder(max_frame=2 * len(payload))
    out = []
    for start in range(0, len(stream), 100_000):
        out += decoder.feed(stream[start : start + 100_000])
        if not out:
            assert decoder.buffered == min(start + 100_000, len(stream))
    assert out == [(FrameKind.DATA, payload), (FrameKind.PING, b"p")]
    assert decoder.buffered == 0
    assert all(type(p) is bytes for _, p in out)
