"""The content channel codec: every message round-trips; anything else is one error type."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.content.manifest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Manifest
from p2p.content.messages import (
    MAX_INDEX,
    MAX_PAGE_LEAVES,
    ChunkData,
    ContentDecodeError,
    GetChunk,
    GetManifest,
    Have,
    HaveReply,
    ManifestPage,
    decode,
    decode_as,
    encode,
)

cids = st.binary(min_size=32, max_size=32)
indices = st.integers(0, MAX_INDEX)
manifests = st.builds(
    Manifest,
    st.just(1),
    st.integers(0, 2**40),
    st.sampled_from([MIN_CHUNK_SIZE, 2**20, MAX_CHUNK_SIZE]),
    cids,
)
messages = st.one_of(
    st.builds(GetManifest, cids, indices),
    st.builds(ManifestPage, manifests, indices, st.binary(max_size=64).map(lambda b: b * 32)),
    st.builds(GetChunk, cids, indices),
    st.builds(ChunkData, indices, st.binary(max_size=70_000)),
    st.builds(Have, cids),
    st.builds(HaveReply, st.booleans()),
)


@given(messages)
def test_every_message_round_trips(msg: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[arg-type]


@given(indices, st.binary(max_size=70_000))
def test_chunk_fast_path_is_byte_identical_to_msgpack(index: int, data: bytes) -> None:
    body = {"t": 4, "v": 1, "index": index, "data": data}
    assert encode(ChunkData(index, data)) == msgpack.packb(body, use_bin_type=True)


def test_a_full_size_chunk_and_page_fit() -> None:
    chunk = ChunkData(7, bytes(MAX_CHUNK_SIZE))
    assert decode(encode(chunk)) == chunk
    page = ManifestPage(Manifest(1, 1, MIN_CHUNK_SIZE, bytes(32)), 0, bytes(32 * MAX_PAGE_LEAVES))
    assert decode(encode(page)) == page


def packed(**fields: object) -> bytes:
    out: bytes = msgpack.packb(fields, use_bin_type=True)
    return out


CID = bytes(32)
GOOD_MANIFEST = Manifest(1, 5, MIN_CHUNK_SIZE, bytes(32)).encode()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"", "frame"),
        (b"\xc1", "frame"),
        (packed(t=3, v=1, cid=CID, index=0) + b"\x00", "frame"),
        (msgpack.packb([3, 1]), "frame"),
        (packed(v=1, cid=CID, index=0), "t"),
        (packed(t="3", v=1, cid=CID, index=0), "t"),
        (packed(t=99, v=1), "t"),
        (packed(t=3, v=2, cid=CID, index=0), "v"),
        (packed(t=3, v=1, cid=CID), "fields"),
        (packed(t=3, v=1, cid=CID, index=0, extra=1), "fields"),
        (packed(t=3, v=1, cid=CID[:31], index=0), "cid"),
        (packed(t=3, v=1, cid="x" * 8, index=0), "cid"),
        (packed(t=3, v=1, cid=CID, index=-1), "index"),
        (packed(t=3, v=1, cid=CID, index=MAX_INDEX + 1), "index"),
        (packed(t=3, v=1, cid=CID, index=True), "index"),
        (packed(t=1, v=1, cid=CID, start=1.5), "start"),
        (packed(t=2, v=1, manifest=GOOD_MANIFEST[:-1], start=0, leaves=b""), "manifest"),
        (packed(t=2, v=1, manifest=GOOD_MANIFEST, start=0, leaves=bytes(33)), "leaves"),
        (
            packed(
                t=2, v=1, manifest=GOOD_MANIFEST, start=0, leaves=bytes(32 * MAX_PAGE_LEAVES + 32)
            ),
            "leaves",
        ),
        (packed(t=4, v=1, index=0, data="text"), "data"),
        (packed(t=6, v=1, have=1), "have"),
    ],
)
def test_malformed_messages_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(ContentDecodeError) as err:
        decode(data)
    assert err.value.field == field


def test_oversize_chunk_is_rejected_before_decoding() -> None:
    with pytest.raises(ContentDecodeError) as err:
        decode(packed(t=4, v=1, index=0, data=bytes(MAX_CHUNK_SIZE + 1)))
    assert err.value.field in ("frame", "data")
    with pytest.raises(ValueError):
        encode(ChunkData(0, bytes(MAX_CHUNK_SIZE + 1)))
    with pytest.raises(ValueError):
        encode(GetChunk(b"short", 0))


def test_decode_as_insists_on_the_type() -> None:
    with pytest.raises(ContentDecodeError) as err:
        decode_as(encode(HaveReply(True)), ChunkData)
    assert err.value.field == "t"
    assert decode_as(encode(HaveReply(True)), HaveReply) == HaveReply(True)


@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(ContentDecodeError):
        decode(data)
