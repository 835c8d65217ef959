"""A local cluster of real daemons on loopback, as child processes.

Used by ``dagrider cluster up``, by the end-to-end tests and by ``bench/cluster.py``:
one place knows how to lay out a committee directory, write node configs, start, kill
(SIGKILL, for crash tests), restart and stop the daemons.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dagrider.committee import Committee
from dagrider.keygen import COMMITTEE_FILE, generate, key_file_name, write_committee_dir

TEST_KEYS_NOTE = "TEST KEYS for a local loopback cluster - never use in production"


READY_LINE = "dagrider node: serving"
"""The daemon prints this to stderr once it serves its API, at any log level."""


@dataclass
class ClusterSpec:
    """Where the cluster lives and how its nodes are configured."""

    directory: Path
    nodes: int = 4
    committee_dir: Path | None = None  # an existing committee (e.g. configs/local-4)
    host: str = "127.0.0.1"
    base_port: int = 7001  # peer port of node i = base_port + i (new committees only)
    api_base_port: int = 8001  # API port of node i = api_base_port + i
    batch_size: int = 1_000
    batch_delay_ms: int = 50
    idle_round_ms: int = 500
    max_pending: int = 20_000
    gc_depth: int = 50
    checkpoint_interval: int = 256
    retain_rounds: int = 2_000
    keep_log_entries: int = 0  # [storage] keep_log_entries (0: every node keeps its whole log)
    log_level: str = "info"
    crdt_sync_interval_ms: int = 2_000
    crdt_checkpoint_interval_ms: int = 10_000
    extra_env: dict[str, str] = field(default_factory=dict)
    peers: int = 0
    """Mesh peers (``role = "peer"``) after the members: index ``nodes + j``, ports follow on.
    With ``nodes = 0`` there is no committee: a pure DHT/content mesh."""
    content_chunk_kib: int = 1024
    dht: bool = True
    """False: members run without the mesh (their transport admits committee keys only)."""
    extra_config: str = ""
    """TOML appended to every node's config (e.g. a ``[content]`` override)."""


class ClusterError(RuntimeError):
    """A cluster that cannot be laid out (a missing committee, bad options)."""


class NodeFailed(ClusterError):
    """A daemon of the cluster exited; ``reason`` is its own error line."""

    def __init__(self, index: int, reason: str, log: Path) -> None:
        super().__init__(f"node {index} failed to start: {reason} (log: {log})")
        self.index = index
        self.reason = reason
        self.log = log


BOOTSTRAP_PEERS = 3
"""How many earlier nodes a peer names as bootstrap peers."""


class LocalCluster:
    """Start/stop/kill/restart the daemons of one committee on this machine."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.dir = spec.directory
        self.committee_dir = spec.committee_dir or (self.dir / "committee")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: dict[int, IO[bytes]] = {}
        self._log_start: dict[int, int] = {}
        """Where each node's log stood when this run of it started (the log is appended to)."""
        self.committee = self._ensure_committee() if spec.nodes or spec.committee_dir else None
        self.members = self.committee.n if self.committee is not None else 0
        self.peer_keys = [self._peer_key(j) for j in range(spec.peers)]
        self.n = self.members + spec.peers
        """Every daemon: members ``0..members-1``, then peers."""
        self.configs = [self._write_config(i) for i in range(self.n)]

    def _peer_key(self, j: int) -> bytes:
        """Create (once) the key file of peer ``j``; its public key."""
        from dagrider.node.peer_key import PeerKey

        path = self.dir / "peers" / f"peer-{j}.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            PeerKey.generate().dump(path, TEST_KEYS_NOTE)
        return PeerKey.load(path).identity().public_key

    def key_of(self, i: int) -> bytes:
        """The transport (Ed25519) public key of daemon ``i``."""
        if i < self.members:
            assert self.committee is not None
            return self.committee.member(i).identity_key
        return self.peer_keys[i - self.members]

    def peer_address(self, i: int) -> str:
        if i < self.members:
            assert self.committee is not None
            address = self.committee.member(i).address
            assert address is not None
            return address
        return f"{self.spec.host}:{self.spec.base_port + i}"

    def _bootstrap(self, i: int) -> list[str]:
        """Members bootstrap each other; a peer names the first nodes other than itself."""
        others = [j for j in range(self.n) if j != i][:BOOTSTRAP_PEERS]
        return [f"{self.key_of(j).hex()}@{self.peer_address(j)}" for j in others]

    def _ensure_committee(self) -> Committee:
        path = self.committee_dir / COMMITTEE_FILE
        if not path.exists():
            if self.spec.committee_dir is not None:
                raise ClusterError(
                    f"no {COMMITTEE_FILE} in {self.spec.committee_dir} "
                    f"(looked for {path.resolve()}); give an existing committee directory, "
                    "e.g. one written by `dagrider keygen --nodes 4 --out DIR --base-port 7001`"
                )
            addresses = [
                f"{self.spec.host}:{self.spec.base_port + i}" for i in range(self.spec.nodes)
            ]
            committee, secrets = generate(self.spec.nodes, addresses=addresses)
            write_committee_dir(self.committee_dir, committee, secrets, TEST_KEYS_NOTE)
        return Committee.load(path)

    def api_url(self, i: int) -> str:
        return f"http://{self.spec.host}:{self.spec.api_base_port + i}"

    def data_dir(self, i: int) -> Path:
        return self.dir / "data" / f"node-{i}"

    def log_path(self, i: int) -> Path:
        return self.dir / "logs" / f"node-{i}.log"

    def _write_config(self, i: int) -> Path:
        s = self.spec
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"node-{i}.toml"
        committee_file = (self.committee_dir / COMMITTEE_FILE).resolve()
        if i < self.members:
            node = [f'key_file = "{(self.committee_dir / key_file_name(i)).resolve()}"']
        else:
            key_file = (self.dir / "peers" / f"peer-{i - self.members}.key").resolve()
            node = [
                'role = "peer"',
                f'key_file = "{key_file}"',
                f'listen = "{self.peer_address(i)}"',
            ]
        if self.committee is not None:
            node.append(f'committee_file = "{committee_file}"')
        bootstrap = ", ".join(f'"{b}"' for b in self._bootstrap(i))
        path.write_text(
            "\n".join(
                [
                    "[node]",
                    *node,
                    f'data_dir = "{self.data_dir(i).resolve()}"',
                    "",
                    "[dht]",
                    f"enabled = {'true' if s.dht else 'false'}",
                    f"bootstrap = [{bootstrap}]",
                    "",
                    "[content]",
                    f"chunk_size_kib = {s.content_chunk_kib}",
                    "",
                    "[api]",
                    f'listen = "{s.host}:{s.api_base_port + i}"',
                    "",
                    "[consensus]",
                    f"batch_size = {s.batch_size}",
                    f"batch_delay_ms = {s.batch_delay_ms}",
                    f"idle_round_ms = {s.idle_round_ms}",
                    f"gc_depth = {s.gc_depth}",
                    f"checkpoint_interval = {s.checkpoint_interval}",
                    "",
                    "[storage]",
                    f"retain_rounds = {s.retain_rounds}",
                    f"keep_log_entries = {s.keep_log_entries}",
                    "",
                    "[mempool]",
                    f"max_pending = {s.max_pending}",
                    "",
                    "[log]",
                    'format = "json"',
                    f'level = "{s.log_level}"',
                    "",
                    "[crdt]",
                    f"sync_interval_ms = {s.crdt_sync_interval_ms}",
                    f"checkpoint_interval_ms = {s.crdt_checkpoint_interval_ms}",
                    "",
                    s.extra_config,
                ]
            )
        )
        return path

    # -- processes ----------------------------------------------------------------------

    def start(self, i: int) -> None:
        if i in self.procs and self.procs[i].poll() is None:
            raise RuntimeError(f"node {i} is already running")
        self.log_path(i).parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(i), "ab")  # noqa: SIM115 - closed in _reap
        self._logs[i] = log
        self._log_start[i] = log.tell()
        env = {**os.environ, **self.spec.extra_env}
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "dagrider", "node", "--config", str(self.configs[i])],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )

    def start_all(self) -> None:
        for i in range(self.n):
            self.start(i)

    def kill(self, i: int) -> None:
        """SIGKILL: a crash, nothing flushed beyond what the node already committed."""
        self._signal(i, signal.SIGKILL)

    def stop(self, i: int, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait: a clean shutdown."""
        self._signal(i, signal.SIGTERM, timeout)
        proc = self.procs.get(i)
        return None if proc is None else proc.returncode

    def _signal(self, i: int, sig: int, timeout: float = 15.0) -> None:
        proc = self.procs.get(i)
        if proc is None or proc.poll() is not None:
            self._reap(i)
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._reap(i)

    def _reap(self, i: int) -> None:
        log = self._logs.pop(i, None)
        if log is not None:
            log.close()

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.stop(i)

    def alive(self, i: int) -> bool:
        proc = self.procs.get(i)
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int | None:
        proc = self.procs.get(i)
        return None if proc is None else proc.pid

    # -- readiness ----------------------------------------------------------------------

    def wait_ready(self, timeout: float = 30.0, nodes: list[int] | None = None) -> None:
        """Wait until every node's API answers /healthz *and* the node said it serves.

        The second check matters: when another cluster already holds these ports, its
        nodes answer /healthz while ours fail to bind and exit. A node counts as ready
        only once its own log (since this start) has the daemon's ``serving`` line.
        Raises :class:`NodeFailed` (with the node's own error line) if a node exits.
        """
        deadline = time.monotonic() + timeout
        for i in nodes if nodes is not None else range(self.n):
            while True:
                if not self.alive(i):
                    raise NodeFailed(i, self.failure_reason(i), self.log_path(i))
                if self._said_serving(i):
                    try:
                        with urllib.request.urlopen(self.api_url(i) + "/healthz", timeout=1) as r:
                            if r.status == 200:
                                break
                    except (urllib.error.URLError, OSError):
                        pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"node {i} not ready after {timeout} s: see {self.log_path(i)}"
                    )
                time.sleep(0.1)

    def _log_since_start(self, i: int) -> str:
        try:
            with open(self.log_path(i), "rb") as f:
                f.seek(self._log_start.get(i, 0))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _said_serving(self, i: int) -> bool:
        for line in self._log_since_start(i).splitlines():
            if line.startswith(READY_LINE):
                return True
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and doc.get("msg") == "serving":
                    return True
        return False

    def failure_reason(self, i: int) -> str:
        """The node's own error line from its log since this start (the daemon prints
        ``dagrider node: error: ...`` before it exits), else its exit status."""
        reason = ""
        lines = self._log_since_start(i).splitlines()
        for line in lines:
            if line.startswith("dagrider node: error:"):
                reason = line.removeprefix("dagrider node: error:").strip()
        if not reason and any(line.startswith("Traceback") for line in lines):
            last = next((line for line in reversed(lines) if line.strip()), "")
            reason = f"crashed: {last.strip()}"
        proc = self.procs.get(i)
        code = None if proc is None else proc.poll()
        if reason:
            return reason
        return f"exited with status {code}" if code is not None else "not running"

    def wait_connected(self, timeout: float = 60.0) -> None:
        """Every node sees all its peers connected and the DAG advancing (benchmarks
        start measuring only then)."""
        deadline = time.monotonic() + timeout
        for i in range(self.n):
            while True:
                st = self.get_json(i, "/v1/status")
                peers = st.get("peers", {})
                if (
                    len(peers) == self.n - 1
                    and all(p.get("state") == "connected" for p in peers.values())
                    and int(st.get("round", 0)) >= 2
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {i} not connected to all peers: {peers}")
                time.sleep(0.2)

    def get_json(self, i: int, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self.api_url(i) + path, timeout=timeout) as r:
            return json.loads(r.read())

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


PORT_REGISTRY = Path(tempfile.gettempdir()) / "dagrider-port-blocks.json"
"""Blocks handed out by :func:`free_port_block` on this machine, shared by processes."""
PORT_HOLD_S = 900.0
"""How long a block handed out stays reserved (less if the process that took it ends)."""


def free_port_block(count: int) -> int:
    """A base port such that base..base+count-1 are free on 127.0.0.1 right now (tests,
    benchmarks: a cluster laid out on consecutive ports).

    The block lies below the kernel's ephemeral range, so that the daemons' own outgoing
    connections cannot take a port before the daemon that should listen on it started.
    It is also recorded in a registry file (:data:`PORT_REGISTRY`, under an exclusive
    lock) and no other live process gets an overlapping block for :data:`PORT_HOLD_S`:
    a probe sees only ports bound now, and a block's daemons bind a second later, so
    parallel test workers (two suites side by side) picked the same ports ("address
    already in use" on a loaded run).
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    with _port_registry() as taken:
        for _ in range(200):
            base = rng.randrange(10_000, max(10_001, low - count))
            if any(b < base + count and base < b + n for b, n, *_ in taken):
                continue
            if _bindable(base, count):
                taken.append([base, count, os.getpid(), time.time()])
                return base
    raise RuntimeError("no free port block")


def _bindable(base: int, count: int) -> bool:
    socks: list[socket.socket] = []
    try:
        for p in range(base, base + count):
            t = socket.socket()
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind(("127.0.0.1", p))
            socks.append(t)
        return True
    except OSError:
        return False
    finally:
        for t in socks:
            t.close()


@contextlib.contextmanager
def _port_registry() -> Iterator[list[list[Any]]]:
    """The live reservations ``[base, count, pid, time]``, locked; written back after.
    An unreadable file counts as empty (it is only a hint between cooperating tests)."""
    fd = os.open(PORT_REGISTRY, os.O_RDWR | os.O_CREAT, 0o666)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            entries = json.loads(f.read() or "[]")
            assert isinstance(entries, list)
        except (ValueError, AssertionError):
            entries = []
        now = time.time()
        taken = [
            e
            for e in entries
            if isinstance(e, list)
            and len(e) == 4
            and all(type(x) is int and x > 0 for x in e[:3])
            and isinstance(e[3], int | float)
            and now - e[3] < PORT_HOLD_S
            and _alive(e[2])
        ]
        yield taken
        f.seek(0)
        f.truncate()
        f.write(json.dumps(taken))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
