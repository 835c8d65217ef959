"""The node's SQLite store (WAL): everything a restart needs, written before it matters.

One store transaction per batch of effects, committed *before* the batch's messages are
handed to the transport: a vote (ECHO/READY) that left the node is always on disk, so a
restarted node can never send a conflicting one. Tables:

* ``vertices``: delivered vertices (the DAG above the GC floor), in delivery order;
* ``votes``: the ECHO/READY this node sent, one per (kind, source, round);
* ``own``: this node's proposals (re-used, never re-created, after a restart);
* ``coin_shares``: shares received from peers, for waves not yet decided;
* ``log``: the committed log, one row per ordered vertex with transactions (its first
  global transaction index, its block), and ``tx_ids``: an 8-byte id prefix -> global
  index table for lookups. One row per vertex instead of per transaction was the
  difference between the store and consensus being the bottleneck (profiled: per-row
  inserts with a random 32-byte index took 45 % of a loaded node's time);
* ``mempool``: accepted client transactions not yet proposed;
* ``meta``: the ordering snapshot that matches the log (with the log's hash chain);
* ``checkpoints``: the ordering state at each recent checkpoint position and, once f+1
  members signed it, its certificate (see :mod:`dagrider.checkpoint`).

Rows below the GC floor are deleted as the floor rises (vertices and votes only
``retain_rounds`` below it, to serve catch-up). The log is kept in full unless
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

import hashlib
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack

from crdt.checkpoint import is_checkpoint
from dagrider.checkpoint import CHAIN_GENESIS, Certificate, chain_next, entry_hash, pack_block
from dagrider.codec import Codec, encode
from dagrider.coin import CoinShare
from dagrider.effects import (
    Broadcast,
    CheckpointReached,
    Commit,
    Delivered,
    Effect,
    Proposed,
    Requeued,
)
from dagrider.errors import DecodeError
from dagrider.messages import CoinShareMsg, Echo, Ready, Val, Vertex
from dagrider.ordering import OrderingState
from dagrider.process import Recovery
from dagrider.statesync import CertificateOffer, pack_ordering, unpack_ordering
from dagrider.statesync import LogRow as SyncRow
from dagrider.statesync import decode as decode_state
from dagrider.statesync import encode as encode_state

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vertices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    digest BLOB NOT NULL UNIQUE, round INTEGER NOT NULL, source INTEGER NOT NULL,
    body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS vertices_round ON vertices(round);
CREATE TABLE IF NOT EXISTS votes (
    kind INTEGER NOT NULL, round INTEGER NOT NULL, source INTEGER NOT NULL,
    digest BLOB NOT NULL, PRIMARY KEY (kind, round, source));
CREATE TABLE IF NOT EXISTS own (round INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS coin_shares (
    wave INTEGER NOT NULL, signer INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (wave, signer));
CREATE TABLE IF NOT EXISTS log (
    vertex_index INTEGER PRIMARY KEY, tx_index INTEGER NOT NULL UNIQUE,
    count INTEGER NOT NULL, round INTEGER NOT NULL, source INTEGER NOT NULL,
    wave INTEGER NOT NULL, committed_at REAL NOT NULL, block BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tx_ids (prefix INTEGER PRIMARY KEY, tx_index INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mempool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tx_id BLOB NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS mempool_tx_id ON mempool(tx_id);
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
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # journal_size_limit: the WAL file is cut back to this
_BUSY_TIMEOUT_MS = 5000  # sqlite3.connect's default

log = logging.getLogger(__name__)

_ECHO, _READY = 1, 2


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
        # Only takes effect on a new file (before its first table); see _incremental().
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("PRAGMA journal_mode=WAL")
        # Checkpoint (and fsync) every ~64 MiB of WAL rather than every 4 MiB.
        self._db.execute("PRAGMA wal_autocheckpoint=16384")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # NORMAL survives a process crash (SIGKILL); FULL also survives power loss.
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        self._check_identity(committee_id)
        self.incremental_vacuum = self._incremental()
        self.floor = 0
        row = self._db.execute("SELECT value FROM meta WHERE key='crdt_cut'").fetchone()
        # Digest of the last CRDT checkpoint transaction in the log (zeros: none yet):
        # the CRDT cut a consensus checkpoint vouches for, the same on every node.
        self.crdt_cut = bytes(row[0]) if row else bytes(32)
        self.crdt_cut_at: dict[int, bytes] = {}  # checkpoint position -> cut in force

    def close(self) -> None:
        self._db.close()

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
        if version is not None and int(version[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema {version[0]}, this node needs {SCHEMA_VERSION}"
            )

    # -- writes -------------------------------------------------------------------------

    def apply(
        self,
        effects: Sequence[Effect],
        ordering: OrderingState | None,
        received_shares: Iterable[CoinShare],
        now: float,
    ) -> None:
        """Persist one batch of effects atomically (call before sending its messages)."""
        db = self._db
        gc = False
        db.execute("BEGIN")
        try:
            self._apply(effects, received_shares, now)
            if ordering is not None:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('ordering', ?)",
                    (_pack_ordering(ordering),),
                )
                gc = self._gc(ordering)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if gc:
            self._compact()

    def _apply(self, effects: Sequence[Effect], shares: Iterable[CoinShare], now: float) -> None:
        db = self._db
        votes: list[tuple[int, int, int, bytes]] = []
        log_rows: list[tuple[int, int, int, int, int, int, float, bytes]] = []
        id_rows: list[tuple[int, int]] = []
        for e in effects:
            if isinstance(e, Broadcast):
                msg = e.msg
                if isinstance(msg, Echo):
                    votes.append((_ECHO, msg.round, msg.source, msg.digest))
                elif isinstance(msg, Ready):
                    votes.append((_READY, msg.round, msg.source, msg.digest))
            elif isinstance(e, Delivered):
                v = e.vertex
                db.execute(
                    "INSERT OR IGNORE INTO vertices(digest, round, source, body) VALUES (?,?,?,?)",
                    (v.digest, v.round, v.source, encode(Val(v))),
                )
            elif isinstance(e, Proposed):
                v = e.vertex
                db.execute("INSERT OR IGNORE INTO own VALUES (?, ?)", (v.round, encode(Val(v))))
                if v.block:
                    db.executemany(
                        "DELETE FROM mempool WHERE seq IN "
                        "(SELECT seq FROM mempool WHERE tx_id=? ORDER BY seq LIMIT 1)",
                        [(tx_digest(tx),) for tx in v.block],
                    )
            elif isinstance(e, Requeued):
                db.executemany(
                    "INSERT INTO mempool(tx_id, data) VALUES (?, ?)",
                    [(tx_digest(tx), tx) for tx in e.txs],
                )
            elif isinstance(e, CheckpointReached):
                self.crdt_cut_at[e.state.next_index] = self.crdt_cut
                self.save_checkpoint(e.state)
            elif isinstance(e, Commit):
                v = e.vertex
                if v.block:
                    for tx in v.block:
                        if is_checkpoint(tx):
                            self.crdt_cut = hashlib.blake2b(tx, digest_size=32).digest()
                            db.execute(
                                "INSERT OR REPLACE INTO meta VALUES ('crdt_cut', ?)",
                                (self.crdt_cut,),
                            )
                    block = e.packed or pack_block(v.block)
                    log_rows.append(
                        (e.index, e.tx_index, len(v.block), v.round, v.source, e.wave, now, block)
                    )
                    id_rows += [(_prefix(tx), e.tx_index + k) for k, tx in enumerate(v.block)]
        if votes:
            db.executemany("INSERT OR IGNORE INTO votes VALUES (?,?,?,?)", votes)
        if log_rows:
            db.executemany("INSERT OR IGNORE INTO log VALUES (?,?,?,?,?,?,?,?)", log_rows)
            db.executemany("INSERT OR IGNORE INTO tx_ids VALUES (?,?)", id_rows)
        rows = [(s.wave, s.signer, encode(CoinShareMsg(s))) for s in shares]
        if rows:
            db.executemany("INSERT OR IGNORE INTO coin_shares VALUES (?,?,?)", rows)

    def _gc(self, ordering: OrderingState) -> bool:
        """Delete rows far below the GC floor, in steps of at least a few waves; whether
        this was a step (the caller compacts the file after committing it).

        Vertices and votes are kept ``retain_rounds`` below the floor so that peers
        that were down can catch up from this store. With ``keep_log_entries``, the log
        before the last that-many transactions goes in the same step.
        """
        floor = max(0, ordering.last_leader_round - self.gc_depth)
        if floor <= self.floor + 16:
            return False
        self.floor = floor
        keep = max(0, floor - self.retain_rounds)
        db = self._db
        db.execute("DELETE FROM vertices WHERE round < ?", (keep,))
        db.execute("DELETE FROM votes WHERE round < ?", (keep,))
        db.execute("DELETE FROM own WHERE round < ?", (floor,))
        db.execute("DELETE FROM coin_shares WHERE wave < ?", (ordering.next_wave,))
        if self._prune_log():
            self._prune_checkpoints()
        return True

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
        return True

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

    def log_rows(self, first: int, until: int, max_bytes: int) -> tuple[list[SyncRow], bool]:
        """Log rows with vertex index in [first, until), at most ``max_bytes`` of blocks
        (at least one row); and whether the range is exhausted. Rows pruned by
        ``keep_log_entries`` are simply absent (the answer then starts later)."""
        rows: list[SyncRow] = []
        size = 0
        cursor = self._db.execute(
            "SELECT vertex_index, tx_index, round, source, wave, block FROM log "
            "WHERE vertex_index >= ? AND vertex_index < ? ORDER BY vertex_index",
            (first, until),
        )
        for index, tx_index, rnd, source, wave, block in cursor:
            if rows and size + len(block) > max_bytes:
                return rows, False
            rows.append(SyncRow(index, tx_index, rnd, source, wave, bytes(block)))
            size += len(block)
        return rows, True

    def install(
        self, cert: Certificate, state: OrderingState, rows: Sequence[SyncRow], now: float
    ) -> None:
        """Install a verified transfer in one transaction: the log up to the certified
        position, the ordering state that resumes there, and the certificate."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO log VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        r.index,
                        r.tx_index,
                        len(r.transactions()),
                        r.round,
                        r.source,
                        r.wave,
                        now,
                        r.block,
                    )
                    for r in rows
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO tx_ids VALUES (?,?)",
                [
                    (_prefix(tx), r.tx_index + k)
                    for r in rows
                    for k, tx in enumerate(r.transactions())
                ],
            )
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('ordering', ?)", (_pack_ordering(state),)
            )
            db.execute(
                "DELETE FROM own WHERE round < ?",
                (max(0, state.last_leader_round - self.gc_depth),),
            )
            db.execute(
                "INSERT OR REPLACE INTO checkpoints(idx, state, certificate) VALUES (?, ?, ?)",
                (cert.checkpoint.index, _pack_ordering(state), _pack_certificate(cert)),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.floor = max(0, state.last_leader_round - self.gc_depth)

    def set_crdt_cut(self, cut: bytes) -> None:
        self.crdt_cut = cut
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('crdt_cut', ?)", (cut,))

    def ordering_state(self) -> OrderingState | None:
        row = self._db.execute("SELECT value FROM meta WHERE key='ordering'").fetchone()
        return _unpack_ordering(bytes(row[0])) if row else None

    def add_to_mempool(self, txs: Sequence[bytes]) -> list[bytes]:
        """Persist accepted client transactions; returns their ids."""
        ids = [tx_digest(tx) for tx in txs]
        self._db.executemany(
            "INSERT INTO mempool(tx_id, data) VALUES (?, ?)", list(zip(ids, txs, strict=True))
        )
        return ids

    # -- reads --------------------------------------------------------------------------

    def load_recovery(self) -> tuple[Recovery, list[bytes]]:
        """Everything :meth:`Process.recover` needs, plus the pending mempool."""
        db = self._db
        decode = self.codec.decode
        row = db.execute("SELECT value FROM meta WHERE key='ordering'").fetchone()
        ordering = _unpack_ordering(bytes(row[0])) if row else None
        if ordering is not None and _without_chain(bytes(row[0])):
            # Written before the log had a hash chain: rebuild it from the log once, so
            # that this node's checkpoints match its peers' (otherwise an upgraded
            # committee whose members restarted at different positions never certifies).
            ordering = replace(ordering, chain=self._chain_from_log(ordering.next_index))
        floor = max(0, ordering.last_leader_round - self.gc_depth) if ordering else 0
        self.floor = floor
        delivered = [
            _val(decode(bytes(b)))
            for (b,) in db.execute(
                "SELECT body FROM vertices WHERE round >= ? ORDER BY seq", (floor,)
            )
        ]
        own = [
            _val(decode(bytes(b)))
            for (b,) in db.execute("SELECT body FROM own WHERE round >= ? ORDER BY round", (floor,))
        ]
        votes: list[Echo | Ready] = []
        for kind, rnd, source, digest in db.execute(
            "SELECT * FROM votes WHERE round >= ? ORDER BY round", (floor,)
        ):
            cls = Echo if kind == _ECHO else Ready
            votes.append(cls(rnd, source, bytes(digest)))
        shares: list[CoinShare] = []
        for (b,) in db.execute("SELECT body FROM coin_shares ORDER BY wave, signer"):
            msg = decode(bytes(b))
            if isinstance(msg, CoinShareMsg):
                shares.append(msg.share)
        committed = ordering.next_index if ordering else 0
        mempool = [bytes(d) for (d,) in db.execute("SELECT data FROM mempool ORDER BY seq")]
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
            vertex = _val(self.codec.decode(bytes(body))) if body is not None else None
            size += 0 if body is None else len(body)
            out.append((Ready(rnd, source, bytes(digest)), vertex))
        return out

    _LOG_COLUMNS = "tx_index, count, round, source, wave, committed_at, block"

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
        for start, _, rnd, source, wave, at, block in rows:
            for k, tx in enumerate(msgpack.unpackb(block)):
                if start + k > after:
                    out.append(LogRow(start + k, tx_digest(tx), tx, rnd, source, wave, at))
                    if len(out) >= limit:
                        return out
        return out

    def _chain_from_log(self, until: int) -> bytes:
        chain = CHAIN_GENESIS
        for index, tx_index, rnd, source, wave, block in self._db.execute(
            "SELECT vertex_index, tx_index, round, source, wave, block FROM log "
            "WHERE vertex_index < ? ORDER BY vertex_index",
            (until,),
        ):
            entry = entry_hash(index, tx_index, rnd, source, wave, bytes(block))
            chain = chain_next(chain, entry)
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
        its log row was pruned (its ``tx_ids`` row goes with it)."""
        db = self._db
        hit = db.execute(
            "SELECT tx_index FROM tx_ids WHERE prefix = ?", (_id_prefix(tx_id),)
        ).fetchone()
        if hit is None:
            return None
        index = int(hit[0])
        row = db.execute(
            f"SELECT {self._LOG_COLUMNS} FROM log WHERE tx_index <= ? "
            "ORDER BY tx_index DESC LIMIT 1",
            (index,),
        ).fetchone()
        if row is None:
            return None
        start, count, rnd, source, wave, at, block = row
        txs = msgpack.unpackb(block)
        tx = txs[index - start] if 0 <= index - start < count else None
        if tx is None or tx_digest(tx) != tx_id:
            return None  # an 8-byte prefix collision: not this transaction
        return LogRow(index, tx_id, tx, rnd, source, wave, at)

    def pending(self, tx_id: bytes) -> bool:
        row = self._db.execute("SELECT 1 FROM mempool WHERE tx_id=? LIMIT 1", (tx_id,)).fetchone()
        return row is not None


def _id_prefix(tx_id: bytes) -> int:
    """The first 8 bytes of an id as a signed 64-bit SQLite integer key."""
    return int.from_bytes(tx_id[:8], "big", signed=True)


def _prefix(tx: bytes) -> int:
    return _id_prefix(tx_digest(tx))


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
