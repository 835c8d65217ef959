"""Peer-to-peer layer: identities, authenticated TCP + TLS 1.3 links, and (later) the
connection manager, NAT traversal, DHT and content layers.

The package never imports ``dagrider``: the consensus core and the network meet only in
the node (``dagrider/node``), so either side can be tested and replaced on its own.
"""

from __future__ import annotations
