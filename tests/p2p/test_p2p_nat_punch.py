"""Hole punching: timing of both roles, retries with backoff, fallback, TLS roles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.nat import Dial, Expect, Send
from p2p.nat.messages import PunchConnect, PunchSync
from p2p.nat.punch import HolePunch, PunchConfig, PunchFailed, PunchSucceeded, tls_role

A, B = b"\x01" * 32, b"\x02" * 32
A_ADDR, B_ADDR = ("192.0.2.1", 4000), ("192.0.2.2", 4000)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_tls_roles_are_opposite_and_deterministic(x: bytes, y: bytes) -> None:
    if x == y:
        with pytest.raises(ValueError):
            tls_role(x, y)
        return
    assert {tls_role(x, y), tls_role(y, x)} == {"client", "server"}
    assert tls_role(x, y) == tls_role(x, y)
    assert (tls_role(x, y) == "client") == (x < y)


def pair(cfg: PunchConfig | None = None) -> tuple[HolePunch, HolePunch]:
    cfg = cfg or PunchConfig()
    ini = HolePunch(B, A, "initiator", (B_ADDR,), 1024, cfg)
    res = HolePunch(A, B, "responder", (A_ADDR,), 2048, cfg)
    return ini, res


def msg(effects: list[object]) -> object:
    (m,) = [e.msg for e in effects if isinstance(e, Send)]
    return m


def dials(effects: list[object]) -> list[Dial]:
    return [e for e in effects if isinstance(e, Dial)]


def test_initiator_dials_half_an_rtt_after_sync_and_responder_on_sync() -> None:
    ini, res = pair()
    connect = msg(ini.start(10.0))
    assert connect == PunchConnect(1, (B_ADDR,))
    answer = msg(res.on_message(connect, 10.2))  # type: ignore[arg-type]
    assert answer == PunchConnect(1, (A_ADDR,))
    sync_effects = ini.on_message(answer, 10.4)  # type: ignore[arg-type]
    assert msg(sync_effects) == PunchSync(1)
    assert ini.rtt == pytest.approx(0.4)
    assert dials(ini.tick(10.59)) == []
    (d,) = dials(ini.tick(10.61))  # RTT/2 after SYNC left
    assert d.addr == A_ADDR and d.from_listen_port and d.tls_role == "server"  # B > A
    on_sync = res.on_message(PunchSync(1), 10.6)
    (d2,) = dials(on_sync)
    assert d2.addr == B_ADDR and d2.tls_role == "client"
    assert any(isinstance(e, Expect) and e.tls_role == "client" for e in on_sync)
    done = res.dial_result(d2.token, True, 11.0)
    assert PunchSucceeded(B, B_ADDR, 1, None) in done and res.done
    assert PunchSucceeded(A, None, 1, pytest.approx(0.4)) in ini.link_established(None, 11.0)


def test_lost_sync_then_retry_with_backoff() -> None:
    cfg = PunchConfig(dial_timeout=5.0, backoff_initial=1.0)
    ini, res = pair(cfg)
    answer = msg(res.on_message(msg(ini.start(0.0)), 0.1))  # type: ignore[arg-type]
    ini.on_message(answer, 0.2)  # type: ignore[arg-type]  # the SYNC is lost
    ini.tick(0.31)
    assert ini.state == "dialing"
    assert ini.tick(5.31)  # attempt 1 over
    assert ini.state == "backoff"
    assert msg(ini.tick(6.31)) == PunchConnect(2, (B_ADDR,))
    assert res.state == "awaiting_sync"
    res.tick(10.0)  # the responder gave up waiting for SYNC 1, it waits for CONNECT 2
    again = res.on_message(PunchConnect(2, (B_ADDR,)), 6.4)
    assert msg(again) == PunchConnect(2, (A_ADDR,))


def test_falls_back_after_max_attempts() -> None:
    cfg = PunchConfig(max_attempts=3, connect_timeout=2.0, backoff_initial=1.0, backoff_max=8.0)
    ini, _ = pair(cfg)
    now = 0.0
    ini.start(now)
    starts = [0.0]
    failed: list[object] = []
    while not ini.done:
        now += 0.5
        effects = ini.tick(now)
        if any(isinstance(e, Send) for e in effects):
            starts.append(now)
        failed += [e for e in effects if isinstance(e, PunchFailed)]
    assert starts == [0.0, 3.0, 7.0]  # timeout 2 s, then backoff 1 s, 2 s
    assert failed == [PunchFailed(A, "no CONNECT answer", 3)]
    assert cfg.backoff(1) == 1.0 and cfg.backoff(2) == 2.0 and cfg.backoff(5) == 8.0


def test_stale_and_foreign_messages_are_ignored() -> None:
    ini, res = pair()
    ini.start(0.0)
    assert ini.on_message(PunchConnect(7, ()), 0.1) == []
    assert res.on_message(PunchSync(1), 0.1) == []  # SYNC before CONNECT
    res.on_message(PunchConnect(1, ()), 0.1)
    assert res.on_message(PunchConnect(1, ()), 0.2) == []  # duplicate
    assert res.dial_result(99, True, 0.3) == []  # not our token


def test_responder_gives_up_without_connect() -> None:
    _, res = pair(PunchConfig(connect_timeout=3.0))
    res.start(0.0)
    assert res.tick(2.0) == [] or not res.done
    (fail,) = [e for e in res.tick(3.0) if isinstance(e, PunchFailed)]
    assert fail.peer == B and res.done


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        PunchConfig(max_attempts=0)
    with pytest.raises(ValueError, match="backoff_max"):
        PunchConfig(backoff_initial=5, backoff_max=1)
