"""Metrics tell the truth: every exported family changes when its thing happens, every
gauge reads a real value, running totals are counters named ``_total``, and the Grafana
dashboard in configs/grafana/ asks only for names the nodes export (and shows them all).

One cluster (four members and a mesh peer) is driven through each subsystem: the API
and consensus (transactions), the CRDT store (a document that must replicate), the DHT
and the content layer (a blob put on the peer and fetched by a member). The NAT
families need a relay and a punched link, so they are driven on loopback NAT services
(the shape of tests/p2p/test_p2p_nat_service.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
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


def _scrape(cluster: LocalCluster) -> tuple[dict[str, str], dict[str, Samples]]:
    kinds: dict[str, str] = {}
    merged: dict[str, Samples] = {}
    for i in range(cluster.n):
        with urllib.request.urlopen(cluster.api_url(i) + "/metrics", timeout=10) as r:
            k, s = _parse(r.read().decode())
        kinds.update(k)
        for family, series in s.items():
            merged.setdefault(family, {}).update({f"node{i}:{n}": v for n, v in series.items()})
    return kinds, merged


async def _ws_ingest(api: str, txs: list[bytes]) -> None:
    import aiohttp

    from dagrider.node.batch import encode_batch

    url = api.replace("http", "ws", 1) + "/v1/ingest"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_bytes(encode_batch(txs))
        reply = await ws.receive_json(timeout=10)
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
                all(cluster.get_json(i, "/v1/status")["round"] >= 2 for i in range(4))
                and cluster.get_json(4, "/v1/status")["dht"]["routing_table"] >= 1
            ),
            60,
            "the committee to run and the peer to join the mesh",
        )
        before = _scrape(cluster)
        # API + consensus: a backlog (scraped while the mempool holds it), one batch
        # over the WebSocket ingest, one bad request (the error counter).
        txs = [f"metrics-{k}".encode() for k in range(1_500)]
        submit_batch(cluster.api_url(0), txs)
        mid = _scrape(cluster)
        asyncio.run(_ws_ingest(cluster.api_url(1), [b"ws-1", b"ws-2"]))
        _wait(
            lambda: cluster.get_json(1, "/v1/status")["log_head"] >= len(txs) + 1,
            90,
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

        _wait(replicated, 60, "the CRDT document on node 1")
        # DHT + content: a blob on the peer, fetched by member 2.
        blob = tmp / "blob"
        blob.write_bytes(os.urandom(300_000))
        cid = content_put(cluster.api_url(4), blob)["cid"]
        assert content_get(cluster.api_url(2), cid, tmp / "out") == 300_000
        _wait(  # every link's keep-alive came back once: the RTT gauges are known
            lambda: all(
                p["rtt_ms"] is not None
                for i in range(4)
                for p in cluster.get_json(i, "/v1/status")["peers"].values()
            ),
            30,
            "a keep-alive round trip on every link",
        )
        after = _scrape(cluster)
        status = {i: cluster.get_json(i, "/v1/status") for i in range(cluster.n)}
        yield {"before": before, "mid": mid, "after": after, "status": status, "cid": cid}


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
        rtts = [
            v
            for s, v in after["dagrider_nat_peer_rtt_seconds"].items()
            if s.startswith(f"node{i}:")
        ]
        assert len(rtts) == 3 and all(0.0 <= v < 1.0 for v in rtts), rtts
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
                timeout=10,
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
                timeout=15,
                what="bytes through the relay",
            )
            await wait_until(
                lambda: (
                    a.values()["dagrider_nat_punches_succeeded_total"]
                    + b.values()["dagrider_nat_punches_succeeded_total"]
                    > 0
                ),
                timeout=20,
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

    run(main(), timeout=60)
    assert seen["circuits"] >= 1
