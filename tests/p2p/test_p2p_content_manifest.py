"""Content ids: any blob round-trips, any single flipped bit is caught, CIDs are canonical."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.content.bitmap import Bitmap, BitmapError
from p2p.content.manifest import (
    EMPTY_ROOT,
    HASH_BYTES,
    LEAF_TAG,
    MANIFEST_BYTES,
    MAX_BLOB_SIZE,
    MIN_CHUNK_SIZE,
    NODE_TAG,
    Chunker,
    CidTextError,
    Manifest,
    ManifestError,
    build_manifest,
    check_chunk_size,
    cid_from_text,
    cid_to_text,
    decode_manifest,
    leaf_at,
    leaf_hash,
    manifest_of,
    merkle_root,
    node_hash,
    verify_chunk,
    verify_listing,
)

CS = MIN_CHUNK_SIZE
blobs = st.binary(max_size=3 * CS + 17) | st.integers(0, 5).map(lambda n: bytes(n * CS))


def chunks_of(blob: bytes, cs: int = CS) -> list[bytes]:
    return [blob[i : i + cs] for i in range(0, len(blob), cs)]


@given(blobs)
def test_any_blob_verifies_against_its_cid(blob: bytes) -> None:
    manifest, leaves = manifest_of(blob, CS)
    verify_listing(manifest.cid, manifest, leaves)
    assert manifest.size == len(blob)
    assert manifest.chunk_count == len(chunks_of(blob)) == len(leaves) // HASH_BYTES
    for i, chunk in enumerate(chunks_of(blob)):
        assert verify_chunk(manifest, leaves, i, chunk)
        assert manifest.chunk_span(i) == (i * CS, len(chunk))
    assert b"".join(chunks_of(blob)) == blob


@given(blobs, st.data())
def test_cid_is_deterministic_and_independent_of_how_the_stream_is_cut(
    blob: bytes, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    chunker = Chunker(CS)
    out: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(blob)]:
        out += chunker.feed(blob[prev:cut])
        prev = cut
    last, manifest, leaves = chunker.finish()
    if last is not None:
        out.append(last)
    assert out == chunks_of(blob)
    assert (manifest, leaves) == manifest_of(blob, CS)
    assert manifest.cid == manifest_of(bytes(blob), CS)[0].cid


@given(st.binary(min_size=1, max_size=2 * CS + 5), st.data())
def test_any_flipped_bit_in_a_chunk_is_caught(blob: bytes, data: st.DataObject) -> None:
    manifest, leaves = manifest_of(blob, CS)
    bit = data.draw(st.integers(0, 8 * len(blob) - 1))
    bad = bytearray(blob)
    bad[bit // 8] ^= 1 << (bit % 8)
    index = (bit // 8) // CS
    assert not verify_chunk(manifest, leaves, index, bytes(chunks_of(bytes(bad))[index]))


@given(st.binary(min_size=1, max_size=3 * CS), st.data())
def test_any_flipped_bit_in_the_listing_is_caught(blob: bytes, data: st.DataObject) -> None:
    manifest, leaves = manifest_of(blob, CS)
    bit = data.draw(st.integers(0, 8 * len(leaves) - 1))
    bad = bytearray(leaves)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ManifestError) as err:
        verify_listing(manifest.cid, manifest, bytes(bad))
    assert err.value.field == "root"
    # ... and any flipped bit of the manifest changes the CID (or makes it invalid)
    raw = bytearray(manifest.encode())
    mbit = data.draw(st.integers(0, 8 * len(raw) - 1))
    raw[mbit // 8] ^= 1 << (mbit % 8)
    try:
        other = decode_manifest(bytes(raw))
    except ManifestError:
        return
    with pytest.raises(ManifestError):
        verify_listing(manifest.cid, other, leaves)


def test_listing_with_a_leaf_missing_or_added_is_rejected_by_count() -> None:
    manifest, leaves = manifest_of(bytes(3 * CS), CS)
    for bad in (leaves[:-HASH_BYTES], leaves + leaves[:HASH_BYTES]):
        with pytest.raises(ManifestError) as err:
            verify_listing(manifest.cid, manifest, bad)
        assert err.value.field == "leaves"
    other, _ = manifest_of(b"x", CS)
    with pytest.raises(ManifestError) as err:
        verify_listing(manifest.cid, other, leaves)
    assert err.value.field == "cid"


def test_merkle_shape_promotes_the_odd_node() -> None:
    a, b, c = (leaf_hash(bytes([i])) for i in range(3))
    assert (
        merkle_root(b"") == EMPTY_ROOT == hashlib.sha256(b"dagrider/content/empty/v1\x00").digest()
    )
    assert merkle_root(a) == a
    assert merkle_root(a + b) == node_hash(a, b)
    assert merkle_root(a + b + c) == node_hash(node_hash(a, b), c)
    assert merkle_root(a + b + c) != merkle_root(a + b + c + c)  # no duplication malleability
    assert leaf_hash(b"x") == hashlib.sha256(LEAF_TAG + b"x").digest()
    assert node_hash(a, b) == hashlib.sha256(NODE_TAG + a + b).digest()
    assert leaf_at(a + b + c, 1) == b


def test_chunk_length_and_index_are_checked() -> None:
    manifest, leaves = manifest_of(bytes(CS + 10), CS)
    assert verify_chunk(manifest, leaves, 1, bytes(10))
    assert not verify_chunk(manifest, leaves, 1, bytes(11))
    assert not verify_chunk(manifest, leaves, 2, bytes(10))
    assert not verify_chunk(manifest, leaves, -1, bytes(10))
    with pytest.raises(ManifestError):
        manifest.chunk_span(2)


@pytest.mark.parametrize("size", [0, 1, 1000, 32 * 1024, 3 * 1024 * 1024, 8 * 1024 * 1024])
def test_chunk_size_must_be_a_power_of_two_in_range(size: int) -> None:
    with pytest.raises(ManifestError) as err:
        check_chunk_size(size + (1 if size == 3 * 1024 * 1024 else 0))
    assert err.value.field == "chunk_size"


def test_manifest_fields_are_validated_and_encoding_is_fixed() -> None:
    m = Manifest(1, 10, CS, bytes(32))
    raw = m.encode()
    assert len(raw) == MANIFEST_BYTES and decode_manifest(raw) == m
    cases: list[tuple[tuple[object, ...], str]] = [
        ((2, 10, CS, bytes(32)), "version"),
        ((1, -1, CS, bytes(32)), "size"),
        ((1, MAX_BLOB_SIZE + 1, CS, bytes(32)), "size"),
        ((1, 10, CS + 1, bytes(32)), "chunk_size"),
        ((1, 10, CS, bytes(31)), "root"),
    ]
    for args, name in cases:
        with pytest.raises(ManifestError) as err:
            Manifest(*args)  # type: ignore[arg-type]
        assert err.value.field == name
    for bad in (raw[:-1], raw + b"\0", b"XXXX" + raw[4:]):
        with pytest.raises(ManifestError):
            decode_manifest(bad)
    with pytest.raises(ManifestError):
        build_manifest(bytes(32), CS + 1, CS)  # two chunks, one leaf


def test_chunker_refuses_a_blob_over_its_limit() -> None:
    chunker = Chunker(CS, max_size=CS + 1)
    chunker.feed(bytes(CS))
    with pytest.raises(ManifestError) as err:
        chunker.feed(bytes(2))
    assert err.value.field == "size"


@given(st.binary(min_size=32, max_size=32))
def test_cid_text_round_trips(cid: bytes) -> None:
    text = cid_to_text(cid)
    assert len(text) == 64 and text == text.lower() and text.isalnum()
    assert cid_from_text(text) == cid


@pytest.mark.parametrize(
    "text", ["", "ab", "g" * 64, "A" * 64, "0" * 63, "0" * 65, " " + "0" * 63, "0x" + "0" * 62]
)
def test_bad_cid_text_is_a_specific_error(text: str) -> None:
    with pytest.raises(CidTextError) as err:
        cid_from_text(text)
    assert err.value.field == "cid"


@given(st.integers(0, 40), st.data())
def test_bitmap_round_trips_and_rejects_garbage(length: int, data: st.DataObject) -> None:
    members = data.draw(st.sets(st.integers(0, max(0, length - 1)), max_size=length))
    bm = Bitmap(length)
    for i in members:
        bm.add(i)
    again = Bitmap.from_bytes(bm.to_bytes(), length)
    assert set(again) == set(bm) == members and len(again) == len(members)
    assert again.missing() == [i for i in range(length) if i not in members]
    with pytest.raises(BitmapError):
        Bitmap.from_bytes(bm.to_bytes() + b"\0", length)
    if length % 8:
        with pytest.raises(BitmapError):
            Bitmap.from_bytes(bm.to_bytes()[:-1] + b"\xff", length)
