"""Request/response RPC over real loopback transports, and its strict wire codec."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.errors import PeerNotConnected
from p2p.framing import FrameKind
from p2p.identity import Identity
from p2p.rpc import (
    Handler,
    RpcConfig,
    RpcEndpoint,
    RpcError,
    RpcFailure,
    RpcOverloaded,
    RpcRemoteError,
    RpcTimeout,
)
from p2p.rpc_wire import Cancel, ErrorReply, Reply, Request, RpcDecodeError, decode, encode
from p2p.testing import LoopFactory, run, running, wait_until
from p2p.transport import PeerTransport

A, B = sorted(
    (Identity.from_seed(bytes([60 + i]) * 32) for i in range(2)), key=lambda i: i.public_key
)
KIND = FrameKind.DHT
MiB = 1024 * 1024


async def echo(_peer: bytes, body: bytes) -> bytes:
    return body


@contextlib.asynccontextmanager
async def pair(
    handlers: Mapping[str, Handler], config: RpcConfig | None = None
) -> AsyncIterator[tuple[PeerTransport, RpcEndpoint, RpcEndpoint]]:
    """A (client) linked to B (server running ``handlers``); yields (A's transport, A, B)."""
    async with running(B) as (tb, _), running(A) as (ta, _):
        client = RpcEndpoint(ta, KIND, {}, config)
        server = RpcEndpoint(tb, KIND, handlers, config)
        await ta.connect(B.public_key, tb.listen_address, timeout=3)
        await wait_until(lambda: tb.has_link(A.public_key), what="linked")
        try:
            yield ta, client, server
        finally:
            await client.close()
            await server.close()


def test_echo_and_concurrent_calls(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with pair({"echo": echo}) as (_ta, client, server):
            assert await client.call(B.public_key, "echo", b"hi", timeout=3) == b"hi"
            bodies = [bytes([i]) * i for i in range(60)]  # under max_inflight_per_peer
            got = await asyncio.gather(
                *(client.call(B.public_key, "echo", b, timeout=5) for b in bodies)
            )
            assert got == bodies
            assert client.stats()["answers"] == 61 and client.stats()["pending"] == 0
            await wait_until(lambda: server.stats()["serving"] == 0, what="handlers forgotten")
            assert server.stats()["served"] == 61

    run(main(), loop_factory=loop_factory)


def test_large_bodies_both_ways(loop_factory: LoopFactory) -> None:
    async def blob(_peer: bytes, body: bytes) -> bytes:
        return bytes(reversed(body))

    async def main() -> None:
        config = RpcConfig(max_request_bytes=2 * MiB)
        async with pair({"blob": blob}, config) as (_ta, client, _server):
            data = bytes(range(256)) * (4 * 1024)  # 1 MiB
            results = await asyncio.gather(
                *(client.call(B.public_key, "blob", data, timeout=10) for _ in range(4))
            )
            assert all(r == bytes(reversed(data)) for r in results)

    run(main(), loop_factory=loop_factory)


def test_errors_are_answered_with_codes_and_the_link_survives(
    loop_factory: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse(_peer: bytes, _body: bytes) -> bytes:
        raise RpcFailure("not-found", "no such record")

    async def crash(_peer: bytes, _body: bytes) -> bytes:
        raise ZeroDivisionError("boom")

    async def huge(_peer: bytes, _body: bytes) -> bytes:
        return b"x" * (MiB + 1)

    async def main() -> None:
        config = RpcConfig(max_response_bytes=MiB)
        handlers = {"echo": echo, "refuse": refuse, "crash": crash, "huge": huge}
        async with pair(handlers, config) as (ta, client, server):
            for method, code in (
                ("nope", "unknown-method"),
                ("refuse", "not-found"),
                ("crash", "internal"),
                ("huge", "internal"),
            ):
                with pytest.raises(RpcRemoteError) as info:
                    await client.call(B.public_key, method, b"", timeout=3)
                assert info.value.code == code, method
            assert "exceeds" in str(info.value)
            assert "ZeroDivisionError" in caplog.text  # the crash is logged
            assert ta.has_link(B.public_key)
            assert await client.call(B.public_key, "echo", b"ok", timeout=3) == b"ok"
            assert server.stats()["refused_unknown-method"] == 1
            assert client.stats()["remote_errors"] == 4
            with pytest.raises(ValueError, match="exceeds"):
                await client.call(B.public_key, "echo", b"x" * (64 * 1024 + 1), timeout=3)
            with pytest.raises(PeerNotConnected):
                await client.call(A.public_key, "echo", b"", timeout=3)
        with pytest.raises(RpcError, match="closed"):
            await client.call(B.public_key, "echo", b"", timeout=3)

    run(main(), loop_factory=loop_factory)


def test_deadline_cancels_the_server_handler(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        started = asyncio.Event()
        cancelled: list[str] = []

        async def slow(_peer: bytes, body: bytes) -> bytes:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(body.decode())
                raise
            return b""

        async with pair({"slow": slow}) as (ta, client, server):
            with pytest.raises(RpcTimeout):
                await client.call(B.public_key, "slow", b"call", timeout=0.2)
            await wait_until(lambda: cancelled == ["call"], what="handler cancelled")
            # a raw request whose caller never cancels: the server's own deadline fires
            expired = server.stats().get("deadline_expired", 0)  # 0 or 1: races the cancel
            started.clear()
            raw = encode(Request(10**12, "slow", 150, b"raw"))
            assert ta.send(B.public_key, raw, KIND)
            await started.wait()
            await wait_until(lambda: cancelled == ["call", "raw"], what="deadline on server")
            await wait_until(
                lambda: server.stats().get("deadline_expired") == expired + 1, what="count"
            )
            await wait_until(lambda: server.stats()["serving"] == 0, what="handler forgotten")

    run(main(), loop_factory=loop_factory)


def test_cancelling_the_caller_cancels_the_handler(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def slow(_peer: bytes, _body: bytes) -> bytes:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b""

        async with pair({"slow": slow}) as (_ta, client, server):
            task = asyncio.create_task(client.call(B.public_key, "slow", b"", timeout=20))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(cancelled.wait(), 3)
            assert server.stats()["cancels_received"] == 1
            assert client.stats()["pending"] == 0

    run(main(), loop_factory=loop_factory)


def test_disconnect_fails_pending_calls_and_cancels_handlers(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def slow(_peer: bytes, _body: bytes) -> bytes:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b""

        async with running(B) as (tb, _):
            server = RpcEndpoint(tb, KIND, {"slow": slow})
            async with running(A) as (ta, _):
                client = RpcEndpoint(ta, KIND, {})
                await ta.connect(B.public_key, tb.listen_address, timeout=3)
                calls = [
                    asyncio.create_task(client.call(B.public_key, "slow", b"", timeout=20))
                    for _ in range(3)
                ]
                await started.wait()
                await ta.close()
                for call in calls:
                    with pytest.raises(PeerNotConnected, match="lost"):
                        await call
                await asyncio.wait_for(cancelled.wait(), 3)
                await wait_until(lambda: server.stats()["serving"] == 0, what="handlers gone")
                assert client.stats()["disconnects"] == 3

    run(main(), loop_factory=loop_factory)


def test_rate_limit_answers_rate_limited(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        config = RpcConfig(requests_per_s=0.01, burst=3)
        async with pair({"echo": echo}, config) as (_ta, client, server):
            results = await asyncio.gather(
                *(client.call(B.public_key, "echo", b"x", timeout=3) for _ in range(6)),
                return_exceptions=True,
            )
            assert results.count(b"x") == 3
            refused = [r for r in results if isinstance(r, RpcOverloaded)]
            assert len(refused) == 3 and {r.code for r in refused} == {"rate-limited"}
            assert server.stats()["refused_rate-limited"] == 3

    run(main(), loop_factory=loop_factory)


def test_inflight_cap_answers_overloaded(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        release = asyncio.Event()
        entered: list[bytes] = []

        async def gate(_peer: bytes, body: bytes) -> bytes:
            entered.append(body)
            await release.wait()
            return body

        config = RpcConfig(max_inflight_per_peer=2)
        async with pair({"gate": gate}, config) as (_ta, client, _server):
            first = [
                asyncio.create_task(client.call(B.public_key, "gate", bytes([i]), timeout=5))
                for i in range(2)
            ]
            await wait_until(lambda: len(entered) == 2, what="two handlers running")
            with pytest.raises(RpcOverloaded) as info:
                await client.call(B.public_key, "gate", b"third", timeout=3)
            assert info.value.code == "overloaded"
            release.set()
            assert await asyncio.gather(*first) == [b"\x00", b"\x01"]
            assert await client.call(B.public_key, "gate", b"again", timeout=3) == b"again"

    run(main(), loop_factory=loop_factory)


MALFORMED = [
    (b"\xc1", "not msgpack"),
    (msgpack.packb([1, 2]), "expected a map"),
    (msgpack.packb({"t": 9, "v": 1, "id": 1}), "unknown message type 9"),
    (msgpack.packb({"t": 1, "v": 2, "id": 1}), "unsupported version"),
    (msgpack.packb({"t": 4, "v": 1}), "missing ['id']"),
    (msgpack.packb({"t": 4, "v": 1, "id": 1, "x": 0}), "Cancel: unexpected"),
    (msgpack.packb({"t": 4, "v": 1, "id": -1}), "id: -1 out of range"),
    (encode(Cancel(1)) + b"\x00", "trailing bytes"),
    (
        msgpack.packb({"t": 1, "v": 1, "id": 1, "method": "m" * 33, "deadline_ms": 5, "body": b""}),
        "method: 33 characters exceeds 32",
    ),
    (
        msgpack.packb({"t": 1, "v": 1, "id": 1, "method": "echo", "deadline_ms": 5, "body": "s"}),
        "body: expected bytes",
    ),
]


def test_malformed_frames_are_logged_counted_and_dropped(
    loop_factory: LoopFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="p2p.rpc")

    async def main() -> None:
        async with pair({"echo": echo}) as (ta, client, server):
            for frame, reason in MALFORMED:
                assert ta.send(B.public_key, frame, KIND)
                await wait_until(lambda r=reason: r in caplog.text, what=reason)  # type: ignore[misc]
            assert server.stats()["malformed"] == len(MALFORMED)
            assert server.stats().get("served", 0) == 0 and server.stats()["serving"] == 0
            assert ta.has_link(B.public_key)
            assert await client.call(B.public_key, "echo", b"fine", timeout=3) == b"fine"
            # an answer to a call nobody made is counted, not trusted
            assert ta.send(B.public_key, encode(Reply(999, b"?")), KIND)
            await wait_until(lambda: server.stats().get("unexpected_answers") == 1, what="count")

    run(main(), loop_factory=loop_factory)


def test_endpoint_refuses_limits_beyond_the_transport_frame() -> None:
    async def main() -> None:
        async with running(A, max_frame=1024 * 1024) as (ta, _):
            with pytest.raises(ValueError, match="max_frame"):
                RpcEndpoint(ta, KIND, {})
            with pytest.raises(ValueError, match="method name"):
                RpcEndpoint(ta, KIND, {"m" * 33: echo}, RpcConfig(max_response_bytes=1024))

    run(main())


@given(
    st.one_of(
        st.builds(
            Request,
            st.integers(0, 2**64 - 1),
            st.text(min_size=1, max_size=32),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=256),
        ),
        st.builds(Reply, st.integers(0, 2**64 - 1), st.binary(max_size=256)),
        st.builds(
            ErrorReply,
            st.integers(0, 2**64 - 1),
            st.text(min_size=1, max_size=32),
            st.text(max_size=512),
        ),
        st.builds(Cancel, st.integers(0, 2**64 - 1)),
    )
)
def test_codec_round_trips(msg: Request | Reply | ErrorReply | Cancel) -> None:
    assert decode(encode(msg), 256) == msg


@given(st.binary(max_size=64))
def test_decoder_raises_only_its_error(data: bytes) -> None:
    with contextlib.suppress(RpcDecodeError):
        decode(data, 1024)


def test_decoder_bounds_the_body() -> None:
    with pytest.raises(RpcDecodeError, match="body: 11 bytes exceeds 10"):
        decode(encode(Reply(1, b"x" * 11)), 10)
    with pytest.raises(ValueError, match="method"):
        encode(Request(1, "", 1, b""))
