"""Whole processes wired by an in-memory deterministic pump: agreement, transactions,
refusal of garbage and impostors, coin-share timing, crash recovery, resync, batching."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import assert_never

import pytest
from dagbuilder import coin_keys, domain, faults, make_rounds, process_configs

from dagrider.codec import encode
from dagrider.coin import CoinShare, make_share
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
    CoinShareMsg,
    Echo,
    Message,
    Ready,
    Val,
    Vertex,
    VertexRequest,
    VertexResponse,
)
from dagrider.params import Parameters
from dagrider.persistence import GcRules, MemoryStore
from dagrider.process import Process, ProcessConfig, Recovery

TIMER = "timer"


class Cluster:
    """n processes, a queue of in-flight messages and batch timers, a seeded scheduler.

    Every message goes through the real codec (``encode`` then ``receive_bytes``).
    ``Broadcast`` goes to every other member, ``Send`` to one; ``AwaitBatch`` queues a
    timer that fires ``propose_now`` at a random later point. A crashed node loses the
    messages queued for it. Each node's store is the shared projection
    (:class:`dagrider.persistence.MemoryStore`) under its harshest rules: a GC step at
    every rise of the floor and nothing kept for catch-up (the cluster has none), so a
    restart has exactly what recovery needs and no more.
    """

    def __init__(self, n: int = 4, seed: int = 0, params: Parameters | None = None) -> None:
        self.n = n
        self.cfgs = process_configs(n, params=params)
        self.procs = [Process(c) for c in self.cfgs]
        self.rng = random.Random(seed)
        self.queue: list[tuple[int, int, Message | int]] = []
        self.effects: list[list[Effect]] = [[] for _ in range(n)]
        self.logs: list[list[Commit]] = [[] for _ in range(n)]
        rules = GcRules(self.cfgs[0].params.gc_depth, retain_rounds=0, step_rounds=1)
        self.stores = [MemoryStore(rules) for _ in range(n)]
        self.down: set[int] = set()
        self.steps = 0
        self.on_effects: Callable[[int, list[Effect]], None] | None = None

    def start(self) -> None:
        for i in range(self.n):
            self.apply(i, self.procs[i].start())

    def apply(self, i: int, effects: list[Effect], received: Sequence[CoinShare] = ()) -> None:
        """Store the batch (with the coin shares received in it), then perform it."""
        if self.on_effects is not None:
            self.on_effects(i, effects)
        self.effects[i] += effects
        committed = False
        for e in effects:
            match e:
                case Broadcast(msg):
                    self.queue += [(i, dst, msg) for dst in range(self.n) if dst != i]
                case Send(to, msg):
                    self.queue.append((i, to, msg))
                case AwaitBatch(rnd):
                    self.queue.append((i, i, rnd))
                case Commit():
                    self.logs[i].append(e)
                    committed = True
                case (
                    Delivered()
                    | Proposed()
                    | Requeued()
                    | RoundAdvanced()
                    | LeaderDecided()
                    | CheckpointReached()
                    | Misbehaviour()
                ):
                    pass  # stored below, or nothing for this cluster to do
                case _:
                    assert_never(e)
        # As a daemon would: snapshot the ordering with the batch's commits.
        ordering = self.procs[i].ordering_state() if committed else None
        self.stores[i].apply(effects, ordering, received)

    def step(self) -> None:
        k = self.rng.randrange(len(self.queue))
        self.queue[k], self.queue[-1] = self.queue[-1], self.queue[k]
        src, dst, item = self.queue.pop()
        self.steps += 1
        if dst in self.down:
            return
        p = self.procs[dst]
        if isinstance(item, int):
            self.apply(dst, p.propose_now(item))
            return
        # stored only if the process takes it (asked before it receives), as the shells do
        received = (
            [item.share]
            if isinstance(item, CoinShareMsg) and p.accepts_coin_share(src, item.share)
            else []
        )
        self.apply(dst, p.receive_bytes(src, encode(item)), received)

    def run_until(self, done: Callable[[], bool], max_steps: int = 60_000) -> None:
        start = self.steps
        while not done():
            assert self.queue, "cluster went quiet"
            assert self.steps - start < max_steps, "no progress"
            self.step()

    def waves_done(self, waves: int, nodes: Iterable[int] | None = None) -> Callable[[], bool]:
        members = list(range(self.n)) if nodes is None else list(nodes)
        return lambda: all(self.procs[i].ordering.decided_wave >= waves for i in members)

    def crash(self, i: int) -> None:
        self.down.add(i)
        self.queue = [q for q in self.queue if q[1] != i]

    def restart(self, i: int) -> Process:
        fresh = Process(self.cfgs[i])
        self.procs[i] = fresh
        self.down.discard(i)
        self.apply(i, fresh.recover(self.stores[i].recovery()))
        for peer in range(self.n):
            if peer != i:
                self.apply(peer, self.procs[peer].resync(i))
                self.apply(i, fresh.resync(peer))
        return fresh

    def digests(self, i: int) -> list[bytes]:
        return [c.vertex.digest for c in self.logs[i]]


def check_logs_agree(cluster: Cluster, nodes: Iterable[int] | None = None) -> None:
    members = list(range(cluster.n)) if nodes is None else list(nodes)
    logs = [cluster.digests(i) for i in members]
    for log, i in zip(logs, members, strict=True):
        assert len(set(log)) == len(log), f"node {i} ordered a vertex twice"
        assert [c.index for c in cluster.logs[i]] == list(range(len(log)))
    longest = max(logs, key=len)
    for log in logs:
        assert log == longest[: len(log)], "logs are not prefixes of one another"
    # Up to the wave every member has decided, the logs are equal, not just prefixes.
    decided = min(cluster.procs[i].ordering.decided_wave for i in members)
    settled = [[x.vertex.digest for x in cluster.logs[i] if x.wave <= decided] for i in members]
    assert all(log == settled[0] for log in settled)
    assert decided == 0 or settled[0]


# -- agreement --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "seed"), [(4, 0), (4, 1), (4, 2), (7, 0)])
def test_all_processes_commit_the_same_log(n: int, seed: int) -> None:
    c = Cluster(n=n, seed=seed)
    c.start()
    c.run_until(c.waves_done(5 if n == 4 else 3))
    check_logs_agree(c)
    assert min(len(log) for log in c.logs) >= 4 * (2 * faults(n) + 1) + 1
    # tx indices agree as well
    for i in range(1, c.n):
        m = min(len(c.logs[0]), len(c.logs[i]))
        assert [x.tx_index for x in c.logs[i][:m]] == [x.tx_index for x in c.logs[0][:m]]
        assert [x.leader for x in c.logs[i][:m]] == [x.leader for x in c.logs[0][:m]]
    assert not any(isinstance(e, Misbehaviour) for effs in c.effects for e in effs)


def test_submitted_transactions_appear_once_in_every_log() -> None:
    c = Cluster(seed=4)
    txs = [b"client-tx-%d" % k for k in range(25)]
    assert c.procs[1].submit(txs[:10]) == []
    c.start()
    c.run_until(lambda: c.procs[1].round >= 3)
    c.apply(1, c.procs[1].submit(txs[10:]))

    def all_ordered() -> bool:
        return all(set(txs) <= {tx for x in c.logs[i] for tx in x.vertex.block} for i in range(c.n))

    c.run_until(all_ordered)
    check_logs_agree(c)
    positions = []
    for i in range(c.n):
        flat = [tx for x in c.logs[i] for tx in x.vertex.block]
        assert all(flat.count(tx) == 1 for tx in txs)
        positions.append([flat.index(tx) for tx in txs])
        # tx_index is the log position of a vertex's first transaction
        for x in c.logs[i]:
            if x.vertex.block:
                assert flat[x.tx_index] == x.vertex.block[0]
    assert all(p == positions[0] for p in positions)
    assert positions[0] == sorted(positions[0])  # one node's transactions keep their order


# -- refusing garbage and impostors --------------------------------------------------------


GARBAGE = [
    b"",
    b"\xc1",
    b"\x00" * 100,
    b"\x91" * 50_000,
    encode(Echo(1, 1, b"\x00" * 32)) + b"!",
    encode(Echo(1, 1, b"\x00" * 32))[:-1],
    bytes(range(256)),
]


def running_cluster() -> Cluster:
    c = Cluster(seed=9)
    c.start()
    c.run_until(lambda: c.procs[0].round >= 6)
    return c


def snapshot(p: Process) -> tuple[dict[str, int], int, int, int]:
    return (p.status(), p.rbc.instance_count(), len(p.dag), p.completed_wave)


def test_garbage_bytes_are_reported_and_change_nothing() -> None:
    p = running_cluster().procs[0]
    before = snapshot(p)
    for data in GARBAGE:
        out = p.receive_bytes(2, data)
        assert len(out) == 1
        assert isinstance(out[0], Misbehaviour)
        assert out[0].peer == 2
        assert "undecodable" in out[0].reason
        assert snapshot(p) == before


def test_structurally_invalid_vertex_is_refused_before_any_vote() -> None:
    c = running_cluster()
    p = c.procs[0]
    before = snapshot(p)
    dag_round = [v.ref for v in p.dag.by_round[2].values()]
    bad = [
        Vertex(3, 2, (), tuple(dag_round[:2]), ()),  # too few strong edges
        Vertex(4, 2, (), tuple(dag_round[:3]), ()),  # strong edges to the wrong round
        Vertex(3, 2, (), tuple(dag_round[:3]), (dag_round[3],)),  # weak edge to r-1
    ]
    for v in bad:
        out = p.receive_bytes(2, encode(Val(v)))
        assert len(out) == 1 and isinstance(out[0], Misbehaviour), out
        assert "invalid vertex" in out[0].reason
    assert snapshot(p) == before


@pytest.mark.parametrize("sender", [0, 4, 5, -1, 100])
def test_message_from_self_or_outside_the_committee_is_refused(sender: int) -> None:
    c = running_cluster()
    p = c.procs[0]
    own = p._own[p.round]
    before = snapshot(p)
    msgs: list[Message] = [
        Val(own),
        Echo(own.round, own.source, own.digest),
        Ready(own.round, own.source, own.digest),
        VertexRequest(own.round, own.source, own.digest),
        VertexResponse(own),
    ]
    for msg in msgs:
        for out in (p.receive(sender, msg), p.receive_bytes(sender, encode(msg))):
            assert len(out) == 1
            assert isinstance(out[0], Misbehaviour)
            assert out[0].peer == sender
    assert snapshot(p) == before


def test_coin_share_signed_by_someone_else_is_refused() -> None:
    pub, secrets = coin_keys(4)
    share = make_share(secrets[2], pub.verification_keys[2], 1, domain())
    p = Process(process_configs(4)[0])
    out = p.receive(1, CoinShareMsg(share))
    assert len(out) == 1 and isinstance(out[0], Misbehaviour)
    assert out[0].peer == 1
    assert p._coins == {}


# -- the coin share is released only after round 4w ----------------------------------------


def deliver(p: Process, v: Vertex, voters: Iterable[int]) -> list[Effect]:
    """Make ``p`` deliver ``v``: its VAL from the source (unless it is p's own) and READYs
    from ``voters``."""
    out: list[Effect] = []
    if v.source != p.me:
        out += p.receive(v.source, Val(v))
    for s in voters:
        out += p.receive(s, Ready(v.round, v.source, v.digest))
    return out


def shares(effects: Iterable[Effect]) -> list[CoinShare]:
    return [
        e.msg.share
        for e in effects
        if isinstance(e, Broadcast | Send) and isinstance(e.msg, CoinShareMsg)
    ]


def test_coin_share_waits_for_round_four_even_when_the_coin_is_known() -> None:
    n = 4
    p = Process(process_configs(n)[0])
    pub, secrets = coin_keys(n)
    out = p.start()
    # Others build on each other only, so p's own vertices are not needed.
    rounds = make_rounds(n, 1, 4, missing={(r, 0) for r in range(1, 5)})
    # Peers' wave-1 shares arrive early: the coin is known before p finishes round 4.
    for signer in (1, 2):
        share = make_share(secrets[signer], pub.verification_keys[signer], 1, domain())
        out += p.receive(signer, CoinShareMsg(share))
    assert p.ordering.leaders.get(1) is not None
    for r in range(3):
        for v in rounds[r]:
            out += deliver(p, v, [1, 2])
    assert p.round == 4
    out += deliver(p, rounds[3][0], [1, 2])
    out += deliver(p, rounds[3][1], [1, 2])
    assert p.dag.round_size(4) == 2
    assert shares(out) == []
    assert p.completed_wave == 0
    assert not any(isinstance(e, Commit) for e in out)
    assert shares(p.resync(1)) == []
    # The third round-4 vertex completes the round: share, then round 5.
    more = deliver(p, rounds[3][2], [1, 2])
    released = shares(more)
    assert released == [make_share(secrets[0], pub.verification_keys[0], 1, domain())]
    at = more.index(Broadcast(CoinShareMsg(released[0])))
    assert RoundAdvanced(5) in more[at:]
    assert RoundAdvanced(5) not in more[:at]
    assert p.completed_wave == 1
    assert [s.wave for s in shares(p.resync(1))] == [1]


def test_coin_shares_follow_round_completion_in_a_cluster() -> None:
    c = Cluster(seed=5)
    quorum = 3
    released: list[tuple[int, int]] = []

    def check(i: int, effects: list[Effect]) -> None:
        p = c.procs[i]
        proposed = {e.vertex.round for e in c.effects[i] if isinstance(e, Proposed)}
        for k, e in enumerate(effects):
            if isinstance(e, Proposed):
                proposed.add(e.vertex.round)
            for s in shares([e]):
                assert s.signer == i
                if (i, s.wave) not in released:
                    released.append((i, s.wave))
                    assert isinstance(e, Broadcast)
                    assert 4 * s.wave in proposed, "share before reaching round 4w"
                    # ... and before moving on to the next wave.
                    nxt = RoundAdvanced(4 * s.wave + 1)
                    assert nxt in effects[k + 1 :]
                    assert nxt not in effects[:k] and nxt not in c.effects[i]
                assert p.dag.round_size(4 * s.wave) >= quorum
                assert p.completed_wave >= s.wave

    c.on_effects = check
    c.start()
    c.run_until(c.waves_done(4))
    assert {w for _, w in released} >= {1, 2, 3, 4}


# -- crash and recovery ------------------------------------------------------------------


def votes_of(effects: Iterable[Effect]) -> list[Echo | Ready]:
    out: list[Echo | Ready] = []
    for e in effects:
        if isinstance(e, Broadcast | Send) and isinstance(e.msg, Echo | Ready):
            out.append(e.msg)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recovered_process_keeps_its_promises_and_its_log(seed: int) -> None:
    c = Cluster(seed=seed)
    c.start()
    victim = 3
    store = c.stores[victim]
    c.run_until(c.waves_done(2, [victim]))

    def pending_echo() -> Echo | None:
        """An ECHO the victim sent for a vertex of node 0 it has not delivered yet."""
        done = {(v.source, v.round) for v in store.delivered}
        pending = [
            m
            for m in store.votes
            if isinstance(m, Echo) and m.source == 0 and (m.source, m.round) not in done
        ]
        return pending[-1] if pending else None

    c.run_until(lambda: pending_echo() is not None)
    echo = pending_echo()
    assert echo is not None
    pre_effects = list(c.effects[victim])
    pre_log = c.digests(victim)
    pre_own = {v.round: v.digest for v in store.own}
    committed = store.committed
    assert committed == len(pre_log) > 0
    c.crash(victim)
    others = [i for i in range(c.n) if i != victim]
    target = max(c.procs[i].ordering.decided_wave for i in others) + 1
    c.run_until(c.waves_done(target, others))

    post_start = len(c.effects[victim])
    fresh = c.restart(victim)
    # Node 0 now equivocates towards the restarted node: a different vertex for the
    # instance it had echoed. A node that forgot its ECHO would echo this one.
    genuine = next(v for v in c.stores[0].own if v.round == echo.round)
    assert genuine.digest == echo.digest
    evil = Vertex(genuine.round, 0, (b"evil",), genuine.strong_edges, genuine.weak_edges)
    c.apply(victim, fresh.receive(0, Val(evil)))
    c.run_until(c.waves_done(target + 3))
    post_effects = c.effects[victim][post_start:]

    # 1. Never a vote that conflicts with one sent before the crash (or after it).
    sent: dict[tuple[type, int, int], set[bytes]] = defaultdict(set)
    for m in votes_of(pre_effects + post_effects):
        sent[(type(m), m.source, m.round)].add(m.digest)
    assert all(len(d) == 1 for d in sent.values()), {k: v for k, v in sent.items() if len(v) > 1}
    assert evil.digest not in {m.digest for m in votes_of(post_effects)}

    # 2. Its own vertices are re-used, not re-created.
    reproposed = [e.vertex for e in post_effects if isinstance(e, Proposed)]
    reused = [v for v in reproposed if v.round in pre_own]
    assert len(reused) == len(pre_own), "recovery did not walk through its old rounds"
    assert all(v.digest == pre_own[v.round] for v in reused)
    vals = [
        e.msg.vertex
        for e in post_effects
        if isinstance(e, Broadcast) and isinstance(e.msg, Val) and e.msg.vertex.round in pre_own
    ]
    assert all(v.digest == pre_own[v.round] for v in vals)
    assert max(v.round for v in reproposed) > max(pre_own), "it also moved on"

    # 3. Commits already applied are not emitted again; the log continues seamlessly.
    post_commits = [e for e in post_effects if isinstance(e, Commit)]
    assert post_commits[0].index == committed
    assert c.digests(victim)[: len(pre_log)] == pre_log
    check_logs_agree(c)
    assert fresh.ordering.decided_wave >= target + 3
    # Peers hold the very vertices the victim proposed before the crash.
    assert all(
        v.digest == pre_own[v.round]
        for i in others
        for v in c.procs[i].dag.vertices()
        if v.source == victim and v.round in pre_own
    )


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_recovery_from_a_garbage_collected_store(seed: int) -> None:
    gc = 8
    c = Cluster(seed=seed, params=Parameters(gc_depth=gc))
    c.start()
    victim = 3
    c.run_until(c.waves_done(6, [victim]))
    for _ in range(seed * 7 % 60):
        c.step()
    store = c.stores[victim]
    assert store.ordering is not None
    floor = c.procs[victim].ordering.floor()
    assert floor > 0
    assert min(v.round for v in store.delivered) >= floor  # the store really was GC'd
    pre_effects = list(c.effects[victim])
    pre_log = c.digests(victim)
    pre_own = {e.vertex.round: e.vertex.digest for e in pre_effects if isinstance(e, Proposed)}
    c.crash(victim)
    for _ in range(seed * 13 % 120):
        c.step()

    post_start = len(c.effects[victim])
    fresh = c.restart(victim)
    assert fresh.ordering.next_index == len(pre_log)
    assert fresh.round == max(pre_own)
    c.run_until(c.waves_done(c.procs[0].ordering.decided_wave + 4))
    post_effects = c.effects[victim][post_start:]

    sent: dict[tuple[type, int, int], set[bytes]] = defaultdict(set)
    for m in votes_of(pre_effects + post_effects):
        sent[(type(m), m.source, m.round)].add(m.digest)
    assert all(len(d) == 1 for d in sent.values())
    for e in post_effects:
        if isinstance(e, Proposed):
            assert e.vertex.round > max(pre_own), "a round it had proposed in was re-proposed"
        if isinstance(e, Broadcast) and isinstance(e.msg, Val) and e.msg.vertex.round in pre_own:
            assert e.msg.vertex.digest == pre_own[e.msg.vertex.round]
    post_commits = [e for e in post_effects if isinstance(e, Commit)]
    assert post_commits[0].index == len(pre_log)
    assert c.digests(victim)[: len(pre_log)] == pre_log
    check_logs_agree(c)


def test_recovery_alone_rebuilds_the_same_state() -> None:
    c = Cluster(seed=6)
    c.start()
    c.run_until(c.waves_done(3))
    old = c.procs[2]
    fresh = Process(c.cfgs[2])
    out = fresh.recover(c.stores[2].recovery())
    assert not any(isinstance(e, Delivered) for e in out)
    assert not any(isinstance(e, Commit) for e in out)  # all were applied already
    assert fresh.round == old.round
    assert fresh.ordering.decided_wave == old.ordering.decided_wave
    assert fresh.ordering.next_index == old.ordering.next_index
    assert {v.digest for v in fresh.dag.vertices()} == {v.digest for v in old.dag.vertices()}
    assert fresh.dag.buffered() == old.dag.buffered()
    assert fresh._own == old._own
    assert fresh.rbc.sent_votes() == old.rbc.sent_votes()
    assert fresh.status() == old.status()
    # Replaying with a smaller committed count re-emits exactly the missing commits.
    store = c.stores[2]
    partial = Recovery(store.delivered, store.votes, store.own, store.coin_shares, 5)
    again = [e for e in Process(c.cfgs[2]).recover(partial) if isinstance(e, Commit)]
    assert [e.vertex.digest for e in again] == c.digests(2)[5:]
    assert [e.index for e in again] == list(range(5, len(c.logs[2])))


def test_recover_keeps_votes_of_high_rounds() -> None:
    d = b"\x07" * 32
    p = Process(process_configs(4)[2])
    p.recover(Recovery(votes=[Echo(10_500, 1, d), Ready(10_500, 1, d)]))
    restored = [v for v in p.rbc.sent_votes() if v.source != p.me]  # not its new round 1
    assert restored == [Echo(10_500, 1, d), Ready(10_500, 1, d)]


def test_recover_keeps_votes() -> None:
    d = b"\x07" * 32
    p = Process(process_configs(4)[2])
    p.recover(Recovery(votes=[Echo(3, 1, d), Ready(3, 1, d), Echo(4, 0, d)]))
    restored = [v for v in p.rbc.sent_votes() if v.source != p.me]  # not its new round 1
    assert restored == [Echo(3, 1, d), Ready(3, 1, d), Echo(4, 0, d)]
    # A VAL for the instance it echoed gets no second ECHO.
    genuine = make_rounds(4, 1, 3)[2][1]
    other = Vertex(3, 1, (b"other",), genuine.strong_edges, ())
    assert not [m for m in votes_of(p.receive(1, Val(other))) if isinstance(m, Echo)]


def test_resync_resends_own_vals_votes_and_released_shares() -> None:
    c = running_cluster()
    p = c.procs[1]
    out = p.resync(3)
    assert all(isinstance(e, Send) and e.to == 3 for e in out)
    msgs = [e.msg for e in out if isinstance(e, Send)]
    vals = [m.vertex for m in msgs if isinstance(m, Val)]
    assert vals == [p._own[r] for r in sorted(p._own)]
    assert [v.round for v in vals] == list(range(1, p.round + 1))
    assert [m for m in msgs if isinstance(m, Echo | Ready)] == p.rbc.sent_votes()
    mine = votes_of(c.effects[1])
    assert sorted(map(repr, p.rbc.sent_votes())) == sorted(map(repr, mine))
    share_waves = [m.share.wave for m in msgs if isinstance(m, CoinShareMsg)]
    assert share_waves == list(range(1, p.completed_wave + 1))
    assert p.completed_wave >= 1


# -- batching --------------------------------------------------------------------------------


def batching(batch: int) -> ProcessConfig:
    return process_configs(4, params=Parameters(propose_empty=False, batch_size=batch))[0]


def proposed(effects: Iterable[Effect]) -> list[Vertex]:
    return [e.vertex for e in effects if isinstance(e, Proposed)]


def test_await_batch_then_submit_fills_it() -> None:
    p = Process(batching(3))
    assert p.start() == [RoundAdvanced(1), AwaitBatch(1, idle=True)]
    assert p.round == 0
    # Work arrived during an idle wait: the shell is told to use its batch timer now.
    assert p.submit([b"a", b"b"]) == [AwaitBatch(1)]
    assert p.status()["mempool"] == 2
    out = p.submit([b"c", b"d"])
    [v] = proposed(out)
    assert v.round == 1 and v.block == (b"a", b"b", b"c")
    assert Broadcast(Val(v)) in out
    assert p.round == 1
    assert p.status()["mempool"] == 1
    # The timer firing afterwards does nothing.
    assert p.propose_now(1) == []
    assert p.propose_now(2) == []


def test_idle_wait_is_flagged_only_with_an_empty_mempool() -> None:
    p = Process(batching(3))
    p.submit([b"x"])
    assert p.start() == [RoundAdvanced(1), AwaitBatch(1, idle=False)]
    assert p.submit([b"y"]) == []  # already on the batch timer: nothing new to arm


def test_work_anywhere_in_the_committee_ends_an_idle_wait() -> None:
    """An idle committee rests (every wait is idle); a transaction submitted to one
    member puts every member on the batch timer until it is ordered, then they rest."""
    c = Cluster(seed=4, params=Parameters(propose_empty=False, batch_size=10))
    c.start()
    c.run_until(c.waves_done(2))
    waits = [e for e in c.effects[0] if isinstance(e, AwaitBatch)]
    assert waits and all(w.idle for w in waits)
    mark = len(c.effects[0])
    c.apply(1, c.procs[1].submit([b"work"]))
    c.run_until(lambda: any(x.vertex.block for x in c.logs[0]))
    assert any(isinstance(e, AwaitBatch) and not e.idle for e in c.effects[0][mark:])
    c.run_until(c.waves_done(c.procs[0].ordering.decided_wave + 2))
    assert not c.procs[0]._work
    last = [e for e in c.effects[0] if isinstance(e, AwaitBatch)][-1]
    assert last.idle


def test_timer_proposes_a_partial_batch() -> None:
    p = Process(batching(3))
    p.start()
    assert p.submit([b"x"]) == [AwaitBatch(1)]
    assert p.propose_now(2) == []  # not the round we wait for
    assert p.propose_now(0) == []
    [v] = proposed(p.propose_now(1))
    assert v.block == (b"x",)
    assert p.propose_now(1) == []
    # Empty batch on a second node.
    q = Process(process_configs(4, params=Parameters(propose_empty=False, batch_size=3))[1])
    q.start()
    [w] = proposed(q.propose_now(1))
    assert w.block == ()


def test_full_mempool_proposes_without_waiting() -> None:
    p = Process(batching(2))
    assert p.submit([b"1", b"2", b"3", b"4", b"5"]) == []
    out = p.start()
    assert not any(isinstance(e, AwaitBatch) for e in out)
    [v] = proposed(out)
    assert v.block == (b"1", b"2")
    assert p.status()["mempool"] == 3
    assert p.start() == []


def test_oversize_transaction_is_refused() -> None:
    limits = Parameters().limits
    p = Process(process_configs(4)[0])
    with pytest.raises(ValueError, match="exceeds"):
        p.submit([b"x" * (limits.max_tx_bytes + 1)])
    assert p.status()["mempool"] == 0


def test_batching_cluster_orders_every_transaction_once() -> None:
    c = Cluster(seed=8, params=Parameters(propose_empty=False, batch_size=2))
    c.start()
    assert all(isinstance(e, AwaitBatch) for effs in c.effects for e in effs[1:])
    txs = {i: [b"n%d-t%d" % (i, k) for k in range(7)] for i in range(c.n)}
    for i in range(c.n):
        c.apply(i, c.procs[i].submit(txs[i][:3]))
    c.run_until(lambda: min(p.round for p in c.procs) >= 5)
    for i in range(c.n):
        c.apply(i, c.procs[i].submit(txs[i][3:]))
    wanted = {tx for t in txs.values() for tx in t}

    def done() -> bool:
        return all(wanted <= {tx for x in c.logs[i] for tx in x.vertex.block} for i in range(c.n))

    c.run_until(done)
    check_logs_agree(c)
    for i in range(c.n):
        flat = [tx for x in c.logs[i] for tx in x.vertex.block]
        assert len(flat) == len(set(flat))
        assert all(len(x.vertex.block) <= 2 for x in c.logs[i])
    assert any(isinstance(e, AwaitBatch) for effs in c.effects for e in effs)


def test_a_fenced_process_is_silent_in_the_rounds_its_store_lost() -> None:
    """After its store lost what it sent up to round 6 (the shell's fence file is ahead
    of the store), a process proposes no vertex and casts no vote in rounds <= 6, then
    takes part as usual; the committee orders on without it meanwhile."""
    c = Cluster(seed=3)
    c.procs[3].fence(6)
    for i in range(4):
        c.procs[i].submit([b"tx-%d-%d" % (i, k) for k in range(40)])
    c.start()
    c.run_until(c.waves_done(4))
    mine = c.effects[3]
    proposed = [e.vertex.round for e in mine if isinstance(e, Proposed)]
    votes = [
        e.msg.round
        for e in mine
        if isinstance(e, Broadcast | Send) and isinstance(e.msg, Echo | Ready)
    ]
    assert proposed and min(proposed) == 7
    assert votes and min(votes) == 7
    check_logs_agree(c)
    # Without the fence the same process proposes from round 1: the test can fail.
    free = Cluster(seed=3)
    free.start()
    assert any(isinstance(e, Proposed) and e.vertex.round == 1 for e in free.effects[3])


def test_a_second_vertex_for_a_delivered_round_is_reported() -> None:
    """A member that proposes twice for one round (e.g. its store lost the first) is
    reported by every peer that delivered the first; the delivered one stays."""
    c = Cluster(seed=4)
    c.start()
    c.run_until(c.waves_done(1))
    first = next(e.vertex for e in c.effects[3] if isinstance(e, Proposed) and e.vertex.round == 1)
    second = Vertex(1, 3, (b"a different block",), first.strong_edges, first.weak_edges)
    assert second.digest != first.digest
    out = c.procs[0].receive(3, Val(second))
    reports = [e.reason for e in out if isinstance(e, Misbehaviour) and e.peer == 3]
    assert reports and "conflicting proposals for round 1" in reports[0]
    assert not any(isinstance(e, Broadcast) for e in out)  # no vote for the second one


def test_a_restart_past_the_floor_puts_its_own_share_into_undecided_coins() -> None:
    """Regression (a loaded e2e run, ``test_each_node_killed_and_restarted_in_turn``):
    a member killed after completing a wave but before its coin formed restarts with a
    GC floor above 0, at its last proposal, without walking through the waves. Its own
    share of that wave was missing from the coin; peers resend theirs only for waves at
    or above their own floor, so with f peer shares stored the coin never formed and
    the member stopped ordering while its rounds went on."""
    c = Cluster(seed=5, params=Parameters(gc_depth=8))
    c.start()
    p = c.procs[1]
    c.run_until(lambda: p.ordering.floor() > 0 and p.completed_wave >= p.ordering.next_wave)
    state = c.stores[1].recovery()
    assert state.ordering is not None
    waiting = state.ordering.next_wave
    # What the store holds of that wave's coin: f = 1 peer share, ours is derived.
    shares = [c.procs[0].own_share(waiting)]
    fresh = Process(c.cfgs[1])
    fresh.recover(dataclasses.replace(state, coin_shares=shares))
    assert fresh.completed_wave >= waiting
    assert fresh.ordering.next_wave > waiting or fresh._coin(waiting).value is not None
