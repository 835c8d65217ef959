"""Errors of the CRDT store; each names exactly what was wrong."""

from __future__ import annotations


class CrdtError(Exception):
    """Base class of every error raised by :mod:`crdt`."""


class InvalidOperation(CrdtError):
    """An operation, intent or wire state is malformed for its type."""
