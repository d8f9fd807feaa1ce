"""The embedded backend: one SQLite file in WAL mode, durable on commit (``synchronous=FULL``).

SQLite has one writer at a time per database, so :meth:`SQLiteStorage.write` takes
the write lock (``BEGIN IMMEDIATE``) for its transaction; several processes may
share the file (each waits up to ``busy_timeout`` for the lock). Snapshots live in
their own table, so that bumping a run's version never rewrites its metadata.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from metaops._errors import InvalidArgumentError
from metaops.service._errors import RunNotFoundError, StorageError
from metaops.service._sqlite import SQLitePool
from metaops.service._storage import (
    _SELECT_RECORD,
    _SQLITE,
    ChangeListener,
    History,
    Listeners,
    LogEntry,
    RunRecord,
    _SQLStorage,
    _SQLTransaction,
)

__all__ = ["SQLiteStorage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id               TEXT PRIMARY KEY,
    parent_id        TEXT REFERENCES runs (id),
    root_id          TEXT REFERENCES runs (id),
    version          INTEGER NOT NULL DEFAULT 0,
    snapshot_version INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    completed_at     REAL
);
CREATE TABLE IF NOT EXISTS snapshots (
    run_id   TEXT PRIMARY KEY REFERENCES runs (id),
    version  INTEGER NOT NULL,
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_log (
    run_id     TEXT NOT NULL REFERENCES runs (id),
    version    INTEGER NOT NULL,
    operations TEXT NOT NULL,
    PRIMARY KEY (run_id, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL REFERENCES runs (id),
    operations TEXT NOT NULL,
    queued_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_run ON outbox (run_id, seq);
CREATE TABLE IF NOT EXISTS rejected (
    seq         INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    operations  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_run ON rejected (run_id, seq);
-- carried_operations: whether the request that used the key carried any (1) or none (0,
-- a client fencing the key); NULL for keys stored before the column was added.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    run_id             TEXT NOT NULL REFERENCES runs (id),
    key                TEXT NOT NULL,
    used_at            REAL NOT NULL,
    carried_operations INTEGER,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_used_at ON idempotency_keys (used_at);
-- The change feed across processes: each commit that moves a run adds a row, which the
-- other processes sharing the file read (writer tells their own rows apart); kept a minute.
CREATE TABLE IF NOT EXISTS changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL,
    version INTEGER NOT NULL,
    writer  TEXT NOT NULL,
    at      REAL NOT NULL
);
"""

_SQL = _SQLITE
_RECORD = _SQL(_SELECT_RECORD)
_IDLE_CONNECTIONS = 16
CHECKPOINT_INTERVAL = 1.0
FEED_INTERVAL = 0.05
"""Seconds between two looks for other processes' commits, while someone listens."""
FEED_RETENTION = 60.0
_SYNCHRONOUS = ("FULL", "EXTRA")


def _record(row: tuple[object, ...]) -> RunRecord:
    return RunRecord(*row)  # type: ignore[arg-type]


class SQLiteStorage(_SQLStorage):
    """:class:`~metaops.service.Storage` on one SQLite file (created if missing).

    ``synchronous`` is ``"FULL"`` (the default: a commit is on disk before it
    returns, so an acknowledged update survives a killed process and power loss) or
    ``"EXTRA"``. ``busy_timeout`` is how long a write waits for another process's
    write lock before :class:`StorageError`.
    """

    _sql = _SQL
    # BEGIN IMMEDIATE holds the database's write lock: no other session creates a run meanwhile.
    _RUN_CREATED_MEANWHILE = ()

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout: float = 30.0) -> None:
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS:
            msg = f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            raise InvalidArgumentError(msg)
        self._path = str(path)
        self._synchronous = mode
        self._busy_timeout = busy_timeout
        self._pool = SQLitePool(self._path, self._connect, idle=_IDLE_CONNECTIONS, what="storage")
        self._lock = threading.Lock()
        self._listeners: Listeners[ChangeListener] = Listeners()
        self._writer_id = secrets.token_hex(8)
        self._feed: threading.Thread | None = None
        self._feed_start: tuple[sqlite3.Connection, int]
        self._held: dict[str, int] = {}  # run -> how many threads of this process hold or wait for it
        # SQLite has one writer at a time; waiting for it here wakes the next writer as soon as
        # the last commits, where SQLite's own busy handler polls with sleeps of up to 100 ms.
        self._writer = threading.Lock()
        with self._connection() as db:
            # WAL lets readers run beside the one writer; it is a property of the file.
            mode_set = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode_set).lower() != "wal":
                msg = f"{self._path}: SQLite refused WAL mode (got {mode_set!r})"
                raise StorageError(msg)
            db.executescript(_SCHEMA)
            _add_missing_columns(db)
        self._stopping = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_forever, name="metaops-checkpoint", daemon=True
        )
        self._checkpointer.start()

    @property
    def url(self) -> str:
        """``sqlite:///`` and the file's path."""
        return f"sqlite:///{self._path}"

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    # ------------------------------------------------------------------ connections

    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._pool.connection()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._writer, self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        # Checkpoints (copying the WAL into the database) run in a thread of their own, not in
        # the commit of whichever request happens to pass the threshold.
        db.execute("PRAGMA wal_autocheckpoint=0")
        return db

    def _checkpoint_forever(self) -> None:
        """Copy the WAL into the database every second, without blocking writers (PASSIVE)."""
        while not self._stopping.wait(CHECKPOINT_INTERVAL):
            try:
                with self._connection() as db:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                with self._writer, self._connection() as db:
                    db.execute("DELETE FROM changes WHERE at < ?", (time.time() - FEED_RETENTION,))
            except StorageError:  # closed, or busy: the next round does it
                continue

    def close(self) -> None:
        """Close every idle connection; later calls raise :class:`StorageError`."""
        self._stopping.set()
        for thread in (self._checkpointer, self._feed):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=30)
        self._pool.close()

    # ------------------------------------------------------------------ runs

    def history(self, run_id: str, since: int | None) -> History | None:
        with self._connection() as db:
            db.execute("BEGIN")  # one read transaction: the record, snapshot and log agree
            try:
                row = db.execute(f"{_RECORD} WHERE id = ?", (run_id,)).fetchone()
                if row is None:
                    return None
                return _history(db, _record(row), since)
            finally:
                db.execute("COMMIT")

    @contextmanager
    def write(self, run_id: str, *, wait: bool = True) -> Iterator[_Transaction | None]:
        with self._lock:
            taken = wait or run_id not in self._held
            if taken:
                self._held[run_id] = self._held.get(run_id, 0) + 1
        if not taken:  # another thread of this process holds it
            yield None
            return
        try:
            with self._writing() as db:
                row = db.execute(f"{_RECORD} WHERE id = ?", (run_id,)).fetchone()
                if row is None:
                    raise RunNotFoundError(run_id)
                tx = _Transaction(db, _record(row), self._changed)
                yield tx
        finally:
            with self._lock:
                if self._held[run_id] == 1:
                    del self._held[run_id]
                else:
                    self._held[run_id] -= 1
        if tx.appended is not None:
            self._notify(run_id, tx.appended)

    def complete_run(self, run_id: str, completed_at: float) -> RunRecord:
        with self._writing() as db:
            cursor = db.execute("UPDATE runs SET completed_at = ? WHERE id = ?", (completed_at, run_id))
            if cursor.rowcount != 1:
                raise RunNotFoundError(run_id)
            row = db.execute(f"{_RECORD} WHERE id = ?", (run_id,)).fetchone()
            self._changed(db, run_id, row[3])
        record = _record(row)
        self._notify(run_id, record.version)  # listeners re-read the record: it completed
        return record

    def _changed(self, db: sqlite3.Connection, run_id: str, version: int) -> None:
        """Record a change for the other processes' feeds (inside the caller's transaction)."""
        db.execute(
            "INSERT INTO changes (run_id, version, writer, at) VALUES (?, ?, ?, ?)",
            (run_id, version, self._writer_id, time.time()),
        )

    # ------------------------------------------------------------------ changes

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """As the Protocol says; other processes' commits arrive within ``FEED_INTERVAL`` or so."""
        unsubscribe = self._listeners.add(listener)
        with self._lock:
            start = self._feed is None and not self._pool.closed
            if start:
                self._feed = threading.Thread(target=self._follow_others, name="metaops-feed", daemon=True)
        if start:
            # Where the feed starts is read before subscribe returns: a commit after it is heard.
            db = self._connect()
            (last,) = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
            self._feed_start = (db, int(last))
            assert self._feed is not None
            self._feed.start()

        return unsubscribe

    def _follow_others(self) -> None:
        """Tell the listeners of other processes' commits, found through ``PRAGMA data_version``.

        One connection of its own: ``data_version`` changes when another connection committed.
        """
        db, last = self._feed_start
        seen = None
        try:
            while not self._stopping.wait(FEED_INTERVAL):
                try:
                    (version,) = db.execute("PRAGMA data_version").fetchone()
                    if version == seen:
                        continue
                    seen = version
                    rows = db.execute(
                        "SELECT seq, run_id, version FROM changes WHERE seq > ? AND writer != ? ORDER BY seq",
                        (last, self._writer_id),
                    ).fetchall()
                except sqlite3.Error:  # busy, say: the next round reads them
                    seen = None
                    continue
                for seq, run_id, run_version in rows:
                    last = seq
                    self._notify(run_id, run_version)
        finally:
            db.close()

    def _notify(self, run_id: str, version: int) -> None:
        for listener in self._listeners.current():
            listener(run_id, version)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a file made by an earlier version up to the schema (``CREATE TABLE IF NOT EXISTS``
    leaves an existing table as it is)."""
    if _has_column(db, "idempotency_keys", "carried_operations"):
        return
    db.execute("BEGIN IMMEDIATE")  # another process opening the file may be adding it too
    if not _has_column(db, "idempotency_keys", "carried_operations"):
        db.execute("ALTER TABLE idempotency_keys ADD COLUMN carried_operations INTEGER")
    db.execute("COMMIT")


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})"))


def _history(db: sqlite3.Connection, record: RunRecord, since: int | None) -> History:
    if since is not None and record.snapshot_version <= since <= record.version:
        rows = db.execute(
            "SELECT version, operations FROM run_log WHERE run_id = ? AND version > ? ORDER BY version",
            (record.id, since),
        ).fetchall()
        return History(record, None, since, tuple(LogEntry(*row) for row in rows))
    version, text = db.execute(
        "SELECT version, metadata FROM snapshots WHERE run_id = ?", (record.id,)
    ).fetchone()
    rows = db.execute(
        "SELECT version, operations FROM run_log WHERE run_id = ? AND version > ? ORDER BY version",
        (record.id, version),
    ).fetchall()
    return History(record, text, version, tuple(LogEntry(*row) for row in rows))


class _Transaction(_SQLTransaction):
    """:class:`~metaops.service.RunTransaction` on one SQLite connection inside ``BEGIN IMMEDIATE``."""

    _sql = _SQL

    def __init__(
        self,
        db: sqlite3.Connection,
        record: RunRecord,
        changed: Callable[[sqlite3.Connection, str, int], None],
    ) -> None:
        self._db = db
        self._record = record
        self._changed = changed
        self._version = record.version
        self.appended: int | None = None

    def _ask(self, query: str, params: Sequence[object]) -> sqlite3.Cursor:
        return self._db.execute(query, params)

    def _send(self, query: str, params: Sequence[object]) -> None:
        self._db.execute(query, params)

    def history(self, since: int | None) -> History:
        return _history(self._db, self._record, since)

    def append(self, operations: str, *, snapshot: str | None = None) -> int:
        db = self._db
        run_id = self._record.id
        self._version += 1
        version = self._version
        if snapshot is None:
            db.execute(
                "INSERT INTO run_log (run_id, version, operations) VALUES (?, ?, ?)",
                (run_id, version, operations),
            )
            db.execute("UPDATE runs SET version = ? WHERE id = ?", (version, run_id))
        else:
            db.execute(
                "UPDATE snapshots SET version = ?, metadata = ? WHERE run_id = ?", (version, snapshot, run_id)
            )
            db.execute("DELETE FROM run_log WHERE run_id = ? AND version < ?", (run_id, version))
            db.execute(
                "UPDATE runs SET version = ?, snapshot_version = ? WHERE id = ?", (version, version, run_id)
            )
        self._changed(db, run_id, version)
        self.appended = version
        return version

    def enqueue(self, run_id: str, operations: str, at: float) -> int:
        # The foreign key's error tells an unknown run; it leaves SQLite's transaction usable.
        try:
            cursor = self._db.execute(
                "INSERT INTO outbox (run_id, operations, queued_at) VALUES (?, ?, ?)",
                (run_id, operations, at),
            )
        except sqlite3.IntegrityError as error:
            if "FOREIGN KEY" not in str(error):
                raise
            raise RunNotFoundError(run_id) from None
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def settle(self, seqs: Sequence[int]) -> None:
        # SQLite has no arrays (PostgreSQL's settles with one ``= ANY``).
        self._db.executemany(
            "DELETE FROM outbox WHERE seq = ? AND run_id = ?", [(seq, self._record.id) for seq in seqs]
        )
