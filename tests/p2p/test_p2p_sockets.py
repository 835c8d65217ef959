"""Listening and dialling from one port (SO_REUSEADDR + SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from p2p.errors import AddressInUseError
from p2p.sockets import bind_listener, connect_from


def test_second_listener_on_a_port_is_refused_despite_reuseport() -> None:
    first = bind_listener("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(AddressInUseError) as info:
            bind_listener("127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{port}" in str(info.value)
    finally:
        first.close()


def test_dials_leave_from_the_listening_port_to_several_peers() -> None:
    async def main() -> None:
        me = bind_listener("127.0.0.1", 0)
        peers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
        try:
            local = me.getsockname()[:2]
            for peer in peers:
                sock, from_listen_port = await connect_from(
                    local, peer.getsockname()[:2], socket.AF_INET
                )
                assert from_listen_port and sock.getsockname()[1] == local[1]
                sock.close()
        finally:
            me.close()
            for peer in peers:
                peer.close()

    asyncio.run(main())


def test_a_busy_four_tuple_falls_back_to_an_ephemeral_port() -> None:
    """The same (local, remote) pair is still in use (or in TIME_WAIT): dial anyway."""

    async def main() -> None:
        me = bind_listener("127.0.0.1", 0)
        peer = socket.create_server(("127.0.0.1", 0))
        try:
            local, remote = me.getsockname()[:2], peer.getsockname()[:2]
            first, ok = await connect_from(local, remote, socket.AF_INET)
            assert ok
            second, from_listen_port = await connect_from(local, remote, socket.AF_INET)
            assert not from_listen_port and second.getsockname()[1] != local[1]
            first.close()
            second.close()
        finally:
            me.close()
            peer.close()

    asyncio.run(main())


def test_connection_refused_is_raised() -> None:
    async def main() -> None:
        me = bind_listener("127.0.0.1", 0)
        closed = socket.create_server(("127.0.0.1", 0))
        remote = closed.getsockname()[:2]
        closed.close()
        try:
            with pytest.raises(ConnectionRefusedError):
                await connect_from(me.getsockname()[:2], remote, socket.AF_INET)
        finally:
            me.close()

    asyncio.run(main())
