"""The metadata service behind ``metaops serve``: an ASGI app on Starlette and uvicorn (extra ``server``).

:func:`create_app` builds the app for a :class:`MetadataService`, which keeps runs in
a :class:`Storage`: SQLite, embedded and the default (:class:`SQLiteStorage`), or
PostgreSQL for several processes; :func:`open_storage` picks one from a database
URL. :func:`running_server` serves an app on uvicorn in a background thread.
The app also serves Realtime (what the official SDK's ``runs.subscribeToRun`` reads),
runs' streams, and read-only, run-scoped public access tokens
(:func:`mint_public_token`, or ``metaops token RUN_ID``).

    pip install 'metaops[server]'
    metaops serve --database sqlite:///runs.sqlite3 --port 8030 --token secret
"""

from metaops.service._app import MAX_BODY_BYTES, MetadataApp, create_app
from metaops.service._auth import mint_public_token
from metaops.service._errors import (
    RunCompletedError,
    RunExistsError,
    RunNotFoundError,
    ServiceClosingError,
    StorageError,
)
from metaops.service._serve import RunningServer, running_server
from metaops.service._service import MetadataService, RunState, ServiceConfig, UpdateOutcome
from metaops.service._storage import (
    ChangeListener,
    History,
    KeyUse,
    LogEntry,
    OutboxEntry,
    RejectedEntry,
    RunRecord,
    RunTransaction,
    Storage,
    open_storage,
)
from metaops.service._storage_sqlite import SQLiteStorage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from metaops.service._storage_postgres import PostgresStorage


def __getattr__(name: str) -> object:
    # PostgresStorage imports psycopg: only when asked for, so that SQLite users never do.
    if name == "PostgresStorage":
        from metaops.service._storage_postgres import PostgresStorage

        return PostgresStorage
    msg = f"module 'metaops.service' has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "MAX_BODY_BYTES",
    "ChangeListener",
    "History",
    "KeyUse",
    "LogEntry",
    "MetadataApp",
    "MetadataService",
    "OutboxEntry",
    "PostgresStorage",
    "RejectedEntry",
    "RunCompletedError",
    "RunExistsError",
    "RunNotFoundError",
    "RunRecord",
    "RunState",
    "RunTransaction",
    "RunningServer",
    "SQLiteStorage",
    "ServiceClosingError",
    "ServiceConfig",
    "Storage",
    "StorageError",
    "UpdateOutcome",
    "create_app",
    "mint_public_token",
    "open_storage",
    "running_server",
]
