"""The daemon refuses bad start-up input with one clear line and a distinct exit code."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dagrider.keygen import generate, write_committee_dir
from dagrider.node.cluster import free_port_block

pytestmark = pytest.mark.e2e


def _run(config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dagrider", "node", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _committee(tmp: Path) -> tuple[Path, int, int]:
    peer, api = free_port_block(4), free_port_block(1)
    committee, secrets = generate(4, addresses=[f"127.0.0.1:{peer + i}" for i in range(4)])
    write_committee_dir(tmp / "c", committee, secrets)
    return tmp / "c", peer, api


def _config(tmp: Path, body: str) -> Path:
    path = tmp / "node.toml"
    path.write_text(body)
    return path


def _good(cdir: Path, api: int, data: Path) -> str:
    return (
        f'[node]\nkey_file = "{cdir}/node-0.key"\ncommittee_file = "{cdir}/committee.json"\n'
        f'data_dir = "{data}"\n[api]\nlisten = "127.0.0.1:{api}"\n'
    )


def test_missing_config_file(tmp_path: Path) -> None:
    r = _run(tmp_path / "nope.toml")
    assert r.returncode == 2
    assert "does not exist" in r.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[node\n", "invalid TOML"),
        ("[nodes]\n", "unknown section"),
        ('[node]\nkey_file = "k"\n', "committee_file is required"),
        (
            '[node]\nkey_file="k"\ncommittee_file="c"\ndata_dir="d"\n[consensus]\nbatch_size="x"\n',
            "batch_size must be an integer",
        ),
        (
            '[node]\nkey_file="k"\ncommittee_file="c"\ndata_dir="d"\n[api]\nlisten="nowhere"\n',
            "must be 'host:port'",
        ),
    ],
)
def test_bad_config(tmp_path: Path, body: str, message: str) -> None:
    r = _run(_config(tmp_path, body))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr


def test_missing_key_file(tmp_path: Path) -> None:
    cdir, _, api = _committee(tmp_path)
    (cdir / "node-0.key").unlink()
    r = _run(_config(tmp_path, _good(cdir, api, tmp_path / "data")))
    assert r.returncode == 2
    assert "node-0.key" in r.stderr


def test_key_of_another_committee(tmp_path: Path) -> None:
    cdir, _, api = _committee(tmp_path)
    other, _, _ = _committee(tmp_path / "other")
    shutil.copy(other / "node-0.key", cdir / "node-0.key")
    r = _run(_config(tmp_path, _good(cdir, api, tmp_path / "data")))
    assert r.returncode == 2
    assert "invalid key or committee" in r.stderr


@pytest.mark.parametrize(("which", "message"), [("peer", "peer listen"), ("api", "API listen")])
def test_port_in_use(tmp_path: Path, which: str, message: str) -> None:
    cdir, peer, api = _committee(tmp_path)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", peer if which == "peer" else api))
        blocker.listen()
        r = _run(_config(tmp_path, _good(cdir, api, tmp_path / "data")))
    assert r.returncode == 3
    assert message in r.stderr and "address already in use" in r.stderr


def test_data_dir_of_another_committee(tmp_path: Path) -> None:
    cdir, _, api = _committee(tmp_path)
    other, _, _ = _committee(tmp_path / "other")
    data = tmp_path / "data"
    # First run other committee's node on the data dir, briefly, by creating its store.
    from dagrider.codec import Codec
    from dagrider.committee import Committee
    from dagrider.node.store import Store
    from dagrider.params import Limits

    committee = Committee.load(other / "committee.json")
    data.mkdir()
    Store(data / "node.sqlite3", Codec(4, Limits()), committee.committee_id, 50).close()
    r = _run(_config(tmp_path, _good(cdir, api, data)))
    assert r.returncode == 3
    assert "another committee" in r.stderr
