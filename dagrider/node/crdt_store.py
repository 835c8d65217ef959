"""The CRDT store's tables in the node's SQLite file.

Changes are kept in the order they were applied, which is always a causal order, so a
restart replays them without buffering; they are re-read without re-checking
signatures (they were verified on the way in and the file is the node's own).
Checkpoints are derived from the consensus log; ``scanned`` records how far the log has
been searched for them, so a crash between a commit and the checkpoint write is
repaired by rescanning from there.
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
"""


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """Checkpoint ``k``: the head set ``heads`` signed by ``signer`` at ``log_index``."""

    k: int
    log_index: int
    signer: bytes
    heads: tuple[bytes, ...]


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

    def add_checkpoint(self, row: CheckpointRow, scanned: int) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO crdt_checkpoints VALUES (?, ?, ?, ?)",
                (row.k, row.log_index, row.signer, b"".join(row.heads)),
            )
            self._set_scanned(scanned)

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
