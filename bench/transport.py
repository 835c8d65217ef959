"""Peer-link throughput on loopback: the p2p transport next to plain asyncio TCP.

Two processes, so that sender and receiver each get a core of a 2-core machine: the
receiver runs in a spawned child, the sender in this process. For each stack (the
``p2p`` transport over TLS 1.3; plain asyncio TCP with the same framing and the same
write coalescing, no TLS), each event loop (asyncio, uvloop) and each frame size (1 KiB,
64 KiB) the sender pushes frames as fast as back-pressure allows; the receiver counts
DATA payload bytes and frames over a window that starts after a short warm-up. MB is
10**6 bytes of payload (frame headers not counted). The transport's inbound rate limits
are raised for the run (the defaults would cap 1 KiB frames at 200k frames/s).
``receiver_cpu_s`` is the receiver's CPU time inside the window; ``sender_cpu_s`` is the
sender process's CPU time for its whole run (connect, warm-up, window, stop).

Run from the repository root:  python bench/transport.py [--duration 5] [--quick]
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2p.framing import FrameDecoder, FrameKind, encode_frame
from p2p.identity import Identity
from p2p.tls import client_context, server_context
from p2p.transport import PeerTransport, TransportConfig

# The smaller key dials (transport rule), so the sender gets the smaller one.
SENDER, RECEIVER = sorted(
    (Identity.from_seed(bytes([i]) * 32) for i in (1, 2)), key=lambda i: i.public_key
)
STACKS = ("p2p-tls13", "streams-tls13", "plain-tcp")
WARMUP_S = 0.5
COALESCE = 256 * 1024
BENCH_LIMITS: dict[str, Any] = {
    "rate_bytes_per_s": 1e12,
    "rate_frames_per_s": 1e9,
    "send_queue_bytes": 8 * 1024 * 1024,
}


def run_on(loop_name: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh loop of the named kind (the benchmark picks the policy)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


class Meter:
    """Counts payload bytes and frames; reports a window after the warm-up."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.bytes = 0
        self.frames = 0
        self.done: asyncio.Future[dict[str, float]] = asyncio.get_running_loop().create_future()
        self._started = False

    def add(self, size: int) -> None:
        self.bytes += size
        self.frames += 1
        if not self._started:
            self._started = True
            asyncio.get_running_loop().call_later(WARMUP_S, self._open)

    def _open(self) -> None:
        b0, f0, t0, c0 = self.bytes, self.frames, time.perf_counter(), time.process_time()

        def close() -> None:
            dt = time.perf_counter() - t0
            if not self.done.done():
                self.done.set_result(
                    {
                        "seconds": dt,
                        "bytes": self.bytes - b0,
                        "frames": self.frames - f0,
                        "receiver_cpu_s": time.process_time() - c0,
                    }
                )

        asyncio.get_running_loop().call_later(self.duration, close)


# -- receiver (child process) -----------------------------------------------------------


async def _until_told_to_stop(conn: Connection) -> None:
    """Keep the receiver up until the sender has stopped (so the sender sees no error)."""
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _receive_p2p(conn: Connection, duration: float) -> None:
    meter = Meter(duration)
    transport = PeerTransport(
        RECEIVER,
        TransportConfig("127.0.0.1", 0, **BENCH_LIMITS),
        {},
        {SENDER.public_key},
        lambda _key, payload: meter.add(len(payload)),
    )
    await transport.start()
    conn.send(transport.listen_address)
    conn.send(await meter.done)
    await _until_told_to_stop(conn)
    await transport.close()


async def _receive_tcp(conn: Connection, duration: float, tls: bool) -> None:
    meter = Meter(duration)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(16 * 1024 * 1024)
        try:
            while data := await reader.read(256 * 1024):
                for _kind, payload in decoder.feed(data):
                    meter.add(len(payload))
        except (OSError, asyncio.CancelledError):
            pass  # the sender went away, or the receiver is shutting down
        writer.close()

    server = await asyncio.start_server(
        serve,
        "127.0.0.1",
        0,
        limit=1024 * 1024,
        ssl=server_context(RECEIVER) if tls else None,
    )
    conn.send(server.sockets[0].getsockname()[:2])
    conn.send(await meter.done)
    await _until_told_to_stop(conn)
    server.close()


def receiver_main(conn: Connection, stack: str, loop_name: str, duration: float) -> None:
    if stack == "p2p-tls13":
        run_on(loop_name, _receive_p2p(conn, duration))
    else:
        run_on(loop_name, _receive_tcp(conn, duration, tls=stack == "streams-tls13"))


# -- sender (this process) --------------------------------------------------------------


async def _send_p2p(address: tuple[str, int], size: int, stop: asyncio.Event) -> None:
    transport = PeerTransport(
        SENDER,
        TransportConfig("127.0.0.1", 0, **BENCH_LIMITS),
        {RECEIVER.public_key: address},
        set(),
        lambda _k, _p: None,
    )
    await transport.start()
    try:
        async with asyncio.timeout(10):
            while RECEIVER.public_key not in transport.connected():
                await asyncio.sleep(0.005)
        payload = os.urandom(size)
        while not stop.is_set():
            await transport.send_wait(RECEIVER.public_key, payload)
    finally:
        await transport.close()


async def _send_tcp(address: tuple[str, int], size: int, stop: asyncio.Event, tls: bool) -> None:
    ctx = client_context(SENDER) if tls else None
    _, writer = await asyncio.open_connection(
        *address, ssl=ctx, server_hostname="" if tls else None
    )
    payload = os.urandom(size)
    per_write = max(1, COALESCE // (size + 5))
    try:
        while not stop.is_set():
            writer.write(
                b"".join([encode_frame(FrameKind.DATA, payload) for _ in range(per_write)])
            )
            await writer.drain()
    finally:
        writer.close()


async def _drive(conn: Connection, stack: str, size: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    address = tuple(await loop.run_in_executor(None, conn.recv))
    stop = asyncio.Event()
    peer = (str(address[0]), int(address[1]))
    c0 = time.process_time()
    if stack == "p2p-tls13":
        task = asyncio.create_task(_send_p2p(peer, size, stop))
    else:
        task = asyncio.create_task(_send_tcp(peer, size, stop, tls=stack == "streams-tls13"))
    result: dict[str, float] = await loop.run_in_executor(None, conn.recv)
    result["sender_cpu_s_total"] = time.process_time() - c0
    stop.set()
    await asyncio.wait_for(task, 10)
    conn.send("stop")
    return result


def measure(stack: str, loop_name: str, size: int, duration: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=receiver_main, args=(child, stack, loop_name, duration))
    proc.start()
    try:
        raw = run_on(loop_name, _drive(parent, stack, size))
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    seconds = raw["seconds"]
    return {
        "stack": stack,
        "loop": loop_name,
        "frame_payload_bytes": size,
        "MB_per_s": round(raw["bytes"] / seconds / 1e6, 1),
        "frames_per_s": round(raw["frames"] / seconds),
        "window_s": round(seconds, 2),
        "receiver_cpu_s": round(raw["receiver_cpu_s"], 2),
        "sender_cpu_s": round(raw["sender_cpu_s_total"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="1 s per measurement")
    args = parser.parse_args()
    duration = 1.0 if args.quick else args.duration
    load_before = os.getloadavg()[0]
    results = [
        measure(stack, loop_name, size, duration)
        for size in (1024, 64 * 1024)
        for loop_name in ("asyncio", "uvloop")
        for stack in STACKS
    ]
    doc = {
        "benchmark": "bench/transport.py",
        "setup": "two processes on loopback (receiver: spawned child, sender: parent)",
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "cpus": os.cpu_count(),
        "duration_s": duration,
        "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "MB": "10**6 payload bytes",
        "results": results,
    }
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
