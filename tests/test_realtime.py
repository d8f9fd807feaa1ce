"""``GET /realtime/v1/runs/{runId}`` over real HTTP: the shape protocol, long-polls, bad input.

What the official SDK does with these answers is tested under node
(``tests/test_realtime_sdk.py``); here plain HTTP checks each answer, including the
4xx answers the SDK would only hang on.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import httpx
import pytest

from metaops.service import RunningServer
from metaops.service import _realtime as realtime_module
from metaops.service._realtime import REQUIRED_COLUMNS, RunHub

from . import _realtime_support as support
from ._realtime_support import http, realtime_of, shape_url

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}")  # no zone: the SDK appends "Z"


server = support.backend_server
client = support.client


@pytest.fixture
def hub(server: RunningServer) -> Iterator[RunHub]:
    found: RunHub = realtime_of(server)
    found.hold = 0.2  # a poll with nothing new answers soon
    yield found
    found.hold = realtime_module.HOLD


@pytest.fixture
def run_id(client: httpx.Client, hub: RunHub) -> str:
    run = "run_" + secrets.token_hex(4)
    assert client.post("/admin/runs", json={"id": run, "metadata": {"progress": 0}}).status_code == 201
    return run


def _put(client: httpx.Client, run_id: str, *operations: dict[str, Any]) -> None:
    answer = client.put(f"/api/v1/runs/{run_id}/metadata", json={"operations": list(operations)})
    assert answer.status_code == 200, answer.text


def _set(key: str, value: object) -> dict[str, Any]:
    return {"type": "set", "key": key, "value": value}


def _rows(answer: httpx.Response) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = answer.json()
    assert messages[-1] == {"headers": {"control": "up-to-date"}}
    return messages[:-1]


def _live(client: httpx.Client, run_id: str, handle: str, offset: str) -> httpx.Response:
    params = {"cursor": "", "handle": handle, "live": "true", "log": "full", "offset": offset}
    return client.get(shape_url(run_id), params=params)


def test_the_snapshot_is_the_row_as_the_sdk_parses_it(client: httpx.Client, run_id: str) -> None:
    answer = client.get(shape_url(run_id), params={"log": "full", "offset": "-1"})
    assert answer.status_code == 200
    headers = answer.headers
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert "electric-up-to-date" in headers
    assert "electric-cursor" not in headers
    assert re.fullmatch(r"\d+", headers["electric-handle"])
    assert headers["electric-offset"] == "0_0"
    schema = json.loads(headers["electric-schema"])
    [row] = _rows(answer)
    assert row["headers"] == {"operation": "insert"}
    value = row["value"]
    assert set(value) <= set(schema)
    assert set(value) >= REQUIRED_COLUMNS
    assert all(isinstance(v, str) or v is None for v in value.values())  # the platform's encoding
    assert (value["id"], value["friendlyId"], value["status"]) == (run_id, run_id, "EXECUTING")
    assert TIMESTAMP.fullmatch(value["createdAt"])
    assert TIMESTAMP.fullmatch(value["updatedAt"])
    assert value["completedAt"] is None
    assert (json.loads(value["metadata"]), value["metadataType"]) == ({"progress": 0}, "application/json")
    assert value["realtimeStreams"] == "{}"


def test_a_live_poll_answers_the_next_change_with_the_whole_row(client: httpx.Client, run_id: str) -> None:
    first = client.get(shape_url(run_id), params={"offset": "-1"})
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    answers: list[httpx.Response] = []
    poll = threading.Thread(target=lambda: answers.append(_live(client_copy, run_id, handle, offset)))
    with httpx.Client(base_url=str(client.base_url), headers=client.headers) as client_copy:
        poll.start()
        time.sleep(0.1)  # let it wait (it would answer the change at once anyway)
        _put(client, run_id, _set("progress", 0.5))
        poll.join(timeout=30)
    [answer] = answers
    assert answer.status_code == 200
    assert answer.headers["electric-offset"] == "1_0"
    assert "electric-cursor" in answer.headers
    assert "electric-schema" not in answer.headers
    [row] = _rows(answer)
    assert row["headers"] == {"operation": "update"}
    assert json.loads(row["value"]["metadata"]) == {"progress": 0.5}


def test_changes_between_two_polls_fold_into_the_newest_row(client: httpx.Client, run_id: str) -> None:
    first = client.get(shape_url(run_id), params={"offset": "-1"})
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    for step in range(1, 6):
        _put(client, run_id, _set("progress", step / 5))
    answer = _live(client, run_id, handle, offset)
    [row] = _rows(answer)
    assert json.loads(row["value"]["metadata"]) == {"progress": 1.0}
    assert answer.headers["electric-offset"] == "5_0"
    # Nothing newer: after the hold, up-to-date alone, the client's offset echoed.
    quiet = _live(client, run_id, handle, "5_0")
    assert (quiet.status_code, quiet.json(), quiet.headers["electric-offset"]) == (
        200,
        [{"headers": {"control": "up-to-date"}}],
        "5_0",
    )


def test_new_streams_and_completion_move_the_offset(client: httpx.Client, run_id: str) -> None:
    handle = client.get(shape_url(run_id), params={"offset": "-1"}).headers["electric-handle"]
    assert client.post(f"/realtime/v1/streams/{run_id}/tokens", content=b'"a"\n').status_code == 200
    with_stream = _live(client, run_id, handle, "0_0")
    assert with_stream.headers["electric-offset"] == "0_2"
    assert _rows(with_stream)[0]["value"]["realtimeStreams"] == '{"tokens"}'
    assert client.post(f"/admin/runs/{run_id}/complete").status_code == 200
    completed = _live(client, run_id, handle, "0_2")
    value = _rows(completed)[0]["value"]
    assert completed.headers["electric-offset"] == "0_3"
    assert (value["status"], TIMESTAMP.fullmatch(value["completedAt"]) is not None) == (
        "COMPLETED_SUCCESSFULLY",
        True,
    )


def test_one_change_wakes_many_polls_with_one_read(
    server: RunningServer, hub: RunHub, client: httpx.Client, run_id: str
) -> None:
    hub.hold = 60.0
    first = client.get(shape_url(run_id), params={"offset": "-1"})
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    pollers = 40
    answers: list[tuple[int, str | None]] = []
    path = shape_url(run_id) + f"?cursor=&handle={handle}&live=true&offset={offset}"
    auth = {"Authorization": client.headers["authorization"]}

    def poll() -> None:
        # http.client: an httpx.Client per thread would cost more than the test.
        connection = HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request("GET", path, headers=auth)
            response = connection.getresponse()
            response.read()
            answers.append((response.status, response.getheader("electric-offset")))
        finally:
            connection.close()

    threads = [threading.Thread(target=poll) for _ in range(pollers)]
    for thread in threads:
        thread.start()
    while _waiting(hub) < pollers:
        time.sleep(0.01)
    reads = hub.reads
    _put(client, run_id, _set("progress", 1))
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [(200, "1_0")] * pollers
    assert hub.reads - reads == 1


def _waiting(hub: RunHub) -> int:
    return sum(watch.refs for watch in hub._watches.values())


def test_a_poll_whose_client_left_stops_waiting(
    server: RunningServer, hub: RunHub, client: httpx.Client, run_id: str
) -> None:
    hub.hold = 300.0  # only the client's leaving can end this poll soon
    handle = client.get(shape_url(run_id), params={"offset": "-1"}).headers["electric-handle"]
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        request = (
            f"GET {shape_url(run_id)}?handle={handle}&live=true&offset=0_0 HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: {client.headers['authorization']}\r\n\r\n"
        )
        raw.sendall(request.encode())
        while _waiting(hub) == 0:
            time.sleep(0.01)
    while _waiting(hub) != 0:  # without the fix, this waits out the 300 s hold
        time.sleep(0.01)


MALFORMED = [
    {"offset": "abc"},
    {"offset": "1_"},
    {"offset": "-2"},
    {"offset": "1_0"},  # no handle
    {"offset": "-1", "live": "true", "handle": "1"},
    {"offset": "0_0", "handle": "x1"},
    {"offset": "0_0", "handle": "1", "live": "yes"},
    {"offset": "-1", "skipColumns": "metadata,id"},
    {"offset": "9" * 40 + "_0", "handle": "1"},
]


def test_malformed_parameters_are_400(client: httpx.Client, run_id: str) -> None:
    for params in MALFORMED:
        answer = client.get(shape_url(run_id), params=params)
        assert answer.status_code == 400, params
        assert "error" in answer.json()


def test_an_unknown_run_is_404_and_a_stale_handle_or_offset_409(client: httpx.Client, run_id: str) -> None:
    missing = client.get(shape_url("run_nope"), params={"offset": "-1"})
    assert (missing.status_code, missing.json()) == (404, {"error": "Task Run not found"})
    handle = client.get(shape_url(run_id), params={"offset": "-1"}).headers["electric-handle"]
    other = str(int(handle) + 1)
    for answer in (_live(client, run_id, other, "0_0"), _live(client, run_id, handle, "7_0")):
        assert answer.status_code == 409
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["electric-handle"] == handle
        assert answer.json() == [{"headers": {"control": "must-refetch"}}]


def test_skip_columns_leaves_them_out(client: httpx.Client, run_id: str) -> None:
    answer = client.get(shape_url(run_id), params={"offset": "-1", "skipColumns": "metadata,metadataType"})
    [row] = _rows(answer)
    assert "metadata" not in row["value"]
    assert "metadataType" not in row["value"]
    assert row["value"]["id"] == run_id


def test_without_a_token_401_and_a_prefetch_answers_at_once(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    with http(server, token=None) as anonymous:
        assert anonymous.get(shape_url(run_id), params={"offset": "-1"}).status_code == 401
    with http(server, token="wrong") as wrong:
        assert wrong.get(shape_url(run_id), params={"offset": "-1"}).status_code == 401
    handle = client.get(shape_url(run_id), params={"offset": "-1"}).headers["electric-handle"]
    # A non-live request with a handle (the SDK's prefetch) never waits.
    prefetch = client.get(shape_url(run_id), params={"offset": "0_0", "handle": handle})
    assert (prefetch.json(), prefetch.headers["electric-offset"]) == (
        [{"headers": {"control": "up-to-date"}}],
        "0_0",
    )
