"""The NAT shell end to end on loopback: two peers that only know a relay get a relayed
TLS link through it, exchange data, and upgrade to a direct (punched) link."""

from __future__ import annotations

import contextlib
import logging

from p2p.framing import FrameKind
from p2p.identity import Identity
from p2p.nat.manager import ManagerConfig, PeerInfo
from p2p.nat_service import NatConfig, NatService
from p2p.testing import LoopFactory, loopback_config, run, wait_until
from p2p.transport import PeerTransport

R, A, B = (Identity.from_seed(bytes([i]) * 32) for i in (21, 22, 23))


class Node:
    def __init__(self, ident: Identity, config: NatConfig) -> None:
        self.got: list[bytes] = []
        self.transport = PeerTransport(
            ident,
            loopback_config(),
            {},
            None,
            lambda _k, p: self.got.append(p),
            self._up,
            self._down,
            channels={FrameKind.NAT: self._nat},
        )
        self.nat = NatService(self.transport, config, logging.getLogger(f"nat-{ident.short_id}"))

    def _up(self, key: bytes) -> None:
        self.nat.on_connected(key)

    def _down(self, key: bytes) -> None:
        self.nat.on_disconnected(key)

    def _nat(self, key: bytes, data: bytes) -> None:
        self.nat.on_frame(key, data)


def test_relayed_link_then_direct_upgrade(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        relay = Node(R, NatConfig(offer_relay=True))
        relay.nat.relay.set_enabled(True)  # loopback cannot prove public reachability
        await relay.transport.start()
        relay.nat.start()
        relays = {R.public_key: relay.transport.listen_address}
        fast = ManagerConfig(dial_timeout=1.0, retry_after=1.0)
        nodes = [
            Node(ident, NatConfig(relays=relays, reserve=True, manager=fast)) for ident in (A, B)
        ]
        for node in nodes:
            await node.transport.start()
            node.nat.start()
        a, b = nodes
        try:
            await wait_until(
                lambda: all(n.nat.reservations.active(n.nat.now) for n in nodes),
                timeout=10,
                what="reservations at the relay",
            )
            # A and B know no address of each other: only that the relay reaches them.
            a.nat.want(B.public_key, PeerInfo((), False, (R.public_key,)))
            b.nat.want(A.public_key, PeerInfo((), False, (R.public_key,)))
            await wait_until(
                lambda: a.transport.path_of(B.public_key) is not None,
                timeout=15,
                what="a link between A and B",
            )
            # Frames queued on a link that is being replaced can be lost (the consensus
            # layer resends on reconnect), so the first exchange retries.
            for _ in range(50):
                a.transport.send(B.public_key, b"hello through whatever path")
                with contextlib.suppress(TimeoutError):
                    await wait_until(lambda: b.got, timeout=0.2, what="data from A")
                    break
            assert b.got
            await wait_until(
                lambda: (
                    a.transport.path_of(B.public_key) == "direct"
                    and b.transport.path_of(A.public_key) == "direct"
                ),
                timeout=20,
                what="direct upgrade",
            )
            paths = [p for _, peer, p in a.nat.path_changes if peer == B.public_key]
            assert paths[0].startswith("relayed") and paths[-1] == "direct", paths
            await wait_until(lambda: a.transport.send(B.public_key, b"direct now"), what="send")
            await wait_until(lambda: b.got[-1:] == [b"direct now"], what="direct data")
            status = a.nat.status()
            assert status["peers"][B.public_key.hex()[:16]]["path"] == "direct"
            assert relay.nat.relay.stats().bytes_relayed > 0
            # what the node exports as metrics
            assert a.nat.count_paths("direct") == 2 and a.nat.count_paths("relayed") == 0
            assert a.nat.punches_succeeded() + b.nat.punches_succeeded() >= 1
            assert relay.nat.relay_bytes() > 0
            assert a.nat.rtt(B.public_key) >= -1.0
        finally:
            for node in (*nodes, relay):
                await node.nat.close()
                await node.transport.close()

    run(main(), timeout=60, loop_factory=loop_factory)
