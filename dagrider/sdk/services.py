"""Application RPC services over the authenticated mesh.

An application declares a service as a class::

    class Kv(Service):
        name = "kv"

        @unary
        async def get(self, key: str) -> str | None: ...

        @server_stream
        async def scan(self, prefix: str) -> AsyncIterator[str]: ...

        @client_stream
        async def load(self, items: AsyncIterator[list[str]]) -> int: ...

registers an instance with ``node.services.register(Kv())`` and calls a remote peer's
with ``kv = node.services.client(peer_key, Kv)``: ``await kv.get("a")``,
``async for x in kv.scan("p")``, ``await kv.load(items)`` (an async iterable). Inside a
handler :func:`current_peer` is the caller's authenticated key.

Wire. Application calls share the mesh's RPC channel of the DHT (every mesh node
serves it, so a peer that runs no application service answers ``unknown-service``
instead of seeing a frame kind it does not know) and its :class:`p2p.rpc.RpcEndpoint`
machinery: deadlines travel with the request, cancelling a call cancels the handler,
errors come back with a code. They use six wire methods of their own, all named
``app.*`` (:data:`WIRE_METHODS`); the service and method names travel inside the body,
so no application name can collide with the node's own protocols. On top of the
channel's limits, application calls have their own per-peer rate and concurrency
limits (:class:`ServiceLimits`), so that they cannot use up the DHT's share. Arguments
and results are msgpack (nil, bool, int, float, str, bytes, lists and string-keyed
maps, nested at most 32 levels): nothing received is ever unpickled or turned into an
object other than those. Bodies are decoded by the project's strict envelope
(:mod:`p2p.strictwire`, one schema per wire method): a bad one is answered
``bad-request`` naming the part that was wrong. One call, stream batch or result
carries at most ``max_payload_bytes`` (60 KiB by default, below the channel's 64 KiB
messages); larger data goes as a stream.

Streams are pulled, so a slow reader is never flooded: server streaming is ``open``
then ``next`` calls that each return the items the producer has ready (it runs at most
``stream_window`` items ahead); client streaming is ``open``, ``push`` calls that
return once the handler's queue has room, and ``end`` that returns the handler's
result. A stream lives at most until the caller's deadline and dies with the link.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from dagrider.sdk.errors import (
    InvalidArgument,
    Unsupported,
)
from dagrider.sdk.facades import _key
from dagrider.sdk.service_api import (
    WIRE_METHODS,
    S,
    Service,
    ServiceError,
    ServiceLimits,
    _methods,
    client_stream,
    current_peer,
    pack,
    server_stream,
    unary,
    unpack,
)
from dagrider.sdk.service_client import _proxy, _Remote
from dagrider.sdk.service_server import _Server
from p2p.rpc import RpcEndpoint

__all__ = [
    "WIRE_METHODS",
    "Service",
    "ServiceError",
    "ServiceLimits",
    "Services",
    "client_stream",
    "current_peer",
    "pack",
    "server_stream",
    "unary",
    "unpack",
]


class Services:
    """The application services of one node: register local ones, call remote ones."""

    def __init__(
        self,
        runtime: Callable[[], Any],
        connect: Callable[[bytes, float], Awaitable[None]],
        limits: ServiceLimits | None = None,
    ) -> None:
        self._runtime = runtime
        self.connect = connect
        """Make a link to a peer (via the DHT); raises ``PeerUnreachable``."""
        self.limits = limits or ServiceLimits()
        """May be replaced at any time; applies from the next call on."""
        self.registered: dict[str, Service] = {}
        self._endpoint: RpcEndpoint | None = None
        self._server: _Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def register(self, service: Service) -> None:
        """Serve ``service`` to every authenticated peer (before or after start).

        :class:`~dagrider.InvalidArgument` for a bad service or method name, a class
        without marked methods, or a name already registered.
        """
        if not isinstance(service, Service):
            raise InvalidArgument("service", f"expected a Service instance, not {service!r}")
        _methods(type(service))
        if service.name in self.registered:
            raise InvalidArgument("service", f"{service.name!r} is already registered")
        self.registered[service.name] = service

    def unregister(self, name: str) -> None:
        """Stop serving ``name``; later calls are answered ``unknown-service``."""
        if self.registered.pop(name, None) is None:
            raise InvalidArgument("name", f"no service {name!r} is registered")

    def client(self, peer: bytes | str, cls: type[S], *, timeout: float = 10.0) -> S:
        """A proxy of ``cls`` whose marked methods call ``peer``'s service of the same
        name, each within ``timeout`` seconds (a whole stream, for streams).

        Without a link to the peer, a call first looks it up in the DHT and dials it
        (see :meth:`~dagrider.sdk.facades.Network.connect`). Calls raise
        :class:`~dagrider.PeerUnreachable`, :class:`~dagrider.ServiceTimeout` or
        :class:`~dagrider.RemoteError`.
        """
        key = _key(peer)
        if not isinstance(cls, type) or not issubclass(cls, Service):
            raise InvalidArgument("cls", f"expected a Service subclass, not {cls!r}")
        if not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
            raise InvalidArgument("timeout", f"{timeout!r}: expected seconds in (0, 86400]")
        methods = _methods(cls)
        return _proxy(_Remote(self, key, cls.name, float(timeout)), cls, methods)

    # -- lifecycle (called by the node) -------------------------------------------------

    def endpoint(self) -> RpcEndpoint:
        """The shared RPC endpoint; ``NotRunning`` when stopped, ``Unsupported``
        without the mesh."""
        self._runtime()  # NotRunning when stopped
        if self._endpoint is None:
            raise Unsupported("services need the mesh ([dht] enabled = true)")
        return self._endpoint

    def payload_limit(self) -> int:
        """Bytes one encoded argument list or result may have on this node's channel."""
        config = self.endpoint().config
        room = min(config.max_request_bytes, config.max_response_bytes) - 1024
        return min(self.limits.max_payload_bytes, room)

    def linked(self, peer: bytes) -> bool:
        return bool(self._runtime().transport.has_link(peer))

    def spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def attach(self) -> None:
        """Serve the wire methods on the mesh's shared channel (called by ``start``)."""
        runtime = self._runtime()
        mesh = runtime.mesh
        if mesh is None:
            return  # no mesh, no channel: calls raise Unsupported
        self._server = _Server(self)
        endpoint: RpcEndpoint = mesh.dht.rpc
        for method, handler in self._server.handlers().items():
            endpoint.add_handler(method, handler)
        self._endpoint = endpoint
        runtime.transport.subscribe(on_disconnected=self._peer_gone)

    def _peer_gone(self, peer: bytes) -> None:
        """A peer's streams end with its link; a lost link it already replaced (the new
        one is live) ends nothing: the streams' next calls go over the new link."""
        if self._server is not None and not self._runtime().transport.has_link(peer):
            self._server.peer_gone(peer)

    async def detach(self) -> None:
        """Stop serving and end the streams (called by ``stop``, before the mesh)."""
        if self._endpoint is not None:
            for method in WIRE_METHODS:
                with contextlib.suppress(KeyError):
                    self._endpoint.remove_handler(method)
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._endpoint = None
        self._server = None

    def stats(self) -> dict[str, int]:
        """The shared channel's RPC counters and the number of open streams."""
        out = dict(self._endpoint.stats()) if self._endpoint is not None else {}
        out["streams"] = len(self._server.streams) if self._server is not None else 0
        return out
