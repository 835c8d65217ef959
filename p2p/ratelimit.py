"""Token buckets and reconnection backoff: the two pieces of link timing policy.

Pure: time and randomness come in as arguments, so the tests drive them directly and
the transport stays a shell that only reads the loop clock.
"""

from __future__ import annotations

from typing import Protocol


class Uniform(Protocol):
    """The one thing backoff needs from a random source (``random.Random`` fits)."""

    def uniform(self, a: float, b: float, /) -> float: ...


class TokenBucket:
    """Admit ``rate`` units per second on average, with bursts up to ``burst`` units.

    The transport keeps one for inbound bytes and one for inbound frames per link; a
    peer that outruns either is disconnected rather than slowed, because a correct peer
    never comes close to the configured limits.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate={rate} and burst={burst} must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def consume(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if available at time ``now``; ``False`` means over the limit."""
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True


class Backoff:
    """Capped exponential backoff with jitter.

    Delay ``k`` is uniform in ``[d/2, d]`` where ``d = min(maximum, initial * 2**k)``:
    the jitter keeps a committee that lost a common peer from redialling in lockstep.
    """

    __slots__ = ("_attempt", "_rng", "initial", "maximum")

    def __init__(self, initial: float, maximum: float, rng: Uniform) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial={initial} <= maximum={maximum}")
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self._attempt = 0

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to ``maximum``."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self._attempt, 60))
        self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from ``initial`` (after a link that stayed up)."""
        self._attempt = 0
