"""The transport over real loopback sockets: data, back-pressure, reconnection, ports."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import ssl
import threading
import time
from typing import Any

import pytest

from p2p.errors import AddressInUseError, PeerNotConnected
from p2p.framing import FrameDecoder, FrameKind, encode_frame
from p2p.identity import Identity
from p2p.testing import (
    LoopFactory,
    free_port,
    loopback_config,
    raw_dial,
    read_until_closed,
    run,
    running,
    wait_until,
)
from p2p.tls import client_context
from p2p.transport import PeerTransport

SMALL, LARGE = sorted(
    (Identity.from_seed(bytes([i]) * 32) for i in (1, 2)), key=lambda i: i.public_key
)
OTHER = Identity.from_seed(b"\x03" * 32)


async def linked(a: PeerTransport, b: PeerTransport) -> None:
    await wait_until(lambda: b.identity.public_key in a.connected(), what="a linked to b")
    await wait_until(lambda: a.identity.public_key in b.connected(), what="b linked to a")


def test_frames_flow_both_ways_in_order(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with (
            running(LARGE, allowed={SMALL.public_key}) as (lg, lg_rec),
            running(SMALL, peers={LARGE.public_key: lg.listen_address}) as (sm, sm_rec),
        ):
            await linked(sm, lg)
            for i in range(100):
                assert sm.send(LARGE.public_key, b"s%d" % i)
                assert lg.send(SMALL.public_key, b"l%d" % i)
            await wait_until(lambda: len(lg_rec.frames) == 100 and len(sm_rec.frames) == 100)
            assert lg_rec.payloads(SMALL.public_key) == [b"s%d" % i for i in range(100)]
            assert sm_rec.payloads(LARGE.public_key) == [b"l%d" % i for i in range(100)]
            assert sm_rec.ups == [LARGE.public_key] and lg_rec.ups == [SMALL.public_key]
            st = sm.stats()[LARGE.peer_id]
            assert st["state"] == "connected" and st["direction"] == "outbound"
            assert st["frames_out"] == 100 and st["frames_in"] == 100
            assert lg.stats()[SMALL.peer_id]["direction"] == "inbound"

    run(main(), loop_factory=loop_factory)


def test_outgoing_connection_leaves_from_the_listening_port(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with (
            running(LARGE, allowed={SMALL.public_key}) as (lg, _),
            running(SMALL, peers={LARGE.public_key: lg.listen_address}) as (sm, _),
        ):
            await linked(sm, lg)
            listen_port = sm.listen_address[1]
            local = sm.stats()[LARGE.peer_id]["local_addr"]
            seen_by_peer = lg.stats()[SMALL.peer_id]["remote_addr"]
            assert isinstance(local, tuple) and local[1] == listen_port
            assert isinstance(seen_by_peer, tuple) and seen_by_peer[1] == listen_port

    run(main(), loop_factory=loop_factory)


def test_larger_key_waits_for_the_smaller_to_dial() -> None:
    async def main() -> None:
        async with running(SMALL, allowed={LARGE.public_key}) as (sm, sm_rec):
            lg_running = running(LARGE, peers={SMALL.public_key: sm.listen_address})
            async with lg_running as (lg, _):
                await asyncio.sleep(0.3)
                assert lg.connected() == [] and sm_rec.ups == []
                assert lg.stats()[SMALL.peer_id]["state"] == "disconnected"

    run(main())


def test_large_messages_arrive_intact(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        payloads = [os.urandom(8 * 1024 * 1024) for _ in range(3)] + [b"tail"]
        async with (
            running(LARGE, allowed={SMALL.public_key}) as (lg, lg_rec),
            running(SMALL, peers={LARGE.public_key: lg.listen_address}) as (sm, _),
        ):
            await linked(sm, lg)
            for p in payloads:
                await sm.send_wait(LARGE.public_key, p)
            await wait_until(lambda: len(lg_rec.frames) == len(payloads), timeout=10)
            got = lg_rec.payloads(SMALL.public_key)
            assert [hashlib.sha256(p).digest() for p in got] == [
                hashlib.sha256(p).digest() for p in payloads
            ]

    run(main(), loop_factory=loop_factory)


def test_payload_over_max_frame_is_a_caller_error() -> None:
    async def main() -> None:
        async with (
            running(LARGE, allowed={SMALL.public_key}, max_frame=1024) as (lg, _),
            running(SMALL, peers={LARGE.public_key: lg.listen_address}, max_frame=1024) as (sm, _),
        ):
            await linked(sm, lg)
            with pytest.raises(ValueError, match="exceeds max_frame 1024"):
                sm.send(LARGE.public_key, bytes(1025))

    run(main())


def test_send_to_a_peer_without_link() -> None:
    async def main() -> None:
        async with running(SMALL) as (sm, _):
            assert sm.send(LARGE.public_key, b"x") is False
            with pytest.raises(PeerNotConnected, match=LARGE.short_id):
                await sm.send_wait(LARGE.public_key, b"x")

    run(main())


def test_send_wait_blocks_while_the_peer_does_not_read_and_resumes(
    loop_factory: LoopFactory,
) -> None:
    async def main() -> None:
        chunk = os.urandom(256 * 1024)
        async with running(SMALL, allowed=None, send_queue_bytes=1024 * 1024) as (node, _):
            reader, writer = await raw_dial(OTHER, node.listen_address)
            await wait_until(lambda: OTHER.public_key in node.connected())
            sent = 0
            blocked: asyncio.Task[None] | None = None
            while sent < 400:  # the kernel buffers take a few MiB first
                task = asyncio.create_task(node.send_wait(OTHER.public_key, chunk))
                done, _ = await asyncio.wait({task}, timeout=0.3)
                if not done:
                    blocked = task
                    break
                sent += 1
            assert blocked is not None, "send_wait never blocked"
            queued = node.stats()[OTHER.peer_id]["queued_bytes"]
            assert isinstance(queued, int) and queued > 0
            decoder = FrameDecoder(max_frame=1 << 20)
            data: list[bytes] = []
            while len(data) < sent + 1:  # now read: the blocked send completes
                for kind, payload in decoder.feed(await reader.read(1 << 20)):
                    if kind == FrameKind.DATA:
                        data.append(payload)
            await asyncio.wait_for(blocked, 5)
            assert data == [chunk] * (sent + 1)
            assert OTHER.public_key in node.connected()
            writer.close()

    run(main(), loop_factory=loop_factory)


def test_send_over_the_queue_limit_returns_false_and_closes_the_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        chunk = bytes(256 * 1024)
        async with running(SMALL, allowed=None, send_queue_bytes=1024 * 1024) as (node, rec):
            reader, writer = await raw_dial(OTHER, node.listen_address)
            await wait_until(lambda: OTHER.public_key in node.connected())
            for _ in range(1000):
                if not node.send(OTHER.public_key, chunk):
                    break
                await asyncio.sleep(0.002)
            else:
                pytest.fail("send never reported a full queue")
            assert node.connected() == [] and rec.downs == [OTHER.public_key]
            assert node.send(OTHER.public_key, b"after") is False
            await read_until_closed(reader)
            writer.close()

    with caplog.at_level(logging.WARNING, logger="p2p.transport"):
        run(main())
    assert any(getattr(r, "event", "") == "send queue overflow" for r in caplog.records)


@pytest.mark.parametrize("restart", ["listener", "dialer"])
def test_reconnects_after_a_peer_restarts(restart: str, loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with running(LARGE, allowed={SMALL.public_key}) as (lg, lg_rec):
            lg_addr = lg.listen_address
            async with running(SMALL, peers={LARGE.public_key: lg_addr}) as (sm, sm_rec):
                await linked(sm, lg)
                sm_port = sm.listen_address[1]
                if restart == "listener":
                    await lg.close()
                    await wait_until(lambda: sm_rec.downs == [LARGE.public_key])
                    await wait_until(  # failed dials in backoff
                        lambda: sm.stats()[LARGE.peer_id]["state"] in ("backoff", "connecting"),
                        what="redialling",
                    )
                    async with running(LARGE, port=lg_addr[1], allowed={SMALL.public_key}) as (
                        lg2,
                        lg2_rec,
                    ):
                        await linked(sm, lg2)
                        assert sm_rec.ups == [LARGE.public_key] * 2
                        assert sm.send(LARGE.public_key, b"again")
                        assert lg2.send(SMALL.public_key, b"back")
                        await wait_until(lambda: lg2_rec.frames == [(SMALL.public_key, b"again")])
                        await wait_until(lambda: (LARGE.public_key, b"back") in sm_rec.frames)
                        assert sm.stats()[LARGE.peer_id]["reconnects"] == 1
                else:
                    await sm.close()
                    await wait_until(lambda: lg_rec.downs == [SMALL.public_key])
            if restart == "dialer":
                async with running(SMALL, port=sm_port, peers={LARGE.public_key: lg_addr}) as (
                    sm2,
                    _,
                ):
                    await linked(sm2, lg)
                    assert lg_rec.ups == [SMALL.public_key] * 2
                    assert sm2.send(LARGE.public_key, b"again")
                    await wait_until(lambda: (SMALL.public_key, b"again") in lg_rec.frames)
                    assert lg.stats()[SMALL.peer_id]["reconnects"] == 1

    run(main(), loop_factory=loop_factory)


def test_address_in_use_is_a_clear_error() -> None:
    async def main() -> None:
        async with running(SMALL) as (first, _):
            port = first.listen_address[1]
            with pytest.raises(AddressInUseError, match=f"127.0.0.1:{port} is already in use") as e:
                async with running(LARGE, port=port):
                    pass
            assert isinstance(e.value, OSError) and e.value.errno == 98

    run(main())


def test_rtt_is_measured_by_keepalive() -> None:
    async def main() -> None:
        fast: dict[str, Any] = {"keepalive_interval": 0.05, "keepalive_timeout": 1.0}
        async with (
            running(LARGE, allowed={SMALL.public_key}, **fast) as (lg, _),
            running(SMALL, peers={LARGE.public_key: lg.listen_address}, **fast) as (sm, _),
        ):
            await linked(sm, lg)
            await wait_until(lambda: sm.stats()[LARGE.peer_id]["rtt_ms"] is not None)
            rtt = sm.stats()[LARGE.peer_id]["rtt_ms"]
            assert isinstance(rtt, float) and 0 <= rtt < 1000

    run(main())


def test_a_failing_callback_is_logged_and_the_link_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        got: list[bytes] = []

        def on_frame(key: bytes, payload: bytes) -> None:
            if payload == b"boom":
                raise RuntimeError("consumer bug")
            got.append(payload)

        node = PeerTransport(LARGE, loopback_config(), {}, None, on_frame)
        await node.start()
        try:
            _, writer = await raw_dial(OTHER, node.listen_address)
            writer.write(
                encode_frame(FrameKind.DATA, b"boom") + encode_frame(FrameKind.DATA, b"ok")
            )
            await wait_until(lambda: got == [b"ok"])
            assert OTHER.public_key in node.connected()
            writer.close()
        finally:
            await node.close()

    with caplog.at_level(logging.ERROR, logger="p2p.transport"):
        run(main())
    assert any("on_frame callback failed" in r.getMessage() for r in caplog.records)


# -- a dialer that is faster than the listener's event loop ---------------------------------
#
# The daemon runs on uvloop. When a peer's daemon comes up (first start, or restart) our
# dial loop is already retrying: the TCP connection completes in the kernel's listen
# backlog and our ClientHello is sent before the peer's loop has even accepted it. The
# peer must still complete the handshake, on every loop.


def _send_client_hello(
    address: tuple[str, int], identity: Identity
) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """Connect and send a ClientHello synchronously (the caller's loop does not run)."""
    sock = socket.create_connection(address, timeout=2.0)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(identity).wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    sock.sendall(outgoing.read())
    sock.setblocking(False)
    return sock, tls, incoming, outgoing


async def _finish_handshake(
    sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out := outgoing.read():
                await loop.sock_sendall(sock, out)
            data = await loop.sock_recv(sock, 65536)
            assert data, "the server closed the connection during the handshake"
            incoming.write(data)
    await loop.sock_sendall(sock, outgoing.read())  # our Finished


def test_a_client_hello_that_arrives_before_the_accept_is_answered(
    loop_factory: LoopFactory,
) -> None:
    """Deterministic: the ClientHello is queued in the kernel before the loop accepts."""

    async def main() -> None:
        async with running(LARGE, allowed=None, handshake_timeout=120) as (lg, rec):
            sock, tls, incoming, outgoing = _send_client_hello(lg.listen_address, OTHER)
            try:
                # well under handshake_timeout: a lost ClientHello would stall until then
                async with asyncio.timeout(30):
                    await _finish_handshake(sock, tls, incoming, outgoing)
                    await wait_until(lambda: rec.ups == [OTHER.public_key])
            finally:
                sock.close()

    run(main(), loop_factory=loop_factory)


def test_a_peer_that_starts_listening_after_a_failed_dial_is_linked(
    loop_factory: LoopFactory,
) -> None:
    """The first dial is refused (the peer's daemon is not up). Then the peer listens but
    its loop is busy finishing its startup for a moment, on another thread, while our
    retried dial connects and sends its ClientHello. The first handshake must succeed:
    a stalled one would show as a "timed out" dial before a later retry links."""
    port = free_port()
    stop = threading.Event()

    def peer_daemon() -> list[bytes]:
        async def serve() -> list[bytes]:
            async with running(LARGE, port=port, allowed={SMALL.public_key}) as (lg, _):
                time.sleep(0.5)  # blocks this loop only: the dialer retries meanwhile
                while not stop.is_set():
                    await asyncio.sleep(0.01)
                await wait_until(lambda: SMALL.public_key in lg.connected())
                return lg.connected()

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(asyncio.wait_for(serve(), 20))

    async def main() -> None:
        async with running(SMALL, peers={LARGE.public_key: ("127.0.0.1", port)}) as (sm, rec):
            await wait_until(
                lambda: "ConnectionRefusedError" in str(sm.stats()[LARGE.peer_id]["last_error"]),
                what="a refused first dial",
            )
            peer = asyncio.ensure_future(asyncio.to_thread(peer_daemon))
            try:
                await wait_until(lambda: rec.ups == [LARGE.public_key], timeout=10)
            finally:
                stop.set()
            assert await peer == [SMALL.public_key]
            error = str(sm.stats()[LARGE.peer_id]["last_error"])
            assert "ConnectionRefusedError" in error, f"a handshake failed: {error}"

    run(main(), loop_factory=loop_factory)
