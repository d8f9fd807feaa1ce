"""Realtime across worker processes: ``metaops serve --workers 2`` on PostgreSQL.

A change written through one worker must wake the long-polls and event streams
waiting on every worker (LISTEN/NOTIFY), at once, not when their 20-second hold
ends: each poll's first answer must already carry the new row.
"""

from __future__ import annotations

import json
import threading
import time
from http.client import HTTPConnection
from typing import Any

import pytest

from ._service_support import TOKEN, ServeProcess

pytestmark = pytest.mark.slow

POLLS = 16  # over two workers: all on one of them has odds of 2 in 65,536


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _polls(port: int, path: str) -> tuple[list[Any], list[threading.Thread]]:
    answers: list[Any] = []
    threads = [threading.Thread(target=lambda: answers.append(_get(port, path))) for _ in range(POLLS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let them reach their workers and wait (an early one answers at once anyway)
    return answers, threads


def test_changes_and_completion_reach_polls_on_every_worker(postgres_url: str) -> None:
    server = ServeProcess(postgres_url, "--workers", "2")
    try:
        admin = server.client()
        admin.create_run("run_w", metadata={"n": 0})
        status, headers, _ = _get(server.port, "/realtime/v1/runs/run_w?offset=-1")
        assert status == 200
        handle = headers["electric-handle"]

        answers, threads = _polls(
            server.port, f"/realtime/v1/runs/run_w?handle={handle}&live=true&offset=0_0"
        )
        status, _ = admin.put_metadata(
            "run_w", {"operations": [{"type": "increment", "key": "n", "value": 1}]}
        )
        assert status == 200
        for thread in threads:
            thread.join(timeout=60)
        assert len(answers) == POLLS
        for status, headers, body in answers:
            assert (status, headers["electric-offset"]) == (200, "1_0")
            row = json.loads(body)[0]["value"]
            assert json.loads(row["metadata"]) == {"n": 1}

        answers, threads = _polls(
            server.port, f"/realtime/v1/runs/run_w?handle={handle}&live=true&offset=1_0"
        )
        assert admin.request("POST", "/admin/runs/run_w/complete")[0] == 200
        for thread in threads:
            thread.join(timeout=60)
        assert [json.loads(body)[0]["value"]["status"] for _, _, body in answers] == [
            "COMPLETED_SUCCESSFULLY"
        ] * POLLS
    finally:
        server.stop()


def test_stream_chunks_reach_readers_on_every_worker(postgres_url: str) -> None:
    server = ServeProcess(postgres_url, "--workers", "2")
    try:
        admin = server.client()
        admin.create_run("run_s")
        answers, threads = _polls(server.port, "/realtime/v1/streams/run_s/tokens")
        connection = HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request(
            "POST",
            "/realtime/v1/streams/run_s/tokens?end=true",
            body=b'"hi"\n',
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert connection.getresponse().status == 200
        connection.close()
        for thread in threads:
            thread.join(timeout=60)
        assert [body for _, _, body in answers] == [b'id: 0\ndata: "hi"\n\n: end\n\n'] * POLLS
    finally:
        server.stop()
