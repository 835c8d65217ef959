"""Errors of the CRDT store; each names exactly what was wrong."""

from __future__ import annotations

import reprlib

SHORT_CHARS = 200
"""Longest rendering of a peer-chosen value in an error text."""
MAX_DETAIL_CHARS = 400
"""Longest text a decoder's error keeps: one frame never makes a long log line."""


class CrdtError(Exception):
    """Base class of every error raised by :mod:`crdt`."""


class InvalidOperation(CrdtError):
    """An operation, intent or wire state is malformed for its type."""


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` with a few items per level and three levels: a msgpack value up to
    1024 levels deep (whose ``repr`` raises ``RecursionError``) or holding megabyte
    strings renders in bounded time and size. Long bytes are cut before ``repr``."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 6
        self.maxdict = 6
        self.maxstring = self.maxother = SHORT_CHARS
        self.maxlong = 40

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[: self.maxstring]) + ("…" if len(x) > self.maxstring else "")

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return self.repr_bytes(bytes(x[: self.maxstring + 1]), level)


_REPR = _BoundedRepr()


def short(value: object, limit: int = SHORT_CHARS) -> str:
    """A rendering of ``value`` (peer data) of at most ``limit`` characters, cut with "…".

    Use it instead of ``{value!r:.80}``, which builds the whole ``repr`` first (and
    raises ``RecursionError`` on a deeply nested value) before cutting it.
    """
    return clip(_REPR.repr(value), limit)


def clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, ending in "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
