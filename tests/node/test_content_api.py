"""The content routes against an in-memory backend: ranges, limits, ids and errors.

The real backend (the mesh) is exercised end to end in ``tests/e2e/test_content_mesh.py``;
here every HTTP rule is checked on its own, including that a refused upload keeps
nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from dagrider.node.api import ApiError, build_app
from dagrider.node.content_api import (
    BadContentId,
    BlobInfo,
    ContentUnavailable,
    UploadTooLarge,
    _parse_range,
)
from dagrider.node.metrics import Metrics
from dagrider.node.service import LogEntry, NotAMember, TxStatus

Client = TestClient[web.Request, web.Application]
CHUNK = 1000


class FakeBackend:
    """Blobs in a dict; ``remote`` blobs appear after a fetch, ``missing`` ones never do."""

    def __init__(self) -> None:
        self.blobs_: dict[bytes, bytes] = {}
        self.remote: dict[bytes, bytes] = {}
        self.fetches: list[bytes] = []

    def parse_cid(self, text: str) -> bytes:
        if len(text) != 64:
            raise BadContentId(f"expected 64 hex characters, got {len(text)}")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise BadContentId("not lowercase hex") from None

    def _info(self, cid: bytes) -> BlobInfo:
        data = self.blobs_[cid]
        return BlobInfo(cid.hex(), len(data), CHUNK, -(-len(data) // CHUNK))

    async def put_stream(self, chunks: AsyncIterator[bytes], limit: int) -> BlobInfo:
        got = b""
        async for piece in chunks:
            got += piece
            if len(got) > limit:
                raise UploadTooLarge(f"upload exceeds the {limit}-byte limit")
        cid = hashlib.sha256(got).digest()
        self.blobs_[cid] = got
        return self._info(cid)

    def local(self, cid: bytes) -> BlobInfo | None:
        return self._info(cid) if cid in self.blobs_ else None

    def blobs(self) -> list[BlobInfo]:
        return [self._info(c) for c in self.blobs_]

    async def fetch(self, cid: bytes) -> BlobInfo:
        self.fetches.append(cid)
        if cid not in self.remote:
            raise ContentUnavailable("no provider found")
        self.blobs_[cid] = self.remote[cid]
        return self._info(cid)

    def start_fetch(self, cid: bytes) -> None:
        self.fetches.append(cid)

    def fetch_status(self, cid: bytes) -> dict[str, Any] | None:
        return {"state": "fetching", "have_bytes": 0} if cid in self.fetches else None

    async def read_range(self, cid: bytes, start: int, end: int) -> AsyncIterator[bytes]:
        data = self.blobs_[cid]
        for pos in range(start, end, 7):
            yield data[pos : min(end, pos + 7)]

    async def providers(self, cid: bytes) -> list[dict[str, Any]]:
        return [{"key": "aa" * 32, "addrs": ["127.0.0.1:1"]}]


class PeerService:
    """The NodeService of a mesh peer: status and metrics only."""

    max_tx_bytes = 0

    def submit(self, txs: Sequence[bytes]) -> list[str]:
        raise NotAMember("peer")

    def tx_status(self, tx_id: str) -> TxStatus:
        return TxStatus(tx_id, "unknown", None, None, None)

    def log(self, after: int, limit: int) -> list[LogEntry]:
        return []

    def log_head(self) -> int:
        return -1

    async def wait_for_log(self, after: int, timeout: float) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"role": "peer"}

    def metrics(self) -> Metrics:
        return Metrics()


def run(scenario: Callable[[Client, FakeBackend], Awaitable[None]], limit: int = 10_000) -> None:
    backend = FakeBackend()

    async def main() -> None:
        app = build_app(PeerService(), None, 1024, content=backend, max_upload=limit, member=False)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, backend)

    asyncio.run(main())


def test_put_then_get_whole_and_ranges() -> None:
    data = bytes(range(256)) * 10

    async def scenario(client: Client, backend: FakeBackend) -> None:
        r = await client.put("/v1/content", data=data)
        assert r.status == 201
        info = await r.json()
        assert info["size"] == len(data) and info["chunks"] == 3
        cid = info["cid"]
        r = await client.get(f"/v1/content/{cid}")
        assert r.status == 200 and await r.read() == data
        assert r.headers["Accept-Ranges"] == "bytes" and r.headers["ETag"] == f'"{cid}"'
        r = await client.get(f"/v1/content/{cid}", headers={"Range": "bytes=10-20"})
        assert r.status == 206 and await r.read() == data[10:21]
        assert r.headers["Content-Range"] == f"bytes 10-20/{len(data)}"
        r = await client.get(f"/v1/content/{cid}", headers={"Range": "bytes=2500-"})
        assert await r.read() == data[2500:]
        r = await client.head(f"/v1/content/{cid}")
        assert r.status == 200 and r.headers["Content-Length"] == str(len(data))
        r = await client.get("/v1/content")
        assert [b["cid"] for b in (await r.json())["blobs"]] == [cid]
        r = await client.get(f"/v1/content/{cid}/providers")
        assert (await r.json())["providers"][0]["key"] == "aa" * 32
        r = await client.get(f"/v1/content/{cid}/status")
        assert (await r.json())["state"] == "held"
        assert backend.fetches == []  # held: never fetched

    run(scenario)


def test_refusals_are_specific_and_keep_nothing() -> None:
    async def scenario(client: Client, backend: FakeBackend) -> None:
        r = await client.put("/v1/content", data=b"x" * 10_001)
        assert r.status == 413 and "limit" in (await r.json())["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed count
            for _ in range(11):
                yield b"y" * 1000

        r = await client.put("/v1/content", data=chunks())
        assert r.status == 413 and "10000-byte limit" in (await r.json())["error"]
        assert backend.blobs_ == {}
        r = await client.get("/v1/content/xyz")
        assert r.status == 400 and "invalid content id" in (await r.json())["error"]
        r = await client.get("/v1/content/" + "zz" * 32)
        assert r.status == 400
        unknown = "cd" * 32
        r = await client.get(f"/v1/content/{unknown}?local=1")
        assert r.status == 404 and backend.fetches == []
        r = await client.get(f"/v1/content/{unknown}")
        assert r.status == 404 and "no provider" in (await r.json())["error"]
        r = await client.head(f"/v1/content/{unknown}")
        assert r.status == 404
        r = await client.get(f"/v1/content/{unknown}/status")
        assert (await r.json())["state"] == "fetching"  # the fake remembers any attempt
        r = await client.post("/v1/transactions", data=b"tx")
        assert r.status == 409 and "mesh peer" in (await r.json())["error"]
        r = await client.get("/v1/log")
        assert r.status == 409

    run(scenario)


def test_get_fetches_from_the_mesh_then_serves() -> None:
    async def scenario(client: Client, backend: FakeBackend) -> None:
        cid = bytes(range(32))
        backend.remote[cid] = b"remote bytes"
        r = await client.post(f"/v1/content/{cid.hex()}/fetch")
        assert r.status == 202 and backend.fetches == [cid]
        r = await client.get(f"/v1/content/{cid.hex()}", headers={"Range": "bytes=-5"})
        assert r.status == 206 and await r.read() == b"bytes"
        r = await client.post(f"/v1/content/{cid.hex()}/fetch")
        assert r.status == 200 and (await r.json())["state"] == "held"

    run(scenario)


@pytest.mark.parametrize(
    "header",
    ["bytes=5-1", "bytes=100-", "bytes=-0", "bytes=-", "bytes=1-2,4-5", "items=1-2", "bytes=a-b"],
)
def test_unsatisfiable_ranges_are_416(header: str) -> None:
    with pytest.raises(ApiError) as info:
        _parse_range(header, 100)
    assert info.value.status == 416 and info.value.headers["Content-Range"] == "bytes */100"


@given(size=st.integers(1, 10**12), a=st.integers(0, 10**12), b=st.integers(0, 10**12))
def test_satisfiable_ranges_stay_inside_the_blob(size: int, a: int, b: int) -> None:
    first, last = min(a, b), max(a, b)
    try:
        start, end = _parse_range(f"bytes={first}-{last}", size)  # type: ignore[misc]
    except ApiError as exc:
        assert exc.status == 416 and first >= size
        return
    assert 0 <= start < end <= size and start == first and end == min(size, last + 1)
    suffix = _parse_range(f"bytes=-{b + 1}", size)
    assert suffix == (max(0, size - b - 1), size)
