"""Application services over the mesh: unary, server and client streams, errors,
deadlines, cancellation, limits; between two members of an in-process committee."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import msgpack
import pytest

from dagrider import (
    InvalidArgument,
    PeerUnreachable,
    RemoteError,
    Service,
    ServiceError,
    ServiceTimeout,
    client_stream,
    current_peer,
    local_network,
    server_stream,
    unary,
)
from dagrider.sdk.errors import NotRunning
from dagrider.sdk.service_client import _Remote
from dagrider.sdk.services import WIRE_METHODS, ServiceLimits, unpack
from p2p.testing import wait_until


class Calc(Service):
    name = "calc"

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        """``slow`` is running: the call reached the handler (tests wait on it)."""
        self.callers: list[bytes] = []

    @unary
    async def add(self, a: int, b: int = 0) -> int:
        self.callers.append(current_peer())
        return a + b

    @unary
    async def fail(self, code: str) -> None:
        raise ServiceError(code, "as asked")

    @unary
    async def crash(self) -> None:
        raise RuntimeError("secret detail")

    @unary
    async def slow(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    @server_stream
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @server_stream
    async def forever(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                yield b"x" * 1000
        finally:
            self.cancelled.set()

    @server_stream
    async def broken(self) -> AsyncIterator[int]:
        yield 1
        raise ServiceError("half-way", "stopped after one")

    @client_stream
    async def total(self, items: AsyncIterator[int], scale: int = 1) -> int:
        return scale * sum([i async for i in items])

    @client_stream
    async def first(self, items: AsyncIterator[int]) -> int:
        async for i in items:
            return i
        raise ServiceError("empty", "no items")


async def _items(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


def test_calls_streams_and_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            a, b = net.nodes[0], net.nodes[1]
            calc = Calc()
            b.services.register(calc)
            remote = a.services.client(b.key, Calc, timeout=5)
            assert await remote.add(2, b=3) == 5
            assert calc.callers == [a.key]  # the caller's authenticated key
            assert [i async for i in remote.count(300)] == list(range(300))
            assert [i async for i in remote.count(0)] == []
            assert await remote.total(_items(1000), scale=2) == 2 * sum(range(1000))
            assert await remote.first(_items(10_000)) == 0  # early return, rest dropped
            with pytest.raises(RemoteError) as err:
                await remote.first(_items(0))
            assert err.value.code == "empty"
            with pytest.raises(RemoteError) as err:
                await remote.fail("not-found")
            assert (err.value.code, err.value.message) == ("not-found", "as asked")
            with pytest.raises(RemoteError) as err:
                await remote.crash()
            assert err.value.code == "internal" and "secret" not in str(err.value)
            with pytest.raises(RemoteError) as err:
                await remote.add("a", 1)  # type: ignore[arg-type]  # str + int fails remotely
            assert err.value.code == "internal"
            with pytest.raises(RemoteError) as err:
                await remote.add(1, 2, 3)  # type: ignore[call-arg]  # does not bind: refused before running
            assert err.value.code == "bad-request"
            got = []
            with pytest.raises(RemoteError) as err:
                async for i in remote.broken():
                    got.append(i)
            assert got == [1] and err.value.code == "half-way"
            # a service the peer does not run
            with pytest.raises(RemoteError) as err:
                await a.services.client(net.nodes[2].key, Calc).add(1)
            assert err.value.code == "unknown-service"
            # after unregister
            b.services.unregister("calc")
            with pytest.raises(RemoteError) as err:
                await remote.add(1)
            assert err.value.code == "unknown-service"
            assert b.services.stats()["streams"] == 0

    asyncio.run(scenario())


def test_deadlines_and_cancellation_reach_the_server(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            a, b = net.nodes[0], net.nodes[1]
            calc = Calc()
            b.services.register(calc)
            with pytest.raises(ServiceTimeout):
                await a.services.client(b.key, Calc, timeout=0.2).slow()
            await asyncio.wait_for(calc.cancelled.wait(), 30)  # the deadline travelled
            calc.cancelled.clear()
            calc.started.clear()
            call = asyncio.create_task(a.services.client(b.key, Calc, timeout=30).slow())
            await asyncio.wait_for(calc.started.wait(), 30)  # the call is being served
            call.cancel()
            await asyncio.wait_for(calc.cancelled.wait(), 30)  # so did the cancel
            calc.cancelled.clear()
            remote = a.services.client(b.key, Calc, timeout=30)
            stream = remote.forever()
            assert len(await anext(stream)) == 1000
            await stream.aclose()  # the reader stops: the producer is cancelled
            await asyncio.wait_for(calc.cancelled.wait(), 30)
            await wait_until(lambda: b.services.stats()["streams"] == 0, 30, "stream forgotten")

    asyncio.run(scenario())


def test_stream_limit_per_peer(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            a, b = net.nodes[0], net.nodes[1]
            b.services.limits = ServiceLimits(max_streams_per_peer=2)
            b.services.register(Calc())
            remote = a.services.client(b.key, Calc, timeout=30)
            s1, s2, s3 = remote.forever(), remote.forever(), remote.forever()
            await anext(s1)
            await anext(s2)
            with pytest.raises(RemoteError) as err:
                await anext(s3)
            assert err.value.code == "too-many-streams"
            # a second peer has its own budget
            other = net.nodes[2].services.client(b.key, Calc, timeout=30)
            assert [i async for i in other.count(3)] == [0, 1, 2]
            await s1.aclose()
            await s2.aclose()

    asyncio.run(scenario())


def test_bad_input_is_refused_locally(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            a, b = net.nodes[0], net.nodes[1]
            with pytest.raises(InvalidArgument, match="service"):
                a.services.register(object())  # type: ignore[arg-type]

            class NoName(Service):
                @unary
                async def m(self) -> None: ...

            with pytest.raises(InvalidArgument, match="name"):
                a.services.register(NoName())

            class Bad(Service):
                name = "Bad Name"

                @unary
                async def m(self) -> None: ...

            with pytest.raises(InvalidArgument):
                a.services.register(Bad())
            a.services.register(Calc())
            with pytest.raises(InvalidArgument, match="already"):
                a.services.register(Calc())
            with pytest.raises(InvalidArgument, match="peer"):
                a.services.client(b"short", Calc)
            with pytest.raises(InvalidArgument, match="timeout"):
                a.services.client(b.key, Calc, timeout=0)
            remote = a.services.client(b.key, Calc)
            with pytest.raises(InvalidArgument, match="payload"):
                await remote.add({1, 2})  # type: ignore[arg-type]  # a set is not msgpack
            with pytest.raises(PeerUnreachable):
                await a.services.client(bytes(32), Calc).add(1)
            with pytest.raises(TypeError):
                unary(lambda: None)

    asyncio.run(scenario())


def test_payload_decoder_refuses_extension_types() -> None:
    """Never unpickle, never build objects: an ext type (how a pickle or a custom
    object would travel) is refused, as are non-string map keys."""
    with pytest.raises(ValueError):
        unpack(msgpack.packb(msgpack.ExtType(1, b"\x80\x04")), 1024)
    with pytest.raises(ValueError):
        unpack(msgpack.packb({1: 2}), 1024)
    with pytest.raises(ValueError):
        unpack(b"\x92\x01", 1024)  # truncated
    with pytest.raises(ValueError):
        unpack(msgpack.packb(b"x" * 2000), 1024)
    assert unpack(msgpack.packb({"a": [1, b"x", None]}, use_bin_type=True), 1024) == {
        "a": [1, b"x", None]
    }


def test_wire_methods_are_namespaced() -> None:
    """Application calls share the DHT's channel under ``app.*`` names; the service and
    method names travel in the body, so no application name reaches the method table."""
    assert all(m.startswith("app.") for m in WIRE_METHODS)
    assert len(set(WIRE_METHODS)) == len(WIRE_METHODS)


def test_per_peer_limits_refuse_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            a, b, c = net.nodes[0], net.nodes[1], net.nodes[2]
            calc = Calc()
            b.services.register(calc)
            b.services.limits = ServiceLimits(max_inflight_per_peer=1)
            slow = asyncio.ensure_future(a.services.client(b.key, Calc, timeout=30).slow())
            await asyncio.wait_for(calc.started.wait(), 30)  # it holds a's one slot
            with pytest.raises(RemoteError) as err:
                await a.services.client(b.key, Calc).add(1)
            assert err.value.code == "overloaded"
            assert await c.services.client(b.key, Calc).add(1) == 1  # c has its own share
            slow.cancel()
            await asyncio.wait_for(calc.cancelled.wait(), 30)
            b.services.limits = ServiceLimits(requests_per_s=0.01, burst=2)
            remote = a.services.client(b.key, Calc)
            assert await remote.add(1) == 1
            assert await remote.add(2) == 2
            with pytest.raises(RemoteError) as err:
                await remote.add(3)
            assert err.value.code == "rate-limited"
            # the DHT on the shared channel is not starved by that
            assert await a.records.put("still-works", b"v", ttl=60) >= 1
            # too large for one call: refused before sending
            b.services.limits = ServiceLimits()
            with pytest.raises(InvalidArgument, match="payload"):
                await remote.add(b"x" * 70_000)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument):
                ServiceLimits(stream_window=0)

    asyncio.run(scenario())


def test_shared_endpoint_refuses_a_second_handler_for_a_method(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            mesh = net.nodes[0]._runtime().mesh
            assert mesh is not None
            endpoint = mesh.dht.rpc

            async def handler(peer: bytes, body: bytes) -> bytes:
                return body

            with pytest.raises(ValueError, match="already served"):
                endpoint.add_handler(WIRE_METHODS[0], handler)
            with pytest.raises(ValueError, match="chars"):
                endpoint.add_handler("x" * 33, handler)
            endpoint.add_handler("test.echo", handler)
            endpoint.remove_handler("test.echo")
            with pytest.raises(KeyError):
                endpoint.remove_handler("test.echo")

    asyncio.run(scenario())


def test_a_stream_cancel_that_cannot_be_sent_leaves_no_coroutine_behind() -> None:
    """Found by a loaded run: a client stream ending while the node stopped made its
    best-effort cancel coroutine, which nothing awaited ("coroutine ... was never
    awaited" on the example's stderr)."""

    class Stopped:
        def spawn(self, coro: object) -> None:
            raise NotRunning("the node stopped")

    remote = _Remote(Stopped(), b"\x01" * 32, "notes", 1.0)  # type: ignore[arg-type]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        remote._cancel_later(7)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
