"""The storage interface every backend implements (SQLite here, PostgreSQL beside it).

A run's metadata is stored as a **snapshot and an operation log**: the JSON text of
the metadata at ``snapshot_version``, then one log entry per later version, each the
JSON text of the wire operations that made it from the one before. A write stores
its operations (a few hundred bytes), not the whole metadata; now and then the
service folds the log into a new snapshot. Any process can rebuild a run's metadata
at its current version from :meth:`Storage.history`, and a process that holds a run
in memory at some version catches up by replaying only the entries after it.

Writes happen inside :meth:`Storage.write`: one transaction holding the run (a row
lock in PostgreSQL, the database's write lock in SQLite), in which the service
reads what it needs (the run's record, the log since the version it holds, whether
an idempotency key was used and whether that request carried operations, the run's
queued entries), decides, and writes (a log entry, an outbox entry for another run,
the idempotency key, settled and rejected queued entries). Everything written in one
``write`` block commits together before the block returns, or nothing does. An update
acknowledged to a client has therefore been committed durably (SQLite
``synchronous=FULL``; PostgreSQL's defaults).

The **outbox** holds operations one run sends another (a child's
``parentOperations``/``rootOperations``): inserted in the sending run's transaction,
applied later by whichever process holds the target (``write(target, wait=False)``
skips a target another process is writing: ``FOR UPDATE SKIP LOCKED``), never
dropped: entries are either applied or recorded as rejected with the reason.

The **change feed** (:meth:`Storage.subscribe`) tells a process that a run reached a
new version: after each commit in this process (SQLite), or from every process
(PostgreSQL's LISTEN/NOTIFY). It carries ``(run_id, version)`` only; a listener
rebuilds what it needs with :meth:`Storage.history`.

Run ids are non-empty strings of at most 255 characters, without ``/``, encodable
as UTF-8 (the service checks them before they get here).

The statements the two SQL backends run alike are written once here
(:class:`_SQLStorage`, :class:`_SQLTransaction`), so that a fix reaches both.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from metaops._errors import InvalidArgumentError
from metaops.service._errors import RunExistsError, RunNotFoundError

__all__ = [
    "ChangeListener",
    "History",
    "KeyUse",
    "Listeners",
    "LogEntry",
    "OutboxEntry",
    "RejectedEntry",
    "RunRecord",
    "RunTransaction",
    "Storage",
    "open_storage",
]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What is stored about a run besides its metadata.

    ``version`` counts the changes to its metadata (0 when created);
    ``snapshot_version`` is the version of its stored snapshot (``version -
    snapshot_version`` log entries follow it). Times are Unix seconds.
    """

    id: str
    parent_id: str | None
    root_id: str | None
    version: int
    snapshot_version: int
    created_at: float
    completed_at: float | None


@dataclass(frozen=True, slots=True)
class LogEntry:
    """The operations (JSON text of a list of wire operations) that made ``version`` from ``version - 1``."""

    version: int
    operations: str


@dataclass(frozen=True, slots=True)
class History:
    """How to rebuild a run's metadata at ``version``.

    When ``snapshot`` is ``None``, ``entries`` continue from the version the caller
    asked to catch up from (the log still had every entry after it). Otherwise
    ``snapshot`` is the metadata's JSON text at ``snapshot_version`` and ``entries``
    follow it. Either way ``entries`` are consecutive and end at ``version``.
    """

    record: RunRecord
    snapshot: str | None
    snapshot_version: int
    entries: tuple[LogEntry, ...]

    @property
    def version(self) -> int:
        """The version the history rebuilds."""
        return self.record.version


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """Operations queued for ``run_id`` (JSON text of wire operations); ``seq`` orders all entries."""

    seq: int
    run_id: str
    operations: str


@dataclass(frozen=True, slots=True)
class RejectedEntry:
    """An outbox entry refused when it was applied (it would take its run past the size limit)."""

    seq: int
    run_id: str
    operations: str
    reason: str
    rejected_at: float


KeyUse = Literal["operations", "empty", "unrecorded"]
"""What the request that first used an idempotency key carried: operations (applied then,
whatever they changed), none (an empty request: a client fencing the key), or
``"unrecorded"`` for a key stored before the storage kept that."""


class RunTransaction(Protocol):
    """One run held for writing, inside one database transaction.

    Reads see the run as it is while it is held; writes commit together when the
    ``with`` block of :meth:`Storage.write` ends normally, and none does when it
    raises.
    """

    @property
    def record(self) -> RunRecord:
        """The run as it was when it was taken (``version`` does not move while held)."""
        ...

    def history(self, since: int | None) -> History:
        """The log after version ``since`` when the log still has it, else the snapshot and the log after it.

        ``since=None`` asks for the snapshot. ``since`` equal to the held version
        gives no entries.
        """
        ...

    def append(self, operations: str, *, snapshot: str | None = None) -> int:
        """Log ``operations`` as the next version; return it.

        With ``snapshot`` (the metadata's JSON text at the new version), store it as
        the run's snapshot instead, and let the log entries before it go.
        """
        ...

    def key_use(self, key: str) -> KeyUse | None:
        """What the request that used the idempotency key ``key`` on this run carried; ``None`` if unused."""
        ...

    def use_key(self, key: str, at: float, *, operations: bool) -> None:
        """Record the idempotency key ``key`` for this run, used at ``at`` by a request that carried
        ``operations`` or, when false, none."""
        ...

    def enqueue(self, run_id: str, operations: str, at: float) -> int:
        """Queue ``operations`` for run ``run_id`` (this run or another, which must exist); return the seq."""
        ...

    def pending(self, limit: int) -> tuple[OutboxEntry, ...]:
        """This run's queued entries, in ``seq`` order, at most ``limit`` of them."""
        ...

    def settle(self, seqs: Sequence[int]) -> None:
        """Remove these queued entries of this run: they were applied."""
        ...

    def reject(self, entry: OutboxEntry, reason: str, at: float) -> None:
        """Remove a queued entry of this run and record it as rejected, with ``reason``."""
        ...


ChangeListener = Callable[[str, int], None]
"""Called with ``(run_id, version)`` when a run reached ``version``; must not block."""

_L = TypeVar("_L", bound=Callable[..., None])


class Listeners(Generic[_L]):
    """The listeners of a change feed (the runs', or the streams'), added and removed from any thread.

    Each backend calls :meth:`current` and decides itself what a listener that raises does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[_L] = []

    def add(self, listener: _L) -> Callable[[], None]:
        """Add ``listener``; return the function that removes it (once; later calls do nothing)."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def current(self) -> tuple[_L, ...]:
        """The listeners now, to be called outside any lock."""
        with self._lock:
            return tuple(self._listeners)


class Storage(Protocol):
    """What the service needs from a database. Thread-safe: requests come from many threads."""

    @property
    def url(self) -> str:
        """Where the data is, for messages (without a password)."""
        ...

    def create_run(
        self,
        run_id: str,
        *,
        metadata: str,
        parent_id: str | None,
        root_id: str | None,
        created_at: float,
    ) -> RunRecord:
        """Insert a run at version 0 with ``metadata`` (its JSON text) as its snapshot.

        :class:`RunExistsError` if ``run_id`` exists, :class:`RunNotFoundError` if the
        parent or root does not.
        """
        ...

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run's record, or ``None``."""
        ...

    def history(self, run_id: str, since: int | None) -> History | None:
        """:meth:`RunTransaction.history` without holding the run, in one consistent read.

        ``None`` for an unknown run.
        """
        ...

    def write(self, run_id: str, *, wait: bool = True) -> AbstractContextManager[RunTransaction | None]:
        """Hold ``run_id`` for one transaction: ``with storage.write(run_id) as tx: ...``.

        :class:`RunNotFoundError` for an unknown run. With ``wait=False``, gives
        ``None`` at once when another process (or connection) holds it.
        """
        ...

    def complete_run(self, run_id: str, completed_at: float) -> RunRecord:
        """Mark the run completed; :class:`RunNotFoundError` if unknown."""
        ...

    def outbox_runs(self, limit: int) -> list[str]:
        """Runs with queued entries, the one with the oldest entry first; at most ``limit``."""
        ...

    def outbox_size(self, run_id: str | None = None) -> int:
        """How many entries are queued (for ``run_id``, or in all)."""
        ...

    def rejections(self, run_id: str) -> list[RejectedEntry]:
        """The entries rejected for ``run_id``, oldest first."""
        ...

    def expire_keys(self, before: float) -> int:
        """Forget idempotency keys used before ``before``; return how many."""
        ...

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener(run_id, version)`` after each change; return the unsubscribe function."""
        ...

    def close(self) -> None:
        """Release connections; later calls raise."""
        ...


class _Cursor(Protocol):
    """What the SQL backends use of a DB-API cursor (``sqlite3``'s and psycopg's alike)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def executemany(self, query: str, rows: Iterable[Sequence[Any]], /) -> object: ...

    def close(self) -> None: ...


class _Connection(Protocol):
    """What the SQL backends use of a DB-API connection (``sqlite3``'s and psycopg's alike)."""

    def execute(self, query: str, params: Sequence[Any] = ..., /) -> _Cursor: ...

    def cursor(self) -> _Cursor: ...


class _Dialect:
    """How one database spells a statement written once for both SQL backends.

    In the statement, ``{name}`` is a table (PostgreSQL's carry a prefix, so that they can
    share a schema with others) and ``?`` a parameter (psycopg's is ``%s``).
    """

    def __init__(self, *, prefix: str, parameter: str) -> None:
        self._prefix = prefix
        self._parameter = parameter
        # Statements are a fixed set of literals, and several run on every PUT: each is
        # spelled once.
        self._spelled: dict[str, str] = {}

    def __call__(self, query: str) -> str:
        spelled = self._spelled.get(query)
        if spelled is None:
            spelled = re.sub(r"\{(\w+)\}", rf"{self._prefix}\1", query).replace("?", self._parameter)
            self._spelled[query] = spelled
        return spelled


# One of each, shared by the backend's storage and its stream store (and their spelling caches).
_SQLITE = _Dialect(prefix="", parameter="?")
_POSTGRES = _Dialect(prefix="metaops_", parameter="%s")

_RECORD_COLUMNS = "id, parent_id, root_id, version, snapshot_version, created_at, completed_at"
_SELECT_RECORD = "SELECT " + _RECORD_COLUMNS + " FROM {runs}"
_RUN_EXISTS = "SELECT 1 FROM {runs} WHERE id = ?"


class _SQLStorage:
    """The :class:`Storage` methods the SQLite and PostgreSQL backends share: the same statements,
    told apart by ``_sql``, the backend's :class:`_Dialect`."""

    _sql: ClassVar[_Dialect]
    _RUN_CREATED_MEANWHILE: ClassVar[tuple[type[Exception], ...]]
    """What inserting a run raises when another session created it after the check."""

    def _connection(self) -> AbstractContextManager[_Connection]:
        """A connection for reads, or for a write of one statement."""
        raise NotImplementedError

    def _writing(self) -> AbstractContextManager[_Connection]:
        """A connection in a transaction that writes; it commits when the block ends normally."""
        raise NotImplementedError

    def create_run(
        self,
        run_id: str,
        *,
        metadata: str,
        parent_id: str | None,
        root_id: str | None,
        created_at: float,
    ) -> RunRecord:
        sql = self._sql
        with self._writing() as db:
            if db.execute(sql(_RUN_EXISTS), (run_id,)).fetchone() is not None:
                raise RunExistsError(run_id)
            for related in (parent_id, root_id):
                if related is not None and db.execute(sql(_RUN_EXISTS), (related,)).fetchone() is None:
                    raise RunNotFoundError(related)
            try:
                db.execute(
                    sql("INSERT INTO {runs} (id, parent_id, root_id, created_at) VALUES (?, ?, ?, ?)"),
                    (run_id, parent_id, root_id, created_at),
                )
            except self._RUN_CREATED_MEANWHILE:
                raise RunExistsError(run_id) from None
            db.execute(
                sql("INSERT INTO {snapshots} (run_id, version, metadata) VALUES (?, 0, ?)"),
                (run_id, metadata),
            )
        return RunRecord(run_id, parent_id, root_id, 0, 0, created_at, None)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._connection() as db:
            row = db.execute(self._sql(f"{_SELECT_RECORD} WHERE id = ?"), (run_id,)).fetchone()
        return None if row is None else RunRecord(*row)

    def outbox_runs(self, limit: int) -> list[str]:
        with self._connection() as db:
            rows = db.execute(
                self._sql("SELECT run_id FROM {outbox} GROUP BY run_id ORDER BY min(seq) LIMIT ?"), (limit,)
            ).fetchall()
        return [run_id for (run_id,) in rows]

    def outbox_size(self, run_id: str | None = None) -> int:
        with self._connection() as db:
            if run_id is None:
                row = db.execute(self._sql("SELECT count(*) FROM {outbox}")).fetchone()
            else:
                row = db.execute(
                    self._sql("SELECT count(*) FROM {outbox} WHERE run_id = ?"), (run_id,)
                ).fetchone()
        return int(row[0])

    def rejections(self, run_id: str) -> list[RejectedEntry]:
        with self._connection() as db:
            rows = db.execute(
                self._sql(
                    "SELECT seq, run_id, operations, reason, rejected_at FROM {rejected} "
                    "WHERE run_id = ? ORDER BY seq"
                ),
                (run_id,),
            ).fetchall()
        return [RejectedEntry(*row) for row in rows]

    def expire_keys(self, before: float) -> int:
        with self._writing() as db:
            cursor = db.execute(self._sql("DELETE FROM {idempotency_keys} WHERE used_at < ?"), (before,))
        return cursor.rowcount


class _SQLTransaction:
    """The :class:`RunTransaction` methods the SQLite and PostgreSQL backends share.

    A backend says how a statement goes out: ``_ask`` when its answer is needed now,
    ``_send`` when not (PostgreSQL pipelines those, without waiting).
    """

    _sql: ClassVar[_Dialect]
    _record: RunRecord

    def _ask(self, query: str, params: Sequence[object]) -> _Cursor:
        raise NotImplementedError

    def _send(self, query: str, params: Sequence[object]) -> None:
        raise NotImplementedError

    def settle(self, seqs: Sequence[int]) -> None:
        raise NotImplementedError

    @property
    def record(self) -> RunRecord:
        return self._record

    def key_use(self, key: str) -> KeyUse | None:
        row = self._ask(
            self._sql("SELECT carried_operations FROM {idempotency_keys} WHERE run_id = ? AND key = ?"),
            (self._record.id, key),
        ).fetchone()
        if row is None:
            return None
        carried = row[0]  # SQLite keeps 1 or 0, PostgreSQL a boolean
        if carried is None:
            return "unrecorded"
        return "operations" if carried else "empty"

    def use_key(self, key: str, at: float, *, operations: bool) -> None:
        # A bool is what both take: SQLite stores it as 1 or 0.
        self._send(
            self._sql(
                "INSERT INTO {idempotency_keys} (run_id, key, used_at, carried_operations) "
                "VALUES (?, ?, ?, ?)"
            ),
            (self._record.id, key, at, operations),
        )

    def pending(self, limit: int) -> tuple[OutboxEntry, ...]:
        rows = self._ask(
            self._sql("SELECT seq, run_id, operations FROM {outbox} WHERE run_id = ? ORDER BY seq LIMIT ?"),
            (self._record.id, limit),
        ).fetchall()
        return tuple(OutboxEntry(*row) for row in rows)

    def reject(self, entry: OutboxEntry, reason: str, at: float) -> None:
        self.settle([entry.seq])
        self._send(
            self._sql(
                "INSERT INTO {rejected} (seq, run_id, operations, reason, rejected_at) VALUES (?, ?, ?, ?, ?)"
            ),
            (entry.seq, self._record.id, entry.operations, reason, at),
        )


def open_storage(url: str) -> Storage:
    """The storage at ``url``: ``sqlite:///path/file.sqlite3`` or ``postgresql://user:pass@host:port/db``.

    :class:`~metaops.InvalidArgumentError` for another scheme;
    :class:`~metaops.service.StorageError` when the database cannot be opened.
    """
    scheme, separator, rest = url.partition("://")
    if separator and scheme == "sqlite":
        from metaops.service._storage_sqlite import SQLiteStorage

        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            msg = f"--database {url!r}: expected sqlite:///path/to/file.sqlite3"
            raise InvalidArgumentError(msg)
        return SQLiteStorage(path)
    if separator and scheme in ("postgresql", "postgres"):
        from metaops.service._storage_postgres import PostgresStorage  # type: ignore[import-not-found,unused-ignore]

        storage: Storage = PostgresStorage(url)
        return storage
    msg = (
        f"--database {url!r}: expected sqlite:///path/file.sqlite3 or postgresql://user:pass@host:port/dbname"
    )
    raise InvalidArgumentError(msg)
