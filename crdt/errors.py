"""Errors of the CRDT store; each names exactly what was wrong.

Peer data enters an error text only through ``p2p.strictwire.describe`` (at most 100
characters of it), and a decoder's error text is cut at ``p2p.strictwire.DETAIL_CHARS``.
"""

from __future__ import annotations


class CrdtError(Exception):
    """Base class of every error raised by :mod:`crdt`."""


class InvalidOperation(CrdtError):
    """An operation, intent or wire state is malformed for its type."""
