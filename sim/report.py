"""Results of a simulated run: verdicts, metrics, a readable summary and JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sim.invariants import Verdict

if TYPE_CHECKING:
    from sim.runner import SimConfig


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max by the nearest-rank method (empty input gives an empty dict)."""
    if not values:
        return {}
    xs = sorted(values)

    def rank(p: float) -> float:
        return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": xs[-1]}


@dataclass(frozen=True)
class SimResult:
    config: SimConfig
    seed: int
    verdicts: list[Verdict]
    virtual_ms: float
    events: int
    messages: int
    bytes: int
    committed_vertices: int
    committed_transactions: int
    leaders_committed: int
    leaders_direct: int
    leaders_skipped: int
    waves_per_commit: float
    vertex_latency_ms: dict[str, float]
    tx_latency_ms: dict[str, float]
    misbehaviour_reports: int
    restarts: int
    node_kinds: dict[int, str]
    trace_hash: str
    # Per Byzantine node: frames a correct node would not have sent / would have sent
    # but this one withheld, and what a stateful strategy says it did.
    attack_frames: dict[int, int] = field(default_factory=dict)
    withheld_frames: dict[int, int] = field(default_factory=dict)
    attack_details: dict[int, str] = field(default_factory=dict)
    slow_node: int | None = None
    # Share of the transactions submitted to correct nodes (to the slow node) by the
    # time the goal was reached that every correct node ordered; None: none submitted.
    tx_ordered_share: float | None = None
    slow_node_tx_ordered_share: float | None = None
    # Catch-up (dagrider.catchup) by correct and crash nodes: requests by reason, answers
    # served, and periods in which a node was so far behind that it sought a certified
    # checkpoint (state sync; without --checkpoint-interval there is none, so such a run
    # must keep its nodes within their peers' retained rounds).
    catchup_asks: dict[str, int] = field(default_factory=dict)
    catchup_served: int = 0
    state_sync_wanted: int = 0
    # Checkpoints installed through state sync (runs with --checkpoint-interval), crash
    # restarts from a store that lost writes (--wal-loss), and restarts fenced at the
    # highest round the node sent for (every restart after it sent anything).
    state_sync_installs: int = 0
    wal_losses: int = 0
    fenced_restarts: int = 0
    # Lowest in-memory GC floor among correct nodes at the end: 0 means no correct node
    # garbage-collected anything (a run shorter than gc_depth rounds past a commit).
    gc_floor: int = 0
    # Most delivered vertices a correct node still holds back at the end, waiting for
    # parents (its status' buffered_vertices): a vertex naming parents that never
    # existed waits until garbage collection drops its round.
    buffered_vertices: int = 0

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def replay(self) -> str:
        return self.config.replay_command(self.seed)

    def per_transaction(self) -> tuple[float, float]:
        txs = max(1, self.committed_transactions)
        return self.messages / txs, self.bytes / txs

    def to_dict(self) -> dict[str, Any]:
        msgs, byts = self.per_transaction()
        return {
            "config": asdict(self.config),
            "seed": self.seed,
            "ok": self.ok,
            "verdicts": [asdict(v) for v in self.verdicts],
            "virtual_ms": round(self.virtual_ms, 3),
            "events": self.events,
            "messages": self.messages,
            "bytes": self.bytes,
            "committed_vertices": self.committed_vertices,
            "committed_transactions": self.committed_transactions,
            "leaders_committed": self.leaders_committed,
            "leaders_direct": self.leaders_direct,
            "leaders_skipped": self.leaders_skipped,
            "waves_per_commit": self.waves_per_commit,
            "vertex_latency_ms": self.vertex_latency_ms,
            "tx_latency_ms": self.tx_latency_ms,
            "messages_per_tx": msgs,
            "bytes_per_tx": byts,
            "misbehaviour_reports": self.misbehaviour_reports,
            "restarts": self.restarts,
            "faulty_nodes": {str(k): v for k, v in self.node_kinds.items()},
            "attack_frames": {str(k): v for k, v in self.attack_frames.items()},
            "withheld_frames": {str(k): v for k, v in self.withheld_frames.items()},
            "attack_details": {str(k): v for k, v in self.attack_details.items()},
            "slow_node": self.slow_node,
            "tx_ordered_share": self.tx_ordered_share,
            "slow_node_tx_ordered_share": self.slow_node_tx_ordered_share,
            "catchup_asks": self.catchup_asks,
            "catchup_served": self.catchup_served,
            "state_sync_wanted": self.state_sync_wanted,
            "state_sync_installs": self.state_sync_installs,
            "wal_losses": self.wal_losses,
            "fenced_restarts": self.fenced_restarts,
            "gc_floor": self.gc_floor,
            "buffered_vertices": self.buffered_vertices,
            "trace_hash": self.trace_hash,
            "replay": self.replay,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def summary(self) -> str:
        c = self.config
        msgs, byts = self.per_transaction()
        drew = ""
        if c.byzantine == "mixed" and self.node_kinds:
            drew = ": " + ", ".join(
                f"node {i} drew {k}" for i, k in sorted(self.node_kinds.items())
            )
        lines = [
            f"dagrider sim: n={c.nodes} f={c.f} faulty={c.faults} ({c.byzantine}{drew}) "
            f"latency={c.latency}{' adversarial' if c.adversarial else ''} seed={self.seed}",
            f"  virtual time      {self.virtual_ms / 1000:.2f} s, {self.events} events",
            f"  committed         {self.committed_transactions} transactions in "
            f"{self.committed_vertices} vertices",
            f"  leaders           {self.leaders_committed} committed "
            f"({self.leaders_direct} directly), {self.leaders_skipped} skipped; "
            f"{self.waves_per_commit:.2f} waves per committed leader",
            f"  tx latency (ms)   {_fmt(self.tx_latency_ms)}",
            f"  vertex latency    {_fmt(self.vertex_latency_ms)}",
            f"  traffic           {self.messages} messages, {self.bytes / 1e6:.1f} MB "
            f"({msgs:.1f} msgs, {byts:.0f} B per ordered tx)",
            f"  misbehaviour seen {self.misbehaviour_reports} reports by correct nodes"
            + (f"; {self.restarts} crash restarts" if self.restarts else ""),
            f"  tx ordered        {_share(self.tx_ordered_share)} of those submitted to correct "
            "nodes by the goal (or the end)",
        ]
        if self.catchup_asks or self.catchup_served:
            asks = ", ".join(f"{n} {reason}" for reason, n in self.catchup_asks.items())
            lines.append(
                f"  catch-up          {asks or 'no'} requests, {self.catchup_served} served"
                + (
                    f"; {self.state_sync_wanted} periods past the peers' retained rounds"
                    if self.state_sync_wanted
                    else ""
                )
            )
        if self.state_sync_installs:
            lines.append(f"  state sync        {self.state_sync_installs} checkpoints installed")
        if self.wal_losses:
            lines.append(
                f"  store losses      {self.wal_losses} restarts from a store that lost "
                f"writes; {self.fenced_restarts} restarts fenced"
            )
        if self.slow_node is not None:
            lines.append(
                f"  slow node         node {self.slow_node} (+{c.slow_node_delay:g} ms out): "
                f"{_share(self.slow_node_tx_ordered_share)} of its transactions ordered"
            )
        for i, kind in sorted(self.node_kinds.items()):
            if i in self.attack_frames:
                note = self.attack_details.get(i)
                lines.append(
                    f"  byzantine node {i:<2} {kind}: {self.attack_frames[i]} attack frames, "
                    f"{self.withheld_frames.get(i, 0)} withheld" + (f"; {note}" if note else "")
                )
        lines.append("  invariants:")
        for v in self.verdicts:
            lines.append(f"    {'PASS' if v.ok else 'FAIL'} {v.name:<15} {v.detail}")
        if not self.ok:
            lines.append(f"  replay with: {self.replay}")
        return "\n".join(lines)


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _fmt(p: dict[str, float]) -> str:
    if not p:
        return "n/a"
    return " ".join(f"{k}={v:.0f}" for k, v in p.items())
