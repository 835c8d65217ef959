"""Fixtures for end-to-end tests of real daemons on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dagrider.node.cluster import ClusterSpec, LocalCluster, free_port_block


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Build (and by default start) local clusters that are stopped after the test."""
    clusters: list[LocalCluster] = []

    def make(nodes: int = 4, start: bool = True, peers: int = 0, **kw: object) -> LocalCluster:
        spec = ClusterSpec(
            directory=tmp_path / f"cluster-{len(clusters)}",
            nodes=nodes,
            peers=peers,
            base_port=free_port_block(nodes + peers),
            api_base_port=free_port_block(nodes + peers),
            **kw,  # type: ignore[arg-type]
        )
        cluster = LocalCluster(spec)
        clusters.append(cluster)
        if start:
            cluster.start_all()
            cluster.wait_ready(60)
        return cluster

    yield make
    for c in clusters:
        c.stop_all()
