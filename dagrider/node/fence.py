"""The fence: the highest round this node ever sent a consensus message for, in a file
of its own next to the store.

The store is written before anything is sent, so after a crash it knows every vertex
and vote that left the node. Unless the store itself lost them: its ``-wal`` file
deleted after a crash, or a backup of only the ``.sqlite3`` file restored. A node that
then proposed or voted again in those rounds could send a second, different value for
one slot, which is equivocation. The fence survives such a loss (it is not in the
SQLite files) and is written before each send that reaches a new round; at start-up a
store that is behind its fence tells the process which rounds to stay silent in
(:meth:`dagrider.process.Process.fence`).

The file is 8 bytes of round and a 16-byte BLAKE2b check, replaced atomically (write a
temporary file, fsync it when the node fsyncs its store, rename). A damaged fence is a
damaged store (exit code 3), never a silently reset one.

A store behind its fence lost proposals too, and with them the fact that their
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

FENCE_FILE = "fence"
_PERSON = b"dagrider/fence"


def _check(rnd: int) -> bytes:
    return hashlib.blake2b(rnd.to_bytes(8, "big"), digest_size=16, person=_PERSON).digest()


class Fence:
    """Read once at start-up, then raised (never lowered) by the runtime before sends."""

    def __init__(self, data_dir: Path, fsync: bool) -> None:
        self.path = data_dir / FENCE_FILE
        self.fsync = fsync
        self.round = self._load()

    def _load(self) -> int:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageUnavailable(f"reading {self.path}: {exc.strerror or exc}") from exc
        if len(data) != 24 or data[8:] != _check(int.from_bytes(data[:8], "big")):
            raise StorageCorrupt(f"{self.path} is damaged ({len(data)} bytes)")
        return int.from_bytes(data[:8], "big")

    def raise_to(self, rnd: int) -> None:
        """Record that a message for ``rnd`` is about to be sent (call before sending).
        Raises :class:`StorageUnavailable` if the file cannot be written; then the
        fence is unchanged and nothing may be sent."""
        if rnd <= self.round:
            return
        tmp = self.path.with_name(FENCE_FILE + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, rnd.to_bytes(8, "big") + _check(rnd))
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
        except OSError as exc:
            raise StorageUnavailable(f"writing {self.path}: {exc.strerror or exc}") from exc
        self.round = rnd


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
        gone = Counter(committed)
        out: list[bytes] = []
        for tx in self.txs:
            if gone[tx] > 0:
                gone[tx] -= 1
            else:
                out.append(tx)
        return out

    def merged(self, since: int, until: int, first_index: int, txs: Iterable[bytes]) -> Doubt:
        """A second restart behind the fence before this doubt settled: one doubt over
        both windows (older transactions first)."""
        return Doubt(
            min(self.since, since),
            max(self.until, until),
            min(self.first_index, first_index),
            self.txs + tuple(txs),
        )
