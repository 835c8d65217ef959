"""The HTTP API's limits in-process: connections, idle and unfinished requests, bodies.

The same limits on a real daemon, with its RSS measured, are in
``tests/e2e/test_memory_budget.py``; these are the fast checks of each rule.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from dagrider.node.api import JSON_WEIGHT, build_app
from dagrider.node.http_limits import LimitedSite, refusal

Scenario = Callable[[int], Awaitable[None]]


class _Node:
    """The smallest NodeService the transaction routes need."""

    max_tx_bytes = 1024

    def __init__(self) -> None:
        self.admitted: list[bytes] = []

    def submit(self, txs: list[bytes]) -> list[str]:
        self.admitted.extend(txs)
        return [tx.hex() for tx in txs]


def _serve(
    scenario: Scenario,
    *,
    max_connections: int = 100,
    idle: float = 30.0,
    budget: int | None = None,
    max_batch: int | None = None,
) -> _Node:
    node = _Node()

    async def main() -> None:
        app = build_app(
            node,  # type: ignore[arg-type]
            None,
            1 << 20,
            bodies_budget=budget,
            body_timeout=idle,
            max_batch=max_batch,
        )
        runner = web.AppRunner(app, keepalive_timeout=idle)
        await runner.setup()
        site = LimitedSite(runner, "127.0.0.1", 0, max_connections)
        await site.start()
        port = site.port
        try:
            await asyncio.wait_for(scenario(port), 20)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return node


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    body = await reader.readexactly(length)
    writer.close()
    return int(head.split(b" ")[1]), json.loads(body)


def _post(path: str, ctype: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_connections_over_the_limit_get_a_503_naming_it() -> None:
    async def scenario(port: int) -> None:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for r, w in held:  # an answer proves the server counts the connection (keep-alive)
            w.write(b"GET /no-such-route HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            assert b" 404 " in head.split(b"\r\n")[0], head
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer == refusal(3)
        assert b"503" in answer.split(b"\r\n")[0] and b"max_connections" in answer
        for _, w in held:
            w.close()

    _serve(scenario, max_connections=3)


def test_idle_connections_and_unfinished_heads_are_closed_after_the_idle_timeout() -> None:
    async def scenario(port: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        idle_r, _ = await asyncio.open_connection("127.0.0.1", port)
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        slow_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        # closed by the 0.3 s idle timeout: nothing else would close them within the hang
        # bound (the scenario's 20 s), and not before the timeout
        assert await idle_r.read() == b""
        assert await slow_r.read() == b""
        assert loop.time() - started >= 0.25

    _serve(scenario, idle=0.3)


def test_a_stalled_body_is_answered_408() -> None:
    async def scenario(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"\x00\x00\x00\x01a"
        writer.write(_post("/v1/transactions/batch", "application/x-dagrider-batch", body)[:-2])
        line = await asyncio.wait_for(reader.readline(), 5)
        assert b" 408 " in line, line
        writer.close()

    node = _serve(scenario, idle=0.3)
    assert node.admitted == []


def test_json_bodies_are_capped_and_charged_for_what_parsing_makes_of_them() -> None:
    budget = 1 << 20  # JSON bodies: at most budget // JSON_WEIGHT = 64 KiB

    async def scenario(port: int) -> None:
        many = {"txs": [base64.b64encode(b"x").decode()] * 20_000}  # 160 KB of JSON
        status, body = await _request(
            port, _post("/v1/transactions", "application/json", json.dumps(many).encode())
        )
        assert status == 413 and f"{budget // JSON_WEIGHT}-byte limit" in str(body["error"])
        few = {"txs": [base64.b64encode(b"y").decode()] * 10}
        status, body = await _request(
            port, _post("/v1/transactions", "application/json", json.dumps(few).encode())
        )
        assert status == 202, body

    node = _serve(scenario, budget=budget)
    assert node.admitted == [b"y"] * 10


def test_a_request_with_more_transactions_than_the_mempool_holds_is_413() -> None:
    async def scenario(port: int) -> None:
        doc = {"txs": [base64.b64encode(b"z").decode()] * 11}
        status, body = await _request(
            port, _post("/v1/transactions", "application/json", json.dumps(doc).encode())
        )
        assert status == 413 and "can never be accepted" in str(body["error"])

    node = _serve(scenario, max_batch=10)
    assert node.admitted == []
