"""The node's punch dialer through real kernel NATs: TCP simultaneous open, then TLS.

Each cell is two ``punch_peer.py`` processes (``punch_dial`` plus the ``ExpectTable``
accept path) behind their own NATs, started together like ``test_lab``'s raw probes. The
table printed is the time from each side's start to an authenticated TLS link.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from natlab.lab import Host, JsonLinesProcess, Lab

pytestmark = pytest.mark.natlab

HERE = Path(__file__).parent
READ_TIMEOUT = 15.0
PEER = str(HERE / "punch_peer.py")
PROBE = str(HERE / "probe.py")
RENDEZVOUS_PORT = 7000
NODE_PORT = 9000
TIMEOUT = 5.0  # PunchConfig.dial_timeout
HANG_LIMIT = 2.0  # how late a dial may report its deadline before we call it hung


@dataclass(frozen=True)
class Cell:
    label: str
    a: str  # a NAT kind or "public"
    b: str
    late_b: float = 0.0  # seconds B starts after A
    late_a: float = 0.0
    reject: str = ""  # the routers of these sides ("a", "b") answer stray SYNs with a RST
    reissue: float | None = None  # re-issue connects on a timer instead (not our strategy)
    works: bool = True


CELLS = [
    Cell("eim + eim", "eim", "eim"),
    Cell("port-restricted + port-restricted", "port-restricted", "port-restricted"),
    Cell("symmetric + symmetric", "symmetric", "symmetric", works=False),
    Cell("port-restricted x2, B 0.5 s late", "port-restricted", "port-restricted", 0.5),
    Cell("port-restricted x2, B 2 s late", "port-restricted", "port-restricted", 2.0),
    Cell("RST-sending NAT at B, B 0.5 s late", "port-restricted", "port-restricted", 0.5,
         reject="b"),
    Cell("RST-sending NATs x2, B 0.5 s late", "port-restricted", "port-restricted", 0.5,
         reject="ab"),
    Cell("public + port-restricted, A 0.5 s late", "public", "port-restricted", late_a=0.5),
    Cell("port-restricted x2, B 0.5 s late, reissue", "port-restricted", "port-restricted",
         0.5, reissue=0.25),
]  # fmt: skip


def reject_unsolicited_syns(router: Host) -> None:
    """Make a router answer SYNs that match no mapping with a RST, as many home NATs do."""
    lines = router.run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines()
    wan = next(line.split()[1] for line in lines if f" {router.public_address}/" in line)
    router.run(["iptables", "-I", "INPUT", "2", "-i", wan, "-p", "tcp", "--syn",
                "-j", "REJECT", "--reject-with", "tcp-reset"])  # fmt: skip


def side(lab: Lab, name: str, kind: str, reject: bool) -> Host:
    if kind == "public":
        return lab.public_host(name)
    network = lab.private_network(name, nat=kind)
    if reject:
        reject_unsolicited_syns(network.router)
    return network.host(f"{name}h")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_punch_dial_matrix(natlab: Lab, loop: str, capsys: pytest.CaptureFixture[str]) -> None:
    rv = natlab.public_host("rv")
    echo = JsonLinesProcess(
        rv, PROBE, "echo-server", "--port", str(RENDEZVOUS_PORT), read_timeout=READ_TIMEOUT
    )
    assert echo.read() == {"ready": True}
    pairs: list[tuple[JsonLinesProcess, JsonLinesProcess]] = []
    for i, cell in enumerate(CELLS):
        procs = []
        for j, (letter, kind) in enumerate((("a", cell.a), ("b", cell.b))):
            host = side(natlab, f"c{i}{letter}", kind, letter in cell.reject)
            procs.append(
                JsonLinesProcess(host, PEER, "--me", str(1 + j), "--peer", str(2 - j),
                     "--port", str(NODE_PORT), "--loop", loop,
                     "--rendezvous", f"{rv.address}:{RENDEZVOUS_PORT}",
                     read_timeout=READ_TIMEOUT)
            )  # fmt: skip
        pairs.append((procs[0], procs[1]))
    observed = [(a.read()["observed"], b.read()["observed"]) for a, b in pairs]
    start = time.time() + 1.0
    for (a, b), (seen_a, seen_b), cell in zip(pairs, observed, CELLS, strict=True):
        common = {"timeout": TIMEOUT, "reissue": cell.reissue}
        a.send(peer=seen_b, start=start + cell.late_a, **common)
        b.send(peer=seen_a, start=start + cell.late_b, **common)
    rows, failures = [], []
    for (a, b), (seen_a, seen_b), cell in zip(pairs, observed, CELLS, strict=True):
        ra, rb = a.read(), b.read()
        linked = (
            ra["ok"]
            and rb["ok"]
            and ra["received"] == f"hello from {seen_b}"
            and rb["received"] == f"hello from {seen_a}"
            and ra["role"] == ra["expected_role"] != rb["role"] == rb["expected_role"]
            and ra["pinned"]
            and rb["pinned"]
        )
        how = ", ".join(
            f"{name} {(r.get('dial_seconds') or r['seconds']) * 1000:5.0f} ms "
            + (r.get("via") or r.get("error", "")[:40])
            + (f" (dial {r['dial']})" if r.get("dial") else "")
            for name, r in (("A", ra), ("B", rb))
        )
        rows.append(f"  {cell.label:42} {'linked' if linked else 'FAILED':7} {how}")
        if linked != cell.works:
            failures.append(cell.label)
        if not cell.works:  # both dials give up at the deadline, cleanly
            for r in (ra, rb):
                # not before the deadline; the upper bound is a hang limit (a loaded
                # machine runs the timeout's callback late), not a speed requirement
                late = r.get("dial_seconds", 0) - TIMEOUT
                if r["ok"] or r["dial"] != "timeout" or not 0 <= late < HANG_LIMIT:
                    failures.append(f"{cell.label}: {r}")
    table = "\n".join([f"punch_dial + TLS on {loop} (time from each side's start):", *rows])
    with capsys.disabled():
        print("\n" + table)
    assert not failures, table
