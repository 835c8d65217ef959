"""Example budgets that follow the loaded hypothesis profile (tests/conftest.py).

A test that needs more (or fewer) examples than the profile's default asks for a
multiple of it, so ``HYPOTHESIS_PROFILE=nightly`` or ``deep`` scales every property test
and ``ci`` keeps them all bounded. A fixed ``max_examples=N`` would ignore the profile.
"""

from __future__ import annotations

from hypothesis import settings


def examples(scale: float) -> int:
    """``max_examples`` for a test that needs ``scale`` times the profile's default.

    A cheap property over a large input space takes more (``examples(8)``: 200 under
    ``ci``); one that costs a whole protocol run per example takes fewer
    (``examples(0.8)``: 20). Read when the test module is imported, after conftest.py
    (or ``--hypothesis-profile``) loaded the profile.
    """
    if scale <= 0:
        raise ValueError(f"examples: scale must be > 0, got {scale}")
    return max(1, round(settings().max_examples * scale))
