"""The record-batch format of the high-rate ingest (sans-I/O).

A batch is a sequence of records, each a 4-byte big-endian length and that many bytes
of one transaction. Used by ``POST /v1/transactions/batch``, the ``/v1/ingest``
WebSocket, the command-line client and the benchmark's load generator.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

BATCH_CONTENT_TYPE = "application/x-dagrider-batch"
_LENGTH = struct.Struct(">I")


def encode_batch(txs: Iterable[bytes]) -> bytes:
    """Records for ``/v1/transactions/batch`` and ``/v1/ingest``: length (u32 BE) + bytes."""
    return b"".join(_LENGTH.pack(len(tx)) + tx for tx in txs)


class BatchError(ValueError):
    """A record batch is malformed (400) or holds an oversize record (413).

    ``offset`` is the byte offset of the offending record's length prefix in the body.
    """

    def __init__(self, message: str, *, offset: int, status: int = 400) -> None:
        super().__init__(message)
        self.offset = offset
        self.status = status


class BatchParser:
    """Incremental parser of a record batch: ``feed`` chunks as they arrive, ``finish``
    at the end of the body. Errors are raised as soon as they are certain, so an
    oversize or truncated record is refused before the rest of the body is read.

    ``expected_size`` (the Content-Length, when known) lets a length prefix that points
    past the end of the body be reported as truncation (400) rather than as an oversize
    transaction (413): garbage is a format error, whatever number it happens to spell.
    """

    def __init__(self, max_record: int, expected_size: int | None = None) -> None:
        self._max_record = max_record
        self._expected = expected_size
        self._buf = bytearray()
        self._offset = 0  # body offset of _buf[0]
        self.records: list[bytes] = []

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        with memoryview(buf) as view:
            while end - pos >= 4:
                (length,) = _LENGTH.unpack_from(view, pos)
                offset = self._offset + pos
                self._check_length(offset, length)
                if end - pos - 4 < length:
                    break
                self.records.append(bytes(view[pos + 4 : pos + 4 + length]))
                pos += 4 + length
        del buf[:pos]
        self._offset += pos

    def _check_length(self, offset: int, length: int) -> None:
        if length == 0:
            raise BatchError(
                f"empty record at byte offset {offset}: transactions must not be empty",
                offset=offset,
            )
        if self._expected is not None and offset + 4 + length > self._expected:
            raise BatchError(
                f"truncated record at byte offset {offset}: length prefix says {length} "
                f"bytes, the body has {max(0, self._expected - offset - 4)} after it",
                offset=offset,
            )
        if length > self._max_record:
            raise BatchError(
                f"record at byte offset {offset} is {length} bytes, over the "
                f"{self._max_record}-byte transaction limit",
                offset=offset,
                status=413,
            )

    def finish(self) -> list[bytes]:
        """The records, once the body has ended; raises ``BatchError`` on leftovers."""
        left, offset = len(self._buf), self._offset
        if left and left < 4:
            raise BatchError(
                f"truncated length prefix at byte offset {offset}: {left} of 4 bytes",
                offset=offset,
            )
        if left:
            (length,) = _LENGTH.unpack_from(self._buf, 0)
            raise BatchError(
                f"truncated record at byte offset {offset}: length prefix says {length} "
                f"bytes, only {left - 4} follow",
                offset=offset,
            )
        if not self.records:
            raise BatchError("empty body: expected at least one record", offset=0)
        return self.records


def parse_batch(data: bytes, max_record: int) -> list[bytes]:
    """All records of a complete batch (one WebSocket message)."""
    parser = BatchParser(max_record, expected_size=len(data))
    parser.feed(data)
    return parser.finish()
