"""Closing one link from two places at once (a retired link's drain watch and the
transport's shutdown) ends cleanly: neither caller sees a CancelledError it never
asked for, which once aborted a node's whole shutdown on a loaded CI run."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct

from p2p.identity import Identity
from p2p.link import Link, PeerStats
from p2p.testing import LoopFactory, loopback_config, run
from p2p.tls import client_context, server_context
from p2p.transport import _tls_accept

A = Identity.from_seed(b"\x21" * 32)
B = Identity.from_seed(b"\x22" * 32)


async def _deaf_peer_link(*, tcp: bool = False) -> tuple[Link, asyncio.StreamWriter]:
    """A started link to a peer that never reads again: our TLS close_notify is never
    answered, so waiting for the close takes as long as the caller's timeout. Over
    ``tcp`` the peer can reset the connection (a socket pair cannot)."""
    if tcp:
        with socket.create_server(("127.0.0.1", 0)) as server:
            left = socket.create_connection(server.getsockname())
            right, _ = server.accept()
        left.setblocking(False)
        right.setblocking(False)
    else:
        left, right = socket.socketpair()
    accept = asyncio.ensure_future(_tls_accept(right, server_context(B), 5.0))
    reader, writer = await asyncio.open_connection(
        sock=left, ssl=client_context(A), server_hostname=""
    )
    _, peer_writer = await accept
    peer_writer.transport.pause_reading()
    closed: list[str] = []
    link = Link(
        key=B.public_key,
        direction="outbound",
        reader=reader,
        writer=writer,
        config=loopback_config(),
        stats=PeerStats(),
        on_frame=lambda _k, _p: None,
        on_closed=lambda _l, reason, _e: closed.append(reason),
        logger=logging.getLogger("test"),
    )
    link.start()
    return link, peer_writer


def test_two_concurrent_shutdowns_of_one_link_both_return(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        link, peer_writer = await _deaf_peer_link()
        try:
            # The short one times out first; the long one must not inherit its cancel.
            results = await asyncio.gather(
                link.shutdown(0.2), link.shutdown(2.0), return_exceptions=True
            )
            assert results == [None, None]
            assert link.is_closed and link.close_reason == "transport shut down"
            await link.wait_tasks()
        finally:
            peer_writer.transport.abort()

    run(main(), timeout=10, loop_factory=loop_factory)


def test_a_shutdown_whose_caller_is_cancelled_leaves_the_other_waiting(
    loop_factory: LoopFactory,
) -> None:
    async def main() -> None:
        link, peer_writer = await _deaf_peer_link()
        try:
            first = asyncio.create_task(link.shutdown(5.0))
            second = asyncio.create_task(link.shutdown(0.5))
            await asyncio.sleep(0.1)  # both wait for the peer's close_notify
            first.cancel()
            assert await second is None  # ran to its own timeout, not cancelled
            assert link.is_closed
        finally:
            peer_writer.transport.abort()

    run(main(), timeout=10, loop_factory=loop_factory)


def test_a_close_that_fails_after_its_waiter_gave_up_is_not_reported_unretrieved(
    loop_factory: LoopFactory,
) -> None:
    """The waiter times out, then the peer resets the connection: the close's failure is
    expected and must not surface as asyncio's "Task exception was never retrieved" (an
    ERROR log seen on a loaded run, when a whole mesh shut down at once)."""

    async def main() -> None:
        reported: list[str] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, ctx: reported.append(str(ctx.get("message")))
        )
        link, peer_writer = await _deaf_peer_link(tcp=True)
        closed = link._writer.transport.is_closing
        await link._close_tls(0.1)  # times out: the peer never answers close_notify
        peer_socket = peer_writer.get_extra_info("socket")
        peer_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer_writer.transport.abort()  # linger 0: an RST, which our read gets as a reset
        for _ in range(500):  # hang limit only: until the reset is read
            await asyncio.sleep(0.01)
            if reported or (link._closing is not None and link._closing.done()):
                break
        assert closed()
        assert link._closing is not None and link._closing.done()
        assert isinstance(link._closing.exception(), ConnectionResetError)  # it happened
        link.close("test over", error=False)
        await link.wait_tasks()
        for _ in range(3):
            gc.collect()  # a task dropped with an unretrieved exception reports it here
            await asyncio.sleep(0.01)
        assert reported == []

    run(main(), timeout=10, loop_factory=loop_factory)
