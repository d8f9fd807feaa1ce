"""Where the example server keeps runs: a small interface, and SQLite behind it.

:class:`Storage` is everything the service needs; :class:`SQLiteStorage` implements
it with the standard library. A PostgreSQL version would map one to one: the
compare-and-swap is ``UPDATE ... WHERE id = $1 AND version = $2`` (row count 1)
followed, in the same transaction, by the outbox rows it carries (``INSERT ...
RETURNING seq``), the outbox a ``BIGSERIAL`` table, and :meth:`Storage.commit_flush`
one transaction that locks the run row (``SELECT ... FOR UPDATE``) instead of
SQLite's ``BEGIN IMMEDIATE``.

Every method commits before it returns: an update the server acknowledges is on
disk (in the WAL) and survives the process being killed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import metaops
from metaops import JSON, Operation, parse_operations
from metaops.server import BufferedEntry, FlushPlan

__all__ = ["Metadata", "OutboxEntry", "RunRecord", "SQLiteStorage", "Storage", "json_text"]

Metadata = dict[str, JSON]
OutboxEntry = tuple[str, Sequence[Operation]]
"""``(run_id, operations)``: operations to queue for a run, in the storage's outbox."""


def json_text(value: object) -> str:
    """Compact JSON as stored and served: :func:`metaops.json_text`, ASCII only.

    Non-finite numbers (a float increment can overflow) are written ``null``, as
    JavaScript writes them; every non-ASCII character is escaped, so that lone
    surrogates survive UTF-8 storage and transport.
    """
    return metaops.json_text(value, ascii=True)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as stored. ``completed_at`` is a Unix time in seconds; ``metadata`` is
    ``None`` when the record was read without it (``get_run(..., metadata=False)``)."""

    id: str
    metadata: Metadata | None
    version: int
    parent_id: str | None
    root_id: str | None
    completed: bool
    completed_at: float | None

    def to_json(self) -> dict[str, JSON]:
        """The record as the admin endpoints show it."""
        return {
            "id": self.id,
            "metadata": self.metadata,
            "version": self.version,
            "parentId": self.parent_id,
            "rootId": self.root_id,
            "completed": self.completed,
            "completedAt": self.completed_at,
        }


class Storage(Protocol):
    """What the metadata service needs from a database.

    Unknown runs: :meth:`get_run` returns ``None``; the others raise ``KeyError``.
    """

    def create_run(
        self, run_id: str, *, metadata: Metadata, parent_id: str | None, root_id: str | None
    ) -> RunRecord:
        """Insert a run; ``ValueError`` if ``run_id`` exists, ``KeyError`` if a parent or root does not."""
        ...

    def get_run(self, run_id: str, *, metadata: bool = True) -> RunRecord | None:
        """The run, or ``None``; ``metadata=False`` skips reading and parsing its metadata."""
        ...

    def read(self, run_id: str) -> tuple[Metadata, int]:
        """The run's metadata and version."""
        ...

    def compare_and_swap(
        self, run_id: str, expected_version: int, new_metadata: Metadata, enqueue: Sequence[OutboxEntry] = ()
    ) -> list[int] | None:
        """If the version is ``expected_version``, in one transaction: store ``new_metadata``, bump
        the version and queue each entry of ``enqueue``; return the entries' sequence numbers
        (``[]`` for none). ``None``, and nothing done, when the version moved."""
        ...

    def complete_run(self, run_id: str, completed_at: float) -> RunRecord:
        """Mark the run completed at ``completed_at``."""
        ...

    def enqueue(self, entries: Sequence[OutboxEntry]) -> list[int]:
        """Durably queue every entry, all or none (one transaction); return their sequence
        numbers, increasing, in order. ``KeyError`` (and nothing queued) for an unknown run."""
        ...

    def pending(self) -> list[BufferedEntry]:
        """Every queued entry not yet settled, in sequence order."""
        ...

    def commit_flush(self, run_id: str, expected_version: int, plan: FlushPlan, at: float) -> bool:
        """In one transaction, if the version is ``expected_version``: write ``plan.metadata`` (when
        ``plan.changed``, bumping the version), drop the queued entries ``plan.seqs`` and record
        ``plan.rejected`` with their reasons. False (and nothing done) when the version moved."""
        ...

    def rejections(self, run_id: str) -> list[dict[str, JSON]]:
        """The entries refused for ``run_id`` (over the size limit), oldest first."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id           TEXT PRIMARY KEY,
    metadata     TEXT    NOT NULL DEFAULT '{}',
    version      INTEGER NOT NULL DEFAULT 0,
    parent_id    TEXT REFERENCES runs (id),
    root_id      TEXT REFERENCES runs (id),
    completed    INTEGER NOT NULL DEFAULT 0,
    completed_at REAL
);
-- Operations acknowledged for a run but not yet in its metadata (parent/root
-- operations, and own operations that lost every compare-and-swap): the durable
-- side of the service's OperationBuffer. seq is the arrival order.
CREATE TABLE IF NOT EXISTS pending_operations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL REFERENCES runs (id),
    operations TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected_operations (
    seq         INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    operations  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_operations_run ON rejected_operations (run_id, seq);
"""

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_IDLE_CONNECTIONS = 16


class SQLiteStorage:
    """:class:`Storage` on one SQLite file in WAL mode.

    Connections are pooled and shared between threads, one at a time each;
    every statement runs in autocommit mode unless a method opens a transaction.
    ``synchronous="FULL"`` (the default) also survives power loss; ``"NORMAL"``
    survives a killed process (the WAL is written before a commit returns) but may
    lose the last commits on power loss.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout: float = 30.0) -> None:
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS:
            msg = f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            raise ValueError(msg)
        self._path = str(path)
        self._synchronous = mode
        self._busy_timeout = busy_timeout
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._connection() as db:
            # WAL lets readers run beside the one writer, and is a property of the file.
            mode_set = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode_set).lower() != "wal":
                msg = f"{self._path}: SQLite refused WAL mode (got {mode_set!r})"
                raise RuntimeError(msg)
            db.executescript(_SCHEMA)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                msg = f"{self._path}: storage is closed"
                raise RuntimeError(msg)
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect()
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < _IDLE_CONNECTIONS
                if keep:
                    self._idle.append(db)
            if not keep:
                db.close()

    def close(self) -> None:
        """Close every idle connection; later calls raise."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

    # ------------------------------------------------------------------ runs

    def create_run(
        self, run_id: str, *, metadata: Metadata, parent_id: str | None, root_id: str | None
    ) -> RunRecord:
        with self._connection() as db:
            try:
                db.execute(
                    "INSERT INTO runs (id, metadata, parent_id, root_id) VALUES (?, ?, ?, ?)",
                    (run_id, json_text(metadata), parent_id, root_id),
                )
            except sqlite3.IntegrityError as error:
                if "UNIQUE" in str(error) or "PRIMARY KEY" in str(error):
                    msg = f"run {run_id!r} already exists"
                    raise ValueError(msg) from None
                msg = f"parent or root run not found (parentId={parent_id!r}, rootId={root_id!r})"
                raise KeyError(msg) from None
        return RunRecord(run_id, metadata, 0, parent_id, root_id, False, None)

    def get_run(self, run_id: str, *, metadata: bool = True) -> RunRecord | None:
        column = "metadata" if metadata else "NULL"
        with self._connection() as db:
            row = db.execute(
                f"SELECT {column}, version, parent_id, root_id, completed, completed_at "
                "FROM runs WHERE id = ?",
                (run_id,),
            ).fetchone()
        if row is None:
            return None
        text, version, parent_id, root_id, completed, completed_at = row
        loaded = None if text is None else json.loads(text)
        return RunRecord(run_id, loaded, version, parent_id, root_id, bool(completed), completed_at)

    def read(self, run_id: str) -> tuple[Metadata, int]:
        with self._connection() as db:
            row = db.execute("SELECT metadata, version FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        return json.loads(row[0]), row[1]

    def compare_and_swap(
        self, run_id: str, expected_version: int, new_metadata: Metadata, enqueue: Sequence[OutboxEntry] = ()
    ) -> list[int] | None:
        text = json_text(new_metadata)
        rows = _outbox_rows(enqueue)
        with self._connection() as db:
            if not rows:
                # One statement is its own transaction: the hot path takes no explicit lock.
                cursor = db.execute(
                    "UPDATE runs SET metadata = ?, version = version + 1 WHERE id = ? AND version = ?",
                    (text, run_id, expected_version),
                )
                return [] if cursor.rowcount == 1 else None
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(
                "UPDATE runs SET metadata = ?, version = version + 1 WHERE id = ? AND version = ?",
                (text, run_id, expected_version),
            )
            if cursor.rowcount != 1:
                db.execute("ROLLBACK")
                return None
            seqs = _insert_outbox(db, rows)
            db.execute("COMMIT")
        return seqs

    def complete_run(self, run_id: str, completed_at: float) -> RunRecord:
        with self._connection() as db:
            cursor = db.execute(
                "UPDATE runs SET completed = 1, completed_at = ? WHERE id = ?", (completed_at, run_id)
            )
        if cursor.rowcount != 1:
            raise KeyError(run_id)
        record = self.get_run(run_id)
        assert record is not None
        return record

    # ------------------------------------------------------------------ outbox

    def enqueue(self, entries: Sequence[OutboxEntry]) -> list[int]:
        rows = _outbox_rows(entries)
        if not rows:
            return []
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            seqs = _insert_outbox(db, rows)
            db.execute("COMMIT")
        return seqs

    def pending(self) -> list[BufferedEntry]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT seq, run_id, operations FROM pending_operations ORDER BY seq"
            ).fetchall()
        # They were checked when they arrived; unsafe keys would have been refused then.
        return [BufferedEntry(seq, run_id, parse_operations(json.loads(text))) for seq, run_id, text in rows]

    def commit_flush(self, run_id: str, expected_version: int, plan: FlushPlan, at: float) -> bool:
        with self._connection() as db:
            # IMMEDIATE takes the write lock now, so the version read stays true until COMMIT.
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT version FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                raise KeyError(run_id)
            if row[0] != expected_version:
                db.execute("ROLLBACK")
                return False
            if plan.changed:
                db.execute(
                    "UPDATE runs SET metadata = ?, version = version + 1 WHERE id = ?",
                    (json_text(plan.metadata), run_id),
                )
            db.executemany("DELETE FROM pending_operations WHERE seq = ?", [(seq,) for seq in plan.seqs])
            db.executemany(
                "INSERT INTO rejected_operations (seq, run_id, operations, reason, rejected_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        r.entry.seq,
                        run_id,
                        json_text([op.to_wire() for op in r.entry.operations]),
                        r.reason,
                        at,
                    )
                    for r in plan.rejected
                ],
            )
            db.execute("COMMIT")
        return True

    def rejections(self, run_id: str) -> list[dict[str, JSON]]:
        with self._connection() as db:
            rows = db.execute(
                "SELECT seq, operations, reason, rejected_at FROM rejected_operations "
                "WHERE run_id = ? ORDER BY seq",
                (run_id,),
            ).fetchall()
        return [
            {"seq": seq, "operations": json.loads(text), "reason": reason, "rejectedAt": at}
            for seq, text, reason, at in rows
        ]

    def counts(self) -> dict[str, int]:
        """Rows per table, for the admin endpoint and tests."""
        with self._connection() as db:
            return {
                table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("runs", "pending_operations", "rejected_operations")
            }


def _outbox_rows(entries: Sequence[OutboxEntry]) -> list[tuple[str, str]]:
    return [(run_id, json_text([op.to_wire() for op in operations])) for run_id, operations in entries]


def _insert_outbox(db: sqlite3.Connection, rows: list[tuple[str, str]]) -> list[int]:
    """Insert outbox rows inside the caller's transaction; the caller's connection rolls back on error."""
    seqs: list[int] = []
    for run_id, text in rows:
        try:
            cursor = db.execute(
                "INSERT INTO pending_operations (run_id, operations) VALUES (?, ?)", (run_id, text)
            )
        except sqlite3.IntegrityError as error:
            if "FOREIGN KEY" not in str(error):
                raise
            raise KeyError(run_id) from None
        assert cursor.lastrowid is not None
        seqs.append(cursor.lastrowid)
    return seqs
