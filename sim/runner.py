"""Run a simulated committee: a pure function of (SimConfig, seed) -> SimResult."""

from __future__ import annotations

import bisect
import gc
import hashlib
import math
import random
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import assert_never, cast

from dagrider.catchup import CatchupPolicy, CatchupRequester, CatchupServer, Refuse, answer_from
from dagrider.codec import Codec, encode
from dagrider.coin import CoinShare, deal
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
from dagrider.messages import (
    CatchupRequest,
    CoinShareMsg,
    Digest,
    Echo,
    Message,
    Ready,
    Val,
    VertexResponse,
    Votes,
)
from dagrider.params import Parameters
from dagrider.persistence import GcRules, MemoryStore, restart_from
from dagrider.process import Process, ProcessConfig
from dagrider.rbc import coalesce_votes
from dagrider.statesync import StateMessage
from dagrider.statesync import decode as decode_state
from dagrider.statesync import encode as encode_state
from sim import byzantine, latency
from sim.invariants import (
    Verdict,
    agreement,
    faults_happened,
    integrity,
    liveness,
    liveness_need,
    validity,
)
from sim.report import SimResult, percentiles
from sim.state_sync import STATE_TYPES, Install, Reaction, StateSync, SyncDisk, identity_key
from sim.world import Adversary, Frame, World

FAULT_KINDS = ("none", "crash", "mixed", *sorted(byzantine.STRATEGIES))

SIM_CATCHUP = CatchupPolicy(period=1_000.0)
"""Catch-up in virtual ms: the daemon's policy (:mod:`dagrider.catchup`), period 1 s."""

WAL_LAG_MS = 1_500.0
"""With ``--wal-loss``, how much older than the crash (virtual ms, at most) the copy of
the store a crash node restarts from is: the writes of that span are lost."""

STALL_MS = 60_000.0
"""A run in which no correct node enters a new round for this long (virtual ms, plus the
batch delay) has stalled and ends there. Every message arrives within
:data:`sim.world.MAX_DELAY` (10 s) of being sent, partitions last at most 2 s, so a
correct committee that can make progress never pauses this long."""


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``faults`` nodes (at most f) behave as ``byzantine`` says.

    ``byzantine="crash"`` makes the faulty nodes crash and restart from their store;
    any strategy name from :mod:`sim.byzantine` (or ``mixed``) makes them Byzantine.
    ``slow_node_delay`` (ms) delays every message one correct node (drawn from the seed)
    sends by that much on top of its link's latency; what it receives is not delayed.
    """

    nodes: int = 4
    faults: int = 0
    byzantine: str = "none"
    waves: int = 10
    latency: str = "uniform"
    adversarial: bool = False
    partitions: int = 0
    tx_per_second: float = 200.0  # per correct node, virtual time
    tx_size: int = 64
    batch_size: int = 500
    batch_delay: float = 0.0  # ms; 0 proposes as soon as a round completes
    # ms between rounds while a node has nothing to order (the daemon's idle_round_ms);
    # the wait is max(batch_delay, idle_delay). 0: idle rounds run at the batch pace.
    idle_delay: float = 0.0
    gc_depth: int = 50
    max_time: float = 0.0  # ms of virtual time; 0 means 120 s per wave
    slow_node_delay: float = 0.0  # ms added to everything one correct node sends
    # ms of virtual time per node step: a node handles everything that reached it within
    # one slot together and its votes of the step leave as one Votes frame per peer (as
    # the daemon handles a loop iteration's frames, then flushes). 0: one step per message.
    # A step adds up to step_ms to each hop: small next to the 10-100 ms of "uniform",
    # not next to the 1-10 ms of "lan" (use --step-ms 1 or 0 there).
    step_ms: float = 5.0
    # Longest crash (ms down before the restart) and partition episode: runs with a
    # small gc_depth and long faults make nodes fall below their peers' memory window,
    # so that they need catch-up (served from the peers' stores) to come back.
    down_ms: float = 3_000.0
    partition_ms: float = 2_000.0
    # Rounds a node's store keeps below its GC floor to serve catch-up (the daemon's
    # retain_rounds); the in-memory process keeps gc_depth rounds below the last commit.
    retain_rounds: int = 200
    # Crash nodes restart from a copy of their store taken up to WAL_LAG_MS before the
    # crash (a deleted WAL, a database-only backup restored): the writes after it are
    # lost, and if they include a batch whose messages left, the node is fenced at the
    # highest round it ever sent for, as the daemon's fence file does
    # (dagrider/node/fence.py, dagrider.persistence.restart_from, Process.fence).
    wal_loss: bool = False
    # Committed vertices between certified checkpoints (the daemon's
    # checkpoint_interval; 0: none). With checkpoints, a member that fell behind its
    # peers' retained rounds installs the latest certificate's state (state sync, the
    # daemon's sequence over the same pure parts: sim/state_sync.py).
    checkpoint_interval: int = 0
    # What one peer can make a member hold and answer (the daemon's peer_budget_mib and
    # response_budget_mib; see dagrider.params.Parameters): smaller budgets make the
    # flood and request-amplification attacks reach them within a short run.
    peer_budget_mib: int = 64
    response_budget_mib: int = 16

    def __post_init__(self) -> None:
        if self.nodes < 4 or (self.nodes - 1) % 3:
            raise ValueError(f"--nodes must be 3f+1 >= 4, got {self.nodes}")
        f = (self.nodes - 1) // 3
        if not 0 <= self.faults <= f:
            raise ValueError(f"--faults must be in 0..{f} for n={self.nodes}, got {self.faults}")
        if self.byzantine not in FAULT_KINDS:
            raise ValueError(f"--byzantine must be one of {list(FAULT_KINDS)}")
        if self.waves < 1:
            raise ValueError("--waves must be >= 1")
        if not 0 <= self.slow_node_delay < math.inf:
            raise ValueError(f"--slow-node-delay must be >= 0 ms, got {self.slow_node_delay}")
        if not 0 <= self.step_ms <= 1_000:
            raise ValueError(f"--step-ms must be in 0..1000 ms, got {self.step_ms}")
        if not 300.0 <= self.down_ms <= STALL_MS / 2:
            raise ValueError(f"--down-ms must be in 300..{STALL_MS / 2:g} ms, got {self.down_ms}")
        if not 200.0 <= self.partition_ms <= STALL_MS / 2:
            raise ValueError(
                f"--partition-ms must be in 200..{STALL_MS / 2:g} ms, got {self.partition_ms}"
            )
        if self.retain_rounds < 0:
            raise ValueError(f"--retain-rounds must be >= 0, got {self.retain_rounds}")
        if self.checkpoint_interval < 0:
            raise ValueError(f"--checkpoint-interval must be >= 0, got {self.checkpoint_interval}")
        for flag, mib in (
            ("--peer-budget-mib", self.peer_budget_mib),
            ("--response-budget-mib", self.response_budget_mib),
        ):
            if mib < 2:  # two maximal blocks (Parameters checks the bytes too)
                raise ValueError(f"{flag} must be >= 2, got {mib}")
        if self.wal_loss and self.byzantine != "crash":
            raise ValueError("--wal-loss needs --byzantine crash (the nodes that restart)")
        if (
            self.byzantine in byzantine.NEEDS_CLIENT_LOAD
            and self.faults
            and not (self.tx_per_second > 0)
        ):
            raise ValueError(
                f"--byzantine {self.byzantine} acts on client transactions: "
                "it needs --tx-rate > 0 (it would never fire)"
            )
        latency.by_name(self.latency)

    @property
    def f(self) -> int:
        return (self.nodes - 1) // 3

    def replay_command(self, seed: int) -> str:
        cmd = (
            f"dagrider sim --nodes {self.nodes} --faults {self.faults} "
            f"--byzantine {self.byzantine} --waves {self.waves} --seed {seed} "
            f"--latency {self.latency}"
        )
        if self.adversarial:
            cmd += " --adversarial"
        if self.partitions:
            cmd += f" --partitions {self.partitions}"
        if self.wal_loss:
            cmd += " --wal-loss"
        defaults = SimConfig()
        for flag, name in (
            ("--tx-rate", "tx_per_second"),
            ("--tx-size", "tx_size"),
            ("--batch-size", "batch_size"),
            ("--batch-delay", "batch_delay"),
            ("--idle-delay", "idle_delay"),
            ("--gc-depth", "gc_depth"),
            ("--max-time", "max_time"),
            ("--slow-node-delay", "slow_node_delay"),
            ("--step-ms", "step_ms"),
            ("--down-ms", "down_ms"),
            ("--partition-ms", "partition_ms"),
            ("--retain-rounds", "retain_rounds"),
            ("--checkpoint-interval", "checkpoint_interval"),
            ("--peer-budget-mib", "peer_budget_mib"),
            ("--response-budget-mib", "response_budget_mib"),
        ):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                cmd += f" {flag} {value!r}"  # repr: floats replay exactly
        return cmd


@dataclass
class _Node:
    process: Process
    kind: str  # "correct", "crash" or a Byzantine strategy name
    strategy: byzantine.Strategy | None
    store: MemoryStore  # its "disk": survives a crash, GC'd as the daemon's store
    log: list[Digest] = field(default_factory=list)
    tx_count: int = 0
    decided: list[LeaderDecided] = field(default_factory=list)
    leaders_committed: int = 0
    shares: list[CoinShare] = field(default_factory=list)  # received since the last flush
    misbehaviour: int = 0
    restarts: int = 0
    attack_frames: int = 0  # frames a correct node would not have sent
    withheld_frames: int = 0  # frames a correct node would have sent and this one did not
    asker: CatchupRequester | None = None  # made at start and at each restart
    server: CatchupServer = field(default_factory=lambda: CatchupServer(SIM_CATCHUP))
    catchup_asks: dict[str, int] = field(default_factory=dict)  # reason -> asks
    catchup_served: int = 0
    state_sync_wanted: int = 0  # periods in which the node would seek a checkpoint
    # Crash nodes: the fence (the highest round of a vertex or vote the node ever sent,
    # kept apart from the store, so a WAL loss does not lose it), the copy of the store
    # a WAL loss restarts from, and what the node sent per slot, to catch a restarted
    # node contradicting an earlier incarnation: (kind, round, source) -> digest, kind
    # 0 for a VAL, 1 for an ECHO, 2 for a READY.
    fence: int = 0
    fence_flushes: int = 0  # the store's count of the last batch that sent (fence.py)
    backup: MemoryStore | None = None
    sent: dict[tuple[int, int, int], Digest] = field(default_factory=dict)
    contradictions: list[str] = field(default_factory=list)
    wal_losses: int = 0
    fenced: int = 0  # restarts at which the store had lost sent writes
    # State sync (with checkpoints): the node's share of its store (log rows, checkpoint
    # states, certificates; survives a crash, and a WAL loss takes it back with the
    # store), a copy of it for a WAL loss, and the shell (made at each start).
    disk: SyncDisk | None = None
    backup_disk: SyncDisk | None = None
    sync: StateSync | None = None
    installs: int = 0


class _Run:
    def __init__(
        self,
        cfg: SimConfig,
        seed: int,
        progress: Callable[[float], None] | None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.seed = seed
        self.rng = random.Random(seed) if rng is None else rng
        self.progress = progress
        n, f = cfg.nodes, cfg.f
        self.codec = Codec(n, Parameters().limits)
        pub, secrets = deal(n, f + 1, self.rng.randbytes)
        self.domain = hashlib.blake2b(b"sim-committee-%d" % seed, digest_size=32).digest()
        self.params = Parameters(
            gc_depth=cfg.gc_depth,
            batch_size=cfg.batch_size,
            propose_empty=cfg.batch_delay == 0 and cfg.idle_delay == 0,
            checkpoint_interval=cfg.checkpoint_interval,
            peer_budget_bytes=cfg.peer_budget_mib * 1024 * 1024,
            response_budget_bytes=cfg.response_budget_mib * 1024 * 1024,
        )
        self.identities = {i: identity_key(self.domain, i).verify_key.encode() for i in range(n)}
        self.configs = [
            ProcessConfig(i, n, f, pub, secrets[i], self.domain, self.params) for i in range(n)
        ]
        adversary = None
        if cfg.adversarial:
            adversary = Adversary(slow_nodes=f)
        self.world = World(
            n, self.rng, latency.by_name(cfg.latency), adversary, step_ms=cfg.step_ms
        )
        faulty = set(self.rng.sample(range(n), cfg.faults)) if cfg.byzantine != "none" else set()
        self.nodes: list[_Node] = []
        for i in range(n):
            kind, strategy = "correct", None
            if i in faulty and cfg.byzantine == "crash":
                kind = "crash"
            elif i in faulty:
                kind, strategy = byzantine.by_name(
                    cfg.byzantine, self.rng, self.params, client_load=cfg.tx_per_second > 0
                )
            store = MemoryStore(GcRules(cfg.gc_depth, cfg.retain_rounds))
            node = _Node(Process(self.configs[i]), kind, strategy, store)
            if cfg.checkpoint_interval and strategy is None:
                node.disk = SyncDisk()  # Byzantine members take no part (their right)
            self.nodes.append(node)
        # Installed logs that differ from the committed one: (node, index) (see _install).
        self.install_mismatches: list[tuple[int, int]] = []
        self.correct = [i for i, x in enumerate(self.nodes) if x.kind == "correct"]
        self.honest = [i for i, x in enumerate(self.nodes) if x.strategy is None]
        self.slow_node: int | None = None
        if cfg.slow_node_delay > 0:  # drawn only then: other runs keep their traces
            self.slow_node = self.rng.choice(self.correct)
            self.world.out_delay[self.slow_node] = cfg.slow_node_delay
        self.proposed_at: dict[Digest, tuple[float, int, int]] = {}
        self.committed_at: dict[tuple[int, Digest], float] = {}
        self.tx_submitted: dict[bytes, tuple[float, int]] = {}  # tx -> (time, node)
        self.tx_ordered_by: dict[bytes, int] = {}  # tx -> bitmask of correct nodes
        self.all_correct = sum(1 << i for i in self.correct)
        self.tx_required: set[bytes] | None = None  # submitted to correct nodes by the goal
        self.tx_pending = 0  # of tx_required, not yet ordered by every correct node
        self.last_progress = 0.0  # when a correct node last entered a new round
        self.stall_ms = STALL_MS + max(cfg.batch_delay, cfg.idle_delay)
        self.stalled_at: float | None = None
        self.tx_latency: list[float] = []
        self.vertex_latency: list[float] = []
        self.tx_counter = 0
        self.events = 0
        self.restarts = 0
        self.crash_horizon = 0.0
        self.max_time = cfg.max_time or 120_000.0 * cfg.waves
        self.goal_time: float | None = None  # when every correct node decided `waves` waves
        self.required: dict[Digest, tuple[int, int]] = {}  # proposals validity waits for
        self.log_sets: list[set[Digest]] = [set() for _ in range(cfg.nodes)]
        # Vertices of correct nodes garbage-collected unordered (their proposer requeued
        # the transactions): validity cannot wait for them, the transactions it does.
        self.orphaned: set[Digest] = set()
        self.tx_duplicates = 0  # transactions a correct node ordered more than once

    # -- scheduling ---------------------------------------------------------------------

    def setup(self) -> None:
        w = self.world
        for i in range(self.cfg.nodes):
            w.schedule(self.rng.uniform(0, 5), "start", i)
            if self.nodes[i].strategy is None and self.cfg.tx_per_second > 0:
                w.schedule(self.rng.uniform(0, 100), "load", i)
        horizon = 250.0 * 4 * self.cfg.waves
        for _ in range(self.cfg.partitions):
            start = self.rng.uniform(0, horizon)
            w.schedule(start, "split", -1, self.rng.uniform(200, self.cfg.partition_ms))
        self.crash_horizon = horizon
        for i, node in enumerate(self.nodes):
            if node.kind == "crash":
                t = self.rng.uniform(50, horizon / 2)
                self._schedule_crash(i, t, self.rng.uniform(300, self.cfg.down_ms))

    def _schedule_crash(self, i: int, at: float, down: float) -> None:
        """A crash at ``at`` for ``down`` ms; with ``wal_loss``, the copy of the store
        the restart will use is taken up to :data:`WAL_LAG_MS` before it."""
        w = self.world
        w.schedule(at, "crash", i, down)
        if self.cfg.wal_loss:
            w.schedule(max(w.now, at - self.rng.uniform(0, WAL_LAG_MS)), "backup", i)

    def run(self) -> SimResult:
        """Phase 1: until every correct node evaluated ``waves`` waves and committed the
        leaders liveness needs (see :data:`sim.invariants.LIVENESS_SHARE`; after
        ``2 * waves + 8`` evaluated waves without them it gives up). Phase 2: until every
        vertex (and transaction) a correct node had by then is ordered by every correct
        node (the "eventually" of validity) and the faults were exercised. Bounded by
        ``max_time``; a run in which no correct node advances for :data:`STALL_MS` ends.
        """
        self.setup()
        w = self.world
        goal = self.cfg.waves
        need = liveness_need(goal)
        last_report = -1.0
        while True:
            ev = w.pop()
            if ev is None or w.now > self.max_time:
                break
            self.events += 1
            self.dispatch(ev.kind, ev.node, ev.payload)
            if self.events % 256:
                continue
            if w.now - self.last_progress > self.stall_ms:
                self.stalled_at = w.now
                break
            if self.goal_time is None:
                done = min(self.nodes[i].process.ordering.next_wave - 1 for i in self.correct)
                committed = min(self.nodes[i].leaders_committed for i in self.correct)
                if self.progress is not None and done != last_report:
                    last_report = done
                    self.progress(min(1.0, done / goal))
                if done >= 2 * goal + 8 and committed < need:
                    break  # waves without commits: liveness fails
                if done >= goal and committed >= need:
                    self.goal_time = w.now
                    self.required = {d: (r, s) for d, (_, r, s) in self.proposed_at.items()}
                    self._require_transactions()
            elif self._all_ordered() and self._faults_exercised() and self._rejoined():
                break
        return self.report()

    def _all_ordered(self) -> bool:
        """Every vertex and transaction validity waits for is ordered by every correct node."""
        required = self._required_vertices()
        return self.tx_pending == 0 and all(
            self.log_sets[i].issuperset(required) for i in self.correct
        )

    def _required_vertices(self) -> dict[Digest, tuple[int, int]]:
        """What validity waits for: correct proposals by the goal, but those their
        proposer garbage-collected unordered (see ``Requeued``)."""
        if not self.orphaned:
            return self.required
        return {d: x for d, x in self.required.items() if d not in self.orphaned}

    def _require_transactions(self) -> None:
        """Phase 2 also waits for every transaction submitted to a correct node so far."""
        correct = set(self.correct)
        self.tx_required = {tx for tx, (_, i) in self.tx_submitted.items() if i in correct}
        full = self.all_correct
        self.tx_pending = sum(1 for tx in self.tx_required if self.tx_ordered_by.get(tx, 0) != full)

    def _rejoined(self) -> bool:
        """Every crash node is up and has ordered what validity waits for: a member that
        was down (perhaps past its peers' memory window) must come back, through resync
        and catch-up, not only leave the others running."""
        return all(
            self.world.alive[i] and self.log_sets[i].issuperset(self._required_vertices())
            for i, node in enumerate(self.nodes)
            if node.kind == "crash"
        )

    def _faults_exercised(self) -> bool:
        """Every crash node restarted once and every Byzantine node deviated (the run goes
        on until they did, within ``max_time``, so that a passing run exercised them)."""
        for node in self.nodes:
            if node.kind == "crash" and node.restarts == 0:
                return False
            if node.strategy is not None and not node.attack_frames + node.withheld_frames:
                return False
        return True

    def dispatch(self, kind: str, i: int, payload: object) -> None:
        node = self.nodes[i]
        if kind == "deliver":
            if not self.world.alive[i]:
                self.world.dropped += 1
                return
            src, data, msg = cast(tuple[int, bytes, Frame | None], payload)
            if isinstance(msg, STATE_TYPES):
                self._on_state(i, node, src, msg)
                return
            if isinstance(msg, CatchupRequest):
                self.serve_catchup(i, node, src, msg)
                return
            if msg is not None and isinstance(msg, CoinShareMsg):
                self._remember_share(node, src, msg.share)
            if msg is None:
                effects = node.process.receive_bytes(src, data)
            else:
                effects = node.process.receive(src, msg)
            self.apply(i, effects)
        elif kind == "inbox":
            self._step(i, node, cast(list[tuple[int, bytes, Frame | None]], payload))
        elif kind == "start":
            self._new_asker(i, node)
            self._new_sync(i, node)
            self.apply(i, node.process.start())
        elif kind == "catchup":
            self.catchup_tick(i, node)
        elif kind == "timer":
            if self.world.alive[i]:
                self.apply(i, node.process.propose_now(int(payload)))  # type: ignore[call-overload]
        elif kind == "load":
            self.load(i)
        elif kind == "split":
            self.split(float(payload))  # type: ignore[arg-type]
        elif kind == "heal":
            self.world.heal()
        elif kind == "crash":
            self.world.alive[i] = False
            self.world.schedule(self.world.now + float(payload), "restart", i)  # type: ignore[arg-type]
        elif kind == "restart":
            self.restart(i)
        elif kind == "backup":
            node.backup = _copy_store(node.store)
            node.backup_disk = None if node.disk is None else node.disk.copy()

    def _step(self, i: int, node: _Node, inbox: list[tuple[int, bytes, Frame | None]]) -> None:
        """One step of node ``i``: every message of its inbox, then one flush."""
        if not self.world.alive[i]:
            self.world.dropped += len(inbox)
            return
        process = node.process
        effects: list[Effect] = []
        state: list[tuple[int, StateMessage]] = []  # its own channel: handled after
        for src, data, msg in inbox:
            if msg is None:
                effects += process.receive_bytes(src, data)
                continue
            if isinstance(msg, STATE_TYPES):
                state.append((src, msg))
                continue
            if isinstance(msg, CoinShareMsg):
                self._remember_share(node, src, msg.share)
            elif isinstance(msg, CatchupRequest):
                self.serve_catchup(i, node, src, msg)
                continue
            effects += process.receive(src, msg)
        self.apply(i, effects)
        for src, msg in state:
            self._on_state(i, node, src, msg)

    def _remember_share(self, node: _Node, src: int, share: CoinShare) -> None:
        """Stored with the step's flush, as the daemon stores the shares of a loop
        iteration with its effects: only those the process accepts (asked before it
        receives the share), so a far-future share is not kept on "disk" either."""
        if node.process.accepts_coin_share(src, share):
            node.shares.append(share)

    def load(self, i: int) -> None:
        """Client load: a few transactions every 50 ms of virtual time, while running."""
        interval = 50.0
        count = max(1, round(self.cfg.tx_per_second * interval / 1000.0))
        txs = []
        for _ in range(count):
            self.tx_counter += 1
            tx = struct.pack(">IQ", i, self.tx_counter).ljust(self.cfg.tx_size, b"\x00")
            self.tx_submitted[tx] = (self.world.now, i)
            txs.append(tx)
        if self.world.alive[i]:
            self.apply(i, self.nodes[i].process.submit(txs))
        self.world.schedule(self.world.now + interval, "load", i)

    def split(self, duration: float) -> None:
        if self.world.partition is not None:
            return
        groups = [self.rng.randrange(2) for _ in range(self.cfg.nodes)]
        self.world.split(groups)
        self.world.schedule(self.world.now + duration, "heal", -1)

    def restart(self, i: int) -> None:
        """Rebuild the node from its store, as a restarted daemon would, and resync.

        With ``wal_loss`` the store is the copy taken before the crash: what was written
        after it is gone (the log too: its entries are committed again, and agreement
        checks they come out the same). As the daemon does with its fence file, a store
        that lost a batch whose messages were sent fences the process at the highest
        round the node sent for, at this restart and every later one
        (:func:`dagrider.persistence.restart_from`, the daemon's rule)."""
        old = self.nodes[i]
        fresh = Process(self.configs[i])
        old.process = fresh
        self.world.alive[i] = True
        old.server = CatchupServer(SIM_CATCHUP)  # a restarted daemon starts both afresh
        self._new_asker(i, old)
        if old.backup is not None:
            old.store, old.backup = old.backup, None
            old.disk, old.backup_disk = old.backup_disk, None
            old.wal_losses += 1
            # The log is the store's: what it lost is committed again (the run's record
            # of it goes back too; tx_count is only reported for correct nodes).
            del old.log[old.store.committed :]
            self.log_sets[i] = set(old.log)
        self._new_sync(i, old)
        recovery = old.store.recovery()
        stored = max([v.round for v in recovery.own] + [v.round for v in recovery.votes] + [0])
        store = old.store
        decision = restart_from(
            old.fence, old.fence_flushes, store.flushes, store.fenced_through, stored
        )
        if decision.lost:
            store.mark_lost(decision.fence, old.fence_flushes)
            old.fenced += 1
        if decision.fence:
            fresh.fence(decision.fence)
        committed_before = len(old.log)
        self.apply(i, fresh.recover(recovery), replay=True)
        assert len(old.log) >= committed_before
        self.restarts += 1
        old.restarts += 1
        if self.rng.random() < 0.5:  # crash again later
            at = self.world.now + self.rng.uniform(500, self.crash_horizon / 2)
            self._schedule_crash(i, at, self.rng.uniform(300, self.cfg.down_ms))
        for peer in range(self.cfg.nodes):
            if peer != i and self.world.alive[peer]:
                self.apply(peer, self.nodes[peer].process.resync(i))
                self.apply(i, fresh.resync(peer))

    # -- catch-up -----------------------------------------------------------------------

    def _new_asker(self, i: int, node: _Node) -> None:
        """A fresh requester, ticking every period from now (as a daemon's loop does)."""
        first = node.asker is None
        node.asker = CatchupRequester(i, self.cfg.nodes, self.cfg.f, self.cfg.gc_depth, SIM_CATCHUP)
        if first:
            self.world.schedule(self.world.now + SIM_CATCHUP.period, "catchup", i)

    def catchup_tick(self, i: int, node: _Node) -> None:
        """The daemon's catch-up loop, one period: ask peers if we are behind or stuck."""
        self.world.schedule(self.world.now + SIM_CATCHUP.period, "catchup", i)
        if not self.world.alive[i] or node.asker is None:
            return
        process = node.process
        rnd = process.round
        tick = node.asker.tick(
            rnd, process.dag.lowest_missing_round(rnd), process.rbc.proven_round()
        )
        node.state_sync_wanted += tick.seek_state_sync
        if node.sync is not None:
            self._perform_sync(i, node, node.sync.seek(tick.seek_state_sync))
        if tick.ask is None:
            return
        node.catchup_asks[tick.ask.reason] = node.catchup_asks.get(tick.ask.reason, 0) + 1
        data, msg = self._wire(tick.ask.request)
        for peer in tick.ask.peers:
            self.world.send(i, peer, data, msg)

    def serve_catchup(self, i: int, node: _Node, src: int, req: CatchupRequest) -> None:
        """Answer from the node's store, as the daemon's ``_serve_catchup`` does. A
        Byzantine node does not answer (withholding is its right; f+1 are asked)."""
        if node.strategy is not None:
            return
        process = node.process
        decision = node.server.serve(
            src,
            req,
            self.world.now,
            completed_wave=process.completed_wave,
            memory_floor=process.dag.floor,
        )
        if isinstance(decision, Refuse):
            node.misbehaviour += 1
            return
        node.catchup_served += 1
        store = node.store
        readies = [v for v in store.votes if isinstance(v, Ready)]
        vertices = {v.digest: v for v in store.delivered}
        for vote, vertex in answer_from(
            readies, vertices, decision.first, decision.last, decision.max_bytes
        ):
            self.world.send(i, src, *self._wire(vote))
            if vertex is not None:
                self.world.send(i, src, *self._wire(VertexResponse(vertex)))
        for wave in decision.waves:
            self.world.send(i, src, *self._wire(CoinShareMsg(process.own_share(wave))))
        if decision.resync:
            self.apply(i, process.resync(src))

    # -- state sync ---------------------------------------------------------------------

    def _new_sync(self, i: int, node: _Node) -> None:
        """A fresh state-sync shell over the node's disk (at start and each restart)."""
        if node.disk is not None:
            node.sync = StateSync(
                i, self.cfg.nodes, self.cfg.f, self.domain, self.identities, self.params, node.disk
            )

    def _on_state(self, i: int, node: _Node, src: int, msg: StateMessage) -> None:
        if node.sync is not None:
            reaction = node.sync.on_message(src, msg, self.world.now, node.process)
            self._perform_sync(i, node, reaction)

    def _perform_sync(self, i: int, node: _Node, reaction: Reaction) -> None:
        for peer, msg in reaction.sends:
            data = encode_state(msg)
            self.world.send(i, peer, data, decode_state(data))
        node.misbehaviour += len(reaction.reports)
        if reaction.install is not None:
            self._install(i, node, reaction.install)

    def _install(self, i: int, node: _Node, inst: Install) -> None:
        """Install a verified transfer as the daemon's store and process do: rows and
        state to the node's disk and store, then ``install_checkpoint``.

        The run's record of the node's log (what agreement and rejoin check) gets the
        installed range from a correct member's log, entry by entry where the installed
        row says the same (index, transaction index, round, source, wave, block; an
        entry without transactions has no row); an entry that differs is recorded as a
        digest no log holds, so agreement fails there."""
        assert node.disk is not None
        state = inst.state
        start = node.process.ordering.next_index
        dropped = node.process.own_dropped_by(state)
        node.disk.install(inst.certificate, state, list(inst.rows))
        node.store.apply([], state)
        rows = {r.index: r for r in inst.rows}
        committed = self._committed(start, state.next_index)
        if len(node.log) != start or committed is None:
            self.install_mismatches.append((i, start))
        else:
            for c in committed:
                row = rows.get(c.index)
                v = c.vertex
                same = (
                    row is not None
                    and (row.tx_index, row.round, row.source, row.wave, row.block)
                    == (c.tx_index, v.round, v.source, c.wave, c.packed)
                    if v.block
                    else row is None
                )
                if not same:
                    self.install_mismatches.append((i, c.index))
                digest = v.digest if same else b"installed-mismatch-%d" % c.index
                node.log.append(digest)
                self.log_sets[i].add(digest)
        node.installs += 1
        carried: list[bytes] = []
        if dropped is not None and committed is not None:
            since, until = dropped
            for c in committed:  # what the daemon reads with ``Store.proposed_by``
                if c.vertex.source == i and since < c.vertex.round <= until:
                    carried += c.vertex.block
        self.apply(i, node.process.install_checkpoint(state, carried))

    def _committed(self, first: int, stop: int) -> list[Commit] | None:
        """The log entries [first, stop) as a correct member committed them (a member
        that installed a checkpoint itself lacks the range it installed)."""
        for k in self.correct:
            log = self.nodes[k].store.log
            at = bisect.bisect_left(log, first, key=lambda c: c.index)
            part = log[at : at + stop - first]
            if len(part) == stop - first and (not part or part[-1].index == stop - 1):
                return part
        return None

    # -- effects ------------------------------------------------------------------------

    def apply(self, i: int, effects: list[Effect], replay: bool = False) -> None:
        node = self.nodes[i]
        self._record(i, node, effects, replay)
        if node.strategy is not None:
            self._apply_strategy(i, node, node.strategy, effects)
            return
        if node.sync is not None:
            for e in effects:
                if isinstance(e, CheckpointReached):
                    self._perform_sync(i, node, node.sync.on_checkpoint(e.state))
        # Recorded (the store's votes) above from the plain effects; the wire carries
        # the step's votes in one Votes frame per peer, as the daemon's flush does.
        for e in coalesce_votes(effects):
            match e:
                case Broadcast(msg):
                    data, wire = self._wire(msg)
                    self.world.broadcast(i, data, wire)
                case Send(to, msg):
                    data, wire = self._wire(msg)
                    self.world.send(i, to, data, wire)
                case AwaitBatch():
                    self._arm_timer(i, e)
                case (
                    Delivered()
                    | Proposed()
                    | Requeued()
                    | Commit()
                    | RoundAdvanced()
                    | LeaderDecided()
                    | CheckpointReached()
                    | Misbehaviour()
                ):
                    pass  # stored and counted by _record; the process keeps its mempool
                case _:
                    assert_never(e)

    def _arm_timer(self, i: int, e: AwaitBatch) -> None:
        """The shell's batch timer, as the daemon runs it (idle waits are longer)."""
        delay = self.cfg.batch_delay
        if e.idle:
            delay = max(delay, self.cfg.idle_delay)
        self.world.schedule(self.world.now + delay, "timer", i, e.round)

    def _apply_strategy(
        self, i: int, node: _Node, strategy: byzantine.Strategy, effects: list[Effect]
    ) -> None:
        """Send what the strategy makes of the effects; count how far it deviated."""
        n = self.cfg.nodes
        wanted = sum(
            n - 1 if isinstance(e, Broadcast) else 1
            for e in effects
            if isinstance(e, Broadcast | Send)
        )
        plain = 0
        for ob in strategy(i, n, effects, self.rng):
            if ob.attack:
                node.attack_frames += len(ob.to)
            else:
                plain += len(ob.to)
            for dst in ob.to:
                self.world.send(i, dst, ob.data, ob.msg)
        node.withheld_frames += max(0, wanted - plain)
        for e in effects:  # the inner process keeps its honest pace
            if isinstance(e, AwaitBatch):
                self._arm_timer(i, e)

    def _wire(self, msg: Message) -> tuple[bytes, Message]:
        """Encode once and decode once: every broadcast goes through the strict codec."""
        data = encode(msg)
        return data, self.codec.decode(data)

    def _record(self, i: int, node: _Node, effects: list[Effect], replay: bool) -> None:
        """The run's bookkeeping, then the node's store: written by the projection and
        GC rules the daemon's SQLite store uses (:mod:`dagrider.persistence`), with the
        ordering snapshot taken when the batch commits and the coin shares received
        during the step."""
        now = self.world.now
        committed = False
        for e in effects:
            match e:
                case Commit():
                    committed = True
                    if node.disk is not None:
                        node.disk.commit(e)
                    node.log.append(e.vertex.digest)
                    self.log_sets[i].add(e.vertex.digest)
                    node.tx_count += len(e.vertex.block)
                    self._on_commit(i, e, now)
                case RoundAdvanced():
                    if node.kind == "correct":
                        self.last_progress = now
                case Proposed(vertex):
                    if node.kind == "correct" and not replay:
                        self.proposed_at.setdefault(vertex.digest, (now, vertex.round, i))
                case LeaderDecided():
                    node.decided.append(e)
                    node.leaders_committed += e.committed
                case Misbehaviour():
                    node.misbehaviour += 1
                case Requeued(_, vertex):
                    if node.kind == "correct" and not replay:
                        self.orphaned.add(vertex)
                case Broadcast(msg) | Send(_, msg):
                    if node.kind == "crash":
                        self._sent(node, msg)
                case Delivered() | AwaitBatch() | CheckpointReached():
                    pass  # stored below, or performed by apply
                case _:
                    assert_never(e)
        if effects or node.shares:
            ordering = node.process.ordering_state() if committed else None
            node.store.apply(effects, ordering, node.shares)
            node.shares = []

    def _sent(self, node: _Node, msg: Message) -> None:
        """A crash node is about to send ``msg``: raise its fence (before the send, as
        the daemon writes its fence file) and note each vertex and vote it commits to;
        a second, different one for a slot is a contradiction (an equivocation)."""
        slots: list[tuple[int, int, int, Digest]] = []
        match msg:
            case Val(v):
                slots.append((0, v.round, v.source, v.digest))
            case Echo(rnd, source, d):
                slots.append((1, rnd, source, d))
            case Ready(rnd, source, d):
                slots.append((2, rnd, source, d))
            case Votes(echoes, readies):
                slots += [(1, r, s, d) for r, s, d in echoes]
                slots += [(2, r, s, d) for r, s, d in readies]
            case _:
                return  # requests, answers and coin shares commit to nothing new
        node.fence_flushes = node.store.flushes + 1  # the batch is stored after this
        for kind, rnd, source, d in slots:
            node.fence = max(node.fence, rnd)
            first = node.sent.setdefault((kind, rnd, source), d)
            if first != d:
                what = ("VAL", "ECHO", "READY")[kind]
                node.contradictions.append(
                    f"two {what}s for ({rnd}, {source}): {first.hex()[:12]}, {d.hex()[:12]}"
                )

    def _on_commit(self, i: int, e: Commit, now: float) -> None:
        d = e.vertex.digest
        self.committed_at.setdefault((i, d), now)
        origin = self.proposed_at.get(d)
        if origin is not None and origin[2] == i:
            self.vertex_latency.append(now - origin[0])
            for tx in e.vertex.block:
                submitted = self.tx_submitted.get(tx)
                if submitted is not None:
                    self.tx_latency.append(now - submitted[0])
        if self.nodes[i].kind != "correct":
            return
        bit = 1 << i
        for tx in e.vertex.block:
            if tx not in self.tx_submitted:
                continue
            before = self.tx_ordered_by.get(tx, 0)
            if before & bit:
                self.tx_duplicates += 1
                continue
            self.tx_ordered_by[tx] = after = before | bit
            if after == self.all_correct and self.tx_required is not None:
                self.tx_pending -= tx in self.tx_required

    # -- report -------------------------------------------------------------------------

    def report(self) -> SimResult:
        logs = {i: self.nodes[i].log for i in self.honest}
        correct_logs = {i: self.nodes[i].log for i in self.correct}
        evaluated = min(self.nodes[i].process.ordering.next_wave - 1 for i in self.correct)
        committed_waves = min(
            sum(1 for d in self.nodes[i].decided if d.committed and d.wave <= evaluated)
            for i in self.correct
        )
        stall = ""
        if self.stalled_at is not None:
            rounds = sorted({self.nodes[i].process.round for i in self.correct})
            stall = (
                f"stalled: no correct node entered a new round for {self.stall_ms / 1000:.0f} s "
                f"(until {self.stalled_at / 1000:.1f} s; correct nodes at rounds "
                f"{rounds[0]}..{rounds[-1]})"
            )
        faulty = {i: x.kind for i, x in enumerate(self.nodes) if x.kind != "correct"}
        byz = [(i, x) for i, x in enumerate(self.nodes) if x.strategy is not None]
        attacks = {i: x.attack_frames + x.withheld_frames for i, x in byz}
        verdicts = [
            self._agreement(logs),
            self._integrity(logs),
            self._validity(correct_logs)
            if self.goal_time is not None
            else Verdict("validity", True, "not checked: the goal was never reached (liveness)"),
            liveness(
                self.cfg.waves, evaluated, committed_waves, end_ms=self.world.now, stall=stall
            ),
            self._rejoin_verdict(),
            faults_happened(
                faulty,
                {i: x.restarts for i, x in enumerate(self.nodes) if x.kind == "crash"},
                attacks,
            ),
        ]
        best = max(self.correct, key=lambda k: len(self.nodes[k].log))
        decided = self.nodes[best].decided
        committed = [d for d in decided if d.committed]
        last_wave = max((d.wave for d in committed), default=0)
        ordered_txs = self.nodes[best].tx_count
        trace = hashlib.blake2b(digest_size=16)
        for i in sorted(logs):
            trace.update(b"".join(logs[i]))
        trace.update(struct.pack(">dQ", self.world.now, self.events))
        return SimResult(
            config=self.cfg,
            seed=self.seed,
            verdicts=verdicts,
            virtual_ms=self.world.now,
            events=self.events,
            messages=self.world.sent.messages,
            bytes=self.world.sent.bytes,
            committed_vertices=len(self.nodes[best].log),
            committed_transactions=ordered_txs,
            leaders_committed=len(committed),
            leaders_direct=sum(1 for d in committed if d.direct),
            leaders_skipped=sum(1 for d in decided if not d.committed),
            waves_per_commit=(last_wave / len(committed)) if committed else float("inf"),
            vertex_latency_ms=percentiles(self.vertex_latency),
            tx_latency_ms=percentiles(self.tx_latency),
            misbehaviour_reports=sum(self.nodes[i].misbehaviour for i in self.honest),
            restarts=self.restarts,
            node_kinds=faulty,
            trace_hash=trace.hexdigest(),
            attack_frames={i: x.attack_frames for i, x in byz},
            withheld_frames={i: x.withheld_frames for i, x in byz},
            attack_details={
                i: byzantine.detail(x.strategy)
                for i, x in byz
                if x.strategy is not None and byzantine.detail(x.strategy)
            },
            slow_node=self.slow_node,
            tx_ordered_share=self._ordered_share(self.correct),
            slow_node_tx_ordered_share=(
                None if self.slow_node is None else self._ordered_share([self.slow_node])
            ),
            catchup_asks=self._catchup_asks(),
            catchup_served=sum(x.catchup_served for x in self.nodes),
            state_sync_wanted=sum(self.nodes[i].state_sync_wanted for i in self.honest),
            state_sync_installs=sum(self.nodes[i].installs for i in self.honest),
            wal_losses=sum(x.wal_losses for x in self.nodes),
            fenced_restarts=sum(x.fenced for x in self.nodes),
            gc_floor=min(self.nodes[i].process.dag.floor for i in self.correct),
            buffered_vertices=max(
                self.nodes[i].process.status()["buffered_vertices"] for i in self.correct
            ),
        )

    def _rejoin_verdict(self) -> Verdict:
        """Every crash node is back, never contradicted what it sent before a restart
        (also when its store lost writes: the fence), and ordered what validity needs."""
        crashed = [i for i, x in enumerate(self.nodes) if x.kind == "crash"]
        if not crashed:
            return Verdict("rejoin", True, "no crash nodes")
        for i in crashed:
            said = self.nodes[i].contradictions
            if said:
                detail = f"node {i} contradicted itself after a restart: {said[0]}"
                return Verdict("rejoin", False, detail + f" ({len(said)} in all)")
        if self.goal_time is None:
            return Verdict("rejoin", True, "not checked: the goal was never reached (liveness)")
        down = [i for i in crashed if not self.world.alive[i]]
        if down:
            return Verdict("rejoin", False, f"nodes {down} still down at the end")
        v = validity(self._required_vertices(), {i: self.nodes[i].log for i in crashed})
        return Verdict("rejoin", v.ok, v.detail)

    def _agreement(self, logs: dict[int, list[Digest]]) -> Verdict:
        """Agreement, and every log a node installed from a certificate is the one the
        committee committed (see ``_install``)."""
        v = agreement(logs)
        if v.ok and self.install_mismatches:
            i, index = self.install_mismatches[0]
            detail = f"node {i} installed a log that differs from the committed one at {index}"
            return Verdict("agreement", False, detail)
        return v

    def _integrity(self, logs: dict[int, list[Digest]]) -> Verdict:
        """No vertex ordered twice, and no transaction either (a requeued orphan's
        transactions must not also come back with the orphan); and every correct node's
        DAG is whole (see ``_dag_flaw``)."""
        v = integrity(logs)
        if v.ok and self.tx_duplicates:
            detail = f"{self.tx_duplicates} transactions ordered twice by a correct node"
            return Verdict("integrity", False, detail)
        flaw = self._dag_flaw() if v.ok else None
        if flaw is not None:
            return Verdict("integrity", False, flaw)
        return v

    def _dag_flaw(self) -> str | None:
        """The first correct node whose DAG, at the end, holds a vertex without one of
        its parents above the GC floor, or whose reachability (the bitsets the commit
        rule reads) does not follow an edge, strong ones strongly; None if none does.
        Pruning renumbers the bitsets, so a long run with GC checks that too."""
        for i in self.correct:
            dag = self.nodes[i].process.dag
            for v in dag.vertices():
                for strong, edges in ((True, v.strong_edges), (False, v.weak_edges)):
                    for e in edges:
                        if e.round < dag.floor:
                            continue  # pruned: counts as present
                        parent = dag.get(e.digest) if e.digest in dag else None
                        if parent is None:
                            return (
                                f"node {i} holds ({v.round}, {v.source}) without its parent "
                                f"({e.round}, {e.source})"
                            )
                        if not dag.path(v, parent) or (strong and not dag.strong_path(v, parent)):
                            kind = "strong edge" if strong else "edge"
                            return (
                                f"node {i}: no path along the {kind} ({v.round}, {v.source}) "
                                f"-> ({e.round}, {e.source})"
                            )
        return None

    def _validity(self, logs: dict[int, list[Digest]]) -> Verdict:
        """Every correct proposal (but garbage-collected orphans) and every transaction
        submitted to a correct node by the goal is ordered by every correct node."""
        v = validity(self._required_vertices(), logs)
        if not v.ok:
            return v
        if self.tx_pending:
            return Verdict(
                "validity",
                False,
                f"{self.tx_pending} transactions submitted to correct nodes by the goal "
                "are not ordered by every correct node",
            )
        orphans = len(self.orphaned & self.required.keys())
        if orphans:
            note = f"; {orphans} garbage-collected unordered, their transactions requeued"
            return Verdict("validity", True, v.detail + note)
        return v

    def _catchup_asks(self) -> dict[str, int]:
        asks: dict[str, int] = {}
        for i in self.honest:
            for reason, count in self.nodes[i].catchup_asks.items():
                asks[reason] = asks.get(reason, 0) + count
        return dict(sorted(asks.items()))

    def _ordered_share(self, nodes: list[int]) -> float | None:
        """Share of the transactions submitted to ``nodes`` (by the goal, or by the end of
        a run that never reached it) that every correct node ordered; None if there were
        none."""
        cut = self.world.now if self.goal_time is None else self.goal_time
        wanted = set(nodes)
        total = ordered = 0
        for tx, (at, i) in self.tx_submitted.items():
            if i in wanted and at <= cut:
                total += 1
                ordered += self.tx_ordered_by.get(tx, 0) == self.all_correct
        return ordered / total if total else None


def _copy_store(store: MemoryStore) -> MemoryStore:
    """A copy of ``store`` as it is now (a backup): its tables are containers of frozen
    rows, so copying the containers is enough; later writes to either leave the other."""
    copy = object.__new__(MemoryStore)
    for name, value in vars(store).items():
        if isinstance(value, dict | list | set | deque):
            value = type(value)(value)
        setattr(copy, name, value)
    return copy


GC_THRESHOLD0 = 100_000
"""The cyclic collector's first threshold while a run lasts (CPython's default is 700).
A run allocates millions of short-lived containers (frames in flight, effects, votes)
next to a large live state; with the default, collections took about a quarter of the
CPU of an n = 31 run. Nothing in a run relies on when garbage is collected."""


def run(
    cfg: SimConfig,
    seed: int,
    progress: Callable[[float], None] | None = None,
    rng: random.Random | None = None,
) -> SimResult:
    """Simulate ``cfg`` with ``seed``. The same inputs always give the same result.

    ``rng``, if given, makes every random draw of the run (keys, faulty nodes, delays,
    schedule, attacks) instead of ``random.Random(seed)``: property tests pass one that
    hypothesis controls, so that a failing schedule shrinks. ``seed`` then only names
    the committee's domain and the result, and the result's replay command does not
    replay the run (hypothesis's failure blob does).
    """
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], GC_THRESHOLD0), *threshold[1:])
    try:
        return _Run(cfg, seed, progress, rng).run()
    finally:
        gc.set_threshold(*threshold)
