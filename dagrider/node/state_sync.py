"""The daemon's checkpoint and state-transfer shell, on the ``STATE`` frame channel.

It signs a checkpoint whenever the ordering passes one, gathers the members' votes
into certificates (:class:`~dagrider.checkpoint.CheckpointCollector`), keeps them in
the store and serves them. A member that has fallen behind further than its peers keep
history (the catch-up loop tells it, see :meth:`StateSync.seek`) asks for the latest
certificate, checks it (f+1 member signatures, the ordering state's digest), fetches
the log up to it in segments from several peers at once
(:class:`~dagrider.statesync.Transfer`, banning a peer whose rows do not match the
certificate's hash chain), keeps each verified segment in the store (a transfer cut
short resumes with them), installs log and state in one store transaction and lets the
process resume from there.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from crdt.checkpoint import is_checkpoint
from dagrider.checkpoint import Certificate, CertificateError, Checkpoint, CheckpointCollector
from dagrider.committee import Committee, NodeSecret
from dagrider.effects import Effect
from dagrider.errors import DecodeError
from dagrider.node.store import Store
from dagrider.ordering import OrderingState
from dagrider.process import Process
from dagrider.statesync import (
    LOG_CHUNK_BYTES,
    CertificateOffer,
    CertificateRequest,
    CheckpointVote,
    LogPruned,
    LogRequest,
    LogRows,
    StateMessage,
    Transfer,
    checkpoint_of,
    decode,
    encode,
    take_offer,
)
from p2p.framing import FrameKind
from p2p.transport import PeerTransport

QUIET_PERIODS = 5  # periods without an answer before a serving peer's segments move on
SEEK_AFTER = 3  # consecutive "behind" catch-up periods before asking for a certificate
# Certificate and log answers one peer may have per second (a log answer is up to
# LOG_CHUNK_BYTES: at most 16 MiB/s of our store per member, whatever it asks).
ANSWERS_PER_SECOND = 4.0
ANSWER_BURST = 8.0


class StateSync:
    """One member's checkpoints, certificates and state transfers."""

    def __init__(
        self,
        committee: Committee,
        secret: NodeSecret,
        process: Process,
        store: Store,
        transport: PeerTransport,
        emit: Callable[[list[Effect]], None],
        misbehaviour: Callable[[int, str], None],
        logger: logging.Logger,
        accept_suffix: bool = False,
    ) -> None:
        self.committee = committee
        self.me = secret.node_id
        self.signing_key = secret.signing_key()
        self.process = process
        self.store = store
        self.transport = transport
        self.emit = emit
        self.misbehaviour = misbehaviour
        self.logger = logger
        # A node configured to keep only the log's tail ([storage] keep_log_entries) may
        # install a certified suffix when its peers pruned the rows it lacks.
        self.accept_suffix = accept_suffix
        params = process.cfg.params
        self.gc_depth = params.gc_depth
        self.keys = {m.node_id: m.identity_key for m in committee.members}
        self.id_of = {m.identity_key: m.node_id for m in committee.members}
        self.peers = [m.node_id for m in committee.members if m.node_id != self.me]
        self.collector = CheckpointCollector(
            committee.committee_id, self.keys, committee.f, params.checkpoint_interval
        )
        self.transfer: Transfer | None = None
        self._behind_periods = 0
        self._asked: set[int] = set()  # peers whose certificate offer we wait for
        self._answered: set[int] = set()  # peers that sent log rows this period
        self._quiet: dict[int, int] = {}  # periods a serving peer sent nothing
        self._tokens: dict[int, tuple[float, float]] = {}
        self.stats = {
            "checkpoints_signed": 0,
            "certificates": 0,
            "transfers_started": 0,
            "transfers_installed": 0,
            "transfer_peers_banned": 0,
        }

    def load(self) -> None:
        latest = self.store.latest_certificate()
        if latest is not None:
            self.collector.adopt(latest[0])
        self.collector.position = self.process.ordering.next_index

    def status(self) -> dict[str, object]:
        latest = self.collector.latest
        return {
            **self.stats,
            "latest_certificate": None if latest is None else latest.checkpoint.index,
            "transfer": None
            if self.transfer is None
            else {
                "target": self.transfer.target.index,
                "from": self.transfer.start,
                "segments": len(self.transfer.segments),
                "verified": sum(s.verified for s in self.transfer.segments),
                "serving": self.transfer.serving,
                "banned": sorted(self.transfer.banned),
            },
        }

    # -- our own checkpoints -------------------------------------------------------------

    def on_checkpoint(self, state: OrderingState) -> None:
        """The ordering passed a checkpoint (already stored): sign it, tell the others."""
        cut = self.store.crdt_cut_at.pop(state.next_index, self.store.crdt_cut)
        cp = checkpoint_of(self.committee.committee_id, state, self.gc_depth, cut)
        sig = cp.sign(self.signing_key)
        self.stats["checkpoints_signed"] += 1
        self.collector.position = state.next_index
        data = encode(CheckpointVote(cp, sig))
        for peer in self.peers:
            self._send(peer, data)
        self._take_vote(self.me, cp, sig)

    def _take_vote(self, signer: int, cp: Checkpoint, sig: bytes) -> None:
        result = self.collector.add(signer, cp, sig)
        if isinstance(result, str):
            self.misbehaviour(signer, result)
        elif isinstance(result, Certificate):
            self.stats["certificates"] += 1
            self.store.save_certificate(result)
            self.logger.info(
                "checkpoint certified",
                extra={"index": cp.index, "signers": [s for s, _ in result.signatures]},
            )

    # -- frames --------------------------------------------------------------------------

    def on_frame(self, peer_key: bytes, data: bytes) -> None:
        sender = self.id_of.get(peer_key)
        if sender is None or sender == self.me:
            return  # state transfer is between members only
        try:
            msg = decode(data)
        except DecodeError as exc:
            self.misbehaviour(sender, f"undecodable state-sync message: {exc}")
            return
        self._dispatch(sender, msg)

    def _dispatch(self, sender: int, msg: StateMessage) -> None:
        match msg:
            case CheckpointVote(cp, sig):
                self._take_vote(sender, cp, sig)
            case CertificateRequest():
                if self._may_answer(sender):
                    self._offer(sender)
            case CertificateOffer():
                self._on_offer(sender, msg)
            case LogRequest(first, until):
                if not self._may_answer(sender):
                    return
                chain = None if self.store.pruned_before(first) else self.store.chain_before(first)
                if chain is None:
                    self._send(sender, encode(LogPruned(self.store.base_certificate())))
                    return
                ordering = self.store.ordering_state()
                if ordering is None or ordering.next_index < until:
                    # Our log does not reach the asker's certificate yet (we lag it):
                    # rows up to our head marked "done" would fail its chain check and
                    # get us banned for no fault; "not held" moves its segment on.
                    self._send(sender, encode(LogPruned(None)))
                    return
                rows, done = self.store.log_rows(first, until, LOG_CHUNK_BYTES)
                self._send(sender, encode(LogRows(first, tuple(rows), done, chain)))
            case LogRows():
                self._on_rows(sender, msg)
            case LogPruned(base):
                self._on_pruned(sender, base)

    def _may_answer(self, peer: int) -> bool:
        now = time.monotonic()
        stamp, tokens = self._tokens.get(peer, (now, ANSWER_BURST))
        tokens = min(ANSWER_BURST, tokens + (now - stamp) * ANSWERS_PER_SECOND)
        if tokens < 1.0:
            self._tokens[peer] = (now, tokens)
            self.misbehaviour(peer, "state-sync requests over the rate limit")
            return False
        self._tokens[peer] = (now, tokens - 1.0)
        return True

    def _offer(self, peer: int) -> None:
        latest = self.store.latest_certificate()
        if latest is not None:
            self._send(peer, encode(CertificateOffer(*latest)))

    def _send(self, peer: int, data: bytes) -> None:
        self.transport.send(self.keys[peer], data, FrameKind.STATE)

    # -- falling behind and catching up from a certificate ---------------------------------

    def seek(self, behind: bool) -> None:
        """Called once per catch-up period: after a few periods behind, ask every peer
        for its latest certificate; while a transfer runs, re-ask its serving peer (a
        lost answer or a reconnect resumes where the verified rows end)."""
        self._behind_periods = self._behind_periods + 1 if behind else 0
        t = self.transfer
        if t is not None:
            # Re-ask only peers that sent nothing for a whole period (an answer lost
            # with a link, a peer gone): a slow answer is not asked for twice.
            quiet = [(p, r) for p, r in t.outstanding() if p not in self._answered]
            for peer in {p for p, _ in quiet}:
                self._quiet[peer] = self._quiet.get(peer, 0) + 1
                if self._quiet[peer] >= QUIET_PERIODS:
                    # Gone or stuck: not a fault we can prove, but its segments move on.
                    self.logger.warning(
                        "state transfer: peer stopped answering", extra={"peer": peer}
                    )
                    t.ban(peer)
            for peer in self._answered:
                self._quiet.pop(peer, None)
            self._answered.clear()
            quiet = [(p, r) for p, r in quiet if p not in t.banned]
            asks = t.requests() + quiet
            if not asks and not t.outstanding():
                # Everyone banned or gone: start over with a fresh certificate (the
                # segments verified so far stay in the store and are used again).
                self.logger.warning("state transfer: no peer left to ask; starting over")
                self.transfer = None
            for peer, req in dict.fromkeys(asks):
                self._send(peer, encode(req))
            return
        if self._behind_periods >= SEEK_AFTER:
            data = encode(CertificateRequest())
            for peer in self.peers:
                self._send(peer, data)
                self._asked.add(peer)

    def _on_offer(self, sender: int, offer: CertificateOffer) -> None:
        if sender not in self._asked:
            return  # unasked: nothing to do with it
        self._asked.discard(sender)
        ordering = self.process.ordering
        taken = take_offer(
            sender,
            offer,
            committee=self.committee.committee_id,
            keys=self.keys,
            f=self.committee.f,
            gc_depth=self.gc_depth,
            position=ordering,
            process_round=self.process.round,
            busy=self.transfer is not None,
            peers=self.peers,
            limits=self.process.cfg.params.limits,
        )
        if taken.fault is not None:
            self.misbehaviour(sender, taken.fault)
        t = taken.transfer
        if t is None:
            return
        cp = t.target
        self.transfer = t
        resumed = sum(
            t.restore(first, until, chain, rows)
            for first, until, chain, rows in self.store.staged(ordering.next_index)
        )
        self.stats["transfers_started"] += 1
        self.logger.info(
            "state transfer started",
            extra={
                "from_index": ordering.next_index,
                "to_index": cp.index,
                "segments": len(t.segments),
                "resumed_segments": resumed,
                "peer": sender,
            },
        )
        self._progress(t)

    def _on_rows(self, sender: int, msg: LogRows) -> None:
        t = self.transfer
        if t is None:
            return
        self._answered.add(sender)
        for peer, why in t.on_rows(sender, msg):
            self.stats["transfer_peers_banned"] += 1
            self.misbehaviour(peer, f"state transfer: {why}")
        self._progress(t)

    def _progress(self, t: Transfer) -> None:
        """Keep what verified, install when all did, else ask idle peers for more."""
        for seg in t.verified():
            if seg.rows and seg.start_chain is not None:
                self.store.stage(seg.first, seg.until, seg.start_chain, seg.rows)
        if t.failure is not None:
            self.logger.error("state transfer failed", extra={"reason": t.failure})
            self.transfer = None
            return
        if t.finished:
            self._install(t)
            return
        for peer, req in t.requests():
            self._send(peer, encode(req))

    def _on_pruned(self, sender: int, base: Certificate | None) -> None:
        """The serving peer no longer holds the rows we asked for."""
        t = self.transfer
        if t is None or sender not in t.serving:
            return
        rebased = False
        if base is not None and self.accept_suffix:
            try:
                base.verify(self.committee.committee_id, self.keys, self.committee.f)
            except CertificateError as exc:
                self.misbehaviour(sender, f"base certificate refused: {exc}")
                t.ban(sender)
            else:
                rebased = t.rebase(base.checkpoint)
        if not rebased and sender in t.serving:
            # Not a fault: it pruned what we need (and we keep the whole log, or its
            # base does not fit). Its segments go to the other peers.
            self.logger.warning(
                "state transfer: peer pruned the log we need",
                extra={"peer": sender, "from_index": t.start, "suffix": self.accept_suffix},
            )
            t.ban(sender)
        self._progress(t)

    def _install(self, t: Transfer) -> None:
        self.transfer = None
        cut = self.store.crdt_cut
        seen = False
        for row in t.rows:
            for tx in row.transactions():
                if is_checkpoint(tx):
                    cut = hashlib.blake2b(tx, digest_size=32).digest()
                    seen = True
        if t.rebased and not seen:
            cut = t.target.crdt  # the rows that set it were pruned: f+1 members vouch
        if cut != t.target.crdt:
            # The log verified against the chain, so f+1 signers vouched for another
            # cut than this log implies: refuse rather than install something odd.
            self.logger.error("state transfer: CRDT cut does not match the certificate")
            return
        dropped = self.process.own_dropped_by(t.state)
        start = self.process.ordering.next_index
        self.store.install(t.certificate, t.state, t.rows, time.time(), start_chain=t.start_chain)
        self.store.set_crdt_cut(cut)
        self.collector.adopt(t.certificate)
        self.collector.position = t.state.next_index
        self.stats["transfers_installed"] += 1
        self.logger.info(
            "state transfer installed",
            extra={"index": t.target.index, "rows": len(t.rows), "tx_index": t.target.tx_index},
        )
        self._behind_periods = 0
        # What our vertices that the jump drops carried into the installed log: the rest
        # of their transactions go back to the mempool (see install_checkpoint).
        carried = (
            [] if dropped is None else self.store.proposed_by(self.process.me, *dropped, start)
        )
        self.emit(self.process.install_checkpoint(t.state, carried))
