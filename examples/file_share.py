"""A file share on the content layer.

One peer shares a file: it is chunked, hashed into a content id (CID) and announced in
the DHT. Another peer that knows only the CID finds the providers, downloads the
chunks, verifies each against the CID, and writes the file.

Run it alone (an in-process committee of four plus two peers)::

    python examples/file_share.py

or against a running ``dagrider cluster up --dir .dagrider-cluster``: two embedded
peers join that cluster's mesh::

    python examples/file_share.py --cluster .dagrider-cluster
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from dagrider import Peer, join_config, local_network


async def share_and_fetch(sharer: Peer, fetcher: Peer, workdir: Path) -> str:
    original = workdir / "holiday.bin"
    original.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    blob = await sharer.content.put(original)
    print(f"shared {original.name}: cid {blob.cid} ({blob.size} bytes)")

    providers = await fetcher.content.providers(blob.cid)
    print(f"providers: {[p.key.hex()[:16] for p in providers]}")
    last = [0]

    def progress(done: int, total: int | None) -> None:
        if total and done * 4 // total > last[0] * 4 // total:
            print(f"  fetched {done}/{total} bytes")
        last[0] = done

    copy = await fetcher.content.get(blob.cid, workdir / "copy.bin", progress=progress)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(original.read_bytes()).hexdigest(), "copy differs"
    print(f"copy verified: sha256 {digest[:16]}...")
    return blob.cid


@contextlib.asynccontextmanager
async def two_peers(workdir: Path, cluster: Path | None) -> AsyncIterator[tuple[Peer, Peer]]:
    if cluster is None:
        async with local_network(workdir / "net", members=4, peers=2) as net:
            yield net.peers[0], net.peers[1]
        return
    async with (
        Peer(join_config(cluster, workdir / "peer-a")) as a,
        Peer(join_config(cluster, workdir / "peer-b")) as b,
    ):
        async with asyncio.timeout(30):
            while not (a.network.connected() and b.network.connected()):
                await asyncio.sleep(0.1)
        yield a, b


async def main(workdir: Path, cluster: Path | None = None) -> str:
    async with two_peers(workdir, cluster) as (a, b):
        return await share_and_fetch(a, b, workdir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # the nodes' own logs: errors only
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", type=Path, help="directory of a 'dagrider cluster up'")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.dir or Path(tmp), args.cluster))
