"""Streams in the runs' SQLite file: tables ``streams`` and ``stream_chunks``, announced in-process.

Writes take the database's write lock (``BEGIN IMMEDIATE``) like the runs' writes,
and are as durable (``synchronous=FULL``). Each chunk row keeps the byte position
where it ends in the stream (``end_bytes``), so that a read can stop after a page of
bytes with an index range alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from metaops.service._errors import RunNotFoundError
from metaops.service._sqlite import SQLitePool
from metaops.service._storage import _SQLITE, Listeners
from metaops.service._streams_store import (
    PAGE_BYTES,
    PAGE_CHUNKS,
    AppendResult,
    StreamListener,
    StreamPage,
    _SQLStreamStore,
)

__all__ = ["SQLiteStreamStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    run_id     TEXT NOT NULL REFERENCES runs (id),
    key        TEXT NOT NULL,
    position   INTEGER NOT NULL,
    length     INTEGER NOT NULL DEFAULT 0,
    bytes      INTEGER NOT NULL DEFAULT 0,
    finished   INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stream_chunks (
    run_id    TEXT NOT NULL,
    key       TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    end_bytes INTEGER NOT NULL,
    data      TEXT NOT NULL,
    UNIQUE (run_id, key, idx)
);
"""

_IDLE_CONNECTIONS = 8


class SQLiteStreamStore(_SQLStreamStore):
    """:class:`~metaops.service._streams_store.StreamStore` in the SQLite file at ``path``
    (the runs' file: streams refer to its ``runs`` table)."""

    _sql = _SQLITE

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self._path = str(path)
        self._busy_timeout = busy_timeout
        self._pool = SQLitePool(self._path, self._connect, idle=_IDLE_CONNECTIONS, what="stream store")
        self._listeners: Listeners[StreamListener] = Listeners()
        with self._connection() as db:
            db.executescript(_SCHEMA)

    def _connection(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._pool.connection()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def close(self) -> None:
        self._pool.close()

    def append(
        self, run_id: str, key: str, chunks: Sequence[str], *, first: int | None, end: bool, at: float
    ) -> AppendResult:
        with self._connection() as db:
            # The database's write lock: no other writer changes the stream, or adds one to the run.
            db.execute("BEGIN IMMEDIATE")
            info = self._info(db, run_id, key)
            if info is None and db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise RunNotFoundError(run_id)
            plan, created = self._store(db, info, run_id, key, chunks, first=first, end=end, at=at)
            db.execute("COMMIT")
        if created or plan.changes:
            self._notify(run_id, key, plan.length)
        return plan.result(created)

    def read(self, run_id: str, key: str, after: int) -> StreamPage | None:
        with self._connection() as db:
            db.execute("BEGIN")  # one read transaction: the chunks and the state agree
            try:
                info = self._info(db, run_id, key)
                if info is None:
                    return None
                base = 0
                if after >= 0:
                    row = db.execute(
                        "SELECT end_bytes FROM stream_chunks WHERE run_id = ? AND key = ? AND idx = ?",
                        (run_id, key, after),
                    ).fetchone()
                    base = 0 if row is None else int(row[0])
                rows = db.execute(
                    "SELECT idx, data FROM stream_chunks WHERE run_id = ? AND key = ? AND idx > ? "
                    "AND (idx = ? OR end_bytes <= ?) ORDER BY idx LIMIT ?",
                    (run_id, key, after, after + 1, base + PAGE_BYTES, PAGE_CHUNKS),
                ).fetchall()
            finally:
                db.execute("COMMIT")
        return StreamPage(tuple((int(i), str(d)) for i, d in rows), info.length, info.finished)

    def subscribe(self, listener: StreamListener) -> Callable[[], None]:
        return self._listeners.add(listener)

    def _notify(self, run_id: str, key: str, length: int) -> None:
        for listener in self._listeners.current():
            listener(run_id, key, length)
