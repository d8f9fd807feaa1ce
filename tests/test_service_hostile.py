"""The service under hostile input: what an audit found, each case refused cleanly.

Every answer is a JSON body with the status that says what was wrong, nothing a
refused request sent is stored, nothing is logged as a server error, and no single
request keeps the event loop from answering the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the service needs the server extra: pip install 'metaops[server]'")

from metaops.service import (
    MetadataService,
    RunningServer,
    RunNotFoundError,
    create_app,
    open_storage,
    running_server,
)
from metaops.service._codec import loads
from metaops.service._streams_store import MAX_STREAM_CHUNKS
from tests import _service_support as support
from tests._serve import ROOT
from tests._service_support import TOKEN, Client, threaded_server

server = support.per_backend_server()
client = support.client


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One backend, for what happens before the storage is reached (reading and parsing bodies)."""
    with threaded_server(
        f"sqlite:///{tmp_path_factory.mktemp('hostile-sqlite') / 'runs.sqlite3'}"
    ) as running:
        yield running


@pytest.fixture
def sqlite_client(sqlite_server: RunningServer) -> Iterator[Client]:
    connection = Client(sqlite_server.port)
    yield connection
    connection.close()


# ------------------------------------------------------------------ a client that hangs up mid-body


def _asgi_scope(method: str, path: str, declared: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-length", str(declared).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }


async def _hang_up_mid_body(app: Any, method: str, path: str) -> list[dict[str, Any]]:
    """Drive ``app`` as uvicorn does for a client that sends part of its body, then goes away."""
    arriving: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"op', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return arriving.pop(0) if len(arriving) > 1 else arriving[0]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_asgi_scope(method, path, 100), receive, send)
    return sent


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/runs/gone/metadata"),
        ("POST", "/admin/runs"),
        ("POST", "/admin/runs/gone/complete"),
        ("POST", "/admin/flush"),
        ("POST", "/realtime/v1/streams/gone/log"),
        ("POST", "/api/v1/auth/public-tokens"),
    ],
)
def test_a_client_gone_mid_body_is_no_server_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    """A client that hangs up while sending its body (or whose body the HTTP parser gives up
    on) is the server's daily bread: no traceback, no error logged, nothing stored. Before,
    every body-reading route logged ClientDisconnect with a traceback, and the stream and
    token routes let it escape to uvicorn ("Exception in ASGI application")."""
    service = MetadataService(open_storage(f"sqlite:///{tmp_path / 'runs.sqlite3'}"))
    service.create_run("gone")
    app = create_app(service, TOKEN, manage_service=False)
    with caplog.at_level(logging.WARNING):
        sent = asyncio.run(_hang_up_mid_body(app, method, path))
    assert service.get("gone").version == 0
    assert service.storage.get_run("run_1") is None
    service.close()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert all(400 <= status < 500 for status in statuses), statuses  # never a 500


# ------------------------------------------------------------------ one request never stalls the rest


def test_stream_bodies_are_parsed_off_the_event_loop(
    sqlite_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 MiB of NDJSON is up to a million values: parsed on the event loop, that took seconds
    in which the server answered nobody else (a GET waited 3 s behind one such write). The
    lines are parsed on a worker thread."""
    parsed_on: set[str] = set()

    def watched(text: str | bytes) -> Any:
        parsed_on.add(threading.current_thread().name)
        return loads(text)

    monkeypatch.setattr("metaops.service._streams.loads", watched)
    sqlite_client.create_run("ndjson-thread")
    status, answer = sqlite_client.request(
        "POST", "/realtime/v1/streams/ndjson-thread/log", raw=b'{"row": 1}\n{"row": 2}\n'
    )
    assert (status, answer) == (200, {"length": 2, "accepted": 2, "finished": False})
    assert parsed_on, "the body was not parsed"
    loop_thread = "metaops-uvicorn"  # running_server's thread, where the event loop runs
    assert loop_thread not in parsed_on


def test_a_write_of_more_chunks_than_a_stream_holds_is_refused_unparsed(
    sqlite_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body with more values than any stream may hold is 413 after the first value past the
    bound, not after parsing them all; nothing is stored."""
    calls = [0]

    def counted(text: str | bytes) -> Any:
        calls[0] += 1
        return loads(text)

    monkeypatch.setattr("metaops.service._streams.loads", counted)
    sqlite_client.create_run("ndjson-many")
    body = b"1\n" * (MAX_STREAM_CHUNKS + 50_000)
    status, answer = sqlite_client.request("POST", "/realtime/v1/streams/ndjson-many/log", raw=body)
    assert status == 413
    assert f"{MAX_STREAM_CHUNKS:,}" in answer["error"]
    assert calls[0] == MAX_STREAM_CHUNKS
    status, answer = sqlite_client.request("POST", "/realtime/v1/streams/ndjson-many/log?index=0", raw=b"")
    assert (status, answer["length"]) == (200, 0)


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that waits half a second for a body (SQLite: the backend plays no part)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('impatient') / 'runs.sqlite3'}"
    with threaded_server(url, request_timeout=0.5) as running:
        yield running


def test_a_token_request_whose_body_stops_arriving_is_408(impatient_server: RunningServer) -> None:
    """POST /api/v1/auth/public-tokens read its body with no deadline: a client sending it a
    byte at a time held the connection for as long as it liked. Now it is 408, as on every
    other route that reads a body, and the connection is closed."""
    head = (
        "POST /api/v1/auth/public-tokens HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{"
    ).encode()
    with socket.create_connection(("127.0.0.1", impatient_server.port), timeout=30) as raw:
        raw.sendall(head)
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"connection: close" in received.lower()
    body = received.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body) == {"error": "Request body did not arrive within 0.5 s"}


def test_a_stream_write_over_2_mib_is_413_and_closes_the_connection(sqlite_client: Client) -> None:
    """The stream route stops reading a body past 2 MiB: what is left of it cannot be taken for
    the next request, so the answer closes the connection, as the metadata route's does."""
    sqlite_client.create_run("ndjson-big")
    status, answer = sqlite_client.request(
        "POST", "/realtime/v1/streams/ndjson-big/log", raw=b"1\n" * 1_500_000
    )
    assert status == 413
    assert answer == {"error": "Request body is over the limit of 2,097,152 bytes"}
    assert sqlite_client.last_headers["connection"] == "close"


# ------------------------------------------------------------------ values no run can hold


@pytest.mark.parametrize("completed_at", [1e18, -1, 1e300, 253_402_300_800])
def test_a_completion_time_no_timestamp_can_name_is_400_and_changes_nothing(
    client: Client, completed_at: float
) -> None:
    """``completedAt`` past the year 9999 (or before 1970) was stored, and from then on every
    Realtime read of the run was a 500 with a traceback (the row's timestamp cannot be
    written). It is refused, naming the field, and the run stays open and readable."""
    run_id = f"late-{abs(int(completed_at)) % 10_000}-{completed_at < 0}"
    client.create_run(run_id)
    status, answer = client.request("POST", f"/admin/runs/{run_id}/complete", {"completedAt": completed_at})
    assert status == 400
    assert answer["error"].startswith("completedAt: expected Unix seconds from 0 to 253402300799")
    assert client.run(run_id)["completed"] is False
    status, rows = client.request("GET", f"/realtime/v1/runs/{run_id}?offset=-1")
    assert status == 200
    assert rows[0]["value"]["completedAt"] is None


def test_run_ids_holding_nul_name_no_run(server: RunningServer, client: Client) -> None:
    """A NUL in a run id: PostgreSQL cannot hold it, and answered every route naming one with
    503 (a database failure, which clients retry as an unknown outcome). No run can have such
    an id: creating one is 400 naming the field, and a path holding one is 404, on every
    backend alike."""
    for field in ("id", "parentId", "rootId"):
        status, answer = client.request("POST", "/admin/runs", {"id": "nul-ok", field: "a\x00b"})
        assert status == 400, answer
        assert answer["error"].startswith(f"{field}: expected text without NUL characters")
    assert client.request("GET", "/admin/runs/nul-ok")[0] == 404
    client.create_run("nul-ok")
    for method, path in [
        ("GET", "/api/v1/runs/a%00b/metadata"),
        ("PUT", "/api/v1/runs/a%00b/metadata"),
        ("GET", "/admin/runs/a%00b"),
        ("POST", "/admin/runs/a%00b/complete"),
        ("GET", "/realtime/v1/runs/a%00b?offset=-1"),
        ("GET", "/realtime/v1/streams/a%00b/log"),
        ("POST", "/realtime/v1/streams/a%00b/log"),
        ("GET", "/runs/a%00b"),
    ]:
        body: object = {"operations": []} if method == "PUT" else None
        status, answer = client.request(method, path, body)
        assert (status, answer) == (404, {"error": "Not found: the path holds a NUL character"}), path
    with pytest.raises(RunNotFoundError):
        server.service.get("nul-ok\x00")
    with pytest.raises(RunNotFoundError):
        server.service.update("nul-ok\x00", {"operations": []})
    with pytest.raises(RunNotFoundError):
        server.service.complete_run("nul-ok\x00")


# ------------------------------------------------------------------ the command line


def _public_token(secret: str) -> str:
    from metaops.service import mint_public_token

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT's own warning about short keys: not this test's subject
        return mint_public_token(secret, ["cli-run"])


def test_metaops_token_says_a_short_secret_is_weak_in_one_line_of_its_own() -> None:
    """`metaops token run_1 --token secret` (as the README's walkthrough has it) printed PyJWT's
    warning, with a file name and a line of source, on stderr. Now one line of its own says
    why a short secret is a risk (a public token lets anyone guess it offline)."""
    done = subprocess.run(
        [sys.executable, "-m", "metaops", "token", "cli-run", "--token", "secret"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+\n", done.stdout)
    assert done.stderr == (
        "metaops token: warning: the secret: it is 6 bytes long: anyone holding a public access "
        "token signed with it can test guesses of it offline, and it does everything; "
        "use 32 bytes or more\n"
    )


def test_metaops_token_with_a_secret_of_32_bytes_warns_of_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    from metaops.service._auth_cli import main

    assert main(["cli-run", "--token", "s" * 32]) == 0
    assert capsys.readouterr().err == ""


def test_metaops_serve_says_a_short_token_is_weak_once(tmp_path: Path) -> None:
    """`metaops serve --token secret` printed PyJWT's warning (file name, source line) the
    first time a public token was checked. Now it says so once, in its own words, at start."""
    errors = tmp_path / "stderr.txt"
    database = f"sqlite:///{tmp_path / 'runs.sqlite3'}"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metaops",
                "serve",
                "--port",
                "0",
                "--token",
                "secret",
                "--database",
                database,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert process.stdout is not None
            port = int(process.stdout.readline().rsplit(":", 1)[1])
            admin = Client(port, token="secret")
            admin.create_run("cli-run")
            admin.close()
            reader = Client(port, token=_public_token("secret"))
            assert reader.get_metadata("cli-run") == {}
            reader.close()
        finally:
            process.terminate()
            process.communicate(timeout=30)
    assert errors.read_text() == (
        "metaops serve: warning: the token: it is 6 bytes long: anyone holding a public access "
        "token signed with it can test guesses of it offline, and it does everything; "
        "use 32 bytes or more\n"
    )


# ------------------------------------------------------------------ the HTTP layer


def test_headers_too_large_are_answered_400_and_the_client_can_read_it(
    impatient_server: RunningServer,
) -> None:
    """Headers past h11's 16 KiB, arriving in pieces (a public token naming hundreds of runs,
    say): the server answered 400 and closed at once, with the client's data unread, so the
    kernel reset the connection and the client got a broken pipe instead of the answer. Now
    the server reads and drops the rest for a moment before it closes: the client reads its
    JSON 400."""
    head = (
        f"GET /api/v1/runs/slow/metadata HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 40_000}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", impatient_server.port), timeout=30) as raw:
        for start in range(0, len(head), 1000):
            raw.sendall(head[start : start + 1000])
            time.sleep(0.001)  # pieces, as a network delivers them
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    body = received.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["error"].startswith("Malformed HTTP request")


def test_a_body_still_arriving_at_shutdown_is_answered_503_and_nothing_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At shutdown, a request whose body was still arriving held the server for the whole
    graceful-shutdown time (10 s), after which uvicorn cancelled it: a text/plain 500 and a
    CancelledError traceback. Nothing of it was done, so it is answered 503 (JSON, with
    Retry-After) at once, and nothing is logged."""
    service = MetadataService(open_storage(f"sqlite:///{tmp_path / 'runs.sqlite3'}"))
    service.create_run("late")
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate
    uvicorn_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING), running_server(service, TOKEN) as server:
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            raw.sendall(
                b"PUT /api/v1/runs/late/metadata HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n".encode()
            )
            # "100 Continue" is sent when the app starts reading the body: the request is in.
            assert raw.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            raw.sendall(b'{"operations": [')
            parts: list[bytes] = []

            def read() -> None:  # as a client does, while the server shuts down
                while chunk := raw.recv(65536):
                    parts.append(chunk)
                raw.close()

            reader = threading.Thread(target=read)
            reader.start()
        reader.join(timeout=30)
        received = b"".join(parts)
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), received[:300]
    assert b"retry-after: 1" in head.lower()
    assert json.loads(body) == {"error": "The server is shutting down; nothing was done"}
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
