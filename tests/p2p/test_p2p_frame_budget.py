"""Strangers' partial frames: a smaller size limit and one shared byte budget.

Pure parts first (the decoder's ``announced`` size, ``FrameBudget``), then the transport
over loopback: a stranger that announces more than ``stranger_max_frame`` or whose frame
does not fit the shared budget loses its link; a configured peer may announce
``max_frame``; a closed link gives its charge back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.config import TransportConfig
from p2p.errors import FrameError
from p2p.framing import HEADER, HEADER_SIZE, FrameBudget, FrameDecoder, FrameKind, encode_frame
from p2p.identity import Identity
from p2p.testing import raw_dial, read_until_closed, run, running, wait_until

KiB = 1024


# --- pure -------------------------------------------------------------------------------


@given(st.binary(max_size=3000), st.lists(st.integers(1, 700), min_size=1, max_size=20))
def test_announced_is_the_whole_partial_frame_from_its_header_on(
    payload: bytes, cuts: list[int]
) -> None:
    wire = encode_frame(FrameKind.DATA, payload) + encode_frame(FrameKind.PING, b"p")
    decoder = FrameDecoder(1 << 20)
    pos = 0
    for cut in cuts * (len(wire) // max(1, sum(cuts)) + 1):
        if pos >= len(wire):
            break
        decoder.feed(wire[pos : pos + cut])
        pos += cut
        if HEADER_SIZE <= pos < HEADER_SIZE + len(payload):
            assert decoder.announced == HEADER_SIZE + len(payload)
        elif pos < HEADER_SIZE:
            assert decoder.announced == pos
    if pos >= len(wire):
        assert decoder.announced == 0


def test_discard_drops_the_partial_frame_and_poisons() -> None:
    decoder = FrameDecoder(1 << 20)
    decoder.feed(HEADER.pack(5000, int(FrameKind.DATA)) + bytes(100))
    assert decoder.announced == 5005 and decoder.buffered == 105
    decoder.discard()
    assert decoder.announced == 0 and decoder.buffered == 0
    with pytest.raises(FrameError):
        decoder.feed(b"x")


def test_budget_grows_only_within_its_limit_and_always_shrinks() -> None:
    budget = FrameBudget(100)
    assert budget.recharge(0, 60)
    assert not budget.recharge(0, 41)  # 60 + 41 > 100: refused, nothing changed
    assert budget.used == 60 and budget.refused == 1
    assert budget.recharge(0, 40) and budget.used == 100
    assert budget.recharge(60, 10) and budget.used == 50  # shrinking
    assert budget.recharge(10, 0) and budget.recharge(40, 0) and budget.used == 0
    assert budget.peak == 100
    with pytest.raises(ValueError):
        budget.recharge(1, 0)  # gives back more than is charged


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50))))
def test_budget_never_exceeds_its_limit(steps: list[tuple[int, int]]) -> None:
    budget = FrameBudget(100)
    held = [0, 0, 0, 0]
    for who, want in steps:
        if budget.recharge(held[who], want):
            held[who] = want
        assert budget.used == sum(held) <= 100


def test_config_checks_the_stranger_limits() -> None:
    with pytest.raises(ValueError, match="stranger_frame_budget"):
        TransportConfig("127.0.0.1", 0, stranger_max_frame=2 * KiB, stranger_frame_budget=KiB)
    with pytest.raises(ValueError, match="stranger_max_frame"):
        TransportConfig("127.0.0.1", 0, stranger_max_frame=0)
    small = TransportConfig("127.0.0.1", 0, max_frame=KiB, stranger_frame_budget=KiB)
    assert small.stranger_max_frame > small.max_frame  # capped at max_frame where used


# --- over loopback ------------------------------------------------------------------------

LIMITS: dict[str, Any] = {"stranger_max_frame": 64 * KiB, "stranger_frame_budget": 150 * KiB}


def _partial(size: int) -> bytes:
    """A DATA frame header announcing ``size`` bytes, and all of them but the last."""
    return HEADER.pack(size, int(FrameKind.DATA)) + bytes(size - 1)


def test_a_stranger_may_not_announce_more_than_stranger_max_frame() -> None:
    async def main() -> None:
        async with running(Identity.generate(), **LIMITS) as (node, _rec):
            reader, writer = await raw_dial(Identity.generate(), node.listen_address)
            writer.write(HEADER.pack(64 * KiB + 1, int(FrameKind.DATA)))
            await read_until_closed(reader)  # dropped at the header
            assert node.stranger_frames.used == 0

    run(main())


def test_strangers_share_one_budget_and_closing_gives_it_back() -> None:
    async def main() -> None:
        async with running(Identity.generate(), **LIMITS) as (node, _rec):
            links = [await raw_dial(Identity.generate(), node.listen_address) for _ in range(3)]
            for _, writer in links[:2]:
                writer.write(_partial(64 * KiB))
            used = 2 * (64 * KiB + HEADER_SIZE)
            await wait_until(lambda: node.stranger_frames.used == used, what="two charged")
            links[2][1].write(_partial(64 * KiB))  # 3 x 64 KiB > 150 KiB
            await read_until_closed(links[2][0])
            assert node.stranger_frames.used == used and node.stranger_frames.refused == 1
            links[0][1].write(b"\x00")  # the frame completes: its charge is given back
            await wait_until(lambda: node.stranger_frames.used == used // 2, what="released")
            links[1][1].transport.abort()  # a link that goes away gives its charge back
            await wait_until(lambda: node.stranger_frames.used == 0, what="all released")
            for _, writer in links:
                writer.transport.abort()

    run(main())


def test_a_configured_peer_may_announce_max_frame_and_is_not_charged() -> None:
    member = Identity.generate()

    async def main() -> None:
        async with running(
            Identity.generate(), peers={member.public_key: ("127.0.0.1", 9)}, **LIMITS
        ) as (node, rec):
            reader, writer = await raw_dial(member, node.listen_address)
            payload = bytes(300 * KiB)
            writer.write(encode_frame(FrameKind.DATA, payload))
            await wait_until(lambda: len(rec.frames) == 1, what="a 300 KiB frame delivered")
            assert node.stranger_frames.peak == 0
            writer.transport.abort()
            del reader

    run(main())


def test_many_strangers_cannot_hold_more_than_the_budget() -> None:
    async def main() -> None:
        async with running(Identity.generate(), **LIMITS) as (node, _rec):
            links = await asyncio.gather(
                *(raw_dial(Identity.generate(), node.listen_address) for _ in range(8))
            )
            for _, writer in links:
                writer.write(_partial(60 * KiB))
            # two 60 KiB partial frames fit the 150 KiB budget; the other six are refused
            await wait_until(lambda: node.stranger_frames.refused >= 8 - 2, what="refusals")
            assert node.stranger_frames.used <= 150 * KiB
            assert node.stranger_frames.peak <= 150 * KiB
            assert node.stranger_frames.refused >= 8 - 2
            for _, writer in links:
                writer.transport.abort()
            await wait_until(lambda: node.stranger_frames.used == 0, what="all released")

    run(main())
