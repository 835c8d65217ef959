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

    DATA carries the consensus messages; PING/PONG are link keep-alives; GOAWAY and
    GOAWAY_ACK hand a replaced link over without losing a frame; every other kind is an
    application channel (CRDT sync, ...) with its own handler, so one
    subsystem's decoder never sees another's bytes. 16..255 are reserved.
    """

    DATA = 0
    PING = 1
    PONG = 2
    CRDT = 3
    NAT = 4
    DHT = 5
    CONTENT = 6
    STATE = 7  # consensus checkpoints and state transfer (dagrider.statesync)
    GOAWAY = 8  # "nothing more from me on this link": it was replaced (p2p.link.Link.retire)
    GOAWAY_ACK = 9  # "I have your GOAWAY, so everything you sent before it"


LINK_KINDS: Final = frozenset(
    {FrameKind.DATA, FrameKind.PING, FrameKind.PONG, FrameKind.GOAWAY, FrameKind.GOAWAY_ACK}
)
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

    A frame longer than one read is not assembled by growing a buffer: the decoder keeps
    the pieces (views of the fed chunks, which are immutable ``bytes``) and joins them
    once when the last piece arrives, so each payload byte is copied exactly once
    (profiled: extend-and-slice of ~1 MiB frames was a large part of a receiving link's
    CPU).

    After a ``FrameError`` the decoder is poisoned: the stream position is lost, so every
    later ``feed`` raises too and the owner must drop the connection.
    """

    def __init__(self, max_frame: int, kinds: Collection[int] = KNOWN_KINDS) -> None:
        if max_frame < 0 or max_frame > MAX_LENGTH:
            raise ValueError(f"max_frame={max_frame} must be in [0, 2**32-1]")
        self._max = max_frame
        self._kinds = frozenset(kinds)
        self._head = b""  # a header cut by the end of a chunk (fewer than HEADER_SIZE bytes)
        self._kind = -1  # kind of the frame whose payload is being gathered, -1 if none
        self._missing = 0  # payload bytes that frame still lacks
        self._parts: list[bytes | memoryview] = []
        self._have = 0
        self._error: FrameError | None = None

    def allow(self, kind: int) -> None:
        """Accept frames of ``kind`` from now on (a channel registered after the link began)."""
        self._kinds = self._kinds | {kind}

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        if self._kind >= 0:
            return HEADER_SIZE + self._have
        return len(self._head)

    @property
    def announced(self) -> int:
        """Bytes the incomplete frame will hold once whole (header included), 0 if none.

        What a memory budget charges: the peer chose this number in the header, so it is
        charged at once, before the payload arrives, not as the buffer grows.
        """
        if self._kind >= 0:
            return HEADER_SIZE + self._have + self._missing
        return len(self._head)

    def discard(self) -> None:
        """Drop any partial frame and refuse further input (the connection is gone)."""
        self._error = self._error or FrameError("decoder discarded: the connection closed")
        self._head = b""
        self._kind = -1
        self._parts = []
        self._have = 0
        self._missing = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        """Consume ``data``; return the frames it completes, in stream order.

        Raises ``FrameError`` on an oversize length or an unknown kind. Frames completed
        before the bad header in the same chunk are lost with the connection, on purpose:
        a peer that breaks framing is dropped, not partially trusted.
        """
        if self._error is not None:
            raise self._error
        if type(data) is not bytes:
            data = bytes(data)  # pieces are kept as views: they must not change under us
        try:
            return self._feed(data)
        except FrameError as exc:
            self._error = exc
            self._head = b""
            self._kind = -1
            self._parts = []
            self._have = 0
            raise

    def _check(self, length: int, kind: int) -> None:
        if length > self._max:
            raise FrameError(f"frame length {length} exceeds max_frame {self._max}")
        if kind not in self._kinds:
            raise FrameError(f"unknown frame kind {kind}")

    def _feed(self, data: bytes) -> list[tuple[int, bytes]]:
        frames: list[tuple[int, bytes]] = []
        size = len(data)
        off = 0
        if self._kind >= 0:  # a frame's payload is being gathered
            missing = self._missing
            if size < missing:
                self._parts.append(data)
                self._have += size
                self._missing = missing - size
                return frames
            self._parts.append(memoryview(data)[:missing] if size > missing else data)
            frames.append((self._kind, b"".join(self._parts)))
            self._kind = -1
            self._parts = []
            self._have = 0
            off = missing
        elif self._head:
            need = HEADER_SIZE - len(self._head)
            if size < need:
                self._head += data
                return frames
            length, kind = HEADER.unpack(self._head + data[:need])
            self._head = b""
            self._check(length, kind)
            off = need
            if size - off < length:
                self._start(kind, length, data, off)
                return frames
            frames.append((kind, data[off : off + length]))
            off += length
        unpack = HEADER.unpack_from
        max_frame = self._max
        kinds = self._kinds
        while size - off >= HEADER_SIZE:
            length, kind = unpack(data, off)
            if length > max_frame or kind not in kinds:
                self._check(length, kind)
            start = off + HEADER_SIZE
            end = start + length
            if end > size:
                self._start(kind, length, data, start)
                return frames
            frames.append((kind, data[start:end]))
            off = end
        if off < size:
            self._head = data[off:]
        return frames

    def _start(self, kind: int, length: int, data: bytes, start: int) -> None:
        """Begin gathering a frame whose payload runs past the end of ``data``."""
        self._kind = kind
        have = len(data) - start
        self._parts = [memoryview(data)[start:]] if have else []
        self._have = have
        self._missing = length - have


class FrameBudget:
    """Bytes that the partial frames of a class of links may hold at once, all together.

    Each link charges the ``announced`` size of the frame it is gathering (at the header,
    before the payload arrives) and gives it back when the frame completes or the link
    closes. A link whose charge does not fit is dropped by its owner, so the memory that
    links of this class can pin with frames they never finish is ``limit``, not
    ``links * max_frame``.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"frame budget limit={limit} must be >= 0")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refused = 0

    def recharge(self, held: int, want: int) -> bool:
        """Change one holder's charge from ``held`` to ``want`` bytes; False (and no change)
        if the growth does not fit. Shrinking always succeeds."""
        if held < 0 or want < 0 or held > self.used:
            raise ValueError(f"bad recharge held={held} want={want} used={self.used}")
        if want > held and self.used - held + want > self.limit:
            self.refused += 1
            return False
        self.used += want - held
        self.peak = max(self.peak, self.used)
        return True
