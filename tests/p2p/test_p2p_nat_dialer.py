"""The punch dialer and the dial-back on loopback: simultaneous open, roles, pins, deadlines.

On loopback a SYN is answered at once, so two plain listeners never see a simultaneous
open: the first SYN lands on the other's listener. A listener whose accept queue is full
(``listen(0)`` plus one connection nobody accepts) drops SYNs silently instead, as a NAT
without a mapping does; the test "listening" sockets below are such listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections.abc import Iterator

import pytest

from p2p.errors import PeerAuthError
from p2p.framing import FrameDecoder
from p2p.identity import Identity
from p2p.nat import Expect, TlsRole
from p2p.nat.messages import NAT_CHANNEL_KIND, DialBack, decode
from p2p.nat.punch import tls_role
from p2p.nat_dialer import (
    ExpectMatch,
    ExpectTable,
    PunchTimeout,
    TupleBusyError,
    dial_back,
    punch_dial,
    punched_tls,
)
from p2p.sockets import bind_listener, connect_from
from p2p.testing import LoopFactory, read_until_closed, run
from p2p.tls import client_context, peer_public_key, server_context

SMALL, LARGE = sorted(
    (Identity.from_seed(bytes([i]) * 32) for i in (1, 2)), key=lambda i: i.public_key
)
OTHER = Identity.from_seed(b"\x03" * 32)
CTX = {i.public_key: (client_context(i), server_context(i)) for i in (SMALL, LARGE, OTHER)}
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.contextmanager
def deaf_listener() -> Iterator[tuple[str, int]]:
    """A listening port whose full accept queue drops every SYN, like a NAT with no
    mapping yet: a connect to it stays pending, and a connect *from* it can meet one."""
    listener = bind_listener("127.0.0.1", 0, backlog=0)
    address: tuple[str, int] = listener.getsockname()[:2]
    filler = socket.create_connection(address)
    try:
        yield address
    finally:
        filler.close()
        listener.close()


async def punch(me: Identity, peer: Identity, bound: tuple[str, int], addr: tuple[str, int],
                deadline: float) -> Streams:  # fmt: skip
    client_ctx, server_ctx = CTX[me.public_key]
    role = tls_role(me.public_key, peer.public_key)
    return await punch_dial(
        bound, addr, socket.AF_INET, role, client_ctx, server_ctx, peer.public_key, deadline
    )


async def assert_linked(a: tuple[Identity, Streams], b: tuple[Identity, Streams]) -> None:
    """Each side authenticated the other, TLS roles follow the keys, bytes flow both ways."""
    for (me, (_, writer)), (peer, (reader, _)) in ((a, b), (b, a)):
        ssl_object = writer.get_extra_info("ssl_object")
        assert peer_public_key(ssl_object) == peer.public_key
        assert ssl_object.server_side == (tls_role(me.public_key, peer.public_key) == "server")
        writer.write(b"hi from " + me.peer_id.encode() + b"\n")
        assert await reader.readline() == b"hi from " + me.peer_id.encode() + b"\n"
    for _, (_, writer) in (a, b):
        writer.close()


def test_simultaneous_open_gives_both_sides_a_pinned_tls_link(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        with deaf_listener() as at_small, deaf_listener() as at_large:
            deadline = asyncio.get_running_loop().time() + 5
            small, large = await asyncio.gather(
                punch(SMALL, LARGE, at_small, at_large, deadline),
                punch(LARGE, SMALL, at_large, at_small, deadline),
            )
            # one TCP connection between the two listening ports, made by two connects
            assert small[1].get_extra_info("sockname")[:2] == at_small
            assert small[1].get_extra_info("peername")[:2] == at_large
            await assert_linked((SMALL, small), (LARGE, large))

    run(main(), loop_factory=loop_factory)


async def accept_punched(
    listener: socket.socket,
    table: ExpectTable,
    me: Identity,
    deadline: float,
    accepted: asyncio.Event | None = None,
) -> Streams:
    """The shell's accept path: an accepted punch connection gets the role of its Expect.
    ``accepted`` is set once the connection is out of the accept queue (its 4-tuple taken)."""
    loop = asyncio.get_running_loop()
    conn, addr = await loop.sock_accept(listener)
    if accepted is not None:
        accepted.set()
    match = table.match(addr, loop.time())
    assert match is not None, f"{addr} is not expected"
    client_ctx, server_ctx = CTX[me.public_key]
    reader, writer, _ = await punched_tls(conn, match.role, client_ctx, server_ctx,
                                          match.peers, deadline)  # fmt: skip
    return reader, writer


@pytest.mark.parametrize("first", ["small", "large"])
def test_a_syn_that_lands_on_the_listener_is_routed_by_the_expect_table(
    loop_factory: LoopFactory, first: str
) -> None:
    """With live listeners the first SYN is accepted: the dialer connects, the other side's
    connect finds its 4-tuple taken, and its accept path runs TLS with the punch role."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listeners = {i: bind_listener("127.0.0.1", 0) for i in (SMALL, LARGE)}
        try:
            addrs = {i: s.getsockname()[:2] for i, s in listeners.items()}
            dialer, acceptor = (SMALL, LARGE) if first == "small" else (LARGE, SMALL)
            deadline = loop.time() + 5
            table = ExpectTable()
            role = tls_role(acceptor.public_key, dialer.public_key)
            table.add(Expect(dialer.public_key, (addrs[dialer],), role, deadline), loop.time())
            accepted = asyncio.Event()
            accepting = asyncio.create_task(
                accept_punched(listeners[acceptor], table, acceptor, deadline, accepted)
            )
            dialled = asyncio.create_task(
                punch(dialer, acceptor, addrs[dialer], addrs[acceptor], deadline)
            )
            await accepted.wait()  # the dialer's SYN was accepted first: its 4-tuple is taken
            with pytest.raises(TupleBusyError) as busy:
                await punch(acceptor, dialer, addrs[acceptor], addrs[dialer], deadline)
            assert busy.value.errno == errno.EADDRNOTAVAIL
            await assert_linked((dialer, await dialled), (acceptor, await accepting))
        finally:
            for listener in listeners.values():
                listener.close()

    run(main(), loop_factory=loop_factory)


@pytest.mark.parametrize("impostor_role", ["client", "server"])
def test_a_peer_with_another_key_is_refused(
    loop_factory: LoopFactory, impostor_role: TlsRole
) -> None:
    """OTHER answers where LARGE was expected, in either TLS role: the pin refuses it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        listener = bind_listener("127.0.0.1", 0)
        me = bind_listener("127.0.0.1", 0)
        try:
            client_ctx, server_ctx = CTX[OTHER.public_key]

            async def impostor() -> None:
                conn, _ = await loop.sock_accept(listener)
                with contextlib.suppress(OSError, ssl.SSLError, PeerAuthError):
                    reader, writer, _ = await punched_tls(
                        conn, impostor_role, client_ctx, server_ctx, {SMALL.public_key}, deadline
                    )
                    # hold the link until the dialer, having checked the pin, drops it
                    await read_until_closed(reader, timeout=30)
                    writer.close()

            task = asyncio.create_task(impostor())
            own_client, own_server = CTX[SMALL.public_key]
            our_role: TlsRole = "server" if impostor_role == "client" else "client"
            with pytest.raises(PeerAuthError, match=r"is not allowed"):
                await punch_dial(me.getsockname()[:2], listener.getsockname()[:2],
                                 socket.AF_INET, our_role, own_client, own_server,
                                 LARGE.public_key, deadline)  # fmt: skip
            await task
        finally:
            listener.close()
            me.close()

    run(main(), loop_factory=loop_factory)


@pytest.mark.parametrize("peer", ["silent", "closed port"])
def test_the_deadline_ends_a_punch_the_peer_never_answers(
    loop_factory: LoopFactory, peer: str
) -> None:
    """A dropped SYN stays pending (one connect); a refused one is retried; both end in
    ``PunchTimeout`` at the deadline, with the socket closed."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        me = bind_listener("127.0.0.1", 0)
        bound = me.getsockname()[:2]
        try:
            with deaf_listener() as silent:
                target = silent
                if peer == "closed port":
                    with socket.socket() as probe:
                        probe.bind(("127.0.0.1", 0))
                        target = probe.getsockname()[:2]
                start = loop.time()
                with pytest.raises(PunchTimeout) as info:
                    await punch(SMALL, LARGE, bound, target, start + 0.6)
                elapsed = loop.time() - start
            # Never before the deadline (uvloop's clock has 1 ms steps). No upper bound on
            # a busy machine's lateness: that the deadline, not the kernel, ended the punch
            # is in the message (the kernel gives up on a silent peer after ~2 min, and
            # never on a refusing one), and ``run`` bounds a hang.
            assert elapsed >= 0.59, elapsed
            text = str(info.value)
            assert "deadline passed" in text and f"127.0.0.1:{target[1]}" in text
            if peer == "silent":
                assert "after 1 connect(s), no answer" in text
            else:
                assert "ECONNREFUSED" in text and "after 1 connect" not in text
            # nothing was left bound to the 4-tuple: a new connect from it works at once
            with socket.create_server(("127.0.0.1", 0)) as server:
                sock, from_listen_port = await connect_from(
                    bound, server.getsockname()[:2], socket.AF_INET
                )
                sock.close()
                assert from_listen_port
        finally:
            me.close()

    run(main(), loop_factory=loop_factory)


def test_dial_back_delivers_its_nonce_from_an_ephemeral_port(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        got: asyncio.Future[tuple[bytes, int, list[tuple[int, bytes]]]] = asyncio.Future()

        async def requester(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            decoder = FrameDecoder(1024, kinds={NAT_CHANNEL_KIND})
            frames: list[tuple[int, bytes]] = []
            while data := await reader.read(4096):
                frames += decoder.feed(data)
            key = peer_public_key(writer.get_extra_info("ssl_object"))
            got.set_result((key, writer.get_extra_info("peername")[1], frames))
            writer.close()

        server = await asyncio.start_server(requester, "127.0.0.1", 0, ssl=server_context(SMALL))
        async with server:
            addr = server.sockets[0].getsockname()[:2]
            client_ctx = client_context(LARGE)
            assert await dial_back(addr, 2**64 - 1, client_ctx, SMALL.public_key, 3.0)
            key, port, frames = await asyncio.wait_for(got, 3)
            assert key == LARGE.public_key and port != addr[1]
            assert [(k, decode(p)) for k, p in frames] == [(NAT_CHANNEL_KIND, DialBack(2**64 - 1))]
            # the requester is not who we think: no frame, False
            assert not await dial_back(addr, 7, client_ctx, OTHER.public_key, 3.0)

    run(main(), loop_factory=loop_factory)


def test_a_dial_back_the_requester_aborts_after_reading_still_succeeded(
    loop_factory: LoopFactory,
) -> None:
    """The node's requester reads the DialBack and aborts the connection (no TLS close).
    Once the frame is written the dial-back has happened; how the close goes must not
    turn it into a failure (it used to be inside the success criterion)."""

    async def main() -> None:
        read: asyncio.Event = asyncio.Event()

        async def requester(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            decoder = FrameDecoder(1024, kinds={NAT_CHANNEL_KIND})
            while not decoder.feed(await reader.read(4096)):
                pass
            writer.transport.abort()  # what NatService._read_dial_back does
            read.set()

        server = await asyncio.start_server(requester, "127.0.0.1", 0, ssl=server_context(SMALL))
        async with server:
            addr = server.sockets[0].getsockname()[:2]
            for nonce in range(20):
                read.clear()
                assert await dial_back(addr, nonce, client_context(LARGE), SMALL.public_key, 3.0)
                await asyncio.wait_for(read.wait(), 3)

    run(main(), loop_factory=loop_factory)


def test_dial_back_to_nobody_is_false_within_the_timeout(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client_ctx = client_context(LARGE)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            assert not await dial_back(closed.getsockname()[:2], 1, client_ctx,
                                       SMALL.public_key, 1.0)  # fmt: skip
        with deaf_listener() as silent:
            start = loop.time()
            assert not await dial_back(silent, 1, client_ctx, SMALL.public_key, 0.3)
            # The timeout ended it: without one the connect stays pending through the
            # kernel's SYN retries (~2 min). The bound only has to tell those apart.
            assert 0.29 <= loop.time() - start < 10

    run(main(), loop_factory=loop_factory)


# -- ExpectTable ---------------------------------------------------------------------------

A, B, C = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_expect_table_matches_port_first_then_ip() -> None:
    table = ExpectTable()
    table.add(Expect(A, (("1.2.3.4", 9000), ("10.0.0.2", 9000)), "client", 10.0), 0.0)
    table.add(Expect(B, (("1.2.3.4", 9001),), "server", 10.0), 0.0)
    assert table.match(("1.2.3.4", 9000), 1.0) == ExpectMatch("client", frozenset({A}))
    assert table.match(("1.2.3.4", 9001), 1.0) == ExpectMatch("server", frozenset({B}))
    assert table.match(("10.0.0.2", 5555), 1.0) == ExpectMatch("client", frozenset({A}))
    # same IP, unknown port, the two peers disagree on the role: not ours to guess
    assert table.match(("1.2.3.4", 5555), 1.0) is None
    assert table.match(("9.9.9.9", 9000), 1.0) is None
    table.add(Expect(C, (("1.2.3.4", 9002),), "client", 10.0), 0.0)
    table.remove(B)
    assert table.match(("1.2.3.4", 5555), 1.0) == ExpectMatch("client", frozenset({A, C}))


def test_expect_table_expires_replaces_and_stays_bounded() -> None:
    table = ExpectTable(max_addrs=3)
    table.add(Expect(A, (("1.2.3.4", 1),), "client", 5.0), 0.0)
    assert table.match(("::ffff:1.2.3.4", 1), 4.9) == ExpectMatch("client", frozenset({A}))
    assert table.match(("1.2.3.4", 1), 5.0) is None
    table.add(Expect(A, (("1.2.3.4", 2),), "server", 9.0), 1.0)  # a new attempt replaces
    assert table.match(("1.2.3.4", 1), 2.0) == ExpectMatch("server", frozenset({A}))
    assert len(table) == 1
    table.add(Expect(B, (("5.6.7.8", 1), ("5.6.7.8", 2), ("5.6.7.8", 3)), "client", 20.0), 2.0)
    assert len(table) == 3 and table.match(("1.2.3.4", 2), 2.0) is None  # oldest dropped
    table.expire(20.0)
    assert len(table) == 0
