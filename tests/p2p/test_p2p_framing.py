"""Frames survive any chunking of the stream; bad headers are refused before buffering."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.errors import FrameError
from p2p.framing import HEADER, HEADER_SIZE, KNOWN_KINDS, FrameDecoder, FrameKind, encode_frame

kinds = st.sampled_from(sorted(KNOWN_KINDS))
frames_st = st.lists(st.tuples(kinds, st.binary(max_size=300)), max_size=20)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def test_encode_layout() -> None:
    assert encode_frame(FrameKind.PING, b"abc") == b"\x00\x00\x00\x03\x01abc"
    assert encode_frame(FrameKind.DATA, b"") == b"\x00\x00\x00\x00\x00"


def test_encode_rejects_non_byte_kind() -> None:
    with pytest.raises(ValueError, match="kind 256"):
        encode_frame(256, b"")


@given(frames=frames_st, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_any_chunking_gives_the_same_frames(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(k, p) for k, p in frames)
    decoder = FrameDecoder(max_frame=300)
    out: list[tuple[int, bytes]] = []
    for chunk in chunked(stream, cuts):
        out += decoder.feed(chunk)
    assert out == frames
    assert decoder.buffered == 0


@given(frames=frames_st)
def test_byte_by_byte(frames: list[tuple[int, bytes]]) -> None:
    stream = b"".join(encode_frame(k, p) for k, p in frames)
    decoder = FrameDecoder(max_frame=300)
    out: list[tuple[int, bytes]] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == frames


def test_max_frame_is_inclusive() -> None:
    decoder = FrameDecoder(max_frame=4)
    assert decoder.feed(encode_frame(0, b"1234")) == [(0, b"1234")]
    with pytest.raises(FrameError, match="length 5 exceeds max_frame 4"):
        decoder.feed(encode_frame(0, b"12345"))


def test_oversize_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame=1024)
    with pytest.raises(FrameError, match="exceeds max_frame"):
        decoder.feed(HEADER.pack(2**32 - 1, 0))


def test_unknown_kind_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame=1024)
    with pytest.raises(FrameError, match="unknown frame kind 11"):
        decoder.feed(HEADER.pack(10, 11))


def test_more_kinds_can_be_admitted() -> None:
    decoder = FrameDecoder(max_frame=16, kinds={0, 11})
    assert decoder.feed(encode_frame(11, b"x")) == [(11, b"x")]


def test_a_decoder_stays_poisoned_after_an_error() -> None:
    decoder = FrameDecoder(max_frame=8)
    with pytest.raises(FrameError):
        decoder.feed(HEADER.pack(100, 0))
    with pytest.raises(FrameError):
        decoder.feed(encode_frame(0, b"ok"))


def test_partial_header_is_buffered() -> None:
    decoder = FrameDecoder(max_frame=8)
    frame = encode_frame(FrameKind.PONG, b"12345678")
    assert decoder.feed(frame[: HEADER_SIZE - 1]) == []
    assert decoder.buffered == HEADER_SIZE - 1
    assert decoder.feed(frame[HEADER_SIZE - 1 :]) == [(FrameKind.PONG, b"12345678")]
