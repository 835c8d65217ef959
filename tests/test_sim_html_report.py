"""``dagrider sim --report FILE.html``: a self-contained page of the very run the text
summary describes (same trace hash), with the DAG, the latency distribution, waves per
commit, messages per round and the verdicts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dagrider.cli import main
from sim.html_report import DAG_ROUNDS, render, run_observed
from sim.runner import SimConfig, run

SMALL = SimConfig(nodes=4, waves=4)


def test_the_observed_run_is_the_simulators_run() -> None:
    plain = run(SMALL, 3)
    observed, seen = run_observed(SMALL, 3)
    assert observed.trace_hash == plain.trace_hash
    assert observed.verdicts == plain.verdicts
    assert seen.node in range(SMALL.nodes)
    # Every round of the window has at least a quorum of vertices, with their edges.
    rounds = {r for r, _ in seen.vertices}
    assert rounds == set(range(1, max(rounds) + 1)) and max(rounds) <= DAG_ROUNDS
    for (r, _s), (strong, _weak, _txs) in seen.vertices.items():
        assert len(strong) >= 3 and all(er == r - 1 for er, _ in strong)
    committed = [w for w, _l, c, _d in seen.leaders if c]
    assert len(committed) == observed.leaders_committed
    # Each committed leader ordered at least itself, and nothing is ordered twice.
    leaders = {leader for _w, leader, c, _d in seen.leaders if c and leader is not None}
    assert leaders <= set(seen.ordered_by.values())
    assert seen.tx_latency_ms and len(seen.round_messages) > 4


def test_the_page_is_self_contained_and_shows_the_run() -> None:
    result, seen = run_observed(SMALL, 1)
    page = render(result, seen)
    assert page.startswith("<!DOCTYPE html>")
    for external in ("http://", "https://", "src=", "url(", "@import", "<link", "<script"):
        assert external not in page, external
    assert page.count("<circle") == len(seen.vertices)
    for v in result.verdicts:
        assert f"<td>{v.name}</td>" in page
    assert "Commit latency" in page and "Waves per committed leader" in page
    assert "Messages per round" in page
    assert result.replay in page
    assert len(re.findall(r'stroke="#17803d" stroke-width="3"', page)) == sum(
        1
        for _w, leader, c, _d in seen.leaders
        if c and leader is not None and leader[0] <= DAG_ROUNDS
    )


def test_cli_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert main(["sim", "-n", "4", "-w", "3", "-q", "--report", str(out)]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert "PASS" in out.read_text()
    assert main(["sim", "-n", "4", "-w", "3", "-q", "--seeds", "2", "--report", str(out)]) == 0
    assert (tmp_path / "report-0.html").exists() and (tmp_path / "report-1.html").exists()


def test_an_unwritable_report_is_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing-dir" / "report.html"
    assert main(["sim", "-n", "4", "-w", "2", "-q", "--report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write the report" in err and "Traceback" not in err
