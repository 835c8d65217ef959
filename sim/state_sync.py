"""State sync in the simulator: certified checkpoints and state transfer for a member
that fell behind further than its peers keep history.

The daemon's shell (:mod:`dagrider.node.state_sync`) does this over its SQLite store,
its transport and the wall clock; this is the same sequence over the same pure parts,
for the simulator's virtual time and in-memory "disks":

* at each checkpoint the ordering passes (``CheckpointReached``), a member signs the
  :class:`~dagrider.checkpoint.Checkpoint` with its identity key and sends its vote to
  every peer; a :class:`~dagrider.checkpoint.CheckpointCollector` turns f+1 matching
  votes into a certificate, kept with the state it certifies;
* the catch-up loop (:class:`dagrider.catchup.CatchupRequester`) says when a member is
  behind and getting nowhere; after :data:`SEEK_AFTER` such periods in a row it asks
  every peer for its latest certificate;
* it checks an offered certificate (f+1 member signatures, the ordering state's digest)
  and fetches the log up to it with a :class:`~dagrider.statesync.Transfer` (segments
  from several peers, each checked against the certificate's hash chain, a peer whose
  rows do not match banned), keeping verified segments on its disk;
* once every segment verified, the shell installs the rows and the state and calls
  :meth:`dagrider.process.Process.install_checkpoint` (the runner does, with
  :class:`Install`).

Every message crosses the simulated wire as the bytes :func:`dagrider.statesync.encode`
makes and the strict :func:`~dagrider.statesync.decode` reads. Pure: nothing here reads a
clock or draws randomness (the runner passes its virtual time in). The simulator has no
CRDT store, so checkpoints name the all-zero CRDT cut.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

import nacl.signing

from dagrider.checkpoint import (
    CHAIN_GENESIS,
    Certificate,
    Checkpoint,
    CheckpointCollector,
    chain_next,
)
from dagrider.effects import Commit
from dagrider.messages import NodeId
from dagrider.ordering import OrderingState
from dagrider.params import Parameters
from dagrider.process import Process
from dagrider.statesync import (
    LOG_CHUNK_BYTES,
    CertificateOffer,
    CertificateRequest,
    CheckpointVote,
    LogPruned,
    LogRequest,
    LogRow,
    LogRows,
    StateMessage,
    Transfer,
    checkpoint_of,
    take_offer,
)

SEEK_AFTER = 3
"""Catch-up periods behind in a row before asking for a certificate (the daemon's)."""
QUIET_PERIODS = 5
"""Periods without an answer before a serving peer's segments move on (the daemon's)."""
ANSWERS_PER_SECOND = 4.0
ANSWER_BURST = 8.0
"""Certificate and log answers one peer may have per second, and in a burst (the
daemon's token bucket, here on virtual time)."""

STATE_TYPES = (CheckpointVote, CertificateRequest, CertificateOffer, LogRequest, LogRows, LogPruned)
"""The state-sync messages: the runner hands these to :class:`StateSync`, not to the
process."""

NO_CRDT = bytes(32)  # the simulator runs no CRDT store: every checkpoint names no cut


def identity_key(committee: bytes, node: NodeId) -> nacl.signing.SigningKey:
    """Member ``node``'s identity key in a simulated committee: derived from the
    committee id, so that a run draws nothing for it from its RNG."""
    seed = hashlib.blake2b(node.to_bytes(4, "big"), key=committee, digest_size=32).digest()
    return nacl.signing.SigningKey(seed)


@dataclass
class SyncDisk:
    """What a member's store keeps for state sync, which survives a crash: the log rows
    (committed vertices with transactions) with the hash chain after each, the states
    of the checkpoints it reached or installed with their certificates, and the
    verified segments of a transfer cut short."""

    rows: list[LogRow] = field(default_factory=list)
    chains: list[bytes] = field(default_factory=list)  # chain after rows[k]
    position: int = 0  # the log's next vertex index
    states: dict[int, OrderingState] = field(default_factory=dict)  # index -> state
    certificates: dict[int, Certificate] = field(default_factory=dict)
    staged: dict[tuple[int, int], tuple[bytes, list[LogRow]]] = field(default_factory=dict)

    def copy(self) -> SyncDisk:
        """The disk as it is now (a backup; rows and states are immutable)."""
        return SyncDisk(
            list(self.rows),
            list(self.chains),
            self.position,
            dict(self.states),
            dict(self.certificates),
            dict(self.staged),
        )

    def commit(self, c: Commit) -> None:
        """One committed vertex (the store writes a row for those with transactions)."""
        self.position = c.index + 1
        if c.vertex.block:
            v = c.vertex
            self._append(LogRow(c.index, c.tx_index, v.round, v.source, c.wave, c.packed))

    def _append(self, row: LogRow) -> None:
        chain = self.chains[-1] if self.chains else CHAIN_GENESIS
        self.rows.append(row)
        self.chains.append(chain_next(chain, row.entry()))

    def chain_before(self, index: int) -> bytes:
        """The log's hash chain over the rows below vertex index ``index``."""
        k = bisect.bisect_left(self.rows, index, key=lambda r: r.index)
        return self.chains[k - 1] if k else CHAIN_GENESIS

    def log_rows(self, first: int, until: int, max_bytes: int) -> tuple[list[LogRow], bool]:
        """Rows with index in [first, until), at most ``max_bytes`` of blocks (at least
        one row), and whether the range is exhausted (the store's ``log_rows``)."""
        k = bisect.bisect_left(self.rows, first, key=lambda r: r.index)
        out: list[LogRow] = []
        size = 0
        for row in self.rows[k:]:
            if row.index >= until:
                break
            if out and size + len(row.block) > max_bytes:
                return out, False
            out.append(row)
            size += len(row.block)
        return out, True

    def latest(self) -> tuple[Certificate, OrderingState] | None:
        """The newest certificate held together with the state it certifies."""
        held = [i for i in self.certificates if i in self.states]
        if not held:
            return None
        top = max(held)
        return self.certificates[top], self.states[top]

    def install(self, cert: Certificate, state: OrderingState, rows: list[LogRow]) -> None:
        """A verified transfer: its rows, the state and its certificate, in one write."""
        for row in rows:
            if row.index >= self.position:
                self._append(row)
        self.position = max(self.position, state.next_index)
        index = cert.checkpoint.index
        self.states[index] = state
        self.certificates[index] = cert
        self.staged.clear()


@dataclass(frozen=True)
class Install:
    """Install ``state`` (certified by ``certificate``) and the log ``rows`` that lead
    to it: the runner writes them to the node's disk and store, then calls
    :meth:`~dagrider.process.Process.install_checkpoint`."""

    certificate: Certificate
    state: OrderingState
    rows: tuple[LogRow, ...]


@dataclass
class Reaction:
    """What the shell does for one input: send ``sends``, report ``reports`` (peer,
    reason) as misbehaviour, and perform ``install`` if any."""

    sends: list[tuple[NodeId, StateMessage]] = field(default_factory=list)
    reports: list[tuple[NodeId, str]] = field(default_factory=list)
    install: Install | None = None


class StateSync:
    """One member's checkpoints, certificates and transfers; made at start and again at
    each restart (its disk is what survives)."""

    def __init__(
        self,
        me: NodeId,
        n: int,
        f: int,
        committee: bytes,
        keys: dict[NodeId, bytes],
        params: Parameters,
        disk: SyncDisk,
    ) -> None:
        self.me = me
        self.f = f
        self.committee = committee
        self.keys = keys
        self.signing_key = identity_key(committee, me)
        self.gc_depth = params.gc_depth
        self.limits = params.limits
        self.disk = disk
        self.peers = [p for p in range(n) if p != me]
        self.collector = CheckpointCollector(committee, keys, f, params.checkpoint_interval)
        latest = disk.latest()
        if latest is not None:
            self.collector.adopt(latest[0])
        self.collector.position = disk.position
        self.transfer: Transfer | None = None
        self._behind_periods = 0
        self._asked: set[NodeId] = set()
        self._answered: set[NodeId] = set()
        self._quiet: dict[NodeId, int] = {}
        self._tokens: dict[NodeId, tuple[float, float]] = {}
        self.installs = 0
        self.banned = 0

    # -- our own checkpoints -------------------------------------------------------------

    def on_checkpoint(self, state: OrderingState) -> Reaction:
        """The ordering passed a checkpoint: keep its state, sign it, tell the others."""
        self.disk.states.setdefault(state.next_index, state)
        cp = checkpoint_of(self.committee, state, self.gc_depth, NO_CRDT)
        sig = cp.sign(self.signing_key)
        self.collector.position = state.next_index
        out = Reaction([(p, CheckpointVote(cp, sig)) for p in self.peers])
        self._take_vote(self.me, cp, sig, out)
        return out

    def _take_vote(self, signer: NodeId, cp: Checkpoint, sig: bytes, out: Reaction) -> None:
        result = self.collector.add(signer, cp, sig)
        if isinstance(result, str):
            out.reports.append((signer, result))
        elif isinstance(result, Certificate) and cp.index in self.disk.states:
            # As the daemon's store: a certificate is kept with a state we reached.
            self.disk.certificates[cp.index] = result

    # -- messages ------------------------------------------------------------------------

    def on_message(self, sender: NodeId, msg: StateMessage, now: float, p: Process) -> Reaction:
        """One decoded message from member ``sender`` at virtual time ``now`` (ms)."""
        out = Reaction()
        match msg:
            case CheckpointVote(cp, sig):
                self._take_vote(sender, cp, sig, out)
            case CertificateRequest():
                latest = self.disk.latest()
                if self._may_answer(sender, now, out) and latest is not None:
                    out.sends.append((sender, CertificateOffer(*latest)))
            case CertificateOffer():
                self._on_offer(sender, msg, p, out)
            case LogRequest(first, until):
                if self._may_answer(sender, now, out):
                    out.sends.append((sender, self._serve(first, until)))
            case LogRows():
                if self.transfer is not None:
                    self._answered.add(sender)
                    self._ban(self.transfer.on_rows(sender, msg), out)
                    self._progress(self.transfer, out)
            case LogPruned():
                t = self.transfer
                if t is not None and sender in t.serving:
                    t.ban(sender)  # not a fault: it does not hold what we need
                    self._progress(t, out)
        return out

    def _serve(self, first: int, until: int) -> LogRows | LogPruned:
        """Our rows in [first, until), or LogPruned when our log does not reach
        ``until`` (a member behind the certificate itself: a short answer would fail
        the asker's chain check and get us banned for no fault)."""
        if self.disk.position < until:
            return LogPruned(None)
        rows, done = self.disk.log_rows(first, until, LOG_CHUNK_BYTES)
        return LogRows(first, tuple(rows), done, self.disk.chain_before(first))

    def _may_answer(self, peer: NodeId, now: float, out: Reaction) -> bool:
        stamp, tokens = self._tokens.get(peer, (now, ANSWER_BURST))
        tokens = min(ANSWER_BURST, tokens + (now - stamp) / 1000.0 * ANSWERS_PER_SECOND)
        if tokens < 1.0:
            self._tokens[peer] = (now, tokens)
            out.reports.append((peer, "state-sync requests over the rate limit"))
            return False
        self._tokens[peer] = (now, tokens - 1.0)
        return True

    def _ban(self, bans: list[tuple[NodeId, str]], out: Reaction) -> None:
        self.banned += len(bans)
        out.reports += [(peer, f"state transfer: {why}") for peer, why in bans]

    # -- falling behind ------------------------------------------------------------------

    def seek(self, behind: bool) -> Reaction:
        """Once per catch-up period (the daemon's ``StateSync.seek``)."""
        out = Reaction()
        self._behind_periods = self._behind_periods + 1 if behind else 0
        t = self.transfer
        if t is None:
            if self._behind_periods >= SEEK_AFTER:
                out.sends += [(p, CertificateRequest()) for p in self.peers]
                self._asked.update(self.peers)
            return out
        quiet = [(p, r) for p, r in t.outstanding() if p not in self._answered]
        for peer in {p for p, _ in quiet}:
            self._quiet[peer] = self._quiet.get(peer, 0) + 1
            if self._quiet[peer] >= QUIET_PERIODS:
                t.ban(peer)  # gone or stuck: not a fault we can prove
        for peer in self._answered:
            self._quiet.pop(peer, None)
        self._answered.clear()
        quiet = [(p, r) for p, r in quiet if p not in t.banned]
        asks = t.requests() + quiet
        if not asks and not t.outstanding():
            self.transfer = None  # everyone banned or gone: start over later
        out.sends += list(dict.fromkeys(asks))
        return out

    def _on_offer(self, sender: NodeId, offer: CertificateOffer, p: Process, out: Reaction) -> None:
        if sender not in self._asked:
            return
        self._asked.discard(sender)
        ordering = p.ordering
        taken = take_offer(
            sender,
            offer,
            committee=self.committee,
            keys=self.keys,
            f=self.f,
            gc_depth=self.gc_depth,
            position=ordering,
            process_round=p.round,
            busy=self.transfer is not None,
            peers=self.peers,
            limits=self.limits,
        )
        if taken.fault is not None:
            out.reports.append((sender, taken.fault))
        t = taken.transfer
        if t is None:
            return
        self.transfer = t
        for (first, until), (chain, rows) in sorted(self.disk.staged.items()):
            if first >= ordering.next_index:
                t.restore(first, until, chain, rows)
        self._progress(t, out)

    def _progress(self, t: Transfer, out: Reaction) -> None:
        """Keep what verified, install when all did, else ask idle peers for more."""
        for seg in t.verified():
            if seg.rows and seg.start_chain is not None:
                self.disk.staged[(seg.first, seg.until)] = (seg.start_chain, list(seg.rows))
        if t.failure is not None:
            self.transfer = None
            return
        if t.finished:
            self.transfer = None
            self._behind_periods = 0
            self.installs += 1
            out.install = Install(t.certificate, t.state, tuple(t.rows))
            return
        out.sends += t.requests()
