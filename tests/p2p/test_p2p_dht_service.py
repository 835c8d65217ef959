"""The DHT shell over real loopback transports: a dozen in-process nodes in open mode."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Collection

import pytest

from p2p.dht.config import DhtConfig
from p2p.dht.messages import Ping, PutRecord, PutResult
from p2p.dht.peer import PeerInfo
from p2p.dht.records import record_key, sign_record
from p2p.dht_service import METHOD, DhtQueryError
from p2p.identity import Identity
from p2p.rpc import RpcRemoteError
from p2p.testing import DhtNode, LoopFactory, run, start_dht_node, stop_dht_node, wait_until

FAST = DhtConfig(request_timeout=2.0, slow_after=0.5)
HANG_S = 90.0
"""Hang limit of a test: twelve nodes bootstrap in about 2 s, but once a loaded run took
over 10 s (the whole suite twice over on two cores), which is slow, not wrong."""


Node = DhtNode


async def start_node(
    seed: int, bootstrap: list[PeerInfo], config: DhtConfig, *, server: bool = True
) -> Node:
    return await start_dht_node(b"dht-test" + bytes([seed]), bootstrap, config, server=server)


stop_node = stop_dht_node


@contextlib.asynccontextmanager
async def mesh(
    n: int, config: DhtConfig = FAST, clients: Collection[int] = ()
) -> AsyncIterator[list[Node]]:
    """``n`` nodes that bootstrap from node 0 (which starts first); closed on exit."""
    nodes = [await start_node(0, [], config)]
    try:
        seed = [nodes[0].info]
        nodes += await asyncio.gather(
            *(start_node(i, seed, config, server=i not in clients) for i in range(1, n))
        )
        await asyncio.gather(*(asyncio.wait_for(x.dht.ready.wait(), HANG_S) for x in nodes))
        yield nodes
    finally:
        await asyncio.gather(*(stop_node(x) for x in nodes), return_exceptions=True)


def stat(node: Node, name: str) -> int:
    """One counter of the node's DHT shell (0 if it never moved)."""
    stats = node.dht.status()["stats"]
    assert isinstance(stats, dict)
    return int(stats.get(name, 0))


def table_keys(node: Node) -> set[bytes]:
    return {p.key for p in node.dht.core.routing.peers()}


def test_bootstrap_find_peer_records_and_providers(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        async with mesh(12) as nodes:
            for x in nodes:
                assert len(table_keys(x)) >= 6, x.dht.status()
            # every node is in somebody's table, and nobody lists itself
            assert set().union(*(table_keys(x) for x in nodes)) == {x.key for x in nodes}
            assert all(x.key not in table_keys(x) for x in nodes)

            found = await nodes[3].dht.find_peer(nodes[9].key)
            assert found is not None and found.addrs == nodes[9].info.addrs
            absent = Identity.from_seed(b"\x99" * 32).public_key
            assert await nodes[3].dht.find_peer(absent) is None

            assert await nodes[2].dht.put_record(b"greeting", b"hello", ttl=600) >= 5
            got = await nodes[7].dht.get_record(nodes[2].key, b"greeting")
            assert got is not None and got.value == b"hello"
            assert await nodes[2].dht.put_record(b"greeting", b"hello again", ttl=600) >= 5
            newer = await nodes[10].dht.get_record(nodes[2].key, b"greeting")
            assert newer is not None and newer.value == b"hello again" and newer.seq > got.seq
            assert await nodes[7].dht.get_record(nodes[2].key, b"nothing") is None

            content = hashlib.sha256(b"some blob").digest()
            assert await nodes[4].dht.provide(content) >= 5
            assert await nodes[5].dht.provide(content) >= 5
            providers = await nodes[8].dht.find_providers(content)
            assert {p.key for p in providers} == {nodes[4].key, nodes[5].key}
            assert {p.addrs for p in providers} == {nodes[4].info.addrs, nodes[5].info.addrs}
            own = await nodes[4].dht.find_providers(content)
            assert [p.key for p in own] == [nodes[5].key]  # never ourselves

            status = nodes[8].dht.status()
            assert status["mode"] == "server" and status["routing_table"] == len(
                table_keys(nodes[8])
            )
            assert isinstance(status["rpc"], dict) and status["rpc"]["answers"] > 0

    run(main(), timeout=HANG_S, loop_factory=loop_factory)


def test_a_killed_node_does_not_break_lookups() -> None:
    # A request to the dead node that waited for its timeout instead of failing at once
    # (refused dial, link gone) would outlast ``run``'s: no clock needed to see it.
    patient = dataclasses.replace(FAST, request_timeout=60.0, slow_after=60.0)

    async def main() -> None:
        async with mesh(10, patient) as nodes:
            assert await nodes[2].dht.put_record(b"k", b"before", ttl=600) >= 5
            victim = nodes[5]
            await stop_node(victim)
            got = await nodes[1].dht.get_record(nodes[2].key, b"k")
            assert got is not None and got.value == b"before"
            assert await nodes[3].dht.put_record(b"k", b"after", ttl=600) >= 5
            found = await nodes[8].dht.find_peer(nodes[6].key)
            assert found is not None and found.key == nodes[6].key
            later = await nodes[9].dht.get_record(nodes[3].key, b"k")
            assert later is not None and later.value == b"after"
            # whoever tried the dead node counted a failure, and lookups went on
            assert sum(stat(x, "query_failures") for x in nodes if x is not victim) >= 1

    run(main(), timeout=HANG_S)


def test_client_mode_node_looks_up_but_is_in_nobody_s_table() -> None:
    async def main() -> None:
        async with mesh(9, clients={8}) as nodes:
            client, servers = nodes[8], nodes[:8]
            assert client.dht.status()["mode"] == "client"
            assert await servers[1].dht.put_record(b"x", b"y", ttl=600) >= 4
            got = await client.dht.get_record(servers[1].key, b"x")
            assert got is not None and got.value == b"y"
            found = await client.dht.find_peer(servers[6].key)
            assert found is not None and found.key == servers[6].key
            assert await client.dht.put_record(b"from-client", b"z", ttl=600) >= 4
            back = await servers[3].dht.get_record(client.key, b"from-client")
            assert back is not None and back.value == b"z"
            assert len(table_keys(client)) >= 4
            for server in servers:
                assert client.key not in table_keys(server)
            assert await servers[2].dht.find_peer(client.key) is None

    run(main(), timeout=HANG_S)


def test_forged_expired_and_malformed_requests_are_refused_with_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="p2p.dht")

    async def main() -> None:
        async with mesh(4) as nodes:
            a, b = nodes[1], nodes[2]
            assert await a.dht.put_record(b"name", b"genuine", ttl=600) >= 2
            genuine = b.dht.core.records.get(record_key(a.key, b"name"), time.time())
            assert genuine is not None
            forged = dataclasses.replace(genuine, value=b"evil", seq=genuine.seq + 1)
            answer = await nodes[3].dht.request(b.info, PutRecord(forged))
            assert answer == PutResult(False, "bad-signature")
            assert "reason=bad-signature" in caplog.text
            expired = sign_record(nodes[3].identity, b"old", b"v", 1, int(time.time()) - 10)
            answer = await nodes[3].dht.request(b.info, PutRecord(expired))
            assert answer == PutResult(False, "expired")
            still = await nodes[0].dht.get_record(a.key, b"name")
            assert still is not None and still.value == b"genuine"

            before = b.dht.status()["records"]
            with pytest.raises(RpcRemoteError) as info:
                await nodes[3].dht.rpc.call(b.key, METHOD, b"\x81\xa1t\x63", timeout=2)
            assert info.value.code == "malformed"
            assert "dht request refused" in caplog.text and "code=malformed" in caplog.text
            liar = PeerInfo(a.key, (("127.0.0.1", 9),))
            with pytest.raises(DhtQueryError, match="sender-mismatch"):
                await nodes[3].dht.request(b.info, Ping(sender=liar))
            assert b.dht.status()["records"] == before
            assert stat(b, "malformed_requests") == 1 and stat(b, "refused_requests") == 1

    run(main(), timeout=HANG_S)


def test_records_expire_and_providers_are_reannounced() -> None:
    config = dataclasses.replace(
        FAST, republish_interval=0.3, provider_republish_interval=0.3, refresh_interval=600
    )

    async def main() -> None:
        async with mesh(5, config) as nodes:
            content = hashlib.sha256(b"held").digest()
            assert await nodes[1].dht.provide(content) >= 2
            await wait_until(
                lambda: stat(nodes[1], "reprovided") >= 2,
                what="provider records re-announced",
            )
            nodes[1].dht.stop_providing(content)
            assert nodes[1].dht.status()["providing"] == 0
            assert await nodes[2].dht.put_record(b"short", b"lived", ttl=2) >= 2
            await wait_until(
                lambda: all(x.dht.status()["records"] == 0 for x in nodes),
                what="expired records swept",
            )
            assert await nodes[3].dht.get_record(nodes[2].key, b"short") is None
            assert nodes[2].dht.status()["own_records"] == 0

    run(main(), timeout=HANG_S)
