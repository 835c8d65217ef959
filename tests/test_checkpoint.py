"""Certified checkpoints and state transfer: what a lagging node may trust.

Processes in the deterministic pump emit the same checkpoint at the same place; f+1
signatures make a certificate that verifies, and fewer, forged, duplicated or foreign
ones do not; a transfer checks fetched log rows against the certificate's hash chain
and bans a peer that serves forged, reordered, truncated or padded rows, then finishes
from an honest one; a process that installs the state orders the same log as the rest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import nacl.signing
import pytest
from dagbuilder import process_configs
from test_process import Cluster, check_logs_agree

from dagrider.checkpoint import (
    CHAIN_GENESIS,
    Certificate,
    CertificateError,
    Checkpoint,
    CheckpointCollector,
    chain_next,
    pack_block,
)
from dagrider.effects import (
    Broadcast,
    CheckpointReached,
    Commit,
    Effect,
    Proposed,
    Requeued,
    Send,
)
from dagrider.messages import Vertex
from dagrider.ordering import OrderingState
from dagrider.params import Parameters
from dagrider.process import Process
from dagrider.statesync import (
    CertificateOffer,
    LogRequest,
    LogRow,
    LogRows,
    OfferTaken,
    Transfer,
    take_offer,
)

COMMITTEE = b"\x11" * 32
KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(4)]
PUBLIC = {i: bytes(k.verify_key) for i, k in enumerate(KEYS)}


def checkpoints_of(c: Cluster, i: int) -> list[OrderingState]:
    return [e.state for e in c.effects[i] if isinstance(e, CheckpointReached)]


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    c = Cluster(seed=11, params=Parameters(checkpoint_interval=16, batch_size=8))
    for i in range(4):
        c.procs[i].submit([b"tx-%d-%d" % (i, k) for k in range(300)])
    c.start()
    c.run_until(c.waves_done(12))
    return c


def test_every_process_reaches_the_same_checkpoints(cluster: Cluster) -> None:
    states = [checkpoints_of(cluster, i) for i in range(4)]
    common = min(len(s) for s in states)
    assert common >= 2
    for k in range(common):
        digests = {s[k].digest(50) for s in states}
        assert len(digests) == 1
        assert len({(s[k].next_index, s[k].chain) for s in states}) == 1


def test_chain_is_the_log_of_entries_with_transactions(cluster: Cluster) -> None:
    state = checkpoints_of(cluster, 0)[-1]
    chain = CHAIN_GENESIS
    for e in cluster.logs[0]:
        if e.index >= state.next_index:
            break
        if e.vertex.block:
            v = e.vertex
            row = LogRow(e.index, e.tx_index, v.round, v.source, e.wave, pack_block(v.block))
            chain = chain_next(chain, row.entry())
    assert chain == state.chain


def certify(cp: Checkpoint, signers: list[int]) -> Certificate:
    return Certificate(cp, tuple((i, cp.sign(KEYS[i])) for i in signers))


CP = Checkpoint(COMMITTEE, 64, 200, b"\x01" * 32, b"\x02" * 32, bytes(32))


def test_f_plus_1_signatures_certify() -> None:
    certify(CP, [0, 3]).verify(COMMITTEE, PUBLIC, 1)


@pytest.mark.parametrize(
    ("cert", "why"),
    [
        (certify(CP, [2]), "1 signatures, need 2"),
        (Certificate(CP, ((0, CP.sign(KEYS[0])), (0, CP.sign(KEYS[0])))), "signed twice"),
        (Certificate(CP, ((0, CP.sign(KEYS[0])), (1, CP.sign(KEYS[2])))), "bad signature"),
        (Certificate(CP, ((0, CP.sign(KEYS[0])), (9, CP.sign(KEYS[1])))), "not a member"),
        (certify(Checkpoint(b"\x12" * 32, *list(vars(CP).values())[1:]), [0, 1]), "another"),
    ],
)
def test_certificates_that_prove_nothing_are_refused(cert: Certificate, why: str) -> None:
    with pytest.raises(CertificateError, match=why):
        cert.verify(COMMITTEE, PUBLIC, 1)


def test_collector_certifies_at_f_plus_1_and_reports_forgeries() -> None:
    col = CheckpointCollector(COMMITTEE, PUBLIC, 1, interval=64)
    col.position = 64
    assert col.add(0, CP, CP.sign(KEYS[0])) is None
    assert "bad checkpoint signature" in str(col.add(1, CP, CP.sign(KEYS[2])))
    other = Checkpoint(COMMITTEE, 64, 200, b"\x09" * 32, b"\x02" * 32, bytes(32))
    assert col.add(2, other, other.sign(KEYS[2])) is None  # a minority view: no quorum
    assert "second, different" in str(col.add(2, CP, CP.sign(KEYS[2])))
    cert = col.add(3, CP, CP.sign(KEYS[3]))
    assert isinstance(cert, Certificate) and [s for s, _ in cert.signatures] == [0, 3]
    far = Checkpoint(COMMITTEE, 10**9, 0, bytes(32), bytes(32), bytes(32))
    assert col.add(1, far, far.sign(KEYS[1])) is None and 10**9 not in col._votes


# -- transfer ---------------------------------------------------------------------------------


def log_rows(c: Cluster, until: int) -> list[LogRow]:
    return [
        LogRow(
            e.index, e.tx_index, e.vertex.round, e.vertex.source, e.wave, pack_block(e.vertex.block)
        )
        for e in c.logs[0]
        if e.index < until and e.vertex.block
    ]


def transfer_for(
    c: Cluster, peers: list[int], span: int = 16, start_chain: bytes = CHAIN_GENESIS
) -> tuple[Transfer, list[LogRow]]:
    state = checkpoints_of(c, 0)[-1]
    cp = Checkpoint(
        COMMITTEE, state.next_index, state.next_tx_index, state.chain, state.digest(50), bytes(32)
    )
    t = Transfer(certify(cp, [0, 1]), state, 0, 0, start_chain, peers, span=span)
    return t, log_rows(c, state.next_index)


def chain_before(rows: list[LogRow], first: int) -> bytes:
    chain = CHAIN_GENESIS
    for r in rows:
        if r.index < first:
            chain = chain_next(chain, r.entry())
    return chain


def serve(
    t: Transfer,
    peer: int,
    rows: list[LogRow],
    chunk: int = 7,
    chain: Callable[[int], bytes] | None = None,
    bound: bool = True,
) -> list[tuple[int, str]]:
    """Answer every request ``peer`` has from ``rows`` (as the store would), in chunks,
    until it has none left; returns the bans the answers caused."""
    bans: list[tuple[int, str]] = []
    start_of = chain or (lambda first: chain_before(rows, first))
    while True:
        mine = [r for p, r in t.requests() + t.outstanding() if p == peer]
        if not mine or t.finished:
            return bans
        req = mine[0]
        # A Byzantine peer may ignore the requested upper bound; an honest store keeps it.
        left = [r for r in rows if req.first <= r.index and (r.index < req.until or not bound)]
        done = len(left) <= chunk
        bans += t.on_rows(peer, LogRows(req.first, tuple(left[:chunk]), done, start_of(req.first)))
        if any(p == peer for p, _ in bans):
            return bans


def test_an_honest_peer_completes_the_transfer(cluster: Cluster) -> None:
    t, rows = transfer_for(cluster, [1, 2])
    assert len(t.segments) > 4
    assert serve(t, 1, rows) == [] and not t.finished  # peer 2 holds segments too
    assert serve(t, 2, rows) == [] and t.finished and t.rows == rows
    assert t.failure is None


def test_segments_go_to_several_peers_at_once(cluster: Cluster) -> None:
    t, rows = transfer_for(cluster, [1, 2, 3])
    first = t.requests()
    assert {p for p, _ in first} == {1, 2, 3}
    assert all(sum(p == q for q, _ in first) <= 2 for p in (1, 2, 3))
    assert not t.requests()  # everyone is busy
    for p in (3, 2, 1, 3, 2, 1):
        serve(t, p, rows)
    assert t.finished and t.rows == rows


@pytest.mark.parametrize("forgery", ["drop", "forge", "reorder", "truncate", "pad", "empty"])
def test_a_peer_serving_bad_rows_is_banned_and_another_finishes(
    cluster: Cluster, forgery: str
) -> None:
    t, rows = transfer_for(cluster, [3, 1], span=10_000)  # one segment: peer 3 serves it
    bad = list(rows)
    if forgery == "drop":
        del bad[len(bad) // 2]
    elif forgery == "forge":
        r = bad[2]
        bad[2] = LogRow(r.index, r.tx_index, r.round, r.source, r.wave, pack_block([b"evil"] * 3))
    elif forgery == "reorder":
        bad[1], bad[2] = bad[2], bad[1]
    elif forgery == "truncate":
        bad = bad[:-1]
    elif forgery == "pad":
        r = bad[-1]
        bad.append(LogRow(t.target.index + 5, r.tx_index + 9, r.round, r.source, r.wave, r.block))
    else:
        r = bad[0]
        bad[0] = LogRow(r.index, r.tx_index, r.round, r.source, r.wave, pack_block([]))
    bans = serve(t, 3, bad, chain=lambda first: chain_before(rows, first), bound=False)
    assert [p for p, _ in bans] == [3] and 3 in t.banned and not t.finished
    assert serve(t, 1, rows) == [] and t.finished and t.rows == rows


def test_a_liar_among_segments_loses_only_its_own(cluster: Cluster) -> None:
    """Peer 3 serves a middle segment with a forged row and a matching false chain
    claim for its start; the honest segments verify, the liar is banned, its segment
    goes to an honest peer, and what peer 3 served correctly elsewhere is kept."""
    t, rows = transfer_for(cluster, [1, 3, 2])
    first = t.requests()
    victim = next(s for s in t.segments if (3, LogRequest(s.first, s.until)) in first)
    assert victim is not t.segments[-1] and any(r.index >= victim.first for r in rows)
    forged = [
        r
        if not victim.first <= r.index < victim.until
        else LogRow(
            r.index,
            r.tx_index,
            r.round,
            r.source,
            r.wave,
            pack_block([b"evil"] * len(r.transactions())),
        )
        for r in rows
    ]
    bans: list[tuple[int, str]] = []
    for _ in range(40):
        if t.finished:
            break
        for p in (1, 2, 3):
            if p not in t.banned:
                bans += serve(t, p, forged if p == 3 else rows)
    assert [p for p, _ in bans] == [3] and "do not match the certified chain" in bans[0][1]
    assert t.finished and t.rows == rows
    kept_from_3 = [s for s in t.segments if s is not victim and s.verified]
    assert kept_from_3


def test_a_false_start_chain_is_caught_where_it_anchors(cluster: Cluster) -> None:
    t, rows = transfer_for(cluster, [3, 1], span=10_000)
    bans = serve(t, 3, rows, chain=lambda first: b"\x07" * 32)
    assert [p for p, _ in bans] == [3]
    assert serve(t, 1, rows) == [] and t.finished


def test_verified_segments_resume_an_interrupted_transfer(cluster: Cluster) -> None:
    t, rows = transfer_for(cluster, [1, 2])
    serve(t, 1, rows)  # peer 2 never answers: only part of the range is fetched
    kept = [(s.first, s.until, s.start_chain, list(s.rows)) for s in t.segments if s.complete]
    assert kept and not t.finished
    again, _ = transfer_for(cluster, [2])
    for first, until, chain, seg_rows in kept:
        assert chain is not None and again.restore(first, until, chain, seg_rows)
    asked = {r.first for _, r in again.requests() + again.outstanding()}
    assert asked and not asked & {first for first, *_ in kept}
    assert serve(again, 2, rows) == [] and again.finished and again.rows == rows
    # A kept segment that was tampered with on disk is refetched, not trusted.
    third, _ = transfer_for(cluster, [2])
    first, until, chain, seg_rows = kept[-1]
    assert chain is not None
    bad = [
        LogRow(r.index, r.tx_index, r.round, r.source, r.wave, pack_block([b"rot"]))
        for r in seg_rows
    ]
    third.restore(first, until, chain, bad)
    assert serve(third, 2, rows) == [] and third.finished and third.rows == rows


def test_a_log_that_does_not_extend_ours_fails_the_transfer(cluster: Cluster) -> None:
    t, rows = transfer_for(cluster, [1], start_chain=b"\x05" * 32)
    serve(t, 1, rows)
    assert not t.finished and t.failure is not None and "differs" in t.failure


def test_a_process_installing_a_checkpoint_orders_the_same_log() -> None:
    """Node 3 misses everything up to a checkpoint, installs its state (as a verified
    transfer would), then joins and orders the same entries as the others."""
    params = Parameters(checkpoint_interval=16, gc_depth=12)
    c = Cluster(seed=5, params=params)
    c.crash(3)
    c.start()
    c.run_until(c.waves_done(10, nodes=[0, 1, 2]))
    state = checkpoints_of(c, 0)[-1]
    fresh = Process(process_configs(4, params=params)[3])
    c.procs[3] = fresh
    c.down.discard(3)
    c.apply(3, fresh.install_checkpoint(state))
    assert fresh.ordering.next_index == state.next_index
    for peer in range(3):  # peers resend their live rounds (resync) on reconnect
        c.apply(peer, c.procs[peer].resync(3))
    target = c.procs[0].ordering.decided_wave + 4
    c.run_until(c.waves_done(target), max_steps=400_000)
    joined = [e for e in c.logs[3] if isinstance(e, Commit)]
    assert joined and joined[0].index == state.next_index
    by_index = {e.index: e.vertex.digest for e in c.logs[0]}
    assert all(by_index[e.index] == e.vertex.digest for e in joined if e.index in by_index)
    check_logs_agree(c, nodes=[0, 1, 2])


def _cut_off_after_proposing(c: Cluster, i: int, txs: list[bytes]) -> Vertex:
    """Member ``i`` takes ``txs`` into a vertex whose VAL reaches nobody, and goes down
    (what a member catching up after a restart proposes and then jumps past). Returns
    that vertex."""
    seen: list[Vertex] = []

    def cut(k: int, effects: list[Effect]) -> None:
        if k != i:
            return
        seen.extend(
            e.vertex for e in effects if isinstance(e, Proposed) and set(txs) & set(e.vertex.block)
        )
        if seen:  # from the proposal on, nothing of member i leaves
            effects[:] = [e for e in effects if not isinstance(e, (Broadcast, Send))]

    c.on_effects = cut
    c.apply(i, c.procs[i].submit(txs))
    c.run_until(lambda: bool(seen))
    c.on_effects = None
    c.crash(i)
    assert len(seen) == 1 and set(txs) <= set(seen[0].block)
    return seen[0]


def test_a_checkpoint_jump_gives_back_what_our_dropped_vertex_carried() -> None:
    """The loaded e2e run's lost batch: a member proposed a client's batch, its vertex
    was never delivered, and it then installed a checkpoint past that round. The
    dropped vertex's transactions go back to the mempool (``Requeued``) and are ordered
    exactly once everywhere; what the installed log did take from it is not requeued."""
    params = Parameters(checkpoint_interval=16, gc_depth=12)
    c = Cluster(seed=7, params=params)
    c.start()
    c.run_until(c.waves_done(2))
    txs = [b"accepted-then-cut-off-%d" % k for k in range(3)]
    lost = _cut_off_after_proposing(c, 3, txs)
    c.run_until(c.waves_done(10, nodes=[0, 1, 2]))
    state = checkpoints_of(c, 0)[-1]
    p3 = c.procs[3]
    window = p3.own_dropped_by(state)
    assert window is not None and window[0] < lost.round <= window[1]

    partial = copy.deepcopy(p3)  # had the log taken one of them: that one stays out
    out = partial.install_checkpoint(state, carried=[txs[1]])
    assert Requeued((txs[0], txs[2]), lost.digest) in out
    assert list(partial.mempool)[:2] == [txs[0], txs[2]]

    c.down.discard(3)
    c.apply(3, p3.install_checkpoint(state, carried=[]))
    assert list(p3.mempool)[:3] == txs
    for peer in range(3):  # peers resend their live rounds (resync) on reconnect
        c.apply(peer, c.procs[peer].resync(3))
    c.run_until(
        lambda: all(set(txs) <= {t for e in c.logs[k] for t in e.vertex.block} for k in range(3)),
        max_steps=400_000,
    )
    for k in range(4):
        ordered = [t for e in c.logs[k] for t in e.vertex.block if t in txs]
        assert len(ordered) == len(set(ordered)), f"node {k} ordered a transaction twice"
    check_logs_agree(c, nodes=[0, 1, 2])
    by_index = {e.index: e.vertex.digest for e in c.logs[0]}
    assert all(by_index[e.index] == e.vertex.digest for e in c.logs[3] if e.index in by_index)


def test_a_transfer_rebased_on_a_certified_base_fetches_only_the_suffix(cluster: Cluster) -> None:
    """The serving peer pruned its log: it names a certified base, and the transfer
    checks the suffix from that base's chain value instead."""
    states = checkpoints_of(cluster, 0)
    base_state, state = states[-2], states[-1]
    base = Checkpoint(
        COMMITTEE,
        base_state.next_index,
        base_state.next_tx_index,
        base_state.chain,
        base_state.digest(50),
        bytes(32),
    )
    t, rows = transfer_for(cluster, [1])
    assert not t.rebase(Checkpoint(COMMITTEE, 0, 0, bytes(32), bytes(32), bytes(32)))
    assert t.rebase(base) and t.rebased and t.start == base.index
    assert t.segments[0].first == base.index
    suffix = [r for r in rows if r.index >= base.index]
    assert serve(t, 1, suffix, chain=lambda first: chain_before(rows, first)) == []
    assert t.finished and t.rows == suffix
    assert state.next_index == t.target.index


def test_an_offer_is_checked_then_taken_only_when_it_moves_us_forward(cluster: Cluster) -> None:
    """``take_offer``, the decision both shells make: a forged certificate or a state it
    does not vouch for is a fault whatever we need; a valid one starts a transfer (the
    sender serving first) only if it is ahead of our log and past our round."""
    state = checkpoints_of(cluster, 0)[-1]
    cp = Checkpoint(
        COMMITTEE, state.next_index, state.next_tx_index, state.chain, state.digest(8), bytes(32)
    )
    fresh = Process(process_configs(4)[0])

    def take(offer: CertificateOffer, **kw: object) -> OfferTaken:
        args: dict[str, object] = dict(
            committee=COMMITTEE,
            keys=PUBLIC,
            f=1,
            gc_depth=8,  # the floor of the offered state is above round 0
            position=fresh.ordering,
            process_round=0,
            busy=False,
            peers=[1, 2, 3],
            limits=Parameters().limits,
        )
        args.update(kw)
        return take_offer(2, offer, **args)  # type: ignore[arg-type]

    good = CertificateOffer(certify(cp, [0, 1]), state)
    taken = take(good)
    assert taken.fault is None and taken.transfer is not None
    assert taken.transfer.peers == [2, 1, 3] and taken.transfer.start == 0
    assert "certificate refused" in str(take(CertificateOffer(certify(cp, [0]), state)).fault)
    other = checkpoints_of(cluster, 0)[-2]
    lie = take(CertificateOffer(certify(cp, [0, 1]), other))
    assert lie.fault == "ordering state does not match its certificate"
    assert take(good, busy=True) == OfferTaken()
    assert take(good, position=state) == OfferTaken()  # not ahead of our log
    assert take(good, process_round=state.last_leader_round) == OfferTaken()  # catch-up will do
