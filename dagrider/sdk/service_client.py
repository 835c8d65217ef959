"""The calling side of application services: typed proxies of a remote peer's
service, and the streams they pull or push (see :mod:`dagrider.sdk.services`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

from dagrider.sdk.errors import (
    DagriderError,
    InvalidArgument,
    NotRunning,
    PeerUnreachable,
    RemoteError,
    ServiceTimeout,
)
from dagrider.sdk.service_api import (
    BAD_REQUEST,
    UNKNOWN_METHOD,
    UNKNOWN_SERVICE,
    BodyError,
    Kind,
    S,
    decode_batch,
    decode_opened,
    pack,
    unpack,
)
from p2p.errors import PeerNotConnected
from p2p.rpc import RpcError, RpcRemoteError, RpcTimeout

if TYPE_CHECKING:
    from dagrider.sdk.services import Services

# -- client side ---------------------------------------------------------------------


class _Remote:
    """Calls of one remote peer's service; what a client proxy's methods use."""

    def __init__(self, services: Services, peer: bytes, service: str, timeout: float) -> None:
        self.services = services
        self.peer = peer
        self.service = service
        self.timeout = timeout

    async def _rpc(self, method: str, payload: object, timeout: float) -> bytes:
        """The answer's bytes (the caller decodes them as that method's answer)."""
        body = pack(payload)
        limit = self.services.payload_limit()
        if len(body) > limit + 1024:
            raise InvalidArgument("payload", f"{len(body)} bytes exceeds {limit}")
        endpoint = self.services.endpoint()
        try:
            if not self.services.linked(self.peer):
                await self.services.connect(self.peer, timeout)
            answer = await endpoint.call(self.peer, method, body, timeout=timeout)
        except RpcTimeout as exc:
            raise ServiceTimeout(str(exc)) from None
        except RpcRemoteError as exc:
            if exc.code == UNKNOWN_METHOD and exc.message == f"no method {method!r}":
                # the channel itself does not know ``app.*``: a node without the API
                raise RemoteError(
                    UNKNOWN_SERVICE, f"the peer runs no application services ({self.service})"
                ) from None
            raise RemoteError(exc.code, exc.message) from None
        except PeerNotConnected as exc:
            raise PeerUnreachable(str(exc)) from None
        except RpcError as exc:
            raise DagriderError(str(exc)) from None
        return answer

    def _value(self, answer: bytes, what: str) -> Any:
        """A result the peer sent, decoded strictly (the shared envelope)."""
        try:
            return unpack(answer, self.services.payload_limit() + 1024)
        except BodyError as exc:
            raise RemoteError(BAD_REQUEST, f"undecodable {what}: {exc}") from None

    async def unary(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        answer = await self._rpc(
            "app.call", [[self.service, method], list(args), kwargs], self.timeout
        )
        return self._value(answer, "answer")

    async def _open(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        ms = int(self.timeout * 1000)
        answer = await self._rpc(
            "app.open", [[self.service, method], list(args), kwargs, ms], self.timeout
        )
        try:
            return decode_opened(answer, 64)
        except BodyError as exc:
            raise RemoteError(BAD_REQUEST, f"open answered no stream id: {exc}") from None

    async def server_stream(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        sid = await self._open(method, args, kwargs)
        done = False
        try:
            while not done:
                left = deadline - loop.time()
                if left <= 0:
                    raise ServiceTimeout(f"{self.service}.{method}: stream deadline passed")
                answer = await self._rpc("app.next", [sid], left)
                try:
                    items, done = decode_batch(answer, self.services.payload_limit() + 1024)
                except BodyError as exc:
                    raise RemoteError(BAD_REQUEST, f"next answered a bad batch: {exc}") from None
                for raw in items:
                    try:
                        yield unpack(raw, self.services.payload_limit())
                    except BodyError as exc:
                        raise RemoteError(BAD_REQUEST, f"undecodable item: {exc}") from None
        finally:
            if not done:
                self._cancel_later(sid)

    def _cancel_later(self, sid: int) -> None:
        """Tell the server we stopped reading (best effort, never awaited by the caller)."""

        async def cancel() -> None:
            with contextlib.suppress(DagriderError):
                await self._rpc("app.cancel", [sid], 5.0)

        coro = cancel()
        try:
            self.services.spawn(coro)
        except (NotRunning, RuntimeError):  # stopping, or no loop: nothing to tell
            coro.close()  # never started: close it, or Python warns it was never awaited

    async def client_stream(
        self,
        method: str,
        items: AsyncIterable[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not isinstance(items, AsyncIterable):
            raise InvalidArgument("items", "expected an async iterable")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        sid = await self._open(method, args, kwargs)
        finished = False
        limit = self.services.payload_limit() // 2
        try:
            batch: list[Any] = []
            size = 0
            async for item in items:
                encoded = len(pack(item))
                if encoded > limit:
                    raise InvalidArgument("items", f"an item of {encoded} bytes exceeds {limit}")
                if batch and size + encoded > limit:
                    await self._rpc("app.push", [sid, batch], deadline - loop.time())
                    batch, size = [], 0
                batch.append(item)
                size += encoded
            if batch:
                await self._rpc("app.push", [sid, batch], deadline - loop.time())
            answer = await self._rpc("app.end", [sid], max(0.001, deadline - loop.time()))
            finished = True
            return self._value(answer, "answer")
        finally:
            if not finished:
                self._cancel_later(sid)


def _proxy(remote: _Remote, cls: type[S], methods: dict[str, Kind]) -> S:
    proxy = object.__new__(cls)
    for name, kind in methods.items():
        if kind == "unary":

            async def call(*args: Any, __m: str = name, **kwargs: Any) -> Any:
                return await remote.unary(__m, args, kwargs)

            setattr(proxy, name, call)
        elif kind == "server_stream":

            def stream(*args: Any, __m: str = name, **kwargs: Any) -> AsyncIterator[Any]:
                return remote.server_stream(__m, args, kwargs)

            setattr(proxy, name, stream)
        else:

            async def sink(
                items: AsyncIterable[Any], *args: Any, __m: str = name, **kw: Any
            ) -> Any:
                return await remote.client_stream(__m, items, args, kw)

            setattr(proxy, name, sink)
    return proxy
