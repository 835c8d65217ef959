"""Token buckets admit the configured rate and burst; backoff doubles, caps and jitters."""

from __future__ import annotations

import random

import pytest

from p2p.ratelimit import Backoff, TokenBucket


def test_bucket_admits_the_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(bucket.consume(1, 0.0) for _ in range(5))
    assert not bucket.consume(1, 0.0)


def test_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert bucket.consume(5, 0.0)
    assert bucket.consume(1, 0.1)
    assert not bucket.consume(1, 0.1)
    assert bucket.consume(5, 100.0)
    assert not bucket.consume(1, 100.0)


def test_bucket_ignores_time_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.consume(1, 10.0)
    assert not bucket.consume(1, 5.0)


def test_backoff_doubles_and_caps_with_jitter() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(7))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1


def test_backoff_survives_many_attempts() -> None:
    backoff = Backoff(0.1, 5.0, random.Random(1))
    for _ in range(10_000):
        assert backoff.next_delay() <= 5.0


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0, random.Random())
