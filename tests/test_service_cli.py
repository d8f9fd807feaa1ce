"""``metaops serve`` / ``python -m metaops serve``: starting, stopping, and refusing to start."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._serve import ROOT
from tests._service_support import OPS_INCREMENT, TOKEN, Client, ServeProcess


@dataclass
class _Result:
    returncode: int
    stdout: str
    stderr: str


def _run(*args: str, env: dict[str, str] | None = None) -> _Result:
    """``metaops serve ARGS`` to completion, in this process (it must not start serving)."""
    from metaops.service._serve import main

    saved = {name: os.environ.get(name) for name in (env or {})}
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--token", TOKEN, *args])
            except SystemExit as done:  # argparse's usage errors
                code = done.code if isinstance(done.code, int) else 2
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return _Result(code, out.getvalue(), err.getvalue())


def _assert_one_error_line(result: _Result, words: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("metaops serve: error: "), line
    assert words in line, line


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run("--database", f"sqlite:///{tmp_path / 'db'}", "--port", str(port))
    _assert_one_error_line(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("directory missing", "cannot open the database"),
        ("not a database", "file is not a database"),
        ("unknown scheme", "expected sqlite:///path/file.sqlite3 or postgresql://"),
        ("bad limit in the environment", "TASK_RUN_METADATA_MAXIMUM_SIZE='lots'"),
    ],
)
def test_startup_errors_are_one_line_and_exit_2(tmp_path: Path, case: str, words: str) -> None:
    (tmp_path / "notes.txt").write_text("not SQLite\n" * 100)
    database = {
        "directory missing": f"sqlite:///{tmp_path / 'missing' / 'db'}",
        "not a database": f"sqlite:///{tmp_path / 'notes.txt'}",
        "unknown scheme": "mysql://localhost/runs",
    }.get(case, f"sqlite:///{tmp_path / 'db'}")
    env = {"TASK_RUN_METADATA_MAXIMUM_SIZE": "lots"} if case == "bad limit in the environment" else {}
    result = _run("--database", database, "--port", "0", env=env)
    _assert_one_error_line(result, words)


def test_a_password_in_the_database_url_is_never_printed() -> None:
    result = _run("--database", "mysql://admin:hunter2@db.example:3306/runs", "--port", "0")
    _assert_one_error_line(result, "mysql://admin:***@db.example:3306/runs")
    assert "hunter2" not in result.stderr + result.stdout


def test_importing_the_service_does_not_import_psycopg() -> None:
    """SQLite users never load PostgreSQL's driver; PostgresStorage is imported when asked for."""
    code = (
        "import sys, metaops.service as s; print('psycopg' in sys.modules); "
        "s.PostgresStorage; print('psycopg' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True"], result


@pytest.mark.parametrize(
    "args",
    [["--port", "70000"], ["--workers", "0"], ["--request-timeout", "0"], ["--flush-interval", "-1"],
     ["--limit", "-5"], ["--max-connections", "0"]],
    ids=lambda args: args[0],
)  # fmt: skip
def test_bad_arguments_are_refused_with_the_usage_and_exit_2(args: list[str]) -> None:
    result = _run(*args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: metaops serve")
    assert f"error: {args[0]}: " in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("module", ["metaops.service._serve", "benchmarks.load_server"])
def test_help_is_plain_text(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--help reads as plain text: no reStructuredText markup (``literal``, :role:) shows."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    result = capsys.readouterr()
    assert (done.value.code, result.err) == (0, "")
    assert "usage: " in result.out
    assert "``" not in result.out
    assert re.search(r":[a-z]+:`", result.out) is None


def test_serve_listed_in_the_command_list() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metaops", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert re.search(r"^\s+serve\s+Serve run metadata over HTTP", result.stdout, re.MULTILINE), result.stdout


def test_without_the_server_extra_serve_names_the_install_command(tmp_path: Path) -> None:
    """Without Starlette (hidden here), one line naming pip install 'metaops[server]', exit 2."""
    (tmp_path / "starlette").mkdir()
    (tmp_path / "starlette" / "__init__.py").write_text("raise ImportError('hidden', name='starlette')\n")
    result = subprocess.run(
        [sys.executable, "-m", "metaops", "serve", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert "pip install 'metaops[server]'" in line
    assert "starlette" in line


def test_a_random_token_is_printed_and_the_default_database_is_in_the_working_directory(
    tmp_path: Path,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "metaops", "serve", "--port", "0"],
        cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "METAOPS_SERVER_TOKEN"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first, second = process.stdout.readline(), process.stdout.readline()
        port = int(re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\n", first).group(1))  # type: ignore[union-attr]
        token = re.fullmatch(r"token: (\S{20,})\n", second).group(1)  # type: ignore[union-attr]
        client = Client(port, token=token)
        status, created = client.request("POST", "/admin/runs", {"id": "r"})
        assert status == 201, created
        assert Client(port, token=TOKEN).request("GET", "/admin/runs/r")[0] == 401
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
    assert (tmp_path / "metaops.sqlite3").exists()


@pytest.mark.slow
def test_sigterm_stops_gracefully_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.sqlite3'}"
    first = ServeProcess(url)
    client = first.client()
    client.create_run("r")
    for _ in range(3):
        assert client.put_metadata("r", {"operations": OPS_INCREMENT})[0] == 200
    client.close()
    assert first.stop() == 0
    second = ServeProcess(url)
    try:
        client = second.client()
        assert client.get_metadata("r") == {"n": 3}
        client.close()
    finally:
        assert second.stop() == 0


@pytest.mark.slow
def test_several_workers_share_one_port_and_one_database(database_url: str) -> None:
    """--workers 3 with --port 0: the printed port is the one every worker serves; any of them
    answers for any run."""
    server = ServeProcess(database_url, "--workers", "3")
    try:
        clients = [server.client() for _ in range(6)]
        clients[0].create_run("shared")
        for _ in range(5):
            for client in clients:
                assert client.put_metadata("shared", {"operations": OPS_INCREMENT})[0] == 200
        for client in clients:
            assert client.get_metadata("shared") == {"n": 30}
            client.close()
    finally:
        assert server.stop() == 0
