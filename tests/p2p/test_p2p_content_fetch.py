"""The download scheduler: completes whenever an honest provider remains, bans liars for
good, and never exceeds its windows or its memory budget."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.content.bitmap import Bitmap
from p2p.content.fetch import FetchConfig, FetchScheduler, Request

CS = 64 * 1024
HONEST = [bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32]
BAD = [bytes([9]) * 32, bytes([8]) * 32]


def check_invariants(s: FetchScheduler, issued: list[Request]) -> None:
    cfg = s.config
    assert s.inflight_bytes <= max(cfg.inflight_budget_bytes, CS)
    assert s.inflight_bytes == sum(min(CS, s.size - r.index * CS) for r in _outstanding(s))
    providers = s.status()["providers"]
    assert isinstance(providers, dict)
    for key, info in providers.items():
        assert info["inflight"] <= cfg.window_max, key
        assert 1 <= info["window"] <= cfg.window_max
    for r in issued:
        assert r.index not in s.have, "asked for a chunk already held"


def _outstanding(s: FetchScheduler) -> list[Request]:
    return [Request(k, i) for i, who in s._requesters.items() for k in who]


@given(
    st.integers(1, 40),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(0, 2**32),
    st.floats(0, 0.5),
    st.sampled_from([CS, 3 * CS, 100 * CS]),
    st.integers(1, 8),
)
def test_completes_with_any_honest_provider_under_random_failures(
    chunks: int,
    honest: int,
    bad: int,
    seed: int,
    fail_rate: float,
    budget: int,
    window_max: int,
) -> None:
    rng = random.Random(seed)
    size = chunks * CS - rng.randrange(CS)
    cfg = FetchConfig(
        window_initial=min(2, window_max),
        window_max=window_max,
        inflight_budget_bytes=budget,
        max_failures=3,
        backoff_initial=0.1,
        endgame_min_age=0.05,
    )
    have = Bitmap(chunks)
    for i in rng.sample(range(chunks), rng.randrange(chunks)):
        have.add(i)
    s = FetchScheduler(size, CS, have=have, config=cfg)
    good, liars = HONEST[:honest], BAD[:bad]
    providers = good + liars
    rng.shuffle(providers)
    s.add_providers(providers)
    outstanding: list[Request] = []
    banned: set[bytes] = set()
    now = 0.0
    for _step in range(5000):
        if s.done:
            break
        issued = s.next_requests(now)
        assert not {r.provider for r in issued} & banned, "a banned provider was asked again"
        outstanding += issued
        check_invariants(s, issued)
        if s.failed:  # the shell asks the DHT again: it returns the liars too
            assert s.add_providers(providers) > 0
            continue
        if not outstanding:
            wake = s.next_wakeup(now)
            assert wake is not None and wake > now, "stalled with nothing in flight"
            now = wake
            continue
        now += rng.random() * 0.05
        req = outstanding.pop(rng.randrange(len(outstanding)))
        if req.provider in liars:
            cancel = s.on_chunk(req.provider, req.index, False, now)
            banned.add(req.provider)
        elif rng.random() < fail_rate:
            s.on_failure(req.provider, req.index, now)
            cancel = []
        else:
            cancel = s.on_chunk(req.provider, req.index, True, now)
        for c in cancel:
            assert c in outstanding
            outstanding.remove(c)
        assert set(outstanding) == set(_outstanding(s))
    assert s.done, s.status()
    assert set(s.banned) == banned <= set(liars)
    assert len(s.have) == chunks


def test_resume_asks_only_for_missing_chunks() -> None:
    have = Bitmap(6)
    for i in (0, 2, 3):
        have.add(i)
    s = FetchScheduler(6 * CS, CS, have=have, config=FetchConfig(window_initial=8))
    s.add_providers(HONEST[:1])
    assert [r.index for r in s.next_requests(0)] == [1, 4, 5]
    assert s.have is not have  # the scheduler keeps its own copy


def test_work_is_spread_and_windows_bound_it() -> None:
    s = FetchScheduler(100 * CS, CS, config=FetchConfig(window_initial=3, window_max=3))
    s.add_providers(HONEST)
    reqs = s.next_requests(0)
    assert [r.index for r in reqs] == list(range(9))
    assert {r.provider for r in reqs[:3]} == set(HONEST)  # one each before any gets two
    assert s.next_requests(0) == []
    s.on_chunk(reqs[0].provider, reqs[0].index, True, 0.1)
    assert s.next_requests(0.1) == [Request(reqs[0].provider, 9)]


def test_memory_budget_bounds_bytes_in_flight() -> None:
    s = FetchScheduler(
        100 * CS, CS, config=FetchConfig(window_initial=32, inflight_budget_bytes=5 * CS)
    )
    s.add_providers(HONEST)
    assert len(s.next_requests(0)) == 5
    assert s.inflight_bytes == 5 * CS
    big = FetchScheduler(10 * CS, CS, config=FetchConfig(inflight_budget_bytes=1))
    big.add_providers(HONEST)
    assert len(big.next_requests(0)) == 1  # one request always fits


def test_bad_data_bans_and_cancels_the_providers_other_requests() -> None:
    s = FetchScheduler(10 * CS, CS, config=FetchConfig(window_initial=2))
    s.add_providers(BAD[:1] + HONEST[:1])
    reqs = s.next_requests(0)
    mine = [r for r in reqs if r.provider == BAD[0]]
    cancel = s.on_chunk(BAD[0], mine[0].index, False, 1.0)
    assert cancel == mine[1:]
    assert s.provider_status(BAD[0]) == "banned" and s.bad_chunks == 1
    s.add_providers(BAD[:1])
    assert s.provider_status(BAD[0]) == "banned"
    for _ in range(20):
        assert all(r.provider != BAD[0] for r in s.next_requests(2.0))
        for r in _outstanding(s):
            s.on_chunk(r.provider, r.index, True, 2.0)
    assert s.done


def test_failures_rest_then_drop_a_provider_and_refresh_revives_it() -> None:
    cfg = FetchConfig(window_initial=1, max_failures=2, backoff_initial=1.0)
    s = FetchScheduler(4 * CS, CS, config=cfg)
    s.add_providers(HONEST[:1])
    (r,) = s.next_requests(0)
    s.on_failure(r.provider, r.index, 0.0)
    assert s.next_requests(0.5) == []  # resting
    assert s.next_wakeup(0.5) == 1.0
    (r2,) = s.next_requests(1.0)
    assert r2.index == r.index  # the failed chunk goes back first
    s.on_failure(r2.provider, r2.index, 1.0, reason="timed out")
    assert s.failed and "timed out" in s.reason
    assert s.add_providers(HONEST[:1]) == 1
    assert not s.failed and s.next_requests(10.0)


def test_failed_reasons() -> None:
    s = FetchScheduler(CS, CS)
    assert s.failed and s.reason == "no providers"
    s.add_providers(BAD[:1])
    (r,) = s.next_requests(0)
    s.on_chunk(r.provider, r.index, False, 0)
    assert s.failed and s.reason == "every provider sent bad data"
    empty = FetchScheduler(0, CS)
    assert empty.done and not empty.failed and empty.next_requests(0) == []


def test_endgame_duplicates_only_late_requests_and_cancels_the_loser() -> None:
    cfg = FetchConfig(window_initial=4, endgame_min_age=1.0, endgame_factor=0)
    s = FetchScheduler(2 * CS, CS, config=cfg)
    s.add_providers(HONEST[:2])
    first = s.next_requests(0)
    assert sorted(r.index for r in first) == [0, 1]
    assert s.next_requests(0.5) == []  # not late yet
    assert s.next_wakeup(0.5) == 1.0
    dup = s.next_requests(1.0)
    assert len(dup) == 2 and {r.index for r in dup} == {0, 1}
    for r in dup:
        assert r not in first  # each chunk copied to the other provider
    winner = dup[0]
    cancel = s.on_chunk(winner.provider, winner.index, True, 1.1)
    assert [c.index for c in cancel] == [winner.index]
    assert cancel[0].provider != winner.provider
    assert s.on_chunk(cancel[0].provider, cancel[0].index, True, 1.2) == []  # late: ignored


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_initial": 0},
        {"window_initial": 8, "window_max": 4},
        {"inflight_budget_bytes": 0},
        {"max_failures": 0},
        {"backoff_initial": -1},
        {"endgame_copies": 0},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="FetchConfig"):
        FetchConfig(**kwargs)
