"""End to end: a mesh peer behind a real NAT takes part in the DHT and the content layer.

The DHT is only useful if every routing-table entry can be dialled. A node behind a NAT
cannot be, so with ``[dht] mode = "auto"`` it must act as a DHT *client* once NAT
traversal finds it unreachable: it still looks up and fetches, but it never becomes
anyone's contact. These tests run real ``dagrider node`` daemons (``role = "peer"``, no
committee) in a NAT lab to check that on kernel NATs, not in a simulator:

* three public peers: ``p0`` offers relay service, and each public peer is a
  reachability server of the others (``[nat] relays``); their ``[dht] mode`` is fixed
  to server (see ``PUBLIC_MODE``);
* ``np`` sits alone behind a NAT (symmetric and endpoint-independent, one lab each) with
  ``[nat] enabled``, a reservation at ``p0``, ``[dht] mode = "auto"`` and the public peers
  as bootstrap peers. It lists two reachability servers (``p0`` and ``p1``): a verdict
  needs two agreeing dial-back answers, so with one server it stays "unknown" for ever.

Checked: ``np`` classifies itself private, its DHT switches to client mode and it keeps
the public peers as contacts; a blob put on a public peer is fetched by ``np``, and a
blob put on ``np`` is fetched by a public peer, bytes verified both ways.

``np``'s provider record never names its private listen address: once it is private
it names its relay's public address (``p2p.nat.advertise``), which takes a TCP
connection from any public host (``test_nat_peer_provider_record_is_dialable``; a strict
xfail until issue 14). (``np`` is a DHT server for its first seconds,
while its reachability is unknown; when it turns client it tells its contacts, which
drop it from their tables.) ``/v1/status`` shows bucket
sizes, not table members: the keys are chosen so that ``np`` has a bucket of its own in
every public peer's table (:func:`keys_with_own_bucket`).

One mesh is started per NAT kind (a module-scoped fixture) and shared by the tests of
that kind; each test puts its own blobs, so they do not depend on each other's order.

Times are reported, never judged: every wait polls state under a hang limit far beyond
a normal run, and a dial that must open is given ``HANG_S`` (the lab's internet is a
userspace switch that a loaded machine schedules late).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
from natlab.lab import Host, Lab, available

from dagrider.node.peer_key import PeerKey
from p2p.dht.keyspace import bucket_index
from p2p.dht.peer import node_id
from p2p.nat.advertise import is_private

pytestmark = pytest.mark.natlab

T = TypeVar("T")

PEER_PORT = 9000
API_PORT = 8001
CHUNK_KIB = 64
BLOB_BYTES = 5 * CHUNK_KIB * 1024 + 1234  # six chunks, the last one short
HANG_S = 120.0
"""Hang limit of a wait for something that must happen (seconds when idle)."""
READY_TIMEOUT = HANG_S  # daemon start until its API answers
CLIENT_TIMEOUT = HANG_S  # daemon start until reachability is private and the DHT a client
FETCH_TIMEOUT = HANG_S
API_TIMEOUT = 30.0
"""Per API request (and the daemon's own lookups behind it): a hang limit."""
NAT_KINDS = ("symmetric", "eim")
PUBLIC = ("p0", "p1", "p2")
PUBLIC_MODE = "server"
"""``[dht] mode`` of the public peers. Not "auto": in the lab a public peer with NAT
traversal on sometimes classifies itself private (its NAT service and its DHT dial the
same peer at once, the transport keeps the second link, which left from an ephemeral
port, so observers report that port and the dial-back to it fails) and would turn DHT
client; that is a product bug of its own, not what this module is about."""

OBSERVED: dict[str, list[str]] = {}  # NAT kind -> lines printed at the end of the module


# -- the API, from inside a peer's namespace --------------------------------------------

# One JSON request per stdin line, one JSON reply per stdout line, against the node API
# on the namespace's own loopback (the host cannot reach it otherwise).
_PROXY = r"""
import base64, json, sys, urllib.error, urllib.request
base = sys.argv[1]
for line in sys.stdin:
    req = json.loads(line)
    body = None if req.get("body") is None else base64.b64decode(req["body"])
    r = urllib.request.Request(base + req["path"], data=body, method=req["method"])
    if req.get("type"):
        r.add_header("Content-Type", req["type"])
    try:
        with urllib.request.urlopen(r, timeout=req["timeout"]) as resp:
            out = {"status": resp.status, "body": base64.b64encode(resp.read()).decode()}
    except urllib.error.HTTPError as exc:
        out = {"status": exc.code, "body": base64.b64encode(exc.read()).decode()}
    except Exception as exc:
        out = {"error": repr(exc)}
    print(json.dumps(out), flush=True)
"""

# Whether TCP connections to argv[2:] ("host:port") open from this namespace, dialled
# at once, each given argv[1] seconds; prints {address: "open" | "failed: ..."} as JSON
# once one opened or all failed ("pending" for those still dialling then).
_DIAL = r"""
import json, socket, sys, threading
timeout, addrs = float(sys.argv[1]), sys.argv[2:]
out = {a: "pending" for a in addrs}
done = threading.Condition()
def dial(addr):
    host, _, port = addr.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        result = "open"
    except OSError as exc:
        result = f"failed: {exc!r}"
    with done:
        out[addr] = result
        done.notify()
for a in addrs:
    threading.Thread(target=dial, args=(a,), daemon=True).start()
with done:
    done.wait_for(lambda: "open" in out.values() or "pending" not in out.values())
    print(json.dumps(out))
"""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    """A long-lived ``_PROXY`` process in one namespace."""

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
        self, method: str, path: str, body: bytes | None = None, timeout: float = API_TIMEOUT
    ) -> Reply:
        req: dict[str, Any] = {"method": method, "path": path, "timeout": timeout}
        if body is not None:
            req["body"] = base64.b64encode(body).decode()
            req["type"] = "application/octet-stream"
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"API proxy in {self.host.netns} died: {err}")
        out = json.loads(line)
        if "error" in out:
            return Reply(0, out["error"].encode())
        return Reply(int(out["status"]), base64.b64decode(out["body"]))

    def get_json(self, path: str, timeout: float = API_TIMEOUT) -> Any:
        reply = self.call("GET", path, timeout=timeout)
        if reply.status != 200:
            raise AssertionError(f"GET {path} on {self.host.name}: {reply}")
        return reply.json()


# -- a mesh of peer daemons in a lab ----------------------------------------------------


def keys_with_own_bucket(n: int, tries: int = 10_000) -> list[PeerKey]:
    """``n`` peer keys where, in the routing table of each of the first ``n - 1``, the
    last key falls into a k-bucket that none of the others shares.

    ``/v1/status`` shows a table's bucket sizes, not its members; with these keys the
    size of that one bucket says whether the table holds the last peer. (Keys where every
    peer has its own bucket in every table cannot exist: buckets split a binary trie.)
    """
    for _ in range(tries):
        keys = [PeerKey.generate() for _ in range(n)]
        ids = [node_id(k.identity().public_key) for k in keys]
        *others, last = ids
        if all(
            bucket_index(x, last) not in {bucket_index(x, y) for y in others if y != x}
            for x in others
        ):
            return keys
    raise AssertionError(f"no {n} keys with a bucket of their own in {tries} tries")


def holds(status: dict[str, Any], me: bytes, other: bytes) -> bool:
    """Whether the routing table in ``status`` (of ``me``) has an entry in ``other``'s
    bucket: with :func:`keys_with_own_bucket` keys, whether it holds ``other``."""
    index = bucket_index(node_id(me), node_id(other))
    return int(status["dht"]["buckets"].get(str(index), 0)) > 0


@dataclass
class Peer:
    name: str
    host: Host
    key: bytes
    config: Path
    log_path: Path
    api: Api
    proc: subprocess.Popen[str] | None = None
    log: IO[str] | None = None
    started: float = 0.0

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.api.get_json("/v1/status")
        return doc


@dataclass
class Mesh:
    """Public peers ``p0..p2`` (``p0`` the relay) and ``np`` behind a NAT of kind ``nat``."""

    lab: Lab
    nat: str
    dir: Path
    peers: dict[str, Peer] = field(default_factory=dict)
    client_at: float | None = None  # seconds from np's start until it was a DHT client
    private_at: float | None = None  # ... until its reachability was private

    def __post_init__(self) -> None:
        hosts = {name: self.lab.public_host(name) for name in PUBLIC}
        hosts["np"] = self.lab.private_network("home", nat=self.nat).host("np")
        keys: dict[str, bytes] = {}
        for (name, host), key in zip(hosts.items(), keys_with_own_bucket(len(hosts)), strict=True):
            key_path = self.dir / "keys" / f"{name}.key"
            key_path.parent.mkdir(parents=True, exist_ok=True)
            key.dump(key_path, "TEST KEY for the NAT lab")
            keys[name] = key.identity().public_key
            self.peers[name] = Peer(
                name,
                host,
                keys[name],
                self.dir / f"{name}.toml",
                self.dir / "logs" / f"{name}.log",
                Api(host),
            )

        def entry(name: str) -> str:
            return f'"{keys[name].hex()}@{hosts[name].public_address}:{PEER_PORT}"'

        for name, peer in self.peers.items():
            others = [n for n in PUBLIC if n != name]
            # np's reachability servers: p0 (also its relay) and p1; public peers use the
            # two other public peers, so that they, too, can reach a verdict.
            servers = ["p0", "p1"] if name == "np" else others
            lines = [
                "[node]",
                'role = "peer"',
                f'key_file = "{(self.dir / "keys" / f"{name}.key").resolve()}"',
                f'data_dir = "{(self.dir / "data" / name).resolve()}"',
                f'listen = "{peer.host.address}:{PEER_PORT}"',
                "",
                "[api]",
                f'listen = "127.0.0.1:{API_PORT}"',
                "",
                "[log]",
                'format = "json"',
                "",
                "[dht]",
                # np decides by itself (the subject of this module). The public peers
                # are told: their own "auto" verdict is unreliable (see PUBLIC_MODE).
                f'mode = "{"auto" if name == "np" else PUBLIC_MODE}"',
                f"bootstrap = [{', '.join(entry(n) for n in others)}]",
                "",
                "[content]",
                f"chunk_size_kib = {CHUNK_KIB}",
                "",
                "[nat]",
                "enabled = true",
                f"relays = [{', '.join(entry(n) for n in servers)}]",
                f"offer_relay = {'true' if name == 'p0' else 'false'}",
                f"reserve = {'true' if name == 'np' else 'false'}",
                "dial_timeout_ms = 2000",
                "",
            ]
            peer.config.write_text("\n".join(lines))

    # -- processes ----------------------------------------------------------------------

    def start(self, name: str) -> None:
        peer = self.peers[name]
        peer.log_path.parent.mkdir(parents=True, exist_ok=True)
        peer.log = open(peer.log_path, "w")  # noqa: SIM115 - closed in close()
        peer.proc = peer.host.popen(
            [sys.executable, "-m", "dagrider", "node", "--config", str(peer.config)],
            stdout=peer.log,
            stderr=subprocess.STDOUT,
        )
        peer.started = time.monotonic()

    def wait_ready(self, name: str) -> None:
        peer = self.peers[name]

        def ready() -> bool:
            assert peer.proc is not None
            if peer.proc.poll() is not None:
                raise AssertionError(
                    f"{name} exited ({peer.proc.returncode}):\n{self.log_tail(name)}"
                )
            return peer.api.call("GET", "/healthz", timeout=10).status == 200

        self.wait(ready, READY_TIMEOUT, f"{name}'s API to answer")

    def start_all(self) -> None:
        """p0 first, then p1 and p2 (their bootstrap peer p0 is up), then np: a DHT
        bootstrap that finds nobody is only retried at the next maintenance tick."""
        self.start("p0")
        self.wait_ready("p0")
        for name in ("p1", "p2"):
            self.start(name)
        for name in ("p1", "p2"):
            self.wait_ready(name)
        self.start("np")
        self.wait_ready("np")

    def close(self) -> None:
        for peer in self.peers.values():
            if peer.proc is not None and peer.proc.poll() is None:
                peer.proc.terminate()
        for peer in self.peers.values():
            if peer.proc is not None:
                try:
                    peer.proc.wait(5)
                except subprocess.TimeoutExpired:
                    peer.proc.kill()
            if peer.log is not None:
                peer.log.close()

    # -- waiting and diagnostics --------------------------------------------------------

    def wait(self, check: Callable[[], T | bool | None], timeout: float, what: str) -> T:
        """Poll ``check`` every 0.2 s until it returns something truthy; fail with the
        mesh's diagnostics after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:.0f} s for {what}\n{self.diagnostics()}")
            time.sleep(0.2)

    def wait_client(self) -> None:
        """Until np says it is private and a DHT client (once per mesh)."""
        if self.client_at is not None:
            return
        np = self.peers["np"]
        deadline = np.started + CLIENT_TIMEOUT

        def client() -> bool:
            st = np.status()
            now = time.monotonic() - np.started
            if self.private_at is None and st["nat"]["reachability"] == "private":
                self.private_at = now
            if self.client_at is None and st["dht"]["mode"] == "client":
                self.client_at = now
            return self.private_at is not None and self.client_at is not None

        self.wait(
            client, max(0.0, deadline - time.monotonic()), "np to be private and a DHT client"
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.peers[name].log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"  no log: {exc!r}"
        return "\n".join(f"  {line[:300]}" for line in text[-lines:])

    def diagnostics(self) -> str:
        parts = []
        for name, peer in self.peers.items():
            parts.append(f"==== {name} {peer.key.hex()[:16]} on {peer.host.address}")
            try:
                st = peer.status()
                dht = {k: st["dht"].get(k) for k in ("mode", "routing_table", "providing")}
                parts.append(f"dht: {dht} stats {st['dht'].get('stats')}")
                nat = st.get("nat", {})
                parts.append(
                    f"nat: reachability {nat.get('reachability')} mapping {nat.get('mapping')}"
                    f" reservations {nat.get('reservations')} peers {nat.get('peers')}"
                )
                links = {self.name_of(k): v.get("path") for k, v in st.get("peers", {}).items()}
                parts.append(f"links: {links}")
            except Exception as exc:  # diagnostics must not mask the failure
                parts.append(f"status unavailable: {exc!r}")
            parts.append(self.log_tail(name, 15))
        return "\n".join(parts)

    def name_of(self, key_hex: str) -> str:
        for name, peer in self.peers.items():
            if peer.key.hex().startswith(key_hex):
                return name
        return key_hex[:16]

    def note(self, line: str) -> None:
        OBSERVED.setdefault(self.nat, []).append(line)

    # -- content ------------------------------------------------------------------------

    def put(self, name: str, blob: bytes) -> str:
        reply = self.peers[name].api.call("PUT", "/v1/content", blob, timeout=60)
        assert reply.status == 201, f"PUT on {name}: {reply}"
        doc = reply.json()
        assert doc["size"] == len(blob) and doc["chunk_size"] == CHUNK_KIB * 1024, doc
        cid: str = doc["cid"]
        return cid

    def fetch(self, name: str, cid: str) -> float:
        """``POST .../fetch`` on ``name`` and wait until it holds ``cid``; the seconds it
        took (a failed fetch fails at once; the caller checks the bytes)."""
        api = self.peers[name].api
        t0 = time.monotonic()
        reply = api.call("POST", f"/v1/content/{cid}/fetch", b"")
        assert reply.status == 202, f"fetch on {name}: {reply}"
        seen: list[Any] = []

        def held() -> bool:
            st = api.get_json(f"/v1/content/{cid}/status")
            if not seen or seen[-1] != st.get("state"):
                seen.append(st.get("state"))
            assert st["state"] != "failed", f"fetch of {cid[:16]} on {name} failed: {st}"
            return bool(st["state"] == "held")

        self.wait(held, FETCH_TIMEOUT, f"{name} to hold {cid[:16]} (states {seen})")
        return time.monotonic() - t0

    def read(self, name: str, cid: str) -> bytes:
        reply = self.peers[name].api.call("GET", f"/v1/content/{cid}?local=1")
        assert reply.status == 200, f"GET {cid[:16]} on {name}: {reply}"
        return reply.body


@pytest.fixture(scope="module", params=NAT_KINDS)
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mesh]:
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    nat: str = request.param
    with Lab() as lab:
        m = Mesh(lab, nat, tmp_path_factory.mktemp(f"mesh-{nat}"))
        try:
            m.start_all()
            yield m
        finally:
            m.close()


@pytest.fixture(scope="module", autouse=True)
def _print_observed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print what the module saw (times, status values), bypassing output capture."""
    yield
    if not OBSERVED:
        return
    lines = ["", "NAT'd mesh peer np (times from np's start):"]
    for nat, notes in OBSERVED.items():
        lines += [f"  {nat}: {note}" for note in notes]
    text = "\n".join(lines)
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(text, file=sys.__stderr__, flush=True)


# -- tests ------------------------------------------------------------------------------


def test_nat_peer_becomes_dht_client(mesh: Mesh) -> None:
    """np finds itself private through its reachability servers and turns DHT client;
    its links to the public peers are its own outbound ones, it holds a reservation at
    the relay, and it still knows every public peer as a DHT contact."""
    mesh.wait_client()
    np = mesh.peers["np"]
    st = np.status()
    nat = st["nat"]
    assert nat["reachability"] == "private", nat
    assert nat["reachable_addrs"] == [], nat
    assert st["dht"]["mode"] == "client", st["dht"]

    def linked_to_all() -> dict[str, Any] | None:
        """np's status once it holds every public peer as a contact (the servers, all
        of them) over a direct link of its own; links come up in their own time."""
        st = np.status()
        links = [st["peers"].get(mesh.peers[name].key.hex()) or {} for name in PUBLIC]
        if st["dht"]["routing_table"] == len(PUBLIC) and all(
            link.get("state") == "connected" and link.get("path") == "direct" for link in links
        ):
            return st
        return None

    st = mesh.wait(linked_to_all, HANG_S, "np to hold every public peer over a direct link")
    assert st["dht"]["mode"] == "client" and st["nat"]["reachability"] == "private", st
    p0 = mesh.peers["p0"].key.hex()[:16]
    mesh.wait(lambda: p0 in np.status()["nat"]["reservations"], HANG_S, "np's reservation at p0")
    publics = {}
    for name in PUBLIC:
        pst = mesh.peers[name].status()
        assert pst["dht"]["mode"] == "server", f"{name}: {pst['dht']}"
        publics[name] = (pst["nat"]["reachability"], pst["nat"]["mapping"])
    mesh.note(
        f"reachability private after {mesh.private_at:.1f} s, dht.mode client after "
        f"{mesh.client_at:.1f} s; np's mapping {nat['mapping']!r}; public peers' "
        f"(reachability, mapping): {publics}"
    )


def test_public_routing_tables_exclude_nat_peer(mesh: Mesh) -> None:
    """No public peer's routing table holds np once it is a DHT client.

    np was a server while its reachability was unknown (its first seconds), so the public
    peers may have added it; on the switch to client it pings every contact without a
    sender, and a request without a sender removes its peer from the receiver's table.
    """
    mesh.wait_client()
    np = mesh.peers["np"]

    def tables() -> dict[str, tuple[bool, int]]:
        held = {}
        for name in PUBLIC:
            st = mesh.peers[name].status()
            held[name] = (holds(st, mesh.peers[name].key, np.key), st["dht"]["routing_table"])
        return held

    mesh.wait(lambda: not any(h for h, _ in tables().values()), HANG_S, "public tables to drop np")
    mesh.note(f"public routing tables after np turned client: (holds np, size) {tables()}")


def test_nat_peer_fetches_blob_from_public_peer(mesh: Mesh) -> None:
    """A blob put on p2 is found through the DHT and fetched by np, bytes intact."""
    mesh.wait_client()
    blob = os.urandom(BLOB_BYTES)
    cid = mesh.put("p2", blob)
    took = mesh.fetch("np", cid)
    assert mesh.read("np", cid) == blob
    st = mesh.peers["np"].status()
    assert st["dht"]["mode"] == "client", st["dht"]  # it fetched as a client
    assert st["content"]["bytes_fetched"] >= len(blob), st["content"]
    mesh.note(f"np fetched {len(blob)} bytes from p2 in {took:.2f} s")


def test_public_peer_fetches_blob_from_nat_peer(mesh: Mesh) -> None:
    """A blob put on np (a DHT client) is announced and fetched by a public peer.

    np's announcement reaches the public peers; the fetch works over the link np itself
    opened to p1 (np queried every public peer while announcing). See
    ``test_nat_peer_provider_record_is_dialable`` for a peer without such a link.
    """
    mesh.wait_client()
    blob = os.urandom(BLOB_BYTES)
    cid = mesh.put("np", blob)
    np, p1 = mesh.peers["np"], mesh.peers["p1"]

    def announced() -> list[str] | None:
        found = p1.api.get_json(f"/v1/content/{cid}/providers", timeout=2 * API_TIMEOUT)
        mine = [p["addrs"] for p in found["providers"] if p["key"] == np.key.hex()]
        return mine[0] if mine else None

    addrs = mesh.wait(announced, HANG_S, f"p1 to find np as provider of {cid[:16]}")
    assert np.status()["dht"]["mode"] == "client"  # announced as a client
    link = p1.status()["peers"].get(np.key.hex(), {})
    assert link.get("state") == "connected" and link.get("direction") == "inbound", link
    took = mesh.fetch("p1", cid)
    assert mesh.read("p1", cid) == blob
    mesh.note(
        f"p1 fetched {len(blob)} bytes from np in {took:.2f} s over np's inbound link; "
        f"np's provider record gives addresses {addrs}"
    )


def test_nat_peer_provider_record_is_dialable(mesh: Mesh) -> None:
    """Some address in np's provider record takes a TCP connection from a public host."""
    mesh.wait_client()
    cid = mesh.put("np", os.urandom(CHUNK_KIB * 1024))
    np = mesh.peers["np"]

    def record() -> list[str] | None:
        found = mesh.peers["p0"].api.get_json(
            f"/v1/content/{cid}/providers", timeout=2 * API_TIMEOUT
        )
        mine = [p["addrs"] for p in found["providers"] if p["key"] == np.key.hex()]
        return mine[0] if mine else None

    addrs = mesh.wait(record, HANG_S, f"p0 to find np as provider of {cid[:16]}")
    private = [a for a in addrs if is_private(a.rpartition(":")[0])]
    assert not private, f"np's provider record names private addresses {private}"
    # All at once, each given HANG_S: an address that opens does so in one round trip,
    # one that never opens is left "pending" once another opened.
    run = mesh.peers["p2"].host.exec_python(_DIAL, str(HANG_S), *addrs, timeout=2 * HANG_S)
    outcomes: dict[str, str] = json.loads(run.stdout)
    mesh.note(f"dialling np's provider record addresses from p2: {outcomes}")
    assert any(v == "open" for v in outcomes.values()), outcomes
