"""Who may hold a link: pinned keys on dial, the allowed set on accept, no relayed identity."""

from __future__ import annotations

import asyncio
import logging

import pytest

from p2p.identity import Identity
from p2p.testing import LoopFactory, raw_dial, read_until_closed, run, running, wait_until

SMALL, LARGE = sorted(
    (Identity.from_seed(bytes([i]) * 32) for i in (1, 2)), key=lambda i: i.public_key
)
MITM = Identity.from_seed(b"\x0d" * 32)
STRANGER = Identity.from_seed(b"\x0e" * 32)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_mitm_terminating_tls_with_its_own_key_is_refused_by_the_pin(
    caplog: pytest.LogCaptureFixture,
    loop_factory: LoopFactory,
) -> None:
    """SMALL's config says LARGE lives at an address where MITM actually listens. MITM
    completes a valid TLS handshake with its own key; the pin on LARGE's key refuses it."""

    async def main() -> None:
        async with running(MITM, allowed=None) as (mitm, _):
            peers = {LARGE.public_key: mitm.listen_address}
            async with running(SMALL, peers=peers) as (sm, sm_rec):
                await wait_until(
                    lambda: "expected" in str(sm.stats()[LARGE.peer_id]["last_error"]),
                    what="a refused dial",
                )
                await asyncio.sleep(0.1)  # it keeps retrying and keeps refusing
                assert sm.connected() == [] and sm_rec.ups == []
                assert sm.send(LARGE.public_key, b"secret") is False
                error = str(sm.stats()[LARGE.peer_id]["last_error"])
                assert f"presented key {MITM.short_id}, expected {LARGE.short_id}" in error

    with caplog.at_level(logging.WARNING, logger="p2p.transport"):
        run(main(), loop_factory=loop_factory)
    assert any("expected" in str(getattr(r, "reason", "")) for r in events(caplog, "dial failed"))


def test_inbound_key_not_allowed_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture, loop_factory: LoopFactory
) -> None:
    async def main() -> None:
        async with running(LARGE, allowed={SMALL.public_key}) as (lg, rec):
            reader, writer = await raw_dial(STRANGER, lg.listen_address, expected=LARGE.public_key)
            await read_until_closed(reader)
            writer.close()
            assert lg.connected() == [] and rec.ups == []
            assert STRANGER.peer_id not in lg.stats()

    with caplog.at_level(logging.WARNING, logger="p2p.transport"):
        run(main(), loop_factory=loop_factory)
    refused = events(caplog, "inbound refused")
    assert refused and f"{STRANGER.short_id} is not allowed" in str(
        getattr(refused[0], "reason", "")
    )


def test_open_mode_accepts_any_authenticated_key_and_reports_it(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with running(LARGE, allowed=None) as (lg, rec):
            _, writer = await raw_dial(STRANGER, lg.listen_address, expected=LARGE.public_key)
            await wait_until(lambda: rec.ups == [STRANGER.public_key])
            assert lg.connected() == [STRANGER.public_key]
            writer.close()
            await wait_until(lambda: rec.downs == [STRANGER.public_key])

    run(main(), loop_factory=loop_factory)


def test_a_relay_only_forwards_ciphertext_between_the_real_keys() -> None:
    """A relay in the middle that just forwards bytes gets an opaque pipe: the link is
    authenticated end to end to the real keys and the relay never sees plaintext. (A
    relay that changes a byte breaks the handshake: see test_p2p_tls.py.)"""

    async def main() -> None:
        captured = bytearray()
        async with running(LARGE, allowed={SMALL.public_key}) as (lg, lg_rec):

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        captured.extend(data)
                        dst.write(data)
                        await dst.drain()
                except OSError:
                    pass
                finally:
                    dst.close()

            async def relay(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                ur, uw = await asyncio.open_connection(*lg.listen_address)
                await asyncio.gather(pipe(r, uw), pipe(ur, w))

            server = await asyncio.start_server(relay, "127.0.0.1", 0)
            relay_addr = server.sockets[0].getsockname()[:2]
            try:
                async with running(SMALL, peers={LARGE.public_key: relay_addr}) as (sm, _):
                    await wait_until(lambda: lg_rec.ups == [SMALL.public_key])
                    assert sm.connected() == [LARGE.public_key]
                    assert sm.send(LARGE.public_key, b"plaintext-marker" * 4)
                    await wait_until(lambda: len(lg_rec.frames) == 1)
            finally:
                server.close()
        assert len(captured) > 1000 and b"plaintext-marker" not in captured

    run(main())


def test_a_connection_to_ourselves_is_refused(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with running(SMALL, allowed=None) as (sm, rec):
            reader, writer = await raw_dial(SMALL, sm.listen_address)
            await read_until_closed(reader)
            writer.close()
            assert rec.ups == []

    run(main(), loop_factory=loop_factory)


def test_a_newer_link_of_the_same_kind_replaces_the_older(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that restarted dials again while we still hold its old link. The old link
    is retired; its far end (a leftover) never drains it, so after ``retire_timeout`` it
    is reported lost (down, then up again for the live successor: resend on it)."""
    caplog.set_level(logging.INFO, logger="p2p.transport")

    async def main() -> None:
        async with running(SMALL, allowed=None, retire_timeout=0.5) as (sm, rec):
            r1, w1 = await raw_dial(STRANGER, sm.listen_address)
            await wait_until(lambda: rec.ups == [STRANGER.public_key])
            _, w2 = await raw_dial(STRANGER, sm.listen_address)
            await read_until_closed(r1)
            await wait_until(lambda: len(rec.ups) == 3)
            assert rec.downs == [STRANGER.public_key]
            assert sm.connected() == [STRANGER.public_key]
            # up, up (the replacement: no down), then the undrained old one: down, up
            said = [e for e in (getattr(r, "event", None) for r in caplog.records) if e]
            assert said.index("link retired") < said.index("retired link lost")
            w1.close()
            w2.close()

    run(main())


def test_an_inbound_duplicate_of_a_link_dialled_by_the_smaller_key_is_closed() -> None:
    """It is drained first (see test_p2p_transport_retire); this raw dialler never
    drains it, so it closes after ``retire_timeout``, and nothing is reported."""

    async def main() -> None:
        async with (
            running(LARGE, allowed={SMALL.public_key}) as (lg, lg_rec),
            running(SMALL, peers={LARGE.public_key: lg.listen_address}, retire_timeout=0.5) as (
                sm,
                rec,
            ),
        ):
            await wait_until(lambda: sm.connected() == [LARGE.public_key])
            # LARGE's key dials SMALL although SMALL's outbound link is the keeper
            reader, writer = await raw_dial(LARGE, sm.listen_address)
            await read_until_closed(reader)
            writer.close()
            assert rec.ups == [LARGE.public_key] and rec.downs == []
            assert sm.stats()[LARGE.peer_id]["direction"] == "outbound"
            assert lg_rec.downs == []

    run(main())
