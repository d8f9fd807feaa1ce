"""``python -m metaops demo``: the CSV import through ``metaops serve`` and ``metaops.client``.

Most tests call ``main(argv)`` in the test process with a few rows; one runs
``python -m metaops demo --serve`` as a subprocess (the link, the page, Ctrl-C).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

import metaops._demo as demo_module
from metaops._cli import main
from metaops._demo import run_demo
from metaops.client import read_stream

from .test_cli import Ran, assert_bad_input, run

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = re.compile(r"run_[0-9a-f]{24}")


def _json(ran: Ran) -> dict[str, Any]:
    assert ran.code == 0, ran.err
    report: dict[str, Any] = ran.json()
    return report


def test_the_json_report_counts_every_row_once_and_what_went_over_the_wire() -> None:
    report = _json(run("demo", "--rows", "12", "--json"))
    final = report["metadata"]
    assert final["status"] == "complete"
    assert final["totalRows"] == final["processedRows"] == 12
    assert len(final["rowRuns"]) == len(set(final["rowRuns"])) == 12
    assert all(RUN_ID.fullmatch(run_id) for run_id in final["rowRuns"])
    assert report["consistent"] is True
    # The parent: status fetching, processing, totalRows, status complete; each child: two calls.
    assert report["calls"] == {"total": 4 + 2 * 12, "parent": 4, "children": 2 * 12}
    # One request per child, two by the parent (before its children, and at the end);
    # "fetching" was replaced by "processing" before it was sent.
    assert report["requests"] == {"metaops": 12 + 2, "oneByOne": 28}
    assert report["operations"] == {"metaops": 2 * 12 + 3, "oneByOne": 28}
    assert report["bytes"]["metaops"] < report["bytes"]["oneByOne"]
    assert 1 <= report["parentWrites"]["metaops"] <= report["parentWrites"]["oneByOne"] == 28
    assert report["logLines"] == 1 + 12 + 1  # "fetched", a line per row, "imported"
    assert report["rejected"] == []
    # JSON.stringify's bytes, counted by hand: the run ids are "run_" and 24 ASCII characters.
    frame = '{"status":"complete","totalRows":12,"processedRows":12,"rowRuns":[]}'
    assert report["size"] == len(frame) + 12 * len('"run_012345678901234567890123"') + 11


def test_piped_output_ends_on_complete_within_80_columns_and_says_what_was_saved() -> None:
    ran = run("demo", "--rows", "10")
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert "\r" not in ran.out
    progress = [line for line in lines if line.startswith("  ") and " rows (" in line]
    assert progress[0] == "  0/10 rows (0%), status processing"  # shown before the children start
    assert progress[-1] == "  10/10 rows (100%), status complete"
    assert max(len(line) for line in lines) < 80, max(lines, key=len)
    lowered = ran.out.lower()
    for word in ("wave", "reference", "rule"):
        assert word not in lowered, word
    headline = lines[lines.index("") + 1]
    calls, requests, writes = (int(n.replace(",", "")) for n in re.findall(r"[\d,]+", headline))
    assert (
        headline
        == f"{calls} metadata calls -> {requests} requests -> {writes} writes of the parent's metadata"
    )
    assert (calls, requests) == (24, 12)
    table = lines[lines.index("What metaops saved           with metaops     one by one") :]
    assert table[1].split() == ["requests", "sent", "12", "24", "50%", "fewer"]
    assert table[4].startswith("  writes of the parent ")
    assert "Check: the parent's metadata equals the 24 calls applied one by one" in lines


def test_the_final_metadata_is_shown_key_by_key_as_json() -> None:
    ran = run("demo", "--rows", "3")
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    shown = lines[lines.index("") + 1 :]
    final = {
        line.split()[0]: line.split(None, 1)[1]
        for line in shown
        if line.startswith("  ") and "  " in line[2:]
    }
    assert final["status"] == '"complete"'
    assert final["totalRows"] == "3"
    # Two run ids and the rest do not fit in 80 columns: the first, and how many.
    assert re.fullmatch(r'3 items: \["run_[0-9a-f]{24}", \.\.\.\]', final["rowRuns"])


def screen(written: str) -> list[str]:
    """The lines a terminal shows after ``written``: a carriage return moves to the line's start,
    later characters overwrite earlier ones, ESC [K clears to the end of the line."""
    lines = [""]
    column = 0
    i = 0
    while i < len(written):
        if written.startswith("\x1b[K", i):
            lines[-1] = lines[-1][:column]
            i += 3
            continue
        char = written[i]
        i += 1
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("")
            column = 0
        else:
            line = lines[-1]
            lines[-1] = line[:column] + char + line[column + 1 :]
            column += 1
    return [line.rstrip(" ") for line in lines]


class FakeTerminal(io.StringIO):
    """Standard output that says it is a terminal."""

    def isatty(self) -> bool:
        """A terminal, as far as the demo can tell."""
        return True


def test_on_a_terminal_the_bar_ends_full_and_complete_with_no_stray_characters() -> None:
    out = FakeTerminal()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["demo", "--rows", "12"]) == 0
    written = out.getvalue()
    assert "processing\r" in written  # the bar was redrawn at least once
    bar = [line for line in screen(written) if "rows" in line and "[" in line]
    assert bar == ["  [" + "#" * 30 + "] 12/12 rows 100%  complete"]
    assert max(len(line) for line in screen(written)) < 80


def test_over_the_size_limit_children_are_refused_and_nothing_else_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", "500")
    report = _json(run("demo", "--rows", "20", "--json"))
    final = report["metadata"]
    assert report["limit"] == 500
    assert report["size"] <= 500
    assert report["rejected"]
    assert final["processedRows"] + len(report["rejected"]) == 20
    assert sorted(final["rowRuns"] + report["rejected"]) == sorted(set(final["rowRuns"] + report["rejected"]))
    assert report["consistent"] is True


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["demo", "--rows", "-1"], "--rows must be >= 0"),
        (["demo", "--port", "70000"], "--port from 0 to 65535"),
        (["demo", "--serve", "--json"], "does not go with --json"),
    ],
)
def test_options_out_of_range(argv: list[str], fragment: str) -> None:
    assert_bad_input(run(*argv), "demo", fragment)


def test_help_names_every_metadata_key_and_the_extras() -> None:
    text = run("demo", "--help").out
    for key in ("status", "totalRows", "processedRows", "rowRuns", "--serve"):
        assert key in text, key
    assert "pip install 'metaops[server,client]'" in text


def _python(*argv: str, code: str | None = None, **options: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "metaops", *argv]
    return subprocess.Popen(command, env=env, cwd=ROOT, text=True, **options)


def test_without_the_extras_one_line_names_them_and_the_exit_status_is_2() -> None:
    # None in sys.modules is how Python marks a module that cannot be imported.
    code = (
        "import sys; sys.modules['uvicorn'] = None; from metaops._cli import main; sys.exit(main(['demo']))"
    )
    process = _python(code=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("metaops demo: ")
    assert "(uvicorn is missing)" in err
    assert err.endswith("pip install 'metaops[server,client]'\n")


def test_serve_prints_the_link_waits_for_the_page_and_serves_until_stopped() -> None:
    process = _python("demo", "--serve", "--rows", "8", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert process.stdout is not None
    seen: list[str] = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith("Watch it live: "):
                break
        link = seen[-1].removeprefix("Watch it live: ").strip()
        assert process.stdout.readline() == "The import starts when the page opens.\n"
        page = httpx.get(link, timeout=30)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        token = link.split("?token=", 1)[1]
        base, run_path = link.split("?", 1)[0].split("/runs/")
        # What the page's script asks first: the run's snapshot. Then the import starts.
        shape = httpx.get(
            f"{base}/realtime/v1/runs/{run_path}",
            params={"offset": "-1"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert shape.status_code == 200
        for line in process.stdout:
            seen.append(line)
            if line == "Still serving the page; Ctrl-C to stop.\n":
                break
        output = "".join(seen)
        assert "  8/8 rows (100%), status complete\n" in output
        assert "Check: the parent's metadata equals the 20 calls applied one by one" in output
        # Still serving: the run, completed, through the page's token.
        done = httpx.get(
            f"{base}/api/v1/runs/{run_path}/metadata",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert done.json()["metadata"]["processedRows"] == 8
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_ctrl_c_during_the_import_stops_it_at_once_with_one_line() -> None:
    process = _python(
        "demo",
        "--serve",
        "--rows",
        "400",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        for line in process.stdout:
            if line.startswith("Watch it live: "):
                break
        link = line.removeprefix("Watch it live: ").strip()
        base, rest = link.split("/runs/")
        run_id, token = rest.split("?token=")
        headers = {"Authorization": f"Bearer {token}"}
        httpx.get(f"{base}/realtime/v1/runs/{run_id}", params={"offset": "-1"}, headers=headers, timeout=30)
        for line in process.stdout:
            if " rows (" in line and not line.startswith("  0/"):
                break  # children are at work (a line at each tenth)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        assert "status complete" not in process.stdout.read()  # the other children never started
        assert process.stderr.read() == "metaops demo: interrupted\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_a_child_that_fails_fails_the_demo_and_leaves_no_thread_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = demo_module._handle_csv_row

    def failing(row: dict[str, str], index: int, *args: Any) -> None:
        if index == 3:
            raise ValueError("row 4 is malformed")
        real(row, index, *args)

    monkeypatch.setattr(demo_module, "_handle_csv_row", failing)
    with pytest.raises(ValueError, match="row 4 is malformed"):
        run_demo(8)
    assert [thread.name for thread in threading.enumerate() if thread.name.startswith("metaops-demo")] == []


def test_run_demo_serves_the_dashboard_until_after_returns() -> None:
    """In-process: the link works during ``after``, and the report carries it."""
    seen: dict[str, Any] = {}

    def announce(url: str, opened: threading.Event) -> None:
        seen["announced"] = url
        opened.set()

    def after(report: Any) -> None:
        assert report.url is not None
        seen["page"] = httpx.get(report.url, timeout=30).status_code
        base, rest = report.url.split("/runs/")
        run_id, token = rest.split("?token=")
        # The log as a reader gets it, with the page's token: the whole stream, then its end.
        seen["log"] = [
            chunk.value for chunk in read_stream(run_id, "log", base_url=base, access_token=token, timeout=30)
        ]

    report = run_demo(5, announce=announce, after=after)
    assert report.url is not None
    assert report.url == seen["announced"]
    assert seen["page"] == 200
    assert report.consistent
    assert json.loads(json.dumps(report.to_json()))["metadata"]["processedRows"] == 5
    log = seen["log"]
    assert (log[0], log[-1]) == ("fetched customers.csv: 5 rows; one child run per row", "imported 5 rows")
    rows = sorted(int(line.split(":")[0].removeprefix("row ")) for line in log[1:-1])
    assert rows == [1, 2, 3, 4, 5]
    with pytest.raises(httpx.ConnectError):
        httpx.get(report.url, timeout=5)  # no longer served
