"""Simulator schedules drawn by hypothesis, so that a failing run shrinks.

A simulated run takes every random decision (keys, faulty nodes, start, crash and
partition times, each message's delay, the adversary's reordering, the attacks) from
one ``random.Random``. :func:`sim.runner.run` accepts one instead of a seed; the
property tests pass a :class:`DrawnSchedule`, whose draws hypothesis makes and can
shrink: a failure is reported as the simplest schedule (and configuration) that still
fails, not as an unrelated seed.

Hypothesis bounds the choices of one example (about 900 floats: ``BUFFER_SIZE`` in
``hypothesis.internal.conjecture.engine``), and a small run draws 2,500 to 50,000
times, so only the first ``budget`` draws are hypothesis's: the fault schedule (which
nodes are faulty, when they crash and for how long, when partitions start, who is cut
off) and the first few hundred message delays, which decide the first rounds. The rest
comes from a PRNG seeded with a value hypothesis also draws (and shrinks). Key
material and forged bytes (``randbytes``) come from that PRNG too: shrinking them
towards zero bytes gives degenerate keys, not a simpler schedule.

Replaying a failure: the falsifying example hypothesis prints names the configuration
and the tail seed, not the drawn prefix, so ``dagrider sim --seed`` does not replay it.
Hypothesis does: the ``ci`` profile is derandomized (the same examples on every run),
the other profiles keep failures in the local example database (``.hypothesis/``) and
replay them first, and ``print_blob`` prints ``@reproduce_failure(...)``, a decorator to
put on the test to replay that exact example anywhere.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

SCHEDULE_DRAWS = 256
"""Draws per run that hypothesis makes: at most 256 x 9 bytes of hypothesis's 8 KiB
example buffer, leaving room for the configuration. It covers the fault schedule and,
at n = 4, about the first round's messages."""


class DrawnSchedule(random.Random):
    """A ``random.Random`` whose first ``budget`` draws hypothesis makes.

    Every method of ``random.Random`` the simulator uses reduces to :meth:`random`
    (``uniform``, ``paretovariate``, ``lognormvariate``) or :meth:`_randbelow`
    (``choice``, ``sample``, ``randrange``, ``shuffle``); those two are the ones
    overridden, so each of the simulator's draws is one choice hypothesis can shrink
    (``random()`` towards 0.0, so ``uniform(a, b)`` towards ``a``; indices towards 0).
    ``getrandbits`` and ``randbytes`` always come from the seeded PRNG.
    """

    def __init__(self, drawn: random.Random, tail_seed: int, budget: int = SCHEDULE_DRAWS):
        super().__init__(tail_seed)
        self._drawn = drawn
        self.tail_seed = tail_seed
        self.budget = budget
        self.prefix: list[float | int] = []  # what hypothesis drew, in order

    def random(self) -> float:
        if len(self.prefix) >= self.budget:
            return super().random()
        x = self._drawn.random()
        self.prefix.append(x)
        return x

    def _randbelow(self, n: int) -> int:
        """Python's ``Random`` draws every bounded integer through this method."""
        if len(self.prefix) >= self.budget:
            k = n.bit_length()  # rejection sampling, as Random does with getrandbits
            r = self.getrandbits(k)
            while r >= n:
                r = self.getrandbits(k)
            return r
        k = self._drawn.randrange(n)
        self.prefix.append(k)
        return k

    def __repr__(self) -> str:
        head = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in self.prefix[:8])
        more = ", ..." if len(self.prefix) > 8 else ""
        return (
            f"DrawnSchedule(tail_seed={self.tail_seed}, budget={self.budget}, "
            f"{len(self.prefix)} drawn: [{head}{more}])"
        )


@st.composite
def schedules(draw: st.DrawFn, budget: int = SCHEDULE_DRAWS) -> DrawnSchedule:
    """A schedule for one run: hypothesis's random source and the tail PRNG's seed."""
    tail_seed = draw(st.integers(0, 2**32 - 1))
    return DrawnSchedule(draw(st.randoms(use_true_random=False)), tail_seed, budget)
