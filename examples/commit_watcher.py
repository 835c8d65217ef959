"""An application that reacts to committed transactions: a tiny ledger.

Clients submit transfers (``"alice->bob:5"``) to any member; every member applies the
committed transactions in log order, so every member computes the same balances
without talking to the others. ``node.committed(start)`` is the whole integration:
an async iterator over the total order from a position, that waits for new commits.

Run it alone (it starts its own in-process committee of four)::

    python examples/commit_watcher.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections import Counter
from pathlib import Path

from dagrider import Node, local_network

TRANSFERS = [b"mint->alice:100", b"alice->bob:30", b"bob->carol:10", b"alice->carol:5"]


class Ledger:
    """Balances from the committed log; an invalid transfer is skipped on every member."""

    def __init__(self) -> None:
        self.balances: Counter[str] = Counter()
        self.applied = 0
        self.rejected = 0

    def apply(self, tx: bytes) -> None:
        try:
            route, amount_text = tx.decode().split(":")
            source, target = route.split("->")
            amount = int(amount_text)
        except ValueError:
            self.rejected += 1
            return
        if amount <= 0 or (source != "mint" and self.balances[source] < amount):
            self.rejected += 1
            return
        if source != "mint":
            self.balances[source] -= amount
        self.balances[target] += amount
        self.applied += 1


async def follow(node: Node, ledger: Ledger, count: int) -> None:
    """Apply the first ``count`` committed transactions, in order."""
    async for entry in node.committed(start=0):
        ledger.apply(entry.data)
        if entry.index + 1 >= count:
            return


async def main(workdir: Path) -> dict[str, int]:
    async with local_network(workdir, members=4) as net:
        ledgers = [Ledger() for _ in net.nodes]
        followers = [
            asyncio.ensure_future(follow(node, ledger, len(TRANSFERS) + 1))
            for node, ledger in zip(net.nodes, ledgers, strict=True)
        ]
        ids = []
        for i, tx in enumerate([*TRANSFERS, b"carol->alice:999"]):  # the last overdraws
            ids.append(net.nodes[i % len(net.nodes)].submit(tx))
            await net.nodes[i % len(net.nodes)].wait_committed(ids[-1])
        await asyncio.wait_for(asyncio.gather(*followers), 30)
        first = dict(ledgers[0].balances)
        assert all(dict(ledger.balances) == first for ledger in ledgers), "members disagree"
        print(f"every member computed {first}; rejected {ledgers[0].rejected}")
        return first


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the nodes' own logs: errors only
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.dir or Path(tmp)))
