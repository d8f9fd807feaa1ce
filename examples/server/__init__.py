"""An example run-metadata server embedding :mod:`metaops.server` (standard library only).

SQLite (WAL) for storage, ``http.server`` for HTTP, on 127.0.0.1, with a bearer
token. It answers the platform's ``GET``/``PUT /api/v1/runs/{runId}/metadata`` the
way Trigger.dev does, so the official SDK (``@trigger.dev/core``'s ``ApiClient`` and
``StandardMetadataManager``) can talk to it. Run it with::

    python -m examples.server --db runs.sqlite3 --port 8030 --token secret

then create runs through the admin routes (see :mod:`examples.server.app`)::

    curl -H 'Authorization: Bearer secret' -d '{"id": "run_parent"}' localhost:8030/admin/runs
    curl -H 'Authorization: Bearer secret' -d '{"id": "run_child", "parentId": "run_parent"}' \\
         localhost:8030/admin/runs
    curl -X PUT -H 'Authorization: Bearer secret' localhost:8030/api/v1/runs/run_child/metadata \\
         -d '{"operations": [{"type": "increment", "key": "n", "value": 1}],
              "parentOperations": [{"type": "append", "key": "log", "value": "child ran"}]}'

How updates stay atomic and none is lost under concurrency is described in
:mod:`examples.server.service`; the storage interface in :mod:`examples.server.storage`.
"""

from examples.server.app import MAX_BODY_BYTES, MetadataHTTPServer, running_server
from examples.server.service import (
    MetadataService,
    RunCompletedError,
    RunExistsError,
    RunNotFoundError,
    ServiceConfig,
)
from examples.server.storage import OutboxEntry, RunRecord, SQLiteStorage, Storage, json_text

__all__ = [
    "MAX_BODY_BYTES",
    "MetadataHTTPServer",
    "MetadataService",
    "OutboxEntry",
    "RunCompletedError",
    "RunExistsError",
    "RunNotFoundError",
    "RunRecord",
    "SQLiteStorage",
    "ServiceConfig",
    "Storage",
    "json_text",
    "running_server",
]
