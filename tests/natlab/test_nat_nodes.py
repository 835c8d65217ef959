"""End to end: four ``dagrider node`` daemons, two of them behind real kernel NATs.

Every cell builds its own lab: members 0 and 3 are public hosts, members 1 and 2 sit on
the hosts the cell names (public, or alone behind a NAT of the given kind). Each member's
committee address is its *own* listen address, so a private member's address
(``10.I.0.2``) is unreachable from everywhere else: members 1 and 2 can only meet
through NAT traversal. Member 0 is the rendezvous and relay of everybody (``[nat]
relays``, ``offer_relay``). A cell checks

* the path between members 1 and 2, as the transport (``peers[id]["path"]``) and the NAT
  service (``nat.peers``) of member 1 report it: ``direct`` where TCP hole punching works,
  ``relayed:<relay>`` where it cannot (a symmetric NAT on either side);
* that traffic flows: transactions submitted to member 1 and to member 2 end up in all
  four committed logs, which are identical, and the 1-2 link carries frames both ways.

The time from daemon start until the 1-2 path is direct (or relayed) is recorded per
cell and printed as a matrix at the end of the module.

Times are reported, never judged: every wait polls state under a hang limit far beyond
a normal run (the daemons share two cores with the rest of the suite). That a relayed
cell stays relayed is checked once the NAT services' punch between 1 and 2 has run its
course and failed (``nat.punches.failed``), not after some seconds of watching.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from natlab.lab import Host, Lab

from dagrider.keygen import generate, key_file_name, write_committee_dir
from dagrider.node.batch import BATCH_CONTENT_TYPE, encode_batch

pytestmark = pytest.mark.natlab

PEER_PORT = 9000
API_PORT = 8001
PATH_TIMEOUT = 180.0
"""Hang limit from daemon start until the 1-2 path is settled (10-20 s when idle)."""
LOG_TIMEOUT = 180.0
"""Hang limit for submitted transactions to reach all four logs (1-2 s when idle)."""
PUNCH_TIMEOUT = 180.0
"""Hang limit for a punch through a symmetric NAT to fail (its three attempts take
about 25 s), from the moment the path is relayed."""
READY_TIMEOUT = 120.0
"""Hang limit from daemon start until every member's API answers."""
API_TIMEOUT = 30.0
"""Per API request: a hang limit, the daemons answer in milliseconds when idle."""


@dataclass(frozen=True)
class Cell:
    label: str
    a: str  # member 1: "public" or a NAT kind
    b: str  # member 2
    direct: bool  # hole punching can work: the 1-2 link must become direct


CELLS = [
    Cell("public + public", "public", "public", True),
    Cell("eim + public", "eim", "public", True),
    Cell("eim + eim", "eim", "eim", True),
    Cell("port-restricted + port-restricted", "port-restricted", "port-restricted", True),
    Cell("eim + port-restricted", "eim", "port-restricted", True),
    Cell("symmetric + eim", "symmetric", "eim", False),
    Cell("symmetric + symmetric", "symmetric", "symmetric", False),
]

RESULTS: dict[str, str] = {}  # cell label -> one line of the printed matrix


@pytest.fixture(scope="module", autouse=True)
def _print_matrix(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the matrix once the module's cells ran, bypassing output capture so it
    shows without ``-s``. Under xdist every worker adds its rows to one file of the test
    run and prints all rows gathered so far: the last worker to finish prints them all."""
    yield
    if not RESULTS:
        return
    rows = {label: line for label, line in RESULTS.items()}
    worker = getattr(request.config, "workerinput", None)
    if worker is not None:
        shared = Path(tempfile.gettempdir()) / f"natlab-nodes-{worker['testrunuid']}.json"
        with open(shared.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if shared.exists():
                rows = {**json.loads(shared.read_text()), **rows}
            shared.write_text(json.dumps(rows))
            if len(rows) == len(CELLS):  # the whole matrix is in: this is the last worker
                shared.unlink()
                shared.with_suffix(".lock").unlink()
    order = [c.label for c in CELLS]
    lines = ["", f"NAT traversal between committee members 1 and 2 ({len(rows)} of {len(CELLS)}"
             " cells; times from daemon start):"]  # fmt: skip
    lines += [f"  {label:34} {rows[label]}" for label in order if label in rows]
    text = "\n".join(lines)
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        if worker is None and reporter is not None:
            reporter.write_line(text)
        else:  # an xdist worker's stderr is the controller's terminal
            print(text, file=sys.__stderr__, flush=True)


# -- the API, from inside a member's namespace ------------------------------------------

# A tiny client run inside the namespace: one JSON request per stdin line, one JSON
# reply per stdout line, talking to the node's API on that namespace's own loopback.
_PROXY = r"""
import base64, json, sys, urllib.error, urllib.request
base = sys.argv[1]
for line in sys.stdin:
    req = json.loads(line)
    body = None if req.get("body") is None else base64.b64decode(req["body"])
    r = urllib.request.Request(base + req["path"], data=body,
                               method="POST" if body is not None else "GET")
    if req.get("type"):
        r.add_header("Content-Type", req["type"])
    try:
        with urllib.request.urlopen(r, timeout=req.get("timeout", 10)) as resp:
            out = {"status": resp.status, "body": resp.read().decode()}
    except urllib.error.HTTPError as exc:
        out = {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except Exception as exc:
        out = {"error": repr(exc)}
    print(json.dumps(out), flush=True)
"""


class ApiProxy:
    """A long-lived ``_PROXY`` process in one namespace (cheaper than a process per call)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.proc = host.popen(
            [sys.executable, "-c", _PROXY, f"http://127.0.0.1:{API_PORT}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lock = threading.Lock()

    def call(
        self,
        path: str,
        body: bytes | None = None,
        ctype: str | None = None,
        timeout: float = API_TIMEOUT,
    ) -> dict[str, Any]:
        req = {"path": path, "timeout": timeout, "type": ctype}
        if body is not None:
            req["body"] = base64.b64encode(body).decode()
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"API proxy in {self.host.netns} died: {err}")
        reply: dict[str, Any] = json.loads(line)
        return reply


_PROXIES: dict[str, ApiProxy] = {}  # netns -> proxy (lab prefixes are unique)


def _proxy(host: Host) -> ApiProxy:
    proxy = _PROXIES.get(host.netns)
    if proxy is None or proxy.proc.poll() is not None:
        proxy = _PROXIES[host.netns] = ApiProxy(host)
    return proxy


def api_get(host: Host, path: str, timeout: float = API_TIMEOUT) -> dict[str, Any]:
    """GET ``path`` from the node API listening on 127.0.0.1 inside ``host``'s namespace."""
    reply = _proxy(host).call(path, timeout=timeout)
    if reply.get("status") != 200:
        raise AssertionError(f"GET {path} on {host.name}: {reply}")
    doc: dict[str, Any] = json.loads(reply["body"])
    return doc


def api_post_batch(host: Host, txs: list[bytes]) -> dict[str, Any]:
    """Submit ``txs`` in one batch to the node in ``host``'s namespace."""
    reply = _proxy(host).call(
        "/v1/transactions/batch", encode_batch(txs), BATCH_CONTENT_TYPE, timeout=API_TIMEOUT
    )
    if reply.get("status") not in (200, 202):
        raise AssertionError(f"batch to {host.name}: {reply}")
    doc: dict[str, Any] = json.loads(reply["body"])
    return doc


def api_ready(host: Host) -> bool:
    reply = _proxy(host).call("/healthz", timeout=10)
    return reply.get("status") == 200


def full_log(host: Host) -> list[bytes]:
    out: list[bytes] = []
    after = -1
    while True:
        doc = api_get(host, f"/v1/log?after={after}&limit=10000")
        page = doc["entries"] if isinstance(doc, dict) else doc
        if not page:
            return out
        out += [base64.b64decode(e["data"]) for e in page]
        after = int(page[-1]["index"])


# -- a committee of daemons in a lab ----------------------------------------------------


@dataclass
class Member:
    index: int
    host: Host
    key: bytes
    config: Path
    log_path: Path
    proc: subprocess.Popen[str] | None = None
    log: IO[str] | None = None


class Committee:
    """Four daemons in ``lab`` on ``hosts`` (member i on hosts[i]), member 0 the relay."""

    def __init__(self, lab: Lab, hosts: list[Host], directory: Path) -> None:
        self.lab = lab
        self.dir = directory
        addresses = [f"{h.address}:{PEER_PORT}" for h in hosts]
        committee, secrets = generate(len(hosts), addresses=addresses)
        keys_dir = directory / "committee"
        write_committee_dir(keys_dir, committee, secrets, "TEST KEYS for the NAT lab")
        keys = [m.identity_key for m in committee.members]
        relay = f"{keys[0].hex()}@{hosts[0].public_address}:{PEER_PORT}"
        self.members: list[Member] = []
        for i, host in enumerate(hosts):
            config = directory / f"node-{i}.toml"
            config.write_text(
                "\n".join(
                    [
                        "[node]",
                        f'key_file = "{(keys_dir / key_file_name(i)).resolve()}"',
                        f'committee_file = "{(keys_dir / "committee.json").resolve()}"',
                        f'data_dir = "{(directory / "data" / f"node-{i}").resolve()}"',
                        f'listen = "{host.address}:{PEER_PORT}"',
                        "",
                        "[api]",
                        f'listen = "127.0.0.1:{API_PORT}"',
                        "",
                        "[consensus]",
                        "batch_delay_ms = 20",
                        "",
                        "[log]",
                        'format = "json"',
                        "",
                        "[crdt]",
                        "enabled = false",  # not under test: fewer frames, less CPU
                        "",
                        "[nat]",
                        "enabled = true",
                        f'relays = ["{relay}"]',
                        f"offer_relay = {'true' if i == 0 else 'false'}",
                        "reserve = true",
                        "dial_timeout_ms = 2000",
                        "",
                    ]
                )
            )
            log_path = directory / "logs" / f"node-{i}.log"
            self.members.append(Member(i, host, keys[i], config, log_path))
        self.started = 0.0

    def start(self) -> None:
        for m in self.members:
            # lo is brought up by Lab._namespace for every namespace it creates.
            m.log_path.parent.mkdir(parents=True, exist_ok=True)
            m.log = open(m.log_path, "w")  # noqa: SIM115 - closed in close()
            m.proc = m.host.popen(
                [sys.executable, "-m", "dagrider", "node", "--config", str(m.config)],
                stdout=m.log,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for m in self.members:
            while not api_ready(m.host):
                assert m.proc is not None
                if m.proc.poll() is not None:
                    raise AssertionError(f"member {m.index} exited ({m.proc.returncode})")
                if time.monotonic() > deadline:
                    raise AssertionError(f"member {m.index} API not up after {timeout} s")
                time.sleep(0.1)

    def close(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(5)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
            if m.log is not None:
                m.log.close()
        for m in self.members:
            _PROXIES.pop(m.host.netns, None)

    def diagnostics(self, tail: int = 25) -> str:
        """Each member's NAT status, link paths and the tail of its log."""
        parts = []
        for m in self.members:
            parts.append(f"==== member {m.index} on {m.host.name} ({m.host.address})")
            try:
                st = api_get(m.host, "/v1/status", timeout=3)
                links = {
                    self.index_of(k): (p.get("state"), p.get("path"), p.get("last_error"))
                    for k, p in st.get("peers", {}).items()
                }
                parts.append(f"round {st.get('round')} log_head {st.get('log_head')}")
                parts.append(f"links: {links}")
                parts.append("nat: " + json.dumps(st.get("nat"), indent=1, sort_keys=True))
            except Exception as exc:  # diagnostics must not mask the failure
                parts.append(f"status unavailable: {exc!r}")
            try:
                lines = m.log_path.read_text(errors="replace").splitlines()
                parts.append("log tail:")
                parts += [f"  {line[:400]}" for line in lines[-tail:]]
            except OSError as exc:
                parts.append(f"no log: {exc!r}")
        return "\n".join(parts)

    def index_of(self, key_hex: str) -> str:
        for m in self.members:
            if m.key.hex() == key_hex:
                return str(m.index)
        return key_hex[:16]


def member_host(lab: Lab, name: str, kind: str) -> Host:
    """A public host, or a host alone behind a fresh NAT router of kind ``kind``."""
    if kind == "public":
        return lab.public_host(name)
    return lab.private_network(f"{name}nat", nat=kind).host(name)


def link_path(status: dict[str, Any], peer: bytes) -> tuple[str | None, str | None]:
    """(transport path, NAT-service path) of the link to ``peer`` in a /v1/status."""
    link = status.get("peers", {}).get(peer.hex(), {})
    nat_peer = status.get("nat", {}).get("peers", {}).get(peer.hex()[:16], {})
    return link.get("path"), nat_peer.get("path")


def _txs(tag: str, count: int) -> list[bytes]:
    return [f"{tag}-{k}-".encode().ljust(48, b".") for k in range(count)]


@pytest.mark.parametrize("cell", CELLS, ids=[c.label.replace(" ", "") for c in CELLS])
def test_committee_through_nats(natlab: Lab, cell: Cell, tmp_path: Path) -> None:
    hosts = [
        natlab.public_host("m0"),
        member_host(natlab, "m1", cell.a),
        member_host(natlab, "m2", cell.b),
        natlab.public_host("m3"),
    ]
    committee = Committee(natlab, hosts, tmp_path)
    m1, m2 = committee.members[1], committee.members[2]
    RESULTS[cell.label] = "FAILED before the path settled"
    try:
        committee.start()
        committee.wait_ready()
        # 1. The 1-2 path: direct where punching works, relayed where it cannot.
        want = "direct" if cell.direct else "relayed"
        settled: float | None = None
        seen: list[tuple[float, str | None, str | None]] = []
        deadline = committee.started + PATH_TIMEOUT
        while time.monotonic() < deadline:
            now = time.monotonic() - committee.started
            transport_path, nat_path = link_path(api_get(m1.host, "/v1/status"), m2.key)
            if not seen or seen[-1][1:] != (transport_path, nat_path):
                seen.append((round(now, 2), transport_path, nat_path))
            if (transport_path or "").split(":")[0] == want and nat_path == want:
                settled = now
                break
            time.sleep(0.2)
        history = " -> ".join(f"{t:.1f}s {(tp or '-')[:24]}/{np}" for t, tp, np in seen)
        if settled is None:
            RESULTS[cell.label] = f"FAILED: never {want} in {PATH_TIMEOUT:.0f} s ({history})"
            raise AssertionError(RESULTS[cell.label] + "\n" + committee.diagnostics())
        punch_note = ""
        if not cell.direct:
            # It cannot turn direct: a punch through a symmetric NAT fails. Wait for the
            # punch to have failed (its attempts are over; the next round comes after
            # ``upgrade_retry``, minutes away), then the path must still be relayed.
            punch_deadline = time.monotonic() + PUNCH_TIMEOUT
            while True:
                st1, st2 = api_get(m1.host, "/v1/status"), api_get(m2.host, "/v1/status")
                failed = st1["nat"]["punches"]["failed"] + st2["nat"]["punches"]["failed"]
                if failed >= 1:
                    punch_note = f"; punch failed at {time.monotonic() - committee.started:.1f} s"
                    break
                if time.monotonic() > punch_deadline:
                    RESULTS[cell.label] = (
                        f"FAILED: relayed at {settled:.1f} s, no punch failed in "
                        f"{PUNCH_TIMEOUT:.0f} s ({history})"
                    )
                    raise AssertionError(RESULTS[cell.label] + "\n" + committee.diagnostics())
                time.sleep(0.5)
            after_punch = (link_path(st1, m2.key), link_path(st2, m1.key))
            if any((t or "").split(":")[0] != "relayed" or n != "relayed" for t, n in after_punch):
                RESULTS[cell.label] = f"FAILED: not relayed after the punch failed: {after_punch}"
                raise AssertionError(RESULTS[cell.label] + "\n" + committee.diagnostics())
        # 2. Traffic flows: transactions from 1 and 2 ordered identically by all four.
        sent = set(_txs("via-m1", 50)) | set(_txs("via-m2", 50))
        assert api_post_batch(m1.host, _txs("via-m1", 50))["accepted"] == 50
        assert api_post_batch(m2.host, _txs("via-m2", 50))["accepted"] == 50
        t_submit = time.monotonic()
        logs: dict[int, list[bytes]] = {}
        while True:
            logs = {m.index: full_log(m.host) for m in committee.members}
            if all(sent <= set(log) for log in logs.values()):
                break
            if time.monotonic() - t_submit > LOG_TIMEOUT:
                missing = {i: len(sent - set(log)) for i, log in logs.items()}
                RESULTS[cell.label] = f"FAILED: {want} at {settled:.1f} s, txs missing {missing}"
                raise AssertionError(RESULTS[cell.label] + "\n" + committee.diagnostics())
            time.sleep(0.3)
        ordered = time.monotonic() - t_submit
        longest = max(logs.values(), key=len)
        for i, log in logs.items():
            assert log == longest[: len(log)], f"member {i}'s log diverges"
            assert len(set(log)) == len(log), f"member {i} has a duplicate transaction"
        # The 1-2 link itself carried the consensus traffic, both ways, on the right path.
        st1 = api_get(m1.host, "/v1/status")
        st2 = api_get(m2.host, "/v1/status")
        l12, l21 = st1["peers"][m2.key.hex()], st2["peers"][m1.key.hex()]
        final = (link_path(st1, m2.key), link_path(st2, m1.key))
        relay_hex = committee.members[0].key.hex()
        problems = []
        if cell.direct:
            if final != (("direct", "direct"), ("direct", "direct")):
                problems.append(f"paths are not direct at the end: {final}")
        elif l12["path"] != f"relayed:{relay_hex}" or l21["path"] != f"relayed:{relay_hex}":
            problems.append(f"not relayed through member 0 at the end: {final}")
        for name, link in (("1->2", l12), ("2->1", l21)):
            if link["state"] != "connected" or link["frames_in"] == 0 or link["frames_out"] == 0:
                problems.append(f"link {name} carries no traffic: {link}")
        metrics = _proxy(m1.host).call("/metrics")
        flag = f'dagrider_nat_peer_relayed{{peer="2"}} {0 if cell.direct else 1}'
        if metrics.get("status") != 200 or flag not in metrics["body"]:
            problems.append(f"/metrics of member 1 lacks {flag!r}")
        pair = st1["nat"]["peers"].get(m2.key.hex()[:16], {})
        RESULTS[cell.label] = (
            f"{'ok' if not problems else 'FAILED'}  {want:8} after {settled:5.1f} s; "
            f"ordered in {ordered:4.1f} s; 1-2 punch dials {pair.get('upgrade_attempts')}, "
            f"last failure {pair.get('last_failure')!r}{punch_note}; path history: {history}"
        )
        assert not problems, "\n".join(problems) + "\n" + committee.diagnostics()
    finally:
        committee.close()
