"""End to end: the DHT and the content layer on real daemons over loopback.

The issue's scenario: 20 peers; a 200 MB blob put on one is fetched by another from
several providers while one provider is killed mid-transfer and another serves
corrupted chunks (its file rotted on disk); the bytes that come out are the bytes that
went in. And a mixed deployment: committee members plus a mesh peer that replicates the
CRDT documents without voting.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dagrider.node.client import (
    ApiError,
    content_get,
    content_providers,
    content_put,
    content_status,
    crdt_get,
    crdt_put,
)
from dagrider.node.cluster import LocalCluster

MB = 1_000_000
CHUNK = 1024 * 1024


def _status(cluster: LocalCluster, i: int) -> dict[str, Any]:
    doc: dict[str, Any] = cluster.get_json(i, "/v1/status")
    return doc


def _wait(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def _start_fetch(cluster: LocalCluster, i: int, cid: str) -> None:
    req = urllib.request.Request(f"{cluster.api_url(i)}/v1/content/{cid}/fetch", data=b"")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status in (200, 202)


def _held(cluster: LocalCluster, i: int, cid: str) -> bool:
    state = content_status(cluster.api_url(i), cid)
    assert state["state"] != "failed", f"node {i}: fetch failed: {state}"
    return state["state"] == "held"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _blob_path(cluster: LocalCluster, i: int, cid: str) -> Path:
    return cluster.data_dir(i) / "content" / "blobs" / cid


def _served(cluster: LocalCluster, i: int) -> int:
    return int(_status(cluster, i)["content"]["bytes_served"])


def test_twenty_peers_fetch_200mb_despite_a_crash_and_a_rotten_provider(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    peers = 20
    cluster = make_cluster(nodes=0, peers=peers)
    _wait(
        lambda: all(_status(cluster, i)["dht"]["routing_table"] >= 3 for i in range(peers)),
        60,
        "every peer to know at least 3 others",
        poll=0.5,
    )
    blob = tmp_path / "blob.bin"
    with blob.open("wb") as f:
        for _ in range(200):
            f.write(os.urandom(MB))
    digest = _sha256_file(blob)

    doc = content_put(cluster.api_url(0), blob)
    cid = doc["cid"]
    assert doc["size"] == 200 * MB and doc["chunks"] == -(-200 * MB // CHUNK)

    # three more providers: each fetches it (verified) and announces itself
    for i in (1, 2, 3):
        _start_fetch(cluster, i, cid)
    _wait(lambda: all(_held(cluster, i, cid) for i in (1, 2, 3)), 180, "providers 1-3")
    for i in (1, 2, 3):
        assert _sha256_file(_blob_path(cluster, i, cid)) == digest
    listed = {p["key"] for p in content_providers(cluster.api_url(19), cid)["providers"]}
    assert {cluster.key_of(i).hex() for i in (0, 1, 2, 3)} <= listed

    # provider 3's copy rots on disk: one flipped byte in every chunk
    rotten = _blob_path(cluster, 3, cid)
    with rotten.open("r+b") as f:
        for index in range(doc["chunks"]):
            f.seek(index * CHUNK + 7)
            byte = f.read(1)
            f.seek(index * CHUNK + 7)
            f.write(bytes([byte[0] ^ 0xFF]))
    served_before = {i: _served(cluster, i) for i in (0, 1)}

    fetcher = 19
    _start_fetch(cluster, fetcher, cid)
    _wait(
        lambda: int(content_status(cluster.api_url(fetcher), cid).get("have_bytes", 0)) > 0,
        60,
        "the first verified chunk",
        poll=0.01,
    )
    assert content_status(cluster.api_url(fetcher), cid)["state"] == "fetching"
    cluster.kill(2)  # mid-transfer
    _wait(lambda: _held(cluster, fetcher, cid), 240, "the fetch to complete", poll=0.2)

    out = tmp_path / "out.bin"
    assert content_get(cluster.api_url(fetcher), cid, out) == 200 * MB
    assert _sha256_file(out) == digest
    st = _status(cluster, fetcher)["content"]
    assert st["bad_chunks"] >= 1, st  # provider 3 was asked and caught
    assert st["providers_banned"] >= 1, st
    contributed = [i for i in (0, 1) if _served(cluster, i) > served_before[i]]
    assert len(contributed) == 2, f"several live providers served the fetch, got {contributed}"


def test_content_api_rejects_bad_requests_and_serves_ranges(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=0, peers=3)
    api = cluster.api_url(0)
    data = os.urandom(3 * CHUNK + 12345)
    blob = tmp_path / "b"
    blob.write_bytes(data)
    cid = content_put(api, blob)["cid"]

    def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
        req = urllib.request.Request(api + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    code, body, headers = get(f"/v1/content/{cid}", {"Range": "bytes=100-199"})
    assert code == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    code, body, _ = get(f"/v1/content/{cid}", {"Range": "bytes=-10"})
    assert code == 206 and body == data[-10:]
    code, body, _ = get(f"/v1/content/{cid}", {"Range": f"bytes={len(data)}-"})
    assert code == 416 and "outside" in json.loads(body)["error"]
    code, body, _ = get(f"/v1/content/{cid}", {"Range": "bytes=1-2,5-6"})
    assert code == 416
    code, body, _ = get("/v1/content/not-a-cid")
    assert code == 400 and "invalid content id" in json.loads(body)["error"]
    unknown = "ab" * 32
    code, body, _ = get(f"/v1/content/{unknown}?local=1")
    assert code == 404
    code, body, _ = get(f"/v1/content/{unknown}")  # nobody provides it
    assert code in (404, 502), body
    assert content_status(api, unknown)["state"] in ("failed", "absent")
    # a peer orders nothing
    req = urllib.request.Request(api + "/v1/transactions", data=b"tx")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 409
    # the other peers still work after all that
    out = tmp_path / "o"
    assert content_get(cluster.api_url(2), cid, out) == len(data)
    assert out.read_bytes() == data
    with pytest.raises(ApiError):
        content_get(cluster.api_url(2), unknown, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dagrider", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_keygen_put_get_providers(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    done = _cli("keygen", "--peer", "--out", str(tmp_path / "p.key"))
    assert done.returncode == 0 and "peer key" in done.stdout
    assert _cli("keygen", "--peer", "--out", str(tmp_path / "p.key")).returncode == 2
    cluster = make_cluster(nodes=0, peers=3)
    data = os.urandom(CHUNK + 77)
    (tmp_path / "in").write_bytes(data)
    put = _cli("content", "put", str(tmp_path / "in"), "--api", cluster.api_url(0))
    assert put.returncode == 0, put.stderr
    cid = put.stdout.strip()
    got = _cli("content", "get", cid, "-o", str(tmp_path / "out"), "--api", cluster.api_url(1))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out").read_bytes() == data and "verified" in got.stdout
    prov = _cli("content", "providers", cid, "--api", cluster.api_url(2))
    keys = {p["key"] for p in json.loads(prov.stdout)["providers"]}
    assert {cluster.key_of(0).hex(), cluster.key_of(1).hex()} <= keys
    bad = _cli("content", "get", "nope", "-o", str(tmp_path / "x"), "--api", cluster.api_url(1))
    assert bad.returncode == 1 and "invalid content id" in bad.stderr
    missing = _cli("content", "put", str(tmp_path / "none"), "--api", cluster.api_url(1))
    assert missing.returncode == 2 and "is not a file" in missing.stderr


def test_a_mesh_peer_replicates_crdt_documents_and_content_without_voting(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=4, peers=1, crdt_sync_interval_ms=300)
    peer = 4
    crdt_put(
        cluster.api_url(0),
        "app/settings",
        [{"path": ["mode"], "type": "lww", "action": "set", "args": "fast"}],
    )

    def replicated() -> bool:
        try:
            doc = crdt_get(cluster.api_url(peer), "app/settings")
        except ApiError:
            return False
        return bool(doc["value"] == {"mode": "fast"})

    _wait(replicated, 60, "the document to reach the peer", poll=0.2)
    status = _status(cluster, peer)
    assert status["role"] == "peer" and "round" not in status
    members = [m["round"] for m in (_status(cluster, i) for i in range(4))]
    assert all(isinstance(r, int) for r in members)

    blob = tmp_path / "b"
    blob.write_bytes(os.urandom(2 * CHUNK))
    cid = content_put(cluster.api_url(peer), blob)["cid"]
    out = tmp_path / "o"
    assert content_get(cluster.api_url(1), cid, out) == 2 * CHUNK
    assert out.read_bytes() == blob.read_bytes()


def test_a_download_interrupted_by_a_crash_resumes_after_restart(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(nodes=0, peers=3)
    blob = tmp_path / "blob.bin"
    with blob.open("wb") as f:
        for _ in range(120):
            f.write(os.urandom(MB))
    digest = _sha256_file(blob)
    cid = content_put(cluster.api_url(0), blob)["cid"]
    fetcher = 2
    _start_fetch(cluster, fetcher, cid)
    _wait(
        lambda: int(content_status(cluster.api_url(fetcher), cid).get("have_bytes", 0)) > 0,
        60,
        "the first verified chunk",
        poll=0.01,
    )
    cluster.kill(fetcher)  # SIGKILL mid-transfer: the partial download stays on disk
    partial = cluster.data_dir(fetcher) / "content" / "partial" / f"{cid}.part"
    assert partial.exists(), "the kill came after the fetch had finished"
    cluster.start(fetcher)
    cluster.wait_ready(60, [fetcher])
    # no new request: the node resumes the partial download on its own after bootstrap
    _wait(lambda: _held(cluster, fetcher, cid), 120, "the resumed fetch", poll=0.2)
    assert _sha256_file(_blob_path(cluster, fetcher, cid)) == digest
    assert not partial.exists()
    assert "resuming download" in cluster.log_path(fetcher).read_text()
