"""End-to-end CRDT store on real daemons: writes converge, checkpoints agree, restarts keep
everything, bad updates are refused with a reason and change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from dagrider.node.client import ApiError, crdt_get, crdt_list, crdt_put
from dagrider.node.cluster import LocalCluster

pytestmark = pytest.mark.e2e

FAST = {"crdt_sync_interval_ms": 300, "crdt_checkpoint_interval_ms": 700}


def _eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (ApiError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: last={last!r}")


def test_write_on_a_read_on_d_and_checkpoints_agree(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(**FAST)
    a, d = cluster.api_url(0), cluster.api_url(3)
    crdt_put(
        a,
        "app/settings",
        [
            {"path": ["title"], "type": "lww", "action": "set", "args": "hello"},
            {"path": ["views"], "type": "pncounter", "action": "inc", "args": 5},
            {"path": ["tags"], "type": "orset", "action": "add", "args": "x"},
            {
                "path": ["doc"],
                "type": "text",
                "action": "insert",
                "args": {"index": 0, "text": "hi"},
            },
        ],
    )
    for i in (1, 2):  # concurrent writers elsewhere
        crdt_put(
            cluster.api_url(i),
            "app/settings",
            [{"path": ["views"], "type": "pncounter", "action": "inc", "args": 1}],
        )
    want = {"doc": "hi", "tags": ["x"], "title": "hello", "views": 7}
    _eventually(lambda: crdt_get(d, "app/settings")["value"] == want, what="value on node 3")
    # Every node converges (node 3 may have heard all writers before node 1 heard node 2).
    for i in range(cluster.n):
        _eventually(
            lambda i=i: crdt_get(cluster.api_url(i), "app/settings")["value"] == want,
            what=f"value on node {i}",
        )
    reads = [crdt_get(cluster.api_url(i), "app/settings") for i in range(cluster.n)]
    assert len({r["state_hash"] for r in reads}) == 1

    # A checkpoint covering all four writes is ordered, and reads as the same state,
    # with the same proof, on every node.
    def checkpoint_with_everything() -> int:
        for cp in reversed(crdt_list(a, "checkpoints")["checkpoints"]):
            try:
                if crdt_get(a, "app/settings", cp["k"])["value"] == want:
                    return int(cp["k"])
            except ApiError:
                continue
        return 0

    k = _eventually(checkpoint_with_everything, what="a checkpoint of the final state")
    at_k = [
        _eventually(lambda i=i: crdt_get(cluster.api_url(i), "app/settings", k), what=f"node {i}")
        for i in range(cluster.n)
    ]
    assert all(r["value"] == want for r in at_k)
    assert len({json.dumps(r["checkpoint"], sort_keys=True) for r in at_k}) == 1
    assert len({r["state_hash"] for r in at_k}) == 1
    # the checkpoint transaction sits in the consensus log at the same index everywhere
    index = at_k[0]["checkpoint"]["log_index"]
    entries = [cluster.get_json(i, f"/v1/log?after={index - 1}&limit=1") for i in range(4)]
    assert len({e["entries"][0]["tx_id"] for e in entries}) == 1

    # A restart keeps changes and checkpoints.
    cluster.stop(3)
    cluster.start(3)
    cluster.wait_ready(60, nodes=[3])
    assert crdt_get(d, "app/settings")["value"] == want
    assert crdt_get(d, "app/settings", k)["state_hash"] == at_k[0]["state_hash"]
    status = cluster.get_json(3, "/v1/status")["crdt"]
    assert status["changes"] == 3 and status["checkpoints"] >= k
    with urllib.request.urlopen(f"{d}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "dagrider_crdt_changes 3" in metrics and "dagrider_crdt_checkpoints" in metrics


def test_bad_updates_are_refused_with_a_reason_and_change_nothing(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(**FAST)
    api = cluster.api_url(0)
    crdt_put(api, "app/x", [{"path": ["n"], "type": "gcounter", "action": "inc", "args": 1}])
    before = crdt_get(api, "app/x")
    bad: list[tuple[str, bytes, str]] = [
        ("app/x", b"not json", "not JSON"),
        ("app/x", b'{"ops": []}', "ops"),
        ("app/x", b'{"ops": [{"path": ["n"], "type": "nope", "action": "inc"}]}', "unknown"),
        (
            "app/x",
            b'{"ops": [{"path": ["n"], "type": "gcounter", "action": "inc", "args": -1}]}',
            "positive",
        ),
        (
            "app/x",
            b'{"ops": [{"path": ["s"], "type": "orset", "action": "remove", "args": 1}]}',
            "",
        ),
        (
            "BAD NS/x",
            b'{"ops": [{"path": ["n"], "type": "lww", "action": "set", "args": 1}]}',
            "namespace",
        ),
    ]
    for doc, body, needle in bad:
        req = urllib.request.Request(
            f"{api}/v1/crdt/docs/{doc.replace(' ', '%20')}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 400, (doc, body)
        message = json.loads(info.value.read())["error"]
        assert needle in message, (needle, message)
    assert crdt_get(api, "app/x") == before
    with pytest.raises(ApiError) as missing:
        crdt_get(api, "app/missing")
    assert missing.value.status == 404
    with pytest.raises(ApiError) as no_cp:
        crdt_get(api, "app/x", 10**6)
    assert no_cp.value.status == 404


def test_cli_put_get_and_sse_stream(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(**FAST)
    api = cluster.api_url(1)
    stream = urllib.request.urlopen(f"{api}/v1/crdt/stream?doc=cfg/peers", timeout=30)
    cli = [sys.executable, "-m", "dagrider", "crdt"]
    put = subprocess.run(
        [
            *cli,
            "put",
            "cfg/peers",
            "--api",
            api,
            "--set",
            'owner.name="ada"',
            "--inc",
            "hits=2",
            "--add",
            'roles="admin"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    change = json.loads(put.stdout)["change"]
    got = subprocess.run(
        [*cli, "get", "cfg/peers", "--api", cluster.api_url(2)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    for _ in range(100):
        if got.returncode == 0 and json.loads(got.stdout)["value"].get("hits") == 2:
            break
        time.sleep(0.1)
        got = subprocess.run(
            [*cli, "get", "cfg/peers", "--api", cluster.api_url(2)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert json.loads(got.stdout)["value"] == {
        "hits": 2,
        "owner": {"name": "ada"},
        "roles": ["admin"],
    }
    events = []
    for raw in stream:
        line = raw.decode().strip()
        if line.startswith("data:"):
            events.append(json.loads(line[5:]))
            break
    assert events[0]["hash"] == change and events[0]["doc"] == "cfg/peers" and events[0]["local"]
    bad = subprocess.run([*cli, "put", "cfg/peers", "--api", api], capture_output=True, text=True)
    assert bad.returncode == 2 and "nothing to put" in bad.stderr
