"""Links made outside the transport (hole punch, relayed circuit) are adopted; a direct
path replaces a relayed one and never the reverse."""

from __future__ import annotations

import asyncio
import socket

from p2p.identity import Identity
from p2p.testing import LoopFactory, loopback_config, run, wait_until
from p2p.tls import client_context, server_context
from p2p.transport import PeerTransport, _tls_accept

A, B = sorted((Identity.from_seed(bytes([i]) * 32) for i in (7, 8)), key=lambda i: i.public_key)
STRANGER = Identity.from_seed(b"\x09" * 32)


async def tls_pair(
    client: Identity, server: Identity
) -> tuple[
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
    tuple[asyncio.StreamReader, asyncio.StreamWriter],
]:
    """Both ends of one TLS link over a socketpair, like a punched or relayed path."""
    left, right = socket.socketpair()
    accept = asyncio.ensure_future(_tls_accept(right, server_context(server), 5.0))
    dial = await asyncio.open_connection(sock=left, ssl=client_context(client), server_hostname="")
    return dial, await accept


def test_adopted_relayed_link_is_upgraded_by_a_direct_one(loop_factory: LoopFactory) -> None:
    got: list[bytes] = []

    async def main() -> None:
        a = PeerTransport(A, loopback_config(), {}, {B.public_key}, lambda _k, _p: None)
        b = PeerTransport(B, loopback_config(), {}, {A.public_key}, lambda _k, p: got.append(p))
        await a.start()
        await b.start()
        try:
            a_end, b_end = await tls_pair(A, B)
            assert a.adopt(B.public_key, "outbound", *a_end, path="relayed:r1")
            assert b.adopt(A.public_key, "inbound", *b_end, path="relayed:r1")
            assert a.path_of(B.public_key) == "relayed:r1"
            assert a.send(B.public_key, b"via relay")
            await wait_until(lambda: got == [b"via relay"], what="relayed frame")
            assert a.stats()[B.peer_id]["path"] == "relayed:r1"
            assert a.link_addresses(B.public_key) is not None

            a_direct, b_direct = await tls_pair(A, B)
            assert a.adopt(B.public_key, "outbound", *a_direct, path="direct")
            assert b.adopt(A.public_key, "inbound", *b_direct, path="direct")
            assert a.path_of(B.public_key) == "direct" == b.path_of(A.public_key)
            assert a.send(B.public_key, b"direct")
            await wait_until(lambda: got[-1:] == [b"direct"], what="direct frame")

            a_late, b_late = await tls_pair(A, B)  # a relayed path never replaces it
            assert not a.adopt(B.public_key, "outbound", *a_late, path="relayed:r2")
            assert not b.adopt(A.public_key, "inbound", *b_late, path="relayed:r2")
            assert a.path_of(B.public_key) == "direct"
        finally:
            await a.close()
            await b.close()

    run(main(), loop_factory=loop_factory)


def test_a_key_outside_the_allowed_set_is_not_adopted(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        a = PeerTransport(A, loopback_config(), {}, {B.public_key}, lambda _k, _p: None)
        await a.start()
        try:
            a_end, _ = await tls_pair(A, STRANGER)
            assert not a.adopt(STRANGER.public_key, "outbound", *a_end)
            assert a.connected() == []
        finally:
            await a.close()

    run(main(), loop_factory=loop_factory)
