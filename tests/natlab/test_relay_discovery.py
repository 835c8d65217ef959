"""End to end: a peer finds the relay of a NAT'd peer through the DHT, not its config.

``np`` and ``nq`` sit behind two symmetric NATs (no hole punch can join them). ``np``
holds a reservation at ``p0``, the only relay service; ``nq`` has never heard of ``p0``:
its ``[nat] relays`` (its reachability servers) are ``p1`` and ``p2``, and so are its
bootstrap peers. ``p0``..``p2`` are public.

Checked: ``np`` publishes a signed relay record naming ``p0``, and its provider record
names ``p0``'s public address, never its own private one; ``nq`` fetches a blob put on
``np``, bytes intact, over a link relayed by ``p0`` that it found through the DHT.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from natlab.daemons import Daemons
from natlab.lab import Lab, available

pytestmark = pytest.mark.natlab

BLOB = 4 * 64 * 1024 + 99
PRIVATE_TIMEOUT = 30.0


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    with Lab() as lab:
        yield lab


def test_relay_found_through_dht(lab: Lab, tmp_path: Path) -> None:
    mesh = Daemons(tmp_path)
    for name in ("p0", "p1", "p2"):
        mesh.add(name, lab.public_host(name))
    np = mesh.add("np", lab.private_network("home", nat="symmetric").host("np"))
    nq = mesh.add("nq", lab.private_network("work", nat="symmetric").host("nq"))
    mesh.configure(
        "p0", bootstrap=["p1"], servers=["p1", "p2"], dht_mode="server", offer_relay=True
    )
    mesh.configure("p1", bootstrap=["p0"], servers=["p0", "p2"], dht_mode="server")
    mesh.configure("p2", bootstrap=["p0"], servers=["p0", "p1"], dht_mode="server")
    mesh.configure("np", bootstrap=["p0", "p1"], servers=["p0", "p1"], reserve=True)
    mesh.configure("nq", bootstrap=["p1", "p2"], servers=["p1", "p2"])
    p0 = mesh.peers["p0"]
    try:
        for name in ("p0", "p1", "p2", "np", "nq"):  # one by one: see test_upnp
            mesh.start(name)

        def private(name: str) -> bool:
            st = mesh.peers[name].status()
            return st["nat"]["reachability"] == "private" and st["dht"]["mode"] == "client"

        mesh.wait(lambda: private("np") and private("nq"), PRIVATE_TIMEOUT, "np, nq private")
        mesh.wait(
            lambda: p0.key.hex()[:16] in np.status()["nat"]["reservations"], 10, "np's reservation"
        )

        blob = os.urandom(BLOB)
        cid = mesh.put("np", blob)
        relay_addr = f"{p0.host.public_address}:9000"
        addrs = mesh.wait(
            lambda: mesh.providers("nq", cid, "np") == [relay_addr] and [relay_addr],
            15,
            "nq to find np's provider record naming np's relay",
        )
        assert not any(a.startswith("10.") for a in addrs), addrs
        assert p0.key.hex() not in nq.config.read_text()  # nq learns p0 only from the DHT

        mesh.fetch("nq", cid, 30)
        assert mesh.read("nq", cid) == blob
        link = nq.status()["peers"][np.key.hex()]
        assert link["state"] == "connected", link
        assert link["path"] == f"relayed:{p0.key.hex()}", link
    finally:
        mesh.close()
