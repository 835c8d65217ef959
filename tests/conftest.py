"""Shared test configuration: hypothesis profiles.

``ci`` (selected when the CI environment variable is set) is derandomized so that a CI
run is reproducible and bounded in time; ``dev`` is the default for local runs; ``deep``
(HYPOTHESIS_PROFILE=deep) is a long hunt for counterexamples.
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
    "deep", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
