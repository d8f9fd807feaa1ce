"""``metaops serve --workers 4`` on PostgreSQL: many processes, one database, nothing lost or doubled.

Real HTTP against a real server (``python -m metaops serve``) and a throwaway
PostgreSQL cluster. Every PUT carries an ``Idempotency-Key`` and is retried with it
until answered 200, as the client library does, so that a request whose worker died
mid-flight is neither lost (it is retried) nor applied twice (the retry is replayed
when the first attempt had committed). The counts (acknowledged, stored, lost,
duplicated) are printed.

Slow (a few minutes on two cores): ``pytest -m slow``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="metaops serve needs the server extra: pip install 'metaops[server]'")

from tests._postgres import PostgresCluster
from tests._serve import Served, Writer, WriterCounts

pytestmark = pytest.mark.slow

WORKERS = 4
WRITERS, INCREMENTS = 8, 500
CHILDREN, PARENT_OPERATIONS = 20, 10
INCREMENT = {"type": "increment", "key": "n", "value": 1}


@pytest.fixture
def database(postgres_cluster: PostgresCluster) -> str:
    """A fresh database (these tests start whole servers: one more CREATE DATABASE is nothing)."""
    return postgres_cluster.create_database()


@pytest.fixture
def served(database: str) -> Iterator[Served]:
    with Served(database, workers=WORKERS) as server:
        pids = server.wait_for_workers(WORKERS)
        assert len(pids) == WORKERS, f"expected {WORKERS} workers, found {pids}: {server.stderr()[-2000:]}"
        yield server


@dataclass
class Tally:
    """One counter: how many increments were acknowledged, and what the run holds."""

    name: str
    acknowledged: int
    stored: int

    @property
    def lost(self) -> int:
        return max(0, self.acknowledged - self.stored)

    @property
    def duplicated(self) -> int:
        return max(0, self.stored - self.acknowledged)

    def line(self) -> str:
        return (
            f"{self.name}: acknowledged {self.acknowledged}, stored {self.stored}, "
            f"lost {self.lost}, duplicated {self.duplicated}"
        )


def _create(served: Served, run_id: str, parent_id: str | None = None) -> None:
    client = served.client()
    try:
        spec: dict[str, Any] = {"id": run_id, "metadata": {}}
        if parent_id is not None:
            spec["parentId"] = parent_id
        status, answer, _ = client.call("POST", "/admin/runs", spec)
        assert status == 201, answer
    finally:
        client.close()


def _metadata(served: Served, run_id: str) -> dict[str, Any]:
    client = served.client()
    try:
        status, answer, _ = client.call("GET", f"/api/v1/runs/{run_id}/metadata")
        assert status == 200, answer
        metadata: dict[str, Any] = answer["metadata"]
        return metadata
    finally:
        client.close()


def _settled(served: Served, run_id: str, expected: int, *, patience: float = 120) -> int:
    """The run's ``n`` once its queued operations are all written (or ``patience`` runs out)."""
    deadline = time.monotonic() + patience
    while True:
        client = served.client()
        try:
            status, record, _ = client.call("GET", f"/admin/runs/{run_id}")
        finally:
            client.close()
        assert status == 200, record
        stored = int(_metadata(served, run_id).get("n", 0))
        if (record.get("queued") == 0 and stored >= expected) or time.monotonic() > deadline:
            return stored
        time.sleep(0.1)


def _in_threads(work: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def run(task: Callable[[], None]) -> None:
        try:
            task()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(task,)) for task in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class _Load:
    """8 writers incrementing one run, 20 children sending parentOperations to one parent."""

    def __init__(self, served: Served, *, writers: bool = True, children: bool = True) -> None:
        self.served = served
        self.writer_counts: list[WriterCounts] = []
        self.child_counts: list[WriterCounts] = []
        self.acknowledged = 0
        self._lock = threading.Lock()
        self.tasks: list[Callable[[], None]] = []
        if writers:
            _create(served, "counter")
            self.tasks += [self._writer for _ in range(WRITERS)]
        if children:
            _create(served, "parent")
            for index in range(CHILDREN):
                _create(served, f"child{index}", "parent")
            self.tasks += [lambda i=index: self._child(i) for index in range(CHILDREN)]  # type: ignore[misc]

    def _acked(self) -> None:
        with self._lock:
            self.acknowledged += 1

    def _writer(self) -> None:
        writer = Writer(self.served, "counter")
        self.writer_counts.append(writer.counts)
        try:
            for _ in range(INCREMENTS):
                writer.put({"operations": [INCREMENT]})
                self._acked()
        finally:
            writer.close()

    def _child(self, index: int) -> None:
        writer = Writer(self.served, f"child{index}")
        self.child_counts.append(writer.counts)
        try:
            for _ in range(PARENT_OPERATIONS):
                writer.put({"operations": [INCREMENT], "parentOperations": [INCREMENT]})
                self._acked()
        finally:
            writer.close()

    def tallies(self) -> list[Tally]:
        tallies = []
        if self.writer_counts:
            acked = sum(c.acknowledged for c in self.writer_counts)
            stored = int(_metadata(self.served, "counter").get("n", 0))
            tallies.append(Tally("one run, 8 writers x 500 increments", acked, stored))
        if self.child_counts:
            acked = sum(c.acknowledged for c in self.child_counts)
            own = sum(int(_metadata(self.served, f"child{i}").get("n", 0)) for i in range(CHILDREN))
            tallies.append(Tally("20 children x 10, their own increments", acked, own))
            stored = _settled(self.served, "parent", acked)
            tallies.append(Tally("20 children x 10 parentOperations, the parent", acked, stored))
        return tallies

    def report(self, title: str, capsys: pytest.CaptureFixture[str], extra: str = "") -> list[Tally]:
        tallies = self.tallies()
        counts = self.writer_counts + self.child_counts
        failed = sum(c.failed_attempts for c in counts)
        replayed = sum(c.replayed for c in counts)
        with capsys.disabled():
            print(f"\n{title}{extra}")
            for tally in tallies:
                print(f"  {tally.line()}")
            print(f"  attempts that failed and were retried: {failed}; answered as replays: {replayed}")
        return tallies


def test_eight_writers_on_one_run_store_every_increment_once(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    load = _Load(served, children=False)
    _in_threads(load.tasks)
    (tally,) = load.report(f"--workers {WORKERS}, no faults", capsys)
    assert (tally.acknowledged, tally.stored) == (WRITERS * INCREMENTS, WRITERS * INCREMENTS)


def test_twenty_children_sending_parent_operations_lose_none(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    load = _Load(served, writers=False)
    _in_threads(load.tasks)
    own, parent = load.report(f"--workers {WORKERS}, no faults", capsys)
    expected = CHILDREN * PARENT_OPERATIONS
    assert (own.acknowledged, own.stored) == (expected, expected)
    assert (parent.acknowledged, parent.stored) == (expected, expected)


def test_a_worker_killed_mid_load_loses_nothing_and_applies_nothing_twice(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    load = _Load(served)
    total = WRITERS * INCREMENTS + CHILDREN * PARENT_OPERATIONS
    killed: list[int] = []

    def killer() -> None:
        # Kill a worker once a third of the load is acknowledged, another at two thirds
        # (the first one's replacement, if the server restarted it, may be among the candidates).
        for fraction in (1 / 3, 2 / 3):
            while load.acknowledged < total * fraction:
                time.sleep(0.005)
            pids = served.wait_for_workers(WORKERS - 1, exclude=frozenset(killed))
            victim = pids[len(killed) % len(pids)]
            served.kill_worker(victim)
            killed.append(victim)

    _in_threads([*load.tasks, killer])
    restarted = served.wait_for_workers(WORKERS, exclude=frozenset(killed), timeout=30)
    extra = f" (SIGKILLed workers {killed}; {len(restarted)} workers alive after)"
    tallies = load.report(
        f"--workers {WORKERS}, a worker SIGKILLed at 1/3 and at 2/3 of the load", capsys, extra
    )
    for tally in tallies:
        assert (tally.lost, tally.duplicated) == (0, 0), tally.line()
    # The server goes on serving with whatever workers it has; more load is still applied once.
    after = Writer(served, "counter")
    try:
        answer = after.put({"operations": [INCREMENT]})
    finally:
        after.close()
    assert answer["metadata"]["n"] == WRITERS * INCREMENTS + 1


def test_lost_answers_retried_with_their_key_apply_once_whichever_worker_answers(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each request is sent, its connection dropped unread (the writer cannot know whether
    # it was applied), then sent again with the same key on a new connection: the kernel
    # hands that one to any of the workers, maybe while the first is still in flight.
    _create(served, "counter")
    writers, requests = 8, 50
    counts: list[WriterCounts] = []

    def writer() -> None:
        own = Writer(served, "counter")
        counts.append(own.counts)
        try:
            for _ in range(requests):
                own.put({"operations": [INCREMENT]}, abandon_first=True)
        finally:
            own.close()

    _in_threads([writer] * writers)
    stored = int(_metadata(served, "counter")["n"])
    tally = Tally("8 writers x 50, each answer lost once", sum(c.acknowledged for c in counts), stored)
    replayed = sum(c.replayed for c in counts)
    with capsys.disabled():
        print(f"\n--workers {WORKERS}, lost answers\n  {tally.line()}; answered as replays: {replayed}")
    assert (tally.acknowledged, tally.stored) == (writers * requests, writers * requests)
    # One key, asked of every worker in turn: applied once, then replayed by all.
    key_writer = Writer(served, "counter")
    answers = []
    try:
        for _ in range(20):
            answers.append(key_writer.put({"operations": [INCREMENT]}, key="one-key"))
            key_writer.close()  # a new connection each time: any worker may take it
    finally:
        key_writer.close()
    assert [a["metadata"]["n"] for a in answers] == [writers * requests + 1] * 20
    assert key_writer.counts.replayed == 19
