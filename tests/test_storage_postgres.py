"""What only the PostgreSQL backend promises: several sessions (standing in for processes)
on one database, its change feed across them, its startup, and dropped connections.

Each :class:`PostgresStorage` below has its own connection pool, as each worker
process of ``metaops serve --workers N`` has; the storage suite
(tests/test_storage.py) covers the interface itself on every backend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

pytest.importorskip(
    "psycopg_pool", reason="the service needs the server extra: pip install 'metaops[server]'"
)

from metaops.service import RunNotFoundError, StorageError
from metaops.service._storage_postgres import PostgresStorage
from tests._postgres import PostgresCluster

OPS = '[{"type":"increment","key":"n","value":1}]'


@pytest.fixture
def open_many(postgres_url: str) -> Iterator[Callable[[], PostgresStorage]]:
    """Open storages on one fresh schema, each with its own pool; all closed at the end."""
    opened: list[PostgresStorage] = []

    def open_one() -> PostgresStorage:
        storage = PostgresStorage(postgres_url, pool_size=4)
        opened.append(storage)
        return storage

    yield open_one
    for storage in opened:
        storage.close()


def _create(storage: PostgresStorage, run_id: str, parent_id: str | None = None) -> None:
    storage.create_run(run_id, metadata="{}", parent_id=parent_id, root_id=parent_id, created_at=1.0)


def _backends_waiting_on_a_lock(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _run_unless_it_waits_for_a_lock(url: str, work: Callable[[], object]) -> None:
    """Run ``work`` on a thread; fail (and let it go on) as soon as a backend waits on a row lock."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.01)
        if thread.is_alive() and _backends_waiting_on_a_lock(url):
            pytest.fail("the work waited for a lock held by another session")
    if errors:
        raise errors[0]


def test_a_run_held_by_one_process_is_skipped_by_the_others_and_awaited_when_asked(
    open_many: Callable[[], PostgresStorage],
) -> None:
    first, second = open_many(), open_many()
    _create(first, "r")
    waited: list[int] = []

    def wait_for_it() -> None:
        with second.write("r") as tx:
            assert tx is not None
            waited.append(tx.record.version)

    with first.write("r") as tx:
        assert tx is not None
        with second.write("r", wait=False) as skipped:
            assert skipped is None
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        tx.append(OPS)
    waiter.join()
    # The waiter read the run only once the holder had committed its version.
    assert waited == [1]
    with pytest.raises(RunNotFoundError), second.write("ghost", wait=False):
        pass


def test_a_child_queues_for_its_parent_while_another_process_holds_the_parent(
    postgres_url: str, open_many: Callable[[], PostgresStorage]
) -> None:
    # FOR UPDATE on the parent would make the child's outbox row (a foreign key to the
    # parent, taking a key-share lock) wait for the parent's writer.
    draining, child_side = open_many(), open_many()
    _create(draining, "parent")
    _create(draining, "child", parent_id="parent")
    seqs: list[int] = []

    def child_update() -> None:
        with child_side.write("child") as tx:
            assert tx is not None
            tx.append(OPS)
            seqs.append(tx.enqueue("parent", OPS, 2.0))

    with draining.write("parent") as tx:
        assert tx is not None
        _run_unless_it_waits_for_a_lock(postgres_url, child_update)
        # Committed while the parent is held; each statement sees what committed before it.
        assert [entry.seq for entry in tx.pending(10)] == seqs


def test_any_process_drains_what_another_queued(open_many: Callable[[], PostgresStorage]) -> None:
    queuing, draining = open_many(), open_many()
    _create(queuing, "parent")
    for child in ("a", "b"):
        _create(queuing, child, parent_id="parent")
        with queuing.write(child) as tx:
            assert tx is not None
            tx.enqueue("parent", f'[{{"type":"increment","key":"{child}","value":1}}]', 3.0)
    assert draining.outbox_runs(10) == ["parent"]
    with draining.write("parent", wait=False) as tx:
        assert tx is not None
        entries = tx.pending(10)
        assert [entry.operations for entry in entries] == [
            '[{"type":"increment","key":"a","value":1}]',
            '[{"type":"increment","key":"b","value":1}]',
        ]
        tx.append(OPS)
        tx.settle([entry.seq for entry in entries])
    assert queuing.outbox_size() == 0


def _append_then_fail(storage: PostgresStorage, run_id: str) -> None:
    with storage.write(run_id) as tx:
        assert tx is not None
        tx.append(OPS)
        raise RuntimeError("rolled back")


def test_every_process_hears_every_commit_once_and_no_rollback(
    open_many: Callable[[], PostgresStorage],
) -> None:
    first, second = open_many(), open_many()
    _create(first, "r")
    heard_first: list[tuple[str, int]] = []
    heard_second: list[tuple[str, int]] = []
    both = threading.Condition()

    def listener(heard: list[tuple[str, int]]) -> Callable[[str, int], None]:
        def on_change(run_id: str, version: int) -> None:
            with both:
                heard.append((run_id, version))
                both.notify_all()

        return on_change

    first.subscribe(listener(heard_first))
    second.subscribe(listener(heard_second))
    with pytest.raises(RuntimeError, match="rolled back"):
        _append_then_fail(first, "r")
    with first.write("r") as tx:
        assert tx is not None
        tx.append(OPS)
    with second.write("r") as tx:
        assert tx is not None
        tx.append(OPS)
    with both:
        # Notifications arrive in commit order: once each side has heard version 2,
        # it has heard (or never will hear) everything before it.
        both.wait_for(lambda: ("r", 2) in heard_first and ("r", 2) in heard_second, timeout=30)
    assert sorted(heard_first) == [("r", 1), ("r", 2)]
    assert sorted(heard_second) == [("r", 1), ("r", 2)]


def test_n_processes_starting_at_once_create_the_schema_once(postgres_url: str) -> None:
    workers = 6
    ready = threading.Barrier(workers)
    opened: list[PostgresStorage] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start() -> None:
        ready.wait()
        try:
            storage = PostgresStorage(postgres_url, pool_size=1)
        except BaseException as error:
            with lock:
                errors.append(error)
            return
        with lock:
            opened.append(storage)

    threads = [threading.Thread(target=start) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(opened) == workers
        _create(opened[0], "r")
        assert opened[-1].get_run("r") is not None
    finally:
        for storage in opened:
            storage.close()


def test_the_url_shown_hides_the_password_and_bad_databases_are_storage_errors(
    postgres_cluster: PostgresCluster,
) -> None:
    with pytest.raises(StorageError, match="no schema") as no_schema:
        PostgresStorage(postgres_cluster.url(schema="missing"))
    assert "missing" in str(no_schema.value)
    url = f"postgresql://postgres:s3cret@127.0.0.1:{postgres_cluster.port}/nosuchdb"
    with pytest.raises(StorageError, match="nosuchdb") as unknown:
        PostgresStorage(url, timeout=5)
    assert "s3cret" not in str(unknown.value)
    assert "postgres:***@" in str(unknown.value)


def test_a_dropped_connection_fails_one_call_then_the_pool_and_the_listener_recover(
    postgres_cluster: PostgresCluster, open_many: Callable[[], PostgresStorage]
) -> None:
    storage, other = open_many(), open_many()
    _create(storage, "r")
    heard: list[int] = []
    condition = threading.Condition()

    def on_change(run_id: str, version: int) -> None:
        with condition:
            heard.append(version)
            condition.notify_all()

    storage.subscribe(on_change)
    # Kill every session but ours: the pools' connections and the listening one.
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    for _ in range(5):  # each pooled connection found dead fails its call once, then is replaced
        try:
            with other.write("r") as tx:
                assert tx is not None
                tx.append(OPS)
            break
        except StorageError:
            continue
    else:
        pytest.fail("the pool never recovered from its connections being dropped")
    record = other.get_run("r")
    assert record is not None
    assert record.version == 1
    # A change committed while the listener reconnects is not announced; one after it is.
    for _ in range(50):
        with other.write("r") as tx:
            assert tx is not None
            version = tx.append(OPS)
        with condition:
            if condition.wait_for(lambda: version in heard, timeout=0.2):  # noqa: B023
                break
    else:
        pytest.fail("the listener never heard a change again after its connection was dropped")


def test_deployments_in_two_schemas_neither_see_nor_hear_each_other(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    their_url = postgres_cluster.create_schema()
    ours, theirs, their_other_process = (PostgresStorage(url) for url in (postgres_url, their_url, their_url))
    try:
        assert ours.channel != theirs.channel
        heard: list[tuple[str, int]] = []
        condition = threading.Condition()

        def on_change(run_id: str, version: int) -> None:
            with condition:
                heard.append((run_id, version))
                condition.notify_all()

        theirs.subscribe(on_change)
        for storage, run_id in ((ours, "ours"), (their_other_process, "theirs")):
            _create(storage, run_id)
            with storage.write(run_id) as tx:
                assert tx is not None
                tx.append(OPS)
        # Our commit went out first: had their listener been on our channel, it would have come first.
        with condition:
            condition.wait_for(lambda: ("theirs", 1) in heard, timeout=30)
        assert heard == [("theirs", 1)]
        assert theirs.get_run("ours") is None
        assert ours.get_run("theirs") is None
    finally:
        for storage in (ours, theirs, their_other_process):
            storage.close()


def test_tables_of_another_schema_version_are_refused(postgres_url: str) -> None:
    PostgresStorage(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE metaops_schema SET version = 99")
    with pytest.raises(StorageError, match="version 99"):
        PostgresStorage(postgres_url)


def test_tables_of_version_1_are_migrated_once_and_their_keys_read_as_unrecorded(postgres_url: str) -> None:
    """Version 1 did not record whether a key's request carried operations: the column is added
    (by the first process to start), and the keys stored before it are ``"unrecorded"``."""
    storage = PostgresStorage(postgres_url)
    _create(storage, "r")
    storage.close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("ALTER TABLE metaops_idempotency_keys DROP COLUMN carried_operations")
        db.execute("DELETE FROM metaops_schema")
        db.execute("INSERT INTO metaops_schema (version) VALUES (1)")
        db.execute("INSERT INTO metaops_idempotency_keys (run_id, key, used_at) VALUES ('r', 'earlier', 1.0)")
    migrated, again = PostgresStorage(postgres_url), PostgresStorage(postgres_url)
    try:
        with migrated.write("r") as tx:
            assert tx is not None
            assert tx.key_use("earlier") == "unrecorded"
            tx.use_key("fence", 2.0, operations=False)
        with again.write("r") as tx:
            assert tx is not None
            assert (tx.key_use("earlier"), tx.key_use("fence")) == ("unrecorded", "empty")
        with psycopg.connect(postgres_url, autocommit=True) as db:
            assert db.execute("SELECT max(version) FROM metaops_schema").fetchone() == (2,)
    finally:
        migrated.close()
        again.close()


class _Heard:
    """What a listener heard, and a way to wait until it heard something."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self._condition = threading.Condition()

    def __call__(self, *item: object) -> None:
        with self._condition:
            self.items.append(item if len(item) > 1 else item[0])
            self._condition.notify_all()

    def wait_for(self, item: object) -> None:
        with self._condition:
            self._condition.wait_for(lambda: item in self.items, timeout=30)
        assert item in self.items, f"never heard {item!r}; heard {self.items}"


def test_completing_a_run_is_announced_to_every_process(open_many: Callable[[], PostgresStorage]) -> None:
    # A Realtime subscriber stops at completion: it must hear of it, at the run's version.
    first, second = open_many(), open_many()
    _create(first, "r")
    with first.write("r") as tx:
        assert tx is not None
        tx.append(OPS)
    here, there = _Heard(), _Heard()
    first.subscribe(here)
    second.subscribe(there)
    record = first.complete_run("r", 50.0)
    assert (record.version, record.completed_at) == (1, 50.0)
    here.wait_for(("r", 1))
    there.wait_for(("r", 1))
    with pytest.raises(RunNotFoundError):
        first.complete_run("ghost", 50.0)


def test_subscribing_again_after_unsubscribing_hears_each_change_once(
    open_many: Callable[[], PostgresStorage],
) -> None:
    storage, other = open_many(), open_many()
    _create(storage, "r")
    storage.subscribe(_Heard())()  # subscribed, then unsubscribed at once
    heard = _Heard()
    storage.subscribe(heard)
    for writer in (other, other):
        with writer.write("r") as tx:
            assert tx is not None
            tx.append(OPS)
    heard.wait_for(("r", 2))  # notifications arrive in commit order: version 1 came before
    assert heard.items == [("r", 1), ("r", 2)]


def test_other_modules_get_pooled_connections_and_their_own_channels(
    postgres_url: str, open_many: Callable[[], PostgresStorage]
) -> None:
    storage = open_many()
    with storage.connection() as db, db.transaction():
        db.execute("CREATE TABLE streams_of_mine (id int)")
        db.execute("INSERT INTO streams_of_mine VALUES (1)")
    with pytest.raises(StorageError, match="no_such_table"), storage.connection() as db:
        db.execute("SELECT * FROM no_such_table")
    heard = _Heard()
    stop = storage.listen("my channel", heard)
    with psycopg.connect(postgres_url, autocommit=True) as elsewhere:
        elsewhere.execute("SELECT count(*) FROM streams_of_mine")
        elsewhere.execute("NOTIFY \"my channel\", 'one'")
        heard.wait_for("one")
        stop()
        elsewhere.execute("NOTIFY \"my channel\", 'two'")
        # Stopped: 'two' goes unheard. Wait for a later change on the feed to be sure it came and went.
        feed = _Heard()
        storage.subscribe(feed)
        _create(storage, "r")
        with open_many().write("r") as tx:  # another process
            assert tx is not None
            tx.append(OPS)
        feed.wait_for(("r", 1))
    assert heard.items == ["one"]


def test_a_process_starting_beside_busy_writers_does_not_wait_for_them(
    postgres_url: str, open_many: Callable[[], PostgresStorage]
) -> None:
    # A worker restarted under load: its startup must not lock the tables that requests write.
    running = open_many()
    _create(running, "parent")
    _create(running, "child", parent_id="parent")
    with running.write("child") as tx:
        assert tx is not None
        for table_writes in range(3):
            tx.enqueue("parent", OPS, float(table_writes))
        tx.use_key("k", 1.0, operations=True)
        tx.append(OPS)
        _run_unless_it_waits_for_a_lock(postgres_url, lambda: open_many().get_run("child"))


def test_a_writer_waits_for_a_held_run_at_most_the_lock_timeout(postgres_url: str) -> None:
    holder = PostgresStorage(postgres_url)
    impatient = PostgresStorage(postgres_url, lock_timeout=0.2)
    try:
        _create(holder, "r")
        with holder.write("r") as tx:
            assert tx is not None
            with pytest.raises(StorageError, match="lock timeout"), impatient.write("r"):
                pass
            tx.append(OPS)
        record = impatient.get_run("r")
        assert record is not None
        assert record.version == 1
    finally:
        holder.close()
        impatient.close()


def _get_stuck_holding(stuck: PostgresStorage, other: PostgresStorage) -> None:
    with stuck.write("r") as tx:
        assert tx is not None
        assert tx.key_use("k") is None
        # Stuck while deciding (a hung worker): meanwhile another process waits for the
        # run, and gets it once PostgreSQL has ended the stuck session.
        with other.write("r") as theirs:
            assert theirs is not None
            theirs.append(OPS)
        tx.append(OPS)


def test_a_process_stuck_inside_a_transaction_is_cut_off_and_its_run_freed(postgres_url: str) -> None:
    stuck = PostgresStorage(postgres_url, idle_timeout=0.3)
    other = PostgresStorage(postgres_url)
    try:
        _create(stuck, "r")
        with pytest.raises(StorageError, match=r"idle-in-transaction|terminat|closed"):
            _get_stuck_holding(stuck, other)
        record = other.get_run("r")
        assert record is not None
        assert record.version == 1
    finally:
        stuck.close()
        other.close()
