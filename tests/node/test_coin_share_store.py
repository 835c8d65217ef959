"""The daemon's SQLite store under a coin-share flood (issue 17).

A committee member signs valid coin shares for any wave it likes. Member 3 of an
in-process committee sends member 0 its shares for every wave of member 0's window and
far past it, up to 2**40; member 0's store must hold only what its process accepts
(:meth:`dagrider.process.Process.accepts_coin_share`), and member 0 restarts from that
store and orders on. The unit-level rules are in ``tests/test_coin_share_storage.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from dagrider import Node, local_network
from dagrider.codec import encode
from dagrider.messages import CoinShareMsg

HANG_LIMIT = 60.0  # seconds: a hang limit, not a verdict


def _rows(node: Node) -> list[tuple[int, int]]:
    db = node._member().store._db
    return [(int(w), int(s)) for w, s in db.execute("SELECT wave, signer FROM coin_shares")]


async def _flushed(node: Node) -> None:
    rt = node._member()
    async with asyncio.timeout(HANG_LIMIT):
        while rt._effects or rt._shares or rt._flush_handle is not None:
            await asyncio.sleep(0.01)


def test_far_future_coin_shares_leave_the_store_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            target, attacker = net.nodes[0]._member(), net.nodes[3]._member()
            low, high = target.process.coin_share_window()
            waves = [*range(low, high + 200), *(1 << k for k in range(8, 41))]
            key = target.key_of[3]
            for wave in waves:
                target._on_frame(key, encode(CoinShareMsg(attacker.process.own_share(wave))))
            await _flushed(net.nodes[0])
            rows = _rows(net.nodes[0])
            top = target.process.coin_share_window()[1]  # the window only grows
            assert rows and max(w for w, _ in rows) <= top
            from_attacker = [w for w, s in rows if s == 3]
            assert (high, 3) in rows  # the edge of the window is kept: the test can fail
            assert len(from_attacker) <= top - low + 1
            assert len(rows) <= 3 * (top - low + 1)  # one row per peer and wave at most
            # A restart from that store: the shares come back within the window, and
            # the member orders on.
            await net.nodes[0].stop()
            again = Node(tmp_path / "node-0.toml")
            await again.start()
            net.nodes[0] = again
            recovered = again._member().process
            assert recovered._coins.keys() <= set(range(1, top + 1))
            tx = again.submit(b"after the flood")
            state = await again.wait_committed(tx, timeout=HANG_LIMIT)
            assert state.index is not None

    asyncio.run(scenario())
