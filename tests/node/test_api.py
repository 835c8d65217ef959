"""The client API against an in-memory NodeService: every route, every refusal, and the
rule that a refused request enqueues nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from dagrider.node.api import API_METRICS, build_app
from dagrider.node.batch import BatchError, BatchParser, RecordBatch, encode_batch
from dagrider.node.client import LogPruned, full_log, stream_log
from dagrider.node.metrics import Metrics
from dagrider.node.service import (
    LogEntry,
    MempoolFull,
    NodeService,
    TxStatus,
    TxTooLarge,
    tx_id,
)

Client = TestClient[web.Request, web.Application]
Scenario = Callable[[Client, "FakeNode"], Awaitable[None]]

MAX_TX = 1024
MAX_BODY = 16 * 1024
TOKEN = "s3cret-token"
JSON = {"Content-Type": "application/json"}
RAW = {"Content-Type": "application/octet-stream"}
BATCH = {"Content-Type": "application/x-dagrider-batch"}


class FakeNode:
    """A NodeService in memory: a bounded mempool and a log that ``commit`` appends to."""

    def __init__(self, *, max_tx_bytes: int = MAX_TX, capacity: int = 100) -> None:
        self.max_tx_bytes = max_tx_bytes
        self.capacity = capacity
        self.hard_limit: int | None = None  # a stricter limit only submit() knows about
        self.broken = False
        self.pending: list[bytes] = []
        self.entries: list[LogEntry] = []
        self.first = 0  # entries before this index are pruned (as keep_log_entries does)
        self.submit_calls = 0
        self.registry = Metrics()
        self.registry.gauge("dagrider_round", "Current DAG round.").set(7)
        self._changed: asyncio.Event | None = None

    def submit(self, txs: Sequence[bytes]) -> list[str]:
        self.submit_calls += 1
        if self.broken:
            raise RuntimeError("disk on fire")
        if self.hard_limit is not None and any(len(tx) > self.hard_limit for tx in txs):
            raise TxTooLarge(f"a transaction exceeds {self.hard_limit} bytes")
        if len(self.pending) + len(txs) > self.capacity:
            raise MempoolFull(
                f"mempool full: {len(self.pending)} of {self.capacity}", retry_after=1.5
            )
        self.pending.extend(txs)
        return [tx_id(tx) for tx in txs]

    def commit(self, count: int | None = None) -> None:
        """Order the first ``count`` pending transactions (all by default)."""
        count = len(self.pending) if count is None else count
        for data in self.pending[:count]:
            index = len(self.entries)
            self.entries.append(
                LogEntry(index, tx_id(data), data, 4 + index, index % 4, 1 + index // 8, 1e9)
            )
        del self.pending[:count]
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def tx_status(self, tx_id_hex: str) -> TxStatus:
        for e in self.entries[self.first :]:  # pruned ids are forgotten, as in the store
            if e.tx_id == tx_id_hex:
                return TxStatus(tx_id_hex, "committed", e.index, e.round, e.wave)
        if any(tx_id(tx) == tx_id_hex for tx in self.pending):
            return TxStatus(tx_id_hex, "pending", None, None, None)
        return TxStatus(tx_id_hex, "unknown", None, None, None)

    def log(self, after: int, limit: int) -> list[LogEntry]:
        start = max(after + 1, self.first)  # the store skips pruned positions
        return self.entries[start : start + limit]

    def log_head(self) -> int:
        return len(self.entries) - 1

    async def wait_for_log(self, after: int, timeout: float) -> None:
        if self.log_head() > after:
            return
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def status(self) -> dict[str, Any]:
        return {"round": 12, "wave": 3, "peers": {"1": "up", "2": "down"}}

    def metrics(self) -> Metrics:
        return self.registry


_typecheck: type[NodeService] = FakeNode  # FakeNode must satisfy the protocol


def run_api(
    scenario: Scenario,
    node: FakeNode | None = None,
    *,
    token: str | None = None,
    max_body: int = MAX_BODY,
    keepalive: float = 15.0,
) -> FakeNode:
    """Run ``scenario`` against a real server on loopback in a fresh event loop."""
    node = node if node is not None else FakeNode()

    async def main() -> None:
        app = build_app(node, token, max_body, keepalive=keepalive)
        async with TestClient(TestServer(app)) as client:
            await asyncio.wait_for(scenario(client, node), 20)

    asyncio.run(main())
    return node


async def expect_error(
    response: aiohttp.ClientResponse, status: int, *phrases: str
) -> dict[str, Any]:
    """The response is the JSON error ``{"error", "status"}`` and names its cause."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["status"] == status
    for phrase in phrases:
        assert phrase in body["error"], (phrase, body["error"])
    return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- POST /v1/transactions ------------------------------------------------------------


def test_post_raw_bytes_json_text_and_json_batch() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.post("/v1/transactions", data=b"\x00raw\xff", headers=RAW)
        assert r.status == 202
        assert await r.json() == {"id": tx_id(b"\x00raw\xff")}
        r = await client.post("/v1/transactions", json={"tx": b64(b"one")})
        assert (r.status, await r.json()) == (202, {"id": tx_id(b"one")})
        r = await client.post("/v1/transactions", json={"text": "héllo"})
        assert (r.status, await r.json()) == (202, {"id": tx_id("héllo".encode())})
        r = await client.post("/v1/transactions", json={"txs": [b64(b"a"), b64(b"b")]})
        assert (r.status, await r.json()) == (202, {"ids": [tx_id(b"a"), tx_id(b"b")]})

    node = run_api(scenario)
    assert node.pending == [b"\x00raw\xff", b"one", "héllo".encode(), b"a", b"b"]


BAD_POSTS: list[tuple[dict[str, str], bytes, int, str]] = [
    (JSON, b"{not json", 400, "invalid JSON"),
    (JSON, b"\xff\xfe\x00", 400, "invalid JSON"),
    (JSON, b"[" * 10_000, 400, "invalid JSON"),
    (JSON, b"", 400, "empty body"),
    (RAW, b"", 400, "empty body"),
    (JSON, b"[1]", 400, "must be an object, got array"),
    (JSON, b'{"tx": 5}', 400, "field tx must be a base64 string, got number"),
    (JSON, b'{"tx": null}', 400, "field tx must be a base64 string, got null"),
    (JSON, b'{"tx": "!!not base64"}', 400, "field tx is not valid base64"),
    (JSON, b'{"tx": "QUJD="}', 400, "field tx is not valid base64"),
    (JSON, b'{"tx": ""}', 400, "tx: empty transaction"),
    (JSON, b'{"text": ["a"]}', 400, "field text must be a string, got array"),
    (JSON, b'{"text": "\\ud800"}', 400, "lone surrogate"),
    (JSON, b'{"txs": "QQ=="}', 400, "field txs must be an array"),
    (JSON, b'{"txs": []}', 400, "field txs is an empty array"),
    (JSON, b'{"txs": ["QQ==", 7]}', 400, "field txs[1] must be a base64 string"),
    (JSON, b'{"txs": ["QQ==", "%%"]}', 400, "field txs[1] is not valid base64"),
    (JSON, b'{"txs": ["QQ==", ""]}', 400, "txs[1]: empty transaction"),
    (JSON, b'{"foo": 1, "tx": "QQ=="}', 400, "unknown field(s) foo"),
    (JSON, b'{"tx": "QQ==", "text": "a"}', 400, "exactly one of the fields"),
    (JSON, b"{}", 400, "got none"),
    ({"Content-Type": "text/plain"}, b"hi", 415, "unsupported Content-Type 'text/plain'"),
    (BATCH, encode_batch([b"x"]), 415, "/v1/transactions/batch"),
    (RAW, b"x" * (MAX_TX + 1), 413, f"transaction is {MAX_TX + 1} bytes, over the {MAX_TX}-byte"),
    (
        JSON,
        json.dumps({"txs": [b64(b"ok"), b64(b"y" * (MAX_TX + 1))]}).encode(),
        413,
        f"txs[1] is {MAX_TX + 1} bytes",
    ),
    (RAW, b"z" * (MAX_BODY + 1), 413, f"over the {MAX_BODY}-byte limit"),
]


@pytest.mark.parametrize(("headers", "body", "status", "phrase"), BAD_POSTS)
def test_bad_post_is_refused_with_its_cause_and_enqueues_nothing(
    headers: dict[str, str], body: bytes, status: int, phrase: str
) -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.post("/v1/transactions", data=body, headers=headers)
        await expect_error(r, status, phrase)

    node = run_api(scenario)
    assert node.pending == []
    assert node.submit_calls == 0


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_oversize_chunked_body_is_refused_while_streaming() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.post(
            "/v1/transactions", data=chunks(b"q" * (3 * MAX_BODY), 1000), headers=RAW
        )
        await expect_error(r, 413, f"exceeds the {MAX_BODY}-byte limit")
        r = await client.post(
            "/v1/transactions/batch",
            data=chunks(encode_batch([b"q" * 1000] * 40), 999),
            headers=BATCH,
        )
        await expect_error(r, 413, f"exceeds the {MAX_BODY}-byte limit")

    assert run_api(scenario).pending == []


def test_full_mempool_pushes_back_with_429_and_retry_after() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.post("/v1/transactions", json={"txs": [b64(b"1"), b64(b"2")]})
        assert r.status == 202
        r = await client.post("/v1/transactions", json={"txs": [b64(b"3"), b64(b"4")]})
        body = await expect_error(r, 429, "mempool full: 2 of 3")
        assert r.headers["Retry-After"] == "2"  # whole seconds, rounded up
        assert body["retry_after"] == 1.5  # the node's own estimate, to the millisecond
        r = await client.post(
            "/v1/transactions/batch", data=encode_batch([b"5", b"6"]), headers=BATCH
        )
        await expect_error(r, 429, "mempool full")

    assert run_api(scenario, FakeNode(capacity=3)).pending == [b"1", b"2"]


def test_the_service_s_own_size_refusal_is_413_and_its_failure_500() -> None:
    node = FakeNode()
    node.hard_limit = 10

    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.post("/v1/transactions", data=b"x" * 11, headers=RAW)
        await expect_error(r, 413, "transaction too large: a transaction exceeds 10 bytes")
        node.broken = True
        r = await client.post("/v1/transactions", data=b"x", headers=RAW)
        await expect_error(r, 500, "internal error")

    assert run_api(scenario, node).pending == []


# --- POST /v1/transactions/batch ------------------------------------------------------


def test_batch_post_accepts_records_in_order_and_returns_first_and_last_id() -> None:
    txs = [b"alpha", b"b" * MAX_TX, b"\x00"]

    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.post("/v1/transactions/batch", data=encode_batch(txs), headers=BATCH)
        assert r.status == 202
        assert await r.json() == {
            "accepted": 3,
            "first_id": tx_id(txs[0]),
            "last_id": tx_id(txs[2]),
        }
        r = await client.post(
            "/v1/transactions/batch?ids=1", data=encode_batch(txs[:2]), headers=BATCH
        )
        assert (await r.json())["ids"] == [tx_id(tx) for tx in txs[:2]]
        # chunked transfer, chunk boundaries inside length prefixes and records
        r = await client.post(
            "/v1/transactions/batch", data=chunks(encode_batch(txs), 3), headers=BATCH
        )
        assert (await r.json())["accepted"] == 3

    assert run_api(scenario).pending == txs + txs[:2] + txs


BAD_BATCHES: list[tuple[dict[str, str], str, bytes, int, str]] = [
    (RAW, "", encode_batch([b"a"]), 415, "use application/x-dagrider-batch"),
    (BATCH, "", b"", 400, "empty body: expected at least one record"),
    (BATCH, "", encode_batch([b"abcd"]) + b"\x00\x00", 400, "length prefix at byte offset 8"),
    (BATCH, "", encode_batch([b"ab"]) + b"\x00\x00\x00\x09abc", 400, "record at byte offset 6"),
    (BATCH, "", encode_batch([b"ab", b"", b"c"]), 400, "empty record at byte offset 6"),
    (
        BATCH,
        "",
        encode_batch([b"a", b"x" * (MAX_TX + 1)]),
        413,
        f"record at byte offset 5 is {MAX_TX + 1} bytes",
    ),
    (BATCH, "", encode_batch([b"y" * 1000] * 17), 413, f"over the {MAX_BODY}-byte limit"),
    (BATCH, "?ids=yes", encode_batch([b"a"]), 400, "ids must be 0, 1, false or true"),
]


@pytest.mark.parametrize(("headers", "query", "body", "status", "phrase"), BAD_BATCHES)
def test_bad_batch_is_refused_with_its_cause_and_enqueues_nothing(
    headers: dict[str, str], query: str, body: bytes, status: int, phrase: str
) -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.post("/v1/transactions/batch" + query, data=body, headers=headers)
        await expect_error(r, status, phrase)

    node = run_api(scenario)
    assert node.pending == []
    assert node.submit_calls == 0


def reference_parse(body: bytes) -> list[bytes] | None:
    """The batch format, written as plainly as possible: None if malformed."""
    out, pos = [], 0
    while pos < len(body):
        if len(body) - pos < 4:
            return None
        n = int.from_bytes(body[pos : pos + 4], "big")
        if n == 0 or pos + 4 + n > len(body):
            return None
        out.append(body[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out or None


_records = st.lists(st.binary(max_size=40), max_size=8)
batch_bodies = st.one_of(
    st.binary(max_size=400),
    _records.map(encode_batch),
    st.tuples(_records.map(encode_batch), st.integers(0, 400)).map(lambda t: t[0][: t[1]]),
    st.tuples(_records.map(encode_batch), st.binary(max_size=6)).map(lambda t: t[0] + t[1]),
)


@given(body=batch_bodies, cut=st.lists(st.integers(1, 64), max_size=10))
@settings(max_examples=examples(8))
def test_parser_agrees_with_the_reference_however_the_body_is_chunked(
    body: bytes, cut: list[int]
) -> None:
    def outcome(pieces: list[bytes]) -> list[bytes] | str:
        parser = BatchParser(max_record=10_000, expected_size=len(body))
        try:
            for piece in pieces:
                parser.feed(piece)
            return parser.finish()
        except BatchError as exc:
            assert exc.status == 400
            return str(exc)

    pieces, pos = [], 0
    for size in cut:
        pieces.append(body[pos : pos + size])
        pos += size
    pieces.append(body[pos:])
    whole = outcome([body])
    assert outcome(pieces) == whole
    expected = reference_parse(body)
    assert whole == expected if expected is not None else isinstance(whole, str)


@given(body=batch_bodies)
def test_any_batch_body_is_accepted_completely_or_refused_with_400_and_nothing_enqueued(
    body: bytes,
) -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.post("/v1/transactions/batch", data=body, headers=BATCH)
        expected = reference_parse(body)
        if expected is None:
            await expect_error(r, 400, "")
            assert node.pending == [] and node.submit_calls == 0
        else:
            assert r.status == 202
            assert (await r.json())["accepted"] == len(expected)
            assert node.pending == expected

    run_api(scenario, FakeNode(max_tx_bytes=MAX_BODY, capacity=10_000))


# --- GET /v1/ingest (WebSocket) -------------------------------------------------------


def test_websocket_ingest_accepts_batches_and_reports_each_refusal() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        async with client.ws_connect("/v1/ingest") as ws:
            await ws.send_bytes(encode_batch([b"a", b"b"]))
            assert await ws.receive_json() == {"accepted": 2}
            await ws.send_bytes(encode_batch([b"c"]))
            assert await ws.receive_json() == {"accepted": 1}
            await ws.send_bytes(encode_batch([b"d", b"e"]))  # capacity 4: refused whole
            reply = await ws.receive_json()
            assert reply["status"] == 429 and "mempool full" in reply["error"]
            assert reply["retry_after"] == 1.5  # the node's estimate, not rounded up
            await ws.send_bytes(encode_batch([b"f"]) + b"\x00\x00\x00")
            reply = await ws.receive_json()
            assert reply["status"] == 400 and "byte offset 5" in reply["error"]
            await ws.send_bytes(encode_batch([b"g" * (MAX_TX + 1)]))
            reply = await ws.receive_json()
            assert reply["status"] == 413 and f"{MAX_TX + 1} bytes" in reply["error"]
            await ws.send_str("hello")
            reply = await ws.receive_json()
            assert reply["status"] == 400 and "binary" in reply["error"]
            assert node.pending == [b"a", b"b", b"c"]
            node.commit()  # the client backed off; the mempool drained
            await ws.send_bytes(encode_batch([b"d", b"e"]))
            assert await ws.receive_json() == {"accepted": 2}
        assert node.pending == [b"d", b"e"]
        text = await (await client.get("/metrics")).text()
        assert 'dagrider_api_ws_messages_total{outcome="refused"} 4' in text
        assert 'dagrider_api_transactions_total{path="ws"} 5' in text

    run_api(scenario, FakeNode(capacity=4))


def test_websocket_oversize_message_closes_with_1009_and_failure_is_in_band() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        async with client.ws_connect("/v1/ingest") as ws:
            node.broken = True
            await ws.send_bytes(encode_batch([b"x"]))
            assert await ws.receive_json() == {"error": "internal error", "status": 500}
            await ws.send_bytes(encode_batch([b"y" * 1000] * 17))  # > MAX_BODY
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        assert node.pending == []

    run_api(scenario)


def test_websocket_route_without_upgrade_is_a_json_400() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        await expect_error(await client.get("/v1/ingest"), 400, "WebSocket")

    run_api(scenario)


# --- GET /v1/transactions/{id} --------------------------------------------------------


def test_transaction_status_pending_committed_unknown_and_malformed() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        await client.post("/v1/transactions", json={"txs": [b64(b"p"), b64(b"q")]})
        node.commit(1)
        r = await client.get(f"/v1/transactions/{tx_id(b'p')}")
        assert await r.json() == {
            "tx_id": tx_id(b"p"),
            "state": "committed",
            "index": 0,
            "round": 4,
            "wave": 1,
        }
        r = await client.get(f"/v1/transactions/{tx_id(b'q').upper()}")
        assert (await r.json())["state"] == "pending"
        r = await client.get(f"/v1/transactions/{tx_id(b'never')}")
        await expect_error(r, 404, f"unknown transaction {tx_id(b'never')}")
        for bad in ("xyz", tx_id(b"p")[:-1], tx_id(b"p") + "0", "g" * 64):
            r = await client.get(f"/v1/transactions/{bad}")
            await expect_error(r, 400, "malformed transaction id", "64 hex digits")

    run_api(scenario)


# --- GET /v1/log and /v1/log/stream ---------------------------------------------------


def test_websocket_ingest_hands_the_node_the_batch_as_sent() -> None:
    seen: list[object] = []

    async def scenario(client: Client, node: FakeNode) -> None:
        submit = node.submit

        def spy(txs: Sequence[bytes]) -> list[str]:
            seen.append(txs)
            return submit(txs)

        node.submit = spy  # type: ignore[method-assign]
        body = encode_batch([b"one", b"two"])
        async with client.ws_connect("/v1/ingest") as ws:
            await ws.send_bytes(body)
            assert await ws.receive_json() == {"accepted": 2}
        text = await (await client.get("/metrics")).text()
        assert 'dagrider_api_transaction_bytes_total{path="ws"} 6' in text

    run_api(scenario)
    (batch,) = seen
    assert isinstance(batch, RecordBatch) and list(batch) == [b"one", b"two"]
    assert batch.records == encode_batch([b"one", b"two"])  # stored as it came


def test_commit_to_client_latency_counts_each_entry_once() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        node.pending = [bytes([i]) for i in range(1, 6)]
        node.commit()
        await client.get("/v1/log", params={"limit": "3"})
        await client.get("/v1/log")  # entries 0..2 again, then 3 and 4 for the first time
        await client.get("/v1/log")
        text = await (await client.get("/metrics")).text()
        assert "dagrider_commit_to_client_seconds_count 5" in text

    run_api(scenario)


def test_log_pages_with_after_and_limit() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        node.pending = [bytes([i]) * 3 for i in range(1, 6)]
        node.commit()
        r = await client.get("/v1/log")
        body = await r.json()
        assert body["head"] == 4
        assert [e["index"] for e in body["entries"]] == [0, 1, 2, 3, 4]
        assert body["entries"][0] == {
            "index": 0,
            "tx_id": tx_id(b"\x01\x01\x01"),
            "data": b64(b"\x01\x01\x01"),
            "round": 4,
            "source": 0,
            "wave": 1,
            "committed_at": 1e9,
        }
        r = await client.get("/v1/log", params={"after": "1", "limit": "2"})
        assert [e["index"] for e in (await r.json())["entries"]] == [2, 3]
        r = await client.get("/v1/log", params={"after": "4"})
        assert (await r.json())["entries"] == []

    run_api(scenario)


@pytest.mark.parametrize(
    ("query", "phrase"),
    [
        ("after=abc", "after must be an integer >= -1, got 'abc'"),
        ("after=-2", "after must be an integer >= -1"),
        ("after=1.5", "after must be an integer"),
        ("limit=0", "limit must be an integer between 1 and 10000"),
        ("limit=10001", "limit must be an integer between 1 and 10000"),
        ("limit=", "limit must be an integer"),
    ],
)
def test_log_bad_parameters_are_400(query: str, phrase: str) -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        await expect_error(await client.get(f"/v1/log?{query}"), 400, phrase)

    run_api(scenario)


async def next_block(response: aiohttp.ClientResponse) -> list[str]:
    """The lines of the next SSE block (up to a blank line)."""
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(response.content.readline(), 5)
        assert raw, "stream ended"
        line = raw.decode().rstrip("\n")
        if line:
            lines.append(line)
        elif lines:
            return lines


async def next_event(response: aiohttp.ClientResponse) -> tuple[int, dict[str, Any]]:
    while True:
        fields = dict(
            line.split(": ", 1) for line in await next_block(response) if not line.startswith(":")
        )
        if "data" in fields:
            return int(fields["id"]), json.loads(fields["data"])


def test_sse_stream_delivers_entries_in_order_then_live_commits() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        node.pending = [b"e0", b"e1", b"e2"]
        node.commit()
        r = await client.get("/v1/log/stream")
        assert r.status == 200
        assert r.content_type == "text/event-stream"
        for i in range(3):
            index, entry = await next_event(r)
            assert index == entry["index"] == i
            assert base64.b64decode(entry["data"]) == f"e{i}".encode()
        node.pending = [b"e3", b"e4"]
        node.commit()
        assert [(await next_event(r))[0] for _ in range(2)] == [3, 4]
        r.close()

    run_api(scenario)


def test_sse_resumes_from_last_event_id_before_after() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        node.pending = [b"a", b"b", b"c", b"d"]
        node.commit()
        r = await client.get("/v1/log/stream?after=0", headers={"Last-Event-ID": "2"})
        assert (await next_event(r))[0] == 3
        r.close()
        r = await client.get("/v1/log/stream?after=1")
        assert (await next_event(r))[0] == 2
        r.close()
        r = await client.get("/v1/log/stream", headers={"Last-Event-ID": "x"})
        await expect_error(r, 400, "Last-Event-ID must be an integer")

    run_api(scenario)


def test_sse_sends_keep_alive_comments_when_idle() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.get("/v1/log/stream")
        assert await next_block(r) == ["retry: 1000", ": stream open"]
        assert await next_block(r) == [": keep-alive"]
        assert await next_block(r) == [": keep-alive"]
        node.pending = [b"late"]
        node.commit()
        assert (await next_event(r))[0] == 0
        r.close()

    run_api(scenario, keepalive=0.05)


# --- a pruned log (keep_log_entries) ---------------------------------------------------


def test_log_below_the_first_available_index_is_410_naming_it() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        node.pending = [b"p%d" % i for i in range(10)]
        node.commit()
        node.first = 6
        for query, requested in (("", 0), ("?after=-1", 0), ("?after=4&limit=2", 5)):
            body = await expect_error(
                await client.get(f"/v1/log{query}"), 410, "before index 6 are pruned", "after=5"
            )
            assert (body["first_available"], body["requested"]) == (6, requested)
        r = await client.get("/v1/log?after=5")
        assert [e["index"] for e in (await r.json())["entries"]] == [6, 7, 8, 9]
        r = await client.get("/v1/log?after=9")
        assert (await r.json())["entries"] == []

    run_api(scenario)


def test_pruned_transaction_is_404_with_first_available() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        node.pending = [b"old", b"new"]
        node.commit()
        node.first = 1
        body = await expect_error(
            await client.get(f"/v1/transactions/{tx_id(b'old')}"),
            404,
            "unknown transaction",
            "starts at index 1",
            "pruned",
        )
        assert body["first_available"] == 1
        r = await client.get(f"/v1/transactions/{tx_id(b'new')}")
        assert (await r.json())["index"] == 1

    run_api(scenario)


def test_sse_below_the_cut_is_410_and_a_reader_overtaken_by_it_gets_an_error_event() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        node.pending = [b"s%d" % i for i in range(10)]
        node.commit()
        node.first = 6
        body = await expect_error(await client.get("/v1/log/stream"), 410, "pruned")
        assert (body["first_available"], body["requested"]) == (6, 0)
        r = await client.get("/v1/log/stream", headers={"Last-Event-ID": "3"})
        await expect_error(r, 410, "before index 6")
        r = await client.get("/v1/log/stream?after=7")
        assert [(await next_event(r))[0] for _ in range(2)] == [8, 9]
        node.pending = [b"t%d" % i for i in range(10)]
        node.first = 15  # pruning overtook the reader (cursor 9) before it read on
        node.commit()
        block = await next_block(r)
        assert block[0] == "event: error"
        error = json.loads(block[1].removeprefix("data: "))
        assert (error["status"], error["first_available"], error["requested"]) == (410, 15, 10)
        assert await asyncio.wait_for(r.content.read(), 5) == b""  # the stream ended
        r.close()

    run_api(scenario)


def test_client_starts_at_the_first_available_index_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        node.pending = [b"c%d" % i for i in range(10)]
        node.commit()
        node.first = 4
        url = str(client.make_url("")).rstrip("/")
        with caplog.at_level(logging.WARNING, logger="dagrider.node.client"):
            entries = await asyncio.to_thread(full_log, url)
            assert [e["index"] for e in entries] == list(range(4, 10))
            assert "log entries 0..3 are pruned" in caplog.text
            streamed = await asyncio.to_thread(
                lambda: [e["index"] for e in itertools.islice(stream_log(url, 1), 3)]
            )
            assert streamed == [4, 5, 6]
        with pytest.raises(LogPruned) as caught:
            await asyncio.to_thread(full_log, url, skip_pruned=False)
        assert (caught.value.first_available, caught.value.requested) == (4, 0)
        with pytest.raises(LogPruned):
            await asyncio.to_thread(lambda: next(stream_log(url, skip_pruned=False)))

    run_api(scenario)


# --- status, metrics, health, routing -------------------------------------------------


def test_status_metrics_and_health() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        r = await client.get("/v1/status")
        assert await r.json() == node.status()
        r = await client.get("/healthz")
        assert (r.status, await r.text()) == (200, "ok")
        await client.get("/nowhere")
        await client.post("/v1/transactions", data=b"", headers=RAW)
        r = await client.get("/metrics")
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
        assert text.startswith("# HELP dagrider_round Current DAG round.\n")
        assert "dagrider_round 7\n" in text
        assert 'dagrider_api_requests_total{route="/v1/status",method="GET"} 1\n' in text
        assert 'dagrider_api_errors_total{route="unmatched",code="404"} 1\n' in text
        assert 'dagrider_api_errors_total{route="/v1/transactions",code="400"} 1\n' in text
        assert 'dagrider_api_request_duration_seconds_count{route="/healthz"} 1\n' in text
        assert client.app is not None
        requests = client.app[API_METRICS].counter(
            "dagrider_api_requests_total", "", ["route", "method"]
        )
        assert requests.labels("/metrics", "GET").value == 1  # counted once it is answered

    run_api(scenario)


def test_unknown_route_is_json_404_and_wrong_method_json_405() -> None:
    async def scenario(client: Client, node: FakeNode) -> None:
        await expect_error(await client.get("/v2/nothing"), 404, "no route for GET /v2/nothing")
        r = await client.get("/v1/transactions")
        await expect_error(r, 405, "method not allowed: GET /v1/transactions", "allowed: POST")
        assert r.headers["Allow"] == "POST"
        r = await client.delete("/v1/log")
        await expect_error(r, 405, "allowed: GET")

    run_api(scenario)


# --- bearer token ---------------------------------------------------------------------


def test_bearer_token_guards_every_route_but_healthz() -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario(client: Client, node: FakeNode) -> None:
        for path in ("/v1/status", "/metrics", "/v1/log", "/v1/log/stream", "/nowhere"):
            r = await client.get(path)
            await expect_error(r, 401, "missing Authorization: Bearer")
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for header in (f"Bearer {TOKEN}x", "Bearer", f"Basic {TOKEN}", TOKEN, "Bearer é"):
            r = await client.get("/v1/status", headers={"Authorization": header})
            await expect_error(r, 401, "invalid bearer token")
        r = await client.post("/v1/transactions", data=b"tx", headers=RAW)
        await expect_error(r, 401, "missing")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/v1/ingest")
        assert refused.value.status == 401
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/v1/status", headers=good)).status == 200
        r = await client.post("/v1/transactions", data=b"tx", headers={**RAW, **good})
        assert r.status == 202
        async with client.ws_connect("/v1/ingest", headers=good) as ws:
            await ws.send_bytes(encode_batch([b"ws"]))
            assert await ws.receive_json() == {"accepted": 1}

    assert run_api(scenario, token=TOKEN).pending == [b"tx", b"ws"]


def test_build_app_refuses_a_non_positive_body_limit_and_an_empty_token() -> None:
    with pytest.raises(ValueError, match="max_body"):
        build_app(FakeNode(), None, 0)
    with pytest.raises(ValueError, match="token must not be empty"):
        build_app(FakeNode(), " ", MAX_BODY)
