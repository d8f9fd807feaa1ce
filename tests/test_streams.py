"""Stream routes over real HTTP: NDJSON writes, SSE reads that resume after a dropped connection."""

from __future__ import annotations

import time

import httpx

from metaops.service import RunningServer

from . import _realtime_support as support
from ._realtime_support import http, stream_hub_of

server = support.backend_server
client = support.client
run_id = support.run_id


def _write(client: httpx.Client, run_id: str, key: str, body: bytes, **params: str) -> httpx.Response:
    return client.post(f"/realtime/v1/streams/{run_id}/{key}", content=body, params=params)


class _Events:
    """An open SSE response, read event by event."""

    def __init__(self, client: httpx.Client, run_id: str, key: str, headers: dict[str, str] | None = None):
        self._context = client.stream("GET", f"/realtime/v1/streams/{run_id}/{key}", headers=headers or {})
        self.response = self._context.__enter__()
        self._lines = self.response.iter_lines()
        self.comments: list[str] = []

    def next(self) -> tuple[str, str] | None:
        """``(id, data)`` of the next event; ``None`` when the response ended."""
        fields: dict[str, str] = {}
        for line in self._lines:
            if line == "":
                if fields:
                    return fields["id"], fields["data"]
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        return None

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def test_a_consumer_resumes_after_a_dropped_connection_with_nothing_lost_or_repeated(
    client: httpx.Client, run_id: str
) -> None:
    assert _write(client, run_id, "tokens", b'"a"\n"b"\n"c"\n').json() == {
        "length": 3,
        "accepted": 3,
        "finished": False,
    }
    first = _Events(client, run_id, "tokens")
    assert first.response.headers["content-type"].startswith("text/event-stream")
    assert [first.next(), first.next()] == [("0", '"a"'), ("1", '"b"')]
    first.close()  # dropped mid-stream
    again = _Events(client, run_id, "tokens", {"Last-Event-ID": "1"})
    assert again.next() == ("2", '"c"')
    assert (
        _write(client, run_id, "tokens", b'{"text": "d\\r\\ne"}\n  \n[1, 2]\n', end="true").status_code == 200
    )
    assert again.next() == ("3", '{"text":"d\\r\\ne"}')
    assert again.next() == ("4", "[1,2]")
    assert again.next() is None  # finished: the response ends cleanly
    assert again.comments[-1] == ": end"
    again.close()


def test_a_reader_leaving_does_not_end_the_others(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    hub = stream_hub_of(server)
    leaving, staying = _Events(client, run_id, "s"), _Events(client, run_id, "s")
    while hub.waiting(run_id, "s") < 2:
        time.sleep(0.01)
    leaving.close()
    while hub.waiting(run_id, "s") > 1:  # the server noticed while both waited on the same change
        time.sleep(0.01)
    assert _write(client, run_id, "s", b'"still here"\n', end="true").status_code == 200
    assert staying.next() == ("0", '"still here"')
    assert staying.next() is None
    staying.close()


def test_a_consumer_may_start_before_the_stream_exists(client: httpx.Client, run_id: str) -> None:
    waiting = _Events(client, run_id, "later")
    assert waiting.response.status_code == 200
    assert _write(client, run_id, "later", b'"first"\n', end="true").status_code == 200
    assert waiting.next() == ("0", '"first"')
    assert waiting.next() is None
    waiting.close()


def test_from_the_latest_and_for_a_limited_time(client: httpx.Client, run_id: str) -> None:
    assert _write(client, run_id, "s", b"1\n2\n").status_code == 200
    latest = _Events(client, run_id, "s", {"X-Trigger-Stream-Start": "latest", "Timeout-Seconds": "0.5"})
    assert _write(client, run_id, "s", b"3\n").status_code == 200
    assert latest.next() == ("2", "3")
    assert latest.next() is None  # Timeout-Seconds passed: a clean end
    latest.close()


def test_bad_writes_and_reads_are_refused_and_change_nothing(client: httpx.Client, run_id: str) -> None:
    assert _write(client, run_id, "s", b'"ok"\n').status_code == 200
    refused = [
        (_write(client, run_id, "s", b'"fine"\n{oops\n'), 400, "line 2"),
        (_write(client, run_id, "s", b"2\n", index="5"), 409, "holds 1 chunks"),
        (_write(client, run_id, "s", b'"' + b"x" * 300_000 + b'"\n'), 413, "over the limit"),
        (_write(client, run_id, "s", b"1\n", index="x"), 400, "index"),
        (_write(client, run_id, "s", b"1\n", end="maybe"), 400, "end"),
        (_write(client, run_id, "bad key", b"1\n"), 400, "stream key"),
        (_write(client, "run_nope", "s", b"1\n"), 404, "not found"),
        (
            client.get(f"/realtime/v1/streams/{run_id}/s", headers={"Last-Event-ID": "x"}),
            400,
            "Last-Event-ID",
        ),
        (client.get(f"/realtime/v1/streams/{run_id}/.s"), 400, "stream key"),
        (client.get("/realtime/v1/streams/run_nope/s"), 404, "not found"),
    ]
    for answer, status, words in refused:
        assert answer.status_code == status, answer.text
        assert words in answer.json()["error"]
    assert _write(client, run_id, "s", b"", index="5").json()["length"] == 1  # a gap, even when empty
    gap = _write(client, run_id, "s", b"2\n", index="5")
    assert gap.json()["length"] == 1
    assert _write(client, run_id, "s", b"", end="true").json() == {
        "length": 1,
        "accepted": 0,
        "finished": True,
    }
    finished = _write(client, run_id, "s", b"2\n")
    assert (finished.status_code, "finished" in finished.json()["error"]) == (409, True)
    events = _Events(client, run_id, "s")
    assert [events.next(), events.next()] == [("0", '"ok"'), None]
    events.close()


def test_public_tokens_read_streams_but_never_write_them(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    token = client.post("/api/v1/auth/public-tokens", json={"scopes": [f"read:runs:{run_id}"]}).json()[
        "token"
    ]
    assert _write(client, run_id, "s", b"1\n", end="true").status_code == 200
    with http(server, token) as public:
        assert _write(public, run_id, "s", b"2\n").status_code == 403
        events = _Events(public, run_id, "s")
        assert [events.next(), events.next()] == [("0", "1"), None]
        events.close()
        assert public.get("/realtime/v1/streams/run_other/s").status_code == 403
