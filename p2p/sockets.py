"""Sockets for a node that dials *from* its listening port.

NAT traversal (TCP hole punching by simultaneous open) needs every outgoing connection to
leave from the same address and port that the node listens on, so that the NAT keeps
one mapping for the node. On Linux that takes SO_REUSEADDR and SO_REUSEPORT on the
listener and on every dialling socket. SO_REUSEPORT would also let a second process of
the same user listen on the same port silently (the kernel then splits connections
between them), so ``bind_listener`` first probes the port without SO_REUSEPORT to turn
that mistake into a clear "address in use" error.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from p2p.errors import AddressInUseError

# bind/connect errors that mean "this 4-tuple or port is taken right now", e.g. the last
# connection to the same peer from our listening port is still in TIME_WAIT.
_TUPLE_BUSY = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


def _set_reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def bind_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A non-blocking listening socket on ``(host, port)`` with address and port reuse.

    Raises ``AddressInUseError`` if another socket listens there (even with SO_REUSEPORT).
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    if port != 0:
        probe = socket.socket(family, kind, proto)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUseError(host, port) from exc
            raise
        finally:
            probe.close()
    sock = socket.socket(family, kind, proto)
    try:
        _set_reuse(sock)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUseError(host, port) from exc
        raise
    return sock


async def connect_from(
    local: tuple[str, int], remote: tuple[str, int], family: int
) -> tuple[socket.socket, bool]:
    """A TCP connection to ``remote`` whose source is ``local`` (our listening address).

    Returns the connected socket and whether it really left from ``local``: if that exact
    connection is still in TIME_WAIT (we closed the previous link to this peer ourselves)
    the kernel refuses it, and we fall back to an ephemeral source port rather than stall.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(remote[0], remote[1], family=family, type=socket.SOCK_STREAM)
    target = infos[0][4]
    for from_listen_port in (True, False):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if from_listen_port:
                _set_reuse(sock)
                sock.bind(local)
            await loop.sock_connect(sock, target)
        except OSError as exc:
            sock.close()
            if from_listen_port and exc.errno in _TUPLE_BUSY:
                continue
            raise
        except BaseException:
            sock.close()
            raise
        return sock, from_listen_port
    raise AssertionError("unreachable")
