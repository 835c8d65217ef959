"""The peers' own TLS link inside a relayed circuit, against an honest and a hostile relay.

``FakeRelay`` plays the relay and both ends' links to it in one loop: it forwards the
chunks each ``RelayedStream`` sends to the other one, in order, optionally late,
re-split, tampered with or with bytes of its own, and with a bounded in-flight budget
per direction (the relay links' queues) that drives the streams' back-pressure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from p2p.config import TransportConfig
from p2p.errors import PeerAuthError
from p2p.framing import FrameKind, encode_frame
from p2p.identity import Identity
from p2p.link import Link, PeerStats
from p2p.nat.messages import MAX_CIRCUIT_CHUNK
from p2p.nat.punch import tls_role
from p2p.relayed import (
    CircuitLost,
    RelayedHandshakeError,
    RelayedStream,
    open_relayed_tls,
)
from p2p.testing import LoopFactory, run, wait_until
from p2p.tls import client_context, server_context

A, B, C = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
CONTEXTS = {i.public_key: (client_context(i), server_context(i)) for i in (A, B, C)}
MiB = 1024 * 1024
CLOSE = object()
"""Marker queued behind the data: the relay's ``CircuitClose`` for the other end."""

LIVE: list[FakeRelay] = []
"""Relays of the running test, torn down by ``run_relayed``."""

Tamper = Callable[[int, int, bytes], bytes]
"""(direction, chunk index in that direction, chunk) -> what the relay forwards."""


@dataclass
class _Pipe:
    queue: deque[tuple[float, object]] = field(default_factory=deque)
    in_flight: int = 0
    peak: int = 0
    chunks: int = 0
    scheduled: bool = False
    cut: bool = False


class FakeRelay:
    """Two ``RelayedStream``s, ``a`` and ``b``, joined through a relay; direction 0 is a->b."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        resplit: random.Random | None = None,
        capacity: int = 256 * 1024,
        tamper: Tamper | None = None,
        max_inbound: int | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.latency = latency
        self.resplit = resplit
        self.capacity = capacity
        self.tamper = tamper
        self.pipes = (_Pipe(), _Pipe())
        self.notified: list[tuple[int, bool]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.drop = False
        """Swallow every chunk (a relay that accepts the circuit and forwards nothing)."""
        self.peak_write_buffer = 0
        self.peak_inbound = 0
        extra = {} if max_inbound is None else {"max_inbound": max_inbound}
        LIVE.append(self)
        self.ends = tuple(
            RelayedStream(
                partial(self._send, side),
                can_send=partial(self._room, side),
                on_closed=partial(self._closed, side),
                extra={"peername": ("relay", side), "sockname": None},
                **extra,
            )
            for side in (0, 1)
        )

    @property
    def a(self) -> RelayedStream:
        return self.ends[0]

    @property
    def b(self) -> RelayedStream:
        return self.ends[1]

    @property
    def peak_in_flight(self) -> int:
        return max(p.peak for p in self.pipes)

    def _room(self, side: int) -> bool:
        return self.pipes[side].in_flight < self.capacity

    def _send(self, side: int, data: bytes) -> bool:
        assert 0 < len(data) <= MAX_CIRCUIT_CHUNK
        pipe = self.pipes[side]
        if pipe.cut:
            return False
        if self.drop:
            return True
        self.peak_write_buffer = max(
            self.peak_write_buffer, self.ends[side].get_write_buffer_size()
        )
        if self.tamper is not None:
            data = self.tamper(side, pipe.chunks, data)
        pipe.chunks += 1
        pieces = [data]
        if self.resplit is not None:
            cuts = sorted(self.resplit.sample(range(1, len(data)), min(3, len(data) - 1)))
            pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for piece in pieces:
            self._enqueue(side, piece)
        return True

    def inject(self, side: int, data: bytes) -> None:
        """The relay's own bytes, towards the far end of direction ``side``."""
        self._enqueue(side, data)

    def close_circuit(self, reason: str) -> None:
        """The relay ends the circuit (a limit, its own shutdown): both ends are told."""
        for side in (0, 1):
            self._enqueue(side, CLOSE, reason)

    def _closed(self, side: int, notify: bool) -> None:
        self.notified.append((side, notify))
        if notify:  # the shell sends CircuitClose; the relay tells the other end
            self._enqueue(side, CLOSE, "peer closed the circuit")

    def _enqueue(self, side: int, item: object, reason: str = "") -> None:
        pipe = self.pipes[side]
        if isinstance(item, bytes):
            pipe.in_flight += len(item)
            pipe.peak = max(pipe.peak, pipe.in_flight)
        else:
            item = (CLOSE, reason)
        pipe.queue.append((self.loop.time() + self.latency, item))
        self._schedule(side)

    def _schedule(self, side: int) -> None:
        pipe = self.pipes[side]
        if pipe.queue and not pipe.scheduled:
            pipe.scheduled = True
            self.loop.call_at(pipe.queue[0][0], self._pump, side)

    def _pump(self, side: int) -> None:
        pipe = self.pipes[side]
        pipe.scheduled = False
        target = self.ends[1 - side]
        now = self.loop.time()
        while pipe.queue and pipe.queue[0][0] <= now:
            _, item = pipe.queue.popleft()
            if isinstance(item, bytes):
                pipe.in_flight -= len(item)
                target.feed(item)
                self.peak_inbound = max(self.peak_inbound, target.inbound_buffered)
            else:
                assert isinstance(item, tuple)
                target.remote_closed(item[1])
        if self._room(side):
            self.ends[side].writable()
        self._schedule(side)


def run_relayed(
    main: Callable[[], Coroutine[Any, Any, None]],
    loop_factory: LoopFactory,
    timeout: float = 15.0,
) -> None:
    """``p2p.testing.run``, then abort every stream still open and let the TLS layer see it
    (so no writer is left unclosed when the loop goes away)."""

    async def wrapped() -> None:
        try:
            await main()
        finally:
            for relay in LIVE:
                for writer in relay.writers:
                    writer.transport.abort()
                for end in relay.ends:
                    end.abort()
            LIVE.clear()
            for _ in range(3):
                await asyncio.sleep(0)

    run(wrapped(), timeout=timeout, loop_factory=loop_factory)


def roles(first: Identity, second: Identity) -> tuple[str, str]:
    return tls_role(first.public_key, second.public_key), tls_role(
        second.public_key, first.public_key
    )


async def handshake(
    relay: FakeRelay,
    a: Identity = A,
    b: Identity = B,
    *,
    a_expects: Identity | None = None,
    b_expects: Identity | None = None,
    timeout: float = 5.0,
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | BaseException]:
    """Both ends' ``open_relayed_tls``, run together; results or exceptions, a then b."""
    role_a, role_b = roles(a, b)
    results = await asyncio.gather(
        open_relayed_tls(
            relay.a,
            "client" if role_a == "client" else "server",
            *CONTEXTS[a.public_key],
            (a_expects or b).public_key,
            timeout,
        ),
        open_relayed_tls(
            relay.b,
            "client" if role_b == "client" else "server",
            *CONTEXTS[b.public_key],
            (b_expects or a).public_key,
            timeout,
        ),
        return_exceptions=True,
    )
    relay.writers += [r[1] for r in results if not isinstance(r, BaseException)]
    return list(results)


def pairs(
    results: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | BaseException],
) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], ...]:
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return tuple(r for r in results if not isinstance(r, BaseException))


async def read_all(
    reader: asyncio.StreamReader, size: int | None = None, timeout: float = 5.0
) -> tuple[bytes, BaseException | None]:
    """Read until ``size`` bytes, EOF or an error; (bytes read, the error if any)."""
    chunks: list[bytes] = []
    got = 0
    try:
        async with asyncio.timeout(timeout):
            while size is None or got < size:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                chunks.append(data)
                got += len(data)
    except (OSError, EOFError) as exc:
        return b"".join(chunks), exc
    return b"".join(chunks), None


# -- (1) the link works, and memory stays bounded -------------------------------------------


def test_tls_link_through_relay_carries_8mib_each_way(loop_factory: LoopFactory) -> None:
    size = 8 * MiB
    rng = random.Random(7)
    up, down = rng.randbytes(size), rng.randbytes(size)

    async def pump(writer: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(0, len(data), 300_000):
            writer.write(data[i : i + 300_000])
            await writer.drain()

    async def main() -> None:
        relay = FakeRelay(latency=0.001, resplit=random.Random(1))
        (ra, wa), (rb, wb) = pairs(await handshake(relay))
        ssl_a = wa.get_extra_info("ssl_object")
        assert isinstance(ssl_a, ssl.SSLObject) and ssl_a.version() == "TLSv1.3"
        assert ssl_a.server_side == (roles(A, B)[0] == "server")
        assert wa.get_extra_info("peername") == ("relay", 0)
        results = await asyncio.gather(
            pump(wa, up), pump(wb, down), read_all(rb, size, 15), read_all(ra, size, 15)
        )
        got_up, got_down = results[2], results[3]
        assert got_up == (up, None) and got_down == (down, None)
        # bounded: the relay links' budget, a few chunks in the streams, nothing piled up
        assert relay.peak_in_flight <= relay.capacity + MAX_CIRCUIT_CHUNK
        assert relay.peak_write_buffer <= 2 * MiB
        assert relay.peak_inbound <= 4 * MiB
        assert wa.transport.get_write_buffer_size() < MiB
        wa.close()
        assert await rb.read() == b""
        await wait_until(lambda: relay.a.is_closing() and relay.b.is_closing())

    run_relayed(main, loop_factory, timeout=18)


def test_writer_drain_waits_for_the_relay_link(loop_factory: LoopFactory) -> None:
    """A relay link that never drains: ``drain()`` blocks, the stream's buffer stays put."""

    async def main() -> None:
        relay = FakeRelay()
        (_, wa), (rb, _) = pairs(await handshake(relay))
        relay.capacity = 0  # the relay link is full from now on
        block = b"x" * 65536
        accepted = 0

        async def writer() -> None:
            nonlocal accepted
            while True:
                wa.write(block)
                accepted += len(block)
                await wa.drain()

        task = asyncio.create_task(writer())
        await wait_until(lambda: relay.a.get_write_buffer_size() > 256 * 1024, timeout=30)
        for _ in range(100):  # loop turns, not seconds: a writer not stopped would go on
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the writer was stopped after a bounded amount: the stream's buffer (over its
        # high-water mark) plus the TLS layer's own
        assert accepted <= 2 * MiB
        assert 256 * 1024 < relay.a.get_write_buffer_size() <= 512 * 1024
        relay.capacity = 256 * 1024
        relay.a.writable()  # the shell: the relay link has room again
        await asyncio.wait_for(wa.drain(), 5)
        data, exc = await read_all(rb, accepted)
        assert exc is None and data == b"x" * accepted

    run_relayed(main, loop_factory)


def test_a_reader_that_stops_is_cut_off_not_buffered_forever(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        relay = FakeRelay(max_inbound=MiB)
        (_, wa), (rb, _) = pairs(await handshake(relay))

        async def flood() -> None:
            while True:
                wa.write(b"y" * 65536)
                await wa.drain()
                await asyncio.sleep(0)  # like any producer: drain() alone need not yield

        with pytest.raises((ConnectionError, OSError)):
            await asyncio.wait_for(flood(), 10)
        assert relay.b.close_reason is not None and "receive buffer" in relay.b.close_reason
        assert relay.peak_inbound <= MiB + MAX_CIRCUIT_CHUNK
        with pytest.raises(CircuitLost):
            while await rb.read(65536):
                pass

    run_relayed(main, loop_factory)


# -- (2)(3) a relay that alters or injects bytes ----------------------------------------------


@pytest.mark.parametrize("where", [0, 100, -1], ids=["first-byte", "middle", "last-byte"])
def test_flipped_byte_after_handshake_is_an_error_not_data(
    loop_factory: LoopFactory, where: int
) -> None:
    armed = False

    def flip(side: int, index: int, data: bytes) -> bytes:
        nonlocal armed
        if not armed or side != 0:
            return data
        armed = False
        i = where % len(data)
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]

    async def main() -> None:
        nonlocal armed
        relay = FakeRelay(tamper=flip)
        (_, wa), (rb, _) = pairs(await handshake(relay))
        wa.write(b"first, intact")
        assert await rb.readexactly(13) == b"first, intact"
        armed = True
        payload = bytes(range(256)) * 400
        wa.write(payload)
        data, exc = await read_all(rb, len(payload))
        # the records before the altered one are genuine; nothing after it is delivered
        assert len(data) < len(payload) and payload.startswith(data)
        assert isinstance(exc, ssl.SSLError | ConnectionError), exc
        await wait_until(lambda: relay.a.is_closing(), what="the sender's circuit closed")

    run_relayed(main, loop_factory)


@pytest.mark.parametrize("victim", ["client", "server"])
def test_tampering_with_the_handshake_fails_it(loop_factory: LoopFactory, victim: str) -> None:
    side = roles(A, B).index(victim)

    def flip(direction: int, index: int, data: bytes) -> bytes:
        if direction != side or index != 0:
            return data
        i = len(data) // 2
        return data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :]

    async def main() -> None:
        relay = FakeRelay(tamper=flip)
        results = await handshake(relay, timeout=3)
        for r in results:
            assert isinstance(r, RelayedHandshakeError), r
        assert relay.a.is_closing() and relay.b.is_closing()

    run_relayed(main, loop_factory)


@pytest.mark.parametrize(
    "junk",
    [
        b"\x17\x03\x03\x00\x20" + bytes(32),  # an application-data record of its own
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x15\x03\x03\x00\x02\x01\x00",  # a forged close_notify alert, in the clear
    ],
    ids=["fake-record", "plaintext", "fake-alert"],
)
def test_injected_bytes_are_an_error_not_data(loop_factory: LoopFactory, junk: bytes) -> None:
    async def main() -> None:
        relay = FakeRelay()
        (_, wa), (rb, _) = pairs(await handshake(relay))
        wa.write(b"before")
        assert await rb.readexactly(6) == b"before"
        relay.inject(0, junk)
        wa.write(b"after")
        data, exc = await read_all(rb, 5)
        assert data == b""
        assert isinstance(exc, ssl.SSLError | ConnectionError), exc

    run_relayed(main, loop_factory)


# -- (4) the pin ----------------------------------------------------------------------------


def test_a_relay_routing_to_another_key_is_refused(loop_factory: LoopFactory) -> None:
    """The relay connects A's circuit "to B" to C instead: A's pin refuses C."""

    async def main() -> None:
        relay = FakeRelay()
        result_a, result_c = await handshake(relay, A, C, a_expects=B)
        assert isinstance(result_a, PeerAuthError), result_a
        assert C.short_id in str(result_a) and B.short_id in str(result_a)
        assert relay.a.is_closing()
        if not isinstance(result_c, BaseException):  # C's handshake may have completed
            data, _ = await read_all(result_c[0])
            assert data == b""

    run_relayed(main, loop_factory)


@pytest.mark.parametrize("wrong_side", [0, 1])
def test_wrong_expected_key_is_refused_in_either_role(
    loop_factory: LoopFactory, wrong_side: int
) -> None:
    async def main() -> None:
        relay = FakeRelay()
        pins: dict[str, Identity] = {("a_expects", "b_expects")[wrong_side]: C}
        results = await handshake(relay, **pins)  # type: ignore[arg-type]
        assert isinstance(results[wrong_side], PeerAuthError), results[wrong_side]
        other = results[1 - wrong_side]
        if not isinstance(other, BaseException):
            data, _ = await read_all(other[0])
            assert data == b""

    run_relayed(main, loop_factory)


# -- (5) the circuit goes away ----------------------------------------------------------------


def test_circuit_close_gives_eof_after_the_data(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        relay = FakeRelay(latency=0.01)
        (ra, wa), (rb, wb) = pairs(await handshake(relay))
        wa.write(b"last words")
        relay.close_circuit("DURATION_LIMIT")  # queued behind the data, as on the link
        assert await read_all(rb) == (b"last words", None)
        assert await read_all(ra) == (b"", None)
        assert relay.a.close_reason == relay.b.close_reason == "DURATION_LIMIT"
        await wait_until(lambda: len(relay.notified) == 2)
        assert sorted(relay.notified) == [(0, False), (1, False)]  # nobody re-closes it
        wb.write(b"into the void")  # no error, no hang

    run_relayed(main, loop_factory)


def test_lost_relay_link_is_connection_lost(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        relay = FakeRelay()
        (ra, wa), _ = pairs(await handshake(relay))
        relay.pipes[0].cut = True  # the link to the relay is gone: send_chunk says False
        wa.write(b"lost")
        data, exc = await read_all(ra)
        assert data == b"" and isinstance(exc, CircuitLost), exc
        assert "relay is gone" in str(exc)
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(wa.drain(), 1)
        await wait_until(lambda: relay.notified == [(0, False)])

    run_relayed(main, loop_factory)


@pytest.mark.parametrize("when", ["before", "during"])
def test_circuit_closed_around_the_handshake_fails_fast(
    loop_factory: LoopFactory, when: str
) -> None:
    async def main() -> None:
        relay = FakeRelay(latency=0.05)
        if when == "before":
            relay.a.remote_closed("TARGET_REFUSED")
            relay.b.remote_closed("TARGET_REFUSED")
        else:
            relay.loop.call_later(0.02, relay.close_circuit, "CLOSED")
        # Fast means "not at the handshake timeout": one far beyond run_relayed's own
        # needs no clock to tell them apart.
        results = await handshake(relay, timeout=120)
        assert all(isinstance(r, RelayedHandshakeError) for r in results), results

    run_relayed(main, loop_factory)


def test_a_relay_that_drops_everything_times_out(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        relay = FakeRelay()
        relay.drop = True
        results = await handshake(relay, timeout=0.3)
        assert all(isinstance(r, RelayedHandshakeError) for r in results), results
        # The first side to time out closes its end; under load the other side can see
        # that reset before its own timer fires. At least one must have timed out.
        assert any("timed out" in str(r) for r in results), results
        assert relay.a.is_closing() and relay.b.is_closing()

    run_relayed(main, loop_factory)


# -- the transport's Link over a relayed stream -------------------------------------------------


@pytest.mark.parametrize("graceful", [False, True], ids=["abort", "shutdown"])
def test_link_runs_over_a_relayed_stream(loop_factory: LoopFactory, graceful: bool) -> None:
    config = TransportConfig("127.0.0.1", 0, keepalive_interval=0.05, keepalive_timeout=2.0)
    log = logging.getLogger("test.relayed")

    async def main() -> None:
        relay = FakeRelay(latency=0.001, resplit=random.Random(3))
        (ra, wa), (rb, wb) = pairs(await handshake(relay))
        got: dict[bytes, list[bytes]] = {A.public_key: [], B.public_key: []}
        stats = {A.public_key: PeerStats(), B.public_key: PeerStats()}
        closed: dict[bytes, str] = {}

        def make(
            me: Identity, peer: Identity, r: asyncio.StreamReader, w: asyncio.StreamWriter
        ) -> Link:
            return Link(
                key=peer.public_key,
                direction="outbound" if roles(me, peer)[0] == "client" else "inbound",
                reader=r,
                writer=w,
                config=config,
                stats=stats[me.public_key],
                on_frame=lambda key, payload: got[me.public_key].append(payload),
                on_closed=lambda link, reason, error: closed.__setitem__(me.public_key, reason),
                logger=log,
            )

        link_a, link_b = make(A, B, ra, wa), make(B, A, rb, wb)
        assert link_a.remote_addr == ("relay", 0)
        link_a.start()
        link_b.start()
        big = random.Random(5).randbytes(3 * MiB)
        frames = [b"a%d" % i for i in range(200)] + [big]
        for f in frames:
            link_a.enqueue(encode_frame(FrameKind.DATA, f))
            link_b.enqueue(encode_frame(FrameKind.DATA, f[::-1]))
        await wait_until(
            lambda: len(got[A.public_key]) == len(got[B.public_key]) == len(frames), 10
        )
        assert got[B.public_key] == frames
        assert got[A.public_key] == [f[::-1] for f in frames]
        await wait_until(lambda: stats[A.public_key].rtt_ms is not None, what="a PONG came back")
        if graceful:  # TLS close_notify both ways, then the circuit is closed
            # B answered: a shutdown that waited for its timeout would outlast run_relayed's
            await link_a.shutdown(120)
            # A's reader may see B's close_notify first, or a PING B sent before it saw
            # A's close_notify (OpenSSL: application data after close notify): the same
            # races as on a direct link; either way A's link is down and B's closes cleanly
            assert A.public_key in closed
        else:
            link_a.close("test over", error=False)
            assert closed[A.public_key] == "test over"
        await wait_until(lambda: B.public_key in closed, what="B's link closed")
        assert closed[B.public_key] == "peer closed the connection"
        await asyncio.gather(link_a.wait_tasks(), link_b.wait_tasks())
        await wait_until(lambda: relay.a.is_closing() and relay.b.is_closing())
        await wait_until(lambda: len(relay.notified) == 2)
        # an abort: A sends CircuitClose, B learns it from the relay; a graceful close may
        # end on both sides at once (both send it, the relay ignores the second)
        notifies = sorted(notify for _, notify in relay.notified)
        assert notifies == [False, True] or (graceful and notifies == [True, True])

    run_relayed(main, loop_factory)
