"""One small error hierarchy for the peer-to-peer layer.

Every error says what was wrong (which peer, which key, which limit) so that a log line
points at the cause rather than at a stack trace inside ``ssl`` or ``asyncio``.
"""

from __future__ import annotations

import errno
import reprlib
from collections.abc import Iterable

SHORT_CHARS = 200
"""Longest rendering of a peer-chosen value in an error text."""
MAX_DETAIL_CHARS = 400
"""Longest ``detail`` of a :class:`WireDecodeError`: one frame never makes a long log line."""


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


class P2PError(Exception):
    """Base of every error the p2p layer raises on purpose."""


class WireDecodeError(P2PError, ValueError):
    """Bytes from a peer are not a valid message of some p2p codec; ``field`` names what
    was wrong (``"frame"``, ``"t"``, a field name, ``"a.b[2]"``...) and ``detail`` how.

    Each codec (NAT, DHT, content, RPC) raises its own subclass, so a caller can tell
    which layer refused the bytes; none of them raises anything else on bad input.
    Peer data appears in ``detail`` only through :func:`short`, and ``detail`` is cut
    at ``MAX_DETAIL_CHARS`` whatever its source.
    """

    def __init__(self, field: str, detail: str) -> None:
        detail = _cut(detail, MAX_DETAIL_CHARS)
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class IdentityError(P2PError, ValueError):
    """A seed, key or certificate cannot serve as a node identity (wrong size, wrong type)."""


class FrameError(P2PError, ValueError):
    """Bytes from a peer do not form a valid frame (oversize length, unknown kind).

    The link that produced them is closed; the error never propagates past the link.
    """


class PeerAuthError(P2PError):
    """A TLS peer authenticated with a key we did not expect or do not allow."""


class PeerNotConnected(P2PError):
    """``send_wait`` was asked to send to a peer that has no live link (or lost it)."""


class AddressInUseError(P2PError, OSError):
    """The listen address is already taken by another listener.

    An ``OSError`` with ``errno.EADDRINUSE`` so that callers that already handle the
    stdlib error keep working, with a message naming the address.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"listen address {host}:{port} is already in use")
        self.host = host
        self.port = port
