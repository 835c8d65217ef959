"""The record-batch format of the high-rate ingest (sans-I/O).

A batch is a sequence of records, each a 4-byte big-endian length and that many bytes
of one transaction. Used by ``POST /v1/transactions/batch``, the ``/v1/ingest``
WebSocket, the command-line client and the benchmark's load generator.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

BATCH_CONTENT_TYPE = "application/x-dagrider-batch"
_LENGTH = struct.Struct(">I")


ID_BYTES = 32
"""A transaction id is BLAKE2b-256 of its bytes (``dagrider.node.service.tx_id`` in hex)."""


def encode_batch(txs: Iterable[bytes]) -> bytes:
    """Records for ``/v1/transactions/batch`` and ``/v1/ingest``: length (u32 BE) + bytes."""
    return b"".join(_LENGTH.pack(len(tx)) + tx for tx in txs)


def batch_ids(txs: Iterable[bytes]) -> bytes:
    """The ids of ``txs`` concatenated (32 bytes each): computed once per transaction at
    ingest and carried with the batch, so nothing downstream hashes the bytes again."""
    blake2b = hashlib.blake2b
    return b"".join([blake2b(tx, digest_size=ID_BYTES).digest() for tx in txs])


def split_ids(ids: bytes) -> list[bytes]:
    """``batch_ids`` back into one 32-byte id per transaction."""
    if len(ids) % ID_BYTES:
        raise ValueError(f"an id list is a multiple of {ID_BYTES} bytes, got {len(ids)}")
    return [ids[k : k + ID_BYTES] for k in range(0, len(ids), ID_BYTES)]


class RecordBatch(Sequence[bytes]):
    """A parsed record batch: the transactions, plus the body they came in.

    It is a ``Sequence[bytes]`` (what ``NodeService.submit`` takes), so any service can
    accept it; the node also uses ``records``, the batch exactly as the client sent it,
    to store the batch as one row instead of re-encoding it, and ``ids`` once computed.
    """

    __slots__ = ("_ids", "records", "txs")

    def __init__(self, txs: list[bytes], records: bytes | None = None) -> None:
        self.txs = txs
        self.records = encode_batch(txs) if records is None else records
        self._ids: bytes | None = None

    @property
    def ids(self) -> bytes:
        """``batch_ids(self)``, computed on first use."""
        if self._ids is None:
            self._ids = batch_ids(self.txs)
        return self._ids

    def __len__(self) -> int:
        return len(self.txs)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        return self.txs[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.txs)


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
    return parse_record_batch(data, max_record).txs


def parse_record_batch(data: bytes, max_record: int) -> RecordBatch:
    """A complete batch (one WebSocket message or request body) as a ``RecordBatch``
    that keeps ``data`` itself as its stored form.

    One pass over the length prefixes, without the incremental parser's buffer: the
    whole body is already in hand. Errors are the same as ``BatchParser``'s.
    """
    txs: list[bytes] = []
    unpack = _LENGTH.unpack_from
    pos, end = 0, len(data)
    with memoryview(data) as view:
        while end - pos >= 4:
            (length,) = unpack(view, pos)
            if length == 0 or pos + 4 + length > end or length > max_record:
                BatchParser(max_record, expected_size=end)._check_length(pos, length)
                raise AssertionError("unreachable: _check_length raised")  # pragma: no cover
            txs.append(bytes(view[pos + 4 : pos + 4 + length]))
            pos += 4 + length
    if pos != end:
        raise BatchError(
            f"truncated length prefix at byte offset {pos}: {end - pos} of 4 bytes", offset=pos
        )
    if not txs:
        raise BatchError("empty body: expected at least one record", offset=0)
    return RecordBatch(txs, bytes(data))
