"""The DHT simulator: small worlds over several seeds, determinism, the command line, and
one full-size run (2,000 peers, 10% churn, 10% lying) that must find >= 99% of records."""

from __future__ import annotations

import json

import pytest

from sim.dht import DhtSimConfig, distribution, main, run_dht_sim

SMALL = DhtSimConfig(nodes=120, records=8, providers=3, lookups=60, phase=120.0)
TINY = DhtSimConfig(nodes=60, records=4, providers=1, lookups=20, phase=30.0)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_small_worlds_find_records_under_churn_and_lies(seed: int) -> None:
    report = run_dht_sim(SMALL, seed)
    assert report.ok, report.replay
    assert SMALL.lookups - 3 <= report.record_lookups <= SMALL.lookups  # leavers abandon
    assert report.joined == report.left == int(SMALL.churn * SMALL.nodes)
    assert report.malicious_nodes > 0
    assert report.rejected_records > 0  # the liars were met, and refused
    assert 1 <= report.hops["p50"] <= report.hops["max"]
    assert report.messages["mean"] > 0


def test_runs_are_deterministic() -> None:
    a = run_dht_sim(TINY, 7).to_dict()
    b = run_dht_sim(TINY, 7).to_dict()
    assert a == b
    assert run_dht_sim(TINY, 8).to_dict() != a


def test_codec_and_client_mode_peers() -> None:
    config = DhtSimConfig(
        nodes=80, records=5, providers=2, lookups=40, phase=60.0, codec=True, clients=0.2
    )
    report = run_dht_sim(config, 5)
    assert report.ok, report.replay


def test_forged_stale_and_wrong_key_records_never_win() -> None:
    config = DhtSimConfig(
        nodes=150,
        records=8,
        providers=2,
        lookups=80,
        phase=60.0,
        churn=0.0,
        malicious=0.3,
        strategies=("forge",),
    )
    report = run_dht_sim(config, 6)
    assert report.ok, report.replay
    assert report.rejected_records > 0


def test_config_validation_and_replay_command() -> None:
    with pytest.raises(ValueError):
        DhtSimConfig(nodes=2)
    with pytest.raises(ValueError):
        DhtSimConfig(malicious=0.6)
    with pytest.raises(ValueError):
        DhtSimConfig(strategies=("bribe",))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DhtSimConfig(latency="warp")
    with pytest.raises(ValueError):
        DhtSimConfig(min_success=1.5)
    config = DhtSimConfig(nodes=100, disjoint=1, quorum=None, strategies=("drop",), codec=True)
    cmd = config.replay_command(9)
    assert "--quorum None" in cmd
    assert cmd.startswith("python -m sim.dht --seed 9")
    assert "--nodes 100" in cmd and "--disjoint 1" in cmd and "--strategies drop" in cmd
    assert "--codec" in cmd


def test_distribution() -> None:
    assert distribution([]) == {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    d = distribution([1, 2, 3, 4, 100])
    assert d == {"mean": 22.0, "p50": 3.0, "p95": 100.0, "max": 100.0}


def test_main_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--nodes", "60", "--records", "4", "--providers", "1", "--lookups", "20"]
    assert main([*argv, "--phase", "30", "--seed", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["seed"] == 2 and out["log2_n"] > 5


def test_failing_run_prints_seed_and_replay(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--nodes", "80", "--records", "5", "--providers", "0", "--lookups", "40"]
    argv += ["--phase", "30", "--seed", "4", "--malicious", "0.45", "--strategies", "forge"]
    # quorum 1 believes the first valid record: a liar's stale (seq 1) copy can win
    argv += ["--disjoint", "1", "--quorum", "1", "--churn", "0.0", "--min-success", "1.0"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "seed 4; replay with: python -m sim.dht --seed 4" in err
    assert "FAILED record-lookups" in err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "1"]) == 2
    assert "error" in capsys.readouterr().err


def test_two_thousand_peers_find_99_percent_of_records() -> None:
    """The issue's target: 2,000 peers, 10% churn, 10% malicious (drop, forge, eclipse)."""
    config = DhtSimConfig(nodes=2000, lookups=300, records=40, providers=10)
    report = run_dht_sim(config, 1)
    assert report.ok, f"{report.checks}; replay with: {report.replay}"
    assert report.record_success >= 0.99
    assert report.malicious_nodes >= 150 and report.left == report.joined == 200
    assert report.hops["mean"] <= report.log2_n
