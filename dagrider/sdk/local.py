"""In-process test networks: a whole committee (and mesh peers) in one asyncio program.

For examples, tests and trying the API on a laptop: :func:`local_network` lays out a
fresh committee with test keys on loopback (the same layout as ``dagrider cluster
up``, via :class:`dagrider.node.cluster.LocalCluster`), starts every member and peer in
the running event loop, and stops them all when the block ends. :func:`join_config`
makes the configuration of an embedded peer that joins a cluster started by
``dagrider cluster up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagrider.committee import Committee
from dagrider.keygen import COMMITTEE_FILE
from dagrider.node.cluster import ClusterSpec, LocalCluster, free_port_block
from dagrider.node.config import NodeConfig, load_config
from dagrider.node.peer_key import PeerKey
from dagrider.sdk.errors import InvalidArgument
from dagrider.sdk.node import InvalidConfig, Node, Peer

__all__ = ["LocalNetwork", "join_config", "local_network"]

TEST_KEY_NOTE = "TEST KEY of an embedded peer - never use in production"


@dataclass
class LocalNetwork:
    """The running members (``nodes[i]`` is member ``i``) and peers of a local network."""

    nodes: list[Node]
    peers: list[Peer]
    directory: Path


@contextlib.asynccontextmanager
async def local_network(
    directory: str | os.PathLike[str],
    *,
    members: int = 4,
    peers: int = 0,
    batch_delay_ms: int = 20,
    crdt_sync_interval_ms: int = 500,
    extra_config: str = "",
    ready_timeout: float = 30.0,
) -> AsyncIterator[LocalNetwork]:
    """Start ``members`` committee members (n = 3f+1 >= 4) and
    ``peers`` mesh peers in this event loop, on free loopback ports, with their state
    in ``directory``; stop them all on exit. ``extra_config`` is TOML appended to every
    node's file (e.g. a ``[crdt] writers`` table). The block starts once every member
    is linked to every other member and every peer to at least one node
    (``TimeoutError`` after ``ready_timeout`` seconds)."""
    if type(members) is not int or members < 4 or (members - 1) % 3:
        raise InvalidArgument("members", f"{members!r}: expected n = 3f+1 >= 4 (4, 7, 10, ...)")
    if type(peers) is not int or peers < 0:
        raise InvalidArgument("peers", f"{peers!r}: expected an integer >= 0")
    count = members + peers
    cluster = LocalCluster(
        ClusterSpec(
            directory=Path(directory),
            nodes=members,
            peers=peers,
            base_port=free_port_block(count),
            api_base_port=free_port_block(count),
            batch_delay_ms=batch_delay_ms,
            idle_round_ms=max(batch_delay_ms, 100),
            crdt_sync_interval_ms=crdt_sync_interval_ms,
            crdt_checkpoint_interval_ms=max(1000, crdt_sync_interval_ms),
            log_level="warning",
            extra_config=extra_config,
        )
    )
    net = LocalNetwork([], [], Path(directory))
    try:
        for i in range(members):
            node = Node(cluster.configs[i])
            await node.start()
            net.nodes.append(node)
        for j in range(peers):
            peer = Peer(cluster.configs[members + j])
            await peer.start()
            net.peers.append(peer)
        await _linked(net, ready_timeout)
        yield net
    finally:
        await _stop_all([*net.peers, *reversed(net.nodes)])


async def _stop_all(endpoints: Sequence[Node | Peer]) -> None:
    """Stop every endpoint, even if stopping one raises (then the first error is raised
    after the rest stopped): a node left running would keep its ports, tasks and open
    stores until the process ends."""
    first: BaseException | None = None
    for endpoint in endpoints:
        try:
            await endpoint.stop()
        except BaseException as exc:  # re-raised below, after the rest stopped
            first = first or exc
    if first is not None:
        raise first


async def _linked(net: LocalNetwork, timeout: float) -> None:
    members = len(net.nodes)
    async with asyncio.timeout(timeout):
        while not (
            all(len(n.network.connected()) >= members - 1 for n in net.nodes)
            and all(p.network.connected() for p in net.peers)
        ):
            await asyncio.sleep(0.02)


def join_config(
    cluster_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    listen: tuple[str, int] = ("127.0.0.1", 0),
) -> NodeConfig:
    """The configuration of a peer that joins the cluster of ``dagrider cluster up
    --dir cluster_dir``: a test key made once in ``work_dir``, the cluster's committee
    (so it replicates the CRDT documents) and its members as DHT bootstrap peers."""
    cluster = Path(cluster_dir)
    committee_file = cluster / "committee" / COMMITTEE_FILE
    if not committee_file.is_file():
        raise InvalidConfig(f"{cluster} holds no committee/{COMMITTEE_FILE}: not a cluster dir")
    committee = Committee.load(committee_file)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    key = work / "peer.key"
    if not key.exists():
        PeerKey.generate().dump(key, TEST_KEY_NOTE)
    port = listen[1] or free_port_block(1)
    bootstrap = ", ".join(
        f'"{m.identity_key.hex()}@{m.address}"' for m in committee.members if m.address
    )
    path = work / "peer.toml"
    path.write_text(
        "\n".join(
            [
                "[node]",
                'role = "peer"',
                f'key_file = "{key.resolve()}"',
                f'committee_file = "{committee_file.resolve()}"',
                f'data_dir = "{(work / "data").resolve()}"',
                f'listen = "{listen[0]}:{port}"',
                "[dht]",
                f"bootstrap = [{bootstrap}]",
                "[log]",
                'level = "warning"',
                "",
            ]
        )
    )
    return load_config(path, "peer")
