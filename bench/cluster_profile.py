"""Where a node's CPU goes, per pipeline stage, from a py-spy profile of one daemon.

``bench/cluster.py --profile out.txt`` records the profiled node with py-spy in the
collapsed ("raw") format: one line per distinct stack, ``frame;frame;... count``, each
frame ``function (file:line)``. This module folds those stacks into the stages a
transaction goes through (ingest, mempool, proposal, broadcast, RBC, ordering, store,
commit, API, ...) so that "where does a transaction's CPU go" is one table, comparable
before and after a change::

    python bench/cluster_profile.py out.txt [--tx-per-s 12000 --cpu-s 4.3 --window 12]

A stack is charged to the stage of its *deepest* frame that names one (the innermost
marker wins: the mempool write inside the ingest handler is "mempool", not "ingest").
Stacks with no marker go to "event loop / transport" (TLS, socket reads and writes,
asyncio) or "other".
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

# (stage, file suffix or "" for any, function name regex); checked for every frame.
STAGE_RULES: tuple[tuple[str, str, str], ...] = (
    ("ingest", "api.py", r"^(ingest|_ingest_one|post_batch|_read_batch|post_transactions)$"),
    ("ingest", "batch.py", r".*"),
    ("mempool", "runtime.py", r"^submit$"),
    ("mempool", "store.py", r"^(add_to_mempool|_take_from_mempool|_requeue|_load_mempool)$"),
    ("mempool", "process.py", r"^submit$"),
    ("mempool", "mempool.py", r".*"),
    ("proposal", "process.py", r"^(_propose|_take_batch|propose_now)$"),
    ("proposal", "runtime.py", r"^_on_proposed$"),
    ("broadcast", "runtime.py", r"^_send$"),
    ("broadcast", "codec.py", r"^encode"),
    ("RBC", "rbc.py", r".*"),
    ("RBC", "runtime.py", r"^_on_frame$"),
    ("RBC", "codec.py", r"^(decode|_decode|_vertex|_dec)"),
    ("RBC", "messages.py", r".*"),
    ("ordering", "dag.py", r".*"),
    ("ordering", "ordering.py", r".*"),
    ("ordering", "coin.py", r".*"),
    ("ordering", "checkpoint.py", r".*"),
    ("ordering", "process.py", r"^(_on_delivered|_advance|_complete_wave|_on_coin_share)$"),
    ("store", "store.py", r"^(apply|_apply|_gc|_compact|_put_ordering|_prune_log)$"),
    ("commit", "store.py", r"^(_id_rows|remember_ids|_prefix|_id_prefix)$"),
    ("commit", "runtime.py", r"^_on_commit$"),
    ("commit", "crdt_node.py", r"^on_commit$"),
    ("API", "api.py", r"^(get_log|stream_log|get_transaction|get_status|get_metrics|_entry_json)"),
    ("API", "store.py", r"^(log_after|find_tx|log_batches)$"),
    ("API", "runtime.py", r"^(log|tx_status|status|log_batches)$"),
    ("API", "metrics.py", r"^render"),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")
LOOP_FILES = ("asyncio", "uvloop", "sslproto", "ssl.py", "transport.py", "link.py", "framing.py")


def classify(frames: list[str]) -> str:
    """The stage of one stack (root first)."""
    stage = ""
    loopish = False
    for frame in frames:
        m = _FRAME.match(frame.strip())
        func, file = (m["func"], m["file"]) if m else (frame, "")
        func = func.rsplit(".", 1)[-1]  # "Node._on_frame" -> "_on_frame"
        for name, suffix, pattern in STAGE_RULES:
            if (not suffix or file.endswith(suffix)) and re.search(pattern, func):
                stage = name
                break
        if any(part in file for part in LOOP_FILES) or "aiohttp" in file:
            loopish = True
    if stage:
        return stage
    return "event loop / transport" if loopish else "other"


def fold(lines: Iterable[str]) -> dict[str, int]:
    """Samples per stage from collapsed-stack lines."""
    out: dict[str, int] = {}
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):  # py-spy --pid header frames
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        stage = classify(frames)
        out[stage] = out.get(stage, 0) + int(count)
    return out


def table(samples: dict[str, int], cpu_s: float | None, txs: float | None) -> str:
    """A markdown table: share of samples, and µs per transaction if CPU and load known."""
    total = sum(samples.values()) or 1
    head = "| stage | share of samples |" + (" µs CPU per tx |" if cpu_s and txs else "")
    rows = [head, "|---|---|" + ("---|" if cpu_s and txs else "")]
    for stage, n in sorted(samples.items(), key=lambda kv: -kv[1]):
        row = f"| {stage} | {n / total:.1%} |"
        if cpu_s and txs:
            row += f" {cpu_s * n / total / txs * 1e6:.1f} |"
        rows.append(row)
    if cpu_s and txs:
        rows.append(f"| **total** | 100% | {cpu_s / txs * 1e6:.1f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("profile", help="py-spy raw (collapsed) output")
    p.add_argument("--cpu-s", type=float, help="the node's CPU seconds in the window")
    p.add_argument("--txs", type=float, help="transactions committed in the window")
    a = p.parse_args()
    samples = fold(Path(a.profile).read_text().splitlines())
    print(table(samples, a.cpu_s, a.txs))


if __name__ == "__main__":
    sys.exit(main())
