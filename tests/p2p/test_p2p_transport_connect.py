"""On-demand links: connect, max_links, idle pruning, protect, late channels, listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import pytest

from p2p.errors import PeerNotConnected
from p2p.framing import FrameKind
from p2p.identity import Identity
from p2p.testing import LoopFactory, loopback_config, run, running, wait_until
from p2p.transport import PeerTransport

IDS = sorted(
    (Identity.from_seed(bytes([40 + i]) * 32) for i in range(6)), key=lambda i: i.public_key
)
A, B, C, D, E, F = IDS


def test_connect_links_on_demand_once_and_joins_a_dial_in_flight(
    loop_factory: LoopFactory,
) -> None:
    async def main() -> None:
        async with running(B) as (b, b_rec), running(A) as (a, _):
            assert not a.has_link(B.public_key)
            await asyncio.gather(
                *(a.connect(B.public_key, b.listen_address, timeout=3) for _ in range(5))
            )
            assert a.has_link(B.public_key)
            await wait_until(lambda: b.has_link(A.public_key), what="inbound side up")
            await a.connect(B.public_key, ("127.0.0.1", 1), timeout=3)  # live: no dial at all
            assert b_rec.ups == [A.public_key]  # one link, not five
            assert a.stats()[B.public_key.hex()]["reconnects"] == 0

    run(main(), loop_factory=loop_factory)


def test_connect_failures_raise_with_the_reason(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with running(B) as (b, _), running(A) as (a, _):
            with pytest.raises(PeerNotConnected, match="failed: PeerAuthError"):
                await a.connect(C.public_key, b.listen_address, timeout=3)  # B answers
            with pytest.raises(PeerNotConnected, match="ourselves"):
                await a.connect(A.public_key, b.listen_address)
            with socket.socket() as closed:
                closed.bind(("127.0.0.1", 0))
                port = closed.getsockname()[1]
            with pytest.raises(PeerNotConnected, match="ConnectionRefused"):
                await a.connect(B.public_key, ("127.0.0.1", port), timeout=3)
            assert not a.has_link(B.public_key) and not a.has_link(C.public_key)
        async with running(A, allowed={C.public_key}) as (a, _):
            with pytest.raises(PeerNotConnected, match="not allowed"):
                await a.connect(B.public_key, ("127.0.0.1", 1))
        with pytest.raises(PeerNotConnected, match="not running"):
            await a.connect(B.public_key, ("127.0.0.1", 1))

    run(main(), loop_factory=loop_factory)


def test_connect_times_out_against_a_silent_listener(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        with socket.socket() as silent:  # completes TCP in the kernel, never speaks TLS
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            async with running(A) as (a, _):
                with pytest.raises(TimeoutError):
                    await a.connect(B.public_key, silent.getsockname(), timeout=0.2)
                assert not a.has_link(B.public_key)

    run(main(), loop_factory=loop_factory)


def test_max_links_refuses_inbound_and_outbound(
    loop_factory: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2p.transport")

    async def main() -> None:
        async with (
            running(B, max_links=1) as (b, _),
            running(A) as (a, _),
            running(C) as (c, _),
            running(D) as (d, _),
        ):
            await a.connect(B.public_key, b.listen_address, timeout=3)
            await wait_until(lambda: b.has_link(A.public_key), what="first link")
            with pytest.raises(PeerNotConnected, match="too many links"):
                await b.connect(D.public_key, d.listen_address, timeout=3)
            with contextlib.suppress(PeerNotConnected):  # TLS client may finish first
                await c.connect(B.public_key, b.listen_address, timeout=3)
            await wait_until(lambda: "too many links" in caplog.text, what="refusal logged")
            await wait_until(lambda: not c.has_link(B.public_key), what="refused link gone")
            assert b.connected() == [A.public_key]

    run(main(), loop_factory=loop_factory)


def test_idle_on_demand_links_close_unless_configured_protected_or_busy(
    loop_factory: LoopFactory,
) -> None:
    async def main() -> None:
        async with (
            running(B) as (b, _),
            running(C) as (c, _),
            running(E) as (e, _),
            running(F) as (f, _),
        ):
            configured = {F.public_key: f.listen_address}
            async with running(A, peers=configured, idle_timeout=0.3) as (a, _):
                # protected from the start: a slow setup must not let them idle out early
                a.protect(C.public_key)
                a.protect(E.public_key)
                for peer, t in ((B, b), (C, c), (E, e)):
                    await a.connect(peer.public_key, t.listen_address, timeout=30)
                await wait_until(lambda: a.has_link(F.public_key), what="configured link")
                stop = asyncio.Event()

                async def chatter() -> None:
                    """A frame between any two idle checks, however slow the machine."""
                    while not stop.is_set():
                        a.send(E.public_key, b"still here")
                        seen = a.idle_checks
                        await wait_until(lambda n=seen: a.idle_checks > n or stop.is_set())

                talker = asyncio.create_task(chatter())
                a.unprotect(E.public_key)  # from now on only its traffic keeps it
                loop = asyncio.get_running_loop()
                quiet_enough = loop.time() + 2 * 0.3  # E would be closed by now if quiet
                await wait_until(lambda: not a.has_link(B.public_key), what="idle link closed")
                await wait_until(lambda: loop.time() >= quiet_enough, timeout=30)
                checks = a.idle_checks
                await wait_until(lambda: a.idle_checks > checks, what="a later idle check")
                assert a.has_link(C.public_key), "protected"
                assert a.has_link(E.public_key), "busy"
                assert a.has_link(F.public_key), "configured"
                stop.set()
                await talker
                a.unprotect(C.public_key)
                await wait_until(lambda: not a.has_link(C.public_key), what="unprotected closes")
                await wait_until(lambda: not a.has_link(E.public_key), what="quiet closes")
                assert a.has_link(F.public_key)

    run(main(), loop_factory=loop_factory)


def test_channel_registered_after_start_and_listeners(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        got: list[tuple[bytes, bytes]] = []
        ups: list[bytes] = []
        downs: list[bytes] = []
        async with running(B) as (b, _), running(A) as (a, _):
            b.subscribe(on_connected=ups.append)
            b.subscribe(on_disconnected=downs.append)
            await a.connect(B.public_key, b.listen_address, timeout=3)
            await wait_until(lambda: ups == [A.public_key], what="listener saw the link")
            b.register_channel(FrameKind.CONTENT, lambda k, p: got.append((k, p)))
            a.register_channel(FrameKind.CONTENT, lambda _k, _p: None)
            with pytest.raises(ValueError, match="already has a channel"):
                a.register_channel(FrameKind.CONTENT, lambda _k, _p: None)
            with pytest.raises(ValueError, match="cannot be an application channel"):
                a.register_channel(FrameKind.PING, lambda _k, _p: None)
            assert a.try_send(B.public_key, b"late channel", FrameKind.CONTENT)
            await wait_until(lambda: bool(got), what="frame on the late channel")
            assert got == [(A.public_key, b"late channel")]
            assert b.has_link(A.public_key)
            await a.close()
            await wait_until(lambda: downs == [A.public_key], what="listener saw it go")
            assert not a.try_send(B.public_key, b"x", FrameKind.CONTENT)

    run(main(), loop_factory=loop_factory)


def test_connect_waits_for_a_link_dialled_elsewhere(loop_factory: LoopFactory) -> None:
    """A deferred key is never dialled by ``connect``: it waits for the link made by the
    owner of that dial (here the peer dials us), or fails after the timeout."""

    async def main() -> None:
        a_id, b_id = Identity.generate(), Identity.generate()
        got: list[bytes] = []
        a = PeerTransport(a_id, loopback_config(), {}, None, lambda _k, _p: None)
        await a.start()
        b = PeerTransport(b_id, loopback_config(), {}, None, lambda k, p: got.append(p))
        await b.start()
        try:
            a.defer_dial(b_id.public_key)
            with pytest.raises(PeerNotConnected, match="dialled elsewhere"):
                await a.connect(b_id.public_key, b.listen_address, timeout=0.3)
            assert not a.has_link(b_id.public_key)  # no dial was made
            waiting = asyncio.create_task(a.connect(b_id.public_key, b.listen_address, timeout=5))
            await b.connect(a_id.public_key, a.listen_address, timeout=5)  # the other side
            await waiting
            assert a.has_link(b_id.public_key)
        finally:
            await a.close()
            await b.close()

    run(main(), 20, loop_factory=loop_factory)
