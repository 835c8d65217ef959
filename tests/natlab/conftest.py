"""Fixtures of the NAT lab tests: a fresh lab per test, or a clear skip where impossible."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from natlab.lab import Lab, available


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "natlab: real NATs in Linux network namespaces (needs root, ip, iptables)"
    )


@pytest.fixture
def natlab_available() -> None:
    """Skip with one line saying why when this machine cannot build namespace labs."""
    reason = available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def natlab(natlab_available: None) -> Iterator[Lab]:
    """A fresh lab (15 ms per internet link), torn down after the test whatever happens."""
    with Lab() as lab:
        yield lab
