"""Small blocking HTTP client for the node API: ``dagrider submit`` and ``dagrider tail``.

Standard library only, so that scripts and tests can talk to a node without an event
loop. The batch format is the API's high-rate ingest: 4-byte big-endian length + bytes.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from dagrider.node.batch import BATCH_CONTENT_TYPE, encode_batch


class ApiError(Exception):
    """The node answered with an error status; ``status`` and the node's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _request(
    url: str,
    data: bytes | None = None,
    content_type: str | None = None,
    token: str | None = None,
    timeout: float = 30.0,
) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            message = json.loads(body).get("error", body.decode(errors="replace"))
        except (ValueError, AttributeError):
            message = body.decode(errors="replace")
        raise ApiError(exc.code, str(message)) from None


def submit_one(api: str, tx: bytes, token: str | None = None) -> str:
    doc = _request(f"{api}/v1/transactions", tx, "application/octet-stream", token)
    return str(doc["id"])


def submit_batch(api: str, txs: Sequence[bytes], token: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = _request(
        f"{api}/v1/transactions/batch", encode_batch(txs), BATCH_CONTENT_TYPE, token
    )
    return doc


def get_log(api: str, after: int = -1, limit: int = 1000, token: str | None = None) -> list[Any]:
    doc = _request(f"{api}/v1/log?after={after}&limit={limit}", token=token)
    entries: list[Any] = doc["entries"] if isinstance(doc, dict) else doc
    return entries


def full_log(api: str, token: str | None = None) -> list[Any]:
    """Every committed entry, paging through ``/v1/log``."""
    out: list[Any] = []
    after = -1
    while True:
        page = get_log(api, after, 10_000, token)
        if not page:
            return out
        out += page
        after = int(page[-1]["index"])


def entry_data(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["data"])


def status(api: str, token: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = _request(f"{api}/v1/status", token=token)
    return doc


def stream_log(api: str, after: int = -1, token: str | None = None) -> Iterator[dict[str, Any]]:
    """Follow ``/v1/log/stream`` (Server-Sent Events) forever, yielding entries."""
    req = urllib.request.Request(f"{api}/v1/log/stream?after={after}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=None) as r:
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("data:"):
                yield json.loads(line[5:].strip())


def crdt_get(
    api: str, doc: str, checkpoint: int | None = None, token: str | None = None
) -> dict[str, Any]:
    """A CRDT document's value (now, or as of ``checkpoint``) with its proof."""
    query = "" if checkpoint is None else f"?checkpoint={checkpoint}"
    out: dict[str, Any] = _request(f"{api}/v1/crdt/docs/{doc}{query}", token=token)
    return out


def crdt_put(api: str, doc: str, ops: list[dict[str, Any]], token: str | None = None) -> Any:
    """Apply ``ops`` (see :mod:`crdt.document`) to ``doc`` as one change."""
    body = json.dumps({"ops": ops}).encode()
    return _request(f"{api}/v1/crdt/docs/{doc}", body, "application/json", token)


def crdt_list(api: str, what: str, token: str | None = None) -> Any:
    """``what`` is ``docs`` or ``checkpoints``."""
    return _request(f"{api}/v1/crdt/{what}", token=token)
