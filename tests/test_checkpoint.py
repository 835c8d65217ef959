"""Certified checkpoints and state transfer: what a lagging node may trust.

Processes in the deterministic pump emit the same checkpoint at the same place; f+1
signatures make a certificate that verifies, and fewer, forged, duplicated or foreign
ones do not; a transfer checks fetched log rows against the certificate's hash chain
and bans a peer that serves forged, reordered, truncated or padded rows, then finishes
from an honest one; a process that installs the state orders the same log as the rest.
"""

from __future__ import annotations

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
from dagrider.effects import CheckpointReached, Commit
from dagrider.ordering import OrderingState
from dagrider.params import Parameters
from dagrider.process import Process
from dagrider.statesync import LogRow, LogRows, Transfer

COMMITTEE = b"\x11" * 32
KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(4)]
PUBLIC = {i: bytes(k.verify_key) for i, k in enumerate(KEYS)}


def checkpoints_of(c: Cluster, i: int) -> list[OrderingState]:
    return [e.state for e in c.effects[i] if isinstance(e, CheckpointReached)]


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    c = Cluster(seed=11, params=Parameters(checkpoint_interval=16))
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


def transfer_for(c: Cluster, peers: list[int]) -> tuple[Transfer, list[LogRow]]:
    state = checkpoints_of(c, 0)[-1]
    cp = Checkpoint(
        COMMITTEE, state.next_index, state.next_tx_index, state.chain, state.digest(50), bytes(32)
    )
    t = Transfer(certify(cp, [0, 1]), state, 0, 0, CHAIN_GENESIS, peers)
    return t, log_rows(c, state.next_index)


def serve(t: Transfer, peer: int, rows: list[LogRow], chunk: int = 7) -> str | None:
    """Answer the transfer's requests from ``rows`` (as the store would) until done."""
    while t.request() is not None and t.request()[0] == peer:  # type: ignore[index]
        req = t.request()[1]  # type: ignore[index]
        # A Byzantine peer ignores the requested upper bound; an honest store keeps it.
        left = [r for r in rows if req.first <= r.index]
        why = t.on_rows(peer, LogRows(tuple(left[:chunk]), len(left) <= chunk))
        if why is not None or t.finished:
            return why
    return None


def test_an_honest_peer_completes_the_transfer(cluster: Cluster) -> None:
    t, rows = transfer_for(cluster, [1, 2])
    assert serve(t, 1, rows) is None and t.finished and t.rows == rows


@pytest.mark.parametrize("forgery", ["drop", "forge", "reorder", "truncate", "pad", "empty"])
def test_a_peer_serving_bad_rows_is_banned_and_another_finishes(
    cluster: Cluster, forgery: str
) -> None:
    t, rows = transfer_for(cluster, [3, 1])
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
    why = serve(t, 3, bad)
    assert why is not None and 3 in t.banned and not t.finished
    assert serve(t, 1, rows) is None and t.finished and t.rows == rows


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
    assert t.rebase(base) and t.rebased and t.position == base.index
    suffix = [r for r in rows if r.index >= base.index]
    assert serve(t, 1, suffix) is None and t.finished and t.rows == suffix
    assert state.next_index == t.target.index
