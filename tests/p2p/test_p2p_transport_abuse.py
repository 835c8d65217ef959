"""A peer with a valid key that misbehaves loses its link; the node keeps serving others."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

from p2p.framing import HEADER, FrameKind, encode_frame
from p2p.identity import Identity
from p2p.testing import (
    LoopFactory,
    free_port,
    raw_dial,
    read_until_closed,
    run,
    running,
    wait_until,
)

SMALL, LARGE = sorted(
    (Identity.from_seed(bytes([i]) * 32) for i in (1, 2)), key=lambda i: i.public_key
)
BYZ = Identity.from_seed(b"\x0f" * 32)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def violations(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return events(caplog, "peer violation")


GARBAGE = {
    "oversize header": HEADER.pack(2**31, FrameKind.DATA),
    "unknown kind": HEADER.pack(3, 0x7F) + b"abc",
    "random bytes": os.urandom(4096),
    "huge ping": encode_frame(FrameKind.PING, bytes(1000)),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_closes_only_that_link(name: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        allowed = {SMALL.public_key, BYZ.public_key}
        async with (
            running(LARGE, allowed=allowed, max_frame=1 << 20) as (lg, lg_rec),
            running(SMALL, peers={LARGE.public_key: lg.listen_address}) as (sm, sm_rec),
        ):
            await wait_until(lambda: SMALL.public_key in lg.connected())
            reader, writer = await raw_dial(BYZ, lg.listen_address, expected=LARGE.public_key)
            await wait_until(lambda: BYZ.public_key in lg.connected())
            writer.write(encode_frame(FrameKind.DATA, b"fine so far") + GARBAGE[name])
            await read_until_closed(reader)
            writer.close()
            await wait_until(lambda: BYZ.public_key not in lg.connected())
            assert lg_rec.payloads(BYZ.public_key) in ([], [b"fine so far"])
            # the honest peer is still served, both ways
            assert sm.send(LARGE.public_key, b"still here")
            assert lg.send(SMALL.public_key, b"and you")
            await wait_until(lambda: (SMALL.public_key, b"still here") in lg_rec.frames)
            await wait_until(lambda: (LARGE.public_key, b"and you") in sm_rec.frames)
            assert lg.connected() == [SMALL.public_key]
            assert sm_rec.downs == []

    with caplog.at_level(logging.WARNING, logger="p2p.transport"):
        run(main())
    found = violations(caplog)
    assert len(found) == 1 and getattr(found[0], "peer", None) == BYZ.short_id


def test_frame_rate_over_the_limit_disconnects(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with running(LARGE, allowed=None, rate_frames_per_s=200) as (lg, rec):
            reader, writer = await raw_dial(BYZ, lg.listen_address)
            writer.write(encode_frame(FrameKind.DATA, b"x") * 1000)
            await read_until_closed(reader)
            writer.close()
            assert len(rec.payloads(BYZ.public_key)) < 1000

    with caplog.at_level(logging.WARNING, logger="p2p.transport"):
        run(main())
    assert any("frames/s" in str(getattr(r, "detail", "")) for r in violations(caplog))


def test_byte_rate_over_the_limit_disconnects(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with running(LARGE, allowed=None, rate_bytes_per_s=100_000, max_frame=4_000_000) as (
            lg,
            _,
        ):
            reader, writer = await raw_dial(BYZ, lg.listen_address)
            writer.write(encode_frame(FrameKind.DATA, bytes(3_000_000)))  # burst is 1 MiB
            await read_until_closed(reader)
            writer.close()

    with caplog.at_level(logging.WARNING, logger="p2p.transport"):
        run(main())
    assert any("B/s" in str(getattr(r, "detail", "")) for r in violations(caplog))


def test_a_silent_peer_is_dropped_by_keepalive(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        cfg: dict[str, Any] = {"keepalive_interval": 0.05, "keepalive_timeout": 0.3}
        async with running(LARGE, allowed=None, **cfg) as (lg, rec):
            loop = asyncio.get_running_loop()
            start = loop.time()  # before the link exists: a lower bound on its life
            reader, writer = await raw_dial(BYZ, lg.listen_address)
            # we never answer; only the keep-alive timeout closes the link (a hang bound)
            pings = await read_until_closed(reader, timeout=30)
            assert loop.time() - start >= 0.25
            assert pings.startswith(HEADER.pack(8, FrameKind.PING))
            assert rec.downs == [BYZ.public_key]
            writer.close()

    run(main(), loop_factory=loop_factory)


def test_a_non_tls_client_is_dropped(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        # dropped on the bytes, not at the handshake timeout: that one is beyond the read's
        async with running(LARGE, allowed=None, handshake_timeout=120) as (lg, rec):
            reader, writer = await asyncio.open_connection(*lg.listen_address)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            await read_until_closed(reader, timeout=30)
            writer.close()
            assert rec.ups == []

    run(main(), loop_factory=loop_factory)


def test_a_handshake_that_never_starts_times_out(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with running(LARGE, allowed=None, handshake_timeout=0.2) as (lg, rec):
            loop = asyncio.get_running_loop()
            start = loop.time()  # before the server's handshake clock starts
            reader, writer = await asyncio.open_connection(*lg.listen_address)
            # we send nothing at all; only the handshake timeout closes it (a hang bound)
            await read_until_closed(reader, timeout=30)
            assert loop.time() - start >= 0.15
            writer.close()
            assert rec.ups == []

    run(main(), loop_factory=loop_factory)


def test_connections_over_max_handshaking_are_dropped_at_once(
    caplog: pytest.LogCaptureFixture, loop_factory: LoopFactory
) -> None:
    async def main() -> None:
        # a handshake timeout far beyond the read below: "at once" needs no clock
        async with running(LARGE, allowed=None, max_handshaking=1, handshake_timeout=120) as (
            lg,
            rec,
        ):
            _, silent = await asyncio.open_connection(*lg.listen_address)  # holds the slot
            await wait_until(lambda: lg.handshaking == 1, what="the silent one admitted")
            reader, writer = await asyncio.open_connection(*lg.listen_address)
            # dropped, not admitted: an admitted one would wait for the 120 s timeout
            await read_until_closed(reader, timeout=30)
            assert lg.handshaking == 1
            writer.close()
            silent.close()
            # the slot is free again once the server saw the silent connection go
            await wait_until(lambda: any(events(caplog, "inbound refused")))
            _, ok = await raw_dial(BYZ, lg.listen_address)
            await wait_until(lambda: rec.ups == [BYZ.public_key])
            ok.close()

    with caplog.at_level(logging.INFO, logger="p2p.transport"):
        run(main(), loop_factory=loop_factory)
    assert any(getattr(r, "reason", None) == "busy" for r in events(caplog, "inbound dropped"))


def test_idle_strangers_cannot_keep_a_configured_peer_out(
    caplog: pytest.LogCaptureFixture, loop_factory: LoopFactory
) -> None:
    """Strangers fill every general handshake slot (and one address's share) with idle
    sockets; a configured peer dialling from its own listening address still gets a
    reserved slot and a link."""

    async def main() -> None:
        small_port = free_port()
        async with running(
            LARGE,
            peers={SMALL.public_key: ("127.0.0.1", small_port)},
            allowed=None,
            max_handshaking=3,
            max_handshaking_per_ip=2,
            handshake_timeout=120,  # the idle sockets hold their slots all through the test
        ) as (lg, rec):
            idle = [await asyncio.open_connection(*lg.listen_address) for _ in range(6)]

            def busy() -> list[logging.LogRecord]:
                return [r for r in events(caplog, "inbound dropped") if r.reason == "busy"]

            # Two hold this address's share; the other four were dropped at once, and
            # logged as one line (one per second at most) that counts the rest.
            await wait_until(lambda: lg.inbound_dropped >= 4 and lg.handshaking == 2, what="drops")
            assert lg.inbound_dropped == 4
            assert 1 <= len(busy()) <= 4
            assert len(busy()) + sum(r.suppressed for r in busy()) <= 4
            async with running(
                SMALL, peers={LARGE.public_key: lg.listen_address}, port=small_port
            ) as (_, small_rec):
                await wait_until(lambda: rec.ups == [SMALL.public_key], timeout=30)
                await wait_until(lambda: small_rec.ups == [LARGE.public_key], timeout=30)
            for _, writer in idle:
                writer.close()

    with caplog.at_level(logging.INFO, logger="p2p.transport"):
        run(main(), loop_factory=loop_factory)


def test_dropped_connections_are_counted_and_logged_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood of refused connections costs one log line per period, naming how many
    drops it left unsaid; the counter has them all."""
    from p2p.transport import DROP_LOG_PERIOD_S, PeerTransport, TransportConfig

    t = PeerTransport(LARGE, TransportConfig("127.0.0.1", 0), {}, None, lambda key, data: None)
    with caplog.at_level(logging.INFO, logger="p2p.transport"):
        for i in range(1000):
            t._log_dropped(("203.0.113.9", 1000 + i), now=10.0 + i * 0.001)  # within 1 s
        t._log_dropped(("203.0.113.9", 1), now=10.0 + DROP_LOG_PERIOD_S)
    lines = events(caplog, "inbound dropped")
    assert t.inbound_dropped == 1001
    assert len(lines) == 2
    assert [r.suppressed for r in lines] == [0, 999]
