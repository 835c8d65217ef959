"""The public API end to end on an in-process committee plus a mesh peer: lifecycle,
consensus, documents, content, DHT records, network info, and bad input."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import dagrider
from dagrider import (
    Blob,
    ContentUnavailable,
    DagriderError,
    Intent,
    InvalidArgument,
    InvalidConfig,
    Node,
    NotFound,
    NotRunning,
    Peer,
    Service,
    Unsupported,
    load_config,
    local_network,
    unary,
)
from dagrider.effects import Commit
from dagrider.node.service import StorageUnavailable
from p2p.testing import wait_until


def test_public_names_resolve() -> None:
    for name in dagrider.__all__:
        assert getattr(dagrider, name) is getattr(dagrider.sdk, name)
    with pytest.raises(AttributeError):
        _ = dagrider.NoSuchThing


def test_consensus_from_a_toml_file_and_a_config_object(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            node = net.nodes[0]
            assert node.node_id == 0 and node.log_head == -1
            ids = [*node.submit_many([b"a", b"b"]), node.submit(b"c")]
            assert node.tx_status(ids[0]).state in ("pending", "committed")
            last = await node.wait_committed(ids[2], timeout=20)
            assert last.state == "committed" and last.index is not None
            seen = [e async for e in node.committed(0, follow=False)]
            assert [e.data for e in seen][:3] == [b"a", b"b", b"c"]
            assert [e.index for e in seen] == list(range(len(seen)))
            # every member reports the same positions (once it has committed them too:
            # member 3 may be a wave behind member 0 on a loaded machine)
            await net.nodes[3].wait_committed(ids[2], timeout=20)
            other = [e async for e in net.nodes[3].committed(0, follow=False)]
            other = other[: len(seen)]
            assert [(e.index, e.tx_id) for e in other] == [(e.index, e.tx_id) for e in seen]
            # follow: a new commit reaches a waiting iterator
            stream = node.committed(len(seen))
            waiting = asyncio.ensure_future(anext(stream))
            tx = net.nodes[1].submit(b"later")
            entry = await asyncio.wait_for(waiting, 20)
            assert entry.tx_id == tx and entry.data == b"later"
            await stream.aclose()
            assert node.tx_status("0" * 64).state == "unknown"
            for bad in ("xyz", "0" * 63, "A" * 64, 5):
                with pytest.raises(InvalidArgument, match="tx_id"):
                    node.tx_status(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="tx"):
                node.submit("text")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="tx"):
                node.submit(b"x" * (node.config.limits.max_tx_bytes + 1))
            with pytest.raises(InvalidArgument, match="start"):
                await anext(node.committed(-1))
            assert node.status()["node"] == 0
        # stopped: every call says so, and stop is idempotent
        with pytest.raises(NotRunning):
            net.nodes[0].submit(b"x")
        await net.nodes[0].stop()
        # the same member again, from its config object this time: state was kept
        cfg = load_config(tmp_path / "node-0.toml")
        async with Node(cfg) as again:
            assert again.log_head >= 3 and again.running
        assert not again.running

    asyncio.run(scenario())


def test_bad_configuration_is_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidConfig, match="does not exist"):
            Node(tmp_path / "missing.toml")
        with pytest.raises(InvalidArgument, match="config"):
            Node(42)  # type: ignore[arg-type]
        async with local_network(tmp_path, members=4, peers=1) as net:
            peer_cfg = net.peers[0].config
            with pytest.raises(InvalidConfig, match="role"):
                Node(peer_cfg)
            with pytest.raises(DagriderError, match="already running"):
                await net.nodes[0].start()
            bad = dataclasses.replace(net.nodes[0].config, key_file=tmp_path / "nokey")
            with pytest.raises(InvalidConfig):
                await Node(bad).start()

    asyncio.run(scenario())


def test_documents(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4, peers=1) as net:
            a, b, peer = net.nodes[0], net.nodes[1], net.peers[0]
            changes = b.documents.subscribe("app/cart")
            first = asyncio.ensure_future(anext(changes))
            await asyncio.sleep(0)
            h = a.documents.update(
                "app/cart",
                [
                    Intent(("items",), "add", "orset", "apple"),
                    {"path": ["count"], "type": "pncounter", "action": "inc", "args": 2},
                ],
            )
            event = await asyncio.wait_for(first, 20)  # replicated to b
            assert event.hash == h and event.doc == "app/cart" and not event.local
            assert event.author == a.key.hex()
            await changes.aclose()
            assert b.documents.get("app/cart") == {"items": ["apple"], "count": 2}
            assert "app/cart" in a.documents.names()
            await wait_until(  # the peer replicates too (it does not write)
                lambda: "app/cart" in peer.documents.names(), 60, "the peer replicated"
            )
            assert peer.documents.get("app/cart")["count"] == 2
            with pytest.raises(InvalidArgument, match=r"writ|author|unauthor"):
                peer.documents.update("app/cart", [Intent(("count",), "inc", "pncounter", 1)])
            with pytest.raises(NotFound):
                a.documents.get("app/none")
            with pytest.raises(InvalidArgument, match="intents"):
                a.documents.update("app/cart", [Intent(("x",), "fly", "lww", 1)])
            with pytest.raises(InvalidArgument, match="intents"):
                a.documents.update("app/cart", "not a list")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="intents"):
                a.documents.update("bad name", [Intent(("x",), "set", "lww", 1)])
            with pytest.raises(InvalidArgument, match="checkpoint"):
                a.documents.get("app/cart", checkpoint=0)
            with pytest.raises(InvalidArgument, match="doc"):
                await anext(a.documents.subscribe(5))  # type: ignore[arg-type]
            assert a.documents.get("app/cart") == {"items": ["apple"], "count": 2}

    asyncio.run(scenario())


async def _pieces(n: int, size: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield bytes([i % 256]) * size


def test_content_records_and_network(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path / "net", members=4, peers=1) as net:
            a, peer = net.nodes[0], net.peers[0]
            progress: list[tuple[int, int | None]] = []
            blob = await a.content.put(
                b"z" * 2_500_000, progress=lambda d, t: progress.append((d, t))
            )
            assert blob.size == 2_500_000 and progress[-1] == (2_500_000, 2_500_000)
            src = tmp_path / "file.bin"
            src.write_bytes(b"file contents" * 1000)
            from_file = await a.content.put(src)
            streamed = await a.content.put(_pieces(5, 100_000))
            assert streamed.size == 500_000 and a.content.has(streamed.cid)
            assert {blob, from_file, streamed} <= set(a.content.blobs())
            # the peer fetches from providers, verified, to a file and as a stream
            fetched: list[tuple[int, int | None]] = []
            out = await peer.content.get(
                from_file.cid, tmp_path / "copy.bin", progress=lambda d, t: fetched.append((d, t))
            )
            assert out.read_bytes() == src.read_bytes() and fetched[-1][0] == from_file.size
            data = b"".join([p async for p in peer.content.read(streamed.cid)])
            assert data == b"".join([bytes([i]) * 100_000 for i in range(5)])
            providers = await peer.content.providers(blob.cid)
            assert a.key in {p.key for p in providers}
            with pytest.raises(ContentUnavailable):
                await peer.content.get("ab" * 32, tmp_path / "never.bin")
            assert not (tmp_path / "never.bin").exists()
            with pytest.raises(InvalidArgument, match="cid"):
                await peer.content.get("nothex", tmp_path / "x")
            with pytest.raises(InvalidArgument, match="source"):
                await a.content.put(tmp_path / "missing.bin")
            with pytest.raises(InvalidArgument, match="source"):
                await a.content.put(12)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="to"):
                await peer.content.get(blob.cid, tmp_path / "no" / "dir" / "x")
            with pytest.raises(InvalidArgument, match="directory"):
                await peer.content.get(blob.cid, tmp_path)

            # signed records with expiry, read by another node
            stored = await a.records.put("profile", b"v1", ttl=60)
            assert stored >= 1
            rec = await peer.records.get(a.key, "profile")
            assert rec is not None and rec.value == b"v1" and rec.author == a.key
            assert time.time() < rec.expires <= time.time() + 61
            await a.records.put(b"profile", b"v2", ttl=60)
            again = await peer.records.get(a.key.hex(), b"profile")
            assert again is not None and again.value == b"v2" and again.seq > rec.seq
            assert await peer.records.get(peer.key, "profile") is None
            with pytest.raises(InvalidArgument, match="ttl"):
                await a.records.put("x", b"v", ttl=0)
            with pytest.raises(InvalidArgument, match="ttl"):
                await a.records.put("x", b"v", ttl=10**9)
            with pytest.raises(InvalidArgument, match="value"):
                await a.records.put("x", b"v" * 20_000, ttl=10)
            with pytest.raises(InvalidArgument, match="name"):
                await a.records.put("", b"v", ttl=10)
            with pytest.raises(InvalidArgument, match="author"):
                await a.records.get(b"short", "x")

            # network: paths, addresses, our own position
            linked = {p.key: p for p in a.network.peers() if p.connected}
            assert {n.key for n in net.nodes[1:]} <= set(linked)
            assert all(p.path == "direct" and p.address is not None for p in linked.values())
            assert a.network.peer(net.nodes[1].key).connected
            assert not a.network.peer(bytes(32)).connected
            info = a.network.info()
            assert info.key == a.key and info.listen == a.address
            assert info.reachability == "unknown"  # [nat] is off in this network
            with pytest.raises(InvalidArgument, match="peer"):
                a.network.peer("zz")
            with pytest.raises(InvalidArgument, match="address"):
                await a.network.connect(peer.key, ("127.0.0.1", 0))
            await peer.network.connect(net.nodes[3].key)  # found through the DHT
            assert net.nodes[3].key in peer.network.connected()
            assert isinstance(blob, Blob)

    asyncio.run(scenario())


class _Echo(Service):
    name = "echo"

    @unary
    async def ping(self) -> str:
        return "pong"


def test_subsystems_switched_off_say_so(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            cfg = net.nodes[0].config
        off = dataclasses.replace(cfg, crdt_enabled=False, dht_enabled=False)
        async with Node(off) as alone:  # one member alone: it starts, orders nothing
            with pytest.raises(Unsupported):
                alone.documents.get("app/x")
            with pytest.raises(Unsupported):
                await alone.content.put(b"x")
            with pytest.raises(Unsupported):
                await alone.records.get(bytes(32), "x")
            with pytest.raises(Unsupported):
                await alone.services.client(bytes(32), _Echo).ping()

    asyncio.run(scenario())


def test_network_info_with_nat_traversal_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(
            tmp_path, members=4, extra_config="[nat]\nenabled = true\n"
        ) as net:
            node = net.nodes[0]
            info = node.network.info()
            assert info.reachability in ("public", "private", "unknown")
            assert info.nat_type in ("endpoint_independent", "endpoint_dependent", "unknown")
            assert info.relays == () and info.key == node.key
            paths = {p.path for p in node.network.peers() if p.connected}
            assert paths == {"direct"}

    asyncio.run(scenario())


def test_local_network_checks_its_arguments(tmp_path: Path) -> None:
    async def scenario() -> None:
        for members in (1, 5, "4"):
            with pytest.raises(InvalidArgument, match="members"):
                async with local_network(tmp_path, members=members):  # type: ignore[arg-type]
                    pass
        with pytest.raises(InvalidArgument, match="peers"):
            async with local_network(tmp_path, peers=-1):
                pass

    asyncio.run(scenario())


def test_local_network_stops_every_node_when_stopping_one_fails(tmp_path: Path) -> None:
    """One node's stop raising (its transport's, here; CI saw a CancelledError there)
    does not leave the rest running with their ports and stores open. The failing
    node's stores are still closed, and the error reaches the caller."""

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="link teardown failed"):
            async with local_network(tmp_path, members=4, peers=1) as net:
                endpoints = [*net.nodes, *net.peers]
                broken = net.nodes[3]._impl  # the first member stopped
                real_close = broken.transport.close

                async def failing_close() -> None:
                    await real_close()
                    raise RuntimeError("link teardown failed")

                broken.transport.close = failing_close
        assert not any(e.running for e in endpoints)
        assert broken._stopped  # stores flushed and closed in spite of the error

    asyncio.run(scenario())


def test_log_head_is_what_is_on_disk(tmp_path: Path) -> None:
    """The head a reader is told is the head it can read. The ordering runs ahead of
    the store until the flush (here: for as long as the disk refuses the commit); a
    head taken from it made ``committed()`` poll without ever yielding, so the flush
    it waited for never ran (the commit_watcher example hung on loaded machines)."""

    async def scenario() -> None:
        async with local_network(tmp_path, members=4) as net:
            node = net.nodes[0]
            rt = node._impl
            real_apply = rt.store.apply
            disk = {"down": True}

            def apply(effects: list[object], *rest: object) -> object:
                if disk["down"] and any(isinstance(e, Commit) and e.vertex.block for e in effects):
                    raise StorageUnavailable("disk full (test)")
                return real_apply(effects, *rest)

            rt.store.apply = apply
            got: list[bytes] = []

            async def follow() -> None:
                async for entry in node.committed(start=0):
                    got.append(entry.data)
                    return

            follower = asyncio.ensure_future(follow())
            await net.nodes[1].wait_committed(net.nodes[1].submit(b"ordered, not yet stored"))
            await wait_until(lambda: rt.process.ordering.next_tx_index > 0, what="ordered")
            assert node.log_head == -1 and rt.log(-1, 10) == []
            await asyncio.wait_for(asyncio.sleep(0.3), 5)  # the loop is not spun by the follower
            assert got == [] and not follower.done()
            disk["down"] = False  # the storage retry flushes the held commit
            await asyncio.wait_for(follower, 20)
            assert got == [b"ordered, not yet stored"] and node.log_head >= 0

    asyncio.run(scenario())


def test_not_running_until_started(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with local_network(tmp_path, members=4, peers=1) as net:
            cfg = net.peers[0].config
        peer = Peer(cfg)
        with pytest.raises(NotRunning):
            _ = peer.key
        with pytest.raises(NotRunning):
            await peer.records.get(bytes(32), "x")
        with pytest.raises(NotRunning):
            peer.network.info()

    asyncio.run(scenario())
