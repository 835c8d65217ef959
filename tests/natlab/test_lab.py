"""The lab's NATs behave as documented: raw sockets through real kernel NATs.

These tests are the specification that the node's NAT traversal (issue 5) relies on:
which mappings each NAT kind makes, what it lets in, and in which pairings a TCP
simultaneous open gets through. Every probe runs ``probe.py`` inside a namespace.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import TypeVar

import pytest
from natlab.lab import (
    NAT_KINDS,
    DropCounter,
    Host,
    JsonLinesProcess,
    Lab,
    Network,
    lab_namespaces,
)

pytestmark = pytest.mark.natlab

K = TypeVar("K")

PROBE = str(Path(__file__).with_name("probe.py"))
RENDEZVOUS_PORT = 7000
NODE_PORT = 9000  # every peer listens on (and dials from) the same port, like real nodes
DROP_TIMEOUT = 1.5
"""How long a connect() that the NAT drops is left to wait: only the end of the look
(an RST or ICMP would arrive within one RTT, 60 ms). That it was dropped is read from
the router's counters (:func:`dropped`), not inferred from the timeout."""
PUNCH_TIMEOUT = 4.0
"""How long a punch that must fail is given (the SYN retransmissions at 1 s and 3 s);
again its failure is read from the routers' counters as well."""
HANG_S = 30.0
"""Bound on waiting for what must happen (a connection that gets through, a counter
that must move): a hang limit, so generous that load never decides a verdict."""


def Probe(host: Host, *args: str) -> JsonLinesProcess:
    """A ``probe.py`` process in a namespace."""
    return JsonLinesProcess(host, PROBE, *args)


def echo_server(host: Host, port: int) -> Probe:
    probe = Probe(host, "echo-server", "--port", str(port))
    assert probe.read() == {"ready": True}
    return probe


def connect(host: Host, target: str, timeout: float = HANG_S) -> Probe:
    return Probe(host, "connect", "--to", target, "--timeout", str(timeout))


def dropped(counters: dict[K, DropCounter]) -> dict[K, bool]:
    """Whether each router dropped at least one SYN its counter watches, waiting up to
    ``HANG_S`` in all: a SYN can sit in the switch's queue after its sender gave up."""
    deadline = time.monotonic() + HANG_S
    seen = dict.fromkeys(counters, False)
    while True:
        for key, counter in counters.items():
            seen[key] = seen[key] or counter.count() > 0
        if all(seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def observe(host: Host, port: int, *servers: Host) -> list[str]:
    """Addresses the servers saw for connections from ``host:port`` (kept open)."""
    args = [arg for s in servers for arg in ("--server", f"{s.address}:{RENDEZVOUS_PORT}")]
    probe = Probe(host, "observe", "--port", str(port), "--hold", *args)
    observed: list[str] = probe.read()["observed"]
    return observed


def test_reachability_and_filtering(natlab: Lab) -> None:
    """Out works; in is silently dropped, even to a live mapping, unless routed inside.

    A cell that must get through (or be refused by the far end) waits up to ``HANG_S``; a
    cell the NAT must drop reports "timeout dropped": its connect() got no answer in
    ``DROP_TIMEOUT`` *and* the router's firewall counted its SYN in the chain that drops
    it (INPUT for the router's own address, FORWARD for a routed inside address). So a
    SYN that got through late on a busy machine still fails the cell."""
    s1, s2 = natlab.public_host("s1"), natlab.public_host("s2")
    echo_server(s1, RENDEZVOUS_PORT)
    nets = {kind: natlab.private_network(f"n{i}", nat=kind) for i, kind in enumerate(NAT_KINDS)}
    expected: dict[tuple[str, str], str] = {}
    for kind in NAT_KINDS:
        expected |= {
            (kind, "out to public"): "connected",
            (kind, "out to closed port"): "refused",
            (kind, "in to mapped port"): "timeout dropped",
            (kind, "in to mapped port from s1"): "timeout dropped",
            (kind, "in to router port 22"): "timeout dropped",
            # eim is a NAT without a firewall: whoever can route to the inside gets in.
            (kind, "routed to inside address"): (
                "connected" if kind == "eim" else "timeout dropped"
            ),
        }
    probes: dict[tuple[str, str], Probe] = {}
    counters: dict[tuple[str, str], DropCounter] = {}
    for kind, net in nets.items():
        host = net.host(f"h{net.index}")
        echo_server(host, 8000)
        observe(host, 8000, s1)  # a live mapping from the listening port towards s1
        wan = net.router.public_address
        s2.run(["ip", "route", "add", f"10.{net.index}.0.0/24", "via", wan])
        cells = {
            "out to public": (host, f"{s1.address}:{RENDEZVOUS_PORT}", None),
            "out to closed port": (host, f"{s1.address}:9", None),
            "in to mapped port": (s2, f"{wan}:8000", "INPUT"),
            "in to mapped port from s1": (s1, f"{wan}:8000", "INPUT"),
            "in to router port 22": (s2, f"{wan}:22", "INPUT"),
            "routed to inside address": (s2, f"{host.address}:8000", "FORWARD"),
        }
        for label, (source, target, chain) in cells.items():
            cell = (kind, label)
            dropping = expected[cell] == "timeout dropped"
            if dropping:
                assert chain is not None
                port = int(target.rpartition(":")[2])
                counters[cell] = net.count_drops(chain, source.address, port)
            probes[cell] = connect(source, target, DROP_TIMEOUT if dropping else HANG_S)
    outcomes = {cell: probe.read()["outcome"] for cell, probe in probes.items()}
    for cell, was_dropped in dropped(counters).items():
        outcomes[cell] += " dropped" if was_dropped else " not dropped"
    assert outcomes == expected


def test_mapping_per_nat_kind(natlab: Lab) -> None:
    """One local port, two destinations: same external port except behind symmetric."""
    s1, s2 = natlab.public_host("s1"), natlab.public_host("s2")
    for server in (s1, s2):
        echo_server(server, RENDEZVOUS_PORT)
    for i, kind in enumerate(NAT_KINDS):
        net = natlab.private_network(f"n{i}", nat=kind)
        seen = observe(net.host(f"h{i}"), 40000, s1, s2)
        wan = net.router.public_address
        assert [a.split(":")[0] for a in seen] == [wan, wan], kind
        if kind == "symmetric":
            assert seen[0] != seen[1], f"{kind}: {seen}"
        else:  # endpoint-independent, and the source port is preserved
            assert seen == [f"{wan}:40000", f"{wan}:40000"], f"{kind}: {seen}"


def test_port_clash_gives_a_new_sticky_mapping(natlab: Lab) -> None:
    """MASQUERADE keeps the port only while (WAN ip, port, destination) is free.

    Linux picks the external endpoint per connection: first it reuses an existing mapping
    of the same inside ip:port (conntrack's ``find_appropriate_src``) if that gives an
    unused tuple, else it keeps the inside port if unused, else it takes a random port.
    Two hosts behind one eim router both on port 40000: the second host's connection to
    s1 clashes with the first host's and gets a random port; its connection to s2 reuses
    that mapping (it is endpoint-independent) although 40000 would have been free there.
    """
    s1, s2 = natlab.public_host("s1"), natlab.public_host("s2")
    for server in (s1, s2):
        echo_server(server, RENDEZVOUS_PORT)
    net = natlab.private_network("home", nat="eim")
    first, second = net.host("a1"), net.host("a2")
    wan = net.router.public_address
    assert observe(first, 40000, s1) == [f"{wan}:40000"]
    to_s1, to_s2 = observe(second, 40000, s1, s2)
    assert to_s1 != f"{wan}:40000"
    assert to_s2 == to_s1


RTT_CODE = """
import socket, sys, time
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30).close()
    best = min(best, time.perf_counter() - start)
print(best)
"""


@pytest.mark.parametrize("delay_ms", [0, 15])
def test_link_delay(natlab_available: None, delay_ms: float) -> None:
    """A private-public round trip crosses two internet links twice: 4 * delay_ms.

    Checked in two parts, neither of which a loaded machine can upset: the delays the lab
    configured, read back from where they are applied (``netem`` qdiscs or the switch),
    add up to 4 * delay_ms per round trip; and a measured TCP round trip is at least
    that long, so the delay is really applied to packets. (A measured *upper* bound would
    only time the machine: a busy scheduler delays the userspace switch at will.)"""
    with Lab(delay_ms=delay_ms) as lab:
        server = lab.public_host("pub")
        echo_server(server, RENDEZVOUS_PORT)
        host = lab.private_network("home", nat="eim").host("alice")
        configured = lab.path_delay_ms(host, server) + lab.path_delay_ms(server, host)
        rtt = float(host.exec_python(RTT_CODE, server.address, str(RENDEZVOUS_PORT)).stdout)
    assert configured == pytest.approx(4 * delay_ms), f"{lab.backend}: {configured} ms per RTT"
    expected = 4 * delay_ms / 1000
    assert rtt >= expected, f"{lab.backend}: rtt {rtt * 1000:.1f} ms < {expected * 1000} ms"


# A cell: (label, side A, side B, seconds side B starts late). A side is a NAT kind or
# "public" (a host with a public address, no NAT).
CELLS = [
    ("eim + eim", "eim", "eim", 0.0),
    ("port-restricted + port-restricted", "port-restricted", "port-restricted", 0.0),
    ("eim + port-restricted", "eim", "port-restricted", 0.0),
    ("eim + eim, B 0.5 s late", "eim", "eim", 0.5),
    ("public + eim", "public", "eim", 0.0),
    ("public + symmetric", "public", "symmetric", 0.0),
    ("symmetric + eim", "symmetric", "eim", 0.0),
    ("symmetric + symmetric", "symmetric", "symmetric", 0.0),
]
# Why the failures fail: a symmetric NAT gives the connection to the peer a fresh random
# port, not the one the rendezvous saw. The peer therefore dials a port with no mapping
# (its SYN is dropped), and the SYN that does arrive from the symmetric side comes from
# an unknown port, which the peer's own NAT drops too: Linux conntrack only admits
# replies from the exact address *and port* a mapping was made towards (no NAT here is
# endpoint-independent *filtering*). Plain TCP cannot guess the port; UDP tricks (port
# prediction, birthday attacks) are out of scope. The public peer works with symmetric
# because the private side dials it directly and the public side *accepts* it.
EXPECTED = {label: not (a == "symmetric" or b == "symmetric") or a == "public"
            for label, a, b, _ in CELLS}  # fmt: skip


def test_simultaneous_open_matrix(natlab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """Both peers connect() to each other's mapped address at the same moment.

    A cell that must connect gets up to ``HANG_S`` (on a busy machine one side may start
    late; its NAT's SYN_SENT entry waits 120 s). A cell that must fail gets
    ``PUNCH_TIMEOUT`` and must also show why it failed: each side's router dropped a SYN
    from the other. In a punch that works the later side's SYN always finds the earlier
    side's mapping open, so drops both ways are the mark of the port mismatch, not of a
    side that dialled too late."""
    rv = natlab.public_host("rv")
    echo_server(rv, RENDEZVOUS_PORT)
    peers: list[tuple[Probe, Probe]] = []
    routers: list[tuple[Network | None, Network | None]] = []
    for i, (label, kind_a, kind_b, _) in enumerate(CELLS):
        pair, nets = [], []
        for side, kind in (("a", kind_a), ("b", kind_b)):
            name = f"c{i}{side}"
            net = None if kind == "public" else natlab.private_network(name, nat=kind)
            host = natlab.public_host(name) if net is None else net.host(f"{name}h")
            timeout = HANG_S if EXPECTED[label] else PUNCH_TIMEOUT
            pair.append(
                Probe(host, "punch", "--port", str(NODE_PORT),
                      "--rendezvous", f"{rv.address}:{RENDEZVOUS_PORT}",
                      "--timeout", str(timeout))
            )  # fmt: skip
            nets.append(net)
        peers.append((pair[0], pair[1]))
        routers.append((nets[0], nets[1]))
    counters: dict[str, tuple[DropCounter, DropCounter]] = {}
    for (label, *_), (net_a, net_b) in zip(CELLS, routers, strict=True):
        if not EXPECTED[label]:
            assert net_a is not None and net_b is not None, f"{label}: a failure needs two NATs"
            counters[label] = (
                net_a.count_drops("INPUT", net_b.router.public_address),
                net_b.count_drops("INPUT", net_a.router.public_address),
            )
    observed = [(a.read()["observed"], b.read()["observed"]) for a, b in peers]
    start = time.time() + 0.5
    for (a, b), (seen_a, seen_b), (_, _, _, late) in zip(peers, observed, CELLS, strict=True):
        a.send(peer=seen_b, start=start)
        b.send(peer=seen_a, start=start + late)
    results = [(a.read(), b.read()) for a, b in peers]
    drops = dropped(
        {(label, side): c for label, (at_a, at_b) in counters.items() for side, c in
         (("A", at_a), ("B", at_b))}
    )  # fmt: skip
    rows, outcomes, expected = [], {}, {}
    for (ra, rb), (seen_a, seen_b), (label, *_) in zip(results, observed, CELLS, strict=True):
        ok = (
            ra["ok"]
            and rb["ok"]
            and ra["received"] == f"hello from {seen_b}"
            and rb["received"] == f"hello from {seen_a}"
        )
        expected[label] = "connected" if EXPECTED[label] else "FAILED, SYNs dropped both ways"
        outcomes[label] = "connected" if ok else "FAILED"
        if not ok and label in counters:
            at_a, at_b = drops[label, "A"], drops[label, "B"]
            outcomes[label] += (
                ", SYNs dropped both ways"
                if at_a and at_b
                else f", dropped at A: {at_a}, dropped at B: {at_b}"
            )
        how = ", ".join(
            f"{side} {r['seconds'] * 1000:5.0f} ms {r.get('via', r.get('error'))}"
            + (f" (dial {r['dial']})" if r.get("dial") else "")
            for side, r in (("A", ra), ("B", rb))
        )
        rows.append(f"  {label:36} {'connected' if ok else 'FAILED':9}  {how}")
    matrix = "\n".join(["simultaneous open (time from each side's start):", *rows])
    with capsys.disabled():
        print("\n" + matrix)
    assert outcomes == expected, matrix


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_teardown_after_exception(natlab_available: None, error: type[BaseException]) -> None:
    """Namespaces, links and processes are gone after an exception inside ``with Lab()``."""
    with pytest.raises(error), Lab() as lab:
        lab.public_host("pub")
        host = lab.private_network("home", nat="symmetric").host("alice")
        sleeper = host.popen(["sleep", "600"])
        assert len(lab_namespaces(lab.prefix)) == 4
        raise error("boom")
    assert lab_namespaces(lab.prefix) == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert lab.prefix not in links
    assert sleeper.poll() is not None
    lab.close()  # idempotent
