"""Structured log lines for the p2p layer.

The message carries ``event key=value ...`` so that plain formatters print something
greppable, and the same fields go into ``extra`` so that JSON formatters (the node's)
emit them as fields. Field names avoid the ``LogRecord`` attribute names.
"""

from __future__ import annotations

import logging

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    """Log ``event`` with ``fields``; never raises."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    extra = {("p2p_" + k if k in _RESERVED else k): v for k, v in fields.items()}
    extra["event"] = event
    logger.log(level, "%s %s", event, text, extra=extra)
