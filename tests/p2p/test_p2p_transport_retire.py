"""A replaced link drains instead of dying: nothing in flight is lost, nothing is reported.

Two peers that dial each other, a peer that dials again, a relayed path that becomes
direct: the transport keeps one link per peer and retires the other (``Link.retire``).
Before, the older link was aborted while it was still the peer's link: queued frames
were dropped and ``on_disconnected`` fired, so every RPC call in flight failed with
"link ... lost during the call" although the peer never went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from p2p.errors import PeerNotConnected
from p2p.framing import FrameKind, encode_frame
from p2p.identity import Identity
from p2p.rpc import RpcEndpoint
from p2p.testing import (
    LoopFactory,
    Recorder,
    raw_dial,
    read_until_closed,
    run,
    running,
    wait_until,
)
from p2p.tls import server_context
from p2p.transport import MAX_DRAINING, PeerTransport

SMALL, LARGE = sorted(
    (Identity.from_seed(bytes([90 + i]) * 32) for i in range(2)), key=lambda i: i.public_key
)
STRANGER = Identity.from_seed(b"\x5e" * 32)
KIND = FrameKind.DHT


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


async def replace_link(sm: PeerTransport, lg: PeerTransport) -> None:
    """Give SMALL a second link to LARGE, dialled by SMALL (so the keeper at both ends),
    while LARGE's on-demand link to SMALL is live: both ends retire LARGE's link."""
    reader, writer = await raw_dial(SMALL, lg.listen_address, expected=LARGE.public_key)
    assert sm.adopt(LARGE.public_key, "outbound", reader, writer)
    await wait_until(
        lambda: lg.stats()[SMALL.peer_id]["direction"] == "inbound", what="LARGE switched"
    )


def test_frames_in_flight_on_a_replaced_link_all_arrive_and_nothing_is_reported(
    loop_factory: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2p.transport")
    count = 3000

    async def pump(transport: PeerTransport, to: bytes, tag: bytes) -> None:
        for i in range(count):
            while not transport.send(to, tag + i.to_bytes(4, "big") + bytes(200)):
                await asyncio.sleep(0.001)  # between two links for a moment
            if i % 50 == 0:
                await asyncio.sleep(0)

    async def main() -> None:
        async with (
            running(SMALL, allowed=None, retire_timeout=10) as (sm, sm_rec),
            running(LARGE, allowed=None, retire_timeout=10) as (lg, lg_rec),
        ):
            await lg.connect(SMALL.public_key, sm.listen_address, timeout=3)
            await wait_until(lambda: sm.has_link(LARGE.public_key), what="linked")
            assert sm.stats()[LARGE.peer_id]["direction"] == "inbound"
            pumps = asyncio.gather(
                pump(sm, LARGE.public_key, b"s"), pump(lg, SMALL.public_key, b"l")
            )
            await asyncio.sleep(0.01)
            await replace_link(sm, lg)
            await pumps
            await wait_until(
                lambda: len(lg_rec.frames) == count and len(sm_rec.frames) == count,
                timeout=10,
                what="every frame delivered",
            )
            for rec, tag in ((lg_rec, b"s"), (sm_rec, b"l")):
                got = sorted(int.from_bytes(p[1:5], "big") for _, p in rec.frames)
                assert got == list(range(count)), "a frame was lost or duplicated"
                assert all(p[:1] == tag for _, p in rec.frames)
            assert sm_rec.downs == [] and lg_rec.downs == []
            await wait_until(
                lambda: (
                    not sm.stats()[LARGE.peer_id]["draining"]
                    and not lg.stats()[SMALL.peer_id]["draining"]
                ),
                what="retired links closed",
            )
            assert sm.stats()[LARGE.peer_id]["direction"] == "outbound"
            assert sm.connected() == [LARGE.public_key] and lg.connected() == [SMALL.public_key]

    run(main(), timeout=30, loop_factory=loop_factory)
    assert len(events(caplog, "link retired")) == 2  # one at each end
    assert events(caplog, "retired link lost") == []


@dataclass
class SlowPair:
    """LARGE (client) linked to SMALL, whose ``slow`` handler waits for ``release``."""

    sm: PeerTransport
    lg: PeerTransport
    lg_rec: Recorder
    client: RpcEndpoint
    started: list[bytes]
    release: asyncio.Event


@contextlib.asynccontextmanager
async def slow_pair() -> AsyncIterator[SlowPair]:
    release = asyncio.Event()
    started: list[bytes] = []

    async def slow(_peer: bytes, body: bytes) -> bytes:
        started.append(body)
        await release.wait()
        return body[::-1]

    async with (
        running(SMALL, allowed=None) as (sm, _),
        running(LARGE, allowed=None) as (lg, lg_rec),
    ):
        server = RpcEndpoint(sm, KIND, {"slow": slow})
        client = RpcEndpoint(lg, KIND, {})
        try:
            await lg.connect(SMALL.public_key, sm.listen_address, timeout=3)
            yield SlowPair(sm, lg, lg_rec, client, started, release)
        finally:
            await client.close()
            await server.close()


def test_an_rpc_call_in_flight_survives_a_link_replacement(loop_factory: LoopFactory) -> None:
    """The failure seen on a loaded run: the caller linked first, the callee dialled back
    during the call. The answer must arrive, on whichever link is current."""

    async def main() -> None:
        async with slow_pair() as p:
            small = SMALL.public_key
            call = asyncio.create_task(p.client.call(small, "slow", b"abc", timeout=10))
            await wait_until(lambda: p.started == [b"abc"], what="first call served")
            queued = asyncio.create_task(p.client.call(small, "slow", b"xyz", timeout=10))
            await replace_link(p.sm, p.lg)
            p.release.set()
            assert await call == b"cba"
            assert await queued == b"zyx"
            assert p.lg_rec.downs == []

    run(main(), timeout=30, loop_factory=loop_factory)


def test_a_lost_replaced_link_fails_only_the_calls_it_carried(loop_factory: LoopFactory) -> None:
    """A replaced link that did not drain is reported lost while its successor is live
    (``on_disconnected``, as the transport calls it then): the call sent on the lost link
    fails, the call on the live link is answered."""

    async def main() -> None:
        async with slow_pair() as p:
            small = SMALL.public_key
            first = p.lg.link_generation(small)
            old = asyncio.create_task(p.client.call(small, "slow", b"old", timeout=10))
            await wait_until(lambda: p.started == [b"old"], what="first call served")
            await replace_link(p.sm, p.lg)
            assert p.lg.link_generation(small) not in (None, first)
            new = asyncio.create_task(p.client.call(small, "slow", b"new", timeout=10))
            await wait_until(lambda: len(p.started) == 2, what="second call served")
            p.client.on_disconnected(small)  # what the transport reports for link 1
            with pytest.raises(PeerNotConnected, match="carried the call was lost"):
                await old
            p.release.set()
            assert await new == b"wen"

    run(main(), timeout=30, loop_factory=loop_factory)


def test_a_peer_keeps_few_draining_links_however_often_it_redials(
    loop_factory: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Redialling in a loop must not pile up draining links (each holds buffers): past
    ``MAX_DRAINING`` the oldest is closed, long before ``retire_timeout``."""
    caplog.set_level(logging.INFO, logger="p2p.transport")

    async def main() -> None:
        async with running(SMALL, allowed=None, retire_timeout=60) as (sm, rec):
            conns = []
            for i in range(MAX_DRAINING + 3):
                conns.append(await raw_dial(STRANGER, sm.listen_address))
                await wait_until(lambda n=i + 1: len(rec.ups) >= n, what=f"link {i} up")
            for reader, _ in conns[:2]:  # retired, then closed by later retirements
                assert await read_until_closed(reader, timeout=5) != b""
            assert sm.stats()[STRANGER.peer_id]["draining"] == MAX_DRAINING
            for _, writer in conns:
                writer.close()

    run(main(), timeout=30, loop_factory=loop_factory)
    assert len(events(caplog, "retired link lost")) >= 2


def test_a_losing_duplicate_is_drained_not_aborted(loop_factory: LoopFactory) -> None:
    """Both ends dialled at once; at the far end our losing link was, for a moment, its
    link, and it sent on it. What it sent is delivered, and the link closes drained."""

    async def main() -> None:
        async with (
            running(LARGE, allowed={SMALL.public_key}) as (lg, _),
            running(SMALL, peers={LARGE.public_key: lg.listen_address}, retire_timeout=60) as (
                sm,
                rec,
            ),
        ):
            await wait_until(lambda: sm.connected() == [LARGE.public_key], what="linked")
            reader, writer = await raw_dial(LARGE, sm.listen_address, SMALL.public_key)
            writer.write(encode_frame(FrameKind.DATA, b"sent on the loser"))
            seen = b""
            goaway = encode_frame(FrameKind.GOAWAY, b"")
            async with asyncio.timeout(5):
                while goaway not in seen:
                    seen += await reader.read(4096)
            writer.write(encode_frame(FrameKind.GOAWAY, b""))
            writer.write(encode_frame(FrameKind.GOAWAY_ACK, b""))
            seen += await read_until_closed(reader, timeout=15)  # drained: not the timeout
            assert encode_frame(FrameKind.GOAWAY_ACK, b"") in seen
            assert (LARGE.public_key, b"sent on the loser") in rec.frames
            assert rec.ups == [LARGE.public_key] and rec.downs == []
            assert sm.stats()[LARGE.peer_id]["direction"] == "outbound"
            writer.close()

    run(main(), timeout=30, loop_factory=loop_factory)


def test_a_goaway_on_the_current_link_is_acknowledged_and_the_link_stays(
    loop_factory: LoopFactory,
) -> None:
    """The peer switched first (its side of the new link finished first): we answer its
    GOAWAY and keep using the link until our side switches, or the peer gives up."""

    async def main() -> None:
        async with running(SMALL, allowed=None) as (sm, rec):
            reader, writer = await raw_dial(STRANGER, sm.listen_address)
            await wait_until(lambda: rec.ups == [STRANGER.public_key])
            writer.write(encode_frame(FrameKind.GOAWAY, b""))
            ack = encode_frame(FrameKind.GOAWAY_ACK, b"")
            seen = b""
            async with asyncio.timeout(5):
                while ack not in seen:
                    seen += await reader.read(4096)
            assert sm.send(STRANGER.public_key, b"still here")
            async with asyncio.timeout(5):
                while encode_frame(FrameKind.DATA, b"still here") not in seen:
                    seen += await reader.read(4096)
            assert rec.downs == []
            writer.close()

    run(main(), timeout=20, loop_factory=loop_factory)


def test_draining_links_are_bounded_across_peers(loop_factory: LoopFactory) -> None:
    """In open mode a stranger's entry is forgotten with its link, so the per-peer bound
    alone would not hold: ``max_draining`` bounds them all together."""
    strangers = [Identity.from_seed(bytes([200 + i]) * 32) for i in range(4)]

    async def main() -> None:
        async with running(SMALL, allowed=None, retire_timeout=60, max_draining=2) as (sm, _):
            first, second = [], []
            for who in strangers:  # each stranger's first link is replaced by its second
                first.append(await raw_dial(who, sm.listen_address))
                await wait_until(lambda w=who: sm.has_link(w.public_key), what="first link")
                second.append(await raw_dial(who, sm.listen_address))
                await wait_until(
                    lambda w=who: sm.stats()[w.peer_id]["draining"] == 1, what="retired"
                )
            for reader, _ in first[:2]:  # the oldest, closed by the bound
                assert await read_until_closed(reader, timeout=5) != b""
            assert sum(s["draining"] for s in sm.stats().values()) == 2
            for _, writer in first + second:
                writer.close()

    run(main(), timeout=30, loop_factory=loop_factory)


def test_a_replaced_link_the_peer_still_uses_is_reinstated_when_its_successor_dies(
    loop_factory: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """SMALL switches to a new link that LARGE never sees (LARGE's side of it never came
    up: here a stand-in endpoint with LARGE's key), and that link dies. LARGE still uses
    the old one, so SMALL takes it back at once instead of waiting ``retire_timeout``
    with no working link (a loaded run's DHT mesh did not start that way)."""
    caplog.set_level(logging.INFO, logger="p2p.transport")

    async def main() -> None:
        conns: list[asyncio.StreamWriter] = []

        async def stand_in(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conns.append(writer)

        fake = await asyncio.start_server(stand_in, "127.0.0.1", 0, ssl=server_context(LARGE))
        async with (
            fake,
            running(SMALL, allowed=None, retire_timeout=60) as (sm, sm_rec),
            running(LARGE, allowed=None, retire_timeout=60) as (lg, lg_rec),
        ):
            await lg.connect(SMALL.public_key, sm.listen_address, timeout=3)
            await wait_until(lambda: sm.has_link(LARGE.public_key), what="linked")
            reader, writer = await raw_dial(
                SMALL, fake.sockets[0].getsockname()[:2], expected=LARGE.public_key
            )
            assert sm.adopt(LARGE.public_key, "outbound", reader, writer)
            await wait_until(lambda: len(conns) == 1, what="stand-in linked")
            conns[0].transport.abort()  # the new link dies; LARGE never knew of it
            await wait_until(
                lambda: sm.stats()[LARGE.peer_id]["direction"] == "inbound", what="reinstated"
            )
            assert sm.send(LARGE.public_key, b"over the old link")
            assert lg.send(SMALL.public_key, b"and back")
            await wait_until(lambda: lg_rec.payloads(SMALL.public_key) == [b"over the old link"])
            await wait_until(lambda: sm_rec.payloads(LARGE.public_key) == [b"and back"])
            assert lg_rec.downs == []

    run(main(), timeout=30, loop_factory=loop_factory)
    said = [getattr(r, "event", None) for r in caplog.records]
    assert "link reinstated" in said
