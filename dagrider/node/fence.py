"""The fence: the highest round this node ever sent a consensus message for, in a file
of its own next to the store.

The store is written before anything is sent, so after a crash it knows every vertex
and vote that left the node. Unless the store itself lost them: its ``-wal`` file
deleted after a crash, or a backup of only the ``.sqlite3`` file restored. A node that
then proposed or voted again in those rounds could send a second, different value for
one slot, which is equivocation. The fence survives such a loss (it is not in the
SQLite files). Before each batch with messages to send it records the highest round
sent for and the store's count of that batch (the store raises its count in the
batch's own transaction); at start-up a store whose count is below the fence's lost
sent writes (a store can only lose a suffix of its batches), and the fence tells the
process which rounds to stay silent in (:meth:`dagrider.process.Process.fence`; the
rule is :func:`dagrider.persistence.restart_from`, shared with the simulator).

The file holds two 32-byte slots (round, flush count, 16-byte BLAKE2b check) written in
turn in place, fsynced when the node fsyncs its store. A damaged fence is a damaged
store (exit code 3), never a silently reset one.

A store behind its fence may have lost proposals too, and with them the fact that their
transactions left the mempool: the transactions it still lists as pending may already
ride in a vertex of the lost rounds, which the committee may order. Proposing them
again would order them twice. They are held *in doubt* (:class:`Doubt`, kept by the
store next to the mempool): not proposed until no vertex of the lost rounds can be
ordered any more (the GC floor passed the fence, :meth:`Doubt.settled`), then put back
at the front of the mempool, minus one copy of each transaction the lost vertices
carried into the log (:meth:`Doubt.kept`). Transactions submitted after the restart are
not in doubt and are proposed as usual.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dagrider.node.service import StorageCorrupt, StorageUnavailable
from dagrider.process import not_carried

FENCE_FILE = "fence"
_PERSON = b"dagrider/fence"
_SLOT = 32  # round (8 bytes), flush count (8), check (16)
_LEGACY = 24  # round (8), check (16): the format before the flush count


def _slot(rnd: int, flushes: int) -> bytes:
    head = rnd.to_bytes(8, "big") + flushes.to_bytes(8, "big")
    return head + hashlib.blake2b(head, digest_size=16, person=_PERSON).digest()


def _legacy_check(rnd: int) -> bytes:
    return hashlib.blake2b(rnd.to_bytes(8, "big"), digest_size=16, person=_PERSON).digest()


class Fence:
    """Read once at start-up, then raised (never lowered) by the runtime before sends.

    ``round`` is the highest round a vertex or vote was sent for, ``flushes`` the
    store's flush count of the last batch whose messages were sent (None when the file
    predates the count: :func:`dagrider.persistence.restart_from` then compares
    rounds). Two slots, written in turn in place (one ``pwrite`` per sending flush, no
    rename): a write torn by a crash leaves the other slot, one flush older, which is
    still a fence for every batch that was sent."""

    def __init__(self, data_dir: Path, fsync: bool) -> None:
        self.path = data_dir / FENCE_FILE
        self.fsync = fsync
        self.round = 0
        self.flushes: int | None = 0
        self._fd: int | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageUnavailable(f"reading {self.path}: {exc.strerror or exc}") from exc
        if len(data) == _LEGACY:
            rnd = int.from_bytes(data[:8], "big")
            if data[8:] != _legacy_check(rnd):
                raise StorageCorrupt(f"{self.path} is damaged ({len(data)} bytes)")
            self.round, self.flushes = rnd, None
            return
        slots = []
        if len(data) == 2 * _SLOT:
            for at in (0, _SLOT):
                rnd = int.from_bytes(data[at : at + 8], "big")
                flushes = int.from_bytes(data[at + 8 : at + 16], "big")
                if data[at : at + _SLOT] == _slot(rnd, flushes):
                    slots.append((flushes, rnd))
        if not slots:
            raise StorageCorrupt(f"{self.path} is damaged ({len(data)} bytes)")
        self.flushes, self.round = max(slots)

    def reset(self, flushes: int) -> None:
        """Rewrite the file (atomically: a temporary file, renamed) at start-up, with the
        store's flush count once the restart decision is made; converts an older file."""
        self.close()
        tmp = self.path.with_name(FENCE_FILE + ".tmp")
        data = _slot(self.round, flushes) * 2
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            if self.fsync:  # the rename itself must survive a power loss
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            self._fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise StorageUnavailable(f"writing {self.path}: {exc.strerror or exc}") from exc
        self.flushes = flushes

    def record(self, rnd: int, flushes: int) -> None:
        """Record that the messages of the store's flush number ``flushes`` are about
        to be sent, the highest of them for round ``rnd`` (call before the store commits
        it, so that a store that later loses it is seen behind). Raises
        :class:`StorageUnavailable` if the file cannot be written; then the fence is
        unchanged and nothing may be sent."""
        rnd = max(rnd, self.round)
        if self._fd is None:
            self.reset(self.flushes or 0)
        assert self._fd is not None
        try:
            os.pwrite(self._fd, _slot(rnd, flushes), (flushes % 2) * _SLOT)
            if self.fsync:
                os.fdatasync(self._fd)
        except OSError as exc:
            raise StorageUnavailable(f"writing {self.path}: {exc.strerror or exc}") from exc
        self.round, self.flushes = rnd, flushes

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Doubt:
    """Transactions a restart behind the fence found pending, and where they may have
    gone: into our own vertices of rounds ``since < round <= until`` (the store's last
    own proposal, the fence), committed at vertex index ``first_index`` or later (the
    store's log ended there). Pure data; the store keeps it, the runtime settles it."""

    since: int
    until: int
    first_index: int
    txs: tuple[bytes, ...]

    def settled(self, floor: int) -> bool:
        """Whether every vertex that could carry these transactions is decided: none of
        rounds <= ``until`` can be ordered once the GC floor is above them."""
        return floor > self.until

    def kept(self, committed: Iterable[bytes]) -> list[bytes]:
        """The transactions to propose again, in order: all but one copy of each that
        our lost vertices carried into the log (``committed``). Counted, not matched by
        id alone: a client that submitted the same bytes twice had two transactions."""
        return not_carried(self.txs, Counter(committed))

    def merged(self, since: int, until: int, first_index: int, txs: Iterable[bytes]) -> Doubt:
        """A second restart behind the fence before this doubt settled: one doubt over
        both windows (older transactions first)."""
        return Doubt(
            min(self.since, since),
            max(self.until, until),
            min(self.first_index, first_index),
            self.txs + tuple(txs),
        )
