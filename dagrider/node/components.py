"""Parts that a committee member and a mesh peer build the same way.

The two composition roots (:mod:`dagrider.node.runtime` for a member,
:mod:`dagrider.node.peer_node` for a peer) differ in what they run, not in how a CRDT
store or a NAT service is assembled from the config; that assembly lives here once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from dagrider.committee import Committee
from dagrider.node.config import NodeConfig
from dagrider.node.crdt_node import CrdtNode
from dagrider.node.crdt_store import CrdtStore
from dagrider.node.metrics import Metrics
from dagrider.node.store import Store
from p2p.nat.manager import ManagerConfig
from p2p.nat_service import NatConfig, NatService
from p2p.transport import PeerTransport


def build_nat(cfg: NodeConfig, transport: PeerTransport, logger: logging.Logger) -> NatService:
    """The NAT traversal service of a member or a peer, from its ``[nat]`` section."""
    manager = ManagerConfig(dial_timeout=cfg.nat_dial_timeout, retry_after=5.0)
    return NatService(
        transport,
        NatConfig(
            relays=cfg.nat_relays,
            offer_relay=cfg.nat_offer_relay,
            reserve=cfg.nat_reserve,
            upnp=cfg.nat_upnp,
            manager=manager,
        ),
        logger,
    )


def build_crdt(
    cfg: NodeConfig,
    *,
    seed: bytes,
    committee: Committee,
    transport: PeerTransport,
    submit: Callable[[Sequence[bytes]], object] | None,
    log_store: Store | None,
    logger: logging.Logger,
) -> CrdtNode:
    """The CRDT store of a member (with ``submit`` and the log) or of a peer (neither)."""
    committee_keys = frozenset(m.identity_key for m in committee.members)
    writers = {
        ns: frozenset(
            k
            for key in keys
            for k in (committee_keys if key == "committee" else [bytes.fromhex(key)])
        )
        for ns, keys in cfg.crdt_writers.items()
    }
    return CrdtNode(
        seed=seed,
        writers=writers,
        checkpoint_signers=committee_keys,
        domain=committee.committee_id,
        store=CrdtStore(cfg.data_dir / "node.sqlite3", cfg.fsync),
        log_store=log_store,
        send=transport.send,
        connected=transport.connected,
        submit=submit,
        sync_interval=cfg.crdt_sync_interval,
        checkpoint_interval=cfg.crdt_checkpoint_interval,
        compact_min_changes=cfg.crdt_compact_min_changes,
        attest_every=cfg.crdt_attest_every,
        max_clock_skew_ms=cfg.crdt_max_clock_skew_ms,
        logger=logger,
    )


def add_nat_counters(r: Metrics, nat: NatService) -> None:
    """Scrape-time NAT metrics that need no committee: punches and relay use."""
    r.gauge("dagrider_nat_relay_circuits", "Circuits this node relays now").set_function(
        _as_float(nat.relay_circuits)
    )
    for name, help_text, read in (
        (
            "dagrider_nat_punches_succeeded_total",
            "Hole punches that gave a direct link",
            nat.punches_succeeded,
        ),
        ("dagrider_nat_punches_failed_total", "Hole punches that failed", nat.punches_failed),
        ("dagrider_nat_relay_bytes_total", "Bytes this node relayed", nat.relay_bytes),
    ):
        r.counter(name, help_text).set_function(_as_float(read))


def add_crdt_metrics(r: Metrics, crdt: CrdtNode) -> None:
    """Scrape-time gauges (sizes) and counters (``_total``: running totals) over the CRDT
    store's own numbers (no hot-path cost)."""
    st = crdt.engine.stats
    values: dict[str, tuple[str, Callable[[], float]]] = {
        "dagrider_crdt_changes": (
            "Changes applied to the CRDT store",
            lambda: len(crdt.replica),
        ),
        "dagrider_crdt_pending_changes": (
            "Changes waiting for dependencies",
            lambda: crdt.replica.pending_count,
        ),
        "dagrider_crdt_heads": (
            "Heads of the CRDT change DAG",
            lambda: len(crdt.replica.heads),
        ),
        "dagrider_crdt_checkpoints": ("Checkpoints ordered", crdt.checkpoint_count),
        "dagrider_crdt_sync_sessions_completed_total": (
            "Reconciliation sessions completed",
            lambda: st.sessions_completed,
        ),
        "dagrider_crdt_sync_bytes_sent_total": (
            "Bytes sent on the CRDT channel",
            lambda: st.bytes_sent,
        ),
        "dagrider_crdt_sync_bytes_received_total": (
            "Bytes received on the CRDT channel",
            lambda: st.bytes_received,
        ),
        "dagrider_crdt_peer_faults_total": (
            "Invalid CRDT sync input from peers",
            lambda: crdt.faults,
        ),
        "dagrider_crdt_rejected_changes_total": (
            "Changes from peers rejected (bad signature, unauthorized, ...)",
            lambda: crdt.rejected,
        ),
    }
    for name, (help_text, read) in values.items():
        family = r.counter if name.endswith("_total") else r.gauge
        family(name, help_text).set_function(_as_float(read))


def _as_float(read: Callable[[], float]) -> Callable[[], float]:
    return lambda: float(read())


def dht_server_mode(cfg: NodeConfig, nat: NatService | None) -> Callable[[], bool]:
    """Whether the node should advertise itself in other peers' DHT routing tables.

    ``[dht] mode = "auto"``: yes unless NAT traversal found us unreachable (then we take
    part as a client: we look up and fetch, but nobody routes to us).
    """
    if cfg.dht_mode != "auto":
        fixed = cfg.dht_mode == "server"
        return lambda: fixed
    if nat is None:
        return lambda: True
    return lambda: nat.reach.status != "private"
