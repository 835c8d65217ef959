"""Helpers for tests that drive the real transport over loopback.

Shipped with the package (not under ``tests/``) so that the node's end-to-end tests can
reuse them, e.g. ``raw_dial`` to play a Byzantine peer that holds a valid key but
speaks garbage over an authenticated TLS link.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from p2p.config import TransportConfig
from p2p.identity import Identity
from p2p.tls import check_pin, client_context, peer_public_key
from p2p.transport import PeerTransport

LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None
"""What ``asyncio.Runner`` takes: ``None`` (the default loop) or e.g. ``uvloop.new_event_loop``."""

FAST_TIMINGS: dict[str, Any] = {
    "reconnect_initial": 0.02,
    "reconnect_max": 0.2,
    "handshake_timeout": 3.0,
    "retire_timeout": 3.0,
}


def run(
    coro: Coroutine[Any, Any, None],
    timeout: float = 15.0,
    loop_factory: LoopFactory = None,
) -> None:
    """Run ``coro`` to completion within ``timeout`` on a new loop from ``loop_factory``."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.wait_for(coro, timeout))


def loopback_config(port: int = 0, **overrides: Any) -> TransportConfig:
    """A config on 127.0.0.1 with reconnection fast enough for tests."""
    return TransportConfig("127.0.0.1", port, **{**FAST_TIMINGS, **overrides})


@dataclass
class Recorder:
    """Collects what a transport reports through its callbacks."""

    frames: list[tuple[bytes, bytes]] = field(default_factory=list)
    ups: list[bytes] = field(default_factory=list)
    downs: list[bytes] = field(default_factory=list)

    def on_frame(self, key: bytes, payload: bytes) -> None:
        self.frames.append((key, payload))

    def on_connected(self, key: bytes) -> None:
        self.ups.append(key)

    def on_disconnected(self, key: bytes) -> None:
        self.downs.append(key)

    def payloads(self, key: bytes) -> list[bytes]:
        return [p for k, p in self.frames if k == key]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` every few milliseconds; ``TimeoutError`` naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.005)


async def raw_dial(
    identity: Identity, address: tuple[str, int], expected: bytes | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An authenticated TLS 1.3 connection as ``identity``, without any transport logic.

    The caller writes raw bytes (frames or garbage) and reads raw bytes back. ``expected``
    pins the server's key like the transport's dialer does.
    """
    reader, writer = await asyncio.open_connection(
        address[0], address[1], ssl=client_context(identity), server_hostname=""
    )
    if expected is not None:
        try:
            check_pin(peer_public_key(writer.get_extra_info("ssl_object")), expected=expected)
        except BaseException:
            writer.transport.abort()
            raise
    return reader, writer


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes the connection (EOF, reset or TLS alert)."""
    chunks: list[bytes] = []
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await reader.read(65536)
            except (OSError, EOFError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def running(
    identity: Identity,
    *,
    peers: Mapping[bytes, tuple[str, int]] | None = None,
    allowed: Collection[bytes] | None = None,
    port: int = 0,
    **overrides: Any,
) -> AsyncIterator[tuple[PeerTransport, Recorder]]:
    """A started transport on loopback with a ``Recorder`` on its callbacks; closed on exit."""
    rec = Recorder()
    transport = PeerTransport(
        identity,
        loopback_config(port, **overrides),
        peers or {},
        allowed,
        rec.on_frame,
        rec.on_connected,
        rec.on_disconnected,
    )
    await transport.start()
    try:
        yield transport, rec
    finally:
        await transport.close()


@dataclass
class DhtNode:
    """One in-process DHT node on its own loopback transport (tests, benchmarks)."""

    identity: Identity
    transport: PeerTransport
    dht: Any  # p2p.dht_service.DhtService (imported lazily: testing stays light)

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    @property
    def info(self) -> Any:
        """Its ``PeerInfo``: what others bootstrap from."""
        return self.dht.self_info


async def start_dht_node(
    seed: bytes, bootstrap: Any, config: Any, *, server: bool = True
) -> DhtNode:
    """A started ``DhtService`` in open mode on 127.0.0.1, identity derived from ``seed``.

    ``bootstrap`` is a list of ``p2p.dht.peer.PeerInfo``; ``config`` a ``DhtConfig``;
    ``server=False`` makes it a client-mode node.
    """
    from p2p.dht.peer import PeerInfo
    from p2p.dht_service import DhtService

    identity = Identity.from_seed(hashlib.sha256(seed).digest())
    transport = PeerTransport(identity, loopback_config(), {}, None, lambda _k, _p: None)
    await transport.start()
    info = PeerInfo(identity.public_key, (transport.listen_address,))
    dht = DhtService(transport, info, config, bootstrap=bootstrap, server_mode=lambda: server)
    dht.start()
    return DhtNode(identity, transport, dht)


async def stop_dht_node(node: DhtNode) -> None:
    await node.dht.close()
    await node.transport.close()
