"""The example server (examples/server) over HTTP on loopback, and its service and storage.

The HTTP tests run the server as a subprocess (``python -m examples.server`` on an
ephemeral port), so that it can be killed with SIGKILL and restarted on the same
database, and so that its threads really run beside the clients'.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import metaops
from examples.server import MetadataService, RunNotFoundError, ServiceConfig, SQLiteStorage, running_server
from examples.server.storage import OutboxEntry
from metaops import Append, Increment, MetadataTooLargeError, Set
from metaops.server import FlushPlan, RetryPolicy

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-d41d8cd9"
LIMIT = 16_384


class Server:
    """``python -m examples.server`` in a subprocess; the URL is read from its first line."""

    def __init__(self, db: Path, *args: str) -> None:
        self.db = db
        env = {**os.environ, "PYTHONPATH": str(ROOT), "METAOPS_SERVER_TOKEN": TOKEN}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "examples.server", "--db", str(db), "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=lambda: lines.put(self.process.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        try:
            first = lines.get(timeout=30)
        except queue.Empty:
            self.stop()
            raise RuntimeError("the server did not start within 30 s") from None
        found = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        if found is None:
            self.stop()
            _, err = self.process.communicate(timeout=10)
            raise RuntimeError(f"the server did not start: {first!r} {err}")
        self.port = int(found.group(1))

    def client(self, token: str | None = TOKEN) -> Client:
        """A keep-alive connection to this server."""
        return Client(self.port, token)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close_pipes()

    def stop(self) -> None:
        """SIGTERM, then wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


class Client:
    """JSON over one HTTP/1.1 connection, with the bearer token unless told otherwise."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        raw: bytes | None = None,
        auth: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        elif self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        payload = response.read()
        if response.will_close:
            self.connection.close()
        return response.status, json.loads(payload)

    def put_metadata(self, run_id: str, body: object) -> tuple[int, Any]:
        return self.request("PUT", f"/api/v1/runs/{run_id}/metadata", body)

    def get_metadata(self, run_id: str) -> Any:
        status, payload = self.request("GET", f"/api/v1/runs/{run_id}/metadata")
        assert status == 200, payload
        return payload["metadata"]

    def create_run(self, run_id: str, **spec: Any) -> Any:
        status, payload = self.request("POST", "/admin/runs", {"id": run_id, **spec})
        assert status == 201, payload
        return payload

    def run(self, run_id: str) -> Any:
        status, payload = self.request("GET", f"/admin/runs/{run_id}")
        assert status == 200, payload
        return payload

    def flush(self) -> None:
        status, payload = self.request("POST", "/admin/flush", {"timeout": 30})
        assert (status, payload) == (200, {"pending": 0})

    def close(self) -> None:
        self.connection.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module's tests (each test uses its own runs), with a 16 KB limit."""
    running = Server(tmp_path_factory.mktemp("server") / "runs.sqlite3", "--limit", str(LIMIT))
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    """A connection to the module's server."""
    connection = server.client()
    yield connection
    connection.close()


def _in_threads(count: int, work: Any) -> list[Any]:
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as error:  # reported below; a thread cannot fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


# ------------------------------------------------------------------ concurrency


def test_eight_threads_of_500_increments_give_exactly_4000(server: Server, client: Client) -> None:
    """8 writers x 500 racing increments on one run: every one lands, none twice."""
    client.create_run("counter")

    def writer(index: int) -> list[int]:
        own = server.client()
        statuses = [
            own.put_metadata("counter", {"operations": [{"type": "increment", "key": "n", "value": 1}]})[0]
            for _ in range(500)
        ]
        own.close()
        return statuses

    statuses = _in_threads(8, writer)
    assert all(status == 200 for per_thread in statuses for status in per_thread)
    client.flush()
    assert client.get_metadata("counter") == {"n": 4000}
    run = client.run("counter")
    assert (run["queued"], run["rejected"]) == (0, [])


def test_twenty_children_update_parent_and_root_concurrently_and_lose_nothing(
    server: Server, client: Client
) -> None:
    """20 children each send 10 updates with parent and root operations, all at once: the parent
    gets every increment and every appended item, each child's items in the order it sent them."""
    client.create_run("family-root")
    client.create_run("family-parent", parentId="family-root", metadata={"done": 0})
    for child in range(20):
        client.create_run(f"family-child-{child}", parentId="family-parent")

    def send_updates(index: int) -> None:
        own = server.client()
        for step in range(10):
            status, payload = own.put_metadata(
                f"family-child-{index}",
                {
                    "operations": [{"type": "increment", "key": "n", "value": 1}],
                    "parentOperations": [
                        {"type": "increment", "key": "done", "value": 1},
                        {"type": "append", "key": "log", "value": [index, step]},
                    ],
                    "rootOperations": [{"type": "increment", "key": "total", "value": 2}],
                },
            )
            assert status == 200, payload
        own.close()

    _in_threads(20, send_updates)
    client.flush()
    parent = client.get_metadata("family-parent")
    assert parent["done"] == 200
    assert sorted(map(tuple, parent["log"])) == [(c, s) for c in range(20) for s in range(10)]
    for index in range(20):
        assert [s for c, s in parent["log"] if c == index] == list(range(10))
    assert client.get_metadata("family-root") == {"total": 400}
    for index in range(20):
        assert client.get_metadata(f"family-child-{index}") == {"n": 10}
    assert client.run("family-parent")["rejected"] == []


def test_kill_between_requests_loses_no_acknowledged_update(tmp_path: Path) -> None:
    """Acknowledged updates survive SIGKILL, including parent operations still in the outbox."""
    db = tmp_path / "runs.sqlite3"
    # No inline or background flush: the parent operations stay queued until the restart.
    first = Server(db, "--no-inline-flush", "--flush-interval", "0")
    try:
        client = first.client()
        client.create_run("kill-parent")
        client.create_run("kill-child", parentId="kill-parent")
        for step in range(25):
            status, _ = client.put_metadata(
                "kill-child",
                {
                    "operations": [{"type": "increment", "key": "n", "value": 1}],
                    "parentOperations": [{"type": "append", "key": "log", "value": step}],
                },
            )
            assert status == 200
        assert client.get_metadata("kill-parent") == {}, "the parent operations were meant to stay queued"
        client.close()
    finally:
        first.kill()
    second = Server(db)
    try:
        client = second.client()
        assert client.get_metadata("kill-child") == {"n": 25}
        client.flush()
        assert client.get_metadata("kill-parent") == {"log": list(range(25))}
        client.close()
    finally:
        second.stop()


def test_kill_during_concurrent_writes_keeps_every_acknowledged_update(tmp_path: Path) -> None:
    """SIGKILL while 4 writers race: every acknowledged increment is there after the restart,
    and at most the 4 unanswered ones more."""
    db = tmp_path / "runs.sqlite3"
    first = Server(db)
    setup = first.client()
    setup.create_run("crash")
    setup.close()
    acknowledged = [0] * 4
    stop = threading.Event()

    def writer(index: int) -> None:
        own = first.client()
        while not stop.is_set():
            try:
                status, _ = own.put_metadata(
                    "crash", {"operations": [{"type": "increment", "key": "n", "value": 1}]}
                )
            except (OSError, http.client.HTTPException):
                return
            assert status == 200
            acknowledged[index] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while sum(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    first.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    acked = sum(acknowledged)
    assert acked >= 300
    second = Server(db)
    try:
        client = second.client()
        client.flush()
        stored = client.get_metadata("crash").get("n", 0)
        assert acked <= stored <= acked + 4
        client.close()
    finally:
        second.stop()


# ------------------------------------------------------------------ bad input


BIG = "x" * (LIMIT + 1)
OPS_INCREMENT = [{"type": "increment", "key": "n", "value": 1}]
TOO_DEEP = b"[" * 100_000 + b"]" * 100_000
OVERSIZE_BODY = b'{"metadata": {"a": "' + b"x" * (2 * 1024 * 1024) + b'"}}'

BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("malformed JSON", {"raw": b'{"operations": ['}, 400, "Invalid JSON body"),
    ("NaN", {"raw": b'{"operations": [{"type": "increment", "key": "n", "value": NaN}]}'}, 400,
     "NaN is not JSON"),
    ("not UTF-8", {"raw": b'{"metadata": {"a": "\xff"}}'}, 400, "not UTF-8"),
    ("body is a list", {"body": []}, 400, "request body: expected a JSON object"),
    ("no section at all", {"body": {"unknown": OPS_INCREMENT}}, 400, "got none of them"),
    ("operations not a list", {"body": {"operations": {"type": "set"}}}, 400, "operations: expected a list"),
    ("unknown type", {"body": {"operations": [{"type": "decrement", "key": "n", "value": 1}]}}, 400,
     "operation 0: field 'type'"),
    ("increment of a string", {"body": {"operations": [{"type": "increment", "key": "n", "value": "1"}]}},
     400, "field 'value'"),
    ("unsafe key", {"body": {"operations": [{"type": "set", "key": "__proto__", "value": {}}]}}, 400,
     "expected a safe key"),
    ("unsafe parent key", {"body": {"operations": OPS_INCREMENT, "parentOperations": [
        {"type": "append", "key": "ok", "value": 1}, {"type": "set", "key": "$.a.constructor", "value": 1}]}},
     400, "parentOperations: operation 1: field 'key'"),
    ("unsafe root path", {"body": {"operations": OPS_INCREMENT, "rootOperations": [
        {"type": "set", "key": "$.", "value": 1}]}}, 400, "rootOperations: operation 0"),
    ("metadata null", {"body": {"metadata": None}}, 400, "metadata: expected an object"),
    ("too large by operations", {"body": {"operations": [{"type": "set", "key": "big", "value": BIG}]}}, 413,
     f"over the limit of {LIMIT:,} bytes"),
    ("too large by replacement", {"body": {"metadata": {"big": BIG}}}, 413,
     f"over the limit of {LIMIT:,} bytes"),
    ("body over 2 MiB", {"raw": OVERSIZE_BODY}, 413, "Request body is"),
    ("body over 2 MiB without a token", {"raw": OVERSIZE_BODY, "auth": ""}, 401, "API key"),
    ("no token", {"body": {"operations": OPS_INCREMENT}, "auth": ""}, 401, "API key"),
    ("wrong token", {"body": {"operations": OPS_INCREMENT}, "auth": "Bearer nope"}, 401, "API key"),
    ("wrong scheme", {"body": {"operations": OPS_INCREMENT}, "auth": f"Basic {TOKEN}"}, 401, "API key"),
    ("nested past Python's JSON reader", {"raw": b'{"metadata": {"a": ' + TOO_DEEP + b"}}"}, 400,
     "Invalid JSON body: nested too deeply"),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_input_runs(server: Server) -> Iterator[Client]:
    """A child (with metadata) and its parent, which every bad request below aims at."""
    client = server.client()
    client.create_run("bad-parent", metadata={"p": 1})
    client.create_run("bad-child", parentId="bad-parent", metadata={"c": [1, 2]})
    yield client
    client.close()


def _snapshot(client: Client, *runs: str) -> list[Any]:
    return [client.run(run) for run in runs]


@pytest.mark.parametrize(
    ("case", "request_", "status", "words"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_their_status_and_change_nothing(
    bad_input_runs: Client, case: str, request_: dict[str, Any], status: int, words: str
) -> None:
    """Each bad request is answered with its status and a message saying what is wrong; neither
    the run nor its parent changes, and nothing is queued or rejected."""
    client = bad_input_runs
    before = _snapshot(client, "bad-child", "bad-parent")
    answer = client.request(
        "PUT",
        "/api/v1/runs/bad-child/metadata",
        request_.get("body"),
        raw=request_.get("raw"),
        auth=request_.get("auth"),
    )
    assert answer[0] == status, answer
    assert words in answer[1]["error"], answer
    client.flush()
    after = _snapshot(client, "bad-child", "bad-parent")
    assert after == before
    assert all(run["queued"] == 0 and run["rejected"] == [] for run in after)


def _raw_exchange(server: Server, head: bytes, timeout: float = 10.0) -> bytes:
    """Send ``head`` on a fresh socket and read until the server closes or stops sending."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as raw:
        raw.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = raw.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


@pytest.mark.parametrize("length", [3 * 1024 * 1024, 100 * 1024 * 1024])
def test_the_token_is_checked_before_the_body_is_read(server: Server, length: int) -> None:
    """A request without the token is answered 401 from its headers alone: the server neither
    waits for a body it will not read nor answers 413 for one it would not take anyway."""
    head = (
        f"PUT /api/v1/runs/bad-child/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    received = _raw_exchange(server, head)
    assert received.startswith(b"HTTP/1.1 401 "), received[:200]
    assert b"Invalid or Missing API key" in received


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that waits at most half a second on a quiet client."""
    running = Server(tmp_path_factory.mktemp("impatient") / "runs.sqlite3", "--request-timeout", "0.5")
    setup = running.client()
    setup.create_run("slow")
    setup.close()
    yield running
    running.stop()


@pytest.mark.parametrize(
    "head",
    [b"", b"PUT /api/v1/runs/slow/metadata HTTP/1.1\r\nHost: x\r\n"],
    ids=["nothing sent", "headers never finished"],
)
def test_a_quiet_client_loses_its_connection(impatient_server: Server, head: bytes) -> None:
    """A client that connects and goes quiet (before or during its headers) is hung up on after
    the request timeout, instead of holding a server thread for ever."""
    started = time.monotonic()
    assert _raw_exchange(impatient_server, head) == b""
    assert time.monotonic() - started < 5


def test_a_body_that_stops_arriving_is_408_and_changes_nothing(impatient_server: Server) -> None:
    """A body that stops short of its Content-Length is answered 408 after the request timeout,
    the connection closed, and the run left as it was."""
    body = json.dumps({"operations": OPS_INCREMENT}).encode()
    head = (
        "PUT /api/v1/runs/slow/metadata HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    received = _raw_exchange(impatient_server, head + body[:10])
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"Connection: close" in received
    assert b"10 of %d bytes" % len(body) in received
    client = impatient_server.client()
    assert client.get_metadata("slow") == {}
    client.close()


def test_unknown_runs_and_routes_are_404(client: Client) -> None:
    """An unknown run is 404 for GET and PUT, as the platform says it; so is an unknown route."""
    assert client.request("GET", "/api/v1/runs/run_nope/metadata") == (404, {"error": "Task Run not found"})
    assert client.put_metadata("run_nope", {"operations": OPS_INCREMENT}) == (
        404,
        {"error": "Task Run not found"},
    )
    status, payload = client.request("GET", "/api/v1/nothing")
    assert status == 404
    assert "No route" in payload["error"]


def test_get_needs_the_token(server: Server) -> None:
    """Reading metadata without the token is 401 too."""
    client = server.client(token=None)
    status, payload = client.request("GET", "/api/v1/runs/anything/metadata")
    assert status == 401
    assert "API key" in payload["error"]
    client.close()


def test_completed_runs_take_updates_for_an_hour(client: Client) -> None:
    """A run completed 10 minutes ago still takes updates; one completed 2 hours ago is 400."""
    now = time.time()
    client.create_run("done-recently")
    client.create_run("done-long-ago", metadata={"final": True})
    assert client.request("POST", "/admin/runs/done-recently/complete", {"completedAt": now - 600})[0] == 200
    assert client.request("POST", "/admin/runs/done-long-ago/complete", {"completedAt": now - 7200})[0] == 200
    assert client.put_metadata("done-recently", {"operations": OPS_INCREMENT}) == (
        200,
        {"metadata": {"n": 1}},
    )
    before = client.run("done-long-ago")
    status, payload = client.put_metadata("done-long-ago", {"operations": OPS_INCREMENT})
    assert (status, payload) == (400, {"error": "Cannot update metadata for a completed run"})
    assert client.run("done-long-ago") == before


def test_operations_take_precedence_over_metadata(client: Client) -> None:
    """An operations list (even empty) applies and metadata is ignored; metadata alone replaces."""
    client.create_run("precedence", metadata={"kept": 1})
    assert client.put_metadata("precedence", {"operations": [], "metadata": {"x": 1}}) == (
        200,
        {"metadata": {"kept": 1}},
    )
    assert client.run("precedence")["version"] == 0
    assert client.put_metadata("precedence", {"metadata": {"replaced": [1, "two"]}}) == (
        200,
        {"metadata": {"replaced": [1, "two"]}},
    )
    assert client.get_metadata("precedence") == {"replaced": [1, "two"]}


def _one_of_two_children_rejected(
    client: Client, parent: str, refused: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two children of ``parent`` each send it one operation, the first ``refused``, the
    second an increment of "seen"; both requests succeed. After a flush: the parent's
    record, and its one rejection."""
    greedy, modest = f"{parent}-greedy-child", f"{parent}-modest-child"
    client.create_run(greedy, parentId=parent)
    client.create_run(modest, parentId=parent)
    status, payload = client.put_metadata(
        greedy, {"operations": OPS_INCREMENT, "parentOperations": [refused]}
    )
    assert (status, payload) == (200, {"metadata": {"n": 1}})
    status, _ = client.put_metadata(
        modest,
        {"operations": OPS_INCREMENT, "parentOperations": [{"type": "increment", "key": "seen", "value": 1}]},
    )
    assert status == 200
    client.flush()
    record = client.run(parent)
    [rejection] = record["rejected"]
    return record, rejection


def test_parent_operations_past_the_parent_limit_are_rejected_with_the_reason(client: Client) -> None:
    """A child's parent operation that would overflow the parent is refused and recorded, not
    dropped silently; the child's own update and the other children's parent operations land."""
    client.create_run("full-parent", metadata={"pad": "y" * (LIMIT - 100)})
    parent, rejection = _one_of_two_children_rejected(
        client, "full-parent", {"type": "set", "key": "blob", "value": "z" * 200}
    )
    assert set(parent["metadata"]) == {"pad", "seen"}
    assert rejection["operations"] == [{"type": "set", "key": "blob", "value": "z" * 200}]
    assert f"over the limit of {LIMIT:,} bytes" in rejection["reason"]


def _nested(depth: int) -> dict[str, Any]:
    """``{"a": {"a": ... 1}}`` with ``depth`` objects."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


def _set_at_depth(depth: int, value: object) -> dict[str, Any]:
    """A set of ``value`` at the end of a path ``depth`` keys into ``_nested`` metadata."""
    return {"type": "set", "key": "$." + ".".join(["a"] * depth), "value": value}


def _grow_to_750_levels(client: Client, run_id: str) -> None:
    """Nest the run's metadata 750 levels deep, each request's values 250 levels at most."""
    for depth in (0, 250, 500):
        write = (
            {"type": "set", "key": "a", "value": _nested(250)}
            if depth == 0
            else _set_at_depth(depth, _nested(250))
        )
        status, payload = client.put_metadata(run_id, {"operations": [write]})
        assert status == 200, payload


def test_writes_nesting_metadata_too_deep_for_json_are_400_and_change_nothing(client: Client) -> None:
    """Values within bounds, written so deep into deep metadata that the result could not be
    written as JSON: 400 saying so, and the run is as it was (and still readable)."""
    client.create_run("deep-own")
    _grow_to_750_levels(client, "deep-own")
    before = client.run("deep-own")
    status, payload = client.put_metadata("deep-own", {"operations": [_set_at_depth(750, _nested(250))]})
    assert (status, payload) == (
        400,
        {"error": "the update would nest the metadata 1,000 levels deep, too deeply to be written as JSON"},
    )
    assert client.run("deep-own") == before


def test_parent_operations_nesting_too_deep_are_rejected_not_retried_forever(client: Client) -> None:
    """A child's parent operation that would nest the parent too deeply for JSON is rejected with
    the reason at the flush, like one over the size limit; the queue moves on."""
    client.create_run("deep-parent")
    _grow_to_750_levels(client, "deep-parent")
    parent, rejection = _one_of_two_children_rejected(client, "deep-parent", _set_at_depth(750, _nested(250)))
    assert parent["metadata"]["seen"] == 1
    assert (
        "would nest the metadata of run 'deep-parent' 1,000 levels deep, too deeply to be written as JSON"
        in rejection["reason"]
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "words"),
    [
        ("PUT", "/api/v1/runs/bad-child/metadata", {"metadata": {"a": _nested(300)}}, "metadata['a']['a']"),
        (
            "PUT",
            "/api/v1/runs/bad-child/metadata",
            {"operations": [{"type": "set", "key": "v", "value": _nested(300)}]},
            "operations: operation 0: field 'value'",
        ),
        (
            "PUT",
            "/api/v1/runs/bad-child/metadata",
            {
                "operations": OPS_INCREMENT,
                "parentOperations": [{"type": "append", "key": "v", "value": _nested(300)}],
            },
            "parentOperations: operation 0: field 'value'",
        ),
        ("POST", "/admin/runs", {"id": "deep-new", "metadata": {"a": _nested(300)}}, "metadata['a']['a']"),
    ],
    ids=["metadata", "operations", "parentOperations", "admin"],
)
def test_values_nested_past_the_library_limit_are_400_naming_the_field(
    bad_input_runs: Client, method: str, path: str, body: dict[str, Any], words: str
) -> None:
    """Values nested deeper than metaops takes (but not too deep for Python's JSON reader) are
    400 with metaops's message, which names the field and the depth; nothing changes."""
    client = bad_input_runs
    before = _snapshot(client, "bad-child", "bad-parent")
    status, payload = client.request(method, path, body)
    assert status == 400, payload
    assert words in payload["error"]
    assert f"nested at most {metaops.MAX_DEPTH} levels" in payload["error"]
    client.flush()
    assert _snapshot(client, "bad-child", "bad-parent") == before
    assert client.request("GET", "/admin/runs/deep-new")[0] == 404


def test_unicode_and_big_numbers_round_trip(client: Client) -> None:
    """Non-ASCII text, a lone surrogate, and ints past 2**53 are stored and answered as sent."""
    client.create_run("texts")
    value = {"jp": "日本語", "emoji": "🎉", "lone": "\ud800", "big": 2**60}
    status, payload = client.put_metadata(
        "texts", {"operations": [{"type": "set", "key": "v", "value": value}]}
    )
    assert (status, payload) == (200, {"metadata": {"v": value}})
    assert client.get_metadata("texts") == {"v": value}


# ------------------------------------------------------------------ the command line


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m examples.server ARGS`` to completion (it must not start serving)."""
    return subprocess.run(
        [sys.executable, "-m", "examples.server", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "METAOPS_SERVER_TOKEN": TOKEN, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _assert_one_error_line(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("python -m examples.server: error: ")
    assert words in line


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A port another process listens on: one line on stderr naming it, no traceback, exit 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run_cli("--db", str(tmp_path / "db"), "--port", str(port))
    _assert_one_error_line(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("directory missing", "cannot open the database"),
        ("not a database", "file is not a database"),
        ("bad limit in the environment", "TASK_RUN_METADATA_MAXIMUM_SIZE='lots'"),
    ],
)
def test_startup_errors_are_one_line_and_exit_2(tmp_path: Path, case: str, words: str) -> None:
    """A database that cannot be opened, or a bad limit in the environment: one line on stderr
    saying so, no traceback, exit 2."""
    (tmp_path / "notes.txt").write_text("not SQLite\n" * 100)
    db = {"directory missing": tmp_path / "missing" / "db", "not a database": tmp_path / "notes.txt"}
    env = {"TASK_RUN_METADATA_MAXIMUM_SIZE": "lots"} if case == "bad limit in the environment" else {}
    result = _run_cli("--db", str(db.get(case, tmp_path / "db")), "--port", "0", env=env)
    _assert_one_error_line(result, words)


@pytest.mark.parametrize(
    "args",
    [["--port", "70000"], ["--attempts", "0"], ["--request-timeout", "0"], ["--flush-interval", "-1"],
     ["--limit", "-5"]],
    ids=lambda args: args[0],
)  # fmt: skip
def test_bad_arguments_are_refused_with_the_usage_and_exit_2(args: list[str]) -> None:
    """Arguments out of range are refused by the argument parser (usage, one error line naming the
    option, exit 2), not by a traceback once the server is half started."""
    result = _run_cli(*args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: python -m examples.server")
    assert f"error: {args[0]}: " in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("module", ["examples.server", "benchmarks.load_server"])
def test_help_is_plain_text(module: str) -> None:
    """--help reads as plain text: no reStructuredText markup (``literal``, :role:) shows."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert f"usage: python -m {module}" in result.stdout
    assert "``" not in result.stdout
    assert re.search(r":[a-z]+:`", result.stdout) is None


# ------------------------------------------------------------------ the service, in process


class LosingStorage(SQLiteStorage):
    """SQLite whose first ``losses`` compare-and-swaps report a lost race."""

    def __init__(self, path: Path, losses: int) -> None:
        super().__init__(path)
        self.losses = losses

    def compare_and_swap(
        self,
        run_id: str,
        expected_version: int,
        new_metadata: dict[str, Any],
        enqueue: Sequence[OutboxEntry] = (),
    ) -> list[int] | None:
        if self.losses > 0:
            self.losses -= 1
            return None
        return super().compare_and_swap(run_id, expected_version, new_metadata, enqueue)


def _service(storage: SQLiteStorage, **config: Any) -> MetadataService:
    settings = {"policy": RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0), "flush_interval": 0.0}
    return MetadataService(storage, ServiceConfig(**{**settings, **config}), sleep=lambda s: None)


def test_updates_losing_every_race_are_flushed_before_the_answer(tmp_path: Path) -> None:
    """Own operations that lose every compare-and-swap go to the outbox and the inline flush
    writes them; the answer is the committed metadata."""
    service = _service(LosingStorage(tmp_path / "db", losses=2))
    service.create_run("r", metadata={"n": 1})
    assert service.update_metadata("r", {"operations": [{"type": "increment", "key": "n", "value": 4}]}) == {
        "n": 5
    }
    assert service.storage.read("r") == ({"n": 5}, 1)
    assert service.pending() == 0
    service.close()


def test_queued_operations_survive_a_restart_and_keep_their_order(tmp_path: Path) -> None:
    """Without inline flushing, lost-race operations wait in the outbox; while they wait, later
    updates queue behind them; a new service on the same database writes them all in order."""
    storage = LosingStorage(tmp_path / "db", losses=2)
    service = _service(storage, inline_flush=False)
    service.create_run("r")
    first = service.update_metadata("r", {"operations": [{"type": "append", "key": "log", "value": 1}]})
    assert first == {"log": [1]}  # the optimistic answer
    second = service.update_metadata("r", {"operations": [{"type": "append", "key": "log", "value": 2}]})
    assert second == {"log": [2]}  # applied to the stored version, which has neither yet
    assert service.storage.read("r") == ({}, 0)
    service.close()
    restarted = _service(SQLiteStorage(tmp_path / "db"))
    assert restarted.pending() == 2
    assert restarted.flush_all() == 0
    assert restarted.storage.read("r") == ({"log": [1, 2]}, 1)
    restarted.close()


def test_own_update_rejected_by_its_flush_is_answered_413(tmp_path: Path) -> None:
    """An own update queued behind others, which the flush finds would overflow, raises
    MetadataTooLargeError to its request; the earlier entry lands and the rejection is recorded."""
    service = _service(SQLiteStorage(tmp_path / "db"), limit=120)
    service.create_run("r")
    service.add("r", [Set("a", "x" * 80)])
    with pytest.raises(MetadataTooLargeError):
        service.update_metadata("r", {"operations": [{"type": "set", "key": "b", "value": "y" * 60}]})
    assert service.storage.read("r") == ({"a": "x" * 80}, 1)
    [rejection] = service.storage.rejections("r")
    assert rejection["operations"] == [{"type": "set", "key": "b", "value": "y" * 60}]
    service.close()


def test_sqlite_compare_and_swap_and_flush_commit_check_the_version(tmp_path: Path) -> None:
    """A stale version writes nothing, neither by compare-and-swap nor by a flush commit; a flush
    commit drops exactly its settled outbox rows with the metadata, in one transaction."""
    storage = SQLiteStorage(tmp_path / "db")
    storage.create_run("r", metadata={"n": 0}, parent_id=None, root_id=None)
    assert storage.compare_and_swap("r", 0, {"n": 1}) == []
    assert storage.compare_and_swap("r", 0, {"n": 99}, [("r", [Increment("n")])]) is None
    assert storage.read("r") == ({"n": 1}, 1)
    assert storage.pending() == []
    seq1, seq2 = storage.enqueue([("r", [Increment("n")]), ("r", [Append("log", "x")])])
    [entry1, entry2] = storage.pending()
    plan = FlushPlan("r", {"n": 2}, True, (entry1,))
    assert storage.commit_flush("r", 0, plan, at=0.0) is False
    assert [e.seq for e in storage.pending()] == [seq1, seq2]
    assert storage.commit_flush("r", 1, plan, at=0.0) is True
    assert storage.read("r") == ({"n": 2}, 2)
    assert [e.seq for e in storage.pending()] == [seq2]
    assert entry2.operations == (Append("log", "x"),)
    with pytest.raises(KeyError):
        storage.read("missing")
    storage.close()


def test_runs_get_their_root_from_the_parent(tmp_path: Path) -> None:
    """A child's root is its parent's root, or the parent itself when the parent is a root."""
    service = _service(SQLiteStorage(tmp_path / "db"))
    service.create_run("root")
    service.create_run("mid", parent_id="root")
    leaf = service.create_run("leaf", parent_id="mid")
    assert (leaf.parent_id, leaf.root_id) == ("mid", "root")
    with pytest.raises(RunNotFoundError):
        service.create_run("orphan", parent_id="nobody")
    assert service.storage.get_run("orphan") is None
    service.close()


def _break_outbox_for(db: Path, run_id: str) -> Callable[[], None]:
    """Make every outbox insert for ``run_id`` fail, as a full disk would; return the repair."""
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TRIGGER broken_outbox BEFORE INSERT ON pending_operations "
            f"WHEN NEW.run_id = '{run_id}' BEGIN SELECT RAISE(ABORT, 'disk full (injected)'); END"
        )

    def repair() -> None:
        with sqlite3.connect(db) as connection:
            connection.execute("DROP TRIGGER broken_outbox")

    return repair


FAMILY_UPDATE = {
    "operations": [{"type": "increment", "key": "n", "value": 1}],
    "parentOperations": [{"type": "append", "key": "log", "value": "child ran"}],
}


@pytest.mark.parametrize("losses", [0, 2], ids=["written", "own operations queued"])
def test_a_request_whose_parent_operations_cannot_be_queued_changes_nothing(
    tmp_path: Path, losses: int
) -> None:
    """When queuing the parent operations fails, the run's own update is not kept either (whether
    it was written or, having lost every race, queued): the retry then applies it exactly once."""
    db = tmp_path / "db"
    service = _service(LosingStorage(db, losses=losses))
    service.create_run("parent")
    service.create_run("child", parent_id="parent")
    repair = _break_outbox_for(db, "parent")
    with pytest.raises(sqlite3.IntegrityError, match="injected"):
        service.update_metadata("child", FAMILY_UPDATE)
    assert service.storage.read("child") == ({}, 0)
    assert (service.storage.pending(), service.pending()) == ([], 0)
    repair()
    assert service.update_metadata("child", FAMILY_UPDATE) == {"n": 1}
    assert service.storage.read("child") == ({"n": 1}, 1)
    assert service.storage.read("parent") == ({"log": ["child ran"]}, 1)
    service.close()


class FailingFlushStorage(SQLiteStorage):
    """SQLite whose flush commits fail while ``broken`` is set."""

    broken = True

    def commit_flush(self, run_id: str, expected_version: int, plan: FlushPlan, at: float) -> bool:
        if self.broken:
            raise OSError("disk I/O error (injected)")
        return super().commit_flush(run_id, expected_version, plan, at)


def test_a_failing_inline_flush_does_not_fail_the_committed_request(tmp_path: Path) -> None:
    """Once the run's write and its queued parent operations have committed, a failing inline flush
    is logged, not answered as an error (a client would retry and apply it twice); the queued
    operations are written by a later flush, once."""
    storage = FailingFlushStorage(tmp_path / "db")
    service = _service(storage)
    service.create_run("parent")
    service.create_run("child", parent_id="parent")
    assert service.update_metadata("child", FAMILY_UPDATE) == {"n": 1}
    assert storage.read("parent") == ({}, 0)
    assert service.pending() == 1
    storage.broken = False
    assert service.flush_all() == 0
    assert storage.read("parent") == ({"log": ["child ran"]}, 1)
    service.close()


class GatedStorage(SQLiteStorage):
    """SQLite whose reads of run ``slow`` wait for ``gate``; ``events`` records what happened when."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.events: list[str] = []

    def read(self, run_id: str) -> tuple[dict[str, Any], int]:
        if run_id == "slow" and not self.gate.is_set():
            self.entered.set()
            self.gate.wait(timeout=30)
        return super().read(run_id)

    def compare_and_swap(
        self,
        run_id: str,
        expected_version: int,
        new_metadata: dict[str, Any],
        enqueue: Sequence[OutboxEntry] = (),
    ) -> list[int] | None:
        seqs = super().compare_and_swap(run_id, expected_version, new_metadata, enqueue)
        self.events.append(f"wrote {run_id}")
        return seqs

    def close(self) -> None:
        self.events.append("closed")
        super().close()


def test_shutdown_lets_requests_in_flight_finish_before_closing_the_storage(tmp_path: Path) -> None:
    """Stopping the server while a request is half way through waits for it: it is answered 200
    with its update written, and only then is the storage closed. A request that arrives after
    the stop (on a kept-alive connection) is refused with 503 and changes nothing."""
    storage = GatedStorage(tmp_path / "db")
    service = _service(storage)
    service.create_run("slow")
    service.create_run("other")
    answers: queue.Queue[tuple[int, Any]] = queue.Queue()
    with running_server(service, TOKEN) as http_server:
        port = http_server.server_address[1]
        idle = Client(port)
        assert idle.get_metadata("other") == {}  # its handler thread now waits on the connection

        def slow_request() -> None:
            client = Client(port)
            answers.put(client.put_metadata("slow", {"operations": OPS_INCREMENT}))
            client.close()

        threading.Thread(target=slow_request, daemon=True).start()
        assert storage.entered.wait(timeout=10)
        # Past serve_forever's 0.5 s poll, so that the stop is well under way when it is let go.
        threading.Timer(1.0, storage.gate.set).start()
    assert answers.get(timeout=10) == (200, {"metadata": {"n": 1}})
    assert storage.events == ["wrote slow", "closed"]
    status, payload = idle.put_metadata("other", {"operations": OPS_INCREMENT})
    assert (status, payload) == (503, {"error": "The server is shutting down; nothing was done"})
    idle.close()
    reopened = SQLiteStorage(tmp_path / "db")
    assert (reopened.read("slow"), reopened.read("other")) == (({"n": 1}, 1), ({}, 0))
    reopened.close()
