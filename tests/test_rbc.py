"""Bracha reliable broadcast driven directly: delivery, agreement under equivocation,
totality, one vote per kind, READY amplification, fetch by digest, restart, pruning."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable

import pytest
from dagbuilder import faults, make_vertex
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from dagrider.effects import Broadcast, Delivered, Effect, Misbehaviour, Send
from dagrider.messages import (
    Echo,
    Message,
    Ready,
    Val,
    Vertex,
    VertexRequest,
    VertexResponse,
    genesis,
)
from dagrider.rbc import ReliableBroadcast


def vertex(n: int, source: int, tag: bytes = b"", rnd: int = 1) -> Vertex:
    parents = genesis(n)
    strong = parents[: 2 * faults(n) + 1] if rnd == 1 else ()
    return make_vertex(rnd, source, strong, block=(b"payload" + tag,))


def votes(effects: Iterable[Effect], kind: type[Echo] | type[Ready]) -> list[Echo | Ready]:
    return [e.msg for e in effects if isinstance(e, Broadcast) and isinstance(e.msg, kind)]


def delivered(effects: Iterable[Effect]) -> list[Vertex]:
    return [e.vertex for e in effects if isinstance(e, Delivered)]


def dispatch(rbc: ReliableBroadcast, sender: int, msg: Message) -> list[Effect]:
    match msg:
        case Val(v):
            return rbc.on_val(sender, v)
        case Echo():
            return rbc.on_echo(sender, msg)
        case Ready():
            return rbc.on_ready(sender, msg)
        case VertexRequest():
            return rbc.on_request(sender, msg)
        case VertexResponse(v):
            return rbc.on_response(sender, v)
    raise AssertionError(msg)


ByzHandler = Callable[["Pump", int, int, Message], None]


class Pump:
    """Moves Broadcast/Send effects between in-memory instances in a seeded random order.

    Byzantine members have no instance: messages to them go to ``byz_handler`` (or are
    dropped), and the test injects whatever they send with :meth:`inject`.
    """

    def __init__(
        self,
        n: int,
        byzantine: Iterable[int] = (),
        seed: int = 0,
        byz_handler: ByzHandler | None = None,
    ) -> None:
        self.n = n
        self.f = faults(n)
        self.byzantine = set(byzantine)
        self.correct = [i for i in range(n) if i not in self.byzantine]
        self.rng = random.Random(seed)
        self.nodes = {i: ReliableBroadcast(i, n, self.f) for i in self.correct}
        self.queue: list[tuple[int, int, Message]] = []
        self.effects: dict[int, list[Effect]] = {i: [] for i in self.correct}
        self.byz_handler = byz_handler
        self.steps = 0

    def apply(self, src: int, effects: list[Effect]) -> None:
        self.effects[src] += effects
        for e in effects:
            if isinstance(e, Broadcast):
                self.queue += [(src, dst, e.msg) for dst in range(self.n) if dst != src]
            elif isinstance(e, Send):
                assert e.to != src, "a node never sends to itself"
                self.queue.append((src, e.to, e.msg))

    def inject(self, src: int, dst: int, msg: Message) -> None:
        self.queue.append((src, dst, msg))

    def step(self) -> None:
        i = self.rng.randrange(len(self.queue))
        self.queue[i], self.queue[-1] = self.queue[-1], self.queue[i]
        src, dst, msg = self.queue.pop()
        self.steps += 1
        if dst in self.byzantine:
            if self.byz_handler is not None:
                self.byz_handler(self, src, dst, msg)
            return
        self.apply(dst, dispatch(self.nodes[dst], src, msg))

    def run(self, max_steps: int = 200_000) -> None:
        while self.queue:
            assert self.steps < max_steps, "pump did not quiesce"
            self.step()

    def delivered(self, i: int) -> list[Vertex]:
        return delivered(self.effects[i])

    def check_one_vote_each(self) -> None:
        for i in self.correct:
            for kind in (Echo, Ready):
                keys = Counter((m.source, m.round) for m in votes(self.effects[i], kind))
                assert all(c == 1 for c in keys.values()), (i, kind, keys)


# -- normal operation ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("seed", range(3))
def test_correct_source_is_delivered_by_everyone(n: int, seed: int) -> None:
    pump = Pump(n, seed=seed)
    vs = [vertex(n, s, b"%d" % s) for s in range(n)]
    for s in range(n):
        pump.apply(s, pump.nodes[s].broadcast(vs[s]))
    pump.run()
    for i in range(n):
        got = pump.delivered(i)
        assert sorted(got, key=lambda v: v.source) == vs
        assert sum(isinstance(e, Misbehaviour) for e in pump.effects[i]) == 0
        # One READY per instance; an ECHO unless READYs won the race against the VAL
        # (then the vertex was fetched instead).
        assert len(votes(pump.effects[i], Ready)) == n
        assert len(votes(pump.effects[i], Echo)) <= n
        sends = [e.msg for e in pump.effects[i] if isinstance(e, Send)]
        assert all(isinstance(m, VertexRequest | VertexResponse) for m in sends)
    pump.check_one_vote_each()


def test_broadcast_effects_of_the_source() -> None:
    rbc = ReliableBroadcast(0, 4, 1)
    v = vertex(4, 0)
    out = rbc.broadcast(v)
    assert out == [Broadcast(Val(v)), Broadcast(Echo(1, 0, v.digest))]
    assert rbc.instance_count() == 1


def test_delivery_needs_a_quorum_of_readies() -> None:
    n, f = 7, 2
    rbc = ReliableBroadcast(6, n, f)
    v = vertex(n, 0)
    rbc.on_val(0, v)
    out: list[Effect] = []
    for sender in range(2 * f):  # 2f ECHOs from others + our own = 2f+1
        out += rbc.on_echo(sender, Echo(1, 0, v.digest))
    assert votes(out, Ready) == [Ready(1, 0, v.digest)]
    assert delivered(out) == []
    out = []
    for sender in range(2 * f - 1):  # 2f-1 others + our own = 2f READYs
        out += rbc.on_ready(sender, Ready(1, 0, v.digest))
    assert delivered(out) == []
    assert delivered(rbc.on_ready(5, Ready(1, 0, v.digest))) == [v]
    # Nothing more after delivery.
    assert delivered(rbc.on_ready(4, Ready(1, 0, v.digest))) == []
    assert rbc.on_val(0, v) == []


# -- equivocation: agreement and totality --------------------------------------------------

CHOICES = st.sampled_from([0, 0, 1, 2])  # which vertex: v1 (more often), v2 or nothing


def equivocation_run(
    n: int, byzantine: list[int], seed: int, val_split: list[int], vote_split: list[int]
) -> Pump:
    """Source ``byzantine[0]`` sends VAL(v1) or VAL(v2) (or nothing) per correct recipient;
    every Byzantine member also ECHOes and READYs per recipient as ``vote_split`` says, and
    answers catch-up requests with the wrong vertex first, then the right one."""
    source = byzantine[0]
    variants = (vertex(n, source, b"one"), vertex(n, source, b"two"))
    by_digest = {v.digest: v for v in variants}

    def byz(pump: Pump, src: int, dst: int, msg: Message) -> None:
        if isinstance(msg, VertexRequest) and msg.digest in by_digest:
            wrong = variants[0] if msg.digest == variants[1].digest else variants[1]
            pump.inject(dst, src, VertexResponse(wrong))
            pump.inject(dst, src, VertexResponse(by_digest[msg.digest]))

    pump = Pump(n, byzantine, seed, byz)
    for k, dst in enumerate(pump.correct):
        choice = val_split[k % len(val_split)]
        if choice < 2:
            pump.inject(source, dst, Val(variants[choice]))
    k = 0
    for b in byzantine:
        for dst in pump.correct:
            echo_choice = vote_split[k % len(vote_split)]
            ready_choice = vote_split[(k + 1) % len(vote_split)]
            k += 2
            if echo_choice < 2:
                pump.inject(b, dst, Echo(1, source, variants[echo_choice].digest))
            if ready_choice < 2:
                pump.inject(b, dst, Ready(1, source, variants[ready_choice].digest))
    pump.run()
    return pump


def check_agreement_and_totality(pump: Pump) -> set[bytes]:
    digests: set[bytes] = set()
    counts = []
    for i in pump.correct:
        got = pump.delivered(i)
        assert len(got) <= 1
        counts.append(len(got))
        digests |= {v.digest for v in got}
    assert len(digests) <= 1, "two correct processes delivered different vertices"
    assert len(set(counts)) == 1, f"totality violated: deliveries per node {counts}"
    pump.check_one_vote_each()
    return digests


@settings(max_examples=examples(2.4), deadline=None)
@given(
    n=st.sampled_from([4, 7]),
    seed=st.integers(0, 2**32),
    val_split=st.lists(CHOICES, min_size=1, max_size=7),
    vote_split=st.lists(CHOICES, min_size=1, max_size=14),
)
def test_equivocating_source_agreement_and_totality(
    n: int, seed: int, val_split: list[int], vote_split: list[int]
) -> None:
    byzantine = list(range(faults(n)))
    pump = equivocation_run(n, byzantine, seed, val_split, vote_split)
    check_agreement_and_totality(pump)


@pytest.mark.parametrize("n", [4, 7])
def test_equivocation_half_and_half_delivers_a_single_vertex(n: int) -> None:
    # The source sides with v1 in its own votes: the v1 side reaches an ECHO quorum.
    f = faults(n)
    correct = n - f
    split = [0] * (correct - correct // 2) + [1] * (correct // 2)
    pump = equivocation_run(n, list(range(f)), 7, split, [0])
    digests = check_agreement_and_totality(pump)
    assert len(digests) == 1
    for i in pump.correct:
        assert pump.delivered(i)[0].block == (b"payloadone",)
    # Nodes that got VAL(v2) fetched v1 by digest.
    got_v2 = pump.correct[len(pump.correct) - len(pump.correct) // 2 :]
    for i in got_v2:
        requests = [
            e for e in pump.effects[i] if isinstance(e, Send) and isinstance(e.msg, VertexRequest)
        ]
        assert requests


def test_totality_when_val_reaches_f_plus_one_correct_with_byzantine_votes() -> None:
    # n=7: the Byzantine source sends VAL to 3 of the 5 correct nodes; both Byzantine
    # members ECHO and READY it to everyone. Everybody delivers, two of them by fetching.
    pump = equivocation_run(7, [0, 1], 3, [0, 0, 0, 2, 2], [0])
    assert len(check_agreement_and_totality(pump)) == 1
    assert all(len(pump.delivered(i)) == 1 for i in pump.correct)


def test_no_delivery_when_val_reaches_too_few() -> None:
    n = 7
    pump = equivocation_run(n, [0, 1], 3, [0, 2, 2, 2, 2], [2])
    assert check_agreement_and_totality(pump) == set()
    assert all(pump.delivered(i) == [] for i in pump.correct)


# -- one vote of each kind -----------------------------------------------------------------


def test_at_most_one_echo_and_ready_under_conflicting_input() -> None:
    n, f = 4, 1
    rbc = ReliableBroadcast(3, n, f)
    v1, v2 = vertex(n, 0, b"1"), vertex(n, 0, b"2")
    out = rbc.on_val(0, v1)
    out2 = rbc.on_val(0, v2)
    assert votes(out, Echo) == [Echo(1, 0, v1.digest)]
    assert votes(out2, Echo) == []
    assert any(isinstance(e, Misbehaviour) and e.peer == 0 for e in out2)
    out = []
    # A quorum of ECHOs for v2 from others, then f+1 READYs for v1.
    for s in range(3):
        out += rbc.on_echo(s, Echo(1, 0, v2.digest))
    assert votes(out, Ready) == [Ready(1, 0, v2.digest)]
    out = []
    for s in range(3):
        out += rbc.on_ready(s, Ready(1, 0, v1.digest))
    out += rbc.on_val(0, v1)
    out += rbc.on_echo(1, Echo(1, 0, v1.digest))
    assert votes(out, Echo) == []
    assert votes(out, Ready) == []
    assert rbc.sent_votes() == [Echo(1, 0, v1.digest), Ready(1, 0, v2.digest)]


def test_conflicting_votes_from_one_peer_count_once() -> None:
    n, f = 4, 1
    rbc = ReliableBroadcast(3, n, f)
    v1, v2 = vertex(n, 0, b"1"), vertex(n, 0, b"2")
    assert rbc.on_ready(1, Ready(1, 0, v1.digest)) == []
    out = rbc.on_ready(1, Ready(1, 0, v2.digest))
    assert [type(e) for e in out] == [Misbehaviour]
    # Repeating the same vote is not misbehaviour and does not count twice.
    assert rbc.on_ready(1, Ready(1, 0, v1.digest)) == []
    assert votes(rbc.on_echo(1, Echo(1, 0, v1.digest)), Ready) == []
    assert rbc.on_echo(1, Echo(1, 0, v1.digest)) == []
    out = rbc.on_echo(1, Echo(1, 0, v2.digest))
    assert [type(e) for e in out] == [Misbehaviour]
    # f+1 = 2 distinct READYs are needed for amplification.
    assert votes(rbc.on_ready(2, Ready(1, 0, v1.digest)), Ready) == [Ready(1, 0, v1.digest)]


# -- amplification and fetching -----------------------------------------------------------


@pytest.mark.parametrize("n", [4, 7])
def test_ready_amplification_on_f_plus_one(n: int) -> None:
    f = faults(n)
    rbc = ReliableBroadcast(n - 1, n, f)
    d = vertex(n, 0).digest
    for s in range(f):
        assert rbc.on_ready(s, Ready(1, 0, d)) == []
    out = rbc.on_ready(f, Ready(1, 0, d))
    assert out[0] == Broadcast(Ready(1, 0, d))
    assert votes(out, Echo) == []  # amplification sends no ECHO
    # n=4: f+1 others plus our own READY are 2f+1, so the fetch starts at once.
    assert all(isinstance(e, Send) for e in out[1:])
    assert (len(out) > 1) == (f + 2 >= 2 * f + 1)


def test_fetch_after_quorum_of_readies_without_val() -> None:
    n, f = 4, 1
    rbc = ReliableBroadcast(3, n, f)
    good = vertex(n, 0, b"good")
    bad = vertex(n, 0, b"bad")
    assert rbc.on_echo(0, Echo(1, 0, good.digest)) == []
    assert votes(rbc.on_ready(1, Ready(1, 0, good.digest)), Ready) == []
    out = rbc.on_ready(2, Ready(1, 0, good.digest))
    # f+1 READYs: amplify; with our own that is 2f+1: delivered, payload unknown, fetch
    # from everyone who vouched for the digest.
    assert out[0] == Broadcast(Ready(1, 0, good.digest))
    req = VertexRequest(1, 0, good.digest)
    assert out[1:] == [Send(0, req), Send(1, req), Send(2, req)]
    assert delivered(out) == []
    # A response with another digest is refused and changes nothing.
    out = rbc.on_response(1, bad)
    assert len(out) == 1
    assert isinstance(out[0], Misbehaviour)
    assert out[0].peer == 1
    assert rbc.on_request(2, VertexRequest(1, 0, bad.digest)) == []
    # The right one is delivered exactly once.
    assert delivered(rbc.on_response(2, good)) == [good]
    assert rbc.on_response(0, good) == []
    # And we now serve it to others.
    assert rbc.on_request(1, req) == [Send(1, VertexResponse(good))]


def test_waiting_requests_are_answered_when_the_payload_arrives() -> None:
    n, f = 4, 1
    rbc = ReliableBroadcast(3, n, f)
    v = vertex(n, 0)
    req = VertexRequest(1, 0, v.digest)
    assert rbc.on_request(1, req) == []
    out = rbc.on_val(0, v)
    assert Send(1, VertexResponse(v)) in out
    # Answered once only.
    assert Send(1, VertexResponse(v)) not in rbc.on_echo(2, Echo(1, 0, v.digest))


def test_response_for_an_undelivered_instance_is_ignored() -> None:
    rbc = ReliableBroadcast(3, 4, 1)
    v = vertex(4, 0)
    assert rbc.on_response(1, v) == []
    rbc.on_ready(0, Ready(1, 0, v.digest))
    assert rbc.on_response(1, v) == []  # one READY: not delivered, not accepted
    assert delivered(rbc.on_ready(1, Ready(1, 0, v.digest))) == []


# -- restart, pruning, misbehaviour ---------------------------------------------------------


def test_restore_vote_prevents_a_different_vote_after_restart() -> None:
    n, f = 4, 1
    v1, v2 = vertex(n, 0, b"1"), vertex(n, 0, b"2")
    before = ReliableBroadcast(3, n, f)
    out = before.on_val(0, v1)
    out += before.on_ready(0, Ready(1, 0, v1.digest))
    out += before.on_ready(1, Ready(1, 0, v1.digest))
    sent = votes(out, Echo) + votes(out, Ready)
    assert sent == [Echo(1, 0, v1.digest), Ready(1, 0, v1.digest)]

    after = ReliableBroadcast(3, n, f)
    for m in sent:
        after.restore_vote("echo" if isinstance(m, Echo) else "ready", m.source, m.round, m.digest)
    # The source now tells the restarted node about v2, and peers echo v2.
    out = after.on_val(0, v2)
    for s in range(3):
        out += after.on_echo(s, Echo(1, 0, v2.digest))
    assert votes(out, Echo) == []
    assert votes(out, Ready) == []
    assert after.sent_votes() == sent
    # The restored READY still counts towards delivery of v1.
    out = after.on_ready(1, Ready(1, 0, v1.digest)) + after.on_ready(2, Ready(1, 0, v1.digest))
    assert delivered(out) == [] and any(isinstance(e, Send) for e in out)
    assert delivered(after.on_response(1, v1)) == [v1]


def test_restore_vote_is_idempotent() -> None:
    rbc = ReliableBroadcast(3, 4, 1)
    d1, d2 = vertex(4, 0, b"1").digest, vertex(4, 0, b"2").digest
    rbc.restore_vote("ready", 0, 1, d1)
    rbc.restore_vote("ready", 0, 1, d2)
    assert rbc.sent_votes() == [Ready(1, 0, d1)]
    # The restored READY counts for d1: two more make 2f+1 and trigger the fetch.
    assert rbc.on_ready(1, Ready(1, 0, d1)) == []
    req = VertexRequest(1, 0, d1)
    assert rbc.on_ready(2, Ready(1, 0, d1)) == [Send(1, req), Send(2, req)]


def test_restore_vote_far_above_current_round() -> None:
    n, f = 4, 1
    rnd = 10_001
    v1, v2 = vertex(n, 0, b"1", rnd=rnd), vertex(n, 0, b"2", rnd=rnd)
    rbc = ReliableBroadcast(3, n, f)  # a fresh instance after a restart: current_round 0
    rbc.restore_vote("echo", 0, rnd, v1.digest)
    rbc.current_round = rnd  # the process catches up to where it was
    assert votes(rbc.on_val(0, v2), Echo) == []


def test_mark_delivered_finishes_the_instance() -> None:
    rbc = ReliableBroadcast(3, 4, 1)
    v = vertex(4, 0)
    rbc.mark_delivered(v)
    assert rbc.on_val(0, v) == []
    for s in range(3):
        assert delivered(rbc.on_ready(s, Ready(1, 0, v.digest))) == []
    assert rbc.on_request(1, VertexRequest(1, 0, v.digest)) == [Send(1, VertexResponse(v))]


def test_prune_drops_old_instances_and_ignores_their_messages() -> None:
    n, f = 4, 1
    rbc = ReliableBroadcast(3, n, f)
    old = [vertex(n, s, rnd=r) for r in (1, 2, 3) for s in range(n)]
    for v in old:
        rbc.on_val(v.source, v)
    assert rbc.instance_count() == 12
    rbc.prune(3)
    assert rbc.instance_count() == 4
    assert {(e.round) for e in rbc.sent_votes()} == {3}
    v = vertex(n, 0, b"late", rnd=2)
    assert rbc.on_val(0, v) == []
    assert rbc.on_echo(1, Echo(2, 0, v.digest)) == []
    for s in range(3):
        assert rbc.on_ready(s, Ready(2, 0, v.digest)) == []
    assert rbc.on_request(1, VertexRequest(1, 0, old[0].digest)) == []
    assert rbc.on_response(1, old[0]) == []
    assert rbc.instance_count() == 4
    # Pruning never goes back down.
    rbc.prune(2)
    assert rbc.horizon == 3
    assert rbc.on_val(1, vertex(n, 1, b"x", rnd=2)) == []
    # Live instances still work.
    assert votes(rbc.on_val(0, vertex(n, 0, rnd=4)), Echo) != []


def test_lookahead_bounds_allocation() -> None:
    rbc = ReliableBroadcast(3, 4, 1, lookahead=5)
    far = vertex(4, 0, rnd=6)
    assert rbc.on_val(0, far) == []
    assert rbc.on_echo(1, Echo(6, 0, far.digest)) == []
    assert rbc.instance_count() == 0
    rbc.current_round = 1
    assert votes(rbc.on_val(0, far), Echo) == [Echo(6, 0, far.digest)]


def test_val_from_someone_else_is_misbehaviour() -> None:
    rbc = ReliableBroadcast(3, 4, 1)
    v = vertex(4, 0)
    out = rbc.on_val(2, v)
    assert len(out) == 1
    assert isinstance(out[0], Misbehaviour)
    assert out[0].peer == 2
    assert "source 0" in out[0].reason
    assert rbc.instance_count() == 0
    # The real source's VAL is still echoed.
    assert votes(rbc.on_val(0, v), Echo) == [Echo(1, 0, v.digest)]
