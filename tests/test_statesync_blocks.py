"""A log row's block comes from a peer during state transfer and is unpacked before the
row is checked against the certificate's hash chain: it must be read with limits (the
committee's), and anything else than a flat list of transactions within them must fail
as a ``DecodeError`` on field ``block``, which the transfer turns into a ban of the
peer that sent it, never into memory msgpack builds first."""

from __future__ import annotations

import msgpack
import pytest

from dagrider.checkpoint import Certificate, Checkpoint, pack_block
from dagrider.errors import DecodeError
from dagrider.ordering import OrderingState
from dagrider.params import Limits
from dagrider.statesync import LogRow, LogRows, Transfer

SMALL = Limits(max_txs_per_vertex=4, max_tx_bytes=16, max_block_bytes=32)


def row(block: bytes) -> LogRow:
    return LogRow(0, 0, 1, 0, 1, block)


def test_a_block_within_the_limits_unpacks() -> None:
    txs = [b"a" * 16, b"b" * 8, b""]
    assert row(pack_block(txs)).transactions(SMALL) == txs
    assert row(pack_block(txs)).transactions() == txs  # verified rows: frame bound only


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (pack_block([b"x"] * 5), "not msgpack"),  # more transactions than a vertex carries
        (pack_block([b"x" * 17]), "not msgpack"),  # a transaction over max_tx_bytes
        (pack_block([b"x" * 12] * 3), "36 bytes of transactions exceeds 32"),
        (msgpack.packb([[]] * 4), "nested deeper"),
        (msgpack.packb([[[]]]), "nested deeper"),
        (msgpack.packb(["text"]), "not msgpack"),  # strings are not transactions
        (msgpack.packb({b"k": b"v"}), "not msgpack"),  # no maps at all
        (msgpack.packb(b"tx"), "expected a list of transactions"),
        (pack_block([b"x"]) + b"\x00", "trailing bytes"),
        (b"\xdd\xff\xff\xff\xff", "not msgpack"),  # array32 header announcing 4 G items
        (b"\x90" * 200_000, "exceeds"),  # an oversize frame of empty arrays
    ],
)
def test_a_malformed_or_oversize_block_raises_a_decode_error_on_block(
    block: bytes, reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        row(block).transactions(SMALL)
    assert info.value.field == "block"
    assert reason in str(info.value)


def test_a_transfer_bans_the_peer_that_sends_a_block_over_the_committee_limits() -> None:
    """The committee's limits reach the transfer: a row whose block breaks them is a
    malformed row (the peer is banned) before any hash-chain arithmetic."""
    cp = Checkpoint(bytes(32), 1, 5, bytes(32), bytes(32), bytes(32))
    state = OrderingState(2, 1, 1, 1, 5, ())
    t = Transfer(Certificate(cp, ()), state, 0, 0, bytes(32), [1, 2], limits=SMALL)
    (peer, req), *_ = t.requests()
    big = LogRow(0, 0, 1, 0, 1, pack_block([b"x"] * 5))
    bans = t.on_rows(peer, LogRows(req.first, (big,), True, bytes(32)))
    assert [p for p, _ in bans] == [peer]
    assert "malformed block" in bans[0][1] and "block" in bans[0][1]
    assert peer in t.banned and not t.finished
