"""Length-prefixed frames on a byte stream, as a pure decoder (no sockets, no asyncio).

A frame is ``length (4 bytes, big-endian) | kind (1 byte) | payload (length bytes)``;
``length`` counts the payload only. TLS gives us a reliable ordered byte stream but no
message boundaries; this module restores them. It is pure so that the property tests
can feed it every possible chunking of a stream and the transport stays a thin shell.

The decoder rejects a frame as soon as its header arrives (before buffering the payload)
if the length exceeds ``max_frame`` or the kind is unknown, so that a hostile peer
cannot make us buffer gigabytes before we notice.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from enum import IntEnum
from typing import Final

from p2p.errors import FrameError

HEADER: Final = struct.Struct(">IB")
HEADER_SIZE: Final = HEADER.size
_pack = HEADER.pack
MAX_LENGTH: Final = 2**32 - 1


class FrameKind(IntEnum):
    """Frame kinds.

    DATA carries the consensus messages; PING/PONG are link keep-alives; every other
    kind is an application channel (CRDT sync, ...) with its own handler, so one
    subsystem's decoder never sees another's bytes. 16..255 are reserved.
    """

    DATA = 0
    PING = 1
    PONG = 2
    CRDT = 3
    NAT = 4
    DHT = 5
    CONTENT = 6


LINK_KINDS: Final = frozenset({FrameKind.DATA, FrameKind.PING, FrameKind.PONG})
KNOWN_KINDS: Final = frozenset(int(k) for k in LINK_KINDS)
"""Kinds every link understands; channel kinds are added by whoever registers them."""


def encode_frame(kind: int, payload: bytes) -> bytes:
    """The wire bytes of one frame (one copy of the payload)."""
    try:
        return _pack(len(payload), kind) + payload
    except struct.error:
        if not 0 <= kind <= 255:
            raise ValueError(f"frame kind {kind} is not a byte") from None
        raise ValueError(f"payload of {len(payload)} bytes does not fit a 32-bit length") from None


class FrameDecoder:
    """Incremental decoder: ``feed`` any chunking of the stream, get whole frames back.

    After a ``FrameError`` the decoder is poisoned: the stream position is lost, so every
    later ``feed`` raises too and the owner must drop the connection.
    """

    def __init__(self, max_frame: int, kinds: Collection[int] = KNOWN_KINDS) -> None:
        if max_frame < 0 or max_frame > MAX_LENGTH:
            raise ValueError(f"max_frame={max_frame} must be in [0, 2**32-1]")
        self._max = max_frame
        self._kinds = frozenset(kinds)
        self._buf = bytearray()
        self._error: FrameError | None = None

    def allow(self, kind: int) -> None:
        """Accept frames of ``kind`` from now on (a channel registered after the link began)."""
        self._kinds = self._kinds | {kind}

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Consume ``data``; return the frames it completes, in stream order.

        Raises ``FrameError`` on an oversize length or an unknown kind. Frames completed
        before the bad header in the same chunk are lost with the connection, on purpose:
        a peer that breaks framing is dropped, not partially trusted.
        """
        if self._error is not None:
            raise self._error
        if self._buf:
            self._buf += data
            src: bytes | bytearray = self._buf
        else:
            src = data
        try:
            frames, used = self._parse(src)
        except FrameError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        if src is self._buf:
            del self._buf[:used]
        elif used < len(data):
            self._buf = bytearray(data[used:])
        return frames

    def _parse(self, src: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
        frames: list[tuple[int, bytes]] = []
        end_of_data = len(src)
        off = 0
        unpack = HEADER.unpack_from
        max_frame = self._max
        kinds = self._kinds
        # slicing bytes copies once; a bytearray is sliced through a view to copy once too
        view = memoryview(src) if isinstance(src, bytearray) else None
        sliceable = src if view is None else view
        try:
            while end_of_data - off >= HEADER_SIZE:
                length, kind = unpack(src, off)
                if length > max_frame:
                    raise FrameError(f"frame length {length} exceeds max_frame {max_frame}")
                if kind not in kinds:
                    raise FrameError(f"unknown frame kind {kind}")
                end = off + HEADER_SIZE + length
                if end > end_of_data:
                    break
                frames.append((kind, bytes(sliceable[off + HEADER_SIZE : end])))
                off = end
        finally:
            if view is not None:
                view.release()
        return frames, off
