"""The backend for several processes: PostgreSQL through psycopg 3 and psycopg_pool.

:meth:`PostgresStorage.write` holds a run with a row lock (``SELECT ... FOR NO KEY
UPDATE``) for one transaction, so every writer of a run, in any process, takes its
turn; ``wait=False`` adds ``SKIP LOCKED``: the outbox is drained by whichever process
finds a target nobody holds. ``NO KEY UPDATE`` rather than ``UPDATE`` because a
child's transaction inserting an outbox row for its parent takes a key-share lock
on the parent (the foreign key), which ``FOR UPDATE`` would make wait for the
parent's own writers.

Durable on acknowledgement with PostgreSQL's defaults (``synchronous_commit=on``);
nothing here relaxes them.

The change feed: every transaction that appends to a run's log also sends
``pg_notify`` (delivered on commit, never for a rolled-back transaction) with the
run id and version. Listeners of this process are called right after the commit;
those of other processes when their listening connection (``LISTEN``, one per
process, opened by the first :meth:`PostgresStorage.subscribe`) receives it.

The tables live in the first schema on the connection's ``search_path`` (put
``?options=-c%20search_path%3Dname`` in the URL to keep several deployments in one
database apart), each name prefixed ``metaops_``; the notification channel is named
after that schema. They are created at startup when missing, and tables of an older
version are migrated, under an advisory lock so that N workers starting at once do not
race on ``CREATE TABLE IF NOT EXISTS``; when they are current, startup runs no DDL
(which would lock tables that requests write).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from metaops.service._errors import RunNotFoundError, StorageError
from metaops.service._storage import (
    _POSTGRES,
    _RECORD_COLUMNS,
    _RUN_EXISTS,
    _SELECT_RECORD,
    ChangeListener,
    History,
    Listeners,
    LogEntry,
    RunRecord,
    _SQLStorage,
    _SQLTransaction,
)

__all__ = ["PostgresStorage"]

_log = logging.getLogger("metaops.service")

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metaops_schema (
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS metaops_runs (
    id               text PRIMARY KEY,
    parent_id        text REFERENCES metaops_runs (id),
    root_id          text REFERENCES metaops_runs (id),
    version          bigint NOT NULL DEFAULT 0,
    snapshot_version bigint NOT NULL DEFAULT 0,
    created_at       double precision NOT NULL,
    completed_at     double precision
);
-- The JSON text exactly as served (key order kept): text, not jsonb. In its own
-- table so that a version bump does not copy the row holding it.
CREATE TABLE IF NOT EXISTS metaops_snapshots (
    run_id   text PRIMARY KEY REFERENCES metaops_runs (id),
    version  bigint NOT NULL,
    metadata text NOT NULL
);
CREATE TABLE IF NOT EXISTS metaops_run_log (
    run_id     text NOT NULL REFERENCES metaops_runs (id),
    version    bigint NOT NULL,
    operations text NOT NULL,
    PRIMARY KEY (run_id, version)
);
CREATE TABLE IF NOT EXISTS metaops_outbox (
    seq        bigserial PRIMARY KEY,
    run_id     text NOT NULL REFERENCES metaops_runs (id),
    operations text NOT NULL,
    queued_at  double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS metaops_outbox_run ON metaops_outbox (run_id, seq);
CREATE TABLE IF NOT EXISTS metaops_rejected (
    seq         bigint PRIMARY KEY,
    run_id      text NOT NULL REFERENCES metaops_runs (id),
    operations  text NOT NULL,
    reason      text NOT NULL,
    rejected_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS metaops_rejected_run ON metaops_rejected (run_id, seq);
-- carried_operations: whether the request that used the key carried any (false: none, a
-- client fencing the key); NULL for keys stored by schema version 1.
CREATE TABLE IF NOT EXISTS metaops_idempotency_keys (
    run_id             text NOT NULL REFERENCES metaops_runs (id),
    key                text NOT NULL,
    used_at            double precision NOT NULL,
    carried_operations boolean,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX IF NOT EXISTS metaops_idempotency_keys_used_at ON metaops_idempotency_keys (used_at);
"""

# What brings the tables of each older version to the next one (every version below
# SCHEMA_VERSION has an entry).
_MIGRATIONS = {
    1: "ALTER TABLE metaops_idempotency_keys ADD COLUMN carried_operations boolean",
}

_SQL = _POSTGRES
_RECORD = _SQL(_SELECT_RECORD)

# One statement, so one snapshot: the record, the snapshot and the log agree. The log
# continues from ``since`` when the log still has everything after it, else from the
# snapshot (whose text is sent only then).
_HISTORY = """
WITH record AS (
    SELECT r.*, (%(since)s::bigint IS NOT NULL
                 AND r.snapshot_version <= %(since)s::bigint
                 AND %(since)s::bigint <= r.version) AS from_log
    FROM metaops_runs r WHERE r.id = %(run_id)s
)
SELECT record.id, record.parent_id, record.root_id, record.version, record.snapshot_version,
       record.created_at, record.completed_at, record.from_log,
       CASE WHEN record.from_log THEN NULL ELSE s.metadata END,
       CASE WHEN record.from_log THEN %(since)s::bigint ELSE s.version END,
       log.versions, log.operations
FROM record
JOIN metaops_snapshots s ON s.run_id = record.id
CROSS JOIN LATERAL (
    SELECT array_agg(l.version ORDER BY l.version) AS versions,
           array_agg(l.operations ORDER BY l.version) AS operations
    FROM metaops_run_log l
    WHERE l.run_id = record.id
      AND l.version > CASE WHEN record.from_log THEN %(since)s::bigint ELSE s.version END
) log
"""

_EXISTS = _SQL(_RUN_EXISTS)

_APPEND = """
WITH logged AS (
    INSERT INTO metaops_run_log (run_id, version, operations) VALUES (%(run_id)s, %(version)s, %(operations)s)
), bumped AS (
    UPDATE metaops_runs SET version = %(version)s WHERE id = %(run_id)s
)
SELECT pg_notify(%(channel)s, %(payload)s)
"""

_COMPLETE = f"""
WITH done AS (
    UPDATE metaops_runs SET completed_at = %(at)s WHERE id = %(run_id)s RETURNING {_RECORD_COLUMNS}
)
SELECT {_RECORD_COLUMNS}, pg_notify(%(channel)s, version || ':' || %(origin)s || ':' || id) FROM done
"""

_APPEND_SNAPSHOT = """
WITH snapshot AS (
    UPDATE metaops_snapshots SET version = %(version)s, metadata = %(operations)s WHERE run_id = %(run_id)s
), dropped AS (
    DELETE FROM metaops_run_log WHERE run_id = %(run_id)s AND version < %(version)s
), bumped AS (
    UPDATE metaops_runs SET version = %(version)s, snapshot_version = %(version)s WHERE id = %(run_id)s
)
SELECT pg_notify(%(channel)s, %(payload)s)
"""


class PostgresStorage(_SQLStorage):
    """:class:`~metaops.service.Storage` on PostgreSQL: ``postgresql://user:pass@host:port/dbname``.

    ``pool_size`` bounds the connections this process holds for requests (one more
    listens for changes once something subscribes): with N worker processes the
    server needs ``N * (pool_size + 1)`` of PostgreSQL's ``max_connections`` (100 by
    default). ``timeout`` is how long a call waits for a free connection, or to
    connect, before :class:`StorageError`.

    Two guards keep one stuck process from stalling the others: a statement waits at
    most ``lock_timeout`` seconds for a row another session holds (then
    :class:`StorageError`; the client retries), and PostgreSQL ends a session left
    idle inside a transaction for ``idle_timeout`` seconds (a worker hung while it
    holds a run and decides what to write), rolling it back. A process that dies
    outright releases its runs at once: PostgreSQL sees its connections close.
    """

    _sql = _SQL
    # Another session may insert the same run between the check and the insert.
    _RUN_CREATED_MEANWHILE = (psycopg.errors.UniqueViolation,)

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        timeout: float = 30.0,
        lock_timeout: float = 30.0,
        idle_timeout: float = 60.0,
    ) -> None:
        self._url = url
        self._shown_url = _without_password(url)
        # Notifications carry it, so that the listener skips what this process already dispatched.
        self._origin = secrets.token_hex(6)
        self._lock = threading.Lock()
        self._listeners: Listeners[ChangeListener] = Listeners()
        # Connects on first use.
        self._listener = _Listener(url, f"metaops:wake:{self._origin}", self._notify_now)
        self._feed_registered = False
        self._closed = False
        try:
            # One connection first, so that a wrong URL fails at once rather than after
            # the pool's retries; it creates the tables and is given back to no one.
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout))) as db:
                self._channel = _create_schema(db, self._shown_url)
        except psycopg.Error as error:
            msg = f"{self._shown_url}: {_describe(error)}"
            raise StorageError(msg) from None
        guards = (
            f"SET lock_timeout = {max(1, round(lock_timeout * 1000))};"
            f" SET idle_in_transaction_session_timeout = {max(1, round(idle_timeout * 1000))}"
        ).encode()

        def configure(db: psycopg.Connection[Any]) -> None:
            db.execute(guards)

        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True},
            configure=configure,
            open=False,
            timeout=timeout,
            name="metaops",
        )
        self._pool.open(wait=False)

    @property
    def url(self) -> str:
        """The database URL, without its password."""
        return self._shown_url

    @property
    def channel(self) -> str:
        """The ``LISTEN``/``NOTIFY`` channel this schema's changes are announced on."""
        return self._channel

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (autocommit; open a transaction with ``db.transaction()``), for
        modules that keep their own tables in this schema. psycopg errors raised in the
        block become :class:`StorageError`."""
        with self._connection() as db:
            yield db

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            msg = f"{self._shown_url}: storage is closed"
            raise StorageError(msg)
        try:
            with self._pool.connection() as db:
                yield db
        except psycopg.Error as error:
            # A broken connection is discarded by the pool; the transaction did not commit.
            msg = f"{self._shown_url}: {_describe(error)}"
            raise StorageError(msg) from None

    @contextmanager
    def _writing(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as db, db.transaction():
            yield db

    def close(self) -> None:
        """Stop listening and close every connection; later calls raise :class:`StorageError`."""
        with self._lock:
            self._closed = True
        self._listener.stop()
        self._pool.close()

    def _notify_now(self, channel: str) -> None:
        with self._pool.connection() as db:  # also while closing
            db.execute("SELECT pg_notify(%s, '')", (channel,))

    # ------------------------------------------------------------------ runs

    def history(self, run_id: str, since: int | None) -> History | None:
        with self._connection() as db:
            return _history(db, run_id, since)

    @contextmanager
    def write(self, run_id: str, *, wait: bool = True) -> Iterator[_Transaction | None]:
        lock = "FOR NO KEY UPDATE" if wait else "FOR NO KEY UPDATE SKIP LOCKED"
        with self._connection() as db:
            # Pipeline mode: statements whose results nobody reads (BEGIN, the appends, the
            # keys, settling) go out without waiting for their answers; COMMIT waits for all.
            # A read ends its batch with a Sync rather than a flush (the same round trip), so
            # that the session is "idle in transaction" while the service computes, and
            # idle_timeout can cut off a process stuck there.
            with db.pipeline() as pipeline, db.transaction():
                tx = _Transaction(db, pipeline, self._channel, self._origin)
                row = tx.ask(f"{_RECORD} WHERE id = %s {lock}", (run_id,)).fetchone()
                if row is None:
                    if wait or tx.ask(_EXISTS, (run_id,)).fetchone() is None:
                        raise RunNotFoundError(run_id)
                    yield None  # another session holds it
                    return
                tx.hold(RunRecord(*row))
                yield tx
            # Committed: tell this process's listeners now, the others through the notification.
            if tx.appended is not None:
                self._dispatch(run_id, tx.appended)

    def complete_run(self, run_id: str, completed_at: float) -> RunRecord:
        """Mark the run completed, and announce it on the change feed at its current version
        (a Realtime subscriber stops at completion, so it must hear of it)."""
        with self._connection() as db:
            row = db.execute(
                _COMPLETE,
                {"run_id": run_id, "at": completed_at, "channel": self._channel, "origin": self._origin},
            ).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        record = RunRecord(*row[:7])
        self._dispatch(run_id, record.version)
        return record

    # ------------------------------------------------------------------ changes

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener(run_id, version)`` after each change, from any process on this schema.

        Returns once the listening connection is in place, so no change committed after
        that goes unannounced. Versions of one run can arrive out of order (this
        process's own right after commit, others' a little later): a listener should keep
        the highest it has seen.
        """
        with self._lock:
            if self._closed:
                msg = f"{self._shown_url}: storage is closed"
                raise StorageError(msg)
            first, self._feed_registered = not self._feed_registered, True
        unsubscribe = self._listeners.add(listener)
        if first:
            self._listener.add(self._channel, self._on_notification)
        else:
            self._listener.add(self._channel, None)  # returns once the channel is listened to

        return unsubscribe

    def listen(self, channel: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(payload)`` for each ``NOTIFY`` on ``channel`` (from any session), on the
        one listening connection of this storage; return a function that stops it.

        Returns once ``LISTEN`` is in effect. Callbacks run on the listening thread: keep
        them quick. Notifications sent while that connection is being re-established
        (after it dropped) are missed.
        """
        if self._closed:
            msg = f"{self._shown_url}: storage is closed"
            raise StorageError(msg)
        return self._listener.add(channel, callback)

    def _on_notification(self, payload: str) -> None:
        version, origin, run_id = _parse_payload(payload)
        if origin != self._origin:  # this process's own were dispatched after their commit
            self._dispatch(run_id, version)

    def _dispatch(self, run_id: str, version: int) -> None:
        for listener in self._listeners.current():
            try:
                listener(run_id, version)
            except Exception:  # one failing listener must not starve the others
                _log.exception("change listener %r failed for run %s", listener, run_id)


class _Transaction(_SQLTransaction):
    """:class:`~metaops.service.RunTransaction`: one connection, in a transaction holding the run's row."""

    _sql = _SQL

    def __init__(
        self, db: psycopg.Connection[Any], pipeline: psycopg.Pipeline, channel: str, origin: str
    ) -> None:
        self._db = db
        self._pipeline = pipeline
        self._record = RunRecord("", None, None, 0, 0, 0.0, None)
        self._version = 0
        self._channel = channel
        self._origin = origin
        self.appended: int | None = None

    def hold(self, record: RunRecord) -> None:
        self._record = record
        self._version = record.version

    def ask(self, query: str, params: Sequence[object] | dict[str, object]) -> psycopg.Cursor[Any]:
        """Run a query whose answer is needed now: send it with a Sync, wait for the answer."""
        cursor = self._db.execute(query.encode(), params)
        self._pipeline.sync()
        return cursor

    _ask = ask

    def _send(self, query: str, params: Sequence[object]) -> None:
        self._db.execute(query, params)

    def history(self, since: int | None) -> History:
        row = self.ask(_HISTORY, {"run_id": self._record.id, "since": since}).fetchone()
        assert row is not None  # the row is held: it exists
        return _history_from(row)

    def append(self, operations: str, *, snapshot: str | None = None) -> int:
        self._version += 1
        version = self._version
        self._db.execute(
            _APPEND if snapshot is None else _APPEND_SNAPSHOT,
            {
                "run_id": self._record.id,
                "version": version,
                "operations": operations if snapshot is None else snapshot,
                "channel": self._channel,
                "payload": _payload(version, self._origin, self._record.id),
            },
        )
        self.appended = version
        return version

    def enqueue(self, run_id: str, operations: str, at: float) -> int:
        # Checked in the statement, not by the foreign key's error: an error would abort the transaction.
        row = self.ask(
            "INSERT INTO metaops_outbox (run_id, operations, queued_at) "
            "SELECT %(run_id)s, %(operations)s, %(at)s "
            "WHERE EXISTS (SELECT 1 FROM metaops_runs WHERE id = %(run_id)s) RETURNING seq",
            {"run_id": run_id, "operations": operations, "at": at},
        ).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        seq: int = row[0]
        return seq

    def settle(self, seqs: Sequence[int]) -> None:
        self._db.execute(
            "DELETE FROM metaops_outbox WHERE seq = ANY(%s) AND run_id = %s", (list(seqs), self._record.id)
        )


def _create_schema(db: psycopg.Connection[Any], shown_url: str) -> str:
    """Create the tables if missing; return the notification channel's name."""
    row = db.execute("SELECT current_schema()").fetchone()
    schema = None if row is None else row[0]
    if schema is None:
        msg = f"{shown_url}: no schema to create the tables in: none on the search_path exists"
        raise StorageError(msg)
    # Tables already there: no DDL at all. CREATE INDEX IF NOT EXISTS locks its table
    # against writes before it finds the index exists, so a worker restarting under load
    # would stall the others' writes (or deadlock with one).
    stored = _stored_version(db)
    if stored is None or stored in _MIGRATIONS:
        with db.transaction():
            # CREATE ... IF NOT EXISTS is not safe against itself running in another session,
            # nor is a migration: the second session to get here finds the work done.
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"metaops.schema:{schema}",))
            stored = _stored_version(db)
            if stored is None:
                db.execute(_SCHEMA.encode())
                db.execute("INSERT INTO metaops_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif stored in _MIGRATIONS:
                for version in range(stored, SCHEMA_VERSION):
                    db.execute(_MIGRATIONS[version].encode())
                db.execute("INSERT INTO metaops_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
    stored = _stored_version(db)
    if stored != SCHEMA_VERSION:
        found = f"metaops tables of version {stored}, not {SCHEMA_VERSION}"
        msg = f"{shown_url}: schema {schema!r} holds {found}"
        raise StorageError(msg)
    return _channel_name(schema)


def _stored_version(db: psycopg.Connection[Any]) -> int | None:
    """The version of the metaops tables in the current schema; ``None`` when there are none."""
    if db.execute("SELECT to_regclass('metaops_schema')").fetchone() == (None,):
        return None
    row = db.execute("SELECT max(version) FROM metaops_schema").fetchone()
    return None if row is None else row[0]


def _history(db: psycopg.Connection[Any], run_id: str, since: int | None) -> History | None:
    row = db.execute(_HISTORY.encode(), {"run_id": run_id, "since": since}).fetchone()
    return None if row is None else _history_from(row)


def _history_from(row: tuple[Any, ...]) -> History:
    record = RunRecord(*row[:7])
    _from_log, snapshot, start, versions, operations = row[7:]
    entries = tuple(LogEntry(v, o) for v, o in zip(versions or (), operations or (), strict=True))
    return History(record, snapshot, start, entries)


def _payload(version: int, origin: str, run_id: str) -> str:
    return f"{version}:{origin}:{run_id}"


def _parse_payload(payload: str) -> tuple[int, str, str]:
    """``(version, origin, run_id)`` from a notification's payload (run ids may hold ``:``)."""
    version, _, rest = payload.partition(":")
    origin, _, run_id = rest.partition(":")
    return int(version), origin, run_id


def _channel_name(schema: str) -> str:
    name = f"metaops:{schema}"
    if len(name.encode()) > 63:  # a channel name is an identifier: at most 63 bytes
        name = "metaops:" + hashlib.sha256(schema.encode()).hexdigest()[:40]
    return name


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _describe(error: psycopg.Error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class _Listener:
    """One connection ``LISTEN``ing on any number of channels, on a daemon thread started on
    first use; it reconnects (and listens again) when the connection drops.

    The thread waits for notifications at most ``_POLL`` seconds at a time; to listen to a
    new channel, or to stop, it is woken at once by a NOTIFY on a channel of its own
    (``wake`` sends one, through another connection).
    """

    _POLL = 1.0

    def __init__(self, url: str, channel: str, wake: Callable[[str], None]) -> None:
        self._url = url
        self._own_channel = channel
        self._wake = wake
        self._lock = threading.Lock()
        self._callbacks: dict[str, list[Callable[[str], None]]] = {channel: []}
        self._waiting: list[tuple[str, threading.Event]] = []  # channels to LISTEN to, and who waits
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self, channel: str, callback: Callable[[str], None] | None, timeout: float = 10.0
    ) -> Callable[[], None]:
        """Listen to ``channel`` (and call ``callback`` with each payload); return once in effect."""
        listening = threading.Event()
        with self._lock:
            if callback is not None:
                self._callbacks.setdefault(channel, []).append(callback)
            self._waiting.append((channel, listening))
            running = self._thread is not None
            if not running:
                self._thread = threading.Thread(target=self._run, name="metaops-listen", daemon=True)
                self._thread.start()
        if running:
            self._wake_up()
        if not listening.wait(timeout):
            _log.warning("LISTEN %s: not in effect after %.0f s; still trying", channel, timeout)

        def remove() -> None:
            with self._lock:
                callbacks = self._callbacks.get(channel, [])
                if callback in callbacks:
                    callbacks.remove(callback)

        return remove

    def stop(self) -> None:
        """Stop the thread (it closes its connection); idempotent."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._wake_up()
            thread.join(timeout=self._POLL + 5)

    def _wake_up(self) -> None:
        for _ in range(2):  # a pooled connection found dead is replaced for the second try
            try:
                self._wake(self._own_channel)
                return
            except Exception:  # it wakes up on its own within _POLL seconds
                _log.debug("could not wake the listening thread", exc_info=True)

    def _run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True) as db:
                    with self._lock:
                        channels = list(self._callbacks)
                    for channel in channels:
                        db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    delay = 0.05
                    while not self._stop.is_set():
                        self._listen_to_new(db)
                        # stop_after: back to the loop after each batch (a wake-up among them).
                        for notification in db.notifies(timeout=self._POLL, stop_after=1):
                            self._deliver(notification.channel, notification.payload)
            except psycopg.Error as error:
                _log.warning("listening for changes: %s; reconnecting in %.2f s", _describe(error), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)

    def _listen_to_new(self, db: psycopg.Connection[Any]) -> None:
        with self._lock:
            waiting = list(self._waiting)
        for channel, listening in waiting:
            db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))  # a repeat is a no-op
            listening.set()
            with self._lock:
                self._waiting.remove((channel, listening))

    def _deliver(self, channel: str, payload: str) -> None:
        with self._lock:
            callbacks = tuple(self._callbacks.get(channel, ()))
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:  # one failing callback must not starve the others
                _log.exception("notification callback %r failed on channel %s", callback, channel)
