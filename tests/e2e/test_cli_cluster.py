"""``dagrider cluster up`` tells the truth about its daemons.

The case an operator hit: the peer ports are taken and something else (an older cluster)
answers on the API ports. Every daemon fails to bind and exits, but /healthz answers;
the command must not say "cluster is up" and exit 0: it exits 3 with each node's reason.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dagrider.node.cluster import free_port_block

pytestmark = pytest.mark.e2e


class _Healthy(BaseHTTPRequestHandler):
    """Somebody else's node: answers /healthz."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def taken_ports() -> Iterator[tuple[int, int]]:
    """(peer base, API base) of a 4-node layout, all held by another process's sockets."""
    peer_base, api_base = free_port_block(4), free_port_block(4)
    held: list[socket.socket] = []
    servers: list[ThreadingHTTPServer] = []
    for i in range(4):
        s = socket.socket()
        s.bind(("127.0.0.1", peer_base + i))
        s.listen()
        held.append(s)
        server = ThreadingHTTPServer(("127.0.0.1", api_base + i), _Healthy)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield peer_base, api_base
    finally:
        for s in held:
            s.close()
        for server in servers:
            server.shutdown()
            server.server_close()


def _cluster_up(tmp_path: Path, peer_base: int, api_base: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dagrider",
        "cluster",
        "up",
        "--dir",
        str(tmp_path / "cluster"),
        "--base-port",
        str(peer_base),
        "--api-port",
        str(api_base),
        "--ready-timeout",
        "60",
    ]


def test_cluster_up_fails_loudly_when_its_nodes_cannot_bind(
    tmp_path: Path, taken_ports: tuple[int, int]
) -> None:
    proc = subprocess.run(
        _cluster_up(tmp_path, *taken_ports), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "cluster is up" not in proc.stdout
    assert "address already in use" in proc.stderr, proc.stderr
    assert "node 0 failed to start" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cluster_up_runs_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _cluster_up(tmp_path, free_port_block(4), free_port_block(4)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "cluster is up" in line:
                break
        assert any("cluster is up" in line for line in lines), lines
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
        assert "cluster stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
