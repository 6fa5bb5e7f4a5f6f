"""The segment report as a reader sees it: opened in headless Chromium (Debian's
`chromium`, installed by `make test` when missing), driven over the DevTools protocol.
The page loads without a console error, fetches nothing from the network, shows segment
names and readable labels, keeps its length to a few screens, and a full-page screenshot
is kept as a test artifact (test-artifacts/segment_report.png)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from pipelines.settings import PROJECT_ROOT

ARTIFACTS = Path(os.environ.get("NEEDSEG_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
VIEWPORT = (1280, 900)
SCREENS = 6  # "a few screens" at that viewport


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


class DevTools:
    """The little of the Chrome DevTools protocol the test needs, over one page session."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def call(self, method: str, timeout: float = 60, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for seen in self.events:
            if seen.get("method") == event:
                return seen
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(message)
            if message.get("method") == event:
                return message

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = chromium()
    if exe is None:
        pytest.skip("Debian's chromium is not installed and could not be: `make browser` installs it (apt-get, as root)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ws_url = None
        deadline = time.monotonic() + 60
        while ws_url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                ws_url = match.group(1)
        assert ws_url, "headless chromium did not start"
        yield ws_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def opened(cycled_small_world, browser, tmp_path_factory):
    """The report of the cycled small world, loaded in a fresh page; what happened on the way."""
    settings, _ = cycled_small_world
    from pipelines.report import write_report
    from pipelines.settings import load_settings

    copy = load_settings(tmp_path_factory.mktemp("report"))
    shutil.copy(settings.serving_path, copy.serving_path)
    page = Path(write_report(copy).path)
    tools = DevTools(browser)
    try:
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        tools.session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        width, height = VIEWPORT
        tools.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        tools.call("Page.navigate", url=page.as_uri())
        tools.wait_for("Page.loadEventFired")

        def evaluate(expression: str):
            return tools.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

        full_height = evaluate("document.documentElement.scrollHeight")
        shot = tools.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": width, "height": full_height, "scale": 1},
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTIFACTS / "segment_report.png"
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        seen = {
            "height": full_height,
            "text": evaluate("document.body.innerText"),
            "labels": evaluate("[...document.querySelectorAll('th, svg text')].map(e => e.textContent)"),
            "clipped_headers": evaluate("[...document.querySelectorAll('th')].filter(e => e.scrollWidth > e.clientWidth + 1).length"),
            "charts": evaluate("document.querySelectorAll('figure.chart svg').length"),
            "screenshot": screenshot,
        }
        yield settings, seen, list(tools.events)
    finally:
        tools.close()


def test_the_report_loads_without_a_console_error_and_fetches_nothing(opened):
    _, _, events = opened
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"]
    errors += [e for e in events if e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")]
    errors += [e for e in events if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert errors == []
    urls = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert urls and all(u.startswith(("file:", "data:", "about:")) for u in urls), urls


def test_the_report_speaks_in_segment_names_and_words(opened):
    settings, seen, _ = opened
    con = duckdb.connect(str(settings.serving_path), read_only=True)
    names = [n for (n,) in con.execute("select distinct segment from customer_segments").fetchall()]
    ids = [i for (i,) in con.execute("select distinct segment_id from segment_history").fetchall()]
    con.close()
    for name in names:
        assert name in seen["text"], name
    snake = [label for label in seen["labels"] if re.search(r"\b[a-z]+_[a-z0-9_]+\b", label)]
    assert snake == [], snake  # no column names or segment ids in headers and chart labels
    assert not [i for i in ids if "_" in i and re.search(rf"\b{re.escape(i)}\b", seen["text"])]
    assert seen["clipped_headers"] == 0
    assert seen["charts"] >= 5  # sizes, needs, behaviour, sizes over the runs, transitions


def test_the_report_fits_a_few_screens_and_its_screenshot_is_kept(opened):
    _, seen, _ = opened
    assert seen["height"] <= SCREENS * VIEWPORT[1], f"{seen['height']} px: more than {SCREENS} screens"
    assert seen["screenshot"].stat().st_size > 20_000  # a rendered page, not a blank one
