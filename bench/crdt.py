"""The verifiable CRDT store: local writes, remote merges and anti-entropy, next to pycrdt.

Four measurements, all in this process (no sockets, no disk):

1. ``local_apply``: one replica authors changes of B operations each (B = 1, 10, 100; a
   mix of PN-counter increments, LWW sets and OR-Set adds on distinct keys of a few
   documents) through the same path as the HTTP API: ``parse_intents`` ->
   ``prepare_ops`` -> ``Replica.create`` (which signs, re-decodes and applies).
2. ``remote_merge``: a fresh replica receives the encoded changes of (1) in order through
   ``Replica.receive``, with signature verification, with ``verify=False`` and with the
   cyclic garbage collector disabled; plus a split of the per-change cost into
   decode/checks, signature, apply and GC. ``signature_cost`` times Ed25519 alone.
3. ``sync``: two replicas holding ``--history`` changes each (one to three operations per
   change) that differ by 0%, 1%, 10% (half of the difference only on A, half only on B)
   or 100% (B is empty). B opens a ``SyncEngine`` session with A and the messages are
   delivered in memory, wave by wave, until neither side has anything left to send.
   Bytes are compared with the full history (the sum of the encoded changes). At 1% and
   10% the session is repeated with other reconciliation parameters (``crdt.sync``'s
   ``BRANCHING``/``ID_LIST_THRESHOLD``, patched for the run) to check the defaults.
4. ``pycrdt``: the same logical workload on pycrdt (Yrs/Yjs bindings), when installed:
   local transactions, remote application of per-transaction updates, and state-vector
   sync. Yjs has no counter or set type (an increment is a read-modify-write of a map
   value, an add is an ``Array.append``) and pycrdt does **no** signature checks and no
   Byzantine validation, so its figures are a lower bound of the work, not a like-for-like
   competitor.

Run from the repository root:
    python bench/crdt.py              # full run (~2.5 min)
    python bench/crdt.py --quick      # ~6 s
    python bench/crdt.py --profile /tmp/merge.txt   # also cProfile remote_merge at B=100
Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import io
import json
import os
import platform
import pstats
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
from nacl.signing import VerifyKey

import crdt.sync as crdt_sync
from crdt.change import Change, KeySigner, decode_change
from crdt.document import parse_intents, prepare_ops
from crdt.limits import CrdtLimits
from crdt.replica import AccessPolicy, Replica
from crdt.sync import MSG_CHANGES, MSG_SESSION, MSG_WANT, SyncEngine

BASE_MS = 1_700_000_000_000
DOCS = 4
KEYS_PER_DOC = 300
KINDS = ("pncounter", "lww", "orset")
SIGNERS = [KeySigner(bytes([i + 1]) * 32) for i in range(6)]
AUTHOR, WRITER_A, WRITER_B = SIGNERS[0], SIGNERS[4], SIGNERS[5]
POLICY = AccessPolicy.open_to(s.public_key for s in SIGNERS)
LIMITS = CrdtLimits()
BATCHES = (1, 10, 100)
RECONCILE_SWEEP = ((2, 1), (4, 2), (8, 4), (16, 16), (16, 32))
KIND_NAMES = {MSG_SESSION: "session", MSG_CHANGES: "changes", MSG_WANT: "want"}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the workload ------------------------------------------------------------------------
# One logical change: (document index, [(kind, key, value), ...]) with distinct keys.
# Both the dagrider and the pycrdt runs are built from the same list.

Op = tuple[str, str, Any]
Spec = tuple[int, list[Op]]


def spec(seq: int, n_ops: int) -> Spec:
    """Change ``seq`` with ``n_ops`` operations on distinct keys of one document."""
    ops: list[Op] = []
    for i in range(n_ops):
        k = (seq * n_ops + i) % KEYS_PER_DOC
        kind = KINDS[k % 3]
        if kind == "pncounter":
            ops.append((kind, f"c{k}", 1 + i % 5))
        elif kind == "lww":
            ops.append((kind, f"r{k}", f"value {seq}.{i}"))
        else:
            ops.append((kind, f"s{k}", f"e{seq}"))
    return seq % DOCS, ops


def workload(changes: int, batch: int) -> list[Spec]:
    return [spec(seq, batch) for seq in range(changes)]


def history_workload(changes: int, offset: int = 0) -> list[Spec]:
    """Realistic small changes: 1, 2 or 3 operations each."""
    return [spec(offset + seq, 1 + (offset + seq) % 3) for seq in range(changes)]


def doc_name(index: int) -> str:
    return f"bench/doc{index}"


def intents_body(ops: list[Op]) -> dict[str, Any]:
    """The ``{"ops": [...]}`` body a client would POST."""
    actions = {"pncounter": "inc", "lww": "set", "orset": "add"}
    return {
        "ops": [
            {"path": [key], "type": kind, "action": actions[kind], "args": value}
            for kind, key, value in ops
        ]
    }


# -- dagrider ----------------------------------------------------------------------------


@dataclass
class Authored:
    changes: list[Change]
    seconds: float
    stages: dict[str, float]


def author(
    replica: Replica, signer: KeySigner, specs: list[Spec], seq0: int = 0, rotate: bool = False
) -> Authored:
    """Author ``specs`` on ``replica`` through parse_intents -> prepare_ops -> create.

    ``rotate``: sign change i with SIGNERS[i % 4] (a history with several writers).
    """
    bodies = [(doc_name(d), intents_body(ops)) for d, ops in specs]
    out: list[Change] = []
    t_parse = t_prepare = t_create = 0.0
    clock = time.perf_counter
    started = clock()
    for i, (doc, body) in enumerate(bodies):
        who = SIGNERS[(seq0 + i) % 4] if rotate else signer
        t0 = clock()
        intents = parse_intents(body)
        t1 = clock()
        ops = prepare_ops(replica.document(doc), intents, who.public_key)
        t2 = clock()
        change, _ = replica.create(who, doc, ops, BASE_MS + seq0 + i)
        t3 = clock()
        t_parse += t1 - t0
        t_prepare += t2 - t1
        t_create += t3 - t2
        out.append(change)
    seconds = clock() - started
    return Authored(out, seconds, {"parse": t_parse, "prepare": t_prepare, "create": t_create})


def receive_all(replica: Replica, encoded: list[bytes], verify: bool) -> None:
    receive = replica.receive
    for data in encoded:
        receipt = receive(data, verify=verify)
        if receipt.status != "applied":
            raise SystemExit(f"remote merge: change not applied: {receipt}")


def merge_once(encoded: list[bytes], verify: bool, no_gc: bool = False) -> tuple[float, Replica]:
    """Receive ``encoded`` in order on a fresh replica; the seconds it took."""
    replica = Replica(POLICY)
    gc.collect()  # start every timing from the same heap (outside the timed region)
    if no_gc:
        gc.disable()
    try:
        started = time.perf_counter()
        receive_all(replica, encoded, verify)
        seconds = time.perf_counter() - started
    finally:
        gc.enable()
    return seconds, replica


def best_of(repeat: int, fn: Callable[..., float], *args: Any) -> float:
    """The shortest of ``repeat`` timings of ``fn(*args)``."""
    return min(fn(*args) for _ in range(repeat))


def merge_time(encoded: list[bytes], verify: bool, no_gc: bool = False) -> float:
    return merge_once(encoded, verify, no_gc)[0]


def decode_all(encoded: list[bytes]) -> float:
    started = time.perf_counter()
    for data in encoded:
        decode_change(data, LIMITS, verify=False)
    return time.perf_counter() - started


def add_all(decoded: list[Change]) -> float:
    replica = Replica(POLICY)
    started = time.perf_counter()
    for change in decoded:
        replica.add(change)
    return time.perf_counter() - started


def signature_cost(message_len: int, rounds: int) -> dict[str, float]:
    """Ed25519 sign and verify (PyNaCl/libsodium) of one message of ``message_len`` bytes."""
    msg = os.urandom(message_len)
    signer = SIGNERS[0]
    key = VerifyKey(signer.public_key)
    sig = signer.sign(msg)
    t0 = time.perf_counter()
    for _ in range(rounds):
        signer.sign(msg)
    t1 = time.perf_counter()
    for _ in range(rounds):
        key.verify(msg, sig)
    t2 = time.perf_counter()
    return {
        "message_bytes": message_len,
        "sign_us": round((t1 - t0) / rounds * 1e6, 1),
        "verify_us": round((t2 - t1) / rounds * 1e6, 1),
    }


def bench_local_and_merge(
    sizes: dict[int, int], repeat: int, profile: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    local_rows: list[dict[str, Any]] = []
    merge_rows: list[dict[str, Any]] = []
    for batch in BATCHES:
        n = sizes[batch]
        ops = n * batch
        log(f"local_apply B={batch}: {n} changes")
        specs = workload(n, batch)
        runs = [author(Replica(POLICY), AUTHOR, specs) for _ in range(repeat)]
        best = min(runs, key=lambda r: r.seconds)
        encoded = [c.encoded for c in best.changes]
        sizes_b = [len(e) for e in encoded]
        local_rows.append(
            {
                "ops_per_change": batch,
                "changes": n,
                "ops": ops,
                "seconds": round(best.seconds, 3),
                "changes_per_s": round(n / best.seconds),
                "ops_per_s": round(ops / best.seconds),
                "us_per_change": {k: round(v / n * 1e6, 1) for k, v in best.stages.items()},
                "change_bytes_mean": round(statistics.fmean(sizes_b), 1),
            }
        )

        log(f"remote_merge B={batch}")
        # Interleaved, so that a burst of load from elsewhere hits all three alike.
        timings: dict[str, list[float]] = {"verify": [], "plain": [], "nogc": []}
        for _ in range(repeat):
            timings["verify"].append(merge_time(encoded, True))
            timings["plain"].append(merge_time(encoded, False))
            timings["nogc"].append(merge_time(encoded, True, True))
        t_verify, t_plain, t_nogc = (min(timings[k]) for k in ("verify", "plain", "nogc"))
        # Split of the per-change cost: decode + structural checks (no signature),
        # then applying already-decoded changes to a fresh replica.
        decoded = [decode_change(d, LIMITS, verify=False) for d in encoded]
        t_decode = best_of(repeat, decode_all, encoded)
        t_add = best_of(repeat, add_all, decoded)
        _, merged = merge_once(encoded, True)
        source = Replica(POLICY)
        for change in best.changes:
            source.add(change)
        converged = all(merged.value(d) == source.value(d) for d in source.documents())
        merge_rows.append(
            {
                "ops_per_change": batch,
                "changes": n,
                "ops": ops,
                "verify": {
                    "seconds": round(t_verify, 3),
                    "changes_per_s": round(n / t_verify),
                    "ops_per_s": round(ops / t_verify),
                },
                "no_verify": {
                    "seconds": round(t_plain, 3),
                    "changes_per_s": round(n / t_plain),
                    "ops_per_s": round(ops / t_plain),
                },
                "verify_gc_disabled": {
                    "seconds": round(t_nogc, 3),
                    "changes_per_s": round(n / t_nogc),
                    "ops_per_s": round(ops / t_nogc),
                },
                "us_per_change": {
                    "total_verified": round(t_verify / n * 1e6, 1),
                    "signature (verify - no_verify)": round((t_verify - t_plain) / n * 1e6, 1),
                    "decode_and_checks": round(t_decode / n * 1e6, 1),
                    "apply (Replica.add)": round(t_add / n * 1e6, 1),
                    "cyclic_gc (verify - verify_gc_disabled)": round(
                        (t_verify - t_nogc) / n * 1e6, 1
                    ),
                },
                "signature_share": round((t_verify - t_plain) / t_verify, 3),
                "target_50k_ops_per_s_met": ops / t_verify >= 50_000,
                "state_equal_to_author": converged,
            }
        )
        if profile and batch == 100:
            write_profile(profile, encoded)
    return local_rows, merge_rows


def write_profile(path: str, encoded: list[bytes]) -> None:
    """cProfile of remote_merge (verify=True) at B=100; top 25 by tottime and cumulative."""
    log(f"profiling remote_merge B=100 -> {path}")
    replica = Replica(POLICY)
    gc.collect()
    profiler = cProfile.Profile()
    profiler.enable()
    receive_all(replica, encoded, True)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    Path(path).write_text(out.getvalue())


# -- sync --------------------------------------------------------------------------------


def build_base(history: int) -> list[Change]:
    """A linear history of ``history`` small changes by four writers."""
    replica = Replica(POLICY)
    return author(replica, AUTHOR, history_workload(history), rotate=True).changes


def replica_with(changes: list[Change]) -> Replica:
    replica = Replica(POLICY)
    for change in changes:
        receipt = replica.add(change)
        if receipt.status != "applied":
            raise SystemExit(f"sync setup: {receipt}")
    return replica


def run_session(a: Replica, b: Replica) -> dict[str, Any]:
    """B opens a session with A; deliver every send, wave by wave, until none remain."""
    engines = {"A": SyncEngine(a), "B": SyncEngine(b)}
    bytes_by = {"A->B": 0, "B->A": 0}
    msgs_by = {"A->B": 0, "B->A": 0}
    applied = {"A": 0, "B": 0}
    peak_pending = {"A": 0, "B": 0}
    kind_bytes: dict[str, int] = {}
    kind_msgs: dict[str, int] = {}
    faults: list[str] = []
    started = time.perf_counter()
    wave = [("B", str(s.peer), s.payload) for s in engines["B"].start_session("A").sends]
    waves = 0
    while wave:
        waves += 1
        nxt: list[tuple[str, str, bytes]] = []
        for src, dst, payload in wave:
            direction = f"{src}->{dst}"
            bytes_by[direction] += len(payload)
            msgs_by[direction] += 1
            kind = KIND_NAMES.get(msgpack.unpackb(payload, raw=False)[0], "?")
            kind_bytes[kind] = kind_bytes.get(kind, 0) + len(payload)
            kind_msgs[kind] = kind_msgs.get(kind, 0) + 1
            result = engines[dst].receive(src, payload)
            applied[dst] += len(result.applied)
            peak_pending[dst] = max(peak_pending[dst], engines[dst].replica.pending_count)
            faults.extend(f.reason for f in result.faults)
            nxt.extend((dst, str(s.peer), s.payload) for s in result.sends)
        wave = nxt
    seconds = time.perf_counter() - started
    sent = {"A->B": engines["A"].stats.changes_sent, "B->A": engines["B"].stats.changes_sent}
    return {
        "seconds": seconds,
        "bytes": bytes_by,
        "messages": msgs_by,
        "waves": waves,
        "kind_bytes": kind_bytes,
        "kind_messages": kind_msgs,
        "changes_sent": sent,
        "duplicates": {"A->B": sent["A->B"] - applied["B"], "B->A": sent["B->A"] - applied["A"]},
        "peak_pending": peak_pending,
        "faults": faults,
    }


def scenario(base: list[Change], diff: float) -> tuple[list[Change], list[Change], str]:
    """The change lists of A and B: ``diff`` of the history differs, half on each side."""
    history = len(base)
    if diff >= 1.0:
        return base, [], "fresh replica (100%)"
    own = round(history * diff / 2)
    common = base[: history - own]
    a_rep, b_rep = replica_with(common), replica_with(common)
    a_own = author(a_rep, WRITER_A, history_workload(own, 1_000_000), history).changes
    b_own = author(b_rep, WRITER_B, history_workload(own, 2_000_000), history).changes
    label = f"{diff:.0%} different ({own} only on A, {own} only on B)"
    return common + a_own, common + b_own, label


def measure_sync(a_changes: list[Change], b_changes: list[Change]) -> dict[str, Any]:
    a, b = replica_with(a_changes), replica_with(b_changes)
    history_a = sum(len(c.encoded) for c in a_changes)
    union = {c.hash: len(c.encoded) for c in a_changes + b_changes}
    only_b = [v for h, v in union.items() if h not in a]
    only_a = [v for h, v in union.items() if h not in b]
    r = run_session(a, b)
    total = r["bytes"]["A->B"] + r["bytes"]["B->A"]
    overhead = total - r["kind_bytes"].get("changes", 0)
    differing = len(only_a) + len(only_b)
    return {
        "changes_on_A": len(a_changes),
        "changes_on_B": len(b_changes),
        "differing_changes": differing,
        "history_bytes_A": history_a,
        "bytes_A_to_B": r["bytes"]["A->B"],
        "bytes_B_to_A": r["bytes"]["B->A"],
        "bytes_total": total,
        "ratio_to_history": round(total / history_a, 4),
        "missing_change_bytes": sum(only_a) + sum(only_b),
        "bytes_by_message_kind": r["kind_bytes"],
        "protocol_overhead_bytes": overhead,
        "overhead_bytes_per_differing_change": round(overhead / differing, 1)
        if differing
        else None,
        "messages": r["messages"],
        "messages_by_kind": r["kind_messages"],
        "waves": r["waves"],
        "round_trips": (r["waves"] + 1) // 2,
        "changes_sent": r["changes_sent"],
        "duplicate_changes_sent": r["duplicates"],
        "peak_pending_changes": r["peak_pending"],
        "seconds": round(r["seconds"], 3),
        "converged": a.heads == b.heads and len(a) == len(b),
        "faults": r["faults"],
    }


def bench_sync(history: int, diffs: Sequence[float], sweep: Sequence[float]) -> dict[str, Any]:
    log(f"sync: building a {history}-change history")
    t0 = time.perf_counter()
    base = build_base(history)
    build_s = time.perf_counter() - t0
    full_bytes = sum(len(c.encoded) for c in base)
    rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    for diff in diffs:
        a_changes, b_changes, label = scenario(base, diff)
        log(f"sync: {label}")
        rows.append({"difference": label, **measure_sync(a_changes, b_changes)})
        if diff not in sweep:
            continue
        # The reconciliation parameters are module constants of crdt.sync; try others.
        default = (crdt_sync.BRANCHING, crdt_sync.ID_LIST_THRESHOLD)
        for branching, threshold in RECONCILE_SWEEP:
            crdt_sync.BRANCHING, crdt_sync.ID_LIST_THRESHOLD = branching, threshold
            try:
                r = measure_sync(a_changes, b_changes)
            finally:
                crdt_sync.BRANCHING, crdt_sync.ID_LIST_THRESHOLD = default
            sweep_rows.append(
                {
                    "difference": label,
                    "branching": branching,
                    "id_list_threshold": threshold,
                    "default": (branching, threshold) == default,
                    **{
                        k: r[k]
                        for k in (
                            "bytes_total",
                            "ratio_to_history",
                            "protocol_overhead_bytes",
                            "duplicate_changes_sent",
                            "waves",
                            "seconds",
                            "converged",
                        )
                    },
                }
            )
    return {
        "history_changes": history,
        "history_bytes": full_bytes,
        "change_bytes_mean": round(full_bytes / history, 1),
        "history_build_seconds": round(build_s, 2),
        "target": "ratio_to_history < 0.05 at 1%",
        "results": rows,
        "reconcile_parameter_sweep": sweep_rows,
    }


# -- pycrdt ------------------------------------------------------------------------------


def bench_pycrdt(
    sizes: dict[int, int], repeat: int, history: int, diffs: Sequence[float]
) -> dict[str, Any]:
    try:
        # Imported by name so that type checking does not need the optional extra.
        pycrdt: Any = importlib.import_module("pycrdt")
    except ImportError:
        return {"skipped": "not installed (pip install -e '.[bench]')"}
    Array, Doc, Map = pycrdt.Array, pycrdt.Doc, pycrdt.Map

    def transact(doc: Any, maps: list[Any], specs: list[Spec]) -> list[bytes]:
        updates: list[bytes] = []
        sub = doc.observe(lambda event: updates.append(event.update))
        for d, ops in specs:
            m = maps[d]
            with doc.transaction():
                for kind, key, value in ops:
                    if kind == "pncounter":
                        m[key] = m.get(key, 0) + value
                    elif kind == "lww":
                        m[key] = value
                    else:
                        arr = m.get(key)
                        if arr is None:
                            m[key] = Array([value])
                        else:
                            arr.append(value)
        doc.unobserve(sub)
        return updates

    def new_doc(client_id: int | None = None) -> tuple[Any, list[Any]]:
        doc: Any = Doc() if client_id is None else Doc(client_id=client_id)
        return doc, [doc.get(f"doc{i}", type=Map) for i in range(DOCS)]

    def values(maps: list[Any]) -> list[Any]:
        return [m.to_py() for m in maps]

    def apply_all(updates: list[bytes]) -> tuple[float, list[Any]]:
        doc, maps = new_doc(2)
        started = time.perf_counter()
        for u in updates:
            doc.apply_update(u)
        return time.perf_counter() - started, maps

    local_rows: list[dict[str, Any]] = []
    merge_rows: list[dict[str, Any]] = []
    for batch in BATCHES:
        n = sizes[batch]
        ops = n * batch
        log(f"pycrdt B={batch}")
        specs = workload(n, batch)
        best_t, updates, source = float("inf"), [], None
        for _ in range(repeat):
            doc, maps = new_doc(1)
            t0 = time.perf_counter()
            ups = transact(doc, maps, specs)
            dt = time.perf_counter() - t0
            if dt < best_t:
                best_t, updates, source = dt, ups, maps
        local_rows.append(
            {
                "ops_per_change": batch,
                "transactions": n,
                "ops": ops,
                "seconds": round(best_t, 3),
                "transactions_per_s": round(n / best_t),
                "ops_per_s": round(ops / best_t),
                "update_bytes_mean": round(statistics.fmean(len(u) for u in updates), 1),
            }
        )

        t_apply = min(apply_all(updates)[0] for _ in range(repeat))
        _, merged = apply_all(updates)
        assert source is not None
        merge_rows.append(
            {
                "ops_per_change": batch,
                "updates": n,
                "ops": ops,
                "seconds": round(t_apply, 3),
                "updates_per_s": round(n / t_apply),
                "ops_per_s": round(ops / t_apply),
                "state_equal_to_author": values(merged) == values(source),
            }
        )

    log(f"pycrdt sync: {history}-transaction history")
    base_doc, base_maps = new_doc(1)
    base_updates = transact(base_doc, base_maps, history_workload(history))
    per_txn_bytes = sum(len(u) for u in base_updates)
    sync_rows: list[dict[str, Any]] = []
    for diff in diffs:
        a_doc, a_maps = new_doc(11)
        b_doc, b_maps = new_doc(12)
        if diff >= 1.0:
            for u in base_updates:
                a_doc.apply_update(u)
            label = "fresh replica (100%)"
            txn_bytes_a = per_txn_bytes
        else:
            own = round(history * diff / 2)
            for u in base_updates[: history - own]:
                a_doc.apply_update(u)
                b_doc.apply_update(u)
            a_up = transact(a_doc, a_maps, history_workload(own, 1_000_000))
            transact(b_doc, b_maps, history_workload(own, 2_000_000))
            label = f"{diff:.0%} different ({own} only on A, {own} only on B)"
            txn_bytes_a = sum(len(u) for u in base_updates[: history - own]) + sum(
                len(u) for u in a_up
            )
        full_update_a = len(a_doc.get_update())
        # y-protocols sync: both send SyncStep1 (state vector), both answer SyncStep2.
        t0 = time.perf_counter()
        sv_a, sv_b = a_doc.get_state(), b_doc.get_state()
        upd_a_to_b, upd_b_to_a = a_doc.get_update(sv_b), b_doc.get_update(sv_a)
        b_doc.apply_update(upd_a_to_b)
        a_doc.apply_update(upd_b_to_a)
        seconds = time.perf_counter() - t0
        a_to_b, b_to_a = len(sv_a) + len(upd_a_to_b), len(sv_b) + len(upd_b_to_a)
        total = a_to_b + b_to_a
        sync_rows.append(
            {
                "difference": label,
                "bytes_A_to_B": a_to_b,
                "bytes_B_to_A": b_to_a,
                "bytes_total": total,
                "state_vector_bytes": [len(sv_a), len(sv_b)],
                "history_bytes_A_per_transaction_updates": txn_bytes_a,
                "history_bytes_A_full_state_update": full_update_a,
                "ratio_to_per_transaction_history": round(total / txn_bytes_a, 4),
                "ratio_to_full_state_update": round(total / full_update_a, 4),
                "messages": 4,
                "waves": 2,
                "seconds": round(seconds, 4),
                "converged": values(a_maps) == values(b_maps),
            }
        )
    return {
        "version": getattr(pycrdt, "__version__", "?"),
        "caveats": [
            "pycrdt (Yrs) does no signature checks and no Byzantine validation: any peer can "
            "write anything under any client id",
            "Yjs has no counter or set type: an increment is a read-modify-write of a Map "
            "value (concurrent increments lose updates), an OR-Set add is an Array.append",
            "local_apply includes encoding each transaction's update (the observer), which is "
            "what a client ships",
        ],
        "local_apply": local_rows,
        "remote_merge": merge_rows,
        "sync": {"history_transactions": history, "results": sync_rows},
    }


# -- main --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    import nacl

    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "pynacl": getattr(nacl, "__version__", "?"),
        "msgpack": ".".join(map(str, msgpack.version)),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "git": _git(),
    }


def _git() -> dict[str, Any] | None:
    """The commit measured and any uncommitted changes to the code under test (read-only)."""
    root = Path(__file__).resolve().parent.parent

    def run(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.rstrip()

    try:
        return {
            "commit": run("rev-parse", "--short", "HEAD"),
            "modified_crdt_files": run("status", "--porcelain", "--", "crdt").splitlines(),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (~5 s)")
    parser.add_argument(
        "--ops", type=int, help="operations per batch size in local_apply (50000; quick 3000)"
    )
    parser.add_argument(
        "--history", type=int, help="changes in the sync history (10000; quick 2000)"
    )
    parser.add_argument("--repeat", type=int, help="best of N for the timings (3; quick 1)")
    parser.add_argument("--no-pycrdt", action="store_true", help="skip the pycrdt comparison")
    parser.add_argument(
        "--profile", metavar="FILE", help="write a cProfile of remote_merge at B=100 to FILE"
    )
    args = parser.parse_args(argv)
    defaults = (3_000, 2_000, 1) if args.quick else (50_000, 10_000, 3)
    for name, value in zip(("ops", "history", "repeat"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None else ["crdt.py", *argv])
    started = time.perf_counter()
    # B=1 is capped so the run stays short: 1 op per change is the slow case.
    sizes = {b: max(1, (args.ops // 2 if b == 1 else args.ops) // b) for b in BATCHES}
    diffs = (0.0, 0.01, 0.10, 1.0)
    doc: dict[str, Any] = {
        "benchmark": "bench/crdt.py",
        "command": command,
        "machine": machine(),
        "mode": "quick" if args.quick else "full",
        "repeat": args.repeat,
        "workload": (
            f"changes of B ops on distinct keys of {DOCS} documents ({KEYS_PER_DOC} keys each), "
            "kinds rotating pncounter inc / lww set / orset add; sync history: 1-3 ops per "
            "change, 4 writers"
        ),
    }
    local_rows, merge_rows = bench_local_and_merge(sizes, args.repeat, args.profile)
    doc["local_apply"] = local_rows
    doc["remote_merge"] = merge_rows
    mean_bytes = {r["ops_per_change"]: round(r["change_bytes_mean"]) for r in local_rows}
    doc["signature_cost"] = [
        signature_cost(mean_bytes[b] - 64, 2_000 if args.quick else 20_000) for b in BATCHES
    ]
    doc["sync"] = bench_sync(args.history, diffs, (0.01,) if args.quick else (0.01, 0.10))
    if args.no_pycrdt:
        doc["pycrdt"] = {"skipped": "--no-pycrdt"}
    else:
        doc["pycrdt"] = bench_pycrdt(sizes, args.repeat, args.history, diffs)
    doc["total_wall_seconds"] = round(time.perf_counter() - started, 2)
    if hasattr(os, "getloadavg"):
        doc["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
