"""Reachability: classification from dial-backs, and a server that cannot be abused."""

from __future__ import annotations

from p2p.nat import Send
from p2p.nat.messages import DialRequest, DialResponse, Status
from p2p.nat.reachability import (
    DialBackTo,
    ReachabilityChanged,
    ReachabilityClient,
    ReachabilityConfig,
    ReachabilityServer,
)

S = [bytes([i + 1]) * 32 for i in range(5)]
ME = ("192.0.2.1", 4000)


def requests(effects: list[object]) -> dict[bytes, DialRequest]:
    return {
        e.peer: e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, DialRequest)
    }


def client(n: int = 3) -> tuple[ReachabilityClient, dict[bytes, DialRequest]]:
    c = ReachabilityClient(b"k" * 32)
    c.set_candidates([ME], 0.0)
    return c, requests(c.set_servers(S[:n], 0.0))


def test_dial_backs_make_us_public() -> None:
    c, reqs = client()
    assert len(reqs) == 3 and len({r.nonce for r in reqs.values()}) == 3
    effects: list[object] = []
    for server, req in reqs.items():
        effects += c.on_dial_back(req.nonce, ME, 1.0)
        effects += c.on_response(server, DialResponse(req.nonce, Status.OK, ME), 1.0)
    assert ReachabilityChanged("unknown", "public", (ME,)) in effects
    assert c.status == "public" and c.reachable == (ME,)


def test_failed_dials_make_us_private() -> None:
    c, reqs = client()
    effects: list[object] = []
    for server, req in reqs.items():
        effects += c.on_response(server, DialResponse(req.nonce, Status.DIAL_FAILED, ME), 1.0)
    assert ReachabilityChanged("unknown", "private", ()) in effects


def test_ok_without_the_dial_back_proves_nothing() -> None:
    c, reqs = client()
    for server, req in reqs.items():
        c.on_response(server, DialResponse(req.nonce, Status.OK, ME), 1.0)
    c.tick(100.0)
    assert c.status == "unknown"


def test_refusals_ask_another_server() -> None:
    c, reqs = client(4)
    server, req = next(iter(reqs.items()))
    more = requests(c.on_response(server, DialResponse(req.nonce, Status.RATE_LIMITED), 1.0))
    assert list(more) == [S[3]]


def test_answers_from_the_wrong_peer_are_ignored() -> None:
    c, reqs = client()
    req = reqs[S[0]]
    assert c.on_response(S[1], DialResponse(req.nonce, Status.DIAL_FAILED), 1.0) == []


def test_recheck_on_address_change_and_on_schedule() -> None:
    c, reqs = client()
    for server, req in reqs.items():
        c.on_response(server, DialResponse(req.nonce, Status.DIAL_FAILED, ME), 1.0)
    assert c.rounds == 1
    new = requests(c.set_candidates([("192.0.2.7", 4000)], 2.0))
    assert len(new) == 3 and c.rounds == 2
    assert all(r.addrs == (("192.0.2.7", 4000),) for r in new.values())
    for server, req in new.items():
        c.on_response(server, DialResponse(req.nonce, Status.DIAL_FAILED, ME), 3.0)
    assert requests(c.tick(3.0 + 299.0)) == {}
    assert len(requests(c.tick(3.0 + 300.0))) == 3


def test_server_dials_back_only_the_observed_ip_from_a_fresh_port() -> None:
    srv = ReachabilityServer(0.0)
    req = DialRequest(7, (("203.0.113.9", 80), ("192.0.2.1", 4000)))
    (dial,) = srv.on_request(S[0], ("192.0.2.1", 55555), req, 0.0)
    assert isinstance(dial, DialBackTo) and dial.addr == ("192.0.2.1", 4000)
    (resp,) = srv.dial_result(dial.token, False, 1.0)
    assert resp == Send(S[0], DialResponse(7, Status.DIAL_FAILED, ("192.0.2.1", 4000)))


def test_server_refuses_third_party_ips_and_relayed_requests() -> None:
    srv = ReachabilityServer(0.0)
    victim = DialRequest(1, (("203.0.113.9", 80),))
    assert srv.on_request(S[0], ("192.0.2.1", 4000), victim, 0.0) == [
        Send(S[0], DialResponse(1, Status.DIAL_REFUSED))
    ]
    ok_ip = DialRequest(2, (("192.0.2.1", 4000),))
    assert srv.on_request(S[1], None, ok_ip, 0.0) == [
        Send(S[1], DialResponse(2, Status.DIAL_REFUSED))
    ]
    assert srv.on_request(S[2], ("192.0.2.1", 1), DialRequest(3, ()), 0.0) == [
        Send(S[2], DialResponse(3, Status.BAD_REQUEST))
    ]


def test_server_rate_limits_per_peer_globally_and_concurrently() -> None:
    cfg = ReachabilityConfig(requests_per_min=12, requests_per_min_per_peer=6, max_concurrent=2)
    srv = ReachabilityServer(0.0, cfg)
    peer_addr = ("192.0.2.1", 1)
    req = DialRequest(1, (("192.0.2.1", 4000),))
    (d,) = srv.on_request(S[0], peer_addr, req, 0.0)
    assert isinstance(d, DialBackTo)
    # one request per peer at a time
    assert srv.on_request(S[0], peer_addr, req, 0.0)[0].msg.status == Status.RATE_LIMITED  # type: ignore[union-attr]
    srv.dial_result(d.token, True, 0.0)
    (d2,) = srv.on_request(S[0], peer_addr, req, 0.0)  # burst of 2 per peer
    srv.dial_result(d2.token, True, 0.0)  # type: ignore[union-attr]
    assert srv.on_request(S[0], peer_addr, req, 0.0)[0].msg.status == Status.RATE_LIMITED  # type: ignore[union-attr]
    # other peers: global burst of 2 is spent
    assert srv.on_request(S[1], peer_addr, req, 0.0)[0].msg.status == Status.RATE_LIMITED  # type: ignore[union-attr]
    # tokens come back with time
    assert isinstance(srv.on_request(S[1], peer_addr, req, 10.0)[0], DialBackTo)
    assert srv.refused[Status.RATE_LIMITED] == 3


def test_server_times_out_dials() -> None:
    srv = ReachabilityServer(0.0)
    (d,) = srv.on_request(S[0], ("192.0.2.1", 1), DialRequest(5, (("192.0.2.1", 4000),)), 0.0)
    assert srv.tick(4.9) == []
    assert srv.tick(5.0) == [Send(S[0], DialResponse(5, Status.DIAL_FAILED, ("192.0.2.1", 4000)))]
    assert srv.dial_result(d.token, True, 6.0) == []  # type: ignore[union-attr]


def test_reports_say_why_a_round_decided_nothing() -> None:
    """An undecided round leaves no event; the status must still say what each server
    answered (a loaded run stayed "unknown" for 30 s and nothing said why)."""
    c, reqs = client()
    first, *rest = reqs.items()
    assert c.report()["pending"] == {s.hex()[:16]: "pending" for s in reqs}
    c.on_response(first[0], DialResponse(first[1].nonce, Status.RATE_LIMITED), 1.0)
    c.tick(100.0)  # the others never answer
    report = c.report()
    assert report["rounds"] == 1 and report["pending"] == {}
    assert report["last_round"] == {
        first[0].hex()[:16]: "none (rate-limited)",
        **{s.hex()[:16]: "none (no answer)" for s, _ in rest},
    }
    c.set_candidates([("192.0.2.9", 4000)], 200.0)  # a new round starts...
    c.set_candidates([ME], 201.0)  # ...and is abandoned at once
    assert c.report()["abandoned_probes"] == 3

    server = ReachabilityServer(0.0)
    (dial,) = server.on_request(S[0], ME, DialRequest(7, (ME,)), 0.0)
    assert server.report()["dialing"] == 1
    server.on_request(S[0], ME, DialRequest(8, (ME,)), 0.0)  # one at a time per peer
    assert isinstance(dial, DialBackTo)
    server.dial_result(dial.token, True, 1.0)
    assert server.report() == {
        "dial_backs": {"ok": 1, "failed": 0},
        "dialing": 0,
        "refused": {"rate-limited": 1},
    }


def test_a_dial_back_that_arrived_is_proof_even_if_the_server_says_it_failed() -> None:
    """A loaded run: the server's dial delivered our nonce, then the server reported
    DIAL_FAILED (its close raced our abort, or its own deadline passed). One probe "ok",
    one "failed" decided nothing, and the node stayed "unknown" for the next 60 s."""
    c, reqs = client(2)
    effects: list[object] = []
    for server, req in reqs.items():
        effects += c.on_dial_back(req.nonce, ME, 1.0)
        effects += c.on_response(server, DialResponse(req.nonce, Status.DIAL_FAILED, ME), 1.1)
    assert ReachabilityChanged("unknown", "public", (ME,)) in effects
    assert set(c.last_round.values()) == {"ok"}
    # without the nonce, DIAL_FAILED stays a failure
    c2, reqs2 = client(2)
    for server, req in reqs2.items():
        c2.on_response(server, DialResponse(req.nonce, Status.DIAL_FAILED, ME), 1.0)
    assert c2.status == "private"
