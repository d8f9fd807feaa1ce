"""The service over HTTP on loopback: routes, answers and bad input, on every storage backend.

One server per backend for the module (each test uses its own runs), in a thread of
the test process, with a 16 KB metadata limit.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the service needs the server extra: pip install 'metaops[server]'")

import metaops
from metaops._json import MAX_METADATA_DEPTH
from metaops.service import RunningServer
from tests import _service_support as support
from tests._service_support import OPS_INCREMENT, TOKEN, Client, threaded_server

LIMIT = 16_384


server = support.per_backend_server(limit=LIMIT)
client = support.client


def _raw_exchange(port: int, head: bytes, timeout: float = 10.0) -> bytes:
    """Send ``head`` on a fresh socket and read until the server closes or stops sending."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        raw.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            try:
                chunk = raw.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


# ------------------------------------------------------------------ the routes


def test_create_update_and_read_a_run(client: Client) -> None:
    """The walkthrough of the README: create a run, update it, read it."""
    created = client.create_run("walk", metadata={"status": "queued"})
    assert (created["id"], created["metadata"], created["version"]) == ("walk", {"status": "queued"}, 0)
    status, payload = client.put_metadata(
        "walk",
        {
            "operations": [
                {"type": "set", "key": "status", "value": "running"},
                {"type": "increment", "key": "done", "value": 3},
            ]
        },
    )
    assert (status, payload) == (200, {"metadata": {"status": "running", "done": 3}})
    assert "idempotent-replayed" not in client.last_headers
    assert client.get_metadata("walk") == {"status": "running", "done": 3}
    assert client.run("walk")["version"] == 1


def test_head_answers_as_get_without_a_body(server: RunningServer, client: Client) -> None:
    client.create_run("head", metadata={"a": 1})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("HEAD", "/api/v1/runs/head/metadata", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"")
    assert response.getheader("content-length") == str(len(b'{"metadata":{"a":1}}'))
    connection.close()


def test_unknown_runs_and_routes_are_404_with_a_json_body(client: Client) -> None:
    """An unknown run is 404 for GET and PUT, as the platform says it; so is an unknown route."""
    assert client.request("GET", "/api/v1/runs/run_nope/metadata") == (404, {"error": "Task Run not found"})
    assert client.put_metadata("run_nope", {"operations": OPS_INCREMENT}) == (
        404,
        {"error": "Task Run not found"},
    )
    assert client.request("GET", "/admin/runs/run_nope") == (404, {"error": "Task Run not found"})
    status, payload = client.request("GET", "/api/v1/nothing")
    assert (status, payload) == (404, {"error": "No route for GET /api/v1/nothing"})
    status, payload = client.request("GET", "/api/v1/runs/walk/metadata/")
    assert status == 404


def test_methods_a_route_does_not_take_are_405_and_unknown_methods_501(server: RunningServer) -> None:
    client = Client(server.port)
    status, payload = client.request("DELETE", "/api/v1/runs/any/metadata")
    assert (status, payload) == (405, {"error": "DELETE is not allowed on /api/v1/runs/any/metadata"})
    assert set(client.last_headers["allow"].split(", ")) == {"HEAD", "GET", "PUT"}
    assert client.request("PUT", "/admin/flush", {}) == (405, {"error": "PUT is not allowed on /admin/flush"})
    status, payload = client.request("BREW", "/api/v1/runs/any/metadata")
    assert (status, payload) == (501, {"error": "BREW is not a method this server implements"})
    client.close()


def test_every_route_needs_the_token(server: RunningServer) -> None:
    """Without the token, or with another, every route is 401, unknown ones too."""
    anonymous = Client(server.port, token=None)
    for method, path in [
        ("GET", "/api/v1/runs/anything/metadata"),
        ("PUT", "/api/v1/runs/anything/metadata"),
        ("POST", "/admin/runs"),
        ("POST", "/admin/flush"),
        ("GET", "/nowhere"),
    ]:
        assert anonymous.request(method, path, {}) == (401, {"error": "Invalid or Missing API key"})
    for auth in ("", "Bearer nope", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN):
        assert anonymous.request("GET", "/api/v1/runs/any/metadata", auth=auth)[0] == 401
    anonymous.close()


def test_completed_runs_take_updates_for_an_hour(client: Client) -> None:
    """A run completed 10 minutes ago still takes updates; one completed 2 hours ago is 400."""
    now = time.time()
    client.create_run("done-recently")
    client.create_run("done-long-ago", metadata={"final": True})
    assert client.request("POST", "/admin/runs/done-recently/complete", {"completedAt": now - 600})[0] == 200
    status, record = client.request("POST", "/admin/runs/done-long-ago/complete", {"completedAt": now - 7200})
    assert (status, record["completed"], record["completedAt"]) == (200, True, now - 7200)
    assert client.put_metadata("done-recently", {"operations": OPS_INCREMENT}) == (
        200,
        {"metadata": {"n": 1}},
    )
    before = client.run("done-long-ago")
    status, payload = client.put_metadata("done-long-ago", {"operations": OPS_INCREMENT})
    assert (status, payload) == (400, {"error": "Cannot update metadata for a completed run"})
    assert client.run("done-long-ago") == before
    assert client.request("POST", "/admin/runs/done-recently/complete", {"completedAt": "soon"}) == (
        400,
        {"error": "completedAt: expected Unix seconds (a number)"},
    )


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


def test_a_body_with_only_parent_operations_is_accepted_and_queued(client: Client) -> None:
    """As the platform does: 200 with the run's metadata; the parent gets the operations."""
    client.create_run("only-parent", metadata={"p": 0})
    client.create_run("only-child", parentId="only-parent", metadata={"c": 1})
    status, payload = client.put_metadata(
        "only-child", {"parentOperations": [{"type": "increment", "key": "p", "value": 5}]}
    )
    assert (status, payload) == (200, {"metadata": {"c": 1}})
    client.flush()
    assert client.get_metadata("only-parent") == {"p": 5}
    assert client.run("only-child")["version"] == 0


def test_a_run_without_a_parent_takes_its_parent_and_root_operations_itself(client: Client) -> None:
    """The platform applies them to the run itself when it has no parent, or is its own root."""
    client.create_run("lonely", metadata={"n": 0})
    status, payload = client.put_metadata(
        "lonely",
        {
            "operations": OPS_INCREMENT,
            "parentOperations": [{"type": "append", "key": "log", "value": "as parent"}],
            "rootOperations": [{"type": "append", "key": "log", "value": "as root"}],
        },
    )
    assert (status, payload) == (200, {"metadata": {"n": 1}})
    client.flush()
    assert client.get_metadata("lonely") == {"n": 1, "log": ["as parent", "as root"]}
    client.create_run("lonely-child", parentId="lonely")
    assert (
        client.put_metadata(
            "lonely-child", {"rootOperations": [{"type": "increment", "key": "n", "value": 1}]}
        )[0]
        == 200
    )
    client.flush()
    assert client.get_metadata("lonely")["n"] == 2  # the parent is its child's root


def test_runs_get_their_root_from_the_parent(client: Client) -> None:
    """A child's root is its parent's root, or the parent itself when the parent is a root."""
    client.create_run("tree-root")
    client.create_run("tree-mid", parentId="tree-root")
    leaf = client.create_run("tree-leaf", parentId="tree-mid")
    assert (leaf["parentId"], leaf["rootId"]) == ("tree-mid", "tree-root")
    status, payload = client.request("POST", "/admin/runs", {"id": "tree-orphan", "parentId": "nobody"})
    assert (status, payload) == (404, {"error": "Task Run not found"})
    assert client.request("GET", "/admin/runs/tree-orphan")[0] == 404
    assert client.request("POST", "/admin/runs", {"id": "tree-root"}) == (
        400,
        {"error": "run 'tree-root' already exists"},
    )


def test_a_run_created_without_an_id_gets_one(client: Client) -> None:
    status, payload = client.request("POST", "/admin/runs", {"metadata": {"a": 1}})
    assert status == 201
    assert payload["id"].startswith("run_")
    assert client.get_metadata(payload["id"]) == {"a": 1}


def test_unicode_and_big_numbers_round_trip(client: Client) -> None:
    """Non-ASCII text, a lone surrogate, and ints past 2**53 are stored and answered as sent."""
    client.create_run("texts")
    value = {"jp": "日本語", "emoji": "🎉", "lone": "\ud800", "big": 2**60}
    status, payload = client.put_metadata(
        "texts", {"operations": [{"type": "set", "key": "v", "value": value}]}
    )
    assert (status, payload) == (200, {"metadata": {"v": value}})
    assert client.get_metadata("texts") == {"v": value}


# ------------------------------------------------------------------ bad input

BIG = "x" * (LIMIT + 1)
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
    ("empty idempotency key", {"body": {"operations": OPS_INCREMENT}, "headers": {"Idempotency-Key": ""}},
     400, "Idempotency-Key: expected 1 to 255 visible ASCII characters"),
    ("idempotency key with a space", {"body": {"operations": OPS_INCREMENT},
     "headers": {"Idempotency-Key": "two words"}}, 400, "Idempotency-Key"),
    ("idempotency key too long", {"body": {"operations": OPS_INCREMENT},
     "headers": {"Idempotency-Key": "k" * 256}}, 400, "Idempotency-Key"),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_input_runs(server: RunningServer) -> Iterator[Client]:
    """A child (with metadata) and its parent, which every bad request below aims at."""
    client = Client(server.port)
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
        headers=request_.get("headers"),
    )
    assert answer[0] == status, answer
    assert words in answer[1]["error"], answer
    client.flush()
    after = _snapshot(client, "bad-child", "bad-parent")
    assert after == before
    assert all(run["queued"] == 0 and run["rejected"] == [] for run in after)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"id": "\\ud800"}', "id: expected text encodable as UTF-8"),
        (
            b'{"id": "ok-surrogate-parent", "parentId": "\\ud800"}',
            "parentId: expected text encodable as UTF-8",
        ),
        (b'{"id": "ok-surrogate-root", "rootId": "x\\udfff"}', "rootId: expected text encodable as UTF-8"),
        (b'{"id": ""}', "id: expected a non-empty string"),
        (b'{"id": 7}', "id: expected a non-empty string"),
        (b'{"id": "a/b"}', "id: expected at most 255 characters without '/'"),
        (b'{"id": "' + b"r" * 256 + b'"}', "id: expected at most 255 characters"),
        (b'{"id": "deep-new", "metadata": "nope"}', "metadata: expected an object"),
        (b"[]", "run: expected a JSON object"),
    ],
)
def test_admin_runs_refuse_bad_ids_naming_the_field(bad_input_runs: Client, body: bytes, words: str) -> None:
    """A lone surrogate in an id (which no database can store as text), an empty, long or slashed
    id: 400 naming the field, and no run created."""
    status, payload = bad_input_runs.request("POST", "/admin/runs", raw=body)
    assert (status, words in payload["error"]) == (400, True), payload
    for run_id in ("ok-surrogate-parent", "ok-surrogate-root", "deep-new"):
        assert bad_input_runs.request("GET", f"/admin/runs/{run_id}")[0] == 404


def _nested(depth: int) -> dict[str, Any]:
    """``{"a": {"a": ... 1}}`` with ``depth`` objects."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "path", "body", "words", "bound"),
    [
        (
            "PUT",
            "/api/v1/runs/bad-child/metadata",
            {"metadata": {"a": _nested(300)}},
            "metadata['a']['a']",
            MAX_METADATA_DEPTH,
        ),
        (
            "PUT",
            "/api/v1/runs/bad-child/metadata",
            {"operations": [{"type": "set", "key": "v", "value": _nested(300)}]},
            "operations: operation 0: field 'value'",
            metaops.MAX_DEPTH,
        ),
        (
            "PUT",
            "/api/v1/runs/bad-child/metadata",
            {
                "operations": OPS_INCREMENT,
                "parentOperations": [{"type": "append", "key": "v", "value": _nested(300)}],
            },
            "parentOperations: operation 0: field 'value'",
            metaops.MAX_DEPTH,
        ),
        (
            "POST",
            "/admin/runs",
            {"id": "deep-new", "metadata": {"a": _nested(300)}},
            "metadata['a']['a']",
            MAX_METADATA_DEPTH,
        ),
    ],
    ids=["metadata", "operations", "parentOperations", "admin"],
)
def test_values_nested_past_the_library_limit_are_400_naming_the_field(
    bad_input_runs: Client, method: str, path: str, body: dict[str, Any], words: str, bound: int
) -> None:
    """Values nested deeper than metaops takes are 400 with metaops's message, which names the
    field and the depth (a whole metadata object's bound counts its top level, as deep as apply
    leaves metadata); nothing changes."""
    client = bad_input_runs
    before = _snapshot(client, "bad-child", "bad-parent")
    status, payload = client.request(method, path, body)
    assert status == 400, payload
    assert words in payload["error"]
    assert f"nested at most {bound} levels" in payload["error"]
    client.flush()
    assert _snapshot(client, "bad-child", "bad-parent") == before
    assert client.request("GET", "/admin/runs/deep-new")[0] == 404


def _set_at_depth(depth: int, value: object) -> dict[str, Any]:
    return {"type": "set", "key": "$." + ".".join(["a"] * depth), "value": value}


def _grow_deep(client: Client, run_id: str) -> None:
    """Try to nest the run's metadata 750 levels deep, each request's values 250 levels at most;
    apply stops it at MAX_METADATA_DEPTH (the deeper writes are unapplied)."""
    for depth in (0, 250, 500):
        write = (
            {"type": "set", "key": "a", "value": _nested(250)}
            if depth == 0
            else _set_at_depth(depth, _nested(250))
        )
        status, payload = client.put_metadata(run_id, {"operations": [write]})
        assert status == 200, payload


def test_writes_that_would_nest_metadata_too_deep_change_nothing(client: Client) -> None:
    """Values within bounds, written so deep into deep metadata that the result would nest past
    MAX_METADATA_DEPTH: reported unapplied (200, never an error), and the run is as it was."""
    client.create_run("deep-own")
    _grow_deep(client, "deep-own")
    before = client.run("deep-own")
    assert before["metadata"] == {"a": _nested(250)}
    status, payload = client.put_metadata("deep-own", {"operations": [_set_at_depth(250, _nested(250))]})
    assert (status, payload) == (200, {"metadata": before["metadata"]})
    assert client.run("deep-own") == before


def test_metadata_as_deep_as_apply_leaves_it_is_written_and_read_back(client: Client) -> None:
    """A run's own metadata, and a parent's replaced by a child's parent operation, nested exactly
    MAX_METADATA_DEPTH levels: stored, compared and written as JSON like any other."""
    deepest = _nested(MAX_METADATA_DEPTH)
    client.create_run("deepest-parent")
    client.create_run("deepest-child", parentId="deepest-parent")
    assert client.put_metadata("deepest-child", {"metadata": deepest}) == (200, {"metadata": deepest})
    replace = {"operations": [], "parentOperations": [{"type": "update", "value": deepest}]}
    assert client.put_metadata("deepest-child", replace)[0] == 200
    client.flush()
    assert client.run("deepest-parent")["metadata"] == deepest
    assert client.run("deepest-child")["metadata"] == deepest


def test_parent_operations_nesting_too_deep_are_rejected_and_the_others_land(client: Client) -> None:
    """A child's parent operation that would nest the parent too deeply is not applied, and never
    blocks the queue: the other child's operation lands."""
    client.create_run("deep-parent")
    _grow_deep(client, "deep-parent")
    client.create_run("deep-greedy", parentId="deep-parent")
    client.create_run("deep-modest", parentId="deep-parent")
    deep = {"operations": OPS_INCREMENT, "parentOperations": [_set_at_depth(250, _nested(250))]}
    assert client.put_metadata("deep-greedy", deep)[0] == 200
    modest = {
        "operations": OPS_INCREMENT,
        "parentOperations": [{"type": "increment", "key": "seen", "value": 1}],
    }
    assert client.put_metadata("deep-modest", modest)[0] == 200
    client.flush()
    record = client.run("deep-parent")
    assert record["metadata"] == {"a": _nested(250), "seen": 1}
    assert record["queued"] == 0


def test_parent_operations_past_the_parent_limit_are_rejected_with_the_reason(client: Client) -> None:
    """A child's parent operation that would overflow the parent is refused and recorded, not
    dropped silently; the child's own update and the other children's parent operations land."""
    client.create_run("full-parent", metadata={"pad": "y" * (LIMIT - 100)})
    client.create_run("full-greedy", parentId="full-parent")
    client.create_run("full-modest", parentId="full-parent")
    refused = {"type": "set", "key": "blob", "value": "z" * 200}
    assert client.put_metadata(
        "full-greedy", {"operations": OPS_INCREMENT, "parentOperations": [refused]}
    ) == (
        200,
        {"metadata": {"n": 1}},
    )
    seen = {"type": "increment", "key": "seen", "value": 1}
    assert (
        client.put_metadata("full-modest", {"operations": OPS_INCREMENT, "parentOperations": [seen]})[0]
        == 200
    )
    client.flush()
    record = client.run("full-parent")
    assert set(record["metadata"]) == {"pad", "seen"}
    [rejection] = record["rejected"]
    assert rejection["operations"] == [refused]
    assert f"over the limit of {LIMIT:,} bytes" in rejection["reason"]


# ------------------------------------------------------------------ the HTTP layer


@pytest.mark.parametrize("length", ["4_4", " +44 ", "-1", "0x2c", "44, 45"])
def test_a_malformed_content_length_is_400_with_a_json_body(server: RunningServer, length: str) -> None:
    """Content-Length is digits only: anything else is refused, not read as a number."""
    head = (
        f"PUT /api/v1/runs/bad-child/metadata HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    received = _raw_exchange(server.port, head + b"x" * 44)
    assert received.startswith(b"HTTP/1.1 400 "), received[:300]
    assert b"content-type: application/json" in received.lower()
    body = received.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["error"].startswith("Malformed HTTP request")


@pytest.mark.parametrize("length", [3 * 1024 * 1024, 100 * 1024 * 1024])
def test_the_token_is_checked_before_the_body_is_read(server: RunningServer, length: int) -> None:
    """A request without the token is answered 401 from its headers alone: the server neither
    waits for a body it will not read nor answers 413 for one it would not take anyway."""
    head = f"PUT /api/v1/runs/bad-child/metadata HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    received = _raw_exchange(server.port, head.encode())
    assert received.startswith(b"HTTP/1.1 401 "), received[:200]
    assert b"Invalid or Missing API key" in received


def test_a_body_over_2_mib_is_413_before_it_is_read(server: RunningServer) -> None:
    """A declared body over 2 MiB is refused from the headers, and the connection closed."""
    head = (
        "PUT /api/v1/runs/bad-child/metadata HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n"
    ).encode()
    received = _raw_exchange(server.port, head)
    assert received.startswith(b"HTTP/1.1 413 "), received[:200]
    assert b"connection: close" in received.lower()


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that waits at most half a second on a quiet client (SQLite: the backend plays no part)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('impatient') / 'runs.sqlite3'}"
    with threaded_server(url, request_timeout=0.5) as running:
        setup = Client(running.port)
        setup.create_run("slow")
        setup.close()
        yield running


@pytest.mark.parametrize(
    "head",
    [b"", b"PUT /api/v1/runs/slow/metadata HTTP/1.1\r\nHost: x\r\n"],
    ids=["nothing sent", "headers never finished"],
)
def test_a_quiet_client_loses_its_connection(impatient_server: RunningServer, head: bytes) -> None:
    """A client that connects and goes quiet (before or during its headers) is hung up on after
    the request timeout, instead of holding the connection for ever."""
    assert _raw_exchange(impatient_server.port, head) == b""


def test_a_body_that_stops_arriving_is_408_and_changes_nothing(impatient_server: RunningServer) -> None:
    """A body that stops short of its Content-Length is answered 408 after the request timeout,
    the connection closed, and the run left as it was."""
    body = json.dumps({"operations": OPS_INCREMENT}).encode()
    head = (
        "PUT /api/v1/runs/slow/metadata HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    received = _raw_exchange(impatient_server.port, head + body[:10])
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"connection: close" in received.lower()
    assert b"10 of %d bytes" % len(body) in received
    client = Client(impatient_server.port)
    assert client.get_metadata("slow") == {}
    client.close()


def test_connections_past_the_cap_are_refused_with_503(tmp_path: Path) -> None:
    """Idle sockets cannot pile up: past the cap, a new connection is answered 503 and closed,
    and once one closes, a new one is served."""
    from metaops.service import MetadataService, ServiceConfig, open_storage, running_server

    service = MetadataService(open_storage(f"sqlite:///{tmp_path / 'runs.sqlite3'}"), ServiceConfig())
    with running_server(service, TOKEN, max_connections=3) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
        time.sleep(0.2)  # let the server accept them
        received = _raw_exchange(server.port, b"GET /admin/runs/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 503 "), received[:200]
        assert b'{"error":"Too many connections; try again"}' in received
        idle.pop().close()
        time.sleep(0.2)
        client = Client(server.port)
        assert client.request("GET", "/admin/runs/x")[0] == 404
        client.close()
        for sock in idle:
            sock.close()


def test_a_client_that_hangs_up_early_leaves_no_traceback(
    server: RunningServer, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients that disconnect before reading their answer are the server's daily bread: nothing
    is logged as an error, and the update they sent was applied once."""
    client.create_run("hang-up", metadata={"pad": "p" * 8000})
    body = json.dumps({"operations": OPS_INCREMENT}).encode()
    head = (
        "PUT /api/v1/runs/hang-up/metadata HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(head + body)
            sock.close()  # a reset, before the answer
        deadline = time.monotonic() + 10
        while client.get_metadata("hang-up").get("n", 0) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert client.get_metadata("hang-up")["n"] == 5
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


def test_a_closing_service_answers_503_and_does_nothing(tmp_path: Path) -> None:
    """Once shutdown began, a request that starts is refused with 503 and Retry-After."""
    from metaops.service import MetadataService, ServiceConfig, open_storage, running_server

    service = MetadataService(open_storage(f"sqlite:///{tmp_path / 'runs.sqlite3'}"), ServiceConfig())
    with running_server(service, TOKEN) as server:
        client = Client(server.port)
        client.create_run("late")
        server.app.begin_closing()
        status, payload = client.put_metadata("late", {"operations": OPS_INCREMENT})
        assert (status, payload) == (503, {"error": "The server is shutting down; nothing was done"})
        assert client.last_headers["retry-after"] == "1"
        client.close()
        assert service.storage.get_run("late").version == 0  # type: ignore[union-attr]
