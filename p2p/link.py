"""One authenticated connection to one peer: send queue, reader, writer, keep-alive.

A ``Link`` exists only after the TLS handshake and the key pin succeeded; the transport
(``p2p.transport``) decides which links to make and keep. The link owns three tasks:

- the writer drains a byte-counted queue of encoded frames, coalescing small frames into
  one ``write`` (one TLS record and one syscall for many messages) and awaiting
  ``drain()`` so that a slow peer pushes back on the queue instead of on memory;
- the reader decodes frames, enforces the inbound rate limits, answers PING and hands
  DATA payloads to the callback synchronously;
- the keep-alive sends PING every interval (PONG gives the RTT) and closes a link that
  has been silent for ``keepalive_timeout``.

A link the transport replaced (the peer dialled again, both ends dialled at once, a
relayed path became direct) is *retired*, not aborted: frames already queued on it, and
frames the peer sends on it before it switches, are still delivered. ``retire`` queues
GOAWAY after the last frame; each end answers a GOAWAY with GOAWAY_ACK; once a retired
link has the peer's GOAWAY (so every frame the peer sent on it) and the ACK of its own
(so the peer has every frame we sent), it is ``drained`` and closes. A link that ends
before that may have lost frames in flight, and the transport reports it as lost.

Anything a peer can cause (bad framing, oversize frame, rate exceeded, reset) closes this
link with a logged reason. Nothing escapes into the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from p2p.config import TransportConfig
from p2p.errors import FrameError
from p2p.framing import KNOWN_KINDS, FrameBudget, FrameDecoder, FrameKind, encode_frame
from p2p.identity import short_id
from p2p.logs import log_event
from p2p.ratelimit import TokenBucket

READ_CHUNK: Final = 1024 * 1024
"""Largest read from the stream: about one content chunk, so a 1 MiB frame is one or two
reads rather than five (``STREAM_LIMIT`` lets the reader buffer 2 MiB)."""
MIN_BURST_BYTES: Final = 1024 * 1024
COALESCE_BYTES: Final = 256 * 1024
MAX_CONTROL_PAYLOAD: Final = 64
RETIRED_CLOSE_S: Final = 1.0
"""After a retired link drained: how long its TLS close may take before it is aborted."""
_PING_STAMP: Final = struct.Struct(">d")
_DATA: Final = int(FrameKind.DATA)
_GOAWAY: Final = encode_frame(FrameKind.GOAWAY, b"")
_GOAWAY_ACK: Final = encode_frame(FrameKind.GOAWAY_ACK, b"")

Direction = Literal["outbound", "inbound"]


@dataclass
class PeerStats:
    """Counters of one peer, kept across its successive links."""

    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    links: int = 0
    last_error: str | None = None
    rtt_ms: float | None = None


class Link:
    """A live, authenticated connection to ``key``. Closed exactly once, by ``close``."""

    def __init__(
        self,
        *,
        key: bytes,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        config: TransportConfig,
        stats: PeerStats,
        on_frame: Callable[[bytes, bytes], None],
        on_closed: Callable[[Link, str, bool], None],
        logger: logging.Logger,
        channels: Mapping[int, Callable[[bytes, bytes], None]] | None = None,
        max_frame: int | None = None,
        budget: FrameBudget | None = None,
    ) -> None:
        """``max_frame`` (default ``config.max_frame``) bounds one inbound frame;
        ``budget``, if given, is charged with this link's partial frame (strangers)."""
        self.key = key
        self.direction: Direction = direction
        self.path = "direct"  # or "relayed:<relay peer id>"; set by the transport
        self.local_addr: object = writer.get_extra_info("sockname")
        self.remote_addr: object = writer.get_extra_info("peername")
        self._reader = reader
        self._writer = writer
        self._config = config
        self._stats = stats
        self._on_frame = on_frame
        self._channels = dict(channels or {})
        self._on_closed = on_closed
        self._log = logger
        self._queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.opened_at = loop.time()
        self.last_rx = loop.time()
        # burst: one second of traffic, and never less than a few reads' worth
        self._bytes_bucket = TokenBucket(
            config.rate_bytes_per_s, max(config.rate_bytes_per_s, MIN_BURST_BYTES), loop.time()
        )
        self._frames_bucket = TokenBucket(
            config.rate_frames_per_s, config.rate_frames_per_s, loop.time()
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._senders: tuple[asyncio.Task[None], ...] = ()
        self._closing: asyncio.Future[None] | None = None  # the TLS close, once begun
        self.max_frame = config.max_frame if max_frame is None else max_frame
        self._decoder = FrameDecoder(self.max_frame, KNOWN_KINDS | self._channels.keys())
        self._budget = budget
        self._charged = 0  # bytes of ``budget`` this link's partial frame holds
        self.activity = 0
        """Application frames (DATA or channel) sent or received; keep-alives do not count."""
        self.idle_mark: tuple[int, float] = (0, self.opened_at)
        """(``activity``, time) when the transport's idle check last saw it change."""
        self.generation = 0
        """Set by the transport: which of its links this is (it counts them), so that a
        caller can tell whether a frame went out on the peer's current link."""
        self.retired = False
        """Replaced by another link to the same peer: draining, no new frames go here."""
        self.drained = False
        """Retired, and both ends have everything the other sent on it (GOAWAY both ways,
        ours acknowledged): closing it now loses nothing."""
        self._goaway_in = False
        self._goaways_out = 0
        self._acks_in = 0  # each GOAWAY we send is acknowledged once, in order
        self._drained_event = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    @property
    def is_closed(self) -> bool:
        return self.close_reason is not None

    def add_channel(self, kind: int, handler: Callable[[bytes, bytes], None]) -> None:
        """Deliver frames of ``kind`` to ``handler`` from now on (registered after start)."""
        self._channels[kind] = handler
        self._decoder.allow(kind)

    def start(self) -> None:
        """Spawn the reader, writer and keep-alive tasks."""
        sid = short_id(self.key)
        read = asyncio.create_task(self._read_loop(), name=f"p2p-read-{sid}")
        write = asyncio.create_task(self._write_loop(), name=f"p2p-write-{sid}")
        keepalive = asyncio.create_task(self._keepalive_loop(), name=f"p2p-keepalive-{sid}")
        self._tasks += (read, write, keepalive)
        self._senders = (write, keepalive)

    # -- sending -------------------------------------------------------------------------

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit the send queue (a lone frame always fits)."""
        return self.queued_bytes == 0 or self.queued_bytes + size <= self._config.send_queue_bytes

    def enqueue(self, frame: bytes) -> None:
        """Append an encoded frame; the caller has checked ``has_room`` when it matters."""
        self._queue.append(frame)
        self.queued_bytes += len(frame)
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def wait_room(self, size: int) -> None:
        """Wait until ``size`` bytes fit or the link closes (the caller checks which)."""
        while not self.is_closed and not self.has_room(size):
            self._space.clear()
            await self._space.wait()

    async def _write_loop(self) -> None:
        queue = self._queue
        writer = self._writer
        try:
            while not self.is_closed:
                if not queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch: list[bytes] = []
                size = 0
                while queue and (not batch or size + len(queue[0]) <= COALESCE_BYTES):
                    frame = queue.popleft()
                    batch.append(frame)
                    size += len(frame)
                writer.write(batch[0] if len(batch) == 1 else b"".join(batch))
                await writer.drain()
                self.queued_bytes -= size
                self._stats.bytes_out += size
                self._stats.frames_out += len(batch)
                self._space.set()
        except Exception as exc:
            self.close(f"write failed: {exc!r}", error=True)

    # -- receiving -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        decoder = self._decoder
        channels = self._channels
        stats = self._stats
        key = self.key
        deliver = self._on_frame
        try:
            while not self.is_closed:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    self.close("peer closed the connection", error=False)
                    return
                now = self._loop.time()
                self.last_rx = now
                stats.bytes_in += len(data)
                if not self._bytes_bucket.consume(len(data), now):
                    self._violation("rate exceeded", f"over {self._config.rate_bytes_per_s:g} B/s")
                    return
                try:
                    frames = decoder.feed(data)
                except FrameError as exc:
                    self._violation("bad framing", str(exc))
                    return
                if self._budget is not None and decoder.announced != self._charged:
                    if not self._budget.recharge(self._charged, decoder.announced):
                        self._violation(
                            "frame budget exhausted",
                            f"a {decoder.announced}-byte frame does not fit: partial frames"
                            f" of strangers hold {self._budget.used} of"
                            f" {self._budget.limit} bytes",
                        )
                        return
                    self._charged = decoder.announced
                if not frames:
                    continue
                if not self._frames_bucket.consume(len(frames), now):
                    self._violation(
                        "rate exceeded", f"over {self._config.rate_frames_per_s:g} frames/s"
                    )
                    return
                stats.frames_in += len(frames)
                for kind, payload in frames:
                    if kind == _DATA:
                        self.activity += 1
                        try:
                            deliver(key, payload)
                        except Exception:
                            self._log.exception("on_frame callback failed for %s", short_id(key))
                        if self.close_reason is not None:  # the callback closed the link
                            return
                    elif kind in channels:
                        self.activity += 1
                        try:
                            channels[kind](key, payload)
                        except Exception:
                            self._log.exception(
                                "channel %d callback failed for %s", kind, short_id(key)
                            )
                        if self.close_reason is not None:
                            return
                    elif len(payload) > MAX_CONTROL_PAYLOAD:
                        self._violation("bad control frame", f"{len(payload)}-byte payload")
                        return
                    elif kind == FrameKind.PING:
                        self.enqueue(encode_frame(FrameKind.PONG, payload))
                    elif kind == FrameKind.PONG:
                        self._on_pong(payload)
                    elif kind == FrameKind.GOAWAY:
                        # The peer moved to another link and sends nothing more here; we
                        # may still send here until our side switches too.
                        self._goaway_in = True
                        self.enqueue(_GOAWAY_ACK)
                        self._check_drained()
                    elif kind == FrameKind.GOAWAY_ACK:
                        self._acks_in += 1
                        self._check_drained()
        except Exception as exc:
            self.close(f"read failed: {exc!r}", error=True)

    def _on_pong(self, payload: bytes) -> None:
        if len(payload) != _PING_STAMP.size:
            return
        (sent,) = _PING_STAMP.unpack(payload)
        rtt = self._loop.time() - sent
        if 0 <= rtt < 3600:
            self._stats.rtt_ms = rtt * 1000.0

    def _violation(self, reason: str, detail: str) -> None:
        log_event(
            self._log,
            logging.WARNING,
            "peer violation",
            peer=short_id(self.key),
            reason=reason,
            detail=detail,
            addr=self.remote_addr,
        )
        self.close(f"{reason}: {detail}", error=True)

    # -- keep-alive ----------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        interval = self._config.keepalive_interval
        timeout = self._config.keepalive_timeout
        loop = self._loop
        next_ping = loop.time() + interval
        try:
            while not self.is_closed:
                now = loop.time()
                idle = now - self.last_rx
                if idle >= timeout:
                    self.close(f"keepalive timeout: silent for {idle:.1f}s", error=True)
                    return
                if now >= next_ping:
                    self.enqueue(encode_frame(FrameKind.PING, _PING_STAMP.pack(now)))
                    next_ping = now + interval
                await asyncio.sleep(max(0.001, min(next_ping, self.last_rx + timeout) - now))
        except Exception as exc:
            self.close(f"keepalive failed: {exc!r}", error=True)

    # -- retiring ------------------------------------------------------------------------

    def retire(self, timeout: float) -> None:
        """Stop being the peer's link without losing what is in flight on it.

        The caller sends nothing more here. GOAWAY goes after every queued frame; the
        link keeps reading (and delivering) until it is ``drained``, then closes. If that
        does not happen within ``timeout`` (the peer never switched, or it was a
        half-open leftover of a peer restart), the link closes undrained.
        """
        if self.retired or self.is_closed:
            return
        self.retired = True
        self.enqueue(_GOAWAY)
        self._goaways_out += 1
        self._check_drained()
        sid = short_id(self.key)
        self._watch = asyncio.create_task(self._retire_watch(timeout), name=f"p2p-retire-{sid}")
        self._tasks.append(self._watch)

    def unretire(self) -> bool:
        """Be the peer's link again, if the peer never said GOAWAY here (it still uses
        this link: its side of the replacement never came up) and we are not closed.
        The link that replaced it died; without this the pair had no working link until
        the drain timed out. Frames after our GOAWAY are still read and delivered."""
        if not self.retired or self.is_closed or self._goaway_in or self.drained:
            return False
        self.retired = False
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        return True

    def _check_drained(self) -> None:
        done = self._goaway_in and self._acks_in >= self._goaways_out
        if self.retired and done and not self.drained:
            self.drained = True
            self._drained_event.set()

    async def _retire_watch(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._drained_event.wait()
                # We may still owe the peer the ACK of its GOAWAY: flush, then close TLS.
                while self.queued_bytes > 0 and not self.is_closed:
                    self._space.clear()
                    await self._space.wait()
        except TimeoutError:
            self.close(f"retired link not drained within {timeout:g}s", error=True)
            return
        except Exception as exc:
            self.close(f"retiring failed: {exc!r}", error=True)
            return
        for task in self._senders:
            task.cancel()  # nothing more is written: the TLS close must come last
        await self._close_tls(RETIRED_CLOSE_S)
        self.close("retired: drained", error=False)

    # -- closing -------------------------------------------------------------------------

    def close(self, reason: str, *, error: bool) -> None:
        """Abort the connection now (queued frames are dropped) and report it once.

        Abort, not a graceful TLS close: the peer may have stopped reading, and a
        graceful close would wait for it forever.
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if error:
            self._stats.last_error = reason
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
            # A cancelled task keeps its CancelledError, whose traceback keeps the task's
            # frame and so this link: a cycle that only the cyclic GC would free, with the
            # stream buffers (up to 2 MiB per link) in it. Forgetting finished tasks breaks
            # it, so a closed link's memory goes back as soon as the last reference does.
            task.add_done_callback(self._forget_task)
        self._senders = ()
        with contextlib.suppress(Exception):
            self._writer.transport.abort()
        self._queue.clear()
        self._decoder.discard()  # a never-finished frame's bytes go now, not with the object
        if self._budget is not None and self._charged:
            self._budget.recharge(self._charged, 0)
            self._charged = 0
        self._space.set()
        self._wakeup.set()
        self.closed.set()
        self._on_closed(self, reason, error)

    async def shutdown(self, timeout: float) -> None:
        """Graceful close for transport shutdown: flush what is queued, then TLS close."""
        if self.is_closed:
            return
        deadline = asyncio.get_running_loop().time() + timeout
        with contextlib.suppress(Exception):
            async with asyncio.timeout_at(deadline):
                while self.queued_bytes > 0 and not self.is_closed:
                    self._space.clear()
                    await self._space.wait()
        if not self.is_closed:
            await self._close_tls(max(0.0, deadline - asyncio.get_running_loop().time()))
        self.close("transport shut down", error=False)

    async def _close_tls(self, timeout: float) -> None:
        """Send TLS close_notify and wait up to ``timeout`` for the connection to end.

        Two coroutines may close one link at once (a retired link's drain watch and
        the transport's shutdown). The stream has one close future, and cancelling a
        task that awaits it (a timeout firing) cancels that future: every other waiter
        then raises ``CancelledError`` although nobody cancelled it, which aborted the
        whole transport shutdown. So there is one close task per link, each caller waits
        for it through a shield, and only the connection ending resolves it (``close``
        aborts it at the latest). It may end in an error after every waiter gave up (a
        reset by a peer shutting down too); that is expected, so the task's outcome is
        consumed rather than reported as "Task exception was never retrieved".
        """
        with contextlib.suppress(Exception):
            if self._closing is None:
                self._writer.close()
                self._closing = asyncio.ensure_future(self._writer.wait_closed())
                self._closing.add_done_callback(_consume_outcome)
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._closing)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def wait_tasks(self) -> None:
        """Wait for the link's tasks to finish after ``close`` (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _consume_outcome(future: asyncio.Future[None]) -> None:
    """Mark a finished future's exception as seen (the caller expects it may fail)."""
    if not future.cancelled():
        future.exception()
