"""The API reference builds from the docstrings without a warning (mkdocs --strict)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_api_reference_builds_strict(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    node_page = (tmp_path / "site" / "api" / "node" / "index.html").read_text()
    # generated from the docstrings, not written by hand
    assert "submit_many" in node_page and "Queue a batch of transactions" in node_page
    services_page = (tmp_path / "site" / "api" / "services" / "index.html").read_text()
    assert "current_peer" in services_page
