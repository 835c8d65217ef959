"""The peers' own TLS 1.3 link, run inside a relayed circuit.

A relay forwards ``CircuitData`` chunks between the two ends of a circuit
(``p2p.nat.relay``). This module turns such a circuit into a byte stream and runs the
ordinary authenticated peer link over it, so a relay sees opaque TLS records: it can
drop, delay or cut traffic, but anything it alters or injects fails the record MAC (the
link dies with an ``ssl.SSLError``) and it cannot pose as either end (both certificates
are checked, and the dialled key is pinned, exactly as on a direct link).

- ``RelayedStream`` is an ``asyncio.Transport`` over one circuit. The NAT shell owns
  the link to the relay: it gives the stream a ``send_chunk`` callback (one
  ``CircuitData`` on the relay link, ``False`` once that link is gone), calls ``feed``
  for every ``CircuitData`` of the circuit, ``remote_closed`` for its ``CircuitClose``
  (or when the relay link drops), and ``writable`` when the relay link has room again.
- ``open_relayed_tls`` runs the TLS handshake over a stream in either role, checks the
  pin and returns the ``StreamReader``/``StreamWriter`` pair that ``p2p.link.Link``
  runs on, as ``p2p.transport`` does for a socket.

Back-pressure, and why it has this shape. A circuit shares the relay link with the NAT
channel and other circuits, so a stream must never block that link, and ``send_chunk``
must never fail merely because the link is busy (a ``False`` ends the circuit). The
stream therefore keeps its own write buffer and sends only while ``can_send()`` (the
shell's "relay link below its high-water mark") holds; the rest waits until the shell
calls ``writable()``. Past ``set_write_buffer_limits``' high-water mark the protocol is
paused, so ``StreamWriter.drain()`` (which ``Link``'s writer awaits) waits exactly as
on a socket, and memory stays bounded on the sending side. On the receiving side the
circuit protocol has no window (no acknowledgement message), so bytes that arrive while
the TLS layer has paused reading are buffered up to ``max_inbound`` bytes; beyond that
the sender is outrunning us through the relay and the stream is closed rather than
buffering without bound. ``Link`` reads continuously, so in practice the buffer stays
near empty; an end-to-end window would need a credit message on the NAT channel.

Which event loop: the TLS layer is the stdlib's ``asyncio.sslproto`` in both cases.
asyncio's loop gets it through the public ``loop.start_tls``; uvloop's ``start_tls``
accepts only its own socket transports, so on other loops the same steps are done here
with the stdlib ``SSLProtocol``.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from asyncio import sslproto
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

from p2p.errors import P2PError
from p2p.nat.messages import MAX_CIRCUIT_CHUNK
from p2p.tls import check_pin, peer_public_key
from p2p.transport import STREAM_LIMIT

__all__ = [
    "DEFAULT_MAX_INBOUND",
    "CircuitLost",
    "RelayedHandshakeError",
    "RelayedStream",
    "open_relayed_tls",
]

DEFAULT_HIGH_WATER: Final = 4 * MAX_CIRCUIT_CHUNK
DEFAULT_MAX_INBOUND: Final = 8 * 1024 * 1024
"""Bytes a stream holds while its reader is paused before giving the circuit up. Well
above what the TLS layer and a ``StreamReader`` buffer (``2 * STREAM_LIMIT``) themselves."""


class CircuitLost(P2PError, ConnectionError):
    """The circuit under a relayed stream ended abnormally (relay link gone, overflow)."""


class RelayedHandshakeError(P2PError, ConnectionError):
    """The TLS handshake over a relayed circuit failed or timed out (the cause is chained)."""


def _always() -> bool:
    return True


def _ignore(_notify_relay: bool) -> None:
    return None


class RelayedStream(asyncio.Transport):
    """An ``asyncio.Transport`` whose bytes travel as ``CircuitData`` chunks of one circuit.

    ``send_chunk(data)`` puts one chunk (at most ``MAX_CIRCUIT_CHUNK`` bytes) on the relay
    link; ``False`` means that link is gone, and the stream is lost. ``can_send()`` says
    whether the relay link takes more now (default: always; then the write buffer stays
    empty and only the relay link's own queue limits the sender). ``on_closed(notify_relay)``
    is called once when the stream is finished; ``notify_relay`` is true when this side
    ended the circuit (close, abort, TLS failure, overflow), so the shell should send
    ``CircuitClose``, and false when the end came from ``remote_closed`` or a failed
    ``send_chunk``. ``extra`` answers ``get_extra_info`` (e.g. ``peername``, which
    ``Link`` logs as the remote address).
    """

    _start_tls_compatible = True  # asyncio's ``loop.start_tls`` checks for it

    def __init__(
        self,
        send_chunk: Callable[[bytes], bool],
        *,
        can_send: Callable[[], bool] = _always,
        on_closed: Callable[[bool], None] = _ignore,
        extra: Mapping[str, Any] | None = None,
        max_inbound: int = DEFAULT_MAX_INBOUND,
        chunk_size: int = MAX_CIRCUIT_CHUNK,
    ) -> None:
        if not 0 < chunk_size <= MAX_CIRCUIT_CHUNK:
            raise ValueError(f"chunk_size={chunk_size}: must be in 1..{MAX_CIRCUIT_CHUNK}")
        if max_inbound < chunk_size:
            raise ValueError(f"max_inbound={max_inbound}: must be >= chunk_size {chunk_size}")
        super().__init__(dict(extra or {}))
        self._loop = asyncio.get_running_loop()
        self._send_chunk = send_chunk
        self._can_send = can_send
        self._on_closed = on_closed
        self._max_inbound = max_inbound
        self._chunk_size = chunk_size
        self._protocol: asyncio.BaseProtocol | None = None
        self._out: deque[memoryview] = deque()
        self._out_bytes = 0
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._writing_paused = False
        self._in: deque[bytes] = deque()
        self._in_bytes = 0
        self._reading = True
        self._flush_scheduled = False
        self._closing = False
        self._finished = False
        self._eof_delivered = False
        self._relay_lost = False
        self.close_reason: str | None = None
        """Why the circuit ended (``remote_closed``' reason, a send failure, an overflow)."""

    # -- inputs from the NAT shell --------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes of one ``CircuitData`` for this circuit, in the order the relay sent them."""
        if self._finished or self.close_reason is not None or not data:
            return
        if self._reading and self._protocol is not None and not self._in:
            self._deliver(data)
            return
        self._in.append(bytes(data))
        self._in_bytes += len(data)
        if self._in_bytes > self._max_inbound:
            self._lost(f"receive buffer over {self._max_inbound} bytes", notify=True)

    def remote_closed(self, reason: str) -> None:
        """The circuit is gone at the relay (``CircuitClose``, or the relay link dropped).

        Bytes already fed are still delivered, then the protocol sees end-of-stream, as
        after a TCP FIN; ``reason`` is kept in ``close_reason`` for logs."""
        if self._finished or self.close_reason is not None:
            return
        self.close_reason = reason
        self._out.clear()
        self._out_bytes = 0
        if self._closing:
            self._finish(None)
        else:
            self._schedule_flush()

    def writable(self) -> None:
        """The relay link has room again: send what is buffered, maybe resume the writer."""
        if not self._finished:
            self._pump()

    @property
    def inbound_buffered(self) -> int:
        """Bytes received but held because the protocol paused reading."""
        return self._in_bytes

    # -- asyncio.Transport ------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._finished or self.close_reason is not None:
            return  # like a socket transport after close: the bytes go nowhere
        if not data:
            return
        view = memoryview(data if isinstance(data, bytes) else bytes(data)).cast("B")
        self._out.append(view)
        self._out_bytes += len(view)
        self._pump()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False  # a circuit has no half-close

    def write_eof(self) -> None:
        raise NotImplementedError("a relayed circuit has no half-close")

    def get_write_buffer_size(self) -> int:
        return self._out_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._control_writing()

    def is_reading(self) -> bool:
        return self._reading and not self._finished

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule_flush()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._schedule_flush()

    def get_protocol(self) -> asyncio.BaseProtocol:
        if self._protocol is None:
            raise RuntimeError("no protocol is attached to this relayed stream yet")
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing or self._finished or self.close_reason is not None

    def close(self) -> None:
        """Send what is buffered, then end the circuit (``on_closed(True)``)."""
        if self._closing or self._finished:
            return
        self._closing = True
        if not self._out or self.close_reason is not None:
            self._finish(None)

    def abort(self) -> None:
        """End the circuit now; buffered bytes are dropped."""
        self._finish(None)

    def _force_close(self, exc: Exception | None) -> None:
        """What ``asyncio.sslproto`` calls on a fatal TLS error (as on socket transports)."""
        self._finish(exc)

    # -- internals --------------------------------------------------------------------------

    def _pump(self) -> None:
        while self._out and self._can_send():
            if not self._send_chunk(self._next_chunk()):
                self._relay_lost = True
                self._lost("the link to the relay is gone", notify=False)
                return
        self._control_writing()
        if self._closing and not self._out:
            self._finish(None)

    def _next_chunk(self) -> bytes:
        parts: list[memoryview] = []
        size = 0
        while self._out and size < self._chunk_size:
            head = self._out[0]
            take = min(len(head), self._chunk_size - size)
            parts.append(head[:take])
            size += take
            if take == len(head):
                self._out.popleft()
            else:
                self._out[0] = head[take:]
        self._out_bytes -= size
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def _control_writing(self) -> None:
        protocol = self._protocol
        if protocol is None or self._finished:
            return
        try:
            if not self._writing_paused and self._out_bytes > self._high:
                self._writing_paused = True
                protocol.pause_writing()
            elif self._writing_paused and self._out_bytes <= self._low:
                self._writing_paused = False
                protocol.resume_writing()
        except Exception as exc:
            self._report("protocol flow control failed", exc)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_inbound)

    def _flush_inbound(self) -> None:
        """Deliver held bytes (then the remote end-of-stream) while the protocol reads.

        Always from the loop, never from inside ``resume_reading``: the TLS layer calls
        that in the middle of its own read processing."""
        self._flush_scheduled = False
        while self._in and self._reading and self._protocol is not None and not self._finished:
            data = self._in.popleft()
            self._in_bytes -= len(data)
            self._deliver(data)
        if (
            self.close_reason is not None
            and not self._in
            and self._reading
            and self._protocol is not None
            and not self._finished
            and not self._eof_delivered
        ):
            self._eof_delivered = True
            protocol = self._protocol
            keep_open: bool | None = False
            try:
                if isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol):
                    keep_open = protocol.eof_received()
            except Exception as exc:
                self._report("protocol eof_received failed", exc)
                keep_open = False
            if not keep_open:
                self._finish(None)

    def _deliver(self, data: bytes) -> None:
        protocol = self._protocol
        try:
            if isinstance(protocol, asyncio.BufferedProtocol):
                view = memoryview(data)
                while view:
                    buf = memoryview(protocol.get_buffer(len(view))).cast("B")
                    n = min(len(buf), len(view))
                    if n == 0:
                        raise RuntimeError("get_buffer() returned an empty buffer")
                    buf[:n] = view[:n]
                    protocol.buffer_updated(n)
                    view = view[n:]
            elif isinstance(protocol, asyncio.Protocol):
                protocol.data_received(data)
        except Exception as exc:
            self._report("protocol failed on received data", exc)
            self._finish(exc)

    def _lost(self, reason: str, *, notify: bool) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._finish(CircuitLost(reason), notify=notify)

    def _finish(self, exc: Exception | None, *, notify: bool | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self._closing = True
        self._out.clear()
        self._out_bytes = 0
        self._in.clear()
        self._in_bytes = 0
        if notify is None:
            notify = self.close_reason is None and not self._relay_lost
        if self._protocol is not None:
            self._loop.call_soon(self._protocol.connection_lost, exc)
        self._loop.call_soon(self._on_closed, notify)

    def _report(self, message: str, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            return  # a TLS or connection error: the protocol learns it via connection_lost
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )


async def open_relayed_tls(
    stream: RelayedStream,
    role: Literal["client", "server"],
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    expected_key: bytes,
    timeout: float,
    *,
    limit: int = STREAM_LIMIT,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The authenticated peer link over ``stream``: TLS 1.3 as ``role``, ``expected_key`` pinned.

    The contexts are ``p2p.tls.client_context``/``server_context`` of our identity (both
    require the peer's certificate, so either role authenticates the other end).
    ``RelayedHandshakeError`` if the handshake fails or takes longer than ``timeout``;
    ``PeerAuthError`` if the peer proved a key other than ``expected_key``. On any
    failure the stream is aborted (the shell then closes the circuit).
    """
    loop = asyncio.get_running_loop()
    if stream.is_closing():
        raise RelayedHandshakeError(
            f"circuit closed before the TLS handshake as {role}: {stream.close_reason or 'closed'}"
        )
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    ctx = client_ctx if role == "client" else server_ctx
    try:
        async with asyncio.timeout(timeout):
            transport = await _start_tls(loop, stream, protocol, ctx, role == "server", timeout)
    except TimeoutError as exc:
        stream.abort()
        raise RelayedHandshakeError(
            f"TLS handshake as {role} over the relayed circuit timed out after {timeout:g}s"
        ) from exc
    except (OSError, EOFError) as exc:
        stream.abort()
        text = str(exc) or type(exc).__name__
        raise RelayedHandshakeError(
            f"TLS handshake as {role} over the relayed circuit failed: {text}"
        ) from exc
    except BaseException:
        stream.abort()
        raise
    # ``start_tls`` leaves connection_made to the caller (it upgrades a live protocol);
    # without it the reader would never pause the transport when its buffer fills
    protocol.connection_made(transport)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    try:
        check_pin(peer_public_key(writer.get_extra_info("ssl_object")), expected=expected_key)
    except BaseException:
        transport.abort()
        raise
    return reader, writer


async def _start_tls(
    loop: asyncio.AbstractEventLoop,
    stream: RelayedStream,
    protocol: asyncio.BaseProtocol,
    ctx: ssl.SSLContext,
    server_side: bool,
    timeout: float,
) -> asyncio.Transport:
    """``loop.start_tls`` where the loop takes our transport, else the same steps by hand."""
    if isinstance(loop, asyncio.BaseEventLoop):
        transport = await loop.start_tls(
            stream, protocol, ctx, server_side=server_side, ssl_handshake_timeout=timeout
        )
    else:
        waiter: asyncio.Future[None] = loop.create_future()
        ssl_protocol = sslproto.SSLProtocol(
            loop,
            protocol,
            ctx,
            waiter,
            server_side,
            None,
            call_connection_made=False,
            # the stubs want an int; ``open_relayed_tls``' own timeout is the exact one
            ssl_handshake_timeout=math.ceil(timeout),
        )
        stream.pause_reading()  # nothing reaches the TLS layer before connection_made
        stream.set_protocol(ssl_protocol)
        made = loop.call_soon(ssl_protocol.connection_made, stream)
        resumed = loop.call_soon(stream.resume_reading)
        try:
            await waiter
        except BaseException:
            stream.close()
            made.cancel()
            resumed.cancel()
            raise
        transport = ssl_protocol._app_transport
    if transport is None:  # the stream was closed cleanly under the handshake
        raise ConnectionResetError("circuit closed during the TLS handshake")
    return transport
