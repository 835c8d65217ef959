"""``dagrider content put|get|providers|ls``: the content layer from a shell.

``put FILE`` streams the file to a node, which chunks it, stores it and announces itself
as a provider; it prints the content id. ``get CID -o FILE`` asks a node to fetch the
blob from the mesh (verified chunk by chunk), shows progress, then downloads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dagrider.node.client import (
    ApiError,
    content_get,
    content_providers,
    content_put,
    content_status,
)


class ByteProgress:
    """``label [#####-----]  42.0%  120.3 MB/s`` on stderr, only when it is a terminal."""

    def __init__(self, label: str, width: int = 30, *, enabled: bool | None = None) -> None:
        self.label = label
        self.width = width
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        fraction = done / total if total else 1.0
        filled = int(self.width * fraction)
        rate = done / max(now - self.started, 1e-6) / 1e6
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"\r{self.label} [{bar}] {fraction * 100:5.1f}% {rate:8.1f} MB/s"
        print(line, end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ct = sub.add_parser("content", help="put and get blobs through a node's content layer")
    ct_sub = ct.add_subparsers(dest="content_command", required=True)
    put = ct_sub.add_parser("put", help="upload a file; prints its content id")
    put.add_argument("file", type=Path, help="the file to upload")
    get = ct_sub.add_parser("get", help="fetch a blob from the mesh into a file")
    get.add_argument("cid", help="content id of the blob")
    get.add_argument("-o", "--out", type=Path, required=True, help="file to write")
    prov = ct_sub.add_parser("providers", help="who provides a blob (DHT lookup)")
    prov.add_argument("cid", help="content id of the blob")
    stat = ct_sub.add_parser("status", help="whether a node holds a blob, or fetch progress")
    stat.add_argument("cid", help="content id of the blob")
    for p in ct_sub.choices.values():
        p.add_argument("--api", default="http://127.0.0.1:8001", help="node API base URL")
        p.add_argument("--token", help="bearer token")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ct.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    enabled = False if args.quiet else None
    try:
        if args.content_command == "put":
            if not args.file.is_file():
                print(f"dagrider content put: {args.file} is not a file", file=sys.stderr)
                return 2
            bar = ByteProgress("upload", enabled=enabled)
            doc = content_put(args.api, args.file, args.token, bar)
            bar.close()
            print(doc["cid"])
            return 0
        if args.content_command == "get":
            fetch_bar = ByteProgress("fetch ", enabled=enabled)
            bar = ByteProgress("copy  ", enabled=enabled)
            n = content_get(
                args.api,
                args.cid,
                args.out,
                args.token,
                fetch_progress=fetch_bar,
                progress=bar,
            )
            bar.close()
            print(f"{args.out}: {n} bytes, verified against {args.cid}")
            return 0
        if args.content_command == "providers":
            out = content_providers(args.api, args.cid, args.token)
        else:
            out = content_status(args.api, args.cid, args.token)
    except ApiError as exc:
        print(f"dagrider content {args.content_command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dagrider content: cannot reach {args.api}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0
