"""The catch-up policy (dagrider.catchup): when a member asks, whom, and what it serves."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagrider.catchup import (
    Ask,
    CatchupPolicy,
    CatchupRequester,
    CatchupServer,
    Refuse,
    Serve,
    answer_from,
)
from dagrider.messages import CatchupRequest, Ready, Vertex


def _requester(n: int = 4, gc_depth: int = 10) -> CatchupRequester:
    return CatchupRequester(0, n, (n - 1) // 3, gc_depth)


def test_in_step_with_the_committee_nobody_is_asked() -> None:
    r = _requester()
    for rnd in range(1, 50):
        tick = r.tick(rnd, None, rnd + 1)
        assert tick.ask is None and not tick.seek_state_sync
    assert r.asks == 0


def test_behind_by_more_than_half_the_gc_window_asks_from_our_round() -> None:
    r = _requester(gc_depth=10)
    assert r.tick(20, None, 25).ask is None  # 5 ahead: the live window covers it
    tick = r.tick(21, None, 27)  # 6 > 10 // 2
    assert isinstance(tick.ask, Ask)
    assert tick.ask.reason == "behind"
    assert tick.ask.request == CatchupRequest(21, CatchupPolicy().chunk_rounds)
    assert not tick.seek_state_sync  # we made progress this period


def test_behind_and_getting_nowhere_seeks_a_checkpoint() -> None:
    r = _requester(gc_depth=10)
    r.tick(20, None, 100)
    tick = r.tick(20, None, 100)
    assert tick.ask is not None and tick.seek_state_sync


def test_a_missing_parent_starts_the_request_below_our_round_once_we_are_stuck() -> None:
    r = _requester()
    assert r.tick(30, 12, 30).ask is None  # progressed this period: wait
    tick = r.tick(30, 12, 30)
    assert tick.ask is not None and tick.ask.reason == "stuck"
    assert tick.ask.request.round == 12


def test_no_progress_and_nothing_missing_asks_with_exponential_backoff() -> None:
    r = _requester()
    r.tick(7, None, 7)
    asked = [r.tick(7, None, 7).ask is not None for _ in range(16)]
    # stalled periods 1..16: asks at 2, 4, 8, 16
    assert [k + 1 for k, a in enumerate(asked) if a] == [2, 4, 8, 16]


def test_one_unproven_far_round_does_not_make_us_ask() -> None:
    """The proven round (f+1 vouchers) is what the requester is given; a lone claim of
    round 2**48 never reaches it, so a node at round 5 with proven round 6 stays quiet."""
    r = _requester()
    for rnd in range(5, 40):
        assert r.tick(rnd, None, rnd + 1).ask is None


@given(st.sampled_from([4, 7, 10, 31, 64]), st.integers(1, 40))
def test_asks_go_to_f_plus_1_peers_in_rotation_covering_everyone(n: int, asks: int) -> None:
    f = (n - 1) // 3
    r = CatchupRequester(1, n, f, gc_depth=4)
    seen: set[int] = set()
    rounds = ceil_div(n - 1, f + 1)
    for k in range(asks):
        tick = r.tick(0, None, 1_000)
        assert tick.ask is not None
        peers = tick.ask.peers
        assert 1 not in peers and len(set(peers)) == len(peers) == min(f + 1, n - 1)
        seen.update(peers)
        if k + 1 >= rounds:
            assert seen == set(range(n)) - {1}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def test_the_server_answers_a_burst_then_one_per_period() -> None:
    s = CatchupServer(CatchupPolicy(period=1.0, burst=3))
    req = CatchupRequest(10, 8)
    kw = {"completed_wave": 100, "memory_floor": 500}
    assert all(isinstance(s.serve(2, req, 0.0, **kw), Serve) for _ in range(3))
    refused = s.serve(2, req, 0.1, **kw)
    assert isinstance(refused, Refuse) and "faster than one per period" in refused.reason
    assert isinstance(s.serve(3, req, 0.1, **kw), Serve)  # buckets are per peer
    assert isinstance(s.serve(2, req, 1.2, **kw), Serve)  # a token came back
    assert isinstance(s.serve(2, req, 1.3, **kw), Refuse)
    assert (s.served, s.refused) == (5, 2)


def test_a_clock_going_backwards_never_mints_tokens() -> None:
    s = CatchupServer(CatchupPolicy(period=1.0, burst=1))
    kw = {"completed_wave": 0, "memory_floor": 0}
    assert isinstance(s.serve(1, CatchupRequest(0, 1), 100.0, **kw), Serve)
    assert isinstance(s.serve(1, CatchupRequest(0, 1), 50.0, **kw), Refuse)


@given(
    st.integers(0, 10_000),
    st.integers(1, 100_000),
    st.integers(0, 3_000),
    st.integers(0, 20_000),
)
def test_an_answer_is_bounded_whatever_the_request(
    first: int, rounds: int, completed_wave: int, floor: int
) -> None:
    policy = CatchupPolicy(chunk_rounds=64)
    s = CatchupServer(policy)
    d = s.serve(
        0, CatchupRequest(first, rounds), 0.0, completed_wave=completed_wave, memory_floor=floor
    )
    assert isinstance(d, Serve)
    assert d.first == first and first < d.last <= first + 64
    assert len(d.waves) <= 64 // 4 + 1
    assert all(1 <= w <= completed_wave for w in d.waves)
    assert d.resync == (d.last >= floor)
    assert d.max_bytes == policy.max_bytes


def test_answer_from_orders_by_round_and_source_and_stops_at_the_byte_budget() -> None:
    made = [Vertex(r, s, (b"x" * 100,), (), ()) for r in range(1, 5) for s in range(4)]
    vertices = {v.digest: v for v in made}
    votes = [Ready(v.round, v.source, v.digest) for v in reversed(made)]
    votes.append(Ready(3, 9, b"\xff" * 32))  # a vote whose vertex we no longer hold
    rows = answer_from(votes, vertices, 2, 4, max_bytes=1 << 20)
    want = [(r, s) for r in (2, 3) for s in range(4)] + [(3, 9)]
    assert [(v.round, v.source) for v, _ in rows] == want
    assert rows[-1][1] is None and all(x is not None for _, x in rows[:-1])
    size = made[0].size
    cut = answer_from(votes, vertices, 1, 5, max_bytes=2 * size + 1)
    assert len(cut) == 3  # three bodies reach the budget: the answer stops there
    assert len(answer_from(votes, vertices, 1, 5, max_bytes=1)) == 1  # at least one row


def test_bad_policies_and_committees_are_refused() -> None:
    with pytest.raises(ValueError):
        CatchupPolicy(period=0)
    with pytest.raises(ValueError):
        CatchupPolicy(max_bytes=0)
    with pytest.raises(ValueError):
        CatchupRequester(4, 4, 1, 10)
    with pytest.raises(ValueError):
        CatchupRequester(0, 5, 1, 10)
