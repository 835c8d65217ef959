"""What one Byzantine member can make a correct process do or hold, and what it cannot.

Each test is one attack from the liveness review, played against real processes:
a future vertex with invented parents, unproven claims of progress, a flood of
oversize future VALs and votes, repeated vertex requests, far-future coin shares.
Memory is measured with ``tracemalloc`` on frames that go through the real decoder
(so every payload is a fresh allocation, as off the wire).
"""

from __future__ import annotations

import tracemalloc

import pytest
from dagbuilder import process_configs
from test_process import Cluster, check_logs_agree

from dagrider.codec import encode
from dagrider.coin import make_share
from dagrider.effects import Broadcast, Effect, Misbehaviour, Proposed, Send
from dagrider.messages import (
    CoinShareMsg,
    Echo,
    Ready,
    Val,
    Vertex,
    VertexRef,
    VertexRequest,
    VertexResponse,
    genesis,
)
from dagrider.params import Limits, Parameters
from dagrider.process import Process
from dagrider.rbc import ReliableBroadcast

BYZ = 3  # the attacking member in every test (n = 4, f = 1)


def fake_vertex(rnd: int, source: int, n: int = 4, block: tuple[bytes, ...] = ()) -> Vertex:
    """A well-formed vertex whose 2f+1 strong parents do not exist."""
    q = 2 * ((n - 1) // 3) + 1
    strong = tuple(VertexRef(rnd - 1, s, bytes([rnd % 251, s]) * 16) for s in range(q))
    return Vertex(rnd, source, block, strong, ())


def reasons(effects: list[Effect]) -> list[str]:
    return [e.reason for e in effects if isinstance(e, Misbehaviour)]


def echoed(effects: list[Effect]) -> bool:
    return any(isinstance(e, Broadcast) and isinstance(e.msg, Echo) for e in effects)


def running(params: Parameters | None = None, waves: int = 2) -> Cluster:
    c = Cluster(seed=3, params=params)
    c.start()
    c.run_until(c.waves_done(waves))
    return c


# -- one message must not stop the committee ------------------------------------------------


@pytest.mark.parametrize("offset", [27, 28, 100, 10_000])
def test_future_vertex_with_missing_parents_does_not_stop_the_committee(offset: int) -> None:
    c = running()
    rnd = c.procs[BYZ].round + offset
    bogus = fake_vertex(rnd, BYZ)
    for dst in range(3):
        # Every correct node gets the VAL and every vote it needs to deliver it.
        c.apply(BYZ, [Send(dst, Val(bogus))])
        for voter in range(4):
            if voter != dst:
                c.queue.append((voter, dst, Ready(bogus.round, BYZ, bogus.digest)))
    before = [c.procs[i].ordering.decided_wave for i in range(3)]
    c.run_until(c.waves_done(before[0] + 4, nodes=range(3)), max_steps=200_000)
    check_logs_agree(c, nodes=range(3))
    for i in range(3):
        p = c.procs[i]
        assert p.rbc.proven_round() <= max(q.round for q in c.procs)
        # A buffered vertex of a round we have not reached does not trigger catch-up.
        assert p.dag.lowest_missing_round(p.round) is None or offset <= 28


def test_one_member_cannot_prove_progress_but_f_plus_1_can() -> None:
    rbc = ReliableBroadcast(0, 4, 1, lookahead=10)
    rbc.current_round = 5
    rbc.on_val(BYZ, fake_vertex(10**9, BYZ))
    rbc.on_echo(BYZ, Echo(10**9, BYZ, b"\x01" * 32))
    assert rbc.proven_round() == 5  # one member's word, however loud, proves nothing
    rbc.on_echo(1, Echo(90, 2, b"\x03" * 32))  # a vote on someone else's instance: no claim
    assert rbc.proven_round() == 5
    rbc.on_ready(1, Ready(40, 1, b"\x02" * 32))  # a vote on its own instance: a claim
    assert rbc.proven_round() == 40  # 1 and 3 both at >= 40: one of them is correct


def test_broadcast_state_is_only_allocated_near_proven_progress() -> None:
    rbc = ReliableBroadcast(0, 4, 1, lookahead=10)
    rbc.current_round = 5
    rbc.on_echo(BYZ, Echo(16, 1, b"\x01" * 32))
    assert rbc.instance_count() == 0
    rbc.on_echo(BYZ, Echo(15, 1, b"\x01" * 32))
    assert rbc.instance_count() == 1
    for sender in (1, 2):
        rbc.on_ready(sender, Ready(100, sender, b"\x02" * 32))  # f+1 claims: round 100
    rbc.on_echo(BYZ, Echo(110, 1, b"\x01" * 32))
    # (2,100) and (1,110) are inside the moved window; (1,100) came before the proof.
    assert rbc.instance_count() == 3


# -- per-peer payload budget ---------------------------------------------------------------


SMALL = Limits(max_tx_bytes=64 * 1024, max_block_bytes=256 * 1024)


def test_future_vals_over_the_budget_are_refused_and_not_echoed() -> None:
    params = Parameters(limits=SMALL, peer_budget_bytes=1024 * 1024)
    p = Process(process_configs(4, params=params)[0])
    p.start()
    block = tuple(bytes([i]) * 64 * 1024 for i in range(4))  # 256 KiB
    refused = 0
    for rnd in range(2, 30):
        out = p.receive_bytes(BYZ, encode(Val(fake_vertex(rnd, BYZ, block=block))))
        if any("per-peer budget" in r for r in reasons(out)):
            refused += 1
            assert not echoed(out)
        assert p.rbc.held_bytes(BYZ) <= params.peer_budget_bytes
    assert refused >= 24  # 1 MiB holds at most four 256 KiB vertices
    assert p.rbc.refused_over_budget == refused


def test_payload_charges_are_released_when_rounds_are_pruned() -> None:
    rbc = ReliableBroadcast(0, 4, 1, lookahead=100, budget_bytes=1 << 20)
    v = fake_vertex(5, BYZ, block=(b"x" * 1000,))
    rbc.on_val(BYZ, v)
    assert rbc.held_bytes(BYZ) == v.size
    rbc.prune(6)
    assert rbc.held_bytes(BYZ) == 0


def test_oversize_block_is_refused_before_any_vote() -> None:
    params = Parameters(limits=SMALL, peer_budget_bytes=1 << 20)
    p = Process(process_configs(4, params=params)[0])
    p.start()
    block = tuple(bytes([i]) * 64 * 1024 for i in range(5))  # 320 KiB > 256 KiB
    out = p.receive_bytes(BYZ, encode(Val(fake_vertex(1, BYZ, block=block))))
    assert any("exceeds" in r for r in reasons(out)) and not echoed(out)


def test_proposals_respect_the_block_byte_limit() -> None:
    limits = Limits(max_tx_bytes=1000, max_block_bytes=2500)
    p = Process(process_configs(4, params=Parameters(limits=limits, batch_size=100))[0])
    p.submit([b"a" * 1000] * 7)
    p.start()
    c = Cluster(params=Parameters(limits=limits, batch_size=100))
    c.procs[0].submit([b"a" * 1000] * 7)
    c.start()
    c.run_until(c.waves_done(2))
    own = [v for v in c.stores[0].own if v.block]
    assert own and all(sum(map(len, v.block)) <= 2500 for v in own)


def test_memory_of_a_flood_at_the_bound_stays_within_the_budget() -> None:
    """One member floods max-size future VALs, votes for every instance in the window
    and coin shares for far waves; the process holds at most its budget plus the
    window's bookkeeping."""
    budget = 8 * 1024 * 1024
    params = Parameters(peer_budget_bytes=budget)
    cfgs = process_configs(4, params=params)
    p = Process(cfgs[0])
    p.start()
    tx = 64 * 1024
    frames = []
    for rnd in range(2, 2 + 40):
        block = tuple(bytes([rnd % 256, i % 256]) * (tx // 2) for i in range(16))  # 1 MiB
        frames.append(encode(Val(fake_vertex(rnd, BYZ, block=block))))
    share = make_share(
        cfgs[BYZ].coin_secret, cfgs[BYZ].coin_public.verification_keys[BYZ], 1, cfgs[BYZ].domain
    )
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for data in frames:
            p.receive_bytes(BYZ, data)
        for rnd in range(1, 1 + params.future_rounds + 50):
            for source in range(4):
                p.receive_bytes(BYZ, encode(Echo(rnd, source, b"\x07" * 32)))
                p.receive_bytes(BYZ, encode(Ready(rnd, source, b"\x07" * 32)))
        for wave in range(1, 2000, 7):
            forged = CoinShareMsg(
                type(share)(wave, share.signer, share.share, share.challenge, share.response)
            )
            p.receive_bytes(BYZ, encode(forged))
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del frames
    assert p.rbc.held_bytes(BYZ) <= budget
    instances = p.rbc.instance_count()
    assert instances <= 4 * (params.future_rounds + 1)
    assert len(p._coins) <= (params.future_rounds // 4) + 2
    # Payloads within the budget, plus ~1 KiB of bookkeeping per broadcast instance.
    assert held <= budget + 1024 * instances + 2 * 1024 * 1024, held


# -- requests cost the requester ------------------------------------------------------------


def responses(effects: list[Effect]) -> list[VertexResponse]:
    return [e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, VertexResponse)]


def test_a_repeated_request_is_answered_once() -> None:
    c = running()
    p = c.procs[0]
    v = next(x for x in p.dag.vertices() if x.round > 0 and x.source != 0)
    req = VertexRequest(v.round, v.source, v.digest)
    first = p.receive_bytes(BYZ, encode(req))
    assert [r.vertex for r in responses(first)] == [v]
    for _ in range(200):
        out = p.receive_bytes(BYZ, encode(req))
        assert not responses(out)
        assert any("repeated VertexRequest" in r for r in reasons(out))
    # A wave later the same request is answered again (a peer that restarted may ask
    # twice); the byte budget still bounds what that costs.
    asked_at = p.round
    c.run_until(lambda: p.round >= asked_at + 4)
    assert v.digest in p.dag
    assert [r.vertex for r in responses(p.receive_bytes(BYZ, encode(req)))] == [v]


def test_responses_to_one_peer_are_limited_by_a_byte_budget() -> None:
    limits = Limits(max_tx_bytes=64 * 1024, max_block_bytes=128 * 1024)
    params = Parameters(limits=limits, response_budget_bytes=256 * 1024, batch_size=2)
    c = Cluster(seed=5, params=params)
    for i in range(4):
        c.procs[i].submit([bytes([i, k]) * 32 * 1024 for k in range(40)])
    c.start()
    c.run_until(c.waves_done(2))
    p = c.procs[0]
    big = [x for x in p.dag.vertices() if x.size > 100 * 1024 and x.source != 0]
    assert len(big) >= 4
    sent = 0
    refused = 0
    for v in big:
        out = p.receive_bytes(BYZ, encode(VertexRequest(v.round, v.source, v.digest)))
        sent += sum(r.vertex.size for r in responses(out))
        refused += sum("response budget" in r for r in reasons(out))
    assert sent <= params.response_budget_bytes
    assert refused >= 1


# -- a store that was lost must not make a correct node equivocate -------------------------


def _round_one(n: int = 4) -> list[Vertex]:
    refs = tuple(g.ref for g in genesis(n))
    return [Vertex(1, s, (), refs, ()) for s in range(1, n)]


@pytest.mark.parametrize(("voters", "proposes"), [((1,), True), ((1, 2), False)])
def test_a_round_that_f_plus_1_peers_saw_us_propose_in_is_not_proposed_again(
    voters: tuple[int, ...], proposes: bool
) -> None:
    """A member whose store is gone (a wiped data directory, a restored backup without
    its WAL) learns from f+1 peers' votes that it proposed in round 2 before; it lets
    that round pass without a vertex instead of sending a different one. One peer's
    word (possibly a Byzantine one) suppresses nothing."""
    p = Process(process_configs(4)[0])
    p.start()  # round 1
    for voter in voters:
        p.receive(voter, Echo(2, 0, b"\x09" * 32))
    out: list[Effect] = []
    for v in _round_one():
        out += p.receive(v.source, Val(v))
        for s in range(1, 4):
            out += p.receive(s, Ready(1, v.source, v.digest))
    rounds = [e.vertex.round for e in out if isinstance(e, Proposed)]
    assert (2 in rounds) is proposes
    assert p.round >= 2
