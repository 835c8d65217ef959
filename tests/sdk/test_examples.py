"""The programs in examples/ run as documented: alone (their own in-process nodes) and,
for those that join a mesh, against a cluster started by ``dagrider cluster up``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagrider import Peer, RemoteError, Service, join_config, unary
from dagrider.committee import Committee
from dagrider.keygen import COMMITTEE_FILE
from dagrider.node.cluster import free_port_block

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPECTED = {
    "kv_store.py": "replicated: {'colour': 'blue'}",
    "commit_watcher.py": "every member computed {'alice': 65, 'bob': 20, 'carol': 15}",
    "file_share.py": "copy verified",
    "rpc_service.py": "search 'milk': 6 notes",
}


# Runs an example as ``python examples/x.py`` does, plus two things for a failure seen
# once on a loaded machine: warnings of the nodes on stderr (the example asks for
# errors only; configuring logging first makes its basicConfig a no-op), and on SIGUSR1
# every asyncio task's stack, which says where a hung example waits.
_WRAPPER = """
import asyncio, logging, os, runpy, signal, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
def _dump(signum, frame):
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        tasks = set()
    print(f"=== {len(tasks)} asyncio tasks when the test timed out", file=sys.stderr)
    for task in tasks:
        task.print_stack(limit=6, file=sys.stderr)
    sys.stderr.flush()
signal.signal(signal.SIGUSR1, _dump)
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(sys.argv[0])  # as `python examples/x.py` sets it
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(script: str, *args: str, timeout: float = 90) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, str(EXAMPLES / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=EXAMPLES.parent,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        proc.kill()
        out, err = proc.communicate()
        tail = "\n".join(err.splitlines()[-300:])
        pytest.fail(f"{script} did not finish in {timeout:g} s:\n{out}\n{tail}")
    assert proc.returncode == 0, f"{script} failed:\n{out}\n{err}"
    return out


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_alone(script: str, tmp_path: Path) -> None:
    out = _run(script, "--dir", str(tmp_path))
    assert EXPECTED[script] in out


@pytest.fixture
def cluster_up(tmp_path: Path) -> Iterator[Path]:
    """``dagrider cluster up`` as a user runs it, stopped with Ctrl-C (SIGINT) after."""
    directory = tmp_path / "cluster"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagrider",
            "cluster",
            "up",
            "--dir",
            str(directory),
            "--base-port",
            str(free_port_block(4)),
            "--api-port",
            str(free_port_block(4)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        for line in proc.stdout:  # ends if the command exits
            lines.append(line)
            if "cluster is up" in line or time.monotonic() > deadline:
                break
        assert any("cluster is up" in line for line in lines), "".join(lines)
        yield directory
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.e2e
def test_mesh_examples_against_cluster_up(cluster_up: Path, tmp_path: Path) -> None:
    out = _run("file_share.py", "--cluster", str(cluster_up), "--dir", str(tmp_path / "fs"))
    assert EXPECTED["file_share.py"] in out
    out = _run("rpc_service.py", "--cluster", str(cluster_up), "--dir", str(tmp_path / "rpc"))
    assert EXPECTED["rpc_service.py"] in out


class _Echo(Service):
    name = "echo"

    @unary
    async def ping(self) -> str:
        return "pong"


@pytest.mark.e2e
def test_daemon_without_services_answers_unknown_service(cluster_up: Path, tmp_path: Path) -> None:
    """A daemon (``dagrider node``) runs no application service: a call to it is
    refused with a code, and the link (here to a committee member) stays up."""

    async def scenario() -> None:
        member = Committee.load(cluster_up / "committee" / COMMITTEE_FILE).member(0)
        async with Peer(join_config(cluster_up, tmp_path / "peer")) as peer:
            with pytest.raises(RemoteError) as err:
                await peer.services.client(member.identity_key, _Echo, timeout=20).ping()
            assert err.value.code == "unknown-service"
            assert peer.network.peer(member.identity_key).connected

    asyncio.run(scenario())
