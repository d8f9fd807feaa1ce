"""Concurrent writers and killed servers, on every backend: nothing acknowledged is lost, nothing doubles.

The default run holds the two concurrency laws (8 writers × 500 increments to one
run; 20 children × 10 parent operations) against a server in a thread. The ``slow``
suite kills ``metaops serve`` with SIGKILL mid-load (one process, and one of several
workers) and counts acknowledged, stored, lost and duplicated updates.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from metaops.service import RunningServer
from tests._service_support import Client, ServeProcess, in_threads, threaded_server

INCREMENT = {"operations": [{"type": "increment", "key": "n", "value": 1}]}


@pytest.fixture
def server(database_url: str) -> Iterator[RunningServer]:
    with threaded_server(database_url) as running:
        yield running


@pytest.mark.parametrize(
    "increments", [pytest.param(40, id="8x40"), pytest.param(500, id="8x500", marks=pytest.mark.slow)]
)
def test_eight_writers_racing_on_one_run_lose_nothing(server: RunningServer, increments: int) -> None:
    """8 writers × N increments racing on one run: every one lands, none twice (8 × 500 = 4000 in
    the slow suite)."""
    admin = Client(server.port)
    admin.create_run("counter")

    def writer(index: int) -> list[int]:
        own = Client(server.port)
        statuses = [own.put_metadata("counter", INCREMENT)[0] for _ in range(increments)]
        own.close()
        return statuses

    statuses = in_threads(8, writer)
    assert [status for per_writer in statuses for status in per_writer] == [200] * (8 * increments)
    admin.flush()
    assert admin.get_metadata("counter") == {"n": 8 * increments}
    run = admin.run("counter")
    assert (run["version"], run["queued"], run["rejected"]) == (8 * increments, 0, [])
    admin.close()


def test_twenty_children_update_parent_and_root_concurrently_and_lose_nothing(server: RunningServer) -> None:
    """20 children each send 10 updates with parent and root operations, all at once: the parent
    gets every increment and every appended item, each child's items in the order it sent them."""
    admin = Client(server.port)
    admin.create_run("family-root")
    admin.create_run("family-parent", parentId="family-root", metadata={"done": 0})
    for child in range(20):
        admin.create_run(f"family-child-{child}", parentId="family-parent")

    def send_updates(index: int) -> None:
        own = Client(server.port)
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

    in_threads(20, send_updates)
    admin.flush()
    parent = admin.get_metadata("family-parent")
    assert parent["done"] == 200
    assert sorted(map(tuple, parent["log"])) == [(c, s) for c in range(20) for s in range(10)]
    for index in range(20):
        assert [s for c, s in parent["log"] if c == index] == list(range(10))
    assert admin.get_metadata("family-root") == {"total": 400}
    for index in range(20):
        assert admin.get_metadata(f"family-child-{index}") == {"n": 10}
    assert admin.run("family-parent")["rejected"] == []
    admin.close()


# ------------------------------------------------------------------ kill -9


@pytest.mark.slow
def test_kill_between_requests_loses_no_acknowledged_update(database_url: str) -> None:
    """Acknowledged updates survive SIGKILL, including parent operations still in the outbox."""
    # No inline or background drain: the parent operations stay queued until the restart.
    first = ServeProcess(database_url, "--no-inline-flush", "--flush-interval", "0")
    try:
        client = first.client()
        client.create_run("kill-parent")
        client.create_run("kill-child", parentId="kill-parent")
        for step in range(25):
            status, _ = client.put_metadata(
                "kill-child",
                {**INCREMENT, "parentOperations": [{"type": "append", "key": "log", "value": step}]},
            )
            assert status == 200
        assert client.get_metadata("kill-parent") == {}, "the parent operations were meant to stay queued"
        client.close()
    finally:
        first.kill()
    second = ServeProcess(database_url)
    try:
        client = second.client()
        assert client.get_metadata("kill-child") == {"n": 25}
        client.flush()
        assert client.get_metadata("kill-parent") == {"log": list(range(25))}
        client.close()
    finally:
        second.stop()


class _Load:
    """Writers sending increments with idempotency keys, retrying an unknown outcome with the same key.

    Counts what was acknowledged; a request whose answer was lost is retried (same key)
    until it is answered, so that it is applied exactly once whatever happened.
    """

    def __init__(self, port: int, run_id: str, writers: int, body: object = INCREMENT) -> None:
        self.port = port
        self.run_id = run_id
        self.body = body
        self.acknowledged = [0] * writers
        self.sent = [0] * writers
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(i,)) for i in range(writers)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _write(self, index: int) -> None:
        client = Client(self.port)
        step = 0
        while not self.stop.is_set():
            key = f"writer-{index}-{step}"
            self.sent[index] += 1
            while True:  # the same request, with the same key, until it is answered
                try:
                    status, _ = client.put_metadata(self.run_id, self.body, key=key)
                    break
                except (OSError, http.client.HTTPException):
                    client.close()
                    if self.stop.is_set():
                        return  # given up: it may or may not have been applied
                    time.sleep(0.05)
                    client = Client(self.port)
            assert status == 200, status
            self.acknowledged[index] += 1
            step += 1
        client.close()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _wait_for(condition: object, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_during_concurrent_writes_keeps_every_acknowledged_update_once(database_url: str) -> None:
    """SIGKILL while 4 writers race: after the restart every acknowledged increment is stored
    once; the unanswered ones (at most one per writer) at most once."""
    first = ServeProcess(database_url)
    setup = first.client()
    setup.create_run("crash")
    setup.close()
    load = _Load(first.port, "crash", 4)
    load.start()
    _wait_for(lambda: sum(load.acknowledged) >= 300)
    first.kill()
    load.join()
    acknowledged, sent = sum(load.acknowledged), sum(load.sent)
    assert acknowledged >= 300
    second = ServeProcess(database_url)
    try:
        client = second.client()
        client.flush()
        stored = client.get_metadata("crash").get("n", 0)
        lost = max(0, acknowledged - stored)
        duplicated = max(0, stored - sent)
        print(f"\nkill -9, 1 process: acknowledged {acknowledged}, sent {sent}, stored {stored}, "
              f"lost {lost}, duplicated {duplicated}")  # fmt: skip
        assert (lost, duplicated) == (0, 0)
        assert acknowledged <= stored <= sent
        client.close()
    finally:
        second.stop()


@pytest.mark.slow
def test_a_worker_killed_mid_load_loses_nothing_and_applies_nothing_twice(database_url: str) -> None:
    """--workers 2: SIGKILL one worker while 4 writers increment one run and 8 children send
    parent operations, each retrying an unknown outcome with the same idempotency key; the
    supervisor starts a new worker. Every acknowledged update is stored once, and the parent
    holds exactly one increment per stored child update."""
    server = ServeProcess(database_url, "--workers", "2")
    try:
        admin = server.client()
        admin.create_run("workers-run")
        admin.create_run("workers-parent")
        for child in range(8):
            admin.create_run(f"workers-child-{child}", parentId="workers-parent")
        admin.close()
        writers = _Load(server.port, "workers-run", 4)
        family = {**INCREMENT, "parentOperations": [{"type": "increment", "key": "done", "value": 1}]}
        children = [_Load(server.port, f"workers-child-{c}", 1, family) for c in range(8)]
        for load in (writers, *children):
            load.start()
        _wait_for(lambda: sum(writers.acknowledged) >= 200)
        workers = server.worker_pids()
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        _wait_for(lambda: len(set(server.worker_pids()) - {workers[0]}) == 2)
        before = sum(writers.acknowledged)
        _wait_for(lambda: sum(writers.acknowledged) >= before + 200)
        for load in (writers, *children):
            load.join()
        admin = server.client()
        admin.flush()
        stored = admin.get_metadata("workers-run").get("n", 0)
        acknowledged, sent = sum(writers.acknowledged), sum(writers.sent)
        child_stored = [admin.get_metadata(f"workers-child-{c}").get("n", 0) for c in range(8)]
        child_acknowledged = sum(sum(load.acknowledged) for load in children)
        child_sent = sum(sum(load.sent) for load in children)
        parent = admin.get_metadata("workers-parent").get("done", 0)
        print(
            f"\nkill -9 of 1 of 2 workers: writers acknowledged {acknowledged}, sent {sent}, "
            f"stored {stored}, "
            f"lost {max(0, acknowledged - stored)}, duplicated {max(0, stored - sent)}; "
            f"children acknowledged "
            f"{child_acknowledged}, stored {sum(child_stored)}, parent increments {parent}"
        )
        assert acknowledged <= stored <= sent
        assert child_acknowledged <= sum(child_stored) <= child_sent
        assert parent == sum(child_stored)
        admin.close()
    finally:
        assert server.stop() == 0
