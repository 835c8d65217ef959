"""Application channels: frames of a registered kind reach their own handler only."""

from __future__ import annotations

import pytest

from p2p.framing import FrameKind
from p2p.identity import Identity
from p2p.testing import LoopFactory, loopback_config, run, wait_until
from p2p.transport import PeerTransport

A, B = sorted((Identity.from_seed(bytes([i]) * 32) for i in (5, 6)), key=lambda i: i.public_key)


def test_channel_frames_reach_their_handler_and_data_stays_separate(
    loop_factory: LoopFactory,
) -> None:
    got_data: list[bytes] = []
    got_crdt: list[bytes] = []

    async def main() -> None:
        b = PeerTransport(
            B,
            loopback_config(),
            {},
            {A.public_key},
            lambda _k, p: got_data.append(p),
            channels={FrameKind.CRDT: lambda _k, p: got_crdt.append(p)},
        )
        await b.start()
        a = PeerTransport(
            A,
            loopback_config(),
            {B.public_key: b.listen_address},
            None,
            lambda _k, _p: None,
            channels={FrameKind.CRDT: lambda _k, _p: None},
        )
        await a.start()
        try:
            await wait_until(lambda: B.public_key in a.connected(), what="linked")
            assert a.send(B.public_key, b"consensus")
            assert a.send(B.public_key, b"sync", kind=FrameKind.CRDT)
            await wait_until(lambda: got_data and got_crdt, what="both frames")
            assert got_data == [b"consensus"] and got_crdt == [b"sync"]
            with pytest.raises(ValueError, match="not a registered channel"):
                a.send(B.public_key, b"x", kind=9)
        finally:
            await a.close()
            await b.close()

    run(main(), loop_factory=loop_factory)


def test_link_kinds_cannot_be_registered_as_channels() -> None:
    with pytest.raises(ValueError, match="cannot be an application channel"):
        PeerTransport(A, loopback_config(), {}, None, lambda _k, _p: None, channels={1: print})


def test_unregistered_channel_frame_closes_the_link(loop_factory: LoopFactory) -> None:
    """A peer speaking a channel we do not run is a protocol violation, not silence."""
    got: list[bytes] = []
    downs: list[bytes] = []

    async def main() -> None:
        b = PeerTransport(
            B,
            loopback_config(),
            {},
            None,
            lambda _k, p: got.append(p),
            on_disconnected=downs.append,
        )
        await b.start()
        a = PeerTransport(
            A,
            loopback_config(),
            {B.public_key: b.listen_address},
            None,
            lambda _k, _p: None,
            channels={FrameKind.CRDT: lambda _k, _p: None},
        )
        await a.start()
        try:
            await wait_until(lambda: A.public_key in b.connected(), what="linked")
            a.send(B.public_key, b"sync", kind=FrameKind.CRDT)
            await wait_until(lambda: downs, what="link dropped")
            assert got == [] and downs == [A.public_key]
        finally:
            await a.close()
            await b.close()

    run(main(), loop_factory=loop_factory)
