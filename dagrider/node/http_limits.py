"""The HTTP API's listening socket with a connection limit (aiohttp has none).

Every open connection costs a ``RequestHandler``, its parser and buffers; the issue this
answers saw 10,000 idle connections held for a minute. ``LimitedSite`` serves at most
``max_connections`` at once: one more is answered at once with a 503 naming the limit
and closed, without an aiohttp handler. Idle and never-finished requests are closed by
aiohttp's ``keepalive_timeout`` (the daemon sets it from ``[api] idle_timeout_ms``),
which runs from the moment a connection opens until a complete request head arrives,
and again after every response.
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

from aiohttp import web


def refusal(limit: int) -> bytes:
    """The whole HTTP/1.1 response sent to a connection over the limit."""
    body = json.dumps(
        {
            "error": f"too many connections: the API serves at most {limit} at once "
            "([api] max_connections); retry later",
            "status": 503,
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes; reads nothing."""

    def __init__(self, response: bytes) -> None:
        self._response = response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer = cast(asyncio.WriteTransport, transport)  # uvloop's is not a subclass
        writer.write(self._response)
        writer.close()


class LimitedSite(web.BaseSite):
    """``web.TCPSite`` that serves at most ``max_connections`` connections at once."""

    __slots__ = ("_host", "_max", "_port", "_refusal", "refused")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, max_connections: int) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections={max_connections} must be >= 1")
        super().__init__(runner, backlog=min(max_connections, 1024))
        self._host = host
        self._port = port
        self._max = max_connections
        self._refusal = refusal(max_connections)
        self.refused = 0
        """Connections refused so far (a metric's source)."""

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before, e.g. 0)."""
        sockets = getattr(self._server, "sockets", None)  # asyncio's or uvloop's Server
        if sockets:
            return int(sockets[0].getsockname()[1])
        return self._port

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self._runner.server
        assert server is not None
        if len(server.connections) >= self._max:
            self.refused += 1
            return _Refuse(self._refusal)
        return server()

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
