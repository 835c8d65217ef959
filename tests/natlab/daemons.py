"""Real ``dagrider node`` peer daemons in lab namespaces, for the UPnP and relay tests.

A smaller sibling of the harness in ``test_mesh_nat.py``: each peer gets a key, a
config written from a few keyword arguments, a log file and an API proxy
(:class:`natlab.test_mesh_nat.Api`) in its namespace. ``Daemons.wait`` polls a check
until it holds (or fails with every peer's status and log tail).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from natlab.lab import Host
from natlab.test_mesh_nat import API_PORT, API_TIMEOUT, CHUNK_KIB, HANG_S, PEER_PORT, Api

from dagrider.node.peer_key import PeerKey

T = TypeVar("T")

READY_TIMEOUT = HANG_S
"""Hang limit from a daemon's start until its API answers (a second or two when idle)."""


@dataclass
class Daemon:
    name: str
    host: Host
    key: bytes
    config: Path
    log_path: Path
    api: Api
    proc: subprocess.Popen[str] | None = None
    log: IO[str] | None = None

    @property
    def addr(self) -> str:
        """Where others dial it: the host's public address (its router's for a NAT'd one)."""
        return f"{self.host.public_address}:{PEER_PORT}"

    def entry(self) -> str:
        return f'"{self.key.hex()}@{self.addr}"'

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.api.get_json("/v1/status")
        return doc


@dataclass
class Daemons:
    dir: Path
    peers: dict[str, Daemon] = field(default_factory=dict)

    def add(self, name: str, host: Host) -> Daemon:
        key = PeerKey.generate()
        key_path = self.dir / "keys" / f"{name}.key"
        key_path.parent.mkdir(parents=True, exist_ok=True)
        key.dump(key_path, "TEST KEY for the NAT lab")
        d = Daemon(
            name,
            host,
            key.identity().public_key,
            self.dir / f"{name}.toml",
            self.dir / "logs" / f"{name}.log",
            Api(host),
        )
        self.peers[name] = d
        return d

    def configure(
        self,
        name: str,
        *,
        bootstrap: Iterable[str],
        servers: Iterable[str],
        dht_mode: str = "auto",
        offer_relay: bool = False,
        reserve: bool = False,
        upnp: bool = False,
    ) -> None:
        """Write ``name``'s config: peer role, ``[dht]`` bootstrap peers, ``[nat]`` relays
        (its reachability servers and relays) ``servers``."""
        d = self.peers[name]
        boot = ", ".join(self.peers[n].entry() for n in bootstrap)
        relays = ", ".join(self.peers[n].entry() for n in servers)
        lines = [
            "[node]",
            'role = "peer"',
            f'key_file = "{(self.dir / "keys" / f"{name}.key").resolve()}"',
            f'data_dir = "{(self.dir / "data" / name).resolve()}"',
            f'listen = "{d.host.address}:{PEER_PORT}"',
            "",
            "[api]",
            f'listen = "127.0.0.1:{API_PORT}"',
            "",
            "[log]",
            'format = "json"',
            "",
            "[dht]",
            f'mode = "{dht_mode}"',
            f"bootstrap = [{boot}]",
            "",
            "[content]",
            f"chunk_size_kib = {CHUNK_KIB}",
            "",
            "[nat]",
            "enabled = true",
            f"relays = [{relays}]",
            f"offer_relay = {str(offer_relay).lower()}",
            f"reserve = {str(reserve).lower()}",
            f"upnp = {str(upnp).lower()}",
            "dial_timeout_ms = 2000",
            "",
        ]
        d.config.write_text("\n".join(lines))

    def start(self, *names: str) -> None:
        """Start ``names`` and wait until each one's API answers."""
        for name in names:
            d = self.peers[name]
            d.log_path.parent.mkdir(parents=True, exist_ok=True)
            d.log = open(d.log_path, "w")  # noqa: SIM115 - closed in close()
            d.proc = d.host.popen(
                [sys.executable, "-m", "dagrider", "node", "--config", str(d.config)],
                stdout=d.log,
                stderr=subprocess.STDOUT,
            )
        for name in names:
            d = self.peers[name]

            def ready(d: Daemon = d) -> bool:
                assert d.proc is not None
                if d.proc.poll() is not None:
                    raise AssertionError(f"{d.name} exited:\n{self.log_tail(d.name)}")
                return d.api.call("GET", "/healthz", timeout=10).status == 200

            self.wait(ready, READY_TIMEOUT, f"{name}'s API")

    def stop(self, name: str) -> None:
        d = self.peers[name]
        if d.proc is not None and d.proc.poll() is None:
            d.proc.terminate()
            try:
                d.proc.wait(10)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait(5)

    def close(self) -> None:
        for name in self.peers:
            self.stop(name)
        for d in self.peers.values():
            if d.log is not None:
                d.log.close()

    def wait(self, check: Callable[[], T | bool | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:.0f} s for {what}\n{self.diagnostics()}")
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = self.peers[name].log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"  no log: {exc!r}"
        return "\n".join(f"  {line[:300]}" for line in text[-lines:])

    def diagnostics(self) -> str:
        parts = []
        for name, d in self.peers.items():
            parts.append(f"==== {name} {d.key.hex()[:16]} on {d.host.address}")
            try:
                st = d.status()
                parts.append(f"dht: {st['dht'].get('mode')} stats {st['dht'].get('stats')}")
                nat = st.get("nat", {})
                parts.append(f"nat: { {k: v for k, v in nat.items() if k != 'relay_service'} }")
            except Exception as exc:  # diagnostics must not mask the failure
                parts.append(f"status unavailable: {exc!r}")
            parts.append(self.log_tail(name, 15))
        return "\n".join(parts)

    # -- content ------------------------------------------------------------------------

    def put(self, name: str, blob: bytes) -> str:
        reply = self.peers[name].api.call("PUT", "/v1/content", blob, timeout=60)
        assert reply.status == 201, f"PUT on {name}: {reply}"
        cid: str = reply.json()["cid"]
        return cid

    def providers(self, name: str, cid: str, provider: str) -> list[str] | None:
        """The addresses in ``provider``'s record for ``cid`` as ``name`` finds it."""
        found = self.peers[name].api.get_json(
            f"/v1/content/{cid}/providers", timeout=2 * API_TIMEOUT
        )
        key = self.peers[provider].key.hex()
        mine = [p["addrs"] for p in found["providers"] if p["key"] == key]
        return list(mine[0]) if mine else None

    def fetch(self, name: str, cid: str, timeout: float) -> None:
        """Fetch ``cid`` on ``name`` and wait until it is held (a failure fails at once)."""
        api = self.peers[name].api
        reply = api.call("POST", f"/v1/content/{cid}/fetch", b"")
        assert reply.status == 202, f"fetch on {name}: {reply}"

        def held() -> bool:
            st = api.get_json(f"/v1/content/{cid}/status")
            assert st["state"] != "failed", f"fetch of {cid[:16]} on {name} failed: {st}"
            return bool(st["state"] == "held")

        self.wait(held, timeout, f"{name} to hold {cid[:16]}")

    def read(self, name: str, cid: str) -> bytes:
        reply = self.peers[name].api.call("GET", f"/v1/content/{cid}", timeout=60)
        assert reply.status == 200, f"GET on {name}: {reply}"
        return reply.body
