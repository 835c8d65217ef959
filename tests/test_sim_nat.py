"""NAT boxes, the TCP model, and the NAT machines end to end in the simulated world.

Matrix: for every pair of NAT behaviours, over many seeds and (asymmetric) latencies,
A wants a link to B: the final path must be direct where hole punching can work and
relayed where it cannot, and both peers must classify their reachability correctly.
"""

from __future__ import annotations

import random

import pytest

from sim.nat import NatBox, NatWorld, Scenario, build, run_scenario

SEEDS = range(12)
PUNCHABLE = [
    ("public", "public"),
    ("public", "eim"),
    ("eim", "public"),
    ("eim", "eim"),
    ("port_restricted", "port_restricted"),
    ("eim", "port_restricted"),
]
UNPUNCHABLE = [("symmetric", "eim"), ("eim", "symmetric"), ("symmetric", "symmetric")]
REMOTE = ("198.51.100.1", 4000)
OTHER = ("198.51.100.2", 4000)


# -- NAT boxes ---------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["eim", "port_restricted", "symmetric"])
def test_unsolicited_inbound_is_dropped(behaviour: str) -> None:
    nat = NatBox(behaviour, "192.0.2.1", random.Random(0))  # type: ignore[arg-type]
    assert nat.inbound(REMOTE, 4000, 0.0) is None
    pub = nat.outbound(("10.0.0.2", 4000), REMOTE, 0.0)
    assert nat.inbound(REMOTE, pub[1], 1.0) == ("10.0.0.2", 4000)
    assert nat.inbound(OTHER, pub[1], 1.0) is None  # address-and-port-dependent filter
    assert nat.inbound(("198.51.100.1", 4001), pub[1], 1.0) is None
    assert nat.inbound(REMOTE, pub[1], 1000.0) is None  # entry expired


def test_mapping_behaviours() -> None:
    src = ("10.0.0.2", 4000)
    eim = NatBox("eim", "192.0.2.1", random.Random(0))
    assert eim.outbound(src, REMOTE, 0.0) == eim.outbound(src, OTHER, 0.0) == ("192.0.2.1", 4000)
    pr = NatBox("port_restricted", "192.0.2.1", random.Random(0))
    assert pr.outbound(src, REMOTE, 0.0) == pr.outbound(src, OTHER, 0.0)
    sym = NatBox("symmetric", "192.0.2.1", random.Random(0))
    a, b = sym.outbound(src, REMOTE, 0.0), sym.outbound(src, OTHER, 0.0)
    assert a != b and sym.outbound(src, REMOTE, 1.0) == a
    # a symmetric mapping towards one remote does not admit another remote
    assert sym.inbound(OTHER, a[1], 1.0) is None


def _two_hosts(lat_a: float, lat_b: float) -> tuple[NatWorld, object, object]:
    world = NatWorld(1, jitter=0.0)
    na, nb = world.add_nat("eim", "192.0.2.1"), world.add_nat("eim", "192.0.2.2")
    a = world.add_host("a", "10.0.1.2", lat_a, lat_a, na)
    b = world.add_host("b", "10.0.2.2", lat_b, lat_b, nb)
    return world, a, b


def test_crossing_syns_open_the_connection() -> None:
    world, a, b = _two_hosts(0.05, 0.05)
    results: list[bool] = []
    world.connect(a, 4000, ("192.0.2.2", 4000), 5.0, lambda ok, h, s: results.append(ok), "t")  # type: ignore[arg-type]
    world.connect(b, 4000, ("192.0.2.1", 4000), 5.0, lambda ok, h, s: results.append(ok), "t")  # type: ignore[arg-type]
    world.run(10.0)
    assert results == [True, True]
    assert any("simultaneous open" in t for _, t in world.trace)


def test_early_syn_is_dropped_and_the_retransmission_gets_through() -> None:
    world, a, b = _two_hosts(0.02, 0.02)
    got: list[tuple[float, bool]] = []
    world.connect(
        a, 4000, ("192.0.2.2", 4000), 6.0, lambda ok, h, s: got.append((world.now, ok)), "t"
    )  # type: ignore[arg-type]
    # b dials 0.5 s later: a's first SYN already died at b's NAT
    world.at(
        0.5, lambda: world.connect(b, 4000, ("192.0.2.1", 4000), 6.0, lambda ok, h, s: None, "t")
    )  # type: ignore[arg-type]
    world.run(10.0)
    assert got and got[0][1] and got[0][0] < 1.0  # b's SYN crossed a's open filter
    # one side alone never gets through
    world2, c, _ = _two_hosts(0.02, 0.02)
    alone: list[bool] = []
    world2.connect(c, 4000, ("192.0.2.2", 4000), 6.0, lambda ok, h, s: alone.append(ok), "t")  # type: ignore[arg-type]
    world2.run(10.0)
    assert alone == [False] and world2.syns == 3  # first SYN + retransmissions at 1 s, 3 s


def test_dial_back_from_the_listen_port_would_be_a_false_positive() -> None:
    """Why reachability servers dial from a fresh port: the NAT admits the server's
    listen endpoint (our own outbound link goes there), but not another port."""
    world, a, _ = _two_hosts(0.02, 0.02)
    server = world.add_host("s", "198.51.100.1", 0.02, 0.02)
    world.connect(a, 4000, ("198.51.100.1", 4000), 5.0, lambda ok, h, s: None, "t")  # type: ignore[arg-type]
    world.run(1.0)
    out: dict[str, bool] = {}
    world.connect(
        server, 4000, ("192.0.2.1", 4000), 7.0, lambda ok, h, s: out.update(listen=ok), "t"
    )
    world.connect(
        server, 50000, ("192.0.2.1", 4000), 7.0, lambda ok, h, s: out.update(fresh=ok), "t"
    )
    world.run(10.0)
    assert out == {"listen": True, "fresh": False}


# -- end to end --------------------------------------------------------------------------


def _expected_reach(side: str) -> str:
    return "public" if side == "public" else "private"


@pytest.mark.parametrize(("a", "b"), PUNCHABLE, ids=lambda s: str(s))
def test_punchable_cells_end_direct(a: str, b: str) -> None:
    times = []
    for seed in SEEDS:
        out = run_scenario(seed, Scenario(a, b))  # type: ignore[arg-type]
        assert out.path_a.kind == "direct" and out.path_b.kind == "direct", (seed, out.trace)
        assert (out.reach_a, out.reach_b) == (_expected_reach(a), _expected_reach(b)), seed
        assert out.time_to_direct is not None
        times.append(out.time_to_direct)
    assert max(times) < 20.0


@pytest.mark.parametrize(("a", "b"), UNPUNCHABLE, ids=lambda s: str(s))
def test_unpunchable_cells_stay_relayed(a: str, b: str) -> None:
    for seed in SEEDS:
        out = run_scenario(seed, Scenario(a, b))  # type: ignore[arg-type]
        assert out.path_a.kind == "relayed" and out.path_b.kind == "relayed", seed
        assert out.path_a.relay == out.path_b.relay
        assert (out.reach_a, out.reach_b) == ("private", "private")
        assert out.punch_attempts == 3  # every attempt was made, then fallback
        assert out.relay_bytes > 0
        symmetric = [out.mapping_a] if a == "symmetric" else []
        symmetric += [out.mapping_b] if b == "symmetric" else []
        assert set(symmetric) == {"endpoint_dependent"}


def test_lost_sync_is_retried_and_still_ends_direct() -> None:
    for seed in SEEDS:
        out = run_scenario(seed, Scenario("eim", "port_restricted", drop_first_sync=True))
        assert out.path_a.kind == "direct", seed
        assert out.punch_attempts == 2


def test_runs_are_deterministic() -> None:
    one = run_scenario(3, Scenario("eim", "eim"))
    two = run_scenario(3, Scenario("eim", "eim"))
    assert one.trace == two.trace and one.time_to_direct == two.time_to_direct


def test_moving_behind_a_nat_triggers_a_recheck() -> None:
    world, a, b, _ = build(5, "public", "eim")
    for node in (a, b):
        world.at(0.0, node.start)
    world.run(30.0)
    assert a.reach.status == "public" and a.relay.public_addr == a.host.public
    rounds = a.reach.rounds
    world.move(a.host, "10.9.0.2", world.add_nat("eim", "192.0.2.77"))
    world.run(90.0)
    assert a.reach.rounds > rounds
    assert a.observed.confirmed == (("192.0.2.77", 4000),)
    assert [s for _, s in a.status_log] == ["public", "private"]
    assert world.directory[a.key].relays  # it took a reservation and advertised it
