"""A replicated key-value store on the CRDT documents.

Every committee member holds a replica of the document ``kv/store``; a write on one
member is signed, persisted and pushed to the others, and concurrent writes to one key
converge (last writer wins by hybrid clock). The store below is ~30 lines on top of
``node.documents``.

Run it alone (it starts its own in-process committee of four)::

    python examples/kv_store.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

from dagrider import Intent, Node, NotFound, local_network

DOC = "kv/store"


class ReplicatedKV:
    """A string -> value map replicated to every node holding the documents."""

    def __init__(self, node: Node, doc: str = DOC) -> None:
        self.node = node
        self.doc = doc

    def set(self, key: str, value: Any) -> None:
        self.node.documents.update(self.doc, [Intent((key,), "set", "lww", value)])

    def delete(self, key: str) -> None:
        self.node.documents.update(self.doc, [Intent((key,), "remove")])

    def get(self, key: str, default: Any = None) -> Any:
        return self.items().get(key, default)

    def items(self) -> dict[str, Any]:
        try:
            value: dict[str, Any] = self.node.documents.get(self.doc)
        except NotFound:
            return {}
        return value

    async def wait_for(self, key: str, value: Any, timeout: float = 20.0) -> None:
        """Until this replica shows ``key = value`` (changes arrive by subscription)."""
        changes = self.node.documents.subscribe(self.doc)
        try:
            async with asyncio.timeout(timeout):
                while self.get(key) != value:
                    await anext(changes)
        finally:
            await changes.aclose()


async def main(workdir: Path) -> dict[str, Any]:
    async with local_network(workdir, members=4) as net:
        alice, bob = ReplicatedKV(net.nodes[0]), ReplicatedKV(net.nodes[3])
        waiting = asyncio.ensure_future(bob.wait_for("colour", "blue"))
        await asyncio.sleep(0)  # subscribed before the write
        alice.set("colour", "blue")
        alice.set("size", 42)
        await waiting
        bob.delete("size")
        await ReplicatedKV(net.nodes[1]).wait_for("colour", "blue")
        while alice.get("size") is not None:  # bob's delete reaches alice too
            await asyncio.sleep(0.05)
        result = bob.items()
        print(f"replicated: {result}")
        return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the nodes' own logs: errors only
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.dir or Path(tmp)))
