"""Small blocking HTTP client for the node API: ``dagrider submit``, ``tail``, ``crdt``,
``content``.

Standard library only, so that scripts and tests can talk to a node without an event
loop. The batch format is the API's high-rate ingest: 4-byte big-endian length + bytes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from dagrider.node.batch import BATCH_CONTENT_TYPE, encode_batch

log = logging.getLogger(__name__)


class ApiError(Exception):
    """The node answered with an error status; ``status`` and the node's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class LogPruned(ApiError):
    """410: the node no longer keeps the log before ``first_available``."""

    def __init__(self, message: str, first_available: int, requested: int) -> None:
        super().__init__(410, message)
        self.first_available = first_available
        self.requested = requested


def _error(status: int, body: bytes) -> ApiError:
    """The exception for an error answer (``LogPruned`` for a 410 that names the cut)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return ApiError(status, body.decode(errors="replace"))
    message = str(doc.get("error", body.decode(errors="replace")))
    first, requested = doc.get("first_available"), doc.get("requested")
    if status == 410 and isinstance(first, int) and isinstance(requested, int):
        return LogPruned(message, first, requested)
    return ApiError(status, message)


def _skip_to(api: str, exc: LogPruned) -> int:
    """Say that the log resumes after a pruned gap; the ``after`` to resume with."""
    log.warning(
        "%s: log entries %d..%d are pruned on this node; continuing at index %d",
        api,
        exc.requested,
        exc.first_available - 1,
        exc.first_available,
    )
    return exc.first_available - 1


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
        raise _error(exc.code, exc.read()) from None


def submit_one(api: str, tx: bytes, token: str | None = None) -> str:
    doc = _request(f"{api}/v1/transactions", tx, "application/octet-stream", token)
    return str(doc["id"])


def submit_batch(
    api: str, txs: Sequence[bytes], token: str | None = None, *, ids: bool = False
) -> dict[str, Any]:
    """Send ``txs`` as one batch; the node's answer (``accepted``, ``first_id``,
    ``last_id``, and with ``ids`` every transaction's id in order)."""
    query = "?ids=1" if ids else ""
    doc: dict[str, Any] = _request(
        f"{api}/v1/transactions/batch{query}", encode_batch(txs), BATCH_CONTENT_TYPE, token
    )
    return doc


def get_log(api: str, after: int = -1, limit: int = 1000, token: str | None = None) -> list[Any]:
    """One page of ``/v1/log``; raises :class:`LogPruned` if ``after + 1`` is pruned."""
    doc = _request(f"{api}/v1/log?after={after}&limit={limit}", token=token)
    entries: list[Any] = doc["entries"] if isinstance(doc, dict) else doc
    return entries


def full_log(api: str, token: str | None = None, *, skip_pruned: bool = True) -> list[Any]:
    """Every committed entry the node still has, paging through ``/v1/log``.

    On a node that prunes its log (``[storage] keep_log_entries``) the list starts at
    the node's first available index (each entry carries its ``index``) and a warning
    on the ``dagrider.node.client`` logger says so; ``skip_pruned=False`` raises
    :class:`LogPruned` instead.
    """
    out: list[Any] = []
    after = -1
    while True:
        try:
            page = get_log(api, after, 10_000, token)
        except LogPruned as exc:
            if not skip_pruned:
                raise
            after = _skip_to(api, exc)
            continue
        if not page:
            return out
        out += page
        after = int(page[-1]["index"])


def entry_data(entry: dict[str, Any]) -> bytes:
    return base64.b64decode(entry["data"])


def status(api: str, token: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = _request(f"{api}/v1/status", token=token)
    return doc


def stream_log(
    api: str, after: int = -1, token: str | None = None, *, skip_pruned: bool = True
) -> Iterator[dict[str, Any]]:
    """Follow ``/v1/log/stream`` (Server-Sent Events) forever, yielding entries.

    If the node has pruned the log at ``after + 1`` (at the start, or later because
    this reader fell behind the cut), the stream continues at the node's first
    available index and a warning on the ``dagrider.node.client`` logger names the
    skipped range; ``skip_pruned=False`` raises :class:`LogPruned` instead. Other
    error answers raise :class:`ApiError` with the node's own message.
    """
    while True:
        try:
            yield from _stream_once(api, after, token)
            return
        except LogPruned as exc:
            if not skip_pruned:
                raise
            after = _skip_to(api, exc)


def _stream_once(api: str, after: int, token: str | None) -> Iterator[dict[str, Any]]:
    req = urllib.request.Request(f"{api}/v1/log/stream?after={after}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        r = urllib.request.urlopen(req, timeout=None)
    except urllib.error.HTTPError as exc:
        raise _error(exc.code, exc.read()) from None
    with r:
        event = "message"
        for raw in r:
            line = raw.decode().rstrip("\n")
            if not line:
                event = "message"
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
                if event == "error":  # the node ended the stream (the cut passed us)
                    raise _error(int(json.loads(data).get("status", 500)), data.encode())
                yield json.loads(data)


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


# --- content ---------------------------------------------------------------------------

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``."""

COPY_CHUNK = 1024 * 1024
FETCH_POLL_S = 0.25


class _CountingReader(io.RawIOBase):
    """A file wrapper that reports how much of it was read (the upload's progress)."""

    def __init__(self, f: BinaryIO, total: int, progress: Progress | None) -> None:
        self.f = f
        self.total = total
        self.done = 0
        self.progress = progress

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(COPY_CHUNK if size is None or size < 0 else size)
        self.done += len(data)
        if self.progress is not None:
            self.progress(self.done, self.total)
        return data


def _open(url: str, method: str, token: str | None, **kw: Any) -> Any:
    req = urllib.request.Request(url, method=method, **kw)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        return urllib.request.urlopen(req, timeout=None)
    except urllib.error.HTTPError as exc:
        raise _error(exc.code, exc.read()) from None


def content_put(
    api: str, path: Path, token: str | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Stream a file to ``PUT /v1/content``; the node's answer (cid, size, chunks)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        reader = _CountingReader(f, size, progress)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with _open(f"{api}/v1/content", "PUT", token, data=reader, headers=headers) as r:
            doc: dict[str, Any] = json.loads(r.read())
    return doc


def content_status(api: str, cid: str, token: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = _request(f"{api}/v1/content/{cid}/status", token=token)
    return doc


def content_get(
    api: str,
    cid: str,
    out: Path,
    token: str | None = None,
    *,
    fetch_progress: Progress | None = None,
    progress: Progress | None = None,
) -> int:
    """Have the node fetch ``cid`` from the mesh (if it lacks it), then download it.

    The file appears at ``out`` only once complete (written beside it, then renamed).
    Returns the number of bytes written.
    """
    with _open(f"{api}/v1/content/{cid}/fetch", "POST", token, data=b"") as r:
        state: dict[str, Any] = json.loads(r.read())
    while state.get("state") != "held":
        if state.get("state") == "failed":
            raise ApiError(502, str(state.get("error", "fetch failed")))
        if state.get("state") == "absent":
            raise ApiError(404, f"content {cid} is neither held nor being fetched")
        if fetch_progress is not None and state.get("size"):
            fetch_progress(int(state.get("have_bytes", 0)), int(state["size"]))
        time.sleep(FETCH_POLL_S)
        state = content_status(api, cid, token)
    total = int(state["size"])
    tmp = out.with_name(out.name + ".part")
    written = 0
    with _open(f"{api}/v1/content/{cid}?local=1", "GET", token) as r, tmp.open("wb") as f:
        while chunk := r.read(COPY_CHUNK):
            f.write(chunk)
            written += len(chunk)
            if progress is not None:
                progress(written, total)
    if written != total:
        tmp.unlink(missing_ok=True)
        raise ApiError(502, f"download ended after {written} of {total} bytes")
    tmp.replace(out)
    return written


def content_providers(api: str, cid: str, token: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = _request(f"{api}/v1/content/{cid}/providers", token=token)
    return doc
