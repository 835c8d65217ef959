"""The CRDT replication simulator: Byzantine sweeps, determinism, replay, and the
invariant checker itself (which must catch divergence, or a green sweep means nothing).

Every failing run names its seed and the ``dagrider crdt-sim`` command that replays it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from crdt.change import KeySigner, decode_change, sign_change
from crdt.document import Intent, prepare_ops
from crdt.errors import InvalidOperation
from crdt.limits import CrdtLimits
from crdt.reconcile import Message
from crdt.replica import AccessPolicy, Replica
from crdt.sync import MSG_CHANGES, SyncEngine
from dagrider.cli import main as cli_main
from sim import crdt_runner
from sim.crdt_byzantine import BEHAVIOURS, Forger, Setting, random_recon, raw_change
from sim.crdt_runner import (
    CrdtSimConfig,
    CrdtSimResult,
    Evidence,
    check_replicas,
    parse_byzantine,
    random_ops,
    run,
)
from sim.invariants import Verdict

ROOT = Path(__file__).resolve().parents[1]
LIMITS = CrdtLimits()

# Everything at once: every behaviour, partitions, crashes, heavy loss and duplication.
STORM = CrdtSimConfig(
    replicas=9,
    byzantine=parse_byzantine("all"),
    partitions=2,
    crashes=2,
    loss=0.1,
    duplicate=0.05,
)


def check(result: CrdtSimResult) -> None:
    """Assert a run passed; the message is everything needed to reproduce it."""
    assert result.ok, (
        f"seed {result.seed} violated {result.violated}\n{result.summary()}\n"
        f"replay: {result.replay}"
    )


# --------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", sorted(BEHAVIOURS))
def test_each_byzantine_behaviour_is_survived(kind: str, seed: int) -> None:
    result = run(CrdtSimConfig(byzantine=(kind, kind)), 1000 + seed)
    check(result)
    assert result.changes_created > 0
    assert result.attacks.get(kind, 0) > 0, "the behaviour never attacked: the test is vacuous"


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(16))
def test_every_behaviour_at_once_with_partitions_crashes_and_loss(seed: int) -> None:
    result = run(STORM, 2000 + seed)
    check(result)
    assert result.restarts >= 1 and result.lost > 0 and result.duplicated > 0
    assert result.rejected_by_reason.get("bad-signature", 0) > 0
    assert result.rejected_by_reason.get("unauthorized", 0) > 0
    assert result.convergence_ms is not None


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_a_hostile_network_alone_converges(seed: int) -> None:
    cfg = CrdtSimConfig(partitions=3, crashes=3, loss=0.2, duplicate=0.1, latency="longtail")
    check(run(cfg, 3000 + seed))


# --------------------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_run() -> None:
    cfg = CrdtSimConfig(replicas=6, byzantine=("garbage", "withholder"), fault_ms=1_500.0)
    a, b = run(cfg, 7), run(cfg, 7)
    assert a.trace_hash == b.trace_hash, a.replay
    assert a.to_dict() == b.to_dict()
    assert a.summary() == b.summary()
    assert run(cfg, 8).trace_hash != a.trace_hash


def test_a_run_does_not_depend_on_the_interpreters_hash_seed() -> None:
    """Iterating a set of hashes in hash order would make replays machine-dependent."""
    code = (
        "from sim.crdt_runner import CrdtSimConfig, run\n"
        "cfg = CrdtSimConfig(replicas=6, byzantine=('liar', 'equivocator'), fault_ms=1500.0)\n"
        "print(run(cfg, 5).trace_hash)\n"
    )
    hashes = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        hashes.add(out.stdout.strip())
    assert len(hashes) == 1


# --------------------------------------------------------------------------- replay / CLI


def test_the_replay_command_reproduces_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = CrdtSimConfig(
        replicas=6,
        byzantine=("forger", "liar"),
        fault_ms=1_234.5,
        loss=0.07,
        crashes=2,
        latency="longtail",
    )
    original = run(cfg, 42)
    argv = original.replay.split()
    assert argv[:4] == ["dagrider", "crdt-sim", "--seed", "42"]
    assert cli_main([*argv[1:], "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"] == json.loads(json.dumps(dataclasses.asdict(cfg))), original.replay
    assert doc["trace_hash"] == original.trace_hash, original.replay


def test_a_failing_run_names_its_seed_and_replay_command() -> None:
    result = run(CrdtSimConfig(replicas=4, fault_ms=500.0), 77)
    broken = dataclasses.replace(
        result, verdicts=(*result.verdicts, Verdict("convergence", False, "made up"))
    )
    assert not broken.ok and broken.violated == ["convergence"]
    text = broken.summary()
    assert "replay with: dagrider crdt-sim --seed 77 --replicas 4 --fault-ms 500.0" in text
    with pytest.raises(AssertionError) as failure:
        check(broken)
    assert "seed 77" in str(failure.value)
    assert "dagrider crdt-sim --seed 77" in str(failure.value)
    assert "replay with" not in result.summary()


def test_the_cli_exits_non_zero_on_a_violated_invariant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def lying_checker(*args: object) -> list[Verdict]:
        return [Verdict("convergence", False, "injected by the test")]

    monkeypatch.setattr(crdt_runner, "check_replicas", lying_checker)
    assert cli_main(["crdt-sim", "--seed", "9", "--replicas", "3", "--fault-ms", "300"]) == 1
    err = capsys.readouterr().err
    assert "INVARIANT FAILED (seed 9)" in err
    assert "dagrider crdt-sim --seed 9 --replicas 3 --fault-ms 300.0" in err


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["crdt-sim", "--byzantine", "forger,nobody"]) == 2
    assert cli_main(["crdt-sim", "--replicas", "3", "--byzantine", "all"]) == 2
    assert "nobody" in capsys.readouterr().err
    with pytest.raises(ValueError):
        CrdtSimConfig(loss=1.0)
    assert parse_byzantine("none") == () and len(parse_byzantine("all")) == len(BEHAVIOURS)


# --------------------------------------------------------------------------- the checker


def _policy(*signers: KeySigner) -> AccessPolicy:
    return AccessPolicy({"notes": frozenset(s.public_key for s in signers)})


def _write(replica: Replica, signer: KeySigner, value: str, now: int) -> bytes:
    ops = prepare_ops(
        replica.document("notes/a"), [Intent(("title",), "set", "lww", value)], signer.public_key
    )
    change, _ = replica.create(signer, "notes/a", ops, now)
    return change.hash


def _verdicts(replicas: dict[int, Replica], evidence: Evidence) -> dict[str, Verdict]:
    return {v.name: v for v in check_replicas(replicas, evidence, random.Random(0))}


def test_the_checker_catches_replicas_that_never_synced() -> None:
    s1, s2 = KeySigner(b"\x01" * 32), KeySigner(b"\x02" * 32)
    policy = _policy(s1, s2)
    a, b = Replica(policy), Replica(policy)
    created = {s1.public_key: frozenset({_write(a, s1, "x", 1)})}
    created[s2.public_key] = frozenset({_write(b, s2, "y", 2)})
    verdicts = _verdicts({0: a, 1: b}, Evidence(policy, LIMITS, created))
    assert not verdicts["convergence"].ok
    assert not verdicts["validity"].ok
    assert "replicas 0 and 1" in verdicts["convergence"].detail
    # Control: after a real sync the same checker passes, so the failure above is real.
    ea, eb = SyncEngine(a), SyncEngine(b)
    inbox = [("a", p.payload) for p in ea.start_session("b").sends]
    while inbox:
        to, payload = inbox.pop(0)
        engine, sender, other = (eb, "a", "b") if to == "a" else (ea, "b", "a")
        inbox += [(other, s.payload) for s in engine.receive(sender, payload).sends]
    verdicts = _verdicts({0: a, 1: b}, Evidence(policy, LIMITS, created))
    assert all(v.ok for v in verdicts.values()), verdicts


def test_the_checker_catches_the_same_changes_with_different_state() -> None:
    """Equal change sets but a document that differs (e.g. a bad merge) still fails."""
    s1 = KeySigner(b"\x01" * 32)
    policy = _policy(s1)
    a, b = Replica(policy), Replica(policy)
    h = _write(a, s1, "x", 1)
    b.receive(a.get(h).encoded)  # type: ignore[union-attr]
    state = b.document("notes/a")
    assert state is not None
    other = Replica(policy)
    _write(other, s1, "zzz", 5)
    state.merge(other.document("notes/a"))  # type: ignore[arg-type]  # corrupt b's state
    verdicts = _verdicts({0: a, 1: b}, Evidence(policy, LIMITS, {}))
    assert not verdicts["convergence"].ok
    assert "state of notes/a" in verdicts["convergence"].detail


def test_the_checker_catches_forged_and_unauthorised_changes() -> None:
    s1, outsider = KeySigner(b"\x01" * 32), KeySigner(b"\x09" * 32)
    policy = _policy(s1)
    forged = raw_change(
        "notes/a", [], s1.public_key, 5, [{"up": "k", "type": "lww", "op": {"v": 1}}], b"\x00" * 64
    )
    for bad in (
        decode_change(forged, LIMITS, verify=False),
        sign_change(
            outsider, "notes/a", (), 5, [{"up": "k", "type": "lww", "op": {"v": 2}}], LIMITS
        ),
    ):
        replica = Replica(AccessPolicy.open_to([s1.public_key, outsider.public_key]))
        assert replica.add(bad).status == "applied"  # bypasses the checks on purpose
        verdicts = _verdicts({0: replica}, Evidence(policy, LIMITS, {}))
        assert not verdicts["authenticity"].ok, bad


def test_the_checker_catches_an_equivocation_applied_by_some_only() -> None:
    s1 = KeySigner(b"\x01" * 32)
    policy = _policy(s1)
    a, b = Replica(policy), Replica(policy)
    twin1 = sign_change(s1, "notes/a", (), 5, [{"up": "k", "type": "lww", "op": {"v": 1}}], LIMITS)
    twin2 = sign_change(s1, "notes/a", (), 5, [{"up": "k", "type": "lww", "op": {"v": 2}}], LIMITS)
    a.add(twin1)
    evidence = Evidence(policy, LIMITS, {}, ((twin1.hash, twin2.hash),))
    assert not _verdicts({0: a, 1: b}, evidence)["equivocation"].ok
    b.add(twin1)
    assert _verdicts({0: a, 1: b}, evidence)["equivocation"].ok


# --------------------------------------------------------------------------- the parts


def test_liar_messages_are_well_formed() -> None:
    """The liar must get past the decoder, or it only tests what ``garbage`` does."""
    rng = random.Random(3)
    real = sorted(rng.randbytes(32) for _ in range(20))
    for _ in range(300):
        msg = random_recon(rng, real)
        assert Message.from_wire(msg.to_wire()) == msg


def test_forged_changes_are_refused_for_the_expected_reasons() -> None:
    correct = KeySigner(b"\x01" * 32)
    forger_seed = b"\x02" * 32
    policy = AccessPolicy(
        {
            "notes": frozenset({correct.public_key, KeySigner(forger_seed).public_key}),
            "admin": frozenset({correct.public_key}),
        }
    )
    setting = Setting(
        1, (0,), forger_seed, policy, (correct.public_key,), ("notes/a",), "admin/s", LIMITS
    )
    forger = Forger(setting)
    victim = Replica(policy)
    _write(victim, correct, "x", 1)
    forger.replica.receive(victim.get(victim.heads[0]).encoded)  # type: ignore[union-attr]
    rng = random.Random(1)
    reasons: set[str] = set()
    for now in range(200):
        for packet in forger.attack(10 + now, rng):
            _version, kind, encoded = msgpack.unpackb(packet.data)
            assert kind == MSG_CHANGES
            for data in encoded:
                receipt = victim.receive(data)
                assert receipt.status in ("rejected", "pending"), receipt
                reasons.add(receipt.reason or "")
    assert {"bad-signature", "unauthorized", "bad-dependency"} <= reasons
    assert len(victim) == 1


def test_the_workload_writes_every_type() -> None:
    signer = KeySigner(b"\x05" * 32)
    replica = Replica(_policy(signer))
    rng = random.Random(4)
    for now in range(400):
        try:
            ops = random_ops(replica.document("notes/a"), signer.public_key, rng)
            replica.create(signer, "notes/a", ops, now)
        except InvalidOperation as exc:  # pragma: no cover - would be a workload bug
            pytest.fail(f"workload produced an invalid update: {exc}")
    state = replica.document("notes/a")
    assert state is not None
    types = set()

    def walk(m: object) -> None:
        for (_, tname), nested in m.values.items():  # type: ignore[attr-defined]
            types.add(tname)
            if tname == "ormap":
                walk(nested)

    walk(state)
    assert types >= {"pncounter", "gcounter", "lww", "mvreg", "orset", "ormap", "text"}
    changes = replica.ordered(replica.ids)
    set_removes = [
        op for c in changes for op in c.ops if op.get("type") == "orset" and "rm" in op["op"]
    ]
    assert set_removes, "no OR-Set element was ever removed"
