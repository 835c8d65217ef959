"""A custom RPC service on the authenticated mesh: a small "notes" service.

``@unary`` methods answer once, ``@server_stream`` methods answer with a stream, and
``@client_stream`` methods take a stream from the caller. Arguments and results are
msgpack values (never pickled objects). The caller is identified by its authenticated
key (``current_peer()``); a handler refuses with ``ServiceError(code, message)``.

Run it alone (an in-process committee of four plus two peers)::

    python examples/rpc_service.py

or with two embedded peers joining a running ``dagrider cluster up``::

    python examples/rpc_service.py --cluster .dagrider-cluster
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from file_share import two_peers

from dagrider import (
    Peer,
    RemoteError,
    Service,
    ServiceError,
    client_stream,
    current_peer,
    server_stream,
    unary,
)

MAX_NOTE = 1000


class Notes(Service):
    """Notes kept per caller: each peer sees only what it wrote."""

    name = "notes"

    def __init__(self) -> None:
        self.notes: dict[bytes, list[str]] = {}

    @unary
    async def add(self, text: str) -> int:
        if not isinstance(text, str) or len(text) > MAX_NOTE:
            raise ServiceError("bad-note", f"a note is a string of at most {MAX_NOTE} chars")
        mine = self.notes.setdefault(current_peer(), [])
        mine.append(text)
        return len(mine)

    @server_stream
    async def search(self, word: str) -> AsyncIterator[str]:
        for note in self.notes.get(current_peer(), []):
            if word in note:
                yield note

    @client_stream
    async def import_many(self, texts: AsyncIterator[str]) -> int:
        count = 0
        async for text in texts:
            await self.add(text)
            count += 1
        return count


async def lines() -> AsyncIterator[str]:
    for i in range(50):
        yield f"note {i}: {'buy milk' if i % 10 == 0 else 'nothing'}"


async def use_notes(server: Peer, client: Peer) -> list[str]:
    server.services.register(Notes())
    notes = client.services.client(server.key, Notes, timeout=10)
    print(f"added, now {await notes.add('buy milk today')} note(s)")
    print(f"imported {await notes.import_many(lines())} notes")
    found = [note async for note in notes.search("milk")]
    print(f"search 'milk': {len(found)} notes")
    try:
        await notes.add("x" * 5000)
    except RemoteError as err:
        print(f"refused as expected: {err.code}")
    return found


async def main(workdir: Path, cluster: Path | None = None) -> list[str]:
    async with two_peers(workdir, cluster) as (a, b):
        return await use_notes(a, b)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the nodes' own logs: errors only
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", type=Path, help="directory of a 'dagrider cluster up'")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.dir or Path(tmp), args.cluster))
