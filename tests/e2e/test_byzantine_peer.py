"""End-to-end: a Byzantine member and a stranger attack three real daemons over TLS.

Node 3's daemon is never started; instead the test holds node 3's real key and speaks
to the others over authenticated TLS links: undecodable frames, well-formed messages
with forged content, an oversize frame header. A stranger whose key is not in the
committee may join the mesh (members serve the DHT and content to anyone), but its
consensus frames are dropped and counted; with the mesh off it is refused at the
handshake. The three correct nodes (2f+1) keep ordering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import urllib.request
from collections.abc import Callable

import pytest
from e2e.helpers import assert_same_log, wait_for_logs

from dagrider.codec import encode
from dagrider.committee import NodeSecret
from dagrider.keygen import key_file_name
from dagrider.messages import Echo, Ready, Val, Vertex, VertexRef
from dagrider.node.client import submit_batch
from dagrider.node.cluster import LocalCluster
from dagrider.node.config import parse_address
from p2p.framing import FrameKind, encode_frame
from p2p.identity import Identity
from p2p.testing import raw_dial, read_until_closed

pytestmark = pytest.mark.e2e


def _attack_frames() -> list[bytes]:
    digest = os.urandom(32)
    bogus = Vertex(5, 3, (b"x",), (VertexRef(4, 0, digest),), ())  # too few strong edges
    payloads = [
        os.urandom(100),  # not msgpack
        b"\x81\xa1t\x07",  # a map with a missing version
        encode(Echo(1, 0, os.urandom(32))),  # votes for digests nobody proposed
        encode(Ready(1, 1, os.urandom(32))),
        encode(Val(bogus)),  # invalid vertex from its "source"
    ]
    return [encode_frame(FrameKind.DATA, p) for p in payloads]


async def _attack(
    cluster: LocalCluster, byzantine: Identity, stranger: Identity, mesh: bool
) -> list[str]:
    outcomes: list[str] = []
    for i in range(3):
        address = parse_address(cluster.committee.member(i).address)
        key = cluster.committee.member(i).identity_key
        seen = await asyncio.to_thread(_metric, cluster, i, MISBEHAVIOUR)
        reader, writer = await raw_dial(byzantine, address, key)
        for frame in _attack_frames():
            writer.write(frame)
        await writer.drain()
        # framing errors drop a whole chunk: the header goes once these frames were read
        await _metric_reaches(cluster, i, MISBEHAVIOUR, seen + 1)
        writer.write(b"\xff\xff\xff\xff\x00")  # a frame header announcing 4 GiB
        await writer.drain()
        await read_until_closed(reader, timeout=10)
        outcomes.append(f"node {i}: byzantine link closed")
        writer.close()
        try:
            r2, w2 = await raw_dial(stranger, address, key)
        except (ConnectionError, OSError) as exc:
            outcomes.append(f"node {i}: stranger refused ({type(exc).__name__})")
            continue
        if not mesh:
            # A TLS 1.3 server may only reject after the handshake: then it closes at once.
            await read_until_closed(r2, timeout=10)
            outcomes.append(f"node {i}: stranger closed")
        else:
            for frame in _attack_frames():  # a mesh peer posing as a voter
                w2.write(frame)
            await w2.drain()
            await _metric_reaches(cluster, i, STRANGER_FRAMES, len(_attack_frames()))
            outcomes.append(f"node {i}: stranger sent consensus frames")
        with contextlib.suppress(Exception):
            w2.close()
    return outcomes


MISBEHAVIOUR = "dagrider_peer_misbehaviour_total"
STRANGER_FRAMES = "dagrider_stranger_consensus_frames_total"


def _metric(cluster: LocalCluster, i: int, name: str) -> float:
    with urllib.request.urlopen(cluster.api_url(i) + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


async def _metric_reaches(cluster: LocalCluster, i: int, name: str, value: float) -> None:
    """Poll node ``i``'s metric until it is at least ``value`` (the timeout ends a hang)."""
    async with asyncio.timeout(60):
        while await asyncio.to_thread(_metric, cluster, i, name) < value:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("mesh", [True, False], ids=["mesh", "closed"])
def test_byzantine_member_and_stranger_do_not_stop_the_others(
    make_cluster: Callable[..., LocalCluster], mesh: bool
) -> None:
    cluster = make_cluster(start=False, dht=mesh)
    for i in range(3):
        cluster.start(i)
    cluster.wait_ready(60, [0, 1, 2])
    secret = NodeSecret.load(cluster.committee_dir / key_file_name(3))
    byzantine = Identity.from_seed(secret.identity_seed)
    stranger = Identity.generate()
    outcomes = asyncio.run(_attack(cluster, byzantine, stranger, mesh))
    assert len([o for o in outcomes if "byzantine link closed" in o]) == 3
    assert len([o for o in outcomes if "stranger" in o]) == 3

    sent = {f"after-attack-{k}".encode() for k in range(300)}
    for i, chunk in enumerate([sorted(sent)[k::3] for k in range(3)]):
        submit_batch(cluster.api_url(i), chunk)
    logs = wait_for_logs(cluster, [0, 1, 2], sent)
    assert_same_log(logs)
    assert all(cluster.alive(i) for i in range(3))
    assert sum(_metric(cluster, i, MISBEHAVIOUR) for i in range(3)) >= 3
    dropped = sum(_metric(cluster, i, STRANGER_FRAMES) for i in range(3))
    assert dropped == (3 * len(_attack_frames()) if mesh else 0)
