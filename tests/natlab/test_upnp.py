"""End to end: a peer behind a UPnP router maps its port and is dialled directly.

The router of ``home`` is port-restricted (its firewall drops unsolicited inbound
connections) and runs a real ``miniupnpd`` (Debian ``miniupnpd-iptables``). ``up`` behind
it has ``[nat] upnp = true``; ``p0`` and ``p1`` are public peers and its reachability
servers; ``p2`` is a public peer that knows only ``p0``.

Checked: ``up`` maps its listening port on the router, the reachability servers'
dial-back to the mapped address (the router's WAN address) succeeds, so ``up`` is
"public" at exactly that address, stays a DHT server and advertises it (its provider
record names it, and no private address); ``p2``, which never heard of ``up`` before,
finds its blob through the DHT and fetches it over a link *it* dialled, directly, while
``up`` never hole-punched. Stopping ``up`` deletes the mapping from the router.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from natlab.daemons import Daemons
from natlab.lab import UPNP_PUBLIC_PREFIX, Lab, available
from natlab.test_mesh_nat import PEER_PORT

pytestmark = pytest.mark.natlab

BLOB = 3 * 64 * 1024 + 17
PUBLIC_TIMEOUT = 30.0  # up's start until its reachability is public


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    with Lab(public_prefix=UPNP_PUBLIC_PREFIX) as lab:
        yield lab


def test_upnp_peer_is_dialled_directly(lab: Lab, tmp_path: Path) -> None:
    home = lab.private_network("home", nat="port-restricted")
    upnpd = home.start_upnp(tmp_path)
    mesh = Daemons(tmp_path)
    for name in ("p0", "p1", "p2"):
        mesh.add(name, lab.public_host(name))
    up = mesh.add("up", home.host("up"))
    mesh.configure("p0", bootstrap=["p1"], servers=["p1", "p2"], dht_mode="server")
    mesh.configure("p1", bootstrap=["p0"], servers=["p0", "p2"], dht_mode="server")
    mesh.configure("p2", bootstrap=["p0"], servers=["p0", "p1"], dht_mode="server")
    mesh.configure("up", bootstrap=["p0", "p1"], servers=["p0", "p1"], upnp=True)
    wan = (home.router.public_address, PEER_PORT)
    try:
        mesh.start("p0")  # one by one: two public peers that dial each other at once
        mesh.start("p1")  # collide (a simultaneous open), see test_mesh_nat.start_all
        mesh.start("up")

        def public() -> dict[str, object] | None:
            nat: dict[str, object] = up.status()["nat"]
            return nat if nat["reachability"] == "public" else None

        nat = mesh.wait(public, PUBLIC_TIMEOUT, "up to be public through its UPnP mapping")
        assert nat["mapped_addrs"] == [list(wan)], nat
        assert nat["reachable_addrs"] == [list(wan)], nat
        assert up.status()["dht"]["mode"] == "server"

        blob = os.urandom(BLOB)
        cid = mesh.put("up", blob)
        mesh.start("p2")
        addrs = mesh.wait(
            lambda: mesh.providers("p2", cid, "up"), 60, "p2 to find up's provider record"
        )
        assert addrs == [f"{wan[0]}:{wan[1]}"], addrs  # the mapping, nothing private
        mesh.fetch("p2", cid, 20)
        assert mesh.read("p2", cid) == blob
        link = mesh.peers["p2"].status()["peers"][up.key.hex()]
        assert link["state"] == "connected" and link["path"] == "direct", link
        assert link["direction"] == "outbound", link  # p2 dialled up: no punch, no relay
        punches = up.status()["nat"]["punches"]
        assert punches == {"succeeded": 0, "failed": 0}, punches

        rules = home.router.run(["iptables-legacy", "-t", "nat", "-S", "MINIUPNPD"]).stdout
        assert f"--dport {PEER_PORT}" in rules, rules
        mesh.stop("up")  # a clean stop deletes the mapping on the router
        rules = home.router.run(["iptables-legacy", "-t", "nat", "-S", "MINIUPNPD"]).stdout
        assert f"--dport {PEER_PORT}" not in rules, rules
    finally:
        mesh.close()
        upnpd.terminate()
