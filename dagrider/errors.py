"""One small error hierarchy for the consensus core.

Every error names what was wrong so that a log line or a test failure points at the
offending field or rule, never at a stack trace deep inside a library.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable

SHORT_CHARS = 200
"""Longest rendering of a peer-chosen value in an error text."""
MAX_REASON_CHARS = 400
"""Longest ``reason`` of a :class:`DecodeError`: one frame never makes a long log line."""


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
    """A rendering of ``value`` (peer data) of at most ``limit`` characters, cut with "…"."""
    return _cut(_REPR.repr(value), limit)


def short_keys(keys: Iterable[object], limit: int = SHORT_CHARS) -> str:
    """Map keys for an error text: a stable order (str and bytes keys do not sort
    together), at most 8 keys of at most 40 characters each, ``limit`` in all."""
    ordered = sorted(keys, key=_key_order)
    text = ", ".join(short(k, 40) for k in ordered[:8])
    return _cut(f"[{text}{', …' if len(ordered) > 8 else ''}]", limit)


def _key_order(key: object) -> tuple[str, object]:
    return (type(key).__name__, key if type(key) in (str, bytes, int) else "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class DagriderError(Exception):
    """Base of every error the consensus core raises on purpose."""


class DecodeError(DagriderError):
    """Bytes from the wire do not form a valid message.

    ``field`` names the part that failed (``"round"``, ``"strong_edges[3].digest"``,
    ``"frame"``...), so that the shell can log it and score the sender.
    """

    def __init__(self, field: str, reason: str) -> None:
        reason = _cut(reason, MAX_REASON_CHARS)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class CommitteeError(DagriderError):
    """A committee or key file is malformed or violates the n = 3f+1 rules."""


class InvalidVertex(DagriderError):
    """A delivered vertex breaks a DAG rule; it is dropped and counted against its source."""


class InvalidShare(DagriderError):
    """A coin share fails verification; it is never counted."""
