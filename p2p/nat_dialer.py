"""The asyncio shell of a hole punch and of a dial-back: sockets, TLS roles, pins, deadlines.

The pure machines (``punch``, ``reachability``) say *what* to dial and when; this module
is the I/O that carries out their ``Dial`` / ``Expect`` / ``DialBackTo`` effects.

**How the connect is retried** (measured in ``tests/natlab/test_punch_dialer.py``).

- A pending connect is left alone: we never close and re-issue it on a timer. A punch
  SYN that reaches the peer's NAT before the peer's own SYN went out finds no mapping
  and is dropped, but our socket stays in SYN_SENT and our NAT keeps the conntrack
  entry of our SYN (120 s). The peer's SYN, whenever it leaves, matches that entry in
  the reply direction, reaches our SYN_SENT socket and completes the simultaneous open
  at once: in the lab a side that starts 2 s late links after one RTT and the early
  side at the same moment, with no SYN retransmission involved (the kernel's, at 1 s
  and 3 s, are only a backstop for lost packets). Re-issuing gains nothing and can
  break a handshake in flight: a new SYN carries a new sequence number, and a SYN-ACK
  for the old one is answered with a RST.
- A connect that *fails* is re-issued after a short jittered pause (``RETRY_SPACING``).
  A NAT that answers unsolicited SYNs with a RST (or an ICMP unreachable) kills our
  socket within one RTT, and then no SYN of ours is pending when the peer's arrives.
  With one such NAT the early side simply retries until the late side's mapping
  exists. With two, every refused SYN also makes the refusing NAT reset the other
  side's attempt, so the SYNs must cross within one RTT: fixed-period retries lock in
  phase and never meet (measured), jittered ones meet within a few tries.
- Time-to-link in the lab (RTT 60 ms, TLS adds about two RTTs): both sides in step
  ~0.15-0.2 s; a late side ~0.13 s after its start, the early side at the same moment.

**When the peer's SYN lands on our listener.** If the peer's SYN reaches us while no
connect of ours is pending on that 4-tuple (we are public, or between two retries),
the kernel hands it to the listening socket: the connection comes out of the
transport's accept loop, and our own connect then fails with ``EADDRNOTAVAIL``
(``TupleBusyError`` here: the 4-tuple is taken). The accept path must then run TLS
with the *punch* role, not as the usual server: after a simultaneous open neither side
knows it was "accepted", and both sides waiting as TLS servers would deadlock. The
shell records every ``Expect`` effect in an ``ExpectTable``; its accept path asks
``table.match(remote_addr, now)`` for each accepted socket and, on a match, calls
``punched_tls(sock, match.role, ..., allowed=match.peers)`` instead of the server
handshake, then reports ``HolePunch.link_established``. (Only a ``"client"`` match
really changes anything: the server role is what the accept path does anyway.)

``dial_back`` carries out ``DialBackTo``: from a fresh ephemeral port, never the
listening port (a NAT mapping towards our listening port would fake reachability).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import random
import socket
import ssl
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final

from p2p.errors import P2PError
from p2p.framing import encode_frame
from p2p.identity import short_id
from p2p.nat import Expect, TlsRole
from p2p.nat.messages import NAT_CHANNEL_KIND, Addr, DialBack, encode
from p2p.tls import check_pin, peer_public_key

__all__ = [
    "RETRY_SPACING",
    "ExpectMatch",
    "ExpectTable",
    "PunchDialError",
    "PunchTimeout",
    "TupleBusyError",
    "dial_back",
    "punch_dial",
    "punched_tls",
]

STREAM_LIMIT: Final = 1024 * 1024
"""StreamReader limit, as the transport's (links read whole frames up to max_frame)."""
RETRY_SPACING: Final = 0.05
"""Mean pause before re-issuing a connect that failed fast (RST or ICMP from a rejecting
NAT); each pause is drawn from 0.5..1.5 times this. The jitter is essential: between two
NATs that both answer unsolicited SYNs with a RST, each refused SYN also resets the
other side's pending one, so the two SYNs must cross within one RTT. Retrying on a fixed
period locks the two sides' phases, and in the lab they never met in 5 s; jittered, they
meet within a few retries (see the module docstring and ``tests/natlab``)."""
MAX_EXPECTED_ADDRS: Final = 4096
"""Bound of an ``ExpectTable`` (addresses across all entries); the oldest go first."""

_RETRY: Final = frozenset(
    {errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
)
_TUPLE_BUSY: Final = frozenset({errno.EADDRNOTAVAIL, errno.EADDRINUSE})


class PunchDialError(P2PError):
    """A punch dial did not produce an authenticated link (see the subclasses)."""


class PunchTimeout(PunchDialError, TimeoutError):
    """The deadline passed before the TCP connection and the TLS handshake completed."""


class TupleBusyError(PunchDialError, OSError):
    """Our connect found its 4-tuple taken: the peer's SYN most likely reached our
    listener first (the connection is in the accept loop, see ``ExpectTable``), or an
    earlier link between the same two endpoints is still in TIME_WAIT."""


async def punch_dial(
    bound: tuple[str, int],
    addr: tuple[str, int],
    family: int,
    role: TlsRole,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    expected_key: bytes,
    deadline: float,
    *,
    rng: random.Random | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect from our listening address ``bound`` to ``addr`` (TCP simultaneous open)
    and run TLS as ``role`` on the result, pinning ``expected_key``; by ``deadline``
    (loop time) or ``PunchTimeout``.

    Failed connects (refused, unreachable) are re-issued after a jittered pause of about
    ``RETRY_SPACING`` s (``rng`` draws it); a pending one is left to the kernel.
    ``TupleBusyError`` at once if the 4-tuple is taken; ``PeerAuthError`` if the peer
    proves another key; ``ssl.SSLError`` / ``OSError`` if the handshake fails.
    """
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    attempts = 0
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                attempts += 1
                sock = _socket_from(bound, family)
                try:
                    await loop.sock_connect(sock, addr)
                except OSError as exc:
                    sock.close()
                    if exc.errno in _TUPLE_BUSY:
                        raise TupleBusyError(
                            exc.errno, f"{_fmt(bound)} -> {_fmt(addr)} is taken: {exc.strerror}"
                        ) from exc
                    if exc.errno not in _RETRY:
                        raise
                    last = exc
                    await asyncio.sleep(_retry_delay(rng or _RNG))
                    continue
                except BaseException:
                    sock.close()
                    raise
                break
            reader, writer, _ = await punched_tls(
                sock, role, client_ctx, server_ctx, {expected_key}, deadline
            )
            return reader, writer
    except TimeoutError as exc:
        if isinstance(exc, PunchTimeout):
            raise
        detail = f"last error {errno.errorcode.get(last.errno or 0, last)}" if last else "no answer"
        raise PunchTimeout(
            f"punch to {short_id(expected_key)} at {_fmt(addr)} from {_fmt(bound)}: deadline "
            f"passed after {attempts} connect(s), {detail}"
        ) from None


async def punched_tls(
    sock: socket.socket,
    role: TlsRole,
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    allowed: Collection[bytes],
    deadline: float,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """TLS as ``role`` on a connected socket, whoever connected it; returns the streams
    and the peer's key, which must be in ``allowed``. Used by ``punch_dial`` and by the
    shell's accept path for a connection that ``ExpectTable`` attributes to a punch.

    TLS runs from the first byte on both sides (``open_connection`` /
    ``connect_accepted_socket`` with ``ssl=``), as in the transport: a plaintext stream
    upgraded later may swallow the peer's first TLS record. Takes ownership of ``sock``:
    it is closed on any failure, including the deadline.
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(deadline):
            # longer than our deadline, so that the deadline (not asyncio's abort) fires
            handshake_timeout = max(0.0, deadline - loop.time()) + 1.0
            if role == "client":
                reader, writer = await asyncio.open_connection(
                    sock=sock,
                    limit=STREAM_LIMIT,
                    ssl=client_ctx,
                    server_hostname="",  # peers have keys, not names: no SNI
                    ssl_handshake_timeout=handshake_timeout,
                )
            else:
                reader = asyncio.StreamReader(limit=STREAM_LIMIT)
                protocol = asyncio.StreamReaderProtocol(reader)
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=server_ctx, ssl_handshake_timeout=handshake_timeout
                )
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    except BaseException:
        sock.close()
        raise
    try:
        key = check_pin(peer_public_key(writer.get_extra_info("ssl_object")), allowed=allowed)
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer, key


async def dial_back(
    addr: tuple[str, int],
    nonce: int,
    client_ctx: ssl.SSLContext,
    expected_key: bytes,
    timeout: float,
) -> bool:
    """Carry out ``DialBackTo``: connect to ``addr`` from a fresh ephemeral port, TLS as
    client pinning the requester's ``expected_key``, send ``DialBack(nonce)`` as one NAT
    channel frame, close. ``True`` once the handshake succeeded and the frame was
    written; ``False`` for any network, TLS or pin failure or after ``timeout`` seconds.
    """
    frame = encode_frame(NAT_CHANNEL_KIND, encode(DialBack(nonce)))
    writer: asyncio.StreamWriter | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            # no bind: an ephemeral port, never the listening one (see reachability)
            _, writer = await asyncio.open_connection(
                addr[0],
                addr[1],
                limit=STREAM_LIMIT,
                ssl=client_ctx,
                server_hostname="",
                ssl_handshake_timeout=timeout,
            )
            check_pin(peer_public_key(writer.get_extra_info("ssl_object")), expected=expected_key)
            writer.write(frame)
            await writer.drain()
    except (OSError, ssl.SSLError, P2PError, TimeoutError, EOFError):
        if writer is not None:
            writer.transport.abort()
        return False
    # Written: the dial-back happened. The requester aborts once it has read the frame,
    # so how the close goes (a reset, a missing close_notify) says nothing about it.
    with contextlib.suppress(Exception):
        async with asyncio.timeout_at(max(deadline, loop.time() + 0.5)):
            writer.close()
            await writer.wait_closed()
    writer.transport.abort()
    return True


# -- routing inbound punch connections ---------------------------------------------------


@dataclass(frozen=True)
class ExpectMatch:
    """An accepted connection belongs to a punch: run TLS as ``role`` and accept only
    ``peers`` (several when peers share a NAT and the source port told them apart not)."""

    role: TlsRole
    peers: frozenset[bytes]


@dataclass(frozen=True)
class _Entry:
    peer: bytes
    port: int
    role: TlsRole
    until: float


class ExpectTable:
    """The ``Expect`` effects still in force, keyed by remote IP, for the accept path.

    Pure (time is an argument). A connection matches the entries of its source IP whose
    port is the one it came from, or, if none has that port, all entries of the IP (a
    NAT that changed the port); if those disagree on the TLS role there is no match and
    the connection takes the usual accept path. Entries expire at their ``until``; the
    shell removes a peer's entries early once its punch is over (``CancelDials``).
    """

    def __init__(self, max_addrs: int = MAX_EXPECTED_ADDRS) -> None:
        self._by_ip: dict[str, list[_Entry]] = {}
        self._max = max_addrs
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, expect: Expect, now: float) -> None:
        """Record ``expect`` (replacing the peer's earlier entries)."""
        self.remove(expect.peer)
        self.expire(now)
        for host, port in expect.addrs:
            while self._size >= self._max:
                self._drop_oldest()
            self._by_ip.setdefault(_canonical(host), []).append(
                _Entry(expect.peer, port, expect.tls_role, expect.until)
            )
            self._size += 1

    def remove(self, peer: bytes) -> None:
        """Forget ``peer``'s entries (its punch succeeded, failed or was cancelled)."""
        self._filter(lambda e: e.peer != peer)

    def expire(self, now: float) -> None:
        self._filter(lambda e: e.until > now)

    def match(self, addr: Addr, now: float) -> ExpectMatch | None:
        """How to handle a connection accepted from ``addr``, or ``None`` (not a punch)."""
        live = [e for e in self._by_ip.get(_canonical(addr[0]), ()) if e.until > now]
        exact = [e for e in live if e.port == addr[1]]
        chosen = exact or live
        roles = {e.role for e in chosen}
        if len(roles) != 1:
            return None
        return ExpectMatch(roles.pop(), frozenset(e.peer for e in chosen))

    def _filter(self, keep: Callable[[_Entry], bool]) -> None:
        for ip in list(self._by_ip):
            entries = [e for e in self._by_ip[ip] if keep(e)]
            self._size -= len(self._by_ip[ip]) - len(entries)
            if entries:
                self._by_ip[ip] = entries
            else:
                del self._by_ip[ip]

    def _drop_oldest(self) -> None:
        ip, entries = min(self._by_ip.items(), key=lambda item: min(e.until for e in item[1]))
        oldest = min(entries, key=lambda e: e.until)
        entries.remove(oldest)
        self._size -= 1
        if not entries:
            del self._by_ip[ip]


_RNG = random.Random()


def _retry_delay(rng: random.Random) -> float:
    return RETRY_SPACING * rng.uniform(0.5, 1.5)


def _socket_from(bound: tuple[str, int], family: int) -> socket.socket:
    """A non-blocking socket bound to our listening address, as ``p2p.sockets`` dials."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(bound)
    except BaseException:
        sock.close()
        raise
    return sock


def _canonical(host: str) -> str:
    """One spelling per IP: an IPv4-mapped IPv6 address (dual-stack accept) as IPv4."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _fmt(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
