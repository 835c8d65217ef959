"""The live view at /ui in a real headless browser (Debian's chromium, driven by Selenium
through chromium-driver; .ci/run installs both).

A committee of four real daemons under load; the page of node 0 must load without a
console error, then show new rounds and a committed leader within seconds. A screenshot
is kept as an artifact (``test-artifacts/ui-live-view.png``, or ``$DAGRIDER_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dagrider.node.client import submit_batch
from dagrider.node.cluster import LocalCluster

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("DAGRIDER_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


def _chrome() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert browser and driver_path, "chromium and chromedriver are needed (.ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(arg)
    options.add_argument("--disable-dev-shm-usage")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = _chrome()
    try:
        yield driver
    finally:
        driver.quit()


def _load(cluster: LocalCluster, stop: threading.Event) -> None:
    """Keep the committee busy (a full-load view must stay responsive)."""
    k = 0
    while not stop.is_set():
        batch = [f"ui-{k}-{j}".encode() for j in range(200)]
        try:
            submit_batch(cluster.api_url(k % cluster.n), batch)
        except Exception:  # a full mempool answers 429: keep going
            time.sleep(0.05)
        k += 1


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"the page did not show {what} in {timeout} s"
        time.sleep(0.2)


def test_live_view_in_headless_chromium(
    make_cluster: Callable[..., LocalCluster], browser: Any
) -> None:
    cluster = make_cluster(4, batch_delay_ms=20)
    stop = threading.Event()
    loader = threading.Thread(target=_load, args=(cluster, stop), daemon=True)
    loader.start()
    try:
        # The page itself holds nothing from outside: no http(s) URL but its own node.
        with urllib.request.urlopen(cluster.api_url(0) + "/ui", timeout=10) as r:
            page = r.read().decode()
        assert "/ui/events" in page
        assert "https://" not in page and "src=" not in page and 'href="http' not in page

        browser.get(cluster.api_url(0) + "/ui")
        body = browser.find_element("tag name", "body")

        def round_now() -> int:
            return int(body.get_attribute("data-round") or 0)

        _wait("a round", lambda: round_now() > 0, 60)
        first = round_now()
        _wait("new rounds", lambda: round_now() >= first + 4, 60)
        _wait(
            "a committed leader",
            lambda: (
                int(body.get_attribute("data-committed-leaders") or 0) > 0
                and browser.find_elements("css selector", "circle.leader.committed") != []
            ),
            60,
        )
        assert browser.find_element("id", "conn").text == "live"
        leader = browser.find_element("id", "leader").text
        assert leader.startswith("wave "), leader
        _wait(
            "the log tail",
            lambda: len(browser.find_elements("css selector", "#log tbody tr")) > 0,
            60,
        )

        # The table is re-rendered on every update: read the rows' text in one script
        # (element handles held across a re-render go stale).
        def peer_rows() -> list[str]:
            rows = browser.execute_script(
                "return Array.from(document.querySelectorAll('#peers tbody tr'),"
                " r => r.textContent)"
            )
            return [str(r) for r in rows]

        _wait(
            "three connected direct peers",
            lambda: (
                len(rows := peer_rows()) == 3
                and all("connected" in r and "direct" in r for r in rows)
            ),
            60,
        )

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "ui-live-view.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == [], errors
    finally:
        stop.set()
        loader.join(10)
