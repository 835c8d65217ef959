"""The highest sequence number this node signed for each of its DHT records, on disk.

A record's ``seq`` orders its versions: peers keep the highest they have seen and refuse
a lower one as stale. The service picks ``seq = max(now in ms, last + 1)``, so a node whose
clock is behind the moment of its previous publication (a restart on a machine whose
clock was reset, a VM restored from a snapshot) would sign a lower ``seq`` than the
version peers still hold, and its new value would be refused until that one expired.
Remembering the last ``seq`` per name across restarts keeps ``seq`` increasing whatever
the clock does.

The file is JSON ``{"version": 1, "seqs": {name hex: seq}}``, replaced atomically (write a
temporary file, fsync, rename, fsync the directory), and written before the record is
signed and sent, so no record leaves with a ``seq`` the file does not cover.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Final

VERSION: Final = 1
MAX_SEQ: Final = 2**63 - 1


class SeqFileError(ValueError):
    """The sequence file exists but is not one this code wrote."""


class SeqFile:
    """Per record name, the highest ``seq`` signed so far, kept in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seqs = self._load()

    def _load(self) -> dict[bytes, int]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(text)
            if doc.get("version") != VERSION or not isinstance(doc.get("seqs"), dict):
                raise SeqFileError(f"{self.path}: not a version {VERSION} DHT sequence file")
            seqs = {bytes.fromhex(k): v for k, v in doc["seqs"].items()}
        except (ValueError, AttributeError) as exc:
            if isinstance(exc, SeqFileError):
                raise
            raise SeqFileError(f"{self.path}: unreadable DHT sequence file: {exc}") from None
        for name, seq in seqs.items():
            if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
                raise SeqFileError(f"{self.path}: seq {seq!r} of name {name.hex()} is invalid")
        return seqs

    def last(self, name: bytes) -> int | None:
        """The highest ``seq`` signed for ``name``, None if never."""
        return self._seqs.get(name)

    def next(self, name: bytes, now_ms: int) -> int:
        """Reserve and persist the ``seq`` for a new version of ``name``: ``now_ms`` unless
        that does not exceed the last one signed, then the last one + 1."""
        last = self._seqs.get(name)
        seq = max(now_ms, 0 if last is None else last + 1)
        if seq > MAX_SEQ:
            raise ValueError(f"seq of record {name.hex()} would pass 2**63-1")
        self._seqs[name] = seq
        try:
            self._write()
        except BaseException:
            if last is None:
                del self._seqs[name]
            else:
                self._seqs[name] = last
            raise
        return seq

    def _write(self) -> None:
        doc = {"version": VERSION, "seqs": {k.hex(): v for k, v in sorted(self._seqs.items())}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
