"""Which chunks of a blob we hold: a fixed-length bit set with a stable byte form.

The byte form is what a partial download persists next to its ``.part`` file (and what
a ``Have`` answer may carry): bit ``i`` is bit ``i % 8`` (least significant first) of byte
``i // 8``; the bits past ``length`` in the last byte are zero. ``from_bytes`` rejects
anything else, so a damaged file is noticed rather than misread.
"""

from __future__ import annotations

from collections.abc import Iterator

from p2p.errors import P2PError


class BitmapError(P2PError, ValueError):
    """Bytes that are not the bitmap of ``length`` chunks."""


class Bitmap:
    """A mutable set of chunk indices in ``[0, length)`` with an O(1) population count."""

    __slots__ = ("_bits", "_count", "length")

    def __init__(self, length: int) -> None:
        if length < 0:
            raise ValueError(f"bitmap length {length} is negative")
        self.length = length
        self._bits = bytearray((length + 7) // 8)
        self._count = 0

    @classmethod
    def full(cls, length: int) -> Bitmap:
        bm = cls(length)
        for i in range(length):
            bm.add(i)
        return bm

    @classmethod
    def from_bytes(cls, data: bytes, length: int) -> Bitmap:
        """Parse the byte form; ``BitmapError`` on a wrong size or stray high bits."""
        bm = cls(length)
        if len(data) != len(bm._bits):
            raise BitmapError(
                f"expected {len(bm._bits)} bytes for {length} chunks, got {len(data)}"
            )
        if length % 8 and data and data[-1] >> (length % 8):
            raise BitmapError("bits set past the last chunk")
        bm._bits[:] = data
        bm._count = sum(bin(b).count("1") for b in data)
        return bm

    def copy(self) -> Bitmap:
        bm = Bitmap(self.length)
        bm._bits[:] = self._bits
        bm._count = self._count
        return bm

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def __contains__(self, index: int) -> bool:
        if not 0 <= index < self.length:
            return False
        return bool(self._bits[index >> 3] >> (index & 7) & 1)

    def add(self, index: int) -> None:
        if not 0 <= index < self.length:
            raise IndexError(f"chunk {index} not in [0, {self.length})")
        mask = 1 << (index & 7)
        if not self._bits[index >> 3] & mask:
            self._bits[index >> 3] |= mask
            self._count += 1

    def discard(self, index: int) -> None:
        if 0 <= index < self.length and index in self:
            self._bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
            self._count -= 1

    def __len__(self) -> int:
        """How many chunks are held (not the capacity: that is ``length``)."""
        return self._count

    @property
    def complete(self) -> bool:
        return self._count == self.length

    def missing(self) -> list[int]:
        """The indices not held, ascending."""
        return [i for i in range(self.length) if i not in self]

    def __iter__(self) -> Iterator[int]:
        return (i for i in range(self.length) if i in self)
