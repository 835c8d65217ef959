"""The node's asyncio shell around the pure :class:`~dagrider.process.Process`.

Inputs (peer frames, client batches, batch timers, link events) are fed to the process
on the event loop; the effects they produce are collected and flushed once per loop
iteration: first persisted in one SQLite transaction, then sent. Persist-then-send is
what makes a restart safe (a vote that left the node is on disk) and batching the
store writes is what makes it affordable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, assert_never

from dagrider.catchup import CatchupRequester, CatchupServer, Refuse
from dagrider.codec import encode
from dagrider.coin import CoinSecretShare, CoinShare
from dagrider.committee import Committee, NodeSecret
from dagrider.effects import (
    AwaitBatch,
    Broadcast,
    CheckpointReached,
    Commit,
    Delivered,
    Effect,
    LeaderDecided,
    Misbehaviour,
    Proposed,
    Requeued,
    RoundAdvanced,
    Send,
)
from dagrider.errors import DecodeError
from dagrider.messages import (
    CatchupRequest,
    CoinShareMsg,
    Echo,
    Ready,
    Val,
    VertexResponse,
    Votes,
)
from dagrider.node.batch import ID_BYTES, RecordBatch, batch_ids
from dagrider.node.components import (
    add_crdt_metrics,
    add_nat_counters,
    build_crdt,
    build_nat,
    dht_server_mode,
)
from dagrider.node.config import ConfigError, NodeConfig, is_dialable_ip, parse_address
from dagrider.node.crdt_node import CrdtNode
from dagrider.node.fence import Doubt, Fence
from dagrider.node.mempool import Admission, Ledger
from dagrider.node.mesh import Mesh
from dagrider.node.metrics import Metrics
from dagrider.node.service import (
    LogEntry,
    MempoolFull,
    StorageCorrupt,
    StorageUnavailable,
    TxStatus,
    TxTooLarge,
)
from dagrider.node.state_sync import StateSync
from dagrider.node.store import Store
from dagrider.persistence import restart_from
from dagrider.process import Process, ProcessConfig
from dagrider.rbc import coalesce_votes
from p2p.config import TransportConfig
from p2p.framing import FrameKind
from p2p.identity import Identity
from p2p.nat.manager import PeerInfo
from p2p.nat_service import NatService
from p2p.transport import PeerTransport

MISBEHAVIOUR_LOG_PERIOD = 1.0  # seconds: one log line per misbehaving peer at most
STORAGE_RETRY = 1.0  # seconds between write attempts while the store refuses writes


class Node:
    """One committee member as a running process: the composition root's main object."""

    def __init__(self, cfg: NodeConfig, log: logging.Logger) -> None:
        self.cfg = cfg
        self.logger = log
        if cfg.committee_file is None:
            raise ConfigError("[node] committee_file is required for a committee member")
        self.committee = Committee.load(cfg.committee_file)
        self.secret = NodeSecret.load(cfg.key_file, self.committee)
        self.me = self.secret.node_id
        c = self.committee
        self.params = cfg.parameters()
        self.process = Process(
            ProcessConfig(
                me=self.me,
                n=c.n,
                f=c.f,
                coin_public=c.coin_public_key(),
                coin_secret=CoinSecretShare(self.me, self.secret.coin_share),
                domain=c.committee_id,
                params=self.params,
            )
        )
        self.max_tx_bytes = self.params.limits.max_tx_bytes
        self.identity = Identity.from_seed(self.secret.identity_seed)
        self.key_of = {m.node_id: m.identity_key for m in c.members}
        self.id_of = {m.identity_key: m.node_id for m in c.members}
        self.peers = [m.node_id for m in c.members if m.node_id != self.me]
        listen = cfg.listen or _member_address(c, self.me)
        self.listen = listen
        addresses = {self.key_of[p]: cfg.peers.get(p) or _member_address(c, p) for p in self.peers}
        self.transport = PeerTransport(
            self.identity,
            TransportConfig(listen_host=listen[0], listen_port=listen[1]),
            peers=addresses,
            allowed=None if cfg.dht_enabled else set(self.key_of.values()) | set(cfg.nat_relays),
            on_frame=self._on_frame,
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            logger=log.getChild("transport"),
            channels={
                FrameKind.CRDT: self._on_crdt_frame,
                FrameKind.NAT: self._on_nat_frame,
                FrameKind.STATE: self._on_state_frame,
            },
        )
        self.nat = self._build_nat() if cfg.nat_enabled else None
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.mesh = self._build_mesh(addresses) if cfg.dht_enabled else None
        self.store = Store(
            cfg.data_dir / "node.sqlite3",
            self.process.codec,
            c.committee_id,
            self.params.gc_depth,
            cfg.fsync,
            retain_rounds=cfg.retain_rounds,
            keep_log_entries=cfg.keep_log_entries,
        )
        self.fence = Fence(cfg.data_dir, cfg.fsync)
        # Transactions a restart behind the fence found pending: maybe proposed already
        # by the rounds the store lost, so held out of the mempool (see fence.py).
        self.doubt: Doubt | None = None
        self.state_sync = StateSync(
            c,
            self.secret,
            self.process,
            self.store,
            self.transport,
            self._on_state_installed,
            self._misbehaviour,
            log.getChild("state"),
            accept_suffix=cfg.keep_log_entries > 0,
        )
        self.crdt = self._build_crdt() if cfg.crdt_enabled else None
        self._effects: list[Effect] = []
        self._shares: list[CoinShare] = []
        self._flush_handle: asyncio.Handle | None = None
        self._log_changed = asyncio.Event()
        self._stored_head = -1
        """The last log index on disk: what readers can be given (see ``log_head``)."""
        # Ids, submit times and stage times of client transactions, per ingest batch
        # (dagrider.node.mempool), and admission from the measured drain rate.
        self.ledger = Ledger()
        self.admission = Admission(floor=2 * self.params.batch_size, hard_cap=cfg.max_pending)
        self.catchup = CatchupRequester(self.me, c.n, c.f, self.params.gc_depth)
        self.catchup_server = CatchupServer()
        self._misbehaviour_log: dict[int, tuple[float, int]] = {}  # peer -> (logged, quiet)
        self._catchup_task: asyncio.Task[None] | None = None
        self.last_leader: dict[str, Any] | None = None
        self.started_at = time.time()
        self._stopped = False
        # Storage: ``storage_error`` is the cause while the store refuses writes (disk
        # full, I/O error): the node then takes no input and retries the pending batch
        # every STORAGE_RETRY. ``failure`` is set (and ``failed`` fires) when a stored
        # row is damaged: the daemon stops the node with exit code 3.
        self.storage_error: str | None = None
        self._storage_retry: asyncio.TimerHandle | None = None
        self.failure: str | None = None
        self.failed = asyncio.Event()
        self._init_metrics()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        recovery, mempool = self.store.load_recovery()
        resumed = bool(recovery.delivered or recovery.own or recovery.ordering)
        stored = max([v.round for v in recovery.own] + [v.round for v in recovery.votes] + [0])
        restart = restart_from(
            self.fence.round,
            self.fence.flushes,
            self.store.flushes,
            self.store.fenced_through,
            stored,
        )
        if restart.lost:
            # The store lost messages we sent (its WAL deleted, an old backup restored).
            # It may have lost our proposals too: what it lists as pending may ride in
            # one of them, which the committee may order. Not proposed again until that
            # is known (a transaction is ordered at most once).
            since = max([v.round for v in recovery.own] + [0])
            self.doubt = self.store.hold_in_doubt(since, self.fence.round, recovery.committed)
            self.logger.warning(
                "store is behind its fence: no vertex or vote of ours up to the fence round",
                extra={
                    "store_round": stored,
                    "store_flushes": self.store.flushes,
                    "fence_round": self.fence.round,
                    "fence_flushes": self.fence.flushes,
                    "in_doubt": 0 if self.doubt is None else len(self.doubt.txs),
                },
            )
            self.store.mark_lost(restart.fence, self.fence.flushes or 0)
            mempool = []
        else:
            self.doubt = self.store.doubt()
        self.fence.reset(self.store.flushes)
        if restart.fence:
            # Stay silent in the rounds whose votes are unknown for good, rather than
            # risk a second, different value (at every restart after a loss).
            self.process.fence(restart.fence)
        self.ledger.added(batch_ids(mempool), time.time())
        self.process.mempool.extend(mempool)
        self._stored_head = self.store.log_head()
        self._emit(self.process.recover(recovery))
        self.state_sync.load()
        self.logger.info(
            "node started",
            extra={
                "node": self.me,
                "resumed": resumed,
                "round": self.process.round,
                "log_head": self._stored_head,
                "mempool": len(mempool),
            },
        )
        if self.crdt is not None:
            self.crdt.load()
        await self.transport.start()
        if self.nat is not None:
            self._start_nat(self.nat)
        if self.mesh is not None:
            self.mesh.start()
        self._catchup_task = asyncio.create_task(self._catchup_loop())
        if self.crdt is not None:
            self.crdt.start()

    async def stop(self) -> None:
        """Stop the network side, then flush and close the stores: the stores are closed
        even if a network step raised (or the caller was cancelled), so the writes
        already made reach the disk and the files are released."""
        try:
            if self._catchup_task is not None:
                self._catchup_task.cancel()
            if self.crdt is not None:
                await self.crdt.stop()
            if self.mesh is not None:
                await self.mesh.close()
            if self.nat is not None:
                await self.nat.close()
            await self.transport.close()
        finally:
            self._close_stores()

    def _close_stores(self) -> None:
        self._flush()
        self._stopped = True
        self.store.close()
        self.fence.close()
        if self.crdt is not None:
            self.crdt.store.close()
        self.logger.info("node stopped", extra={"node": self.me, "round": self.process.round})

    # -- inputs -------------------------------------------------------------------------

    def _on_frame(self, peer_key: bytes, data: bytes) -> None:
        sender = self.id_of.get(peer_key)
        if sender is None:  # a mesh peer speaking consensus: it has no vote to cast
            self.m_stranger_frames.inc()
            return
        if self.storage_error is not None or self.failure is not None:
            # Nothing we cannot persist may move the process; what we drop here comes
            # back through resync and catch-up once writes succeed again.
            self.m_storage_dropped.inc()
            return
        self.m_frames_in.labels(str(sender)).inc()
        self.m_bytes_in.labels(str(sender)).inc(len(data))
        try:
            msg = self.process.codec.decode(data)
        except DecodeError as exc:
            self._misbehaviour(sender, f"undecodable message: {exc}")
            return
        if isinstance(msg, CatchupRequest):
            self._serve_catchup(sender, msg)
            return
        if isinstance(msg, CoinShareMsg) and self.process.accepts_coin_share(sender, msg.share):
            # Only what the process takes: a share outside its window (wave 2**40) would
            # otherwise be a row on disk until that wave is decided, i.e. forever.
            self._shares.append(msg.share)
        self._emit(self.process.receive(sender, msg))

    def _on_connected(self, peer_key: bytes) -> None:
        if self.nat is not None:
            self.nat.on_connected(peer_key)
        if self.crdt is not None:  # mesh peers replicate the documents too
            self.crdt.on_connected(peer_key)
        peer = self.id_of.get(peer_key)
        if peer is None:  # a relay or a mesh peer outside the committee
            return
        self.logger.info("peer connected", extra={"peer": peer})
        if self.storage_error is not None:
            # Nothing leaves until writes succeed, and _storage_up resyncs every peer:
            # a resync per reconnect here would only pile up (a flapping peer, unbounded).
            return
        self._emit(self.process.resync(peer))

    def _on_disconnected(self, peer_key: bytes) -> None:
        if self.nat is not None:
            self.nat.on_disconnected(peer_key)
        if self.crdt is not None:
            self.crdt.on_disconnected(peer_key)
        if peer_key in self.id_of:
            self.logger.info("peer disconnected", extra={"peer": self.id_of.get(peer_key)})

    def _on_nat_frame(self, peer_key: bytes, data: bytes) -> None:
        if self.nat is not None:
            self.nat.on_frame(peer_key, data)

    def _build_mesh(self, addresses: dict[bytes, tuple[str, int]]) -> Mesh:
        """DHT and content on the committee's transport; the members bootstrap each other."""
        return Mesh(
            self.cfg,
            self.transport,
            self.identity,
            bootstrap={**addresses, **self.cfg.dht_bootstrap},
            advertise=self.cfg.dht_advertise or self._advertised(),
            server_mode=dht_server_mode(self.cfg, self.nat),
            nat=self.nat,
            logger=self.logger.getChild("mesh"),
        )

    def _advertised(self) -> tuple[tuple[str, int], ...]:
        """Our listen address if others can dial it, else our committee address."""
        if is_dialable_ip(self.listen[0]):
            return (self.listen,)
        own = _member_address(self.committee, self.me)
        return (own,) if is_dialable_ip(own[0]) else ()

    def _build_nat(self) -> NatService:
        return build_nat(self.cfg, self.transport, self.logger.getChild("nat"))

    def _start_nat(self, nat: NatService) -> None:
        nat.start()
        relays = tuple(k for k in self.cfg.nat_relays if k != self.identity.public_key)
        for peer in self.peers:
            key = self.key_of[peer]
            address = self.cfg.peers.get(peer) or _member_address(self.committee, peer)
            nat.want(key, PeerInfo((address,), True, relays))

    def _on_state_frame(self, peer_key: bytes, data: bytes) -> None:
        try:
            self.state_sync.on_frame(peer_key, data)
        except StorageCorrupt as exc:
            self._corrupt(exc)
        except StorageUnavailable as exc:
            self._storage_down(str(exc))

    def _on_crdt_frame(self, peer_key: bytes, data: bytes) -> None:
        if self.crdt is not None:  # any authenticated peer: changes carry their signatures
            self.crdt.on_frame(peer_key, data)

    def _build_crdt(self) -> CrdtNode:
        return build_crdt(
            self.cfg,
            seed=self.secret.identity_seed,
            committee=self.committee,
            transport=self.transport,
            submit=self.submit,
            log_store=self.store,
            logger=self.logger.getChild("crdt"),
        )

    def _propose_timer(self, rnd: int) -> None:
        self._emit(self.process.propose_now(rnd))

    # -- catch-up -----------------------------------------------------------------------

    async def _catchup_loop(self) -> None:
        """Every period, ask peers for rounds we cannot complete on our own
        (the policy: :class:`dagrider.catchup.CatchupRequester`)."""
        while True:
            await asyncio.sleep(self.catchup.policy.period)
            self._catchup_tick()

    def _catchup_tick(self) -> None:
        process = self.process
        rnd = process.round
        tick = self.catchup.tick(
            rnd, process.dag.lowest_missing_round(rnd), process.rbc.proven_round()
        )
        self.state_sync.seek(tick.seek_state_sync)
        ask = tick.ask
        if ask is None:
            return
        data = encode(ask.request)
        for peer in ask.peers:
            self.transport.send(self.key_of[peer], data)
        self.m_catchup_requests.inc()
        self.logger.info(
            "catch-up requested",
            extra={
                "from_round": ask.request.round,
                "round": rnd,
                "reason": ask.reason,
                "peers": list(ask.peers),
            },
        )

    def _serve_catchup(self, peer: int, req: CatchupRequest) -> None:
        """Resend, from the store, what :class:`dagrider.catchup.CatchupServer` decides:
        our READY votes, the vertices, our coin shares, and perhaps our live rounds."""
        decision = self.catchup_server.serve(
            peer,
            req,
            time.monotonic(),
            completed_wave=self.process.completed_wave,
            memory_floor=self.process.dag.floor,
        )
        if isinstance(decision, Refuse):
            self._misbehaviour(peer, decision.reason)
            return
        try:
            answer = self.store.catchup(decision.first, decision.last, decision.max_bytes)
        except StorageCorrupt as exc:
            self._corrupt(exc)
            return
        # Through _send, so catch-up traffic shows in the per-peer byte and frame counts.
        for vote, vertex in answer:
            self._send(peer, encode(Ready(vote.round, vote.source, vote.digest)))
            if vertex is not None:
                self._send(peer, encode(VertexResponse(vertex)))
        for wave in decision.waves:
            self._send(peer, encode(CoinShareMsg(self.process.own_share(wave))))
        if decision.resync:
            self._emit(self.process.resync(peer))

    # -- effects ------------------------------------------------------------------------

    def _emit(self, effects: list[Effect]) -> None:
        if not effects:
            return
        self._effects.extend(effects)
        if self._flush_handle is None and self.storage_error is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Persist the batch, then perform it. Runs once per event-loop iteration."""
        self._flush_handle = None
        if self._stopped:
            return
        effects, self._effects = self._effects, []
        shares, self._shares = self._shares, []
        if not effects and not shares:
            return
        committed = any(isinstance(e, Commit) for e in effects)
        ordering = self.process.ordering_state() if committed else None
        now = time.time()
        try:
            sent = _sent_round(effects)
            if sent:  # before the store commits the batch: see fence.py
                self.fence.record(sent, self.store.flushes + 1)
            self.store.apply(effects, ordering, shares, now)
        except StorageUnavailable as exc:
            # Nothing of the batch is on disk, so none of it may leave the node: keep it,
            # in order, ahead of whatever comes next, and try again later.
            self._effects[:0] = effects
            self._shares[:0] = shares
            self._storage_down(str(exc))
            return
        except StorageCorrupt as exc:
            self._corrupt(exc)
            return
        if self.storage_error is not None:
            self._storage_up()
        encoded: dict[int, bytes] = {}
        # Stored vote by vote above; on the wire the flush's votes go as one Votes frame.
        # Every effect kind is named (mypy checks it: assert_never), so a new kind is an
        # error here until this shell decides what to do with it.
        for e in coalesce_votes(effects):
            match e:
                case Broadcast(msg):
                    data = encoded.get(id(msg)) or encode(msg)
                    encoded[id(msg)] = data
                    for peer in self.peers:
                        self._send(peer, data)
                case Send(to, msg):
                    self._send(to, encode(msg))
                case Commit():
                    self._on_commit(e, now)
                case Proposed():
                    self._on_proposed(e)
                case Delivered():
                    self._on_delivered(e, now)
                case Requeued(txs):
                    if txs:  # an empty orphan only tells which vertex it was
                        self.ledger.requeued(txs, now)
                        self.m_requeued.inc(len(txs))
                case AwaitBatch(rnd, idle):
                    delay = self.cfg.batch_delay
                    if idle:  # an idle committee rests at least as long as a busy one
                        delay = max(delay, self.cfg.idle_round_interval)
                    asyncio.get_running_loop().call_later(delay, self._propose_timer, rnd)
                case RoundAdvanced(rnd):
                    self.m_round.set(rnd)
                case LeaderDecided():
                    self._on_leader(e)
                case Misbehaviour(peer, reason):
                    self._misbehaviour(peer, reason)
                case CheckpointReached(state):
                    self.state_sync.on_checkpoint(state)
                case _:
                    assert_never(e)
        if committed:
            self._log_changed.set()
            self._log_changed = asyncio.Event()
        if self.doubt is not None and not self._effects:
            # Only with nothing pending: a proposal not yet flushed took from the front
            # of the process's mempool, and the store and ledger take with its flush.
            self._settle_doubt(now)

    def _settle_doubt(self, now: float) -> None:
        """Once no vertex of the rounds the store lost can be ordered any more (the GC
        floor passed the fence), put the transactions held in doubt back at the front of
        the mempool, minus those our lost vertices carried into the log (see
        :class:`dagrider.node.fence.Doubt`). Store first, then the process."""
        doubt = self.doubt
        if doubt is None or not doubt.settled(self.process.ordering.floor()):
            return
        try:
            ordered = self.store.proposed_by(self.me, doubt.since, doubt.until, doubt.first_index)
            kept = doubt.kept(ordered)
            self.store.settle_doubt(kept)
        except StorageUnavailable as exc:
            self._storage_down(str(exc))  # tried again with the next flush
            return
        except StorageCorrupt as exc:
            self._corrupt(exc)
            return
        self.doubt = None
        if kept:
            self.process.mempool.extendleft(reversed(kept))
            self.ledger.requeued(kept, now)
            self._emit(self.process.submit([]))  # a waiting batch may go now
        self.logger.info(
            "transactions in doubt settled",
            extra={
                "held": len(doubt.txs),
                "already_ordered": len(doubt.txs) - len(kept),
                "proposed_again": len(kept),
            },
        )

    def _storage_down(self, cause: str) -> None:
        """Writes fail: stop advancing (no frames, no submissions) and retry the pending
        batch every STORAGE_RETRY seconds until it is written."""
        if self.storage_error is None:
            self.logger.error(
                "storage unavailable: the node stops advancing until writes succeed",
                extra={"cause": cause[:300], "pending_effects": len(self._effects)},
            )
            self.m_storage_errors.inc()
        self.storage_error = cause
        self.m_storage_ok.set(0)
        if self._storage_retry is None and not self._stopped:
            self._storage_retry = asyncio.get_running_loop().call_later(
                STORAGE_RETRY, self._retry_storage
            )

    def _retry_storage(self) -> None:
        self._storage_retry = None
        if self.storage_error is None or self._stopped:
            return
        if self._effects or self._shares:
            self._flush()
            return
        try:  # nothing pending (a failed submission): probe with a write of our own
            self.store.probe()
        except StorageUnavailable as exc:
            self._storage_down(str(exc))
            return
        except StorageCorrupt as exc:
            self._corrupt(exc)
            return
        self._storage_up()

    def _storage_up(self) -> None:
        down = self.storage_error
        self.storage_error = None
        self.m_storage_ok.set(1)
        self.logger.warning("storage writable again: the node resumes", extra={"was": down})
        # What peers sent while we dropped frames comes back by catch-up; our own live
        # rounds go out again now, for peers that waited on them.
        for peer in self.peers:
            self._emit(self.process.resync(peer))

    def _corrupt(self, exc: StorageCorrupt) -> None:
        """A stored row is damaged: serve nothing more and stop (exit code 3)."""
        if self.failure is None:
            self.failure = str(exc)
            self.logger.error("store damaged: stopping", extra={"cause": str(exc)[:300]})
            self.failed.set()

    def _send(self, peer: int, data: bytes) -> None:
        if self.transport.send(self.key_of[peer], data):
            self.m_frames_out.labels(str(peer)).inc()
            self.m_bytes_out.labels(str(peer)).inc(len(data))

    def _on_commit(self, e: Commit, now: float) -> None:
        count = len(e.vertex.block)
        self._stored_head = max(self._stored_head, e.tx_index + count - 1)  # flushed
        self.m_commits.inc()
        self.m_committed_txs.inc(count)
        delivered, flight = self.ledger.committed(e.vertex.digest)
        if count and delivered is not None:
            self.m_delivery_to_commit.observe(now - delivered, count)
        if flight is not None:  # our vertex: submit-to-commit per ingest batch
            for piece in flight.pieces:
                self.m_latency.observe(now - piece.submitted, piece.count)
        if self.crdt is not None:
            self.crdt.on_commit(e.tx_index, e.vertex.block)

    def _on_proposed(self, e: Proposed) -> None:
        self.m_proposed.inc()
        count = len(e.vertex.block)
        if not e.fresh or not count:
            return
        now = time.time()
        ids, pieces = self.ledger.proposed(e.vertex.digest, count, now)
        self.store.remember_ids(e.vertex.digest, ids)
        self.admission.drained(count, now)
        for piece in pieces:
            self.m_submit_to_proposal.observe(now - piece.submitted, piece.count)

    def _on_delivered(self, e: Delivered, now: float) -> None:
        flight = self.ledger.delivered(e.vertex.digest, now)
        if flight is not None and e.vertex.block:
            self.m_proposal_to_delivery.observe(now - flight.proposed, len(e.vertex.block))

    def _on_leader(self, e: LeaderDecided) -> None:
        if e.committed and e.leader is not None:
            self.m_leaders.labels("direct" if e.direct else "recursive").inc()
            self.last_leader = {
                "wave": e.wave,
                "round": e.leader.round,
                "source": e.leader.source,
                "digest": e.leader.digest.hex(),
            }
        else:
            self.m_leaders.labels("skipped").inc()

    def _misbehaviour(self, peer: int, reason: str) -> None:
        """Count every report; log at most one line per peer per second (a flooding
        peer must not turn our log into its amplifier), with what was left unsaid."""
        self.m_misbehaviour.labels(str(peer)).inc()
        now = time.monotonic()
        last, quiet = self._misbehaviour_log.get(peer, (-MISBEHAVIOUR_LOG_PERIOD, 0))
        if now - last < MISBEHAVIOUR_LOG_PERIOD:
            self._misbehaviour_log[peer] = (last, quiet + 1)
            return
        self._misbehaviour_log[peer] = (now, 0)
        self.logger.warning(
            "peer misbehaviour",
            extra={"peer": peer, "reason": reason[:300], "suppressed": quiet},
        )

    # -- NodeService (the client API's view) ---------------------------------------------

    def submit(self, txs: Sequence[bytes]) -> list[str]:
        if self.failure is not None:
            raise StorageCorrupt(self.failure)
        if self.storage_error is not None:
            raise StorageUnavailable(self.storage_error, retry_after=STORAGE_RETRY * 5)
        largest = max(map(len, txs), default=0)
        if largest > self.max_tx_bytes:
            i = next(i for i, tx in enumerate(txs) if len(tx) > self.max_tx_bytes)
            raise TxTooLarge(
                f"transaction {i} has {len(txs[i])} bytes, limit is {self.max_tx_bytes}"
            )
        pending = len(self.process.mempool)
        wait = self.admission.check(pending, len(txs))
        if wait is not None:
            self.m_rejected.inc(len(txs))
            raise MempoolFull(
                f"mempool holds {pending} transactions, {self.admission.limit()} clear within "
                f"{self.admission.max_delay:g} s at the measured "
                f"{self.admission.rate:.0f} tx/s: retry in {wait:.2f} s",
                retry_after=wait,
            )
        if isinstance(txs, RecordBatch):  # the body as received: stored as it is
            ids, records = txs.ids, txs.records
        else:
            ids, records = batch_ids(txs), None
        try:
            self.store.add_to_mempool(txs, ids, records)
        except StorageUnavailable as exc:
            self._storage_down(str(exc))
            raise
        self.ledger.added(ids, time.time())
        self.m_submitted.inc(len(txs))
        self._emit(self.process.submit(txs))
        return [ids[k : k + ID_BYTES].hex() for k in range(0, len(ids), ID_BYTES)]

    def tx_status(self, tx_id_hex: str) -> TxStatus:
        d = bytes.fromhex(tx_id_hex)
        with self._reading():
            row = self.store.find_tx(d)
        if row is not None:
            return TxStatus(tx_id_hex, "committed", row.index, row.round, row.wave)
        if self.ledger.is_pending(d) or self.store.pending(d):
            return TxStatus(tx_id_hex, "pending", None, None, None)
        return TxStatus(tx_id_hex, "unknown", None, None, None)

    def log(self, after: int, limit: int) -> list[LogEntry]:
        with self._reading():
            rows = self.store.log_after(after, limit)
        return [
            LogEntry(r.index, r.tx_id.hex(), r.data, r.round, r.source, r.wave, r.committed_at)
            for r in rows
        ]

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A read that finds a damaged row stops the node (and the caller gets the
        error, never the row)."""
        try:
            yield
        except StorageCorrupt as exc:
            self._corrupt(exc)
            raise

    def log_head(self) -> int:
        """The last committed transaction on disk, which ``log`` can return.

        Not the ordering's head: it runs ahead of the store from a step to its flush
        (the next loop iteration), and for as long as the disk is down. A reader told
        of a head it could not read polled again at once, never yielding, so the flush
        it waited for never ran: ``committed()`` spun forever (a hung example)."""
        return self._stored_head

    def _on_state_installed(self, effects: list[Effect]) -> None:
        """State transfer wrote a checkpoint's log rows: the stored head jumps there."""
        head = self.store.log_head()
        if head > self._stored_head:
            self._stored_head = head
            self._log_changed.set()
            self._log_changed = asyncio.Event()
        self._emit(effects)

    async def wait_for_log(self, after: int, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while self.log_head() <= after:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._log_changed.wait(), remaining)
            except TimeoutError:
                return

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = dict(self.process.status())
        st.update(
            node=self.me,
            committee=self.committee.committee_id.hex(),
            n=self.committee.n,
            f=self.committee.f,
            listen=f"{self.listen[0]}:{self.listen[1]}",
            last_committed_leader=self.last_leader,
            log_head=self.log_head(),
            mempool_in_doubt=0 if self.doubt is None else len(self.doubt.txs),
            uptime_seconds=round(time.time() - self.started_at, 3),
            peers=self.transport.stats(),
            state_sync=self.state_sync.status(),
        )
        if self.crdt is not None:
            st["crdt"] = self.crdt.status()
        if self.nat is not None:
            st["nat"] = self.nat.status()
        if self.mesh is not None:
            st.update(self.mesh.status())
        return st

    def metrics(self) -> Metrics:
        return self.registry

    # -- metrics ------------------------------------------------------------------------

    def _init_metrics(self) -> None:
        r = self.registry = Metrics()
        self.m_round = r.gauge("dagrider_round", "Current DAG round of this node")
        self.m_commits = r.counter("dagrider_committed_vertices_total", "Vertices ordered")
        self.m_committed_txs = r.counter(
            "dagrider_committed_transactions_total", "Transactions ordered"
        )
        self.m_submitted = r.counter(
            "dagrider_submitted_transactions_total", "Transactions accepted from clients"
        )
        self.m_proposed = r.counter("dagrider_proposed_vertices_total", "Vertices proposed")
        self.m_leaders = r.counter(
            "dagrider_leaders_total", "Wave leaders by outcome", ("outcome",)
        )
        self.m_latency = r.histogram(
            "dagrider_commit_latency_seconds",
            "Client submission to commit on this node, for transactions submitted here",
        )
        self.m_submit_to_proposal = r.histogram(
            "dagrider_submit_to_proposal_seconds",
            "Client submission to the proposal of the vertex carrying it (transactions "
            "submitted here)",
        )
        self.m_proposal_to_delivery = r.histogram(
            "dagrider_proposal_to_delivery_seconds",
            "Proposal of our vertex to its reliable-broadcast delivery here, per transaction",
        )
        self.m_delivery_to_commit = r.histogram(
            "dagrider_delivery_to_commit_seconds",
            "Reliable-broadcast delivery of a vertex to its commit here, per transaction",
        )
        self.m_rejected = r.counter(
            "dagrider_rejected_transactions_total",
            "Transactions refused with 429: over what the measured drain clears in time",
        )
        r.gauge(
            "dagrider_mempool_drain_transactions_per_second",
            "Measured rate at which transactions leave the mempool for our vertices (EWMA)",
        ).set_function(lambda: self.admission.rate)
        r.gauge(
            "dagrider_mempool_admit_limit_transactions",
            "Largest mempool backlog admitted now (from the drain rate)",
        ).set_function(lambda: float(self.admission.limit()))
        self.m_frames_in = r.counter(
            "dagrider_peer_messages_received_total", "Messages from peers", ("peer",)
        )
        self.m_bytes_in = r.counter(
            "dagrider_peer_bytes_received_total", "Bytes from peers", ("peer",)
        )
        self.m_frames_out = r.counter(
            "dagrider_peer_messages_sent_total", "Messages to peers", ("peer",)
        )
        self.m_bytes_out = r.counter("dagrider_peer_bytes_sent_total", "Bytes to peers", ("peer",))
        self.m_misbehaviour = r.counter(
            "dagrider_peer_misbehaviour_total", "Invalid input from peers", ("peer",)
        )
        self.m_requeued = r.counter(
            "dagrider_requeued_transactions_total",
            "Transactions of own vertices that fell below the GC cut unordered, re-proposed",
        )
        self.m_stranger_frames = r.counter(
            "dagrider_stranger_consensus_frames_total",
            "Consensus frames from authenticated peers outside the committee, dropped",
        )
        self.m_catchup_requests = r.counter(
            "dagrider_catchup_requests_total", "Catch-up requests sent"
        )
        self.m_storage_ok = r.gauge(
            "dagrider_storage_writable", "1 while the store takes writes, 0 while it refuses them"
        )
        self.m_storage_ok.set(1)
        self.m_storage_errors = r.counter(
            "dagrider_storage_outages_total", "Times the store started refusing writes"
        )
        self.m_storage_dropped = r.counter(
            "dagrider_storage_dropped_frames_total",
            "Consensus frames dropped while the store refused writes (they come back by catch-up)",
        )
        mempool = r.gauge("dagrider_mempool_transactions", "Transactions waiting for a vertex")
        mempool.set_function(lambda: float(len(self.process.mempool)))
        if self.crdt is not None:
            add_crdt_metrics(r, self.crdt)
        if self.nat is not None:
            self._init_nat_metrics(r, self.nat)
        if self.mesh is not None:
            self.mesh.add_metrics(r)

    def _is_relayed(self, key: bytes) -> float:
        return float((self.transport.path_of(key) or "").startswith("relayed"))

    def _init_nat_metrics(self, r: Metrics, nat: NatService) -> None:
        """Scrape-time NAT gauges: paths by kind, per-peer path and RTT, relay, punches."""
        paths = r.gauge("dagrider_nat_peers", "Peers by current path", ("path",))
        for kind in ("direct", "relayed", "none"):
            paths.labels(kind).set_function(functools.partial(nat.count_paths, kind))
        reach = r.gauge("dagrider_nat_public", "1 public, 0 private, -1 not known yet")
        reach.set_function(lambda: {"public": 1.0, "private": 0.0}.get(nat.reach.status, -1.0))
        relayed = r.gauge(
            "dagrider_nat_peer_relayed", "1 if the link to a peer is relayed", ("peer",)
        )
        rtt = r.gauge("dagrider_nat_peer_rtt_seconds", "Keep-alive RTT of a peer's link", ("peer",))
        for node_id, key in self.key_of.items():
            if node_id == self.me:
                continue
            relayed.labels(str(node_id)).set_function(functools.partial(self._is_relayed, key))
            rtt.labels(str(node_id)).set_function(functools.partial(nat.rtt, key))
        add_nat_counters(r, nat)


def _sent_round(effects: Sequence[Effect]) -> int:
    """The highest round of a vertex or vote among the messages about to be sent."""
    top = 0
    for e in effects:
        if isinstance(e, Broadcast | Send):
            msg = e.msg
            if isinstance(msg, Val):
                top = max(top, msg.vertex.round)
            elif isinstance(msg, Echo | Ready):
                top = max(top, msg.round)
            elif isinstance(msg, Votes):
                for rnd, _, _ in msg.echoes + msg.readies:
                    top = max(top, rnd)
    return top


def _member_address(c: Committee, node_id: int) -> tuple[str, int]:
    address = c.member(node_id).address
    if address is None:
        raise ConfigError(f"committee member {node_id} has no address and no [node] override")
    return parse_address(address, f"committee member {node_id} address")
