"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromium-driver) via Selenium.

Deselected by default (``-m browser`` runs them). Where Chromium or its driver is
missing, the tests skip and say why, unless ``METAOPS_REQUIRE_BROWSER=1`` (CI), where
they fail. The tests PUT updates and write stream chunks over HTTP, and wait (never
timing anything) until the page shows them.

``METAOPS_SCREENSHOT=docs/dashboard.png python -m pytest -m browser -k screenshot``
also writes the screenshot the README shows: the demo's CSV import, mid-way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest

from metaops.service import RunningServer
from metaops.service._auth import mint_public_token

from . import _realtime_support as support
from ._realtime_support import SECRET

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# This machine's closed network refuses Chromium's background connections: turn them off.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WAIT = 30.0  # seconds a condition may take before the test fails (a bound, not a measurement)
_T = TypeVar("_T")

ENTRIES = """
return Array.from(document.querySelectorAll("#tree li.entry")).map(
    (li) => [li.dataset.path, li.querySelector(":scope > .line > .value").textContent]);
"""
BARS = """
return Array.from(document.querySelectorAll("#tree [role=progressbar]")).map(
    (bar) => [bar.dataset.path, bar.getAttribute("aria-valuenow"), bar.getAttribute("aria-valuetext")]);
"""
SUMMARY = """
return Array.from(document.querySelectorAll("#progress-list [role=progressbar]")).map(
    (bar) => [bar.dataset.path, bar.getAttribute("aria-valuenow")]);
"""
CHUNKS = """
return Array.from(document.querySelectorAll(".stream")).map((panel) => [panel.dataset.key,
    Array.from(panel.querySelectorAll(".chunk-text")).map((chunk) => chunk.textContent),
    panel.querySelector(".stream-state").textContent]);
"""


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _missing()
    if missing is not None:
        if os.environ.get("METAOPS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"METAOPS_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="metaops-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1000"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


server = support.sqlite_server
admin = support.client


@pytest.fixture(autouse=True)
def leave_the_page(browser: Any) -> Iterator[None]:
    """After each test the browser leaves the page: its long-polls end, so the server can stop at once."""
    yield
    browser.get("about:blank")


def until(browser: Any, condition: Callable[[], _T | None], what: str) -> _T:
    """Wait for ``condition()`` to be truthy (at most :data:`WAIT` seconds); its value."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        value = WebDriverWait(browser, WAIT, poll_frequency=0.05).until(lambda _: condition())
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}; last seen: {condition()!r}") from None
    assert value is not None  # WebDriverWait returns a truthy value
    return value


def open_run(browser: Any, server: RunningServer, admin: httpx.Client, run_id: str, metadata: Any) -> None:
    assert admin.post("/admin/runs", json={"id": run_id, "metadata": metadata}).status_code == 201
    token = mint_public_token(SECRET, [run_id])
    browser.get(f"{server.url}/runs/{quote(run_id, safe='')}?token={token}")
    until(browser, lambda: browser.find_element("id", "connection").text == "live", "the live connection")


def put(admin: httpx.Client, run_id: str, *operations: dict[str, Any]) -> None:
    answer = admin.put(
        f"/api/v1/runs/{quote(run_id, safe='')}/metadata", json={"operations": list(operations)}
    )
    assert answer.status_code == 200, answer.text


def entries(browser: Any) -> dict[str, str]:
    return dict(browser.execute_script(ENTRIES))


def errors(browser: Any) -> list[str]:
    """What the page logged as errors (a script error, a request the CSP blocked)."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_tree_shows_the_metadata_and_follows_its_updates(
    browser: Any, server: RunningServer, admin: httpx.Client
) -> None:
    first = {"status": "queued", "gone": "soon", "nested": {"a": [1, True, None]}}
    open_run(browser, server, admin, "run_tree", first)
    assert until(browser, lambda: entries(browser).get("status") == '"queued"', "the first status")
    assert entries(browser) == {
        "status": '"queued"',
        "gone": '"soon"',
        "nested": "{1 key}",
        "nested.a": "[3 items]",
        "nested.a[0]": "1",
        "nested.a[1]": "true",
        "nested.a[2]": "null",
    }
    put(
        admin,
        "run_tree",
        {"type": "set", "key": "status", "value": "importing"},
        {"type": "append", "key": "$.nested.a", "value": "four"},
        {"type": "delete", "key": "gone"},
        {"type": "set", "key": "$.nested.b", "value": 2.5},
    )
    until(browser, lambda: entries(browser).get("status") == '"importing"', "the new status")
    assert entries(browser) == {
        "status": '"importing"',
        "nested": "{2 keys}",
        "nested.a": "[4 items]",
        "nested.a[0]": "1",
        "nested.a[1]": "true",
        "nested.a[2]": "null",
        "nested.a[3]": '"four"',
        "nested.b": "2.5",
    }
    assert browser.find_element("id", "run-status").text == "running"
    assert admin.post("/admin/runs/run_tree/complete", json={}).status_code == 200
    until(browser, lambda: browser.find_element("id", "run-status").text == "completed", "completion")
    assert errors(browser) == []


def test_long_lists_show_their_newest_items_until_asked_for_more(
    browser: Any, server: RunningServer, admin: httpx.Client
) -> None:
    open_run(browser, server, admin, "run_long", {"rows": list(range(30))})
    shown = until(
        browser, lambda: [path for path in entries(browser) if path.startswith("rows[")], "the list"
    )
    assert shown == [f"rows[{index}]" for index in range(10, 30)]
    assert browser.find_element("css selector", ".more-text").text == "… 10 earlier items not shown"
    put(admin, "run_long", {"type": "append", "key": "rows", "value": 30})
    until(browser, lambda: "rows[30]" in entries(browser), "the new item")
    assert next(path for path in entries(browser) if path.startswith("rows[")) == "rows[11]"
    browser.find_element("css selector", ".more-button").click()
    until(browser, lambda: "rows[0]" in entries(browser), "every item")
    assert [path for path in entries(browser) if path.startswith("rows[")] == [
        f"rows[{i}]" for i in range(31)
    ]
    assert browser.find_elements("css selector", ".more-text") == []
    browser.find_element("css selector", 'li.entry[data-path="rows"] > .line > .toggle').click()
    assert not browser.find_element("css selector", 'li.entry[data-path="rows[0]"]').is_displayed()
    assert errors(browser) == []


def test_progress_is_drawn_as_bars_that_move(
    browser: Any, server: RunningServer, admin: httpx.Client
) -> None:
    metadata = {
        "progress": 0.25,  # rule 1
        "uploadProgress": 0.5,
        "import": {"processed": 3, "total": 12},  # rule 2
        "processedRows": 30,  # rule 3, with totalRows
        "totalRows": 120,
        # not progress
        "loose": {"progress": 1.5, "done": 4, "total": 0},
        "label_progress": "half",
        "processed_files": 3,
    }
    open_run(browser, server, admin, "run_progress", metadata)
    expected = [
        ["progress", "25", "25%"],
        ["uploadProgress", "50", "50%"],
        ["import", "25", "3 / 12 (25%)"],
        ["processedRows", "25", "30 / 120 (25%)"],
    ]
    assert until(browser, lambda: browser.execute_script(BARS) or None, "the bars") == expected
    assert browser.execute_script(SUMMARY) == [row[:2] for row in expected]
    put(
        admin,
        "run_progress",
        {"type": "increment", "key": "processedRows", "value": 90},
        {"type": "set", "key": "progress", "value": 1},
        {"type": "set", "key": "$.import.processed", "value": 6},
        {"type": "set", "key": "$.loose.total", "value": 8},  # now a bar: 4 done of 8
        {"type": "delete", "key": "uploadProgress"},
    )
    moved = [
        ["progress", "100", "100%"],
        ["import", "50", "6 / 12 (50%)"],
        ["processedRows", "100", "120 / 120 (100%)"],
        ["loose", "50", "4 / 8 (50%)"],
    ]
    until(browser, lambda: browser.execute_script(BARS) == moved, "the bars moved")
    assert browser.title == "100% · run_progress · metaops"
    assert errors(browser) == []


def test_streams_appear_as_their_chunks_arrive(
    browser: Any, server: RunningServer, admin: httpx.Client
) -> None:
    open_run(browser, server, admin, "run_streams", {"status": "streaming"})
    assert browser.execute_script(CHUNKS) == []
    for body in (b'"first line"\n{"tokens": 12}\n', b'"third"\n'):
        assert admin.post("/realtime/v1/streams/run_streams/log", content=body).status_code == 200
    until(
        browser,
        lambda: browser.execute_script(CHUNKS) == [["log", ["first line", '{"tokens":12}', "third"], "live"]],
        "the log's chunks",
    )
    ended = admin.post("/realtime/v1/streams/run_streams/log", params={"end": "true"}, content=b'"last"\n')
    assert ended.status_code == 200
    assert admin.post("/realtime/v1/streams/run_streams/other", content=b"1\n").status_code == 200
    until(
        browser,
        lambda: (
            browser.execute_script(CHUNKS)
            == [
                ["log", ["first line", '{"tokens":12}', "third", "last"], "finished"],
                ["other", ["1"], "live"],
            ]
        ),
        "the second stream, and the first one finished",
    )
    assert errors(browser) == []


def test_untrusted_keys_values_and_chunks_are_shown_as_text(
    browser: Any, server: RunningServer, admin: httpx.Client
) -> None:
    hostile = '<img src=x onerror="window.pwned=1">'
    open_run(browser, server, admin, "run_hostile", {hostile: hostile, "list": [hostile]})
    assert admin.post("/realtime/v1/streams/run_hostile/log", json=hostile).status_code == 200
    until(browser, lambda: browser.execute_script(CHUNKS), "the chunk")
    shown = entries(browser)
    assert shown[hostile] == f'"{hostile.replace(chr(34), chr(92) + chr(34))}"'
    assert shown["list[0]"] == shown[hostile]
    assert browser.execute_script(CHUNKS)[0][1] == [hostile]
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script("return window.pwned === undefined") is True
    assert errors(browser) == []


def test_a_token_that_expires_while_the_page_is_open_stops_it_with_a_notice(
    browser: Any, server: RunningServer, admin: httpx.Client
) -> None:
    assert admin.post("/admin/runs", json={"id": "run_expiring", "metadata": {"n": 0}}).status_code == 201
    expires = int(time.time()) + 8  # time enough to open the page; then the next poll is refused
    token = mint_public_token(SECRET, ["run_expiring"], expiration=expires)
    browser.get(f"{server.url}/runs/run_expiring?token={token}")
    until(browser, lambda: entries(browser).get("n") == "0", "the metadata")
    while time.time() < expires + 1:
        time.sleep(0.2)
    put(admin, "run_expiring", {"type": "increment", "key": "n", "value": 1})
    notice = until(browser, lambda: browser.find_element("id", "notice").text, "the notice")
    assert notice == (
        "The page's access token was refused (Public access token expired). "
        f"A new link: metaops token run_expiring --url {server.url}"
    )
    assert browser.find_element("id", "connection").text == notice


def test_a_token_for_another_run_gets_the_403_page(
    browser: Any, server: RunningServer, admin: httpx.Client
) -> None:
    assert admin.post("/admin/runs", json={"id": "run_private"}).status_code == 201
    browser.get(f"{server.url}/runs/run_private?token={mint_public_token(SECRET, ['run_tree'])}")
    assert browser.find_element("tag name", "h1").text == "403 Forbidden"
    assert "cannot read run 'run_private'" in browser.find_element("class name", "message").text


def test_screenshot_of_the_demo_mid_import(browser: Any, tmp_path: Path) -> None:
    """The demo with --serve's pieces: the page opens, the import fills the bar; a screenshot mid-way."""
    from metaops._demo import run_demo

    target = Path(os.environ.get("METAOPS_SCREENSHOT") or tmp_path / "dashboard.png")
    shown = threading.Event()
    shot = threading.Event()

    def announce(url: str, opened: threading.Event) -> None:
        browser.set_window_size(1280, 1000)
        browser.get(url)
        until(browser, lambda: opened.is_set(), "the page reading the run")
        shown.set()  # from now on the test's thread drives the browser

    def after(report: Any) -> None:
        shot.wait(WAIT)

    def watch() -> None:
        def halfway() -> bool:
            bars = browser.execute_script(SUMMARY)
            return bool(bars) and 55 <= float(bars[0][1]) <= 80 and len(browser.execute_script(CHUNKS)) == 1

        until(browser, halfway, "the import half-way")
        browser.save_screenshot(str(target))
        shot.set()

    outcome: dict[str, Any] = {}

    def demo() -> None:
        outcome["report"] = run_demo(500, serve=True, announce=announce, after=after)

    thread = threading.Thread(target=demo)
    thread.start()
    try:
        assert shown.wait(WAIT)
        watch()
    finally:
        shot.set()
        thread.join()
    assert outcome["report"].consistent
    assert target.read_bytes().startswith(b"\x89PNG")
