"""The live view's sampler over a real :class:`~dagrider.process.Process` (driven by the
simulator): what it reports is what the DAG and the ordering hold, each ordered vertex is
attributed to the commit that ordered it, and a slow viewer is resynchronised instead
of queueing without bound. The browser side is tests/e2e/test_ui_browser.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dagrider.node.service import LogEntry
from dagrider.node.ui import VIEWER_QUEUE, WINDOW_ROUNDS, UiSampler, ui_page
from dagrider.ordering import wave_round
from dagrider.process import Process
from sim.runner import SimConfig, _Run


class _Service:
    """The part of a node the sampler reads: status(), the log, and its process."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.entries: list[LogEntry] = []

    def status(self) -> dict[str, Any]:
        return {**self.process.status(), "node": self.process.cfg.me, "n": 4}

    def log_head(self) -> int:
        return len(self.entries) - 1

    def log(self, after: int, limit: int) -> list[LogEntry]:
        return self.entries[after + 1 : after + 1 + limit]


def _sampled_run(seed: int, waves: int = 6) -> tuple[Process, UiSampler, list[dict[str, Any]]]:
    """Run a 4-member simulation and sample member 0 every time a wave is decided."""
    deltas: list[dict[str, Any]] = []
    holder: dict[str, UiSampler] = {}
    clock = iter(range(10**6))

    def progress(_fraction: float) -> None:
        sampler = holder.get("s")
        if sampler is None:
            sampler = holder["s"] = UiSampler(
                _Service(run.nodes[0].process), clock=lambda: float(next(clock))
            )
        deltas.append(sampler.sample())

    run = _Run(SimConfig(nodes=4, waves=waves), seed, progress)
    run.run()
    sampler = holder["s"]
    deltas.append(sampler.sample())
    return run.nodes[0].process, sampler, deltas


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_sample_is_what_the_process_holds(seed: int) -> None:
    process, sampler, deltas = _sampled_run(seed)
    full = sampler.full()
    dag = process.dag
    low = max(1, process.round - WINDOW_ROUNDS + 1, dag.floor)
    expected = {(r, s) for r in range(low, process.round + 1) for s in dag.by_round.get(r, {})}
    assert {(v["r"], v["s"]) for v in full["vertices"]} == expected
    for v in full["vertices"]:
        vertex = dag.vertex_at(v["r"], v["s"])
        assert vertex is not None
        assert v["strong"] == [[e.round, e.source] for e in vertex.strong_edges]
        assert v["tx"] == len(vertex.block)
        assert (v["by"] is not None) == process.ordering.is_ordered(vertex.digest)
    # The leaders: one per decided wave, committed exactly when the ordering committed it.
    decided = [d for delta in deltas for d in delta["leaders"]]
    assert [d["wave"] for d in decided] == list(range(1, process.ordering.decided_wave + 1))
    for d in decided:
        if d["state"] == "committed":
            leader = dag.vertex_at(wave_round(d["wave"], 1), d["s"])
            if leader is not None:
                assert process.ordering.is_ordered(leader.digest)
    assert full["status"]["round"] == process.round
    json.dumps(full)  # what the page receives is JSON


@pytest.mark.parametrize("seed", [0, 3])
def test_each_vertex_is_attributed_to_the_commit_that_ordered_it(seed: int) -> None:
    process, sampler, _ = _sampled_run(seed)
    dag = process.dag
    leaders = {
        d["wave"]: dag.vertex_at(d["r"], d["s"])
        for d in sampler.full()["leaders"]
        if d["state"] == "committed"
    }
    attributed = 0
    for v in sampler.full()["vertices"]:
        if not v["by"]:
            continue
        vertex = dag.vertex_at(v["r"], v["s"])
        leader = leaders[v["by"]]
        assert vertex is not None and leader is not None
        assert leader is vertex or dag.path(leader, vertex)
        for wave, earlier in leaders.items():  # no earlier commit reached it
            if wave < v["by"] and earlier is not None:
                assert not dag.path(earlier, vertex)
        attributed += 1
    assert attributed > 0


def test_a_slow_viewer_is_resynchronised_not_queued() -> None:
    process, _sampler, _ = _sampled_run(0, waves=2)

    async def main() -> None:
        sampler = UiSampler(_Service(process), period=3600)
        viewer = sampler.subscribe()
        assert viewer.queue.qsize() == 1  # the full event
        for _ in range(VIEWER_QUEUE * 3):
            sampler.publish(sampler.sample())
        assert viewer.queue.qsize() <= VIEWER_QUEUE and viewer.resync
        event = sampler.resync(viewer)
        assert event.startswith(b"event: full\n") and viewer.queue.empty()
        assert not viewer.resync
        sampler.unsubscribe(viewer)
        await sampler.close()

    asyncio.run(main())


def test_the_page_is_self_contained() -> None:
    page = ui_page().decode()
    assert "/ui/events" in page
    for external in ("https://", "src=", "@import", "url("):
        assert external not in page, external
    assert '<link rel="icon" href="data:,">' in page  # no favicon request either


def test_bad_period_is_refused() -> None:
    with pytest.raises(ValueError, match="period must be positive"):
        UiSampler(_Service.__new__(_Service), period=0)


def test_routes_page_without_token_feed_with_it() -> None:
    """The page holds no data, so it loads without the API token (a browser cannot add a
    header to a page load); its feed needs the token like every data route."""
    from node.test_api import FakeNode, run_api

    async def scenario(client: Any, node: FakeNode) -> None:
        page = await client.get("/ui")
        assert page.status == 200 and page.content_type == "text/html"
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        refused = await client.get("/ui/events")
        assert refused.status == 401
        feed = await client.get("/ui/events", headers={"Authorization": "Bearer s3cret"})
        assert feed.status == 200 and feed.content_type == "text/event-stream"
        block = b""
        while b"\n\n" not in block:
            block += await feed.content.readany()
        head, _, data = block.partition(b"\n\n")[0].partition(b"\ndata: ")
        assert head == b"event: full"
        doc = json.loads(data)
        assert doc["status"]["round"] == 12 and doc["vertices"] == []
        feed.close()

    run_api(scenario, token="s3cret")
