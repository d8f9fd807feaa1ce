"""The connections of one SQLite file, kept for reuse: what the runs' storage and the stream store share.

Each opens its own connections (its own ``PRAGMA`` settings), and both need the same
around them: a connection taken from the idle ones or opened, a transaction left
open by an error rolled back, sqlite3's errors raised as :class:`StorageError`, and
no connection handed out once closed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from metaops.service._errors import StorageError

__all__ = ["SQLitePool"]


class SQLitePool:
    """Connections to the SQLite file ``path`` made by ``connect``; at most ``idle`` kept between uses.

    ``what`` names the owner in the message of a call after :meth:`close`.
    """

    def __init__(self, path: str, connect: Callable[[], sqlite3.Connection], *, idle: int, what: str) -> None:
        self._path = path
        self._connect = connect
        self._keep = idle
        self._what = what
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for the ``with`` block; a transaction it leaves open on an error is rolled back."""
        with self._lock:
            if self._closed:
                msg = f"{self._path}: {self._what} is closed"
                raise StorageError(msg)
            db = self._idle.pop() if self._idle else None
        try:
            if db is None:
                db = self._connect()
        except sqlite3.Error as error:
            msg = f"{self._path}: cannot open the database: {error}"
            raise StorageError(msg) from None
        try:
            yield db
        except sqlite3.Error as error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            msg = f"{self._path}: {error}"
            raise StorageError(msg) from None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < self._keep
                if keep:
                    self._idle.append(db)
            if not keep:
                db.close()

    def close(self) -> None:
        """Close the idle connections, and those in use when they come back; later calls raise."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()
