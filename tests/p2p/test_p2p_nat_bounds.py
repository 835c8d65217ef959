"""What the NAT shell keeps about peers stays bounded over a long life: path changes (a
peer whose link flaps makes one per flap), punch outcomes (counted, not kept), and the
per-peer table of dials (every peer that asks for a dial-back gets an entry, and new
identities cost nothing)."""

from __future__ import annotations

import asyncio
import logging

from p2p.identity import Identity
from p2p.nat.manager import Path, PathChanged
from p2p.nat.punch import PunchFailed, PunchSucceeded
from p2p.nat_service import PATH_CHANGES_KEPT, NatConfig, NatService
from p2p.testing import LoopFactory, loopback_config, run
from p2p.transport import PeerTransport

ME = Identity.from_seed(b"\x31" * 32)


def _service() -> NatService:
    transport = PeerTransport(ME, loopback_config(), {}, None, lambda _k, _p: None)
    return NatService(transport, NatConfig(), logging.getLogger("nat-bounds"))


def test_history_is_bounded_and_dials_are_forgotten(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        nat = _service()
        try:
            peer = b"\x07" * 32
            direct, none = Path("direct"), Path("none")
            for k in range(3 * PATH_CHANGES_KEPT):
                old, new = (direct, none) if k % 2 else (none, direct)
                nat.perform([PathChanged(peer, old, new)])
            assert len(nat.path_changes) == PATH_CHANGES_KEPT
            assert nat.path_changes[-1][2] == "none"  # the newest are the ones kept
            for k in range(1000):
                nat.perform([PunchSucceeded(peer, None, k, None), PunchFailed(peer, "x", k)])
            assert (nat.punches_succeeded(), nat.punches_failed()) == (1000.0, 1000.0)
            assert nat.status()["punches"] == {"succeeded": 1000, "failed": 1000}
            # A dial per new identity: the table empties as the dials end.
            release = asyncio.Event()

            async def dial() -> None:
                await release.wait()

            for k in range(200):
                nat._spawn(k.to_bytes(32, "big"), dial())
            assert len(nat.dials) == 200
            release.set()
            for _ in range(10):
                await asyncio.sleep(0)
            assert nat.dials == {}
        finally:
            await nat.close()

    run(main(), timeout=30, loop_factory=loop_factory)
