"""``dagrider node --config FILE``: the composition root of one committee member.

Loads and validates the configuration, key and committee; opens the store; starts the
peer transport and the HTTP API; turns SIGTERM/SIGINT into a clean shutdown with the
store flushed. Every start-up failure ends with one clear line and a distinct exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from dagrider.errors import CommitteeError
from dagrider.node.api import build_app
from dagrider.node.cluster import READY_LINE
from dagrider.node.config import ConfigError, NodeConfig, load_config
from dagrider.node.http_limits import LimitedSite
from dagrider.node.memory import bound_allocator, trim_loop
from dagrider.node.peer_node import PeerNode
from dagrider.node.runtime import Node
from dagrider.node.service import StorageCorrupt, StorageUnavailable
from dagrider.node.store import StoreError

EXIT_CONFIG = 2  # bad config, key or committee file
EXIT_RUNTIME = 3  # address in use, unusable data directory, damaged store

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... msg="..." key=value`` lines for humans and grep."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={json.dumps(record.getMessage())}",
        ]
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS:
                parts.append(f"{key}={json.dumps(value, default=str)}")
        return " ".join(parts)


def setup_logging(fmt: str, level: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger("dagrider")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    for name in ("p2p", "aiohttp.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.WARNING if name == "aiohttp.access" else level.upper())
        lg.propagate = False
    return root


def run(config_path: Path, role: str | None = None) -> int:
    """Entry point of ``dagrider node``; returns the process exit code."""
    try:
        cfg = load_config(config_path, role)
    except ConfigError as exc:
        print(f"dagrider node: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    log = setup_logging(cfg.log_format, cfg.log_level)
    bound_allocator()  # freed buffers go back to the system (dagrider/node/memory.py)
    if os.environ.get("DAGRIDER_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop

            uvloop.install()
        except ImportError:  # pragma: no cover - uvloop is a dependency, but stay usable
            pass
    try:
        return asyncio.run(_serve(cfg, log))
    except KeyboardInterrupt:  # pragma: no cover - signals are handled in _serve
        return 0


def _build(cfg: NodeConfig, log: logging.Logger) -> Node | PeerNode:
    if cfg.is_peer:
        return PeerNode(cfg, log.getChild("peer"))
    return Node(cfg, log.getChild("node"))


async def _serve(cfg: NodeConfig, log: logging.Logger) -> int:
    try:
        node = _build(cfg, log)
    except FileNotFoundError as exc:
        return _fail(log, EXIT_CONFIG, f"missing file: {exc.filename}")
    except (CommitteeError, ConfigError, ValueError) as exc:
        return _fail(log, EXIT_CONFIG, f"invalid key or committee: {exc}")
    except StorageCorrupt as exc:
        return _fail(log, EXIT_RUNTIME, f"damaged store: {exc}")
    except (StoreError, StorageUnavailable, OSError) as exc:
        return _fail(log, EXIT_RUNTIME, f"cannot open the data directory: {exc}")
    runner: web.AppRunner | None = None
    try:
        try:
            await node.start()
        except StorageCorrupt as exc:
            await node.stop()
            return _fail(log, EXIT_RUNTIME, f"damaged store: {exc}")
        except OSError as exc:
            await node.stop()
            host, port = node.listen
            return _fail(log, EXIT_RUNTIME, _os_reason(exc, f"peer listen {host}:{port}"))
        app = build_app(
            node,
            cfg.api_token,
            cfg.max_body_bytes,
            crdt=node.crdt,
            content=node.mesh.content_backend() if node.mesh is not None else None,
            max_upload=cfg.content_max_upload_bytes,
            member=not cfg.is_peer,
            bodies_budget=cfg.api_bodies_budget_bytes,
            body_timeout=cfg.api_idle_timeout,
            max_batch=cfg.max_pending,
        )
        # keepalive_timeout closes a connection idle between requests and one whose
        # request head is unfinished that long after it opened (slow or silent clients)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=cfg.api_idle_timeout
        )
        await runner.setup()
        host, port = cfg.api_listen
        site = LimitedSite(runner, host, port, cfg.api_max_connections)
        try:
            await site.start()
        except OSError as exc:
            await node.stop()
            return _fail(log, EXIT_RUNTIME, _os_reason(exc, f"API listen {host}:{port}"))
        log.info(
            "serving",
            extra={
                "role": cfg.role,
                "key": node.identity.public_key.hex(),
                "api": f"http://{host}:{port}",
                "peer_listen": node.listen,
            },
        )
        # Whatever the log level: scripts (and `dagrider cluster up`) wait for this line.
        print(f"{READY_LINE} http://{host}:{port}", file=sys.stderr, flush=True)
        trimmer = asyncio.create_task(trim_loop(), name="malloc-trim")  # memory.py
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        failed = getattr(node, "failed", None)
        waits = [asyncio.ensure_future(stop.wait())]
        if isinstance(failed, asyncio.Event):
            waits.append(asyncio.ensure_future(failed.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        trimmer.cancel()
        failure = getattr(node, "failure", None)
        if failure is not None:
            await node.stop()
            return _fail(log, EXIT_RUNTIME, f"damaged store: {failure}")
        log.info("shutting down", extra={"role": cfg.role})
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.cleanup()
    await node.stop()
    return 0


def _os_reason(exc: OSError, what: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"{what}: address already in use"
    return f"{what}: {exc.strerror or exc}"


def _fail(log: logging.Logger, code: int, reason: str) -> int:
    reason = " ".join(reason.split())  # one line, whatever the cause's text holds
    log.error(reason)
    print(f"dagrider node: error: {reason}", file=sys.stderr)
    return code


__all__ = ["EXIT_CONFIG", "EXIT_RUNTIME", "NodeConfig", "run"]
