"""Metrics tell the truth: every exported family changes when its thing happens, every
gauge reads a real value, running totals are counters named ``_total``, and the Grafana
dashboard in configs/grafana/ asks only for names the nodes export (and shows them all).

One cluster (four members and a mesh peer) is driven through each subsystem: the API
and consensus (transactions), the CRDT store (a document that must replicate), the DHT
and the content layer (a blob put on the peer and fetched by a member). The NAT
families need a relay and a punched link, so they are driven on loopback NAT services
(the shape of tests/p2p/test_p2p_nat_service.py).

Nothing here races the daemons: the mempool backlog is scraped while two members are
paused (SIGSTOP), so that no round can take it; the gauges are compared with a
``/v1/status`` read just before and just after the same scrape that agree with each
other; every wait is a hang limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dagrider.node.client import (
    ApiError,
    content_get,
    content_put,
    crdt_get,
    crdt_put,
    get_log,
    submit_batch,
)
from dagrider.node.cluster import ClusterSpec, LocalCluster, free_port_block
from dagrider.node.components import add_nat_counters
from dagrider.node.metrics import Metrics

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).parents[2] / "configs" / "grafana" / "dagrider.json"

Samples = dict[str, float]
"""``name{labels}`` -> value."""

FAULT_ONLY: dict[str, str] = {
    # Families that move only when something goes wrong (or under overload); a healthy
    # run may leave them alone. Each is driven by the test named.
    "dagrider_peer_misbehaviour_total": "Byzantine peers (tests/e2e/test_byzantine_peer.py)",
    "dagrider_requeued_transactions_total": "a vertex lost to a crash (test_cluster.py)",
    "dagrider_stranger_consensus_frames_total": "non-members (test_byzantine_flood.py)",
    "dagrider_catchup_requests_total": "a node that fell behind (tests/e2e/test_rejoin.py)",
    "dagrider_rejected_transactions_total": "an overloaded mempool (admission control)",
    "dagrider_storage_dropped_frames_total": "a full disk (test_storage_faults.py)",
    "dagrider_storage_outages_total": "a full disk (test_storage_faults.py)",
    "dagrider_storage_writable": "a full disk (test_storage_faults.py)",
    "dagrider_crdt_peer_faults_total": "invalid CRDT sync input (test_crdt_cluster.py)",
    "dagrider_crdt_rejected_changes_total": "forged CRDT changes (test_crdt_cluster.py)",
    "dagrider_crdt_pending_changes": "changes whose dependencies are missing",
    "dagrider_content_bad_chunks_total": "a rotten provider (test_content_mesh.py)",
    "dagrider_content_fetches_failed_total": "content nobody provides",
    "dagrider_content_fetches_active": "a fetch in progress at the scrape",
    "dagrider_dht_query_failures_total": "a DHT peer that does not answer",
    "dagrider_dht_records": "signed DHT records (no node writes one here)",
    "dagrider_nat_punches_succeeded_total": "a NAT (test_nat_families_change_with_...)",
    "dagrider_nat_punches_failed_total": "a NAT that defeats punching (tests/natlab)",
    "dagrider_nat_relay_circuits": "a relayed link (test_nat_families_change_with_...)",
    "dagrider_nat_relay_bytes_total": "a relayed link (test_nat_families_change_with_...)",
}
STATE: dict[str, str] = {
    # Gauges of a state that the drive does not move; their values are checked instead.
    "dagrider_dht_routing_peers": "== /v1/status routing_table (test_mesh_gauges_...)",
    "dagrider_mempool_admit_limit_transactions": "the configured cap until the drain rate "
    "is known to be lower",
    "dagrider_nat_peers": "== the paths in /v1/status nat.peers (test_state_gauges_...)",
    "dagrider_nat_public": "== /v1/status nat.reachability (test_state_gauges_...)",
    "dagrider_nat_peer_relayed": "0 for every member: loopback links are direct",
    "dagrider_nat_peer_rtt_seconds": ">= 0 once a keep-alive came back (test_state_gauges_...)",
}


def _parse(text: str) -> tuple[dict[str, str], dict[str, Samples]]:
    """(family -> type, family -> its samples) from the text exposition format."""
    kinds: dict[str, str] = {}
    samples: dict[str, Samples] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            kinds[name] = kind
            samples.setdefault(name, {})
        elif line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            name = re.split(r"[{ ]", series, maxsplit=1)[0]
            family = name
            if family not in kinds:
                family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert family in kinds, f"sample {series} before its # TYPE"
            samples[family][series] = float(value)
    return kinds, samples


HANG_S = 120.0
"""Hang limit of every wait for something that must happen (a run, a commit, a round
trip): generous, so that only a real stall reaches it on a loaded 2-core machine."""


def _scrape_node(cluster: LocalCluster, i: int) -> tuple[dict[str, str], dict[str, Samples]]:
    """Node ``i``'s families, its series named ``node<i>:<series>``."""
    with urllib.request.urlopen(cluster.api_url(i) + "/metrics", timeout=30) as r:
        kinds, samples = _parse(r.read().decode())
    return kinds, {
        family: {f"node{i}:{n}": v for n, v in series.items()} for family, series in samples.items()
    }


def _merge(
    scrapes: list[tuple[dict[str, str], dict[str, Samples]]],
) -> tuple[dict[str, str], dict[str, Samples]]:
    kinds: dict[str, str] = {}
    merged: dict[str, Samples] = {}
    for k, s in scrapes:
        kinds.update(k)
        for family, series in s.items():
            merged.setdefault(family, {}).update(series)
    return kinds, merged


def _scrape(cluster: LocalCluster) -> tuple[dict[str, str], dict[str, Samples]]:
    return _merge([_scrape_node(cluster, i) for i in range(cluster.n)])


def _view(status: dict[str, object]) -> object:
    """What ``test_state_gauges_read_the_real_values`` compares with the gauges."""
    dht, content, nat = status["dht"], status["content"], status.get("nat") or {}
    assert isinstance(dht, dict) and isinstance(content, dict) and isinstance(nat, dict)
    peers = status.get("peers") or {}
    assert isinstance(peers, dict)
    return (
        dht["routing_table"],
        dht["providers"],
        dht["stats"],
        content["bytes_served"],
        content["bytes_fetched"],
        nat.get("reachability"),
        sorted((k, p["path"]) for k, p in (nat.get("peers") or {}).items()),
        sorted((k, p["rtt_ms"]) for k, p in peers.items()),
    )


def _scrape_with_status(
    cluster: LocalCluster,
) -> tuple[tuple[dict[str, str], dict[str, Samples]], dict[int, dict[str, object]]]:
    """Every node's scrape with a ``/v1/status`` that agrees with it: a status read just
    before and one just after the scrape must show the same values (DHT maintenance,
    keep-alives and the like may move them at any time), else the node is read again."""
    scrapes = []
    status: dict[int, dict[str, object]] = {}
    for i in range(cluster.n):
        deadline = time.monotonic() + HANG_S
        while True:
            first = cluster.get_json(i, "/v1/status", timeout=30)
            scrape = _scrape_node(cluster, i)
            status[i] = cluster.get_json(i, "/v1/status", timeout=30)
            if _view(first) == _view(status[i]):
                break
            assert time.monotonic() < deadline, f"node {i}'s status never held still"
        scrapes.append(scrape)
    return _merge(scrapes), status


def _mempool_backlog(
    cluster: LocalCluster, paused: tuple[int, ...] = (2, 3)
) -> tuple[list[bytes], tuple[dict[str, str], dict[str, Samples]]]:
    """Node 0's scrape while its mempool holds a backlog, and the transactions sent.

    With members ``paused`` (SIGSTOP) no vertex can be delivered, so node 0 can propose
    at most the vertex it was about to: a batch it took is followed by another until one
    stays in the mempool. (A scrape right after one batch on a running committee would
    race the next vertex for it.)"""
    sent: list[bytes] = []
    pids = [pid for pid in (cluster.pid(i) for i in paused) if pid is not None]
    assert len(pids) == len(paused), "a member to pause is not running"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + HANG_S
        while True:
            txs = [f"metrics-{len(sent) + k}".encode() for k in range(1_500)]
            submit_batch(cluster.api_url(0), txs)
            sent += txs
            scrape = _scrape_node(cluster, 0)
            if scrape[1]["dagrider_mempool_transactions"]["node0:dagrider_mempool_transactions"]:
                return sent, scrape
            assert time.monotonic() < deadline, "node 0's mempool never held a backlog"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def _ws_ingest(api: str, txs: list[bytes]) -> None:
    import aiohttp

    from dagrider.node.batch import encode_batch

    url = api.replace("http", "ws", 1) + "/v1/ingest"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_bytes(encode_batch(txs))
        reply = await ws.receive_json(timeout=60)
        assert reply == {"accepted": len(txs)}, reply


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Scrapes before and after each subsystem was driven once."""
    tmp = tmp_path_factory.mktemp("metrics")
    spec = ClusterSpec(
        directory=tmp / "cluster",
        nodes=4,
        peers=1,
        base_port=free_port_block(5),
        api_base_port=free_port_block(5),
        crdt_sync_interval_ms=300,
        crdt_checkpoint_interval_ms=1_000,
        content_chunk_kib=64,
        extra_config="[nat]\nenabled = true\n",  # the NAT families are exported too
    )
    with LocalCluster(spec) as cluster:
        cluster.start_all()
        cluster.wait_ready(60)
        _wait(
            lambda: (
                all(cluster.get_json(i, "/v1/status", timeout=30)["round"] >= 2 for i in range(4))
                and cluster.get_json(4, "/v1/status", timeout=30)["dht"]["routing_table"] >= 1
            ),
            HANG_S,
            "the committee to run and the peer to join the mesh",
        )
        before = _scrape(cluster)
        # API + consensus: a backlog (scraped while the mempool holds it), one batch
        # over the WebSocket ingest, one bad request (the error counter).
        txs, backlog = _mempool_backlog(cluster)
        mid = _merge([backlog, *(_scrape_node(cluster, i) for i in range(1, cluster.n))])
        asyncio.run(_ws_ingest(cluster.api_url(1), [b"ws-1", b"ws-2"]))
        _wait(
            lambda: cluster.get_json(1, "/v1/status", timeout=30)["log_head"] >= len(txs) + 1,
            HANG_S,
            "commits",
        )
        assert len(get_log(cluster.api_url(0), -1, 10)) == 10  # a client reads the log
        with pytest.raises(ApiError):
            submit_batch(cluster.api_url(0), [])
        # CRDT: a change on node 0 that must reach node 1 by sync.
        op = {"path": ["k"], "type": "lww", "action": "set", "args": "v"}
        crdt_put(cluster.api_url(0), "m/doc", [op])

        def replicated() -> bool:
            try:
                return bool(crdt_get(cluster.api_url(1), "m/doc")["value"] == {"k": "v"})
            except ApiError:
                return False

        _wait(replicated, HANG_S, "the CRDT document on node 1")
        # DHT + content: a blob on the peer, fetched by member 2.
        blob = tmp / "blob"
        blob.write_bytes(os.urandom(300_000))
        cid = content_put(cluster.api_url(4), blob)["cid"]
        assert content_get(cluster.api_url(2), cid, tmp / "out") == 300_000
        _wait(  # every link's keep-alive came back once: the RTT gauges are known
            lambda: all(
                p["rtt_ms"] is not None
                for i in range(4)
                for p in cluster.get_json(i, "/v1/status", timeout=30)["peers"].values()
            ),
            HANG_S,
            "a keep-alive round trip on every link",
        )
        after, status = _scrape_with_status(cluster)
        assert cluster.committee is not None
        keys = {cluster.committee.member(j).identity_key.hex(): j for j in range(4)}
        yield {
            "before": before,
            "mid": mid,
            "after": after,
            "status": status,
            "cid": cid,
            "members": keys,
        }


def test_every_family_changes_when_its_thing_happens(driven: dict[str, object]) -> None:
    _, before = driven["before"]  # type: ignore[misc]
    _, mid = driven["mid"]  # type: ignore[misc]
    kinds, after = driven["after"]  # type: ignore[misc]
    unchanged = {f for f in kinds if before.get(f) == after.get(f) and before.get(f) == mid.get(f)}
    assert unchanged - set(FAULT_ONLY) - set(STATE) == set(), (
        "families that did not change although their subsystem was driven: "
        f"{sorted(unchanged - set(FAULT_ONLY) - set(STATE))}"
    )
    for family in (*FAULT_ONLY, *STATE):
        assert family in kinds, f"{family} is no longer exported: update FAULT_ONLY/STATE"
    for family, kind in kinds.items():
        if kind == "counter":
            assert family.endswith("_total"), family
            for series, value in after[family].items():
                assert value >= before.get(family, {}).get(series, 0.0), (family, series)
        else:
            assert not family.endswith("_total"), f"{family} is a {kind} named like a counter"


def test_state_gauges_read_the_real_values(driven: dict[str, object]) -> None:
    _, after = driven["after"]  # type: ignore[misc]
    status: dict[int, dict[str, object]] = driven["status"]  # type: ignore[assignment]
    members: dict[str, int] = driven["members"]  # type: ignore[assignment]

    def value(family: str, node: int) -> float:
        (v,) = [v for s, v in after[family].items() if s.startswith(f"node{node}:")]
        return v

    for i, st in status.items():
        dht = st["dht"]
        assert isinstance(dht, dict)
        assert value("dagrider_dht_routing_peers", i) == dht["routing_table"] > 0
        assert value("dagrider_dht_provider_records", i) == dht["providers"]
        stats = dht["stats"]
        assert isinstance(stats, dict)
        assert value("dagrider_dht_lookups_total", i) == stats.get("lookups", 0)
        content = st["content"]
        assert isinstance(content, dict)
        assert value("dagrider_content_bytes_served_total", i) == content["bytes_served"]
        assert value("dagrider_content_bytes_fetched_total", i) == content["bytes_fetched"]
    for i in range(4):  # members: the consensus-side NAT gauges
        nat = status[i]["nat"]
        assert isinstance(nat, dict)
        paths = [p["path"] for p in nat["peers"].values()]
        for kind in ("direct", "relayed", "none"):
            assert after["dagrider_nat_peers"][f'node{i}:dagrider_nat_peers{{path="{kind}"}}'] == (
                paths.count(kind)
            ), (i, kind, paths)
        assert paths.count("direct") >= 3
        reach = {"public": 1.0, "private": 0.0}.get(nat["reachability"], -1.0)
        assert value("dagrider_nat_public", i) == reach
        relayed = [
            v for s, v in after["dagrider_nat_peer_relayed"].items() if s.startswith(f"node{i}:")
        ]
        assert relayed == [0.0, 0.0, 0.0], relayed
        # The RTT gauge is the link's keep-alive RTT in seconds: what /v1/status shows in
        # milliseconds (read around the same scrape). No bound on its size: that would
        # time the machine, not check the gauge.
        rtts = {
            s: v
            for s, v in after["dagrider_nat_peer_rtt_seconds"].items()
            if s.startswith(f"node{i}:")
        }
        peers = status[i]["peers"]
        assert isinstance(peers, dict)
        shown = {
            f'node{i}:dagrider_nat_peer_rtt_seconds{{peer="{members[k]}"}}': p["rtt_ms"] / 1000
            for k, p in peers.items()
            if k in members
        }
        assert len(rtts) == 3 and rtts == shown and all(v >= 0 for v in rtts.values()), (
            rtts,
            shown,
        )
    assert value("dagrider_content_blobs", 4) == 1  # the peer holds the blob it was given
    assert value("dagrider_content_blobs", 2) == 1  # and member 2 fetched it
    assert value("dagrider_content_bytes_fetched_total", 2) >= 300_000
    assert sum(value("dagrider_dht_provider_records", i) for i in status) >= 1
    assert value("dagrider_dht_lookups_total", 2) >= 1


def _dashboard_names() -> set[str]:
    doc = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            names |= set(re.findall(r"\bdagrider_[a-z0-9_]+", target["expr"]))
    return names


def test_grafana_dashboard_matches_the_exported_names(driven: dict[str, object]) -> None:
    kinds, _ = driven["after"]  # type: ignore[misc]
    exported: set[str] = set()
    for family, kind in kinds.items():
        exported.add(family)
        if kind == "histogram":
            exported |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    asked = _dashboard_names()
    assert asked - exported == set(), (
        f"the dashboard asks for names no node exports: {asked - exported}"
    )
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) if n not in kinds else n for n in asked}
    assert set(kinds) - shown == set(), f"exported but not on the dashboard: {set(kinds) - shown}"


def test_nat_families_change_with_a_relayed_then_punched_link() -> None:
    """The NAT counters over real NAT services on loopback: a relay carries a circuit
    (circuits, relayed bytes), and the two ends punch a direct link (punches)."""
    from p2p.framing import FrameKind
    from p2p.identity import Identity
    from p2p.nat.manager import ManagerConfig, PeerInfo
    from p2p.nat_service import NatConfig, NatService
    from p2p.testing import loopback_config, run, wait_until
    from p2p.transport import PeerTransport

    class Node:
        def __init__(self, ident: Identity, config: NatConfig) -> None:
            self.transport = PeerTransport(
                ident,
                loopback_config(),
                {},
                None,
                lambda _k, _p: None,
                lambda k: self.nat.on_connected(k),
                lambda k: self.nat.on_disconnected(k),
                channels={FrameKind.NAT: lambda k, d: self.nat.on_frame(k, d)},
            )
            self.nat = NatService(self.transport, config, logging.getLogger("nat-metrics"))
            self.metrics = Metrics()
            add_nat_counters(self.metrics, self.nat)

        def values(self) -> Samples:
            families = _parse(self.metrics.render())[1]
            return {s: v for fam in families.values() for s, v in fam.items()}

    r_id, a_id, b_id = (Identity.from_seed(bytes([i]) * 32) for i in (31, 32, 33))
    seen: dict[str, float] = {}

    async def main() -> None:
        relay = Node(r_id, NatConfig(offer_relay=True))
        relay.nat.relay.set_enabled(True)  # loopback cannot prove public reachability
        await relay.transport.start()
        relay.nat.start()
        relays = {r_id.public_key: relay.transport.listen_address}
        fast = ManagerConfig(dial_timeout=1.0, retry_after=1.0)
        a, b = (Node(i, NatConfig(relays=relays, reserve=True, manager=fast)) for i in (a_id, b_id))
        nodes = [relay, a, b]
        for node in (a, b):
            await node.transport.start()
            node.nat.start()
        try:
            start = {id(n): n.values() for n in nodes}
            await wait_until(
                lambda: all(n.nat.reservations.active(n.nat.now) for n in (a, b)),
                timeout=HANG_S,
                what="reservations",
            )

            async def watch_circuits() -> None:  # the circuit lives until the upgrade
                while True:
                    circuits = relay.values()["dagrider_nat_relay_circuits"]
                    seen["circuits"] = max(seen.get("circuits", 0.0), circuits)
                    # Every loop iteration: relayed bytes take several, so a circuit that
                    # carried any cannot open and close between two looks.
                    await asyncio.sleep(0)

            watcher = asyncio.create_task(watch_circuits())
            a.nat.want(b_id.public_key, PeerInfo((), False, (r_id.public_key,)))
            b.nat.want(a_id.public_key, PeerInfo((), False, (r_id.public_key,)))
            await wait_until(
                lambda: relay.values()["dagrider_nat_relay_bytes_total"] > 0,
                timeout=HANG_S,
                what="bytes through the relay",
            )
            await wait_until(
                lambda: (
                    a.values()["dagrider_nat_punches_succeeded_total"]
                    + b.values()["dagrider_nat_punches_succeeded_total"]
                    > 0
                ),
                timeout=HANG_S,
                what="a punched direct link",
            )
            watcher.cancel()
            for n in nodes:
                for series, v in n.values().items():
                    assert v >= start[id(n)].get(series, 0.0) or not series.endswith("_total")
        finally:
            for node in nodes:
                await node.nat.close()
                await node.transport.close()

    run(main(), timeout=4 * HANG_S)  # the waits inside end a hang first
    assert seen["circuits"] >= 1
