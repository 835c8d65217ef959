"""Our DHT records' sequence numbers survive a restart, whatever the clock does."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis_budget import examples

from p2p.dht.config import DhtConfig
from p2p.dht.peer import PeerInfo
from p2p.dht_seq import SeqFile, SeqFileError
from p2p.dht_service import DhtService
from p2p.identity import Identity
from p2p.testing import DhtNode, loopback_config, start_dht_node, stop_dht_node
from p2p.transport import PeerTransport

FAST = DhtConfig(request_timeout=2.0, slow_after=0.5)
HOUR = 3600.0
LAG = 600.0  # the restarted clock is this far behind (its records still expire later)


async def _start(
    identity: Identity,
    bootstrap: list[PeerInfo],
    seq_file: Path | None,
    clock: Callable[[], float],
) -> DhtNode:
    transport = PeerTransport(identity, loopback_config(), {}, None, lambda _k, _p: None)
    await transport.start()
    info = PeerInfo(identity.public_key, (transport.listen_address,))
    dht = DhtService(
        transport,
        info,
        FAST,
        bootstrap=bootstrap,
        server_mode=lambda: True,
        clock=clock,
        seq_file=seq_file,
    )
    dht.start()
    await asyncio.wait_for(dht.ready.wait(), 10)
    return DhtNode(identity, transport, dht)


def _published_after_restart(tmp_path: Path, seq_file: Path | None) -> bytes | None:
    """Publish v1, restart with a clock LAG behind, publish v2: what a peer serves."""
    identity = Identity.from_seed(hashlib.sha256(b"dht-seq-author").digest())

    async def main() -> bytes | None:
        peers = [await start_dht_node(b"dht-seq-peer-0", [], FAST)]
        peers += [await start_dht_node(b"dht-seq-peer-1", [peers[0].info], FAST)]
        try:
            author = await _start(identity, [peers[0].info], seq_file, time.time)
            # Both peers must hold v1. Under load a lookup hop or a STORE can miss FAST's
            # 2 s timeout (a loaded run stored at 1): publish again until both have it.
            deadline = time.monotonic() + 20
            while await author.dht.put_record(b"name", b"v1", ttl=HOUR) < 2:
                assert time.monotonic() < deadline, "v1 never reached both peers"
            await stop_dht_node(author)
            author = await _start(identity, [peers[0].info], seq_file, lambda: time.time() - LAG)
            try:
                await author.dht.put_record(b"name", b"v2", ttl=HOUR)
            finally:
                await stop_dht_node(author)
            record = await peers[1].dht.get_record(identity.public_key, b"name")
            return None if record is None else record.value
        finally:
            for p in peers:
                await stop_dht_node(p)

    return asyncio.run(asyncio.wait_for(main(), 30))


def test_a_restart_with_a_clock_behind_still_publishes_newer_versions(tmp_path: Path) -> None:
    seq_file = tmp_path / "dht-seq.json"
    assert _published_after_restart(tmp_path, seq_file) == b"v2"
    doc = json.loads(seq_file.read_text())
    assert doc["version"] == 1 and set(doc["seqs"]) == {b"name".hex()}


def test_without_the_file_the_new_version_is_refused_as_stale(tmp_path: Path) -> None:
    """The failure the file prevents: peers keep v1, whose seq came from a later clock."""
    assert _published_after_restart(tmp_path, None) == b"v1"


@settings(max_examples=examples(2), deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 2**40)), min_size=1, max_size=20))
def test_seq_only_grows_across_reloads(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[bool, int]]
) -> None:
    path = tmp_path_factory.mktemp("seq") / "dht-seq.json"
    seqs = SeqFile(path)
    last = -1
    for reload, now_ms in steps:
        if reload:
            seqs = SeqFile(path)
        seq = seqs.next(b"n", now_ms)
        assert seq > last and seq >= now_ms
        last = seq
    assert SeqFile(path).last(b"n") == last


def test_a_failed_write_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "dht-seq.json"
    seqs = SeqFile(path)
    assert seqs.next(b"n", 5) == 5
    (tmp_path / "dht-seq.json.tmp").mkdir()  # the temporary file cannot be written
    with pytest.raises(OSError):
        seqs.next(b"n", 9)
    with pytest.raises(OSError):
        seqs.next(b"m", 9)
    assert seqs.last(b"n") == 5 and seqs.last(b"m") is None
    assert SeqFile(path).last(b"n") == 5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "unreadable"),
        ('{"version": 2, "seqs": {}}', "not a version 1"),
        ('{"version": 1, "seqs": {"zz": 1}}', "unreadable"),
        ('{"version": 1, "seqs": {"6e": -1}}', "invalid"),
        ('{"version": 1, "seqs": {"6e": "7"}}', "invalid"),
    ],
)
def test_a_damaged_file_is_a_clear_error(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "dht-seq.json"
    path.write_text(text)
    with pytest.raises(SeqFileError, match=match):
        SeqFile(path)
