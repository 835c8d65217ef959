"""The content layer's pure core: content ids, verification, wire messages, scheduling.

Modules, one job each:

- ``manifest``: chunking, the Merkle tree, the ``Manifest`` and its CID, verification;
- ``bitmap``: which chunks are held (what a resumable download persists);
- ``messages``: the wire types of the content channel (frame kind 6) and their codec;
- ``fetch``: the download scheduler (which chunk from which provider, windows, bans).

The asyncio shells live beside this package: ``p2p.content_store`` (blobs on disk,
partial downloads) and ``p2p.content_service`` (serving and fetching over ``p2p.rpc``).
Nothing here does I/O, reads a clock or draws random numbers.
"""
