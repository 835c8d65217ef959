"""The clock skew a replica accepts from peers is bounded (``[crdt] max_clock_skew_ms``).

Before the bound, a peer's change was accepted with any clock up to 2**62: a writer
could stamp its changes years ahead, and every later honest write (whose clock is the
wall time) would sort before them in last-writer-wins. Now a change stamped more than
the bound ahead of the receiver's time is refused without being remembered, so it is
taken once time catches up: a fast clock delays its writer, it never forks replicas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdt.change import KeySigner
from crdt.replica import AccessPolicy, Replica
from crdt.sync import SyncEngine
from dagrider.node.config import ConfigError, load_config

FAST = KeySigner(b"\x05" * 32)  # a writer whose clock runs ahead
SLOW = KeySigner(b"\x06" * 32)
POLICY = AccessPolicy.open_to([FAST.public_key, SLOW.public_key])
NOW = 1_800_000_000_000  # ms
SKEW = 60_000


def lww(key: str, value: Any) -> dict[str, Any]:
    return {"up": key, "type": "lww", "op": {"v": value}}


def _written_at(now_ms: int, n: int = 1) -> tuple[Replica, list[bytes]]:
    """A writer's replica and ``n`` chained changes it created at ``now_ms``."""
    writer = Replica(POLICY)
    encoded = []
    for i in range(n):
        change, _ = writer.create(FAST, "app/doc", [lww("k", i)], now_ms + i)
        encoded.append(change.encoded)
    return writer, encoded


def test_a_change_too_far_ahead_is_refused_then_taken_once_time_catches_up() -> None:
    ahead = 10 * 60_000  # ten minutes
    _, (first, second) = _written_at(NOW + ahead, 2)
    r = Replica(POLICY, max_clock_skew_ms=SKEW)
    r.observe_time(NOW)
    receipt = r.receive(first)
    assert receipt.status == "rejected" and receipt.reason == "clock-skew"
    assert "600000 ms ahead" in receipt.detail and f"at most {SKEW} ms" in receipt.detail
    assert len(r) == 0 and r.documents() == []
    r.observe_time(NOW + ahead + 1 - SKEW)  # both within the bound; no memory of refusals
    assert r.receive(second).status == "pending"  # its dependency was refused: absent
    receipt = r.receive(first)
    assert receipt.status == "applied"
    assert [c.encoded for c in receipt.applied] == [first, second]
    assert r.value("app/doc") == {"k": 1}


@given(offset=st.integers(-(10**9), 10**9))
def test_the_bound_is_exactly_the_configured_skew(offset: int) -> None:
    _, (encoded,) = _written_at(NOW + offset)
    r = Replica(POLICY, max_clock_skew_ms=SKEW)
    r.observe_time(NOW)
    status = r.receive(encoded).status
    assert status == ("rejected" if offset > SKEW else "applied")


def test_without_observed_time_or_bound_the_old_rule_applies() -> None:
    """Reloading stored changes happens before the first ``observe_time``: a clock that
    stepped back since must not drop what was accepted."""
    _, (encoded,) = _written_at(NOW + 10 * SKEW)
    assert Replica(POLICY, max_clock_skew_ms=SKEW).receive(encoded).status == "applied"
    unbounded = Replica(POLICY)
    unbounded.observe_time(NOW)
    assert unbounded.receive(encoded).status == "applied"


def test_sync_does_not_blame_a_peer_for_a_clock_ahead_of_ours() -> None:
    writer, _ = _written_at(NOW + 10 * SKEW, 3)
    reader = Replica(POLICY, max_clock_skew_ms=SKEW)
    reader.observe_time(NOW)
    engines = {"w": SyncEngine(writer), "r": SyncEngine(reader)}
    queue = [("w", send.peer, send.payload) for send in engines["w"].start_session("r").sends]
    faults: list[str] = []
    refused: list[str] = []
    while queue:
        src, dst, payload = queue.pop(0)
        assert isinstance(dst, str)
        result = engines[dst].receive(src, payload)
        faults += [f.reason for f in result.faults]
        refused += [reason for reason, _ in result.rejected]
        queue += [(dst, s.peer, s.payload) for s in result.sends]
    assert "clock-skew" in refused
    assert faults == []
    assert len(reader) == 0


def test_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_clock_skew_ms"):
        Replica(POLICY, max_clock_skew_ms=-1)


def _config(tmp_path: Path, crdt: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        "[node]\n"
        f'key_file = "{tmp_path / "key"}"\n'
        f'committee_file = "{tmp_path / "committee.toml"}"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        f"[crdt]\n{crdt}\n"
    )
    return path


def test_the_bound_is_configured_under_crdt(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "")).crdt_max_clock_skew_ms == 60_000
    cfg = load_config(_config(tmp_path, "max_clock_skew_ms = 1500"))
    assert cfg.crdt_max_clock_skew_ms == 1500
    with pytest.raises(ConfigError, match=r"\[crdt\] max_clock_skew_ms must be >= 0"):
        load_config(_config(tmp_path, "max_clock_skew_ms = -1"))
