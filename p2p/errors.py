"""One small error hierarchy for the peer-to-peer layer.

Every error says what was wrong (which peer, which key, which limit) so that a log line
points at the cause rather than at a stack trace inside ``ssl`` or ``asyncio``.
"""

from __future__ import annotations

import errno

from p2p.strictwire import cut


class P2PError(Exception):
    """Base of every error the p2p layer raises on purpose."""


class WireDecodeError(P2PError, ValueError):
    """Bytes from a peer are not a valid message of some p2p codec; ``field`` names what
    was wrong (``"frame"``, ``"t"``, a field name, ``"a.b[2]"``...) and ``detail`` how.

    Each codec (NAT, DHT, content, RPC) raises its own subclass, so a caller can tell
    which layer refused the bytes; none of them raises anything else on bad input.
    Peer data appears in ``detail`` only through ``p2p.strictwire.describe`` (at most 100
    characters), and ``detail`` is cut at ``p2p.strictwire.DETAIL_CHARS`` whatever its source.
    """

    def __init__(self, field: str, detail: str) -> None:
        detail = cut(detail)
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
