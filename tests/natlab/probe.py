"""Raw-socket probes that the NAT lab tests run inside namespaces (``python probe.py ...``).

Every command prints JSON lines on stdout, so a test reads results with ``json.loads``.
Sockets that share a port set SO_REUSEADDR and SO_REUSEPORT, as the node does when it
dials from its listening port.

* ``echo-server --port P``: for every connection, send back the address it came from
  (``"ip:port\\n"``, what a rendezvous server observes), then hold the connection until
  the client closes. Prints ``{"ready": true}`` once listening.
* ``connect --to IP:PORT --timeout S``: one connection attempt; prints the outcome
  (``connected``/``timeout``/``refused``/``error ...``) and the observed address if the
  server echoed one.
* ``observe --port P --server IP:PORT ...``: connect from local port P to every server,
  print the observed addresses; with ``--hold`` keep the connections open until stdin
  closes (so their NAT mappings stay live).
* ``punch --port P --rendezvous IP:PORT --timeout S``: the hole-punching peer, see
  ``punch``.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import sys
import threading
import time
from typing import Any

HANG_S = 30.0
"""Bound on waits for something that must happen (a rendezvous connection through a NAT,
a line from a connected peer): generous, because the lab's internet is a userspace
switch that a loaded machine may schedule late. Waits whose expiry is an outcome (a
connect that a NAT drops, a punch through a symmetric NAT) take ``--timeout`` instead."""


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def shared_port_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", port))
    return sock


def read_line(sock: socket.socket, limit: int = 256) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = sock.recv(limit)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def echo_server(port: int) -> None:
    listener = shared_port_socket(port)
    listener.listen(64)
    emit(ready=True)

    def serve(conn: socket.socket, addr: tuple[str, int]) -> None:
        with conn:
            conn.sendall(f"{addr[0]}:{addr[1]}\n".encode())
            while conn.recv(4096):
                pass

    while True:
        conn, addr = listener.accept()
        threading.Thread(target=serve, args=(conn, addr), daemon=True).start()


def connect(target: str, timeout: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    start = time.monotonic()
    try:
        sock.connect(endpoint(target))
    except TimeoutError:
        emit(outcome="timeout", seconds=time.monotonic() - start)
        return
    except ConnectionRefusedError:
        emit(outcome="refused", seconds=time.monotonic() - start)
        return
    except OSError as exc:
        emit(outcome=f"error {errno.errorcode.get(exc.errno or 0, exc.errno)}")
        return
    seconds = time.monotonic() - start
    try:
        observed = read_line(sock)
    except OSError:
        observed = ""
    emit(outcome="connected", seconds=seconds, observed=observed)
    sock.close()


def observe(port: int, servers: list[str], hold: bool) -> None:
    observed = []
    socks = []
    for server in servers:
        sock = shared_port_socket(port)
        sock.settimeout(HANG_S)
        sock.connect(endpoint(server))
        observed.append(read_line(sock))
        socks.append(sock)
    emit(observed=observed)
    if hold:
        sys.stdin.read()
    for sock in socks:
        sock.close()


def punch(port: int, rendezvous: str, timeout: float) -> None:
    """One side of a TCP hole punch by simultaneous open, the way the node will do it.

    1. listen on ``port`` and, from the same port, connect to the rendezvous server,
       which echoes our mapped address; print ``{"observed": "ip:port"}``;
    2. read ``{"peer": "ip:port", "start": unix_time}`` from stdin (the test swaps the
       two peers' observed addresses and picks a start time in the near future);
    3. at ``start``, connect from ``port`` to the peer while still accepting on the
       listener: whichever yields a connection with the peer first wins (a SYN that
       reaches us before our own connect() lands on the listener);
    4. exchange one line each way and print the result with the time to connect.
    """
    listener = shared_port_socket(port)
    listener.listen(16)
    listener.setblocking(False)
    relay = shared_port_socket(port)
    relay.settimeout(HANG_S)
    relay.connect(endpoint(rendezvous))
    observed = read_line(relay)
    emit(observed=observed)
    order = json.loads(sys.stdin.readline())
    peer, start = endpoint(order["peer"]), float(order["start"])
    dialer = shared_port_socket(port)
    dialer.setblocking(False)
    time.sleep(max(0.0, start - time.time()))
    deadline = start + timeout
    error = dialer.connect_ex(peer)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    if error in (0, errno.EINPROGRESS):
        selector.register(dialer, selectors.EVENT_WRITE)
    # A failed dial does not end the attempt: EADDRNOTAVAIL means the peer's SYN came
    # first and its connection (same 4-tuple) is waiting on the listener.
    conn: socket.socket | None = None
    via = ""
    while conn is None and time.time() < deadline:
        for key, _ in selector.select(deadline - time.time()):
            if key.fileobj is dialer:
                error = dialer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error == 0:
                    conn, via = dialer, "connect"
                selector.unregister(dialer)
            else:
                accepted, addr = listener.accept()
                # same ip is enough: a peer behind a symmetric NAT dials from a new port
                if addr[0] == peer[0]:
                    conn, via = accepted, "accept"
                else:
                    accepted.close()
    seconds = time.time() - start
    dial = "" if error in (0, errno.EINPROGRESS) else errno.errorcode.get(error, str(error))
    if conn is None:
        emit(ok=False, error=dial or "timeout", seconds=seconds)
        return
    conn.setblocking(True)
    conn.settimeout(HANG_S)  # connected: the peer's line is on its way
    conn.sendall(f"hello from {observed}\n".encode())
    received = read_line(conn)
    host, port_ = conn.getpeername()
    emit(ok=True, via=via, dial=dial, seconds=seconds, received=received, peer=f"{host}:{port_}")
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="raw-socket probes for the NAT lab")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("echo-server")
    server.add_argument("--port", type=int, required=True)
    conn = commands.add_parser("connect")
    conn.add_argument("--to", required=True)
    conn.add_argument("--timeout", type=float, default=2.0)
    obs = commands.add_parser("observe")
    obs.add_argument("--port", type=int, required=True)
    obs.add_argument("--server", action="append", required=True)
    obs.add_argument("--hold", action="store_true")
    hole = commands.add_parser("punch")
    hole.add_argument("--port", type=int, required=True)
    hole.add_argument("--rendezvous", required=True)
    hole.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.command == "echo-server":
        echo_server(args.port)
    elif args.command == "connect":
        connect(args.to, args.timeout)
    elif args.command == "observe":
        observe(args.port, args.server, args.hold)
    else:
        punch(args.port, args.rendezvous, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
