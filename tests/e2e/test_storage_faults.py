"""End-to-end: a member whose storage fails or loses files.

* Its WAL deleted after a SIGKILL, or its database replaced by a database-only backup:
  the node must not send a second, different vertex or vote for a round it already
  acted in (peers would report "conflicting proposals"); it rejoins and orders, and
  no transaction is ordered twice: what the lost rounds may have proposed is held in
  doubt until they are decided (``dagrider/node/fence.py``). The backup case forces
  that: it always holds transactions the member proposed after the backup.
* Its disk full (a small tmpfs): it answers 507 and stops advancing; nothing it
  acknowledged is lost; once space returns it resumes by itself with no gap in its log.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e.helpers import assert_same_log, wait_for_logs

from dagrider.codec import Codec
from dagrider.committee import Committee
from dagrider.keygen import COMMITTEE_FILE
from dagrider.node.client import ApiError, full_log, submit_batch
from dagrider.node.cluster import LocalCluster
from dagrider.node.store import Store
from dagrider.params import Limits

pytestmark = pytest.mark.e2e


def _txs(tag: str, count: int, size: int = 64) -> list[bytes]:
    return [f"{tag}-{k}-".encode().ljust(size, b".") for k in range(count)]


RETRY_HANG_S = 60.0


def _submit_until_taken(api: str, batch: list[bytes]) -> None:
    """Submit ``batch``; on 507 or 429 (nothing was accepted) try again shortly."""
    give_up = time.monotonic() + RETRY_HANG_S  # hang limit only
    while True:
        try:
            submit_batch(api, batch)
            return
        except ApiError as exc:
            if exc.status not in (429, 507) or time.monotonic() > give_up:
                raise
        time.sleep(0.2)


def _load(
    cluster: LocalCluster,
    nodes: list[int],
    seconds: float,
    tag: str,
    by_node: dict[int, set[bytes]] | None = None,
) -> set[bytes]:
    """Submit batches of 20 round-robin for ``seconds``; what was sent (and, in
    ``by_node``, to whom). A batch refused as a whole (507: the store was busy, as when
    this test checkpoints the node's file from outside; 429) is sent again, as a client
    would."""
    sent: set[bytes] = set()
    deadline = time.monotonic() + seconds
    k = 0
    while time.monotonic() < deadline:
        batch = _txs(f"{tag}-{k}", 20)
        node = nodes[k % len(nodes)]
        _submit_until_taken(cluster.api_url(node), batch)
        sent |= set(batch)
        if by_node is not None:
            by_node.setdefault(node, set()).update(batch)
        k += 1
        time.sleep(0.05)
    return sent


def _metric(cluster: LocalCluster, i: int, name: str) -> float:
    with urllib.request.urlopen(f"{cluster.api_url(i)}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _logs_say(cluster: LocalCluster, nodes: list[int], text: str) -> list[int]:
    return [i for i in nodes if text in cluster.log_path(i).read_text(errors="replace")]


def _backup(db: Path, to: Path) -> None:
    """A consistent copy of the database as it is now, written by another connection
    (SQLite's backup API): a plain file copy could catch the node checkpointing its WAL
    into the file half-way (it does at every GC step) and restore a torn file."""
    with (
        contextlib.closing(sqlite3.connect(db)) as src,
        contextlib.closing(sqlite3.connect(to)) as dst,
    ):
        src.backup(dst)


def _pending_in(cluster: LocalCluster, db: Path, txs: list[bytes]) -> None:
    """Make ``txs`` pending in a backup file, as if it had been taken a moment later,
    just after the member accepted them (and before it proposed them)."""
    committee = Committee.load(cluster.committee_dir / COMMITTEE_FILE)
    store = Store(db, Codec(committee.n, Limits()), committee.committee_id, gc_depth=50)
    try:
        store.add_to_mempool(txs)
    finally:
        store.close()


@pytest.mark.parametrize("loss", ["wal-deleted", "database-only-backup"])
def test_a_member_that_lost_its_wal_never_equivocates(
    make_cluster: Callable[..., LocalCluster], loss: str
) -> None:
    import sqlite3

    cluster = make_cluster(4)
    cluster.wait_connected()
    db = cluster.data_dir(3) / "node.sqlite3"
    backup = db.with_name("backup.sqlite3")
    before = _load(cluster, [0, 1, 2, 3], 2.0, "before")
    # Move what the WAL holds into the main file now (another connection may), so the
    # file is a few rounds behind the node when it dies, not empty: then the restarted
    # node believes it is only a little behind and would propose at once.
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
    conn.close()
    if loss == "database-only-backup":
        _backup(db, backup)  # the database as it was, without what comes next
        # Pending in the backup, proposed by the member after it: what the member's
        # restored mempool offers again (this decided one run in six before).
        doubtful = _txs("in-doubt", 40)
        _submit_until_taken(cluster.api_url(3), doubtful)
        _pending_in(cluster, backup, doubtful)
        before |= set(doubtful)
    rnd = cluster.get_json(3, "/v1/status")["round"]
    # What member 3 accepts from here on lives only in the WAL this test deletes (in both
    # cases): unless it was proposed and delivered before the kill, it is gone with the
    # file (a loaded run lost the last batch, sent just before the kill, this way). So it
    # is not required, only never ordered twice.
    sent_to: dict[int, set[bytes]] = {}
    _load(cluster, [0, 1, 2, 3], 0.6, "after-checkpoint", sent_to)
    before |= sent_to[0] | sent_to[1] | sent_to[2]
    assert cluster.get_json(3, "/v1/status")["round"] > rnd  # it acted past the file
    cluster.kill(3)
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    if loss == "database-only-backup":
        shutil.copyfile(backup, db)
    cluster.start(3)
    cluster.wait_ready(60, nodes=[3])
    assert _logs_say(cluster, [3], "store is behind its fence"), "the loss went unnoticed"
    after = _load(cluster, [0, 1, 2, 3], 3.0, "after")
    logs = wait_for_logs(cluster, [0, 1, 2, 3], before | after, timeout=120)
    assert_same_log(logs)
    if loss == "database-only-backup":
        # The doubt settles once the member's GC floor passed its fence; the load
        # keeps rounds going until then (a hang limit, not a verdict). Then what it
        # put back is ordered, once.
        deadline = time.monotonic() + 90
        k = 0
        while not _logs_say(cluster, [3], "transactions in doubt settled"):
            assert time.monotonic() < deadline, "the doubt never settled"
            batch = _txs(f"settle-{k}", 5)
            _submit_until_taken(cluster.api_url(k % 4), batch)
            after |= set(batch)
            k += 1
            time.sleep(0.05)
        settled = [
            json.loads(line)
            for line in cluster.log_path(3).read_text(errors="replace").splitlines()
            if "transactions in doubt settled" in line
        ]
        assert settled[-1]["held"] >= len(doubtful), settled
        logs = wait_for_logs(cluster, [0, 1, 2, 3], before | after, timeout=120)
        assert_same_log(logs)
    assert cluster.get_json(3, "/v1/status")["round"] > rnd + 8  # it proposes again
    # No peer ever saw a second vertex or a second vote of member 3 for one slot.
    for text in ("conflicting proposals", "second VAL", "conflicting vote"):
        assert not _logs_say(cluster, [0, 1, 2], text), text


@pytest.fixture
def small_disk(tmp_path: Path) -> Callable[[Path, int], Path]:
    mounts: list[Path] = []

    def mount(where: Path, mib: int) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)], check=True
        )
        mounts.append(where)
        return where

    yield mount  # type: ignore[misc]
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_stops_the_member_and_it_resumes_without_a_gap(
    make_cluster: Callable[..., LocalCluster], small_disk: Callable[[Path, int], Path]
) -> None:
    cluster = make_cluster(4, start=False)
    data = small_disk(cluster.data_dir(3), 16)
    cluster.start_all()
    cluster.wait_ready(60)
    cluster.wait_connected()
    warm = _load(cluster, [0, 1, 2, 3], 1.0, "warm")
    wait_for_logs(cluster, [0, 1, 2, 3], warm)
    # Leave the member a few hundred KiB, then keep the committee busy with big batches.
    filler = data / "filler"
    free = shutil.disk_usage(data).free
    filler.write_bytes(b"\0" * max(0, free - 384 * 1024))
    acknowledged: set[bytes] = set(warm)
    refused = 0
    deadline = time.monotonic() + 60
    k = 0
    while _metric(cluster, 3, "dagrider_storage_writable") != 0:
        assert time.monotonic() < deadline, "the member never ran out of space"
        batch = _txs(f"fill-{k}", 200, size=512)
        k += 1
        try:
            submit_batch(cluster.api_url(k % 4), batch)
            acknowledged |= set(batch)
        except ApiError as exc:
            assert exc.status == 507 and "storage unavailable" in str(exc), exc
            refused += 1
        time.sleep(0.02)
    # While it is full: clear refusals, nothing half-accepted, the others keep ordering.
    with pytest.raises(ApiError) as info:
        submit_batch(cluster.api_url(3), _txs("refused", 5))
    assert info.value.status == 507
    assert "full" in str(info.value)
    for _ in range(3):
        batch = _txs(f"while-full-{k}", 50)
        k += 1
        submit_batch(cluster.api_url(k % 3), batch)
        acknowledged |= set(batch)
    assert cluster.alive(3)
    # Space returns: the member resumes by itself.
    filler.unlink()
    deadline = time.monotonic() + 60
    while _metric(cluster, 3, "dagrider_storage_writable") != 1:
        assert time.monotonic() < deadline, "the member did not resume"
        time.sleep(0.2)
    after = _load(cluster, [0, 1, 2, 3], 2.0, "after")
    logs = wait_for_logs(cluster, [0, 1, 2, 3], acknowledged | after, timeout=120)
    assert_same_log(logs)
    # No hole: the member's log is the whole log, position by position.
    indices = [e["index"] for e in full_log(cluster.api_url(3))]
    assert indices == list(range(len(indices)))
    assert len(indices) == len(full_log(cluster.api_url(0)))
    assert _logs_say(cluster, [3], "storage unavailable")
    assert not _logs_say(cluster, [3], "Traceback")


def _flip_log_row(db: Path, vertex_index: int | None = None) -> int:
    """Flip one byte of a committed log row's block (another connection, as bit rot
    would); returns the row's vertex index."""
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        if vertex_index is None:
            vertex_index = conn.execute("SELECT MIN(vertex_index) FROM log").fetchone()[0]
        (block,) = conn.execute(
            "SELECT block FROM log WHERE vertex_index = ?", (vertex_index,)
        ).fetchone()
        b = bytearray(block)
        b[-1] ^= 0x01
        conn.execute("UPDATE log SET block = ? WHERE vertex_index = ?", (bytes(b), vertex_index))
    finally:
        conn.close()
    assert vertex_index is not None
    return int(vertex_index)


def test_bit_rot_is_never_served_and_stops_the_member_with_exit_code_3(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(4)
    cluster.wait_connected()
    sent = _load(cluster, [0, 1, 2, 3], 1.0, "rot")
    wait_for_logs(cluster, [0, 1, 2, 3], sent)
    db = cluster.data_dir(3) / "node.sqlite3"
    # While it runs: the damaged row is refused, with its position, and the node stops.
    index = _flip_log_row(db)
    with pytest.raises(ApiError) as info:
        full_log(cluster.api_url(3))
    assert info.value.status == 500
    assert f"vertex index {index}" in str(info.value)
    proc = cluster.procs[3]
    assert proc.wait(30) == 3
    # At start-up: one clear line, exit code 3, before serving anything.
    cluster.start(3)
    assert cluster.procs[3].wait(30) == 3
    last = cluster.log_path(3).read_text().strip().splitlines()[-1]
    assert "damaged store" in last and f"vertex index {index}" in last, last
    # A garbled file: likewise.
    cluster.stop(3)
    data = bytearray(db.read_bytes())
    for k in range(4096, 4096 + 64):
        data[k] ^= 0xA5
    db.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    cluster.start(3)
    assert cluster.procs[3].wait(30) == 3
    last = cluster.log_path(3).read_text().strip().splitlines()[-1]
    assert "damaged store" in last, last
    # The others never noticed anything: they go on ordering.
    more = _load(cluster, [0, 1, 2], 1.0, "others")
    assert_same_log(wait_for_logs(cluster, [0, 1, 2], more))
