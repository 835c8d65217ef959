"""Shared test configuration: hypothesis profiles.

Every property test's budget is a multiple of the loaded profile's ``max_examples``
(``tests/hypothesis_budget.py``), so choosing a profile scales the whole suite:

* ``ci`` (selected when the CI environment variable is set): derandomized, so that a
  CI run is reproducible (the same examples every time, a failure replays by re-running)
  and bounded in time;
* ``dev``: the default for local runs, the same budget with fresh random examples;
* ``nightly`` (``HYPOTHESIS_PROFILE=nightly``): 8x the examples, random, for the
  nightly-sized command in the README; a failure prints its ``@reproduce_failure`` blob;
* ``deep`` (``HYPOTHESIS_PROFILE=deep``): 20x, a long hunt for counterexamples.

``--hypothesis-profile=NAME`` on the pytest command line works too (it is applied before
the test modules are imported, so the budgets follow it).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=25, deadline=None, print_blob=True)
settings.register_profile(
    "nightly",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
