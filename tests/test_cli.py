"""The command line has no rough edges: user errors give a message and exit status 2 (no
traceback), a node's own error message is shown as it is, every option has help text and
shows its default, and each command prints one format.

The node API is played by a small HTTP server on loopback that answers what a real
node answers in these cases (the answers themselves are covered by tests/node/test_api.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dagrider.cli import _parser, main
from dagrider.node.batch import parse_batch
from dagrider.node.service import tx_id
from sim.dht import _HELP, DhtSimConfig
from sim.dht import _parser as dht_parser


class _FakeNode(BaseHTTPRequestHandler):
    """Answers like a node: errors as ``{"error": ...}``, the log as SSE."""

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/log/stream?after=3"):
            self._json(400, {"error": "after 3 is beyond the log head 1"})
        elif self.path.startswith("/v1/log/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                for i in range(100_000):
                    entry = {"index": i, "wave": 1, "tx_id": "ab" * 32, "data": "aGk="}
                    self.wfile.write(f"data: {json.dumps(entry)}\n\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            self._json(404, {"error": f"no route for GET {self.path}"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/transactions":
            self._json(202, {"id": tx_id(body)})
        elif self.path == "/v1/transactions/batch?ids=1":
            ids = [tx_id(t) for t in parse_batch(body, 1 << 20)]
            self._json(
                202, {"accepted": len(ids), "first_id": ids[0], "last_id": ids[-1], "ids": ids}
            )
        else:
            self._json(404, {"error": f"no route for POST {self.path}"})


@pytest.fixture
def node_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _subparsers(
    parser: argparse.ArgumentParser, name: str = "dagrider"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _subparsers(sub, f"{name} {sub_name}")


def test_every_option_has_help_and_shows_its_default() -> None:
    for name, parser in _subparsers(_parser()):
        if name == "dagrider dht-sim":
            continue  # its own parser, checked below
        text = " ".join(parser.format_help().split())  # help wraps lines anywhere
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{name}: {action.dest} has no help"
            shown = action.default not in (None, False, [], argparse.SUPPRESS)
            if action.option_strings and shown:
                assert f"(default: {action.default})" in text, f"{name} {action.dest}"


def test_dht_sim_help_names_the_command_and_every_option() -> None:
    parser = dht_parser("dagrider dht-sim")
    text = " ".join(parser.format_help().split())
    assert text.startswith("usage: dagrider dht-sim")
    fields = set(DhtSimConfig.__dataclass_fields__)
    assert set(_HELP) == fields
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help, action.dest
    assert "(default: 2000)" in text


def test_dht_sim_through_dagrider_uses_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["dht-sim", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: dagrider dht-sim")


def test_cluster_up_with_a_missing_committee_is_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["cluster", "up", "--config", str(tmp_path / "nope"), "--dir", str(tmp_path / "c")])
        == 2
    )
    err = capsys.readouterr().err
    assert "no such directory" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["cluster", "up", "--config", str(empty), "--dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "no committee.json in" in err and "Traceback" not in err


def test_tail_shows_the_node_error_message(
    node_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tail", "--api", node_api, "--after", "3"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 400: after 3 is beyond the log head 1" in err
    assert "cannot reach" not in err


def test_tail_rejects_a_negative_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "--api", "http://127.0.0.1:9", "--after", "-5"]) == 2
    assert "--after must be >= -1" in capsys.readouterr().err


def test_tail_into_head_ends_quietly(node_api: str) -> None:
    proc = subprocess.run(
        f"{sys.executable} -m dagrider tail --api {node_api} | head -n 2",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.count("\n") == 2, proc.stdout
    assert proc.stderr == "", proc.stderr


def test_tail_says_why_a_node_cannot_be_reached(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "--api", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9: Connection refused" in err, err


def test_submit_prints_one_id_per_line_or_json(
    node_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "--api", node_api, "one"]) == 0
    assert capsys.readouterr().out == tx_id(b"one") + "\n"
    assert main(["submit", "--api", node_api, "a", "b"]) == 0
    assert capsys.readouterr().out == f"{tx_id(b'a')}\n{tx_id(b'b')}\n"
    assert main(["submit", "--api", node_api, "--json", "one"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ids": [tx_id(b"one")]}
    assert main(["submit", "--api", node_api, "--json", "a", "b"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ids": [tx_id(b"a"), tx_id(b"b")]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["put", "notes/todo", "--set", "title=hello"], "a string needs quotes: title='\"hello\"'"),
        (["put", "notes/todo", "--inc", "n=x"], "--inc n=x: N must be an integer"),
        (["put", "notes/todo", "--set", "novalue"], "--set expects PATH=VALUE"),
        (["put", "notes/todo", "--ops", "{"], "--ops is not JSON"),
        (["put", "notes/todo", "--ops", '{"a": 1}'], "--ops must be a JSON list of objects"),
        (["put", "todo", "--set", 'x="y"'], "document id 'todo' is not namespace/name"),
        (["get", "todo"], "document id 'todo' is not namespace/name"),
    ],
)
def test_crdt_user_errors_are_messages(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["crdt", *args, "--api", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and "Expecting value" not in err


def test_sim_mixed_says_what_each_faulty_node_drew(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "-n", "4", "-f", "1", "--byzantine", "mixed", "-w", "2", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    header = out.splitlines()[0]
    assert "(mixed: node " in header and " drew " in header, header
