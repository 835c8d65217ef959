"""Unit tests of the simulator itself: determinism, replay, config validation, the
invariant checkers, the world (partitions, crashes, scheduling), the Byzantine
strategies and the report helpers.

The protocol is exercised end to end by ``test_sim_properties.py``; here each piece of
the harness is checked on its own, so that a green property run means something.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagrider.cli import main as cli_main
from dagrider.codec import Codec, encode
from dagrider.coin import CoinPublicKey, CoinSecretShare, make_share, verify_share
from dagrider.coin import deal as deal_coin
from dagrider.dag import check_structure
from dagrider.effects import Broadcast, Effect, Send
from dagrider.errors import DecodeError, InvalidShare, InvalidVertex
from dagrider.messages import CoinShareMsg, Echo, Ready, Val, Vertex, VertexRequest, genesis
from dagrider.params import Parameters
from sim import byzantine, latency
from sim.byzantine import Outbound
from sim.invariants import Verdict, agreement, integrity, validity
from sim.latency import Constant, LongTail, Uniform
from sim.report import SimResult, percentiles
from sim.runner import FAULT_KINDS, SimConfig, _Run, run
from sim.world import Adversary, World

ROOT = Path(__file__).resolve().parents[1]

# Small runs: a few hundredths of a second each.
TINY = SimConfig(nodes=4, waves=2)


def d(label: str) -> bytes:
    """A readable fake digest."""
    return label.encode().ljust(32, b".")


# --------------------------------------------------------------------------- determinism


DETERMINISM_CASES = [
    TINY,
    SimConfig(nodes=4, faults=1, byzantine="crash", waves=3, latency="longtail", partitions=1),
    SimConfig(nodes=4, faults=1, byzantine="mixed", waves=2, adversarial=True, partitions=2),
    SimConfig(nodes=7, faults=2, byzantine="equivocate", waves=2, latency="constant"),
]


@pytest.mark.parametrize("cfg", DETERMINISM_CASES, ids=lambda c: f"n{c.nodes}-{c.byzantine}")
def test_same_config_and_seed_give_the_same_run(cfg: SimConfig) -> None:
    a, b = run(cfg, 11), run(cfg, 11)
    assert a.trace_hash == b.trace_hash
    assert a.to_dict() == b.to_dict()
    assert a.summary() == b.summary()


def test_different_seeds_give_different_traces() -> None:
    hashes = {run(TINY, seed).trace_hash for seed in range(6)}
    assert len(hashes) == 6


def test_a_run_does_not_depend_on_the_interpreters_hash_seed() -> None:
    """Iterating a set of digests in hash order would make replays machine-dependent."""
    code = (
        "from sim.runner import SimConfig, run\n"
        "cfg = SimConfig(nodes=4, faults=1, byzantine='mixed', waves=2, adversarial=True,"
        " partitions=1)\n"
        "print(run(cfg, 5).trace_hash)\n"
    )
    seen = set()
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        seen.add(out.stdout.strip())
    assert len(seen) == 1, seen


def test_progress_callback_reaches_one() -> None:
    fractions: list[float] = []
    run(SimConfig(nodes=4, waves=3), 1, fractions.append)
    assert fractions, "progress was never reported"
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0


# --------------------------------------------------------------------------- replay


def failed(result: SimResult) -> SimResult:
    """The same result with one verdict turned into a failure."""
    return dataclasses.replace(
        result, verdicts=[*result.verdicts, Verdict("synthetic", False, "forced by the test")]
    )


def test_summary_of_a_failing_run_names_the_seed_and_the_replay_command() -> None:
    result = failed(run(TINY, 77))
    text = result.summary()
    assert not result.ok
    assert "seed=77" in text
    assert "FAIL synthetic" in text
    assert f"replay with: {result.replay}" in text
    assert "--seed 77" in result.replay


def test_summary_of_a_passing_run_has_no_replay_line() -> None:
    result = run(TINY, 77)
    assert result.ok, result.summary()
    assert "replay with" not in result.summary()


def test_a_run_that_runs_out_of_time_fails_liveness() -> None:
    result = run(SimConfig(nodes=4, waves=4, max_time=300.0), 3)
    verdicts = {v.name: v for v in result.verdicts}
    assert not verdicts["liveness"].ok
    assert "stopped at" in verdicts["liveness"].detail
    assert not result.ok
    assert "replay with:" in result.summary()


# One non-default value per SimConfig field. Every one must survive the trip
# replay command -> `dagrider sim` CLI -> SimConfig, or the replay reproduces another run.
NON_DEFAULT: list[tuple[str, object]] = [
    ("nodes", 7),
    ("faults", 1),
    ("byzantine", "silent"),
    ("waves", 1),
    ("latency", "longtail"),
    ("adversarial", True),
    ("partitions", 2),
    ("tx_per_second", 150.5),
    ("tx_size", 100),
    ("batch_delay", 12.5),
    ("gc_depth", 20),
]
# Once replay bugs (fixed): batch_size and max_time were not replayed, floats lost digits.
NON_DEFAULT += [("batch_size", 64), ("max_time", 5_000.0), ("tx_per_second", 123.4567891)]
REPLAY_CASES = [pytest.param(name, value, id=f"{name}={value}") for name, value in NON_DEFAULT]


def replayed(cfg: SimConfig, seed: int, tmp_path: Path) -> dict[str, object]:
    """Run the replay command of ``cfg`` through the real CLI and return its JSON."""
    argv = cfg.replay_command(seed).split()
    assert argv[:2] == ["dagrider", "sim"]
    out = tmp_path / "replay.json"
    try:
        code = cli_main([*argv[1:], "--quiet", "--json", str(out)])
    except SystemExit as exc:  # argparse refused the command line
        raise AssertionError(f"the CLI refused {' '.join(argv)!r}: exit {exc.code}") from None
    doc: dict[str, object] = json.loads(out.read_text())
    assert code == (0 if doc["ok"] else 1)
    return doc


@pytest.mark.parametrize(("name", "value"), REPLAY_CASES)
def test_replay_command_reproduces_every_non_default_parameter(
    name: str, value: object, tmp_path: Path
) -> None:
    base: dict[str, object] = {"waves": 1}
    if name == "faults":
        base["byzantine"] = "silent"
    if name == "byzantine":
        base["faults"] = 1
    cfg = SimConfig(**{**base, name: value})  # type: ignore[arg-type]
    assert getattr(cfg, name) == value
    original = failed(run(cfg, 4))
    assert original.replay in original.summary()
    doc = replayed(cfg, 4, tmp_path)
    assert doc["config"] == dataclasses.asdict(cfg), original.replay
    assert doc["trace_hash"] == original.trace_hash, original.replay


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("nodes", [0, 1, 3, 5, 6, 8, 11])
def test_committee_size_must_be_3f_plus_1(nodes: int) -> None:
    with pytest.raises(ValueError, match="3f\\+1"):
        SimConfig(nodes=nodes)


@pytest.mark.parametrize(("nodes", "faults"), [(4, 2), (7, 3), (10, 4), (4, -1)])
def test_faults_must_be_at_most_f(nodes: int, faults: int) -> None:
    with pytest.raises(ValueError, match="--faults"):
        SimConfig(nodes=nodes, faults=faults, byzantine="silent")


@pytest.mark.parametrize("kind", ["byzantine", "honest", "Silent", ""])
def test_unknown_fault_kind_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="--byzantine"):
        SimConfig(byzantine=kind)


@pytest.mark.parametrize("name", ["gaussian", "", "Uniform"])
def test_unknown_latency_model_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="unknown latency model"):
        SimConfig(latency=name)


def test_waves_must_be_positive() -> None:
    with pytest.raises(ValueError, match="--waves"):
        SimConfig(waves=0)


def test_every_fault_kind_is_accepted() -> None:
    for kind in FAULT_KINDS:
        cfg = SimConfig(nodes=7, faults=2, byzantine=kind)
        assert cfg.f == 2


def test_unknown_strategy_name_is_refused_by_the_registry() -> None:
    with pytest.raises(ValueError, match="unknown Byzantine strategy"):
        byzantine.by_name("nope", random.Random(0))


# --------------------------------------------------------------------------- invariants


def test_agreement_accepts_logs_that_are_prefixes_of_each_other() -> None:
    a, b, c = d("a"), d("b"), d("c")
    v = agreement({0: [a, b, c], 1: [a, b], 2: [], 3: [a, b, c]})
    assert v.ok, v
    assert v.name == "agreement"
    assert "0..3" in v.detail


def test_agreement_rejects_divergent_logs() -> None:
    a, b, c = d("a"), d("b"), d("c")
    v = agreement({0: [a, b, c], 1: [a, c]})
    assert not v.ok
    assert "index 1" in v.detail
    assert "node 1" in v.detail


def test_agreement_rejects_divergence_of_equally_long_logs() -> None:
    a, b, c = d("a"), d("b"), d("c")
    assert not agreement({0: [a, b], 1: [a, c]}).ok
    assert not agreement({0: [b], 1: [c], 2: []}).ok


def test_agreement_with_no_logs_is_vacuous() -> None:
    assert agreement({}).ok


@given(st.lists(st.binary(min_size=1, max_size=2), max_size=8), st.data())
def test_agreement_holds_for_any_prefixes(log: list[bytes], data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(log)), min_size=1, max_size=5))
    assert agreement({i: log[:k] for i, k in enumerate(cuts)}).ok


def test_integrity_rejects_a_vertex_ordered_twice() -> None:
    a, b = d("a"), d("b")
    assert integrity({0: [a, b], 1: [a]}).ok
    v = integrity({0: [a, b], 1: [a, b, a]})
    assert not v.ok
    assert "node 1" in v.detail


def test_validity_rejects_a_missing_vertex() -> None:
    a, b, c = d("a"), d("b"), d("c")
    proposed = {a: (1, 0), b: (1, 1), c: (2, 3)}
    assert validity(proposed, {0: [a, b, c], 1: [c, b, a]}).ok
    v = validity(proposed, {0: [a, b, c], 1: [a, b]})
    assert not v.ok
    assert "1 missing" in v.detail
    assert "node 1" in v.detail
    assert "(2, 3)" in v.detail


def test_validity_counts_every_missing_pair() -> None:
    a, b = d("a"), d("b")
    v = validity({a: (1, 0), b: (1, 1)}, {0: [], 1: [a]})
    assert not v.ok
    assert v.detail.startswith("3 missing")


def test_validity_with_nothing_proposed_or_no_nodes_is_vacuous() -> None:
    assert validity({}, {0: []}).ok
    assert validity({d("a"): (1, 0)}, {}).ok


# --------------------------------------------------------------------------- world


def world(n: int = 4, adversary: Adversary | None = None, seed: int = 0) -> World:
    return World(n, random.Random(seed), Constant(50.0), adversary)


def drain(w: World) -> list[tuple[float, str, int, object]]:
    out = []
    while (ev := w.pop()) is not None:
        out.append((ev.time, ev.kind, ev.node, ev.payload))
    return out


def test_events_pop_in_time_order_and_fifo_on_ties() -> None:
    w = world()
    w.schedule(30.0, "b", 1)
    w.schedule(10.0, "a", 0)
    w.schedule(30.0, "c", 2)
    w.schedule(20.0, "x", 3)
    assert [(t, k) for t, k, _, _ in drain(w)] == [
        (10.0, "a"),
        (20.0, "x"),
        (30.0, "b"),
        (30.0, "c"),
    ]
    assert w.now == 30.0


def test_send_counts_traffic_and_delivers_after_the_latency() -> None:
    w = world()
    w.send(0, 1, b"hello", None)
    assert (w.sent.messages, w.sent.bytes) == (1, 5)
    assert drain(w) == [(50.0, "deliver", 1, (0, b"hello", None))]


def test_partition_holds_cross_messages_until_heal() -> None:
    w = world()
    w.split([0, 0, 1, 1])
    w.send(0, 1, b"same side", None)
    w.send(0, 2, b"across", None)
    w.send(3, 1, b"back across", None)
    assert len(w.held) == 2
    assert drain(w) == [(50.0, "deliver", 1, (0, b"same side", None))]
    w.schedule(1_000.0, "tick", -1)
    assert drain(w) == [(1_000.0, "tick", -1, None)]
    assert len(w.held) == 2, "held messages leaked before the heal"
    w.heal()
    assert w.partition is None and not w.held
    assert sorted(drain(w), key=lambda e: e[2]) == [
        (1_050.0, "deliver", 1, (3, b"back across", None)),
        (1_050.0, "deliver", 2, (0, b"across", None)),
    ]
    assert w.sent.messages == 3


def test_adversary_delays_within_its_bounds_and_never_drops() -> None:
    adv = Adversary(slow_nodes=1, slow_delay=800.0, reorder_factor=8.0)
    w = world(adversary=adv, seed=3)
    sent_at = {}
    for i in range(400):
        w.now = i * 10.0  # crosses several epochs, so the slow node changes
        data = b"m%d" % i
        sent_at[data] = w.now
        w.send(i % 4, (i + 1) % 4, data, None)
    events = drain(w)
    assert len(events) == 400
    delays = sorted(t - sent_at[payload[1]] for t, _, _, payload in events)  # type: ignore[index]
    assert delays[0] >= 50.0
    assert delays[-1] <= (50.0 + 800.0) * 8.0
    assert delays[-1] > 50.0, "the adversary never delayed anything"


def test_crashed_node_drops_deliveries_and_keeps_its_state() -> None:
    r = _Run(SimConfig(nodes=4, waves=1), 1, None)
    r.setup()
    target = 2
    r.world.alive[target] = False
    before = r.nodes[target].process.status()
    data = encode(Echo(1, 0, d("x")))
    r.dispatch("deliver", target, (0, data, Codec(4, Parameters().limits).decode(data)))
    r.dispatch("deliver", target, (1, b"\x00junk", None))
    assert r.world.dropped == 2
    assert r.nodes[target].process.status() == before
    assert r.nodes[target].misbehaviour == 0
    r.world.alive[target] = True
    r.dispatch("deliver", target, (1, b"\x00junk", None))
    assert r.world.dropped == 2
    assert r.nodes[target].misbehaviour == 1


def test_crashed_node_ignores_its_batch_timer() -> None:
    r = _Run(SimConfig(nodes=4, waves=1, batch_delay=5.0), 1, None)
    r.dispatch("start", 0, None)
    assert r.nodes[0].process.awaiting_batch, "batch_delay > 0 must wait for the timer"
    r.world.alive[0] = False
    sent = r.world.sent.messages
    r.dispatch("timer", 0, 1)
    assert r.world.sent.messages == sent


def test_crash_run_crashes_restarts_and_the_restarted_log_agrees() -> None:
    cfg = SimConfig(nodes=4, faults=1, byzantine="crash", waves=4)
    r = _Run(cfg, 2, None)
    result = r.run()
    assert result.ok, result.summary()
    crashed = [i for i, k in result.node_kinds.items() if k == "crash"]
    assert len(crashed) == 1
    assert r.nodes[crashed[0]].strategy is None, "a crashed node is not Byzantine"
    assert result.restarts >= 1
    assert r.world.dropped > 0, "nothing was lost while the node was down"
    logs = {i: r.nodes[i].log for i in range(4)}
    longest = max(logs.values(), key=len)
    for i, log in logs.items():
        assert log == longest[: len(log)], f"node {i} diverges"
    assert len(logs[crashed[0]]) > 0
    assert crashed[0] not in r.correct and crashed[0] in r.honest


def test_restarted_node_commits_past_waves_it_skipped_before_crashing() -> None:
    cfg = SimConfig(nodes=7, faults=2, byzantine="crash", waves=3, partitions=1)
    # Before f304c88 this raised KeyError: 2 in node 3 after its third restart: the
    # ordering snapshot did not carry the leaders of skipped waves above decided_wave.
    result = run(cfg, 8)
    assert result.ok, result.summary()


def test_vertices_of_a_correct_node_that_stalled_are_still_ordered() -> None:
    # max_time only shortens the run: liveness is reached at ~19 s, the lost vertices are
    # below every GC floor by then (the same failure as the replay without max_time).
    cfg = SimConfig(
        nodes=4,
        faults=1,
        byzantine="conflicting-votes",
        waves=3,
        latency="longtail",
        max_time=60_000.0,
    )
    result = run(cfg, 2718281)
    assert result.ok, result.summary()


def test_one_extreme_delay_does_not_outlast_the_run() -> None:
    cfg = SimConfig(
        nodes=7,
        faults=2,
        byzantine="mixed",
        waves=3,
        latency="longtail",
        adversarial=True,
        partitions=2,
    )
    result = run(cfg, 49263)  # found by test_sim_properties.py (dev profile)
    assert result.ok, result.summary()


# --------------------------------------------------------------------------- byzantine


N = 4
ME = 1


def committee_keys() -> tuple[CoinPublicKey, list[CoinSecretShare], bytes]:
    pub, secrets = deal_coin(N, 2, random.Random(7).randbytes)
    return pub, secrets, b"\x01" * 32


def round1_vertex(source: int = ME, block: tuple[bytes, ...] = (b"tx",)) -> Vertex:
    return Vertex(1, source, block, tuple(g.ref for g in genesis(N)[:3]), ())


def others(me: int = ME) -> set[int]:
    return set(range(N)) - {me}


def recipients(out: list[Outbound]) -> list[int]:
    return sorted(i for ob in out for i in ob.to)


def decoded(ob: Outbound) -> object:
    return Codec(N, Parameters().limits).decode(ob.data)


def test_honest_strategy_sends_every_effect_to_its_recipients() -> None:
    v = round1_vertex()
    request = VertexRequest(1, 0, d("q"))
    effects: list[Effect] = [Broadcast(Val(v)), Send(3, request)]
    out = byzantine.honest(ME, N, effects, random.Random(0))
    assert [(ob.to, ob.msg) for ob in out] == [((0, 2, 3), Val(v)), ((3,), request)]
    for ob in out:
        assert decoded(ob) == ob.msg


def test_silent_sends_nothing() -> None:
    assert byzantine.silent(ME, N, [Broadcast(Val(round1_vertex()))], random.Random(0)) == []


@pytest.mark.parametrize("seed", range(5))
def test_equivocate_sends_two_different_vals_for_the_same_round(seed: int) -> None:
    v = round1_vertex()
    out = byzantine.equivocate(ME, N, [Broadcast(Val(v))], random.Random(seed))
    vals = [ob for ob in out if isinstance(ob.msg, Val)]
    assert len(vals) == 2
    a, b = (ob.msg.vertex for ob in vals)  # type: ignore[union-attr]
    assert (a.round, a.source) == (b.round, b.source) == (1, ME)
    assert a.digest != b.digest
    assert not set(vals[0].to) & set(vals[1].to)
    assert set(recipients(vals)) == others()
    for ob in vals:
        assert decoded(ob) == ob.msg


@pytest.mark.parametrize("vote", [Echo, Ready])
def test_conflicting_votes_vote_for_two_digests(vote: type[Echo] | type[Ready]) -> None:
    real = vote(1, 0, d("real"))
    out = byzantine.conflicting_votes(ME, N, [Broadcast(real)], random.Random(1))
    digests = {ob.msg.digest for ob in out}  # type: ignore[union-attr]
    assert len(digests) == 2 and real.digest in digests
    assert recipients(out) == sorted(others())


def test_garbage_frames_are_all_rejected_by_the_codec() -> None:
    codec = Codec(N, Parameters().limits)
    v = round1_vertex()
    kinds = set()
    for seed in range(300):
        out = byzantine.garbage(ME, N, [Broadcast(Val(v))], random.Random(seed))
        assert out[0].msg == Val(v), "garbage keeps the honest traffic"
        junk = [ob for ob in out if ob.msg is None]
        assert len(junk) == 1
        with pytest.raises(DecodeError) as info:
            codec.decode(junk[0].data)
        kinds.add(info.value.reason.split(" (")[0])
    assert len(kinds) >= 2, kinds  # trailing bytes, truncated or lying headers, ...


def test_bad_coin_shares_fail_verification() -> None:
    pub, secrets, domain = committee_keys()
    good = make_share(secrets[ME], pub.verification_keys[ME], 3, domain)
    verify_share(pub, good, domain)
    forged = set()
    for seed in range(60):
        out = byzantine.bad_coin(ME, N, [Broadcast(CoinShareMsg(good))], random.Random(seed))
        assert len(out) == 1 and recipients(out) == sorted(others())
        share = out[0].msg.share  # type: ignore[union-attr]
        assert share != good
        with pytest.raises(InvalidShare):
            verify_share(pub, share, domain)
        forged.add(share)
    assert len(forged) > 3


def test_bad_edges_proposes_vertices_that_break_the_dag_rules() -> None:
    round1 = [Vertex(1, s, (), tuple(g.ref for g in genesis(N)[:3]), ()) for s in range(N)]
    round2 = [Vertex(2, s, (), tuple(p.ref for p in round1[:3]), ()) for s in range(N)]
    v = Vertex(3, ME, (b"t",), tuple(p.ref for p in round2[:3]), ())
    check_structure(v, N, 1, 50)
    refused = 0
    for seed in range(50):
        out = byzantine.bad_edges(ME, N, [Broadcast(Val(v))], random.Random(seed))
        assert len(out) == 1 and recipients(out) == sorted(others())
        bad = out[0].msg.vertex  # type: ignore[union-attr]
        assert bad.digest != v.digest
        try:
            check_structure(bad, N, 1, 50)
        except InvalidVertex:
            refused += 1
    assert refused > 0


def test_mixed_draws_real_strategies_from_the_rng() -> None:
    names = {byzantine.by_name("mixed", random.Random(s))[0] for s in range(40)}
    assert names <= set(byzantine.STRATEGIES)
    assert len(names) >= 3
    assert byzantine.by_name("none", random.Random(0))[0] == "honest"


@pytest.mark.parametrize("kind", ["garbage", "bad-coin", "bad-edges"])
def test_correct_nodes_notice_detectable_misbehaviour(kind: str) -> None:
    result = run(SimConfig(nodes=4, faults=1, byzantine=kind, waves=3), 6)
    assert result.ok, result.summary()
    assert result.node_kinds == {next(iter(result.node_kinds)): kind}
    assert result.misbehaviour_reports > 0, result.summary()


def test_benign_run_reports_no_misbehaviour() -> None:
    result = run(SimConfig(nodes=4, waves=3, adversarial=True, partitions=1), 6)
    assert result.ok, result.summary()
    assert result.misbehaviour_reports == 0
    assert result.node_kinds == {}


# --------------------------------------------------------------------------- report


def test_percentiles_of_known_inputs() -> None:
    assert percentiles([]) == {}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0}
    hundred = [float(x) for x in range(100, 0, -1)]
    assert percentiles(hundred) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    ten = [float(x) for x in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3)]
    assert percentiles(ten) == {"p50": 3.0, "p95": 9.0, "p99": 9.0, "max": 9.0}
    assert percentiles([1.0, 2.0]) == {"p50": 1.0, "p95": 2.0, "p99": 2.0, "max": 2.0}


@given(st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=200))
def test_percentiles_are_ordered_members_of_the_input(values: list[float]) -> None:
    p = percentiles(values)
    assert p["p50"] <= p["p95"] <= p["p99"] <= p["max"] == max(values)
    assert {p["p50"], p["p95"], p["p99"]} <= set(values)


def test_report_json_round_trips_and_has_the_metrics() -> None:
    result = run(SimConfig(nodes=4, waves=3), 2)
    doc = json.loads(result.to_json())
    assert doc == json.loads(json.dumps(result.to_dict()))
    assert doc["ok"] is True and doc["seed"] == 2
    assert doc["replay"] == result.replay
    assert doc["leaders_committed"] >= 1
    assert doc["committed_transactions"] > 0
    msgs, byts = result.per_transaction()
    assert doc["messages_per_tx"] == msgs and doc["bytes_per_tx"] == byts
    assert set(doc["tx_latency_ms"]) == {"p50", "p95", "p99", "max"}


# --------------------------------------------------------------------------- latency


def test_latency_models_sample_in_their_ranges() -> None:
    rng = random.Random(0)
    assert {Constant(50.0).sample(rng, 0, 1) for _ in range(10)} == {50.0}
    uni = [Uniform(10.0, 100.0).sample(rng, 0, 1) for _ in range(2000)]
    assert min(uni) >= 10.0 and max(uni) <= 100.0
    tail = sorted(LongTail().sample(rng, 0, 1) for _ in range(5000))
    assert tail[0] > 0
    assert 25.0 < tail[len(tail) // 2] < 60.0, "the median should sit near 40 ms"
    assert tail[-1] > 400.0, "the Pareto tail never showed up"


def test_latency_registry() -> None:
    for name in ("constant", "uniform", "longtail"):
        assert latency.by_name(name).name == name
    with pytest.raises(ValueError, match="unknown latency model"):
        latency.by_name("nope")
