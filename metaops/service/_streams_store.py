"""Where a run's streams are kept: the interface, its limits, and what both backends share.

A **stream** is an append-only, numbered sequence of JSON values (chunks) that a run
produces under a key (``metadata.stream("openai", completion)`` in the official SDK;
``stream(key, iterable)`` in :mod:`metaops.client`), read live by any number of
consumers, each resuming where it left off after a dropped connection. Chunk ``i``
(from 0) keeps its index forever, so a consumer resumes "after chunk ``i``" and a
producer retrying a request that may have landed sends the same indices again: the
ones already stored are skipped, never stored twice.

Streams live in the same database as the runs, in their own tables (SQLite:
``streams`` and ``stream_chunks``; PostgreSQL: ``metaops_streams`` and
``metaops_stream_chunks``), and are announced on their own change feed
(:meth:`StreamStore.subscribe`): in-process for SQLite, ``LISTEN``/``NOTIFY`` for
PostgreSQL, so a consumer on one worker hears a producer on another.

**Bounded**: at most :data:`MAX_STREAMS_PER_RUN` keys per run, and per stream at most
:data:`MAX_STREAM_CHUNKS` chunks and :data:`MAX_STREAM_BYTES` bytes of chunk text, each
chunk at most :data:`MAX_CHUNK_BYTES`. A write that would pass a bound is refused
whole (:class:`StreamFullError`, answered 413): nothing of it is stored, and what the
stream holds stays readable. A finished stream takes no more chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from metaops._errors import InvalidArgumentError, MetaopsError
from metaops.service._storage import _Connection, _Dialect

if TYPE_CHECKING:
    from metaops.service._storage import Storage

__all__ = [
    "MAX_CHUNK_BYTES",
    "MAX_STREAMS_PER_RUN",
    "MAX_STREAM_BYTES",
    "MAX_STREAM_CHUNKS",
    "AppendPlan",
    "AppendResult",
    "ChunkGapError",
    "StreamFinishedError",
    "StreamFullError",
    "StreamInfo",
    "StreamListener",
    "StreamPage",
    "StreamStore",
    "check_stream_key",
    "open_stream_store",
    "plan_append",
]

_log = logging.getLogger("metaops.service")

MAX_STREAMS_PER_RUN = 64
MAX_STREAM_CHUNKS = 100_000
MAX_STREAM_BYTES = 16 * 1024 * 1024
MAX_CHUNK_BYTES = 256 * 1024
PAGE_BYTES = 256 * 1024
"""Chunk text one read returns at most (or one chunk, whatever its size)."""
PAGE_CHUNKS = 1000

_KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
MAX_KEY_LENGTH = 128


class StreamFullError(MetaopsError, ValueError):
    """A write would take a stream (or a run's streams) past a bound; nothing of it was stored (413)."""


class StreamFinishedError(MetaopsError, ValueError):
    """The stream was finished; it takes no more chunks (409)."""


class ChunkGapError(MetaopsError, ValueError):
    """A write's first chunk index is past the stream's end: chunks before it are missing (409).

    ``length`` is how many chunks the stream holds: the index to send next.
    """

    def __init__(self, message: str, length: int) -> None:
        super().__init__(message)
        self.length = length


def check_stream_key(key: object) -> str:
    """``key`` if it can name a stream, else :class:`~metaops.InvalidArgumentError`.

    1 to 128 characters from ``A-Z a-z 0-9 _ . -``, not starting with ``.``: the
    official SDK puts the key into URL paths unencoded, so nothing else survives the
    trip.

    >>> check_stream_key("openai-completion")
    'openai-completion'
    """
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= MAX_KEY_LENGTH
        or key.startswith(".")
        or not _KEY_CHARACTERS.issuperset(key)
    ):
        shown = key if isinstance(key, str) else type(key).__name__
        msg = (
            f"stream key {shown!r}: expected 1 to {MAX_KEY_LENGTH} characters "
            "from A-Z a-z 0-9 _ . - (not starting with '.')"
        )
        raise InvalidArgumentError(msg)
    return key


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's state: how many chunks (and bytes of chunk text) it holds, whether it is finished."""

    run_id: str
    key: str
    length: int
    bytes: int
    finished: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class StreamPage:
    """Chunks ``(index, JSON text)`` after the index asked for, and the stream's state when read."""

    chunks: tuple[tuple[int, str], ...]
    length: int
    finished: bool


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What a write did: the stream's length after it, how many chunks it added, whether it
    created the stream or finished it."""

    length: int
    accepted: int
    created: bool
    finished: bool


@dataclass(frozen=True, slots=True)
class AppendPlan:
    """What to store for one write: ``chunks`` get indices from ``start``; the totals after it."""

    start: int
    chunks: tuple[str, ...]
    ends: tuple[int, ...]
    length: int
    bytes: int
    finished: bool
    finishes: bool
    """Whether this write is the one that finishes the stream."""

    @property
    def changes(self) -> bool:
        """Whether the write stores anything (new chunks, or the stream's end)."""
        return bool(self.chunks) or self.finishes

    def rows(self, run_id: str, key: str) -> list[tuple[str, str, int, int, str]]:
        """The chunk rows to insert: ``(run_id, key, index, end_bytes, text)``, in index order."""
        return [
            (run_id, key, self.start + offset, self.ends[offset], text)
            for offset, text in enumerate(self.chunks)
        ]

    def result(self, created: bool) -> AppendResult:
        """What the write did, once stored (``created``: it created the stream)."""
        return AppendResult(self.length, len(self.chunks), created, self.finished)


def plan_append(
    key: str,
    length: int,
    stored_bytes: int,
    finished: bool,
    chunks: Sequence[str],
    first: int | None,
    end: bool,
) -> AppendPlan:
    """Decide a write of ``chunks`` (JSON texts; the first one numbered ``first``, or the
    stream's end when ``None``) to a stream holding ``length`` chunks.

    Chunks below ``length`` were stored by an earlier try of the same write: skipped.
    Raises :class:`ChunkGapError`, :class:`StreamFinishedError`, :class:`StreamFullError`.

    >>> plan = plan_append("k", 2, 10, False, ['"b"', '"c"', '"d"'], 1, True)
    >>> plan.start, plan.chunks, plan.ends, plan.length, plan.finished
    (2, ('"c"', '"d"'), (13, 16), 4, True)
    """
    begin = length if first is None else first
    if begin < 0:
        msg = f"stream {key!r}: chunk index {begin} is negative"
        raise InvalidArgumentError(msg)
    if begin > length:
        msg = f"stream {key!r}: the write starts at chunk {begin} but the stream holds {length} chunks"
        raise ChunkGapError(msg, length)
    new = tuple(chunks[length - begin :])
    if finished and new:
        msg = f"stream {key!r} is finished: it takes no more chunks"
        raise StreamFinishedError(msg)
    if length + len(new) > MAX_STREAM_CHUNKS:
        msg = f"stream {key!r}: {length + len(new):,} chunks would pass the limit of {MAX_STREAM_CHUNKS:,}"
        raise StreamFullError(msg)
    ends: list[int] = []
    total = stored_bytes
    for index, text in enumerate(new):
        size = len(text.encode())
        if size > MAX_CHUNK_BYTES:
            limit = f"over the limit of {MAX_CHUNK_BYTES:,}"
            msg = f"stream {key!r}: chunk {length + index} is {size:,} bytes, {limit}"
            raise StreamFullError(msg)
        total += size
        ends.append(total)
    if total > MAX_STREAM_BYTES:
        msg = f"stream {key!r}: {total:,} bytes of chunks would pass the limit of {MAX_STREAM_BYTES:,}"
        raise StreamFullError(msg)
    return AppendPlan(
        length, new, tuple(ends), length + len(new), total, finished or end, end and not finished
    )


def too_many_streams(run_id: str) -> StreamFullError:
    """The error for a run that already has :data:`MAX_STREAMS_PER_RUN` streams."""
    return StreamFullError(f"run {run_id!r} already has {MAX_STREAMS_PER_RUN} streams, the limit")


StreamListener = Callable[[str, str, int], None]
"""Called with ``(run_id, key, length)`` after a write changed a stream; must not block."""


class StreamStore(Protocol):
    """Runs' streams in a database; thread-safe, blocking (call it from worker threads)."""

    def append(
        self, run_id: str, key: str, chunks: Sequence[str], *, first: int | None, end: bool, at: float
    ) -> AppendResult:
        """Write ``chunks`` (JSON texts) to the stream, creating it if needed, in one transaction.

        See :func:`plan_append`; :class:`~metaops.service.RunNotFoundError` for an
        unknown run; :class:`StreamFullError` past a bound.
        """
        ...

    def keys(self, run_id: str) -> tuple[str, ...]:
        """The run's stream keys, oldest first (empty for an unknown run)."""
        ...

    def info(self, run_id: str, key: str) -> StreamInfo | None:
        """The stream's state, or ``None`` when the run has no such stream."""
        ...

    def read(self, run_id: str, key: str, after: int) -> StreamPage | None:
        """The chunks after index ``after`` (``-1``: from the start), at most a page of them.

        ``None`` when the run has no such stream.
        """
        ...

    def subscribe(self, listener: StreamListener) -> Callable[[], None]:
        """Call ``listener(run_id, key, length)`` after each change; return the unsubscribe function."""
        ...

    def close(self) -> None:
        """Release what the store holds (not the runs' storage)."""
        ...


_INFO = "SELECT run_id, key, length, bytes, finished, created_at FROM {streams} WHERE run_id = ? AND key = ?"


class _SQLStreamStore:
    """The :class:`StreamStore` code the SQLite and PostgreSQL stores share: the same statements, told
    apart by ``_sql``, the backend's :class:`~metaops.service._storage._Dialect`.

    Each backend's ``append`` takes its own locks and announces the change its own way
    around :meth:`_store`; ``read`` differs too (how each database gives one snapshot).
    """

    _sql: ClassVar[_Dialect]

    def _connection(self) -> AbstractContextManager[_Connection]:
        raise NotImplementedError

    def _info(self, db: _Connection, run_id: str, key: str, lock: str = "") -> StreamInfo | None:
        row = db.execute(self._sql(_INFO) + lock, (run_id, key)).fetchone()
        if row is None:
            return None
        run_id, key, length, size, finished, created_at = row
        return StreamInfo(run_id, key, length, size, bool(finished), created_at)  # SQLite's is 1 or 0

    def _store(
        self,
        db: _Connection,
        info: StreamInfo | None,
        run_id: str,
        key: str,
        chunks: Sequence[str],
        *,
        first: int | None,
        end: bool,
        at: float,
    ) -> tuple[AppendPlan, bool]:
        """Store a write to the stream in ``info`` (``None``: create it), in the caller's transaction,
        which holds the stream, and the run when it creates one; return the plan and whether it created."""
        sql = self._sql
        created = info is None
        if info is None:
            (count,) = db.execute(
                sql("SELECT count(*) FROM {streams} WHERE run_id = ?"), (run_id,)
            ).fetchone()
            if count >= MAX_STREAMS_PER_RUN:
                raise too_many_streams(run_id)
            db.execute(
                sql("INSERT INTO {streams} (run_id, key, position, created_at) VALUES (?, ?, ?, ?)"),
                (run_id, key, count, at),
            )
            info = StreamInfo(run_id, key, 0, 0, False, at)
        plan = plan_append(key, info.length, info.bytes, info.finished, chunks, first, end)
        if plan.chunks:
            with closing(db.cursor()) as cursor:
                cursor.executemany(
                    sql(
                        "INSERT INTO {stream_chunks} (run_id, key, idx, end_bytes, data) "
                        "VALUES (?, ?, ?, ?, ?)"
                    ),
                    plan.rows(run_id, key),
                )
        if plan.changes:
            # A bool is what both take: SQLite stores it as 1 or 0.
            db.execute(
                sql("UPDATE {streams} SET length = ?, bytes = ?, finished = ? WHERE run_id = ? AND key = ?"),
                (plan.length, plan.bytes, plan.finished, run_id, key),
            )
        return plan, created

    def keys(self, run_id: str) -> tuple[str, ...]:
        with self._connection() as db:
            rows = db.execute(
                self._sql("SELECT key FROM {streams} WHERE run_id = ? ORDER BY position"), (run_id,)
            ).fetchall()
        return tuple(key for (key,) in rows)

    def info(self, run_id: str, key: str) -> StreamInfo | None:
        with self._connection() as db:
            return self._info(db, run_id, key)


def open_stream_store(storage: Storage) -> StreamStore:
    """The stream store living beside ``storage``, in the same database (SQLite, PostgreSQL);
    in memory for any other storage."""
    from metaops.service._storage_sqlite import SQLiteStorage

    if isinstance(storage, SQLiteStorage):
        from metaops.service._streams_sqlite import SQLiteStreamStore

        return SQLiteStreamStore(storage.path)
    try:
        from metaops.service._storage_postgres import PostgresStorage
    except ImportError:  # pragma: no cover - psycopg missing: then it cannot be PostgreSQL either
        PostgresStorage = None  # type: ignore[assignment,misc]
    if PostgresStorage is not None and isinstance(storage, PostgresStorage):
        from metaops.service._streams_postgres import PostgresStreamStore

        return PostgresStreamStore(storage)
    from metaops.service._streams_memory import MemoryStreamStore

    _log.warning(
        "%s keeps no streams: they are kept in this process's memory (not durable, not shared)",
        type(storage).__name__,
    )
    return MemoryStreamStore(storage)
