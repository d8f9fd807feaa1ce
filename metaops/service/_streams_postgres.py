"""Streams in the runs' PostgreSQL schema: ``metaops_streams`` and ``metaops_stream_chunks``.

They share the runs' connection pool. A write holds its stream's row (``FOR
UPDATE``) for one transaction, and announces itself with ``pg_notify`` on a channel
of its own beside the runs' (delivered on commit), so that consumers on every worker
hear it; one more connection per process listens, from the first
:meth:`PostgresStreamStore.subscribe`.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from metaops.service._errors import RunNotFoundError
from metaops.service._storage import _POSTGRES, Listeners
from metaops.service._storage_postgres import PostgresStorage
from metaops.service._streams_store import (
    PAGE_BYTES,
    PAGE_CHUNKS,
    AppendResult,
    StreamListener,
    StreamPage,
    _SQLStreamStore,
)

__all__ = ["PostgresStreamStore"]

_log = logging.getLogger("metaops.service")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metaops_streams (
    run_id     text NOT NULL REFERENCES metaops_runs (id),
    key        text NOT NULL,
    position   integer NOT NULL,
    length     bigint NOT NULL DEFAULT 0,
    bytes      bigint NOT NULL DEFAULT 0,
    finished   boolean NOT NULL DEFAULT false,
    created_at double precision NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS metaops_stream_chunks (
    run_id    text NOT NULL,
    key       text NOT NULL,
    idx       bigint NOT NULL,
    end_bytes bigint NOT NULL,
    data      text NOT NULL,
    PRIMARY KEY (run_id, key, idx)
);
"""

_READ = """
WITH base AS (
    SELECT COALESCE((SELECT end_bytes FROM metaops_stream_chunks
                     WHERE run_id = %(run_id)s AND key = %(key)s AND idx = %(after)s), 0) AS at
)
SELECT idx, data FROM metaops_stream_chunks, base
WHERE run_id = %(run_id)s AND key = %(key)s AND idx > %(after)s
  AND (idx = %(after)s + 1 OR end_bytes <= base.at + %(page)s)
ORDER BY idx LIMIT %(limit)s
"""


def _channel(runs_channel: str) -> str:
    name = f"{runs_channel}:streams"
    if len(name.encode()) > 63:  # an identifier: at most 63 bytes
        name = "metaops:streams:" + hashlib.sha256(name.encode()).hexdigest()[:40]
    return name


class PostgresStreamStore(_SQLStreamStore):
    """:class:`~metaops.service._streams_store.StreamStore` beside a :class:`PostgresStorage`."""

    _sql = _POSTGRES

    def __init__(self, storage: PostgresStorage) -> None:
        self._storage = storage
        self._channel = _channel(storage.channel)
        self._origin = secrets.token_hex(6)
        self._lock = threading.Lock()
        self._listeners: Listeners[StreamListener] = Listeners()
        self._stop_listening: Callable[[], None] | None = None
        self._listening = False
        with self._connection() as db, db.transaction():
            # Like the runs' tables: N workers starting at once must not race on CREATE.
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"metaops.streams:{self._channel}",))
            db.execute(_SCHEMA.encode())

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        # The runs' pool: a pooled autocommit connection, psycopg errors as StorageError.
        return self._storage.connection()

    def close(self) -> None:
        with self._lock:
            stop, self._stop_listening = self._stop_listening, None
        if stop is not None:
            stop()

    def append(
        self, run_id: str, key: str, chunks: Sequence[str], *, first: int | None, end: bool, at: float
    ) -> AppendResult:
        with self._connection() as db, db.transaction():
            info = self._info(db, run_id, key, " FOR UPDATE")
            if info is None:
                # Creating a stream holds the run, so that two creators cannot both pass the count.
                run = db.execute(
                    "SELECT 1 FROM metaops_runs WHERE id = %s FOR NO KEY UPDATE", (run_id,)
                ).fetchone()
                if run is None:
                    raise RunNotFoundError(run_id)
                info = self._info(db, run_id, key, " FOR UPDATE")
            plan, created = self._store(db, info, run_id, key, chunks, first=first, end=end, at=at)
            if created or plan.changes:
                db.execute(
                    "SELECT pg_notify(%s, %s)",
                    (self._channel, f"{plan.length}:{self._origin}:{run_id}/{key}"),
                )
        if created or plan.changes:
            self._dispatch(f"{run_id}/{key}", plan.length)
        return plan.result(created)

    def read(self, run_id: str, key: str, after: int) -> StreamPage | None:
        # One snapshot: the chunks read and the state reported agree.
        with self._connection() as db, db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            info = self._info(db, run_id, key)
            if info is None:
                return None
            rows = db.execute(
                _READ,
                {"run_id": run_id, "key": key, "after": after, "page": PAGE_BYTES, "limit": PAGE_CHUNKS},
            ).fetchall()
        return StreamPage(tuple((int(i), str(d)) for i, d in rows), info.length, info.finished)

    def subscribe(self, listener: StreamListener) -> Callable[[], None]:
        unsubscribe = self._listeners.add(listener)
        with self._lock:
            start, self._listening = not self._listening, True
        if start:
            # On the storage's one listening connection; returns once LISTEN is in effect.
            stop = self._storage.listen(self._channel, self._on_notification)
            with self._lock:
                self._stop_listening = stop

        return unsubscribe

    def _on_notification(self, payload: str) -> None:
        length, _, rest = payload.partition(":")
        origin, _, stream = rest.partition(":")
        if origin != self._origin:  # this process's own were dispatched after their commit
            self._dispatch(stream, int(length))

    def _dispatch(self, stream: str, length: int) -> None:
        run_id, _, key = stream.partition("/")
        for listener in self._listeners.current():
            try:
                listener(run_id, key, length)
            except Exception:  # one failing listener must not starve the others
                _log.exception("stream listener %r failed for %s", listener, stream)
