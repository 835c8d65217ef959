"""The node's SQLite store (WAL): everything a restart needs, written before it matters.

One store transaction per batch of effects, committed *before* the batch's messages are
handed to the transport: a vote (ECHO/READY) that left the node is always on disk, so a
restarted node can never send a conflicting one. Tables:

* ``vertices``: delivered vertices (the DAG above the GC floor), in delivery order;
* ``votes``: the ECHO/READY this node sent, one per (kind, source, round);
* ``own``: this node's proposals (re-used, never re-created, after a restart);
* ``coin_shares``: shares received from peers that the process accepted (its window:
  waves not yet decided, up to ``future_rounds`` above proven progress);
* ``log``: the committed log, one row per ordered vertex with transactions (its first
  global transaction index, its block), and ``tx_ids``: an 8-byte id prefix -> global
  index table for lookups. One row per vertex instead of per transaction was the
  difference between the store and consensus being the bottleneck (profiled: per-row
  inserts with a random 32-byte index took 45 % of a loaded node's time);
* ``mempool_batches``: accepted client transactions not yet proposed, one row per
  ingest batch (its records as the client sent them and its ids), and
  ``mempool_head``: how many of a batch a proposal already took (proposals take
  from the front; a row per partly taken batch); ``mempool`` is the older
  per-transaction table, moved into a batch when the mempool is loaded;
* ``mempool_doubt``: transactions a restart behind its fence found pending, held out
  of the mempool until it is known which of them the lost rounds proposed (the
  window in meta ``doubt``; see :class:`dagrider.node.fence.Doubt`);
* ``meta``: the ordering snapshot that matches the log (with the log's hash chain);
  ``flushes``, the count of batches applied (raised in each batch's transaction), and
  ``fenced_through``, the rounds fenced for good after a restart found sent writes
  lost (see :func:`dagrider.persistence.restart_from`);
* ``checkpoints``: the ordering state at each recent checkpoint position and, once f+1
  members signed it, its certificate (see :mod:`dagrider.checkpoint`).

What a batch writes and what a GC step deletes is decided by
:func:`dagrider.persistence.write_set`, the projection the simulator and the tests use
too (the rules and why are in :mod:`dagrider.persistence`): rows below the GC floor go
as the floor rises, vertices and READY votes only ``retain_rounds`` below it, to serve
catch-up. This module turns a write set into SQL. The log is kept in full unless
``keep_log_entries`` is set: then each GC step also deletes the log rows (and their
``tx_ids``) before the last ``keep_log_entries`` transactions, whole rows at a time, in
the same transaction; :meth:`Store.first_log_index` says where the log now starts.
Certificates outlive the rows they certify (see :meth:`Store._prune_checkpoints`).

Space: a new file uses ``auto_vacuum = INCREMENTAL``, and a GC step that leaves many
free pages returns some of them to the file system (``PRAGMA incremental_vacuum``); an
older file is converted with one ``VACUUM`` when it opens if it is small
(``VACUUM_ON_OPEN_MAX_BYTES``), otherwise it keeps its size (freed pages are reused,
the file does not shrink). Each GC step ends with ``wal_checkpoint(TRUNCATE)``, so the
WAL holds at most what was written since the previous step.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import assert_never

import msgpack

from crdt.checkpoint import is_checkpoint
from dagrider.checkpoint import CHAIN_GENESIS, Certificate, chain_next, entry_hash, pack_block
from dagrider.codec import Codec, encode
from dagrider.coin import CoinShare
from dagrider.effects import Commit, Effect, Requeued
from dagrider.errors import DecodeError
from dagrider.messages import CoinShareMsg, Echo, Ready, Val, Vertex
from dagrider.node.batch import (
    ID_BYTES,
    BatchError,
    batch_ids,
    encode_batch,
    parse_batch,
    split_ids,
)
from dagrider.node.fence import Doubt
from dagrider.node.service import StorageCorrupt, StorageUnavailable
from dagrider.ordering import OrderingState
from dagrider.persistence import (
    GcRules,
    GcStep,
    TakeFromMempool,
    WriteSet,
    gc_floor,
    write_set,
)
from dagrider.process import Recovery
from dagrider.statesync import CertificateOffer, pack_ordering, unpack_ordering
from dagrider.statesync import LogRow as SyncRow
from dagrider.statesync import decode as decode_state
from dagrider.statesync import encode as encode_state

SCHEMA_VERSION = 3
"""3: every row a restart or a reader trusts carries its hash (``log.entry``,
``own.digest``, ``votes.sum``, meta ``ordering_sum``), and each log row the log's hash
chain after it (``log.chain``: what a peer fetching a range from this store anchors
it on); a version-2 file is upgraded in place when it opens (:meth:`Store._upgrade`)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vertices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    digest BLOB NOT NULL UNIQUE, round INTEGER NOT NULL, source INTEGER NOT NULL,
    body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS vertices_round ON vertices(round);
CREATE TABLE IF NOT EXISTS votes (
    kind INTEGER NOT NULL, round INTEGER NOT NULL, source INTEGER NOT NULL,
    digest BLOB NOT NULL, sum BLOB, PRIMARY KEY (kind, round, source));
CREATE TABLE IF NOT EXISTS own (round INTEGER PRIMARY KEY, body BLOB NOT NULL, digest BLOB);
CREATE TABLE IF NOT EXISTS coin_shares (
    wave INTEGER NOT NULL, signer INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (wave, signer));
CREATE TABLE IF NOT EXISTS log (
    vertex_index INTEGER PRIMARY KEY, tx_index INTEGER NOT NULL UNIQUE,
    count INTEGER NOT NULL, round INTEGER NOT NULL, source INTEGER NOT NULL,
    wave INTEGER NOT NULL, committed_at REAL NOT NULL, block BLOB NOT NULL, entry BLOB,
    chain BLOB);
CREATE TABLE IF NOT EXISTS tx_ids (prefix INTEGER PRIMARY KEY, tx_index INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tx_index (
    part INTEGER NOT NULL, prefix INTEGER NOT NULL, tx_index INTEGER NOT NULL,
    PRIMARY KEY (part, prefix)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mempool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tx_id BLOB NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS mempool_tx_id ON mempool(tx_id);
CREATE TABLE IF NOT EXISTS mempool_batches (
    seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, ids BLOB NOT NULL, records BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS mempool_head (seq INTEGER PRIMARY KEY, taken INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mempool_doubt (
    seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, ids BLOB NOT NULL, records BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS staged_segments (
    first INTEGER PRIMARY KEY, until INTEGER NOT NULL, start_chain BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS staged_rows (
    vertex_index INTEGER PRIMARY KEY, tx_index INTEGER NOT NULL, round INTEGER NOT NULL,
    source INTEGER NOT NULL, wave INTEGER NOT NULL, block BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    idx INTEGER PRIMARY KEY, state BLOB NOT NULL, certificate BLOB);
"""
CHECKPOINTS_KEPT = 8  # own checkpoint states (and certificates) kept to serve peers
CERTIFICATES_KEPT = 256
"""Once the log is pruned, certified checkpoints at or above its first row are kept too
(the newest this many): each anchors the hash chain where the kept log begins."""
PRUNE_STEP_TXS = 200_000
PRUNE_STEP_BYTES = 64 * 1024 * 1024
"""At most this many transactions (and about this many bytes of blocks) are pruned per
GC step: a large backlog, e.g. when retention is first enabled on a long log, is worked
off over several steps instead of stalling the node in one."""
VACUUM_MIN_FREE_PAGES = 4096
"""A GC step vacuums once this many pages (and 1/8 of the file) are free; fewer are
simply reused by the next inserts."""
VACUUM_STEP_PAGES = 4096  # pages returned to the file system per GC step at most
VACUUM_ON_OPEN_MAX_BYTES = 64 * 1024 * 1024
"""An existing file without incremental auto-vacuum is converted (one ``VACUUM``) when it
opens only up to this size; a larger one is left as it is."""
TAIL_CHECK_MAX_ROWS = 4096
"""Without a checkpoint to anchor on, a log of at most this many rows is checked whole at
start-up; a longer one is checked as it is read."""
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # journal_size_limit: the WAL file is cut back to this
KNOWN_IDS_MAX = 4096  # own vertices whose ids wait for their commit
_ID_PREFIX = struct.Struct(">q24x")  # the tx_ids key: an id's first 8 bytes, signed
TX_PART_BITS = 18
"""``tx_index`` is partitioned by global transaction index, 2^18 per partition: new ids
all go into the newest partition, a B-tree small enough that a commit dirties (and the
WAL rewrites) a bounded number of pages. One table keyed by id alone cost ~9 µs per
transaction at a million entries (every insert a random page; measured), against ~1-2
µs here; a lookup probes each partition (a few µs apiece)."""
_BUSY_TIMEOUT_MS = 5000  # sqlite3.connect's default

log = logging.getLogger(__name__)

_ECHO, _READY = 1, 2

_UNAVAILABLE = (
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_READONLY",
    "SQLITE_PROTOCOL",
    "SQLITE_NOMEM",
)
_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_FORMAT")


def storage_error(exc: sqlite3.Error, what: str) -> Exception:
    """Classify a SQLite failure: a full or failing disk is transient (the node waits
    and retries), a damaged file is not (the node stops, exit code 3)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(_CORRUPT):
        return StorageCorrupt(f"{what}: the database file is damaged ({exc})")
    if name.startswith(_UNAVAILABLE) or isinstance(exc, sqlite3.OperationalError):
        return StorageUnavailable(f"{what}: {exc}")
    if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
        return StorageCorrupt(f"{what}: the database file is damaged ({exc})")
    return StorageUnavailable(f"{what}: {exc}")


def vote_sum(kind: int, rnd: int, source: int, digest: bytes) -> bytes:
    """8-byte check of one stored vote: a flipped bit must not become a second vote."""
    body = kind.to_bytes(1, "big") + rnd.to_bytes(8, "big") + source.to_bytes(4, "big") + digest
    return hashlib.blake2b(body, digest_size=8, person=b"dagrider/vote").digest()


def _blob_sum(b: bytes) -> bytes:
    return hashlib.blake2b(b, digest_size=16, person=b"dagrider/meta").digest()


def tx_digest(data: bytes) -> bytes:
    """A transaction's id: BLAKE2b-256 of its bytes (the API shows it in hex)."""
    return hashlib.blake2b(data, digest_size=32).digest()


@dataclass(frozen=True)
class LogRow:
    index: int
    tx_id: bytes
    data: bytes
    round: int
    source: int
    wave: int
    committed_at: float


class StoreError(Exception):
    """The data directory or database cannot be used (wrong committee, newer schema...)."""


class Store:
    """One SQLite file per node. Not thread-safe: the node's event loop owns it."""

    def __init__(
        self,
        path: Path,
        codec: Codec,
        committee_id: bytes,
        gc_depth: int,
        fsync: bool = False,
        retain_rounds: int = 2_000,
        keep_log_entries: int = 0,
    ) -> None:
        if keep_log_entries < 0:
            raise ValueError(f"keep_log_entries must be >= 0, got {keep_log_entries}")
        self.path = path
        self.codec = codec
        self.gc_depth = gc_depth
        self.retain_rounds = retain_rounds  # kept below the GC floor to serve catch-up
        self.keep_log_entries = keep_log_entries  # 0: keep the whole log
        self.vacuum_min_free_pages = VACUUM_MIN_FREE_PAGES
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._open(committee_id, fsync)
        except sqlite3.Error as exc:
            self._db.close()
            raise storage_error(exc, f"opening {path}") from exc

    def _open(self, committee_id: bytes, fsync: bool) -> None:
        # Only takes effect on a new file (before its first table); see _incremental().
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        # Checkpoint (and fsync) every ~64 MiB of WAL rather than every 4 MiB.
        self._db.execute("PRAGMA wal_autocheckpoint=16384")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # NORMAL survives a process crash (SIGKILL); FULL also survives power loss.
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._check_structure()
        self._db.executescript(_SCHEMA)
        self._check_identity(committee_id)
        self.incremental_vacuum = self._incremental()
        self.floor = 0
        row = self._db.execute("SELECT value FROM meta WHERE key='crdt_cut'").fetchone()
        # Digest of the last CRDT checkpoint transaction in the log (zeros: none yet):
        # the CRDT cut a consensus checkpoint vouches for, the same on every node.
        self.crdt_cut = bytes(row[0]) if row else bytes(32)
        self.crdt_cut_at: dict[int, bytes] = {}  # checkpoint position -> cut in force
        self.known_ids: dict[bytes, bytes] = {}  # vertex digest -> ids (remember_ids)
        # Batches applied, and the rounds fenced after a loss: see restart_from in
        # dagrider.persistence (the fence file records the count of the last sent flush).
        self.flushes = self._meta_int("flushes")
        self.fenced_through = self._meta_int("fenced_through")

    def _meta_int(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            return 0
        if type(row[0]) is not int or row[0] < 0:
            raise StorageCorrupt(f"meta {key!r} is not a count ({row[0]!r:.40}): damaged store")
        return int(row[0])

    def mark_lost(self, fenced_through: int, flushes: int) -> None:
        """A restart found sent writes lost (:func:`dagrider.persistence.restart_from`):
        remember the fence for every later restart, and count on from the last flush
        that was sent, in one transaction."""
        through = max(self.fenced_through, fenced_through)
        count = max(self.flushes, flushes)
        db = self._db
        try:
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("fenced_through", through), ("flushes", count)],
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise storage_error(exc, "recording the fence") from exc
        self.fenced_through, self.flushes = through, count

    @property
    def rules(self) -> GcRules:
        """What GC may drop, and when (:mod:`dagrider.persistence`, shared with the
        simulator and the tests)."""
        return GcRules(self.gc_depth, self.retain_rounds)

    def close(self) -> None:
        self._db.close()

    def _check_structure(self) -> None:
        """SQLite's own page-level check (``quick_check``: every page, no index
        cross-check), so a truncated or garbled file stops the node at start-up with
        the reason instead of failing at some later read. Row contents are checked
        against their hashes separately (a flipped byte inside a value is invisible
        here)."""
        rows = self._db.execute("PRAGMA quick_check(3)").fetchall()
        problems = [" ".join(str(r[0]).split()) for r in rows]  # one line each
        if problems != ["ok"]:
            raise StorageCorrupt(f"{self.path} is damaged: {'; '.join(problems)[:300]}")

    def _incremental(self) -> bool:
        """Whether the file can give freed pages back; converts a small older file."""
        db = self._db
        if int(db.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
            return True
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        size = pages * int(db.execute("PRAGMA page_size").fetchone()[0])
        if size > VACUUM_ON_OPEN_MAX_BYTES:
            log.warning(
                "%s (%d bytes) predates incremental auto-vacuum: pages freed by GC and log "
                "pruning are reused but the file will not shrink; to convert it, stop the "
                "node and run: sqlite3 %s 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'",
                self.path,
                size,
                self.path,
            )
            return False
        db.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
        converted = int(db.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2
        if converted:
            log.info("%s converted to incremental auto-vacuum (%d bytes)", self.path, size)
        return converted

    def _check_identity(self, committee_id: bytes) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='committee'").fetchone()
        version = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('committee', ?)", (committee_id,))
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            return
        if bytes(row[0]) != committee_id:
            raise StoreError(f"{self.path} belongs to another committee ({bytes(row[0]).hex()})")
        have = 1 if version is None else int(version[0])
        if have == 2:
            self._upgrade()
        elif have != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema {have}, this node needs {SCHEMA_VERSION}")

    def _upgrade(self) -> None:
        """Schema 2 -> 3: add the per-row hashes and fill them from the rows as they are
        (a row already damaged stays undetected, as it was; every later write is covered)."""
        db = self._db
        db.execute("BEGIN")
        try:
            for table, column in (
                ("log", "entry"),
                ("log", "chain"),
                ("own", "digest"),
                ("votes", "sum"),
            ):
                names = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                if column not in names:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} BLOB")
            rows = db.execute(
                "SELECT vertex_index, tx_index, round, source, wave, block FROM log"
            ).fetchall()
            db.executemany(
                "UPDATE log SET entry = ? WHERE vertex_index = ?",
                [(entry_hash(i, t, r, s, w, bytes(b)), i) for i, t, r, s, w, b in rows],
            )
            self._upgrade_chain()
            own = db.execute("SELECT round, body FROM own").fetchall()
            db.executemany(
                "UPDATE own SET digest = ? WHERE round = ?",
                [(_val(self.codec.decode(bytes(b))).digest, r) for r, b in own],
            )
            votes = db.execute("SELECT kind, round, source, digest FROM votes").fetchall()
            db.executemany(
                "UPDATE votes SET sum = ? WHERE kind = ? AND round = ? AND source = ?",
                [(vote_sum(k, r, s, bytes(d)), k, r, s) for k, r, s, d in votes],
            )
            row = db.execute("SELECT value FROM meta WHERE key='ordering'").fetchone()
            if row is not None:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('ordering_sum', ?)",
                    (_blob_sum(bytes(row[0])),),
                )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        log.info("%s upgraded to schema %d (%d log rows)", self.path, SCHEMA_VERSION, len(rows))

    def _upgrade_chain(self) -> None:
        """Fill ``log.chain`` from where the chain is known: genesis for a whole log, or
        a checkpoint at or above the first row of a pruned one (rows before it keep no
        chain value; a peer asking for them is told they are pruned)."""
        db = self._db
        start, chain = 0, CHAIN_GENESIS
        if self.first_log_index() > 0:
            first = db.execute("SELECT MIN(vertex_index) FROM log").fetchone()[0]
            row = db.execute(
                "SELECT idx, state FROM checkpoints WHERE idx >= ? ORDER BY idx LIMIT 1",
                (first,),
            ).fetchone()
            if row is None:
                return
            start, chain = int(row[0]), _unpack_ordering(bytes(row[1])).chain
        updates: list[tuple[bytes, int]] = []
        for index, entry in db.execute(
            "SELECT vertex_index, entry FROM log WHERE vertex_index >= ? ORDER BY vertex_index",
            (start,),
        ).fetchall():
            chain = chain_next(chain, bytes(entry))
            updates.append((chain, index))
        db.executemany("UPDATE log SET chain = ? WHERE vertex_index = ?", updates)

    def _chain_at(self, index: int) -> bytes | None:
        """The log's hash chain before vertex index ``index`` (over the rows below it),
        or None if this store cannot say (those rows were pruned)."""
        db = self._db
        row = db.execute(
            "SELECT chain FROM log WHERE vertex_index < ? ORDER BY vertex_index DESC LIMIT 1",
            (index,),
        ).fetchone()
        if row is not None:
            return None if row[0] is None else bytes(row[0])
        if self.first_log_index() == 0:
            return CHAIN_GENESIS  # nothing below: the log starts here
        cp = db.execute("SELECT state FROM checkpoints WHERE idx = ?", (index,)).fetchone()
        return None if cp is None else _unpack_ordering(bytes(cp[0])).chain

    def _chain_before_commit(self, index: int) -> bytes | None:
        """The chain before a new commit at ``index``: the last row's, or the stored
        ordering state's (it describes the log up to the previous commit)."""
        chain = self._chain_at(index)
        if chain is None:
            state = self.ordering_state()
            if state is not None and state.next_index <= index:
                chain = state.chain
        return chain

    def _rollback(self) -> None:
        """Roll back if a transaction is still open (SQLite ends some on its own, e.g.
        after SQLITE_FULL) without masking the error that got us here."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    # -- writes -------------------------------------------------------------------------

    def apply(
        self,
        effects: Sequence[Effect],
        ordering: OrderingState | None,
        received_shares: Iterable[CoinShare],
        now: float,
    ) -> None:
        """Persist one batch of effects atomically (call before sending its messages).

        What to write and what to drop is decided by :func:`dagrider.persistence.write_set`
        (the rules the simulator and the tests use too); this method only turns it into
        SQL, in one transaction.

        Raises :class:`StorageUnavailable` (disk full, I/O error) or
        :class:`StorageCorrupt`; then nothing of the batch was written and the store's
        in-memory view is as before, so the caller can keep the batch and retry it."""
        db = self._db
        ws = write_set(effects, ordering, received_shares, self.rules, self.floor)
        saved = (self.crdt_cut, dict(self.crdt_cut_at))
        try:
            db.execute("BEGIN")
            self._write(ws, now)
            if ws.ordering is not None:
                self._put_ordering(ws.ordering)
            if ws.gc is not None:
                self._gc(ws.gc)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('flushes', ?)", (self.flushes + 1,))
            db.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            self.crdt_cut, self.crdt_cut_at = saved
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, "writing to the store") from exc
            raise
        self.flushes += 1
        if ws.gc is not None:
            self.floor = ws.gc.floor
            try:
                self._compact()
            except sqlite3.Error as exc:  # housekeeping only: the batch is on disk
                log.warning("store compaction failed: %s", exc)

    def _put_ordering(self, ordering: OrderingState) -> None:
        packed = _pack_ordering(ordering)
        self._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("ordering", packed), ("ordering_sum", _blob_sum(packed))],
        )

    def _write(self, ws: WriteSet, now: float) -> None:
        """The rows of one write set, a few ``executemany`` per batch."""
        db = self._db
        if ws.votes:
            db.executemany(
                "INSERT OR IGNORE INTO votes VALUES (?,?,?,?,?)",
                [
                    (k, m.round, m.source, m.digest, vote_sum(k, *_slot(m)))
                    for m in ws.votes
                    for k in (_ECHO if type(m) is Echo else _READY,)
                ],
            )
        if ws.delivered:
            db.executemany(
                "INSERT OR IGNORE INTO vertices(digest, round, source, body) VALUES (?,?,?,?)",
                [(v.digest, v.round, v.source, encode(Val(v))) for v in ws.delivered],
            )
        if ws.own:
            db.executemany(
                "INSERT OR IGNORE INTO own VALUES (?, ?, ?)",
                [(v.round, encode(Val(v)), v.digest) for v in ws.own],
            )
        for op in ws.mempool:
            match op:
                case TakeFromMempool(count):
                    self._take_from_mempool(count)
                case Requeued(txs):
                    self._requeue(txs)
                case _:
                    assert_never(op)
        cut_before = self.crdt_cut
        cuts = self._write_log(ws.commits, now) if ws.commits else []
        for state in ws.checkpoints:
            # The CRDT cut in force at the checkpoint: after the batch's last commit
            # below its position (the wave it ends), else the one before the batch.
            at = bisect.bisect_right(cuts, state.next_index, key=lambda c: c[0])
            self.crdt_cut_at[state.next_index] = cuts[at - 1][1] if at else cut_before
            self.save_checkpoint(state)
        rows = [(s.wave, s.signer, encode(CoinShareMsg(s))) for s in ws.coin_shares]
        if rows:
            db.executemany("INSERT OR IGNORE INTO coin_shares VALUES (?,?,?)", rows)

    def _write_log(self, commits: Sequence[Commit], now: float) -> list[tuple[int, bytes]]:
        """Log rows (hash-chained) and their ``tx_index`` entries for a batch's commits;
        returns, per commit, the position after it and the CRDT cut in force there."""
        db = self._db
        cuts: list[tuple[int, bytes]] = []
        log_rows: list[tuple[int, int, int, int, int, int, float, bytes, bytes, bytes | None]] = []
        id_rows: list[tuple[int, int, int]] = []
        chain: bytes | None = None
        chain_known = False
        for e in commits:
            v = e.vertex
            if not v.block:
                cuts.append((e.index + 1, self.crdt_cut))
                continue
            for tx in v.block:
                if is_checkpoint(tx):
                    self.crdt_cut = hashlib.blake2b(tx, digest_size=32).digest()
                    db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('crdt_cut', ?)", (self.crdt_cut,)
                    )
            cuts.append((e.index + 1, self.crdt_cut))
            block = e.packed or pack_block(v.block)
            entry = entry_hash(e.index, e.tx_index, v.round, v.source, e.wave, block)
            if not chain_known:
                chain, chain_known = self._chain_before_commit(e.index), True
            chain = None if chain is None else chain_next(chain, entry)
            log_rows.append(
                (
                    e.index,
                    e.tx_index,
                    len(v.block),
                    v.round,
                    v.source,
                    e.wave,
                    now,
                    block,
                    entry,
                    chain,
                )
            )
            id_rows += self._id_rows(v, e.tx_index)
        if log_rows:
            db.executemany("INSERT OR IGNORE INTO log VALUES (?,?,?,?,?,?,?,?,?,?)", log_rows)
            id_rows.sort()  # in key order: one pass down the partition being filled
            db.executemany("INSERT OR IGNORE INTO tx_index VALUES (?,?,?)", id_rows)
        return cuts

    def _gc(self, step: GcStep) -> None:
        """Delete what :func:`dagrider.persistence.write_set` says may go (the rules and
        why are in :mod:`dagrider.persistence`): own proposals and ECHO votes below the
        floor, vertices and READY votes ``retain_rounds`` below it (catch-up serves
        them), coin shares of decided waves. With ``keep_log_entries``, the log before
        the last that-many transactions goes in the same step.
        """
        db = self._db
        db.execute("DELETE FROM vertices WHERE round < ?", (step.keep,))
        db.execute("DELETE FROM votes WHERE kind = ? AND round < ?", (_ECHO, step.floor))
        db.execute("DELETE FROM votes WHERE kind = ? AND round < ?", (_READY, step.keep))
        db.execute("DELETE FROM own WHERE round < ?", (step.floor,))
        db.execute("DELETE FROM coin_shares WHERE wave < ?", (step.next_wave,))
        if self._prune_log():
            self._prune_checkpoints()

    def _prune_log(self) -> bool:
        """Delete the log rows (and their ``tx_ids``) wholly before the last
        ``keep_log_entries`` transactions; the row holding the oldest kept transaction
        stays whole, so a little more than asked is kept. Whether rows went."""
        if self.keep_log_entries <= 0:
            return False
        db = self._db
        row = db.execute(
            "SELECT tx_index + count FROM log ORDER BY tx_index DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return False
        first = self.first_log_index()
        target = min(int(row[0]) - self.keep_log_entries, first + PRUNE_STEP_TXS)
        if target <= first:
            return False
        cut = db.execute(
            "SELECT vertex_index, tx_index FROM log WHERE tx_index <= ? "
            "ORDER BY tx_index DESC LIMIT 1",
            (target,),
        ).fetchone()
        if cut is None or int(cut[1]) <= first:
            return False
        # tx_ids has no index on tx_index: delete by prefix, recomputed from the blocks
        # (work in proportion to what is pruned, not to what is kept). A prefix that now
        # points elsewhere (a collision, a later duplicate) is left alone.
        stop, size = int(cut[0]), 0
        gone: list[tuple[int, int]] = []
        rows = db.execute(
            "SELECT vertex_index, tx_index, block FROM log WHERE vertex_index < ? "
            "ORDER BY vertex_index",
            (stop,),
        )
        for vertex_index, start, block in rows:
            if size >= PRUNE_STEP_BYTES:
                stop = int(vertex_index)
                break
            size += len(block)
            gone += [(_prefix(tx), start + k) for k, tx in enumerate(msgpack.unpackb(block))]
        rows.close()
        db.executemany("DELETE FROM tx_ids WHERE prefix = ? AND tx_index = ?", gone)
        db.execute("DELETE FROM log WHERE vertex_index < ?", (stop,))
        self._prune_tx_index()
        return True

    def _prune_tx_index(self) -> None:
        """Drop the ``tx_index`` partitions wholly before the first kept transaction (a
        partially pruned one stays: a lookup that lands there finds no log row)."""
        self._db.execute(
            "DELETE FROM tx_index WHERE part < ?", (self.first_log_index() >> TX_PART_BITS,)
        )

    def _compact(self) -> None:
        """After a GC step: give free pages back if many, and empty the WAL."""
        db = self._db
        if self.incremental_vacuum:
            free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
            pages = int(db.execute("PRAGMA page_count").fetchone()[0])
            if free >= max(self.vacuum_min_free_pages, pages // 8):
                # executescript: a plain execute() steps the pragma once (one page).
                db.executescript(f"PRAGMA incremental_vacuum({min(free, VACUUM_STEP_PAGES)});")
        # TRUNCATE waits for readers of the WAL (the CRDT store's connection shares the
        # file and this thread): never wait, a later step will manage.
        db.execute("PRAGMA busy_timeout=0")
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")

    # -- checkpoints and state transfer -------------------------------------------------

    def save_checkpoint(self, state: OrderingState) -> None:
        """Keep the ordering state at a checkpoint position (to serve it once certified)."""
        db = self._db
        db.execute(
            "INSERT OR IGNORE INTO checkpoints(idx, state) VALUES (?, ?)",
            (state.next_index, _pack_ordering(state)),
        )
        self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        """Keep the newest ``CHECKPOINTS_KEPT`` rows, the newest certificate whatever its
        age, and, when the log is (to be) pruned, the newest ``CERTIFICATES_KEPT``
        certificates at or above the first kept log row (each certifies the chain at a
        position from which the kept log can be served)."""
        pruning = self.keep_log_entries > 0 or self.first_log_index() > 0
        start = self._db.execute("SELECT MIN(vertex_index) FROM log").fetchone()[0]
        self._db.execute(
            "DELETE FROM checkpoints WHERE "
            "idx NOT IN (SELECT idx FROM checkpoints ORDER BY idx DESC LIMIT ?) "
            "AND idx NOT IN (SELECT idx FROM checkpoints WHERE certificate IS NOT NULL "
            "ORDER BY idx DESC LIMIT 1) "
            "AND idx NOT IN (SELECT idx FROM checkpoints WHERE certificate IS NOT NULL "
            "AND idx >= ? ORDER BY idx DESC LIMIT ?)",
            (CHECKPOINTS_KEPT, start or 0, CERTIFICATES_KEPT if pruning else 0),
        )

    def save_certificate(self, cert: Certificate, state: OrderingState | None = None) -> None:
        """Persist a certificate (and the state it certifies, if we did not reach it)."""
        idx = cert.checkpoint.index
        db = self._db
        if state is not None:
            db.execute(
                "INSERT OR IGNORE INTO checkpoints(idx, state) VALUES (?, ?)",
                (idx, _pack_ordering(state)),
            )
        db.execute(
            "UPDATE checkpoints SET certificate = ? WHERE idx = ?", (_pack_certificate(cert), idx)
        )

    def latest_certificate(self) -> tuple[Certificate, OrderingState] | None:
        """The newest certified checkpoint we hold with its ordering state."""
        row = self._db.execute(
            "SELECT certificate, state FROM checkpoints WHERE certificate IS NOT NULL "
            "ORDER BY idx DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return _unpack_certificate(bytes(row[0])), _unpack_ordering(bytes(row[1]))

    def stage(self, first: int, until: int, start_chain: bytes, rows: Sequence[SyncRow]) -> None:
        """Keep a verified segment of a state transfer, so that a transfer cut short
        (a restart, every peer gone) resumes without fetching it again."""
        db = self._db
        try:
            db.execute("BEGIN")
            db.execute(
                "DELETE FROM staged_rows WHERE vertex_index >= ? AND vertex_index < ?",
                (first, until),
            )
            db.execute(
                "INSERT OR REPLACE INTO staged_segments VALUES (?, ?, ?)",
                (first, until, start_chain),
            )
            db.executemany(
                "INSERT OR REPLACE INTO staged_rows VALUES (?,?,?,?,?,?)",
                [(r.index, r.tx_index, r.round, r.source, r.wave, r.block) for r in rows],
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise storage_error(exc, "keeping a transferred segment") from exc

    def staged(self, start: int) -> list[tuple[int, int, bytes, list[SyncRow]]]:
        """The kept segments at or above ``start`` (older ones are dropped): each
        ``(first, until, start_chain, rows)``."""
        db = self._db
        db.execute("DELETE FROM staged_segments WHERE first < ?", (start,))
        db.execute("DELETE FROM staged_rows WHERE vertex_index < ?", (start,))
        out = []
        for first, until, chain in db.execute(
            "SELECT first, until, start_chain FROM staged_segments ORDER BY first"
        ).fetchall():
            rows = [
                SyncRow(i, t, r, s, w, bytes(b))
                for i, t, r, s, w, b in db.execute(
                    "SELECT * FROM staged_rows WHERE vertex_index >= ? AND vertex_index < ? "
                    "ORDER BY vertex_index",
                    (first, until),
                )
            ]
            out.append((int(first), int(until), bytes(chain), rows))
        return out

    def chain_before(self, index: int) -> bytes | None:
        """The log's hash chain over the rows before vertex index ``index`` (what a
        peer fetching from there anchors on), or None if they were pruned here."""
        return self._chain_at(index)

    def log_rows(self, first: int, until: int, max_bytes: int) -> tuple[list[SyncRow], bool]:
        """Log rows with vertex index in [first, until), at most ``max_bytes`` of blocks
        (at least one row); and whether the range is exhausted. Rows pruned by
        ``keep_log_entries`` are simply absent (the answer then starts later)."""
        rows: list[SyncRow] = []
        size = 0
        cursor = self._db.execute(
            "SELECT vertex_index, tx_index, round, source, wave, block, entry FROM log "
            "WHERE vertex_index >= ? AND vertex_index < ? ORDER BY vertex_index",
            (first, until),
        )
        for index, tx_index, rnd, source, wave, block, entry in cursor:
            _checked_row(index, tx_index, rnd, source, wave, bytes(block), entry)
            if rows and size + len(block) > max_bytes:
                return rows, False
            rows.append(SyncRow(index, tx_index, rnd, source, wave, bytes(block)))
            size += len(block)
        return rows, True

    def install(
        self,
        cert: Certificate,
        state: OrderingState,
        rows: Sequence[SyncRow],
        now: float,
        start_chain: bytes | None = None,
    ) -> None:
        """Install a verified transfer in one transaction: the log up to the certified
        position (``rows``, which extend the chain from ``start_chain``: ours where they
        begin, unless the transfer was rebased on a certified base), the ordering state
        that resumes there, and the certificate."""
        db = self._db
        chain = start_chain
        if chain is None:
            chain = self._chain_at(rows[0].index) if rows else None
        values = []
        for r in rows:
            entry = r.entry()
            chain = chain_next(chain, entry) if chain is not None else None
            values.append(
                (
                    r.index,
                    r.tx_index,
                    len(r.transactions()),
                    r.round,
                    r.source,
                    r.wave,
                    now,
                    r.block,
                    entry,
                    chain,
                )
            )
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR IGNORE INTO log VALUES (?,?,?,?,?,?,?,?,?,?)", values)
            db.executemany(
                "INSERT OR IGNORE INTO tx_ids VALUES (?,?)",
                [
                    (_prefix(tx), r.tx_index + k)
                    for r in rows
                    for k, tx in enumerate(r.transactions())
                ],
            )
            self._put_ordering(state)
            db.execute("DELETE FROM own WHERE round < ?", (gc_floor(state, self.gc_depth),))
            db.execute(
                "INSERT OR REPLACE INTO checkpoints(idx, state, certificate) VALUES (?, ?, ?)",
                (cert.checkpoint.index, _pack_ordering(state), _pack_certificate(cert)),
            )
            db.execute("DELETE FROM staged_segments")
            db.execute("DELETE FROM staged_rows")
            db.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, "installing a checkpoint") from exc
            raise
        self.floor = gc_floor(state, self.gc_depth)

    def probe(self) -> None:
        """One small write: whether the store takes writes again (after a full disk)."""
        try:
            # A page's worth, so the probe needs space as a real write does.
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', zeroblob(8192))")
        except sqlite3.Error as exc:
            raise storage_error(exc, "writing to the store") from exc

    def set_crdt_cut(self, cut: bytes) -> None:
        self.crdt_cut = cut
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('crdt_cut', ?)", (cut,))

    def ordering_state(self) -> OrderingState | None:
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key='ordering'").fetchone()
        if row is None:
            return None
        check = db.execute("SELECT value FROM meta WHERE key='ordering_sum'").fetchone()
        if check is None or bytes(check[0]) != _blob_sum(bytes(row[0])):
            raise StorageCorrupt("the ordering state does not match its hash: the store is damaged")
        return _unpack_ordering(bytes(row[0]))

    def _vertex(self, body: bytes, digest: object, what: str) -> Vertex:
        try:
            vertex = _val(self.codec.decode(bytes(body)))
        except (DecodeError, StoreError) as exc:
            raise StorageCorrupt(
                f"{what} cannot be decoded ({exc}): the store is damaged"
            ) from None
        if digest is None or vertex.digest != bytes(digest):  # type: ignore[call-overload]
            raise StorageCorrupt(f"{what} does not match its digest: the store is damaged")
        return vertex

    def _check_tail(self, ordering: OrderingState) -> None:
        """At start-up: the log rows since the newest checkpoint this store holds (or the
        whole log if it has none and is short) must extend that checkpoint's chain to
        the ordering state's; so a damaged recent row is found before anything is served
        or built on it (older rows are checked as they are read)."""
        db = self._db
        start, chain = 0, CHAIN_GENESIS
        row = db.execute(
            "SELECT idx, state FROM checkpoints WHERE idx <= ? ORDER BY idx DESC LIMIT 1",
            (ordering.next_index,),
        ).fetchone()
        if row is not None:
            start, chain = int(row[0]), _unpack_ordering(bytes(row[1])).chain
        elif self.first_log_index() > 0 or ordering.next_index > TAIL_CHECK_MAX_ROWS:
            return  # nothing to anchor the check on: rows are checked as read
        if ordering.chain == CHAIN_GENESIS and ordering.next_index > 0:
            return  # written before the chain existed; rebuilt from the log by the caller
        for index, tx_index, rnd, source, wave, block, entry in db.execute(
            "SELECT vertex_index, tx_index, round, source, wave, block, entry FROM log "
            "WHERE vertex_index >= ? AND vertex_index < ? ORDER BY vertex_index",
            (start, ordering.next_index),
        ):
            _checked_row(index, tx_index, rnd, source, wave, bytes(block), entry)
            chain = chain_next(chain, bytes(entry))
        if chain != ordering.chain:
            raise StorageCorrupt(
                f"the committed log from vertex index {start} to {ordering.next_index} does "
                "not extend to the recorded hash chain (rows missing or replaced): the store is "
                "damaged"
            )

    def add_to_mempool(
        self, txs: Sequence[bytes], ids: bytes | None = None, records: bytes | None = None
    ) -> list[bytes]:
        """Persist accepted client transactions as one row; returns their ids.

        ``ids`` (``batch_ids(txs)``) and ``records`` (``encode_batch(txs)``, e.g. the
        body the client sent) are computed here if not given. One row per batch, not per
        transaction: a row per transaction with an index on its id was a third of a
        loaded node's CPU (profiled, issue 13).
        """
        if not txs:  # a row of no records would read back as a damaged batch
            return []
        if ids is None:
            ids = batch_ids(txs)
        if records is None:
            records = encode_batch(txs)
        try:
            self._db.execute(
                "INSERT INTO mempool_batches(count, ids, records) VALUES (?, ?, ?)",
                (len(ids) // ID_BYTES, ids, records),
            )
        except sqlite3.Error as exc:
            raise storage_error(exc, "writing to the mempool") from exc
        return split_ids(ids)

    def _id_rows(self, v: Vertex, first: int) -> list[tuple[int, int, int]]:
        """``tx_index`` rows (partition, id prefix, global index) of a committed block:
        from the ids the node already knows (its own vertices, computed at ingest:
        ``known_ids``), else hashed here, once."""
        ids = self.known_ids.pop(v.digest, None)
        if ids is None or len(ids) != ID_BYTES * len(v.block):
            ids = batch_ids(v.block)
        return [
            ((first + k) >> TX_PART_BITS, p, first + k)
            for k, (p,) in enumerate(_ID_PREFIX.iter_unpack(ids))
        ]

    def remember_ids(self, digest: bytes, ids: bytes) -> None:
        """The ids of a vertex's block, known before it commits (our own proposals):
        the commit then indexes them without hashing the transactions again."""
        known = self.known_ids
        known[digest] = ids
        while len(known) > KNOWN_IDS_MAX:  # vertices that never commit (requeued)
            del known[next(iter(known))]

    def _take_from_mempool(self, count: int) -> None:
        """The process took the first ``count`` pending transactions into a vertex (it
        always takes from the front): delete the batches used up, and record in
        ``mempool_head`` how many of the next one were taken. Rewriting the batch row
        itself would copy its records (a partial take per proposal, profiled: 8 % of a
        loaded node).

        ``mempool_head`` has a row per partly taken batch: usually one, two when
        transactions were requeued in front of a partly taken batch and a proposal then
        took some of them (one row only lost the older take: found by the persistence
        property test, the taken transactions came back at restart)."""
        if count <= 0:
            return
        db = self._db
        heads = self._mempool_heads()
        cursor = db.execute("SELECT seq, count FROM mempool_batches ORDER BY seq")
        used_up: int | None = None
        partial: tuple[int, int] | None = None
        while count > 0 and partial is None:
            rows = cursor.fetchmany(64)
            if not rows:
                break
            for seq, size in rows:
                taken = heads.get(seq, 0)
                left = size - taken
                if count >= left:
                    count -= left
                    used_up = seq
                else:
                    partial = (seq, taken + count)
                    count = 0
                if count == 0:
                    break
        cursor.close()
        if used_up is not None:
            db.execute("DELETE FROM mempool_batches WHERE seq <= ?", (used_up,))
            db.execute("DELETE FROM mempool_head WHERE seq <= ?", (used_up,))
        if partial is not None:
            db.execute("INSERT OR REPLACE INTO mempool_head VALUES (?, ?)", partial)

    def _mempool_heads(self) -> dict[int, int]:
        """Batch -> transactions of it already taken, for the partly taken batches."""
        rows = self._db.execute("SELECT seq, taken FROM mempool_head")
        return {int(seq): int(taken) for seq, taken in rows}

    def _requeue(self, txs: Sequence[bytes]) -> None:
        """Transactions back at the *front* of the mempool (where the process puts them)."""
        if txs:
            self._db.execute(
                "INSERT INTO mempool_batches(seq, count, ids, records) VALUES "
                "((SELECT COALESCE(MIN(seq), 1) - 1 FROM mempool_batches), ?, ?, ?)",
                (len(txs), batch_ids(txs), encode_batch(txs)),
            )

    # -- transactions in doubt (see dagrider.node.fence) --------------------------------

    def hold_in_doubt(self, since: int, until: int, first_index: int) -> Doubt | None:
        """A restart behind the fence: move every pending transaction into doubt, in one
        transaction (merged with a doubt not yet settled); the doubt now held, if any.
        Call before the mempool is handed to the process: it gets none of these."""
        pending = self._load_mempool()
        current = self.doubt()
        if not pending:
            return current
        if current is None:
            doubt = Doubt(since, until, first_index, tuple(pending))
        else:
            doubt = current.merged(since, until, first_index, pending)
        window: bytes = msgpack.packb([doubt.since, doubt.until, doubt.first_index])
        db = self._db
        try:
            db.execute("BEGIN")
            db.execute("DELETE FROM mempool_batches")
            db.execute("DELETE FROM mempool_head")
            db.execute(
                "INSERT INTO mempool_doubt(count, ids, records) VALUES (?, ?, ?)",
                (len(pending), batch_ids(pending), encode_batch(pending)),
            )
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("doubt", window), ("doubt_sum", _blob_sum(window))],
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise storage_error(exc, "holding the mempool in doubt") from exc
        return doubt

    def doubt(self) -> Doubt | None:
        """The transactions held in doubt and their window, or None."""
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key='doubt'").fetchone()
        if row is None:
            return None
        check = db.execute("SELECT value FROM meta WHERE key='doubt_sum'").fetchone()
        window = bytes(row[0])
        if check is None or bytes(check[0]) != _blob_sum(window):
            raise StorageCorrupt("the doubt window does not match its hash: the store is damaged")
        since, until, first_index = msgpack.unpackb(window)
        txs: list[bytes] = []
        for seq, count, ids, records in db.execute(
            "SELECT seq, count, ids, records FROM mempool_doubt ORDER BY seq"
        ):
            try:
                batch = parse_batch(bytes(records), 1 << 32)
            except BatchError as exc:
                raise StorageCorrupt(f"doubt batch {seq} is malformed: {exc}") from None
            if batch_ids(batch) != bytes(ids) or count != len(batch):
                raise StorageCorrupt(
                    f"doubt batch {seq} does not match its ids: the store is damaged"
                )
            txs += batch
        return Doubt(int(since), int(until), int(first_index), tuple(txs))

    def proposed_by(self, source: int, since: int, until: int, first_index: int) -> list[bytes]:
        """The transactions of the committed vertices of ``source`` from rounds
        ``since < round <= until`` at vertex index ``first_index`` or later (what a
        member's lost rounds carried into the log), in log order."""
        out: list[bytes] = []
        for index, tx_index, rnd, src, wave, block, entry in self._db.execute(
            "SELECT vertex_index, tx_index, round, source, wave, block, entry FROM log "
            "WHERE vertex_index >= ? AND source = ? AND round > ? AND round <= ? "
            "ORDER BY vertex_index",
            (first_index, source, since, until),
        ):
            _checked_row(index, tx_index, rnd, src, wave, bytes(block), entry)
            out += msgpack.unpackb(block)
        return out

    def settle_doubt(self, kept: Sequence[bytes]) -> None:
        """The doubt is settled: drop it and put ``kept`` back at the front of the
        mempool, in one transaction (the process puts them at the front too)."""
        db = self._db
        try:
            db.execute("BEGIN")
            db.execute("DELETE FROM mempool_doubt")
            db.execute("DELETE FROM meta WHERE key IN ('doubt', 'doubt_sum')")
            self._requeue(kept)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise storage_error(exc, "settling the transactions in doubt") from exc

    def _load_mempool(self) -> list[bytes]:
        """The pending transactions in order; each batch is checked against its ids.

        Rows of the per-transaction ``mempool`` table (files written before batches)
        are moved into one batch at the front first.
        """
        db = self._db
        legacy: list[bytes] = []
        for seq, tx_id, data in db.execute("SELECT seq, tx_id, data FROM mempool ORDER BY seq"):
            if tx_digest(bytes(data)) != bytes(tx_id):
                raise StorageCorrupt(
                    f"mempool row {seq} does not match its id: the store is damaged"
                )
            legacy.append(bytes(data))
        if legacy:
            db.execute("BEGIN")
            try:
                self._requeue(legacy)
                db.execute("DELETE FROM mempool")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise storage_error(exc, "moving the mempool to batches") from exc
        out: list[bytes] = []
        heads = self._mempool_heads()
        for seq, count, ids, records in db.execute(
            "SELECT seq, count, ids, records FROM mempool_batches ORDER BY seq"
        ):
            taken = heads.get(seq, 0)
            try:
                txs = parse_batch(bytes(records), 1 << 32)
            except BatchError as exc:
                raise StorageCorrupt(f"mempool batch {seq} is malformed: {exc}") from None
            if batch_ids(txs) != bytes(ids) or count != len(txs) or not 0 <= taken < count:
                raise StorageCorrupt(
                    f"mempool batch {seq} does not match its ids: the store is damaged"
                )
            out += txs[taken:]
        return out

    # -- reads --------------------------------------------------------------------------

    def load_recovery(self) -> tuple[Recovery, list[bytes]]:
        """Everything :meth:`Process.recover` needs, plus the pending mempool."""
        db = self._db
        decode = self.codec.decode
        ordering = self.ordering_state()
        row = db.execute("SELECT value FROM meta WHERE key='ordering'").fetchone()
        if ordering is not None and _without_chain(bytes(row[0])):
            # Written before the log had a hash chain: rebuild it from the log once, so
            # that this node's checkpoints match its peers' (otherwise an upgraded
            # committee whose members restarted at different positions never certifies).
            ordering = replace(ordering, chain=self._chain_from_log(ordering.next_index))
        # The rows at and above the current floor, in the order MemoryStore.recovery
        # lists them (dagrider.persistence): what a restart needs, whatever GC kept.
        floor = gc_floor(ordering, self.gc_depth)
        self.floor = floor
        delivered = [
            self._vertex(b, d, f"vertex at round {r} from {s}")
            for (b, d, r, s) in db.execute(
                "SELECT body, digest, round, source FROM vertices WHERE round >= ? ORDER BY seq",
                (floor,),
            )
        ]
        own = [
            self._vertex(b, d, f"own proposal for round {r}")
            for (b, d, r) in db.execute(
                "SELECT body, digest, round FROM own WHERE round >= ? ORDER BY round", (floor,)
            )
        ]
        votes: list[Echo | Ready] = []
        for kind, rnd, source, digest, check in db.execute(
            "SELECT kind, round, source, digest, sum FROM votes WHERE round >= ? "
            "ORDER BY round, source, kind",
            (floor,),
        ):
            if check is None or bytes(check) != vote_sum(kind, rnd, source, bytes(digest)):
                raise StorageCorrupt(
                    f"vote (kind {kind}) at round {rnd} for source {source} does not match its "
                    "hash: the store is damaged"
                )
            cls = Echo if kind == _ECHO else Ready
            votes.append(cls(rnd, source, bytes(digest)))
        shares: list[CoinShare] = []
        for (b,) in db.execute(
            "SELECT body FROM coin_shares WHERE wave >= ? ORDER BY wave, signer",
            (ordering.next_wave if ordering else 0,),
        ):
            msg = decode(bytes(b))
            if isinstance(msg, CoinShareMsg):
                shares.append(msg.share)
        committed = ordering.next_index if ordering else 0
        mempool = self._load_mempool()
        if ordering is not None:
            self._check_tail(ordering)
        recovery = Recovery(delivered, votes, own, shares, committed, ordering)
        return recovery, mempool

    def catchup(
        self, first: int, last: int, max_bytes: int | None = None
    ) -> list[tuple[Ready, Vertex | None]]:
        """Our READY votes for rounds [first, last) with the vertices they voted for,
        stopping once ``max_bytes`` of vertex bodies are out (at least one row): one
        answer stays bounded however large the vertices in those rounds are."""
        out: list[tuple[Ready, Vertex | None]] = []
        size = 0
        rows = self._db.execute(
            "SELECT v.round, v.source, v.digest, x.body FROM votes v "
            "LEFT JOIN vertices x ON x.digest = v.digest "
            "WHERE v.kind = ? AND v.round >= ? AND v.round < ? ORDER BY v.round, v.source",
            (_READY, first, last),
        )
        for rnd, source, digest, body in rows:
            if max_bytes is not None and out and size >= max_bytes:
                break
            vertex = None if body is None else self._vertex(body, digest, f"vertex at round {rnd}")
            size += 0 if body is None else len(body)
            out.append((Ready(rnd, source, bytes(digest)), vertex))
        return out

    _LOG_COLUMNS = "tx_index, count, round, source, wave, committed_at, block, vertex_index, entry"

    def log_after(self, after: int, limit: int) -> list[LogRow]:
        """Committed transactions with index > ``after``, at most ``limit`` of them.

        Pruned positions are skipped: below :meth:`first_log_index` the answer starts
        there (the API turns that gap into 410 Gone; the CRDT rescan just moves on)."""
        db = self._db
        first = db.execute(
            "SELECT MAX(tx_index) FROM log WHERE tx_index <= ?", (after + 1,)
        ).fetchone()[0]
        out: list[LogRow] = []
        rows = db.execute(
            f"SELECT {self._LOG_COLUMNS} FROM log WHERE tx_index >= ? ORDER BY tx_index",
            (first if first is not None else after + 1,),
        )
        for start, _, rnd, source, wave, at, block, index, entry in rows:
            _checked_row(index, start, rnd, source, wave, bytes(block), entry)
            for k, tx in enumerate(msgpack.unpackb(block)):
                if start + k > after:
                    out.append(LogRow(start + k, tx_digest(tx), tx, rnd, source, wave, at))
                    if len(out) >= limit:
                        return out
        return out

    def _chain_from_log(self, until: int) -> bytes:
        chain = CHAIN_GENESIS
        for index, tx_index, rnd, source, wave, block, entry in self._db.execute(
            "SELECT vertex_index, tx_index, round, source, wave, block, entry FROM log "
            "WHERE vertex_index < ? ORDER BY vertex_index",
            (until,),
        ):
            _checked_row(index, tx_index, rnd, source, wave, bytes(block), entry)
            chain = chain_next(chain, bytes(entry))
        return chain

    def pruned_before(self, first: int) -> bool:
        """Whether log rows at vertex index ``first`` (and on) were pruned here."""
        if self.first_log_index() == 0:
            return False
        row = self._db.execute("SELECT MIN(vertex_index) FROM log").fetchone()
        return row[0] is not None and first < int(row[0])

    def base_certificate(self) -> Certificate | None:
        """The oldest certificate at or above the first log row still held: from its
        chain value on, this store can serve a suffix a peer can verify."""
        row = self._db.execute(
            "SELECT certificate FROM checkpoints WHERE certificate IS NOT NULL "
            "AND idx >= (SELECT MIN(vertex_index) FROM log) ORDER BY idx LIMIT 1"
        ).fetchone()
        return None if row is None else _unpack_certificate(bytes(row[0]))

    def first_log_index(self) -> int:
        """The first transaction index this store still holds (0: nothing pruned). The
        log always keeps its newest row, so a pruned log is never empty."""
        row = self._db.execute("SELECT MIN(tx_index) FROM log").fetchone()
        return 0 if row[0] is None else int(row[0])

    def log_head(self) -> int:
        row = self._db.execute(
            "SELECT tx_index + count - 1 FROM log ORDER BY tx_index DESC LIMIT 1"
        ).fetchone()
        return -1 if row is None else int(row[0])

    def find_tx(self, tx_id: bytes) -> LogRow | None:
        """Where a transaction was committed (first occurrence), or None; None too once
        its log row was pruned (its index entry goes with it, or points at nothing)."""
        for index in self._tx_candidates(_id_prefix(tx_id)):
            found = self._log_row_at(index, tx_id)
            if found is not None:
                return found
        return None

    def _tx_candidates(self, prefix: int) -> list[int]:
        """Global indexes whose id starts with ``prefix``, oldest first: ``tx_ids`` (rows
        written before the partitioned index, and by state transfer), then each
        ``tx_index`` partition."""
        db = self._db
        out: list[int] = []
        hit = db.execute("SELECT tx_index FROM tx_ids WHERE prefix = ?", (prefix,)).fetchone()
        if hit is not None:
            out.append(int(hit[0]))
        low, high = db.execute("SELECT MIN(part), MAX(part) FROM tx_index").fetchone()
        if low is None:
            return out
        for part in range(int(low), int(high) + 1):
            row = db.execute(
                "SELECT tx_index FROM tx_index WHERE part = ? AND prefix = ?", (part, prefix)
            ).fetchone()
            if row is not None:
                out.append(int(row[0]))
        return sorted(out)

    def _log_row_at(self, index: int, tx_id: bytes) -> LogRow | None:
        """The log entry at global ``index`` if it is the transaction ``tx_id``."""
        db = self._db
        row = db.execute(
            f"SELECT {self._LOG_COLUMNS} FROM log WHERE tx_index <= ? "
            "ORDER BY tx_index DESC LIMIT 1",
            (index,),
        ).fetchone()
        if row is None:
            return None
        start, count, rnd, source, wave, at, block, vertex_index, entry = row
        _checked_row(vertex_index, start, rnd, source, wave, bytes(block), entry)
        txs = msgpack.unpackb(block)
        tx = txs[index - start] if 0 <= index - start < count else None
        if tx is None or tx_digest(tx) != tx_id:
            return None  # an 8-byte prefix collision: not this transaction
        return LogRow(index, tx_id, tx, rnd, source, wave, at)

    def pending(self, tx_id: bytes) -> bool:
        """Whether a transaction with this id waits in the stored mempool, or in doubt
        (a scan of the batches' id lists; the node answers from memory first)."""
        heads = self._mempool_heads()
        rows = self._db.execute(
            "SELECT seq, ids FROM mempool_batches WHERE instr(ids, ?) > 0", (tx_id,)
        ).fetchall()
        doubt = self._db.execute(
            "SELECT NULL, ids FROM mempool_doubt WHERE instr(ids, ?) > 0", (tx_id,)
        ).fetchall()
        for seq, ids in rows + doubt:
            taken = 0 if seq is None else heads.get(seq, 0)
            blob = bytes(ids)
            at = blob.find(tx_id)
            while at >= 0:
                if at % ID_BYTES == 0 and at // ID_BYTES >= taken:
                    return True
                at = blob.find(tx_id, at + 1)
        return False


def _id_prefix(tx_id: bytes) -> int:
    """The first 8 bytes of an id as a signed 64-bit SQLite integer key."""
    return int.from_bytes(tx_id[:8], "big", signed=True)


def _prefix(tx: bytes) -> int:
    return _id_prefix(tx_digest(tx))


def _slot(msg: Echo | Ready) -> tuple[int, int, bytes]:
    return msg.round, msg.source, msg.digest


def _checked_row(
    index: int, tx_index: int, rnd: int, source: int, wave: int, block: bytes, entry: object
) -> None:
    """Refuse a log row whose bytes are not the ones that were written."""
    if entry is None or bytes(entry) != entry_hash(index, tx_index, rnd, source, wave, block):  # type: ignore[call-overload]
        raise StorageCorrupt(
            f"log row at vertex index {index} (transaction index {tx_index}) does not match "
            "its hash: the store is damaged"
        )


def _val(msg: object) -> Vertex:
    if not isinstance(msg, Val):
        raise StoreError(f"corrupt store: expected a vertex, found {type(msg).__name__}")
    return msg.vertex


def _pack_ordering(s: OrderingState) -> bytes:
    packed: bytes = msgpack.packb(pack_ordering(s), use_bin_type=True)
    return packed


def _unpack_ordering(b: bytes) -> OrderingState:
    fields = msgpack.unpackb(b, raw=False)
    if isinstance(fields, list) and len(fields) == 7:  # written before the hash chain
        fields.append(CHAIN_GENESIS)
    try:
        return unpack_ordering(fields)
    except DecodeError as exc:
        raise StoreError(f"corrupt store: ordering state: {exc}") from None


def _without_chain(b: bytes) -> bool:
    fields = msgpack.unpackb(b, raw=False)
    return isinstance(fields, list) and len(fields) == 7


def _pack_certificate(cert: Certificate) -> bytes:
    return encode_state(CertificateOffer(cert, _EMPTY_STATE))


def _unpack_certificate(b: bytes) -> Certificate:
    try:
        msg = decode_state(b)
    except DecodeError as exc:
        raise StoreError(f"corrupt store: certificate: {exc}") from None
    if not isinstance(msg, CertificateOffer):
        raise StoreError("corrupt store: expected a certificate")
    return msg.certificate


_EMPTY_STATE = OrderingState(0, 0, 0, 0, 0, ())
