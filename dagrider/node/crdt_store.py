"""The CRDT store's tables in the node's SQLite file.

Changes are kept in the order they were applied, which is always a causal order, so a
restart replays them without buffering; they are re-read without re-checking
signatures (they were verified on the way in and the file is the node's own).
Checkpoints are derived from the consensus log; ``scanned`` records how far the log has
been searched for them, so a crash between a commit and the checkpoint write is
repaired by rescanning from there. Attestations of checkpoint digests (which make a
checkpoint final) come from the same transactions and are written with them.

Compaction replaces the changes below a final checkpoint by one snapshot row (the
encoded :class:`~crdt.snapshot.Snapshot`): the row is written and the changes it stands
for are deleted in one transaction, so a crash leaves either the old history or the
snapshot, never neither. Changes above the snapshot stay rows of ``crdt_changes``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS crdt_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    hash BLOB NOT NULL UNIQUE,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS crdt_checkpoints (
    k INTEGER PRIMARY KEY,
    log_index INTEGER NOT NULL UNIQUE,
    signer BLOB NOT NULL,
    heads BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS crdt_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS crdt_attestations (
    k INTEGER NOT NULL,
    signer BLOB NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (k, signer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS crdt_snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checkpoint INTEGER NOT NULL,
    digest BLOB NOT NULL,
    data BLOB NOT NULL
);
"""
_TABLES = ("crdt_changes", "crdt_checkpoints", "crdt_meta", "crdt_attestations", "crdt_snapshot")


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """Checkpoint ``k``: the head set ``heads`` signed by ``signer`` at ``log_index``."""

    k: int
    log_index: int
    signer: bytes
    heads: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AttestationRow:
    """``signer`` attested that checkpoint ``k``'s snapshot has digest ``digest``."""

    k: int
    signer: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """The stored compaction snapshot: checkpoint number, digest, encoded snapshot."""

    checkpoint: int
    digest: bytes
    data: bytes


class CrdtStore:
    """A second connection to the node's database, owning only the ``crdt_*`` tables."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add_changes(self, changes: Iterable[tuple[bytes, bytes]]) -> None:
        """Persist (hash, encoded) pairs in one transaction, in the order given."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO crdt_changes (hash, data) VALUES (?, ?)", changes
            )

    def changes(self) -> Iterator[bytes]:
        """Every stored change in applied order."""
        for (data,) in self._db.execute("SELECT data FROM crdt_changes ORDER BY seq"):
            yield bytes(data)

    def add_checkpoint(
        self, row: CheckpointRow | None, scanned: int, attestations: Iterable[AttestationRow] = ()
    ) -> None:
        """Record what one checkpoint transaction brought (a new checkpoint, attestations;
        the first per (k, signer) counts) and the scan position, in one transaction."""
        with self._transaction():
            if row is not None:
                self._db.execute(
                    "INSERT OR IGNORE INTO crdt_checkpoints VALUES (?, ?, ?, ?)",
                    (row.k, row.log_index, row.signer, b"".join(row.heads)),
                )
            self._db.executemany(
                "INSERT OR IGNORE INTO crdt_attestations VALUES (?, ?, ?)",
                ((r.k, r.signer, r.digest) for r in attestations),
            )
            self._set_scanned(scanned)

    def attestations(self) -> list[AttestationRow]:
        rows = self._db.execute("SELECT k, signer, digest FROM crdt_attestations ORDER BY k")
        return [AttestationRow(k, bytes(signer), bytes(digest)) for k, signer, digest in rows]

    def save_snapshot(
        self,
        snapshot: SnapshotRow,
        drop: Iterable[bytes],
        add: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """In one transaction: store ``snapshot`` (replacing any older one), delete the
        changes ``drop`` it stands for, and append the changes ``add`` (hash, encoded)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO crdt_snapshot VALUES (1, ?, ?, ?)",
                (snapshot.checkpoint, snapshot.digest, snapshot.data),
            )
            self._db.executemany("DELETE FROM crdt_changes WHERE hash = ?", ((h,) for h in drop))
            self._db.executemany(
                "INSERT OR IGNORE INTO crdt_changes (hash, data) VALUES (?, ?)", add
            )

    def snapshot(self) -> SnapshotRow | None:
        row = self._db.execute(
            "SELECT checkpoint, digest, data FROM crdt_snapshot WHERE id = 1"
        ).fetchone()
        return None if row is None else SnapshotRow(int(row[0]), bytes(row[1]), bytes(row[2]))

    def stored_bytes(self) -> int:
        """Bytes of database pages the CRDT tables and their indexes use (or, where SQLite
        lacks the ``dbstat`` table, the bytes of their stored blobs)."""
        names = ", ".join(f"'{t}'" for t in _TABLES)
        try:
            row = self._db.execute(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                f"(SELECT name FROM sqlite_schema WHERE tbl_name IN ({names}))"
            ).fetchone()
            return int(row[0] or 0)
        except sqlite3.OperationalError:
            pass
        total = 0
        for query in (
            "SELECT SUM(LENGTH(hash) + LENGTH(data)) FROM crdt_changes",
            "SELECT SUM(LENGTH(data)) FROM crdt_snapshot",
            "SELECT SUM(LENGTH(heads)) FROM crdt_checkpoints",
            "SELECT SUM(LENGTH(signer) + LENGTH(digest)) FROM crdt_attestations",
        ):
            total += int(self._db.execute(query).fetchone()[0] or 0)
        return total

    def set_scanned(self, scanned: int) -> None:
        with self._transaction():
            self._set_scanned(scanned)

    def _set_scanned(self, scanned: int) -> None:
        self._db.execute(
            "INSERT INTO crdt_meta VALUES ('scanned', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
            (scanned,),
        )

    def scanned(self) -> int:
        """The highest log index already searched for checkpoints (-1: none)."""
        row = self._db.execute("SELECT value FROM crdt_meta WHERE key = 'scanned'").fetchone()
        return -1 if row is None else int(row[0])

    def checkpoints(self) -> list[CheckpointRow]:
        rows = self._db.execute(
            "SELECT k, log_index, signer, heads FROM crdt_checkpoints ORDER BY k"
        )
        return [
            CheckpointRow(
                k,
                log_index,
                bytes(signer),
                tuple(heads[i : i + 32] for i in range(0, len(heads), 32)),
            )
            for k, log_index, signer, heads in rows
        ]

    def _transaction(self) -> _Txn:
        return _Txn(self._db)


class _Txn:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
