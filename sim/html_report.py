"""``dagrider sim --report FILE.html``: one self-contained page per simulated run.

Why a page and not only the JSON: a failing seed is easier to understand when its DAG
can be looked at. The page shows the first rounds of the DAG as one correct node saw it
(rounds across, sources down, strong and weak edges, each wave's leader committed or
skipped, and which commit ordered each vertex), the commit latency distribution, the
waves per committed leader, the messages sent per round and the verdicts.

The run is the shipped simulator (:mod:`sim.runner`); :class:`_ObservedRun` only watches
the effects of one correct node as they are recorded, so the verdicts and trace hash of
an observed run are those of ``dagrider sim`` with the same seed. Everything is inline
(SVG and CSS, no script, nothing fetched), so the file can be attached to an issue.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dagrider.effects import Commit, Delivered, Effect, LeaderDecided, RoundAdvanced
from sim.report import SimResult
from sim.runner import SimConfig, _Node, _Run

DAG_ROUNDS = 24
"""Rounds of the DAG drawn (the first ones: later rounds look alike, and the page stays
small for long runs)."""

Pos = tuple[int, int]
"""(round, source) of a vertex."""


@dataclass
class Observed:
    """What the page needs beyond :class:`SimResult`, as seen by one correct node."""

    node: int
    vertices: dict[Pos, tuple[list[Pos], list[Pos], int]] = field(default_factory=dict)
    """(round, source) -> (strong edges, weak edges, transactions) for the first rounds."""
    ordered_by: dict[Pos, Pos] = field(default_factory=dict)
    """Vertex -> the leader whose commit ordered it."""
    leaders: list[tuple[int, Pos | None, bool, bool]] = field(default_factory=list)
    """Per decided wave: (wave, leader or None, committed, direct)."""
    round_messages: list[tuple[int, int]] = field(default_factory=list)
    """(round the node entered, messages sent in the whole committee so far)."""
    tx_latency_ms: list[float] = field(default_factory=list)


class _ObservedRun(_Run):
    """The simulator's run, with one correct node's effects copied into :class:`Observed`."""

    def __init__(self, cfg: SimConfig, seed: int, progress: Callable[[float], None] | None) -> None:
        super().__init__(cfg, seed, progress)
        self.observed = Observed(self.correct[0])

    def _record(self, i: int, node: _Node, effects: list[Effect], replay: bool) -> None:
        super()._record(i, node, effects, replay)
        if i != self.observed.node or replay:
            return
        ob = self.observed
        for e in effects:
            if isinstance(e, Delivered) and e.vertex.round <= DAG_ROUNDS:
                v = e.vertex
                ob.vertices[(v.round, v.source)] = (
                    [(r.round, r.source) for r in v.strong_edges],
                    [(r.round, r.source) for r in v.weak_edges],
                    len(v.block),
                )
            elif isinstance(e, Commit) and e.vertex.round <= DAG_ROUNDS:
                ob.ordered_by[(e.vertex.round, e.vertex.source)] = (
                    e.leader.round,
                    e.leader.source,
                )
            elif isinstance(e, LeaderDecided):
                leader = None if e.leader is None else (e.leader.round, e.leader.source)
                ob.leaders.append((e.wave, leader, e.committed, e.direct))
            elif isinstance(e, RoundAdvanced):
                ob.round_messages.append((e.round, self.world.sent.messages))


def run_observed(
    cfg: SimConfig, seed: int, progress: Callable[[float], None] | None = None
) -> tuple[SimResult, Observed]:
    """Run ``cfg`` with ``seed`` (the same run as :func:`sim.runner.run`) and observe it."""
    r = _ObservedRun(cfg, seed, progress)
    result = r.run()
    r.observed.tx_latency_ms = list(r.tx_latency)
    return result, r.observed


# -- rendering ----------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}
.pass{color:#17803d;font-weight:600}.fail{color:#c0262d;font-weight:600}
pre{background:#f6f6f6;padding:8px;overflow:auto}
svg text{font:11px system-ui,sans-serif;fill:#444}
.legend span{display:inline-block;margin-right:14px}
"""

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")


def render(result: SimResult, observed: Observed) -> str:
    """The whole page as one string (UTF-8 HTML, no external references)."""
    c = result.config
    title = f"dagrider sim n={c.nodes} seed={result.seed}: {'PASS' if result.ok else 'FAIL'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>Replay: <code>{_e(result.replay)}</code></p>",
        "<h2>Verdicts</h2>",
        _verdicts(result),
        f"<h2>DAG (first {DAG_ROUNDS} rounds, as node {observed.node} delivered it)</h2>",
        _dag_svg(observed),
        "<h2>Commit latency (proposal to commit, every transaction)</h2>",
        _histogram(observed.tx_latency_ms, "ms"),
        "<h2>Waves per committed leader</h2>",
        _waves_per_commit(observed),
        "<h2>Messages per round (whole committee)</h2>",
        _messages_per_round(observed),
        "<h2>Summary</h2>",
        f"<pre>{_e(result.summary())}</pre>",
        "<h2>Configuration</h2>",
        f"<pre>{_e(json.dumps(result.to_dict()['config'], indent=2, sort_keys=True))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _verdicts(result: SimResult) -> str:
    rows = "".join(
        f'<tr><td class="{"pass" if v.ok else "fail"}">{"PASS" if v.ok else "FAIL"}</td>'
        f"<td>{_e(v.name)}</td><td>{_e(v.detail)}</td></tr>"
        for v in result.verdicts
    )
    return f"<table>{rows}</table>"


def _dag_svg(ob: Observed) -> str:
    """Rounds across, sources down. Leaders: thick green ring (committed) or red
    (skipped); a vertex's fill says which committed leader ordered it."""
    if not ob.vertices:
        return "<p>No vertex was delivered.</p>"
    rounds = max(r for r, _ in ob.vertices)
    sources = max(s for _, s in ob.vertices) + 1
    dx, dy, pad = 44, 30, 30
    width, height = pad * 2 + dx * rounds, pad * 2 + dy * (sources - 1) + 20

    def xy(p: Pos) -> tuple[int, int]:
        return pad + dx * (p[0] - 1), pad + dy * p[1]

    leader_state: dict[Pos, bool] = {}
    for _wave, leader, committed, _direct in ob.leaders:
        if leader is not None:
            leader_state[leader] = committed
    commit_order = sorted(set(ob.ordered_by.values()))
    colour = {lead: _PALETTE[k % len(_PALETTE)] for k, lead in enumerate(commit_order)}
    out = [f'<svg width="{width}" height="{height}">']
    for (r, s), (strong, weak, _txs) in sorted(ob.vertices.items()):
        x1, y1 = xy((r, s))
        for target in strong:
            if target in ob.vertices:
                x2, y2 = xy(target)
                out.append(
                    f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#bbb" '
                    'stroke-width="1"/>'
                )
        for target in weak:
            if target in ob.vertices:
                x2, y2 = xy(target)
                out.append(
                    f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#e15759" '
                    'stroke-dasharray="3,3" stroke-width="1"/>'
                )
    for pos, (_strong, _weak, txs) in sorted(ob.vertices.items()):
        x, y = xy(pos)
        fill = colour.get(ob.ordered_by.get(pos, (-1, -1)), "#fff")
        ring = ""
        if pos in leader_state:
            ring = ' stroke="{}" stroke-width="3"'.format(
                "#17803d" if leader_state[pos] else "#c0262d"
            )
        else:
            ring = ' stroke="#555" stroke-width="1"'
        out.append(
            f'<circle cx="{x}" cy="{y}" r="8" fill="{fill}"{ring}>'
            f"<title>round {pos[0]} source {pos[1]}: {txs} transactions"
            + (f", ordered by leader {ob.ordered_by[pos]}" if pos in ob.ordered_by else "")
            + "</title></circle>"
        )
    for r in range(1, rounds + 1):
        x, _ = xy((r, 0))
        out.append(f'<text x="{x - 6}" y="{height - 6}">{r}</text>')
    for s in range(sources):
        _, y = xy((1, s))
        out.append(f'<text x="2" y="{y + 4}">{s}</text>')
    out.append("</svg>")
    legend = (
        '<p class="legend"><span>— strong edge</span><span style="color:#e15759">'
        '- - weak edge</span><span style="color:#17803d">◯ committed leader</span>'
        '<span style="color:#c0262d">◯ skipped leader</span>'
        "<span>fill: the commit that ordered the vertex</span></p>"
    )
    return "".join(out) + legend


def _bars(labels: Sequence[str], values: Sequence[float], unit: str) -> str:
    """A plain SVG bar chart."""
    if not values:
        return "<p>No data.</p>"
    top = max(values) or 1.0
    bw, h, pad = max(8, min(40, 720 // len(values))), 160, 30
    width = pad * 2 + bw * len(values)
    out = [f'<svg width="{width}" height="{h + 50}">']
    step = max(1, len(values) // 12)
    for k, (label, v) in enumerate(zip(labels, values, strict=True)):
        bh = 0 if v <= 0 else max(1, round(h * v / top))
        x = pad + k * bw
        out.append(
            f'<rect x="{x}" y="{pad + h - bh}" width="{bw - 2}" height="{bh}" fill="#4e79a7">'
            f"<title>{_e(label)}: {v:g} {unit}</title></rect>"
        )
        if k % step == 0:
            out.append(f'<text x="{x}" y="{pad + h + 14}">{_e(label)}</text>')
    out.append(f'<text x="{pad}" y="{pad - 8}">max {top:g} {unit}</text></svg>')
    return "".join(out)


def _histogram(samples: Sequence[float], unit: str, bins: int = 30) -> str:
    if not samples:
        return "<p>No transaction was committed.</p>"
    lo, hi = min(samples), max(samples)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for x in samples:
        counts[min(bins - 1, int((x - lo) / width))] += 1
    labels = [f"{lo + k * width:.0f}" for k in range(bins)]
    xs = sorted(samples)
    p = {q: xs[max(0, math.ceil(q / 100 * len(xs)) - 1)] for q in (50, 95, 99)}
    stats = ", ".join(f"p{q} {v:.0f} {unit}" for q, v in p.items())
    return (
        _bars(labels, counts, "transactions")
        + f"<p>{len(samples)} transactions; {stats}; bins from {unit} value shown.</p>"
    )


def _waves_per_commit(ob: Observed) -> str:
    """For each committed leader: how many waves since the previous committed one."""
    gaps: list[int] = []
    last = 0
    for wave, _leader, committed, _direct in sorted(ob.leaders):
        if committed:
            gaps.append(wave - last)
            last = wave
    if not gaps:
        return "<p>No leader was committed.</p>"
    tally: dict[int, int] = {}
    for g in gaps:
        tally[g] = tally.get(g, 0) + 1
    keys = list(range(1, max(tally) + 1))
    skipped = sum(1 for _w, _l, c, _d in ob.leaders if not c)
    direct = sum(1 for _w, _l, c, d in ob.leaders if c and d)
    return _bars([str(k) for k in keys], [tally.get(k, 0) for k in keys], "commits") + (
        f"<p>{len(gaps)} leaders committed ({direct} directly), {skipped} skipped.</p>"
    )


def _messages_per_round(ob: Observed) -> str:
    pairs = sorted(ob.round_messages)
    labels: list[str] = []
    values: list[float] = []
    for (r0, m0), (r1, m1) in itertools.pairwise(pairs):
        if r1 == r0 + 1:
            labels.append(str(r0))
            values.append(m1 - m0)
    return _bars(labels, values, "messages")


__all__ = ["DAG_ROUNDS", "Observed", "render", "run_observed"]
