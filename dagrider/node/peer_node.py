"""A mesh peer: the composition root of ``dagrider node --role peer``.

A peer is a node outside the committee. It joins the mesh through bootstrap peers,
serves the Kademlia DHT and the content layer, and (given the committee file) replicates
the CRDT documents, but it never votes: no reliable broadcast, no DAG, no coin share, no
log. It is how a deployment adds storage and bandwidth without touching the committee's
size (n = 3f+1 is a safety parameter, not a capacity knob).

Its transport is open (any key that completes the TLS handshake may connect; the
transport bounds the number of links), and it ignores consensus frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from dagrider.committee import Committee
from dagrider.node.components import (
    add_crdt_metrics,
    add_nat_counters,
    build_crdt,
    build_nat,
    dht_server_mode,
)
from dagrider.node.config import ConfigError, NodeConfig
from dagrider.node.crdt_node import CrdtNode
from dagrider.node.mesh import Mesh
from dagrider.node.metrics import Metrics
from dagrider.node.peer_key import PeerKey
from dagrider.node.service import LogEntry, NotAMember, TxStatus
from p2p.config import TransportConfig
from p2p.framing import FrameKind
from p2p.nat_service import NatService
from p2p.transport import PeerTransport


class PeerNode:
    """One mesh peer; satisfies the API's ``NodeService`` with the consensus parts refused."""

    max_tx_bytes = 0

    def __init__(self, cfg: NodeConfig, log: logging.Logger) -> None:
        if cfg.listen is None:
            raise ConfigError("[node] listen is required for a peer")
        self.cfg = cfg
        self.logger = log
        key = PeerKey.load(cfg.key_file)
        self.identity = key.identity()
        self.committee = (
            Committee.load(cfg.committee_file) if cfg.committee_file is not None else None
        )
        self.listen = cfg.listen
        self.transport = PeerTransport(
            self.identity,
            TransportConfig(listen_host=cfg.listen[0], listen_port=cfg.listen[1]),
            peers={},
            allowed=None,
            on_frame=self._on_consensus_frame,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            logger=log.getChild("transport"),
            channels={FrameKind.CRDT: self._on_crdt_frame, FrameKind.NAT: self._on_nat_frame},
        )
        self.nat: NatService | None = (
            build_nat(cfg, self.transport, log.getChild("nat")) if cfg.nat_enabled else None
        )
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.mesh = Mesh(
            cfg,
            self.transport,
            self.identity,
            bootstrap=cfg.dht_bootstrap,
            advertise=cfg.dht_advertise or (cfg.listen,),
            server_mode=dht_server_mode(cfg, self.nat),
            nat=self.nat,
            logger=log.getChild("mesh"),
        )
        self.crdt: CrdtNode | None = None
        if self.committee is not None and cfg.crdt_enabled:
            self.crdt = build_crdt(
                cfg,
                seed=key.identity_seed,
                committee=self.committee,
                transport=self.transport,
                submit=None,
                log_store=None,
                logger=log.getChild("crdt"),
            )
        self.started_at = time.time()
        self.registry = Metrics()
        self.mesh.add_metrics(self.registry)
        if self.crdt is not None:
            add_crdt_metrics(self.registry, self.crdt)
        if self.nat is not None:
            add_nat_counters(self.registry, self.nat)
        self.dropped_consensus_frames = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self.crdt is not None:
            self.crdt.load()
        await self.transport.start()
        if self.nat is not None:
            self.nat.start()
        self.mesh.start()
        if self.crdt is not None:
            self.crdt.start()
        self.logger.info(
            "peer started",
            extra={"key": self.identity.public_key.hex(), "crdt": self.crdt is not None},
        )

    async def stop(self) -> None:
        """Stop the network side, then close the store, even if a network step raised."""
        try:
            if self.crdt is not None:
                await self.crdt.stop()
            await self.mesh.close()
            if self.nat is not None:
                await self.nat.close()
            await self.transport.close()
        finally:
            if self.crdt is not None:
                self.crdt.store.close()
        self.logger.info("peer stopped")

    # -- transport events ---------------------------------------------------------------

    def _on_consensus_frame(self, peer_key: bytes, data: bytes) -> None:
        self.dropped_consensus_frames += 1  # a member talking to us as if we voted

    def _on_connected(self, peer_key: bytes) -> None:
        if self.nat is not None:
            self.nat.on_connected(peer_key)
        if self.crdt is not None:
            self.crdt.on_connected(peer_key)

    def _on_disconnected(self, peer_key: bytes) -> None:
        if self.nat is not None:
            self.nat.on_disconnected(peer_key)
        if self.crdt is not None:
            self.crdt.on_disconnected(peer_key)

    def _on_crdt_frame(self, peer_key: bytes, data: bytes) -> None:
        if self.crdt is not None:
            self.crdt.on_frame(peer_key, data)

    def _on_nat_frame(self, peer_key: bytes, data: bytes) -> None:
        if self.nat is not None:
            self.nat.on_frame(peer_key, data)

    # -- NodeService: a peer orders nothing ---------------------------------------------

    def submit(self, txs: Sequence[bytes]) -> list[str]:
        raise NotAMember("this node is a mesh peer; submit transactions to a committee member")

    def tx_status(self, tx_id: str) -> TxStatus:
        return TxStatus(tx_id, "unknown", None, None, None)

    def log(self, after: int, limit: int) -> list[LogEntry]:
        return []

    def log_head(self) -> int:
        return -1

    async def wait_for_log(self, after: int, timeout: float) -> None:
        await asyncio.sleep(timeout)

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "role": "peer",
            "key": self.identity.public_key.hex(),
            "listen": f"{self.listen[0]}:{self.listen[1]}",
            "committee": self.committee.committee_id.hex() if self.committee else None,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "peers": self.transport.stats(),
            "dropped_consensus_frames": self.dropped_consensus_frames,
        }
        st.update(self.mesh.status())
        if self.crdt is not None:
            st["crdt"] = self.crdt.status()
        if self.nat is not None:
            st["nat"] = self.nat.status()
        return st

    def metrics(self) -> Metrics:
        return self.registry
