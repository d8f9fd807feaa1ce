"""The storage interface, against every backend (``database_url`` is parametrized over them).

Each test opens the backend from a fresh database URL and checks one promise of
:class:`metaops.service.Storage`: snapshots and the log, all-or-nothing transactions,
idempotency keys, the outbox, holding a run, the change feed, durability across a
reopen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the service needs the server extra: pip install 'metaops[server]'")

from metaops import MetaopsError
from metaops.service import (
    LogEntry,
    RunExistsError,
    RunNotFoundError,
    SQLiteStorage,
    Storage,
    StorageError,
    open_storage,
)

OPS = '[{"type":"increment","key":"n","value":1}]'


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    opened = open_storage(database_url)
    yield opened
    opened.close()


def _create(storage: Storage, run_id: str, metadata: str = "{}", **related: str | None) -> None:
    storage.create_run(
        run_id,
        metadata=metadata,
        parent_id=related.get("parent_id"),
        root_id=related.get("root_id"),
        created_at=1000.0,
    )


def test_a_new_run_is_its_snapshot_at_version_0(storage: Storage) -> None:
    record = storage.create_run("r", metadata='{"a":1}', parent_id=None, root_id=None, created_at=12.5)
    assert (record.id, record.version, record.snapshot_version, record.created_at) == ("r", 0, 0, 12.5)
    assert storage.get_run("r") == record
    history = storage.history("r", None)
    assert history is not None
    assert (history.snapshot, history.snapshot_version, history.entries, history.version) == (
        '{"a":1}',
        0,
        (),
        0,
    )
    assert storage.get_run("nope") is None
    assert storage.history("nope", None) is None


def test_creating_a_run_twice_or_under_an_unknown_parent_is_refused(storage: Storage) -> None:
    _create(storage, "p")
    _create(storage, "c", parent_id="p", root_id="p")
    with pytest.raises(RunExistsError):
        _create(storage, "p", '{"other":1}')
    with pytest.raises(RunNotFoundError) as missing:
        _create(storage, "orphan", parent_id="ghost")
    assert missing.value.run_id == "ghost"
    with pytest.raises(RunNotFoundError):
        _create(storage, "orphan", parent_id="p", root_id="ghost")
    assert storage.get_run("orphan") is None
    history = storage.history("p", None)
    assert history is not None
    assert history.snapshot == "{}"
    child = storage.get_run("c")
    assert child is not None
    assert (child.parent_id, child.root_id) == ("p", "p")


def test_appends_log_versions_and_history_catches_up_from_any_of_them(storage: Storage) -> None:
    _create(storage, "r")
    for step in range(3):
        with storage.write("r") as tx:
            assert tx is not None
            assert tx.record.version == step
            assert tx.append(f"[{step}]") == step + 1
    record = storage.get_run("r")
    assert record is not None
    assert (record.version, record.snapshot_version) == (3, 0)
    full = storage.history("r", None)
    assert full is not None
    assert full.snapshot == "{}"
    assert full.entries == (LogEntry(1, "[0]"), LogEntry(2, "[1]"), LogEntry(3, "[2]"))
    tail = storage.history("r", 1)
    assert tail is not None
    assert (tail.snapshot, tail.snapshot_version, tail.entries) == (
        None,
        1,
        (LogEntry(2, "[1]"), LogEntry(3, "[2]")),
    )
    current = storage.history("r", 3)
    assert current is not None
    assert (current.snapshot, current.entries) == (None, ())


def test_a_snapshot_replaces_the_log_before_it(storage: Storage) -> None:
    _create(storage, "r")
    with storage.write("r") as tx:
        assert tx is not None
        tx.append("[1]")
    with storage.write("r") as tx:
        assert tx is not None
        assert tx.append("[2]", snapshot='{"at":2}') == 2
    with storage.write("r") as tx:
        assert tx is not None
        tx.append("[3]")
        # inside the transaction too
        assert tx.history(None).snapshot == '{"at":2}'
    record = storage.get_run("r")
    assert record is not None
    assert (record.version, record.snapshot_version) == (3, 2)
    behind = storage.history("r", 1)  # older than the snapshot: the snapshot comes back
    assert behind is not None
    assert (behind.snapshot, behind.snapshot_version, behind.entries) == (
        '{"at":2}',
        2,
        (LogEntry(3, "[3]"),),
    )
    recent = storage.history("r", 2)
    assert recent is not None
    assert (recent.snapshot, recent.entries) == (None, (LogEntry(3, "[3]"),))


def test_a_transaction_that_raises_writes_nothing(storage: Storage) -> None:
    _create(storage, "p")
    _create(storage, "c", parent_id="p")

    def fail() -> None:
        with storage.write("c") as tx:
            assert tx is not None
            tx.append(OPS)
            tx.enqueue("p", OPS, 1.0)
            tx.use_key("key-1", 1.0, operations=True)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    record = storage.get_run("c")
    assert record is not None
    assert record.version == 0
    assert storage.outbox_size() == 0
    with storage.write("c") as tx:
        assert tx is not None
        assert tx.key_use("key-1") is None
        assert tx.history(0).entries == ()


def test_queuing_for_an_unknown_run_fails_the_whole_transaction(storage: Storage) -> None:
    _create(storage, "r")

    def queue_for_ghost() -> None:
        with storage.write("r") as tx:
            assert tx is not None
            tx.append(OPS)
            tx.enqueue("ghost", OPS, 1.0)

    with pytest.raises(RunNotFoundError):
        queue_for_ghost()
    record = storage.get_run("r")
    assert record is not None
    assert record.version == 0
    with pytest.raises(RunNotFoundError), storage.write("ghost"):
        pass


def test_idempotency_keys_are_per_run_and_expire(storage: Storage) -> None:
    _create(storage, "a")
    _create(storage, "b")
    with storage.write("a") as tx:
        assert tx is not None
        assert tx.key_use("k") is None
        tx.use_key("k", 100.0, operations=True)
        tx.use_key("old", 10.0, operations=True)
    with storage.write("a") as tx:
        assert tx is not None
        assert tx.key_use("k") == "operations"
        assert tx.key_use("old") == "operations"
    with storage.write("b") as tx:
        assert tx is not None
        assert tx.key_use("k") is None
    assert storage.expire_keys(before=50.0) == 1
    with storage.write("a") as tx:
        assert tx is not None
        assert tx.key_use("k") == "operations"
        assert tx.key_use("old") is None


def test_a_key_remembers_whether_its_request_carried_operations(storage: Storage) -> None:
    """A key spent by an empty request (a client's fence) reads apart from one its body spent."""
    _create(storage, "r")
    with storage.write("r") as tx:
        assert tx is not None
        tx.use_key("body", 1.0, operations=True)
        tx.use_key("fence", 1.0, operations=False)
    with storage.write("r") as tx:
        assert tx is not None
        assert tx.key_use("body") == "operations"
        assert tx.key_use("fence") == "empty"
        assert tx.key_use("unused") is None


def test_the_outbox_keeps_order_and_settles_or_rejects_entries(storage: Storage) -> None:
    for run in ("p", "q", "c"):
        _create(storage, run)
    with storage.write("c") as tx:
        assert tx is not None
        first = tx.enqueue("q", "[1]", 1.0)
        second = tx.enqueue("p", "[2]", 1.0)
        third = tx.enqueue("p", "[3]", 1.0)
        fourth = tx.enqueue("q", "[4]", 1.0)
    assert first < second < third < fourth
    assert storage.outbox_runs(10) == ["q", "p"]
    assert storage.outbox_runs(1) == ["q"]
    assert (storage.outbox_size(), storage.outbox_size("p"), storage.outbox_size("c")) == (4, 2, 0)
    with storage.write("p") as tx:
        assert tx is not None
        entries = tx.pending(10)
        assert [(e.seq, e.run_id, e.operations) for e in entries] == [
            (second, "p", "[2]"),
            (third, "p", "[3]"),
        ]
        assert tx.pending(1) == entries[:1]
        tx.settle([second])
        tx.reject(entries[1], "too large", 5.0)
    assert storage.outbox_runs(10) == ["q"]
    [rejected] = storage.rejections("p")
    assert (rejected.seq, rejected.operations, rejected.reason, rejected.rejected_at) == (
        third,
        "[3]",
        "too large",
        5.0,
    )
    assert storage.rejections("q") == []


def test_a_held_run_is_skipped_when_not_waiting(storage: Storage) -> None:
    _create(storage, "r")
    held = threading.Event()
    release = threading.Event()
    seen: list[object] = []

    def holder() -> None:
        with storage.write("r") as tx:
            assert tx is not None
            held.set()
            release.wait(timeout=30)
            tx.append(OPS)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(timeout=30)
    with storage.write("r", wait=False) as tx:
        seen.append(tx)
    release.set()
    thread.join(timeout=30)
    assert seen == [None]
    with storage.write("r", wait=False) as tx:
        assert tx is not None
        assert tx.record.version == 1


def test_concurrent_writers_each_get_their_own_version(storage: Storage) -> None:
    _create(storage, "r")
    versions: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(20):
            with storage.write("r") as tx:
                assert tx is not None
                version = tx.append(OPS)
            with lock:
                versions.append(version)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(versions) == list(range(1, 81))
    history = storage.history("r", 0)
    assert history is not None
    assert [e.version for e in history.entries] == list(range(1, 81))


def test_listeners_hear_of_committed_versions_only(storage: Storage) -> None:
    _create(storage, "r")
    heard: list[tuple[str, int]] = []
    done = threading.Event()

    def listener(run_id: str, version: int) -> None:
        heard.append((run_id, version))
        if version == 2:
            done.set()

    unsubscribe = storage.subscribe(listener)
    with storage.write("r") as tx:
        assert tx is not None
        tx.append(OPS)

    def roll_back() -> None:
        with storage.write("r") as tx:
            assert tx is not None
            tx.append(OPS)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        roll_back()
    with storage.write("r") as tx:
        assert tx is not None
        tx.use_key("no change", 1.0, operations=False)
    with storage.write("r") as tx:
        assert tx is not None
        tx.append(OPS)
    assert done.wait(timeout=10)
    assert heard == [("r", 1), ("r", 2)]
    unsubscribe()
    with storage.write("r") as tx:
        assert tx is not None
        tx.append(OPS)
    assert heard == [("r", 1), ("r", 2)]


def test_completing_a_run_records_the_time_and_tells_the_listeners(storage: Storage) -> None:
    _create(storage, "r")
    heard: list[tuple[str, int]] = []
    done = threading.Event()

    def listener(run_id: str, version: int) -> None:
        heard.append((run_id, version))
        done.set()

    storage.subscribe(listener)
    record = storage.complete_run("r", 1234.5)
    assert done.wait(timeout=10)
    assert heard == [("r", 0)]
    assert record.completed_at == 1234.5
    assert storage.get_run("r") == record
    with pytest.raises(RunNotFoundError):
        storage.complete_run("ghost", 1.0)


def test_what_committed_is_there_after_reopening(database_url: str) -> None:
    first = open_storage(database_url)
    _create(first, "p")
    _create(first, "r", parent_id="p")
    with first.write("r") as tx:
        assert tx is not None
        tx.append(OPS)
        tx.enqueue("p", OPS, 1.0)
        tx.use_key("k", 1.0, operations=True)
    first.close()
    with pytest.raises(StorageError):
        first.get_run("r")
    second = open_storage(database_url)
    try:
        history = second.history("r", None)
        assert history is not None
        assert history.entries == (LogEntry(1, OPS),)
        assert second.outbox_runs(10) == ["p"]
        with second.write("r") as tx:
            assert tx is not None
            assert tx.key_use("k") == "operations"
    finally:
        second.close()


def test_unknown_database_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="expected sqlite:///"):
        open_storage("mysql://localhost/db")
    with pytest.raises(ValueError, match="expected sqlite:///"):
        open_storage("sqlite://")


def test_listeners_hear_other_processes_commits(database_url: str) -> None:
    """Two storages on one database stand for two processes: each hears the other's appends and
    completions, and its own commits once."""
    this, other = open_storage(database_url), open_storage(database_url)
    try:
        _create(this, "r")
        heard: list[tuple[str, int]] = []
        arrived = threading.Condition()

        def listener(run_id: str, version: int) -> None:
            with arrived:
                heard.append((run_id, version))
                arrived.notify_all()

        this.subscribe(listener)
        with other.write("r") as tx:
            assert tx is not None
            tx.append(OPS)
        other.complete_run("r", 5.0)
        with this.write("r") as tx:
            assert tx is not None
            tx.append(OPS)
        with arrived:
            assert arrived.wait_for(lambda: len(heard) >= 3, timeout=10), heard
        assert sorted(heard) == [("r", 1), ("r", 1), ("r", 2)]
        time.sleep(0.3)  # nothing more arrives: this process's own commit is not heard twice
        assert len(heard) == 3, heard
    finally:
        this.close()
        other.close()


def test_an_unknown_sqlite_synchronous_mode_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"synchronous must be one of .*got 'SOMETIMES'") as raised:
        SQLiteStorage(tmp_path / "runs.sqlite3", synchronous="SOMETIMES")
    assert isinstance(raised.value, MetaopsError)
    assert not (tmp_path / "runs.sqlite3").exists()
