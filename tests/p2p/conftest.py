"""Fixtures of the transport tests: every event loop the node may run on."""

from __future__ import annotations

import pytest

from p2p.testing import LoopFactory


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    """``None`` for the default asyncio loop, else uvloop's (the daemon may install it)."""
    if request.param == "asyncio":
        return None
    uvloop = pytest.importorskip("uvloop")
    factory: LoopFactory = uvloop.new_event_loop
    return factory
