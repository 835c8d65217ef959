"""One side of a hole punch with the node's own dialer (``p2p.nat_dialer``), in a namespace.

``python punch_peer.py --me N --peer M --port P --rendezvous IP:PORT [--loop uvloop]``:

1. listen on ``P`` (``bind_listener``), connect from ``P`` to the rendezvous echo server
   (``probe.py echo-server``) and print ``{"observed": "ip:port"}``; that connection
   stays open so the NAT mapping lives;
2. read ``{"peer": "ip:port", "start": unix_time, "timeout": s, "reissue": s|null}``;
3. at ``start`` do what the shell does for ``Dial`` + ``Expect``: ``punch_dial`` from P
   to the peer, and the accept path routed by an ``ExpectTable``; the first
   authenticated link wins (a ``TupleBusyError`` from the dial leaves the accept path);
   ``reissue`` instead re-issues the connect every ``reissue`` s (for comparison);
4. exchange one line each way over TLS; print ``{"ok": ..., "via": ..., "seconds": ...}``.

Identities are ``Identity.from_seed(bytes([N]) * 32)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2p.identity import Identity
from p2p.nat import Expect
from p2p.nat.punch import tls_role
from p2p.nat_dialer import ExpectTable, PunchTimeout, TupleBusyError, punch_dial, punched_tls
from p2p.sockets import bind_listener, connect_from
from p2p.tls import client_context, peer_public_key, server_context

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    me, peer = (Identity.from_seed(bytes([n]) * 32) for n in (args.me, args.peer))
    client_ctx, server_ctx = client_context(me), server_context(me)
    role = tls_role(me.public_key, peer.public_key)
    listener = bind_listener("0.0.0.0", args.port)
    bound = ("0.0.0.0", args.port)
    rendezvous, _ = await connect_from(bound, endpoint(args.rendezvous), socket.AF_INET)
    rendezvous.setblocking(True)
    rendezvous.settimeout(5)
    observed = rendezvous.recv(256).decode().strip()
    emit(observed=observed)
    order = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    addr, timeout, reissue = endpoint(order["peer"]), order["timeout"], order.get("reissue")
    await asyncio.sleep(max(0.0, order["start"] - time.time()))
    start = loop.time()
    deadline = start + timeout
    table = ExpectTable()
    table.add(Expect(peer.public_key, (addr,), role, deadline), start)
    dial_error = ""
    dial_seconds = 0.0

    async def accept() -> Streams:
        while True:
            conn, remote = await loop.sock_accept(listener)
            match = table.match(remote, loop.time())
            if match is None:
                conn.close()
                continue
            reader, writer, _ = await punched_tls(
                conn, match.role, client_ctx, server_ctx, match.peers, deadline
            )
            return reader, writer

    def _connected(sock: socket.socket) -> bool:
        """Whether the kernel completed the connect, whatever the coroutine saw."""
        try:
            sock.getpeername()
        except OSError:
            return False
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0

    async def reissued_dial(period: float) -> Streams:
        """The strategy we do not use: close a pending connect and issue it again every
        ``period`` s. Only the connect is on the timer; once the 4-tuple is connected the
        TLS handshake gets the whole deadline, so a slow machine does not abort a
        handshake the strategy itself would finish (which left the 4-tuple in TIME_WAIT
        and the next connect with EADDRNOTAVAIL)."""
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(bound)
            window_end = min(deadline, loop.time() + period)
            try:
                async with asyncio.timeout_at(window_end):
                    await loop.sock_connect(sock, addr)
            except TimeoutError:
                if not _connected(sock):
                    sock.close()
                    if loop.time() >= deadline:
                        raise PunchTimeout(
                            f"reissued connects to {addr} until the deadline"
                        ) from None
                    continue
                # The connect completed as the window closed (a loaded machine runs the
                # timer late): closing it would leave the 4-tuple in TIME_WAIT at both
                # ends and every later connect with EADDRNOTAVAIL. Use it.
            except OSError as exc:
                sock.close()
                if exc.errno in (errno.EADDRNOTAVAIL, errno.EADDRINUSE):
                    raise TupleBusyError(exc.errno, str(exc)) from exc
                await asyncio.sleep(max(0.0, window_end - loop.time()))  # refused: next period
                continue
            reader, writer, _ = await punched_tls(
                sock, role, client_ctx, server_ctx, {peer.public_key}, deadline
            )
            return reader, writer

    async def dial() -> Streams:
        nonlocal dial_error, dial_seconds
        try:
            if reissue is None:
                return await punch_dial(bound, addr, socket.AF_INET, role, client_ctx,
                                        server_ctx, peer.public_key, deadline)  # fmt: skip
            return await reissued_dial(reissue)
        except TupleBusyError:
            dial_error = "EADDRNOTAVAIL"
            await asyncio.sleep(deadline - loop.time())
            raise
        except PunchTimeout:
            dial_error, dial_seconds = "timeout", loop.time() - start
            raise

    tasks = {asyncio.create_task(dial()): "connect", asyncio.create_task(accept()): "accept"}
    streams: Streams | None = None
    via = ""
    error = ""
    try:
        async with asyncio.timeout_at(deadline + 0.5):
            pending = set(tasks)
            while pending and streams is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None and streams is None:
                        streams, via = task.result(), tasks[task]
                    elif task.exception() is not None:
                        error = f"{type(task.exception()).__name__}: {task.exception()}"
    except TimeoutError:
        error = error or "timeout"
    seconds = loop.time() - start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task
    if streams is None:
        emit(ok=False, error=error, dial=dial_error, seconds=seconds, dial_seconds=dial_seconds)
        return
    reader, writer = streams
    ssl_object = writer.get_extra_info("ssl_object")
    writer.write(f"hello from {observed}\n".encode())
    received = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    emit(
        ok=True,
        via=via,
        dial=dial_error,
        seconds=seconds,
        received=received,
        role="server" if ssl_object.server_side else "client",
        expected_role=role,
        pinned=peer_public_key(ssl_object) == peer.public_key,
    )
    writer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--me", type=int, required=True)
    parser.add_argument("--peer", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rendezvous", required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    arguments = parser.parse_args()
    factory = None
    if arguments.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(arguments))
