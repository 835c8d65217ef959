"""The exceptions of the Python API, one small hierarchy.

An application catches :class:`DagriderError` for anything the API raises on purpose,
or a subclass for one case. Bad input raises :class:`InvalidArgument` (also a
``ValueError``) naming the argument and the value, and changes nothing. Internal
exceptions of the daemon's layers are translated at the API boundary, so application
code never imports from ``dagrider.node`` or ``p2p`` to handle errors.
"""

from __future__ import annotations

__all__ = [
    "Backpressure",
    "ContentUnavailable",
    "DagriderError",
    "InvalidArgument",
    "LogTruncated",
    "NotFound",
    "NotRunning",
    "PeerUnreachable",
    "RemoteError",
    "ServiceTimeout",
    "StorageFailure",
    "Unsupported",
]


class DagriderError(Exception):
    """Base of every exception the Python API raises on purpose."""


class InvalidArgument(DagriderError, ValueError):
    """An argument is malformed or out of its limits; nothing was changed.

    ``argument`` names the parameter (``"tx"``, ``"cid"``, ``"ttl"``, ...).
    """

    def __init__(self, argument: str, detail: str) -> None:
        super().__init__(f"{argument}: {detail}")
        self.argument = argument
        self.detail = detail


class NotRunning(DagriderError):
    """The node was used before ``start`` (or ``async with``) or after ``stop``."""


class Unsupported(DagriderError):
    """The node was configured without the subsystem the call needs (e.g. ``[dht]
    enabled = false`` and a content call, or a peer without a committee and a document
    call)."""


class Backpressure(DagriderError):
    """The node cannot take more work now (its mempool is full); retry after
    ``retry_after`` seconds. Nothing of the request was kept."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageFailure(DagriderError):
    """The node cannot write or trust its store (disk full, I/O error, a corrupt row):
    it accepts nothing until that is fixed. Nothing of the request was kept."""


class NotFound(DagriderError, LookupError):
    """The named document, blob or record does not exist (here or on the network)."""


class LogTruncated(DagriderError):
    """The requested log position was pruned (``[storage] keep_log_entries``);
    ``first`` is the lowest position still held."""

    def __init__(self, message: str, first: int) -> None:
        super().__init__(message)
        self.first = first


class ContentUnavailable(DagriderError):
    """No provider could deliver a blob (none found, or all failed verification)."""


class PeerUnreachable(DagriderError):
    """No link to the peer could be made (unknown address, dial failed, not allowed)."""


class ServiceTimeout(DagriderError, TimeoutError):
    """A service call's deadline passed before its answer came."""


class RemoteError(DagriderError):
    """The remote peer answered a service call with an error.

    ``code`` is machine-readable: ``"unknown-service"``, ``"unknown-method"``,
    ``"bad-request"``, ``"overloaded"``, ``"rate-limited"``, ``"internal"``, or a code
    the remote handler chose by raising :class:`~dagrider.sdk.services.ServiceError`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
