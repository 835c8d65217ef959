"""One small error hierarchy for the consensus core.

Every error names what was wrong so that a log line or a test failure points at the
offending field or rule, never at a stack trace deep inside a library.
"""

from __future__ import annotations

from p2p.strictwire import cut


class DagriderError(Exception):
    """Base of every error the consensus core raises on purpose."""


class DecodeError(DagriderError):
    """Bytes from the wire do not form a valid message.

    ``field`` names the part that failed (``"round"``, ``"strong_edges[3].digest"``,
    ``"frame"``...), so that the shell can log it and score the sender. ``reason`` is cut
    at ``p2p.strictwire.DETAIL_CHARS``, and quotes peer data only through
    ``p2p.strictwire.describe`` (at most 100 characters of it).
    """

    def __init__(self, field: str, reason: str) -> None:
        reason = cut(reason)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class CommitteeError(DagriderError):
    """A committee or key file is malformed or violates the n = 3f+1 rules."""


class InvalidVertex(DagriderError):
    """A delivered vertex breaks a DAG rule; it is dropped and counted against its source."""


class InvalidShare(DagriderError):
    """A coin share fails verification; it is never counted."""
