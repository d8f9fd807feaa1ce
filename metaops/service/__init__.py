"""The metadata service: ``metaops serve``, an ASGI app on Starlette and uvicorn (extra ``server``).

Storage is one interface (:class:`Storage`) with two backends: SQLite, embedded and
the default (:class:`SQLiteStorage`), and PostgreSQL for several processes.
:func:`open_storage` picks one from a database URL.
"""

from metaops.service._errors import (
    RunCompletedError,
    RunExistsError,
    RunNotFoundError,
    ServiceClosingError,
    StorageError,
)
from metaops.service._storage import (
    ChangeListener,
    History,
    LogEntry,
    OutboxEntry,
    RejectedEntry,
    RunRecord,
    RunTransaction,
    Storage,
    open_storage,
)
from metaops.service._storage_sqlite import SQLiteStorage

__all__ = [
    "ChangeListener",
    "History",
    "LogEntry",
    "OutboxEntry",
    "RejectedEntry",
    "RunCompletedError",
    "RunExistsError",
    "RunNotFoundError",
    "RunRecord",
    "RunTransaction",
    "SQLiteStorage",
    "ServiceClosingError",
    "Storage",
    "StorageError",
    "open_storage",
]
