"""mDNS discovery between two network namespaces on one bridge (a private network of
the lab): two mesh peers with ``[discovery] mdns = true`` and no bootstrap peer find
each other, link through the authenticated transport, and then use the DHT and the
content layer over that link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from natlab.lab import JsonLinesProcess, Lab, Network

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.natlab


def _peer(host_name: str, network: Network, work: Path) -> JsonLinesProcess:
    host = network.host(host_name)
    return JsonLinesProcess(
        host,
        str(HERE / "mdns_peer.py"),
        str(work / host_name),
        host.address,
        "7000",
        read_timeout=40,
    )


def test_two_namespaces_on_one_bridge_find_each_other(natlab: Lab, tmp_path: Path) -> None:
    lan = natlab.private_network("lan")
    a = _peer("a", lan, tmp_path)
    b = _peer("b", lan, tmp_path)
    key_a = a.read()["key"]
    key_b = b.read()["key"]
    assert key_b in a.read()["linked"]
    assert key_a in b.read()["linked"]
    # the link carries the mesh: b fetches a's blob, found through the DHT
    payload = os.urandom(200_000)
    a.send(put=payload.hex())
    cid = a.read()["cid"]
    b.send(get=cid)
    assert bytes.fromhex(b.read()["data"]) == payload
    a.send(quit=True)
    b.send(quit=True)
