"""Update a run's metadata over HTTP from Python: ``pip install 'metaops[client]'``.

:class:`MetadataClient` (threads) and :class:`AsyncMetadataClient` (asyncio) send a
run's metadata updates to ``metaops serve`` or any service speaking the platform's
``PUT /api/v1/runs/{runId}/metadata``. Update calls return at once, without I/O;
a flusher sends them every ``flush_interval`` seconds, collapsed, with retries.

.. code-block:: python

    from metaops.client import MetadataClient, metadata

    def import_row(row):
        metadata.increment("rows")          # the client bound below, or nothing
        metadata.parent.increment("rows")   # the parent run, when there is one

    with MetadataClient("run_1234", base_url="http://127.0.0.1:8030", access_token="...") as md:
        md.set("status", "importing")
        for row in rows:
            import_row(row)
        md.flush()                          # persisted now, or an exception

Credentials: ``base_url`` defaults to ``$TRIGGER_API_URL`` and ``access_token`` to
``$TRIGGER_SECRET_KEY``, the official SDK's variables; without either,
:class:`MissingCredentialsError`.

The ambient :data:`metadata` acts on the client bound to the current context by
``with`` / ``async with`` (a :class:`contextvars.ContextVar`, inherited by asyncio
tasks). Outside one, its update calls do nothing and ``current()`` and ``get()``
return ``None``. Threads start with an empty context: run a thread's work in a copy
of the caller's, ``threading.Thread(target=contextvars.copy_context().run,
args=(work,))`` or ``executor.submit(contextvars.copy_context().run, work)``.
Two clients in two threads or tasks never see each other.

Delivery
--------

Connection errors, timeouts, 408, 429 and 5xx answers are retried with exponential
backoff and full jitter, honouring ``Retry-After`` (:class:`RetryPolicy`). After a
flush's attempts, :meth:`MetadataClient.flush` raises
:class:`ServiceUnavailableError` and the flush is sent again at the next interval:
nothing is lost. Every request carries an ``Idempotency-Key``, the same across the
retries of one body, and ``metaops serve`` applies each key once, so nothing is
applied twice either. A body whose outcome is unknown (it may have been applied)
is never merged with newer calls under a new key: with nothing newer queued it is
resent under its own key; with newer calls queued, its key is first *fenced* (a
PUT with that key and no operations): a first use spends the key, and the body can
safely be merged and sent under a new one; a replay says (``Idempotent-Original``)
whether the key's first request carried operations (the body was applied) or was
empty (an earlier attempt of the fence, whose answer was lost, spent it).

Against the Trigger.dev platform, which does not honour ``Idempotency-Key``, the
guarantee is *at least once*: nothing is lost, but a body whose response was lost
(a timeout, a dropped connection after sending) may be applied twice.

A refusal (400, 401, 403, 404, 413) is never retried: the flush is set aside
with the service's reason in :attr:`MetadataClient.rejected`, logged on the
``metaops.client`` logger, and passed to ``on_reject``; later calls keep working.

A client never closed is flushed at interpreter exit; the exit waits at most
:data:`EXIT_TIMEOUT` seconds for all of them together.

From a Trigger.dev task
-----------------------

Inside a task, the official SDK (``@trigger.dev/core`` 4.8.3) finds the API in
the environment the task's process runs with: ``TRIGGER_API_URL`` and
``TRIGGER_SECRET_KEY``. A Python script the task starts inherits them (unless it
is given an environment of its own), and the client reads the same two. The run's
id is *not* in the environment (there is no ``TRIGGER_RUN_ID``): the task receives
it as ``ctx.run.id``, and its parent as ``ctx.run.parentTaskRunId``, from the
worker over IPC. The task must pass both to the script, for example::

    // in the task's run(payload, { ctx }), with node:child_process's spawn
    spawn("python", ["import.py"], {
      env: { ...process.env, RUN_ID: ctx.run.id, RUN_IS_ROOT: ctx.run.parentTaskRunId ? "0" : "1" },
    });

    # import.py
    md = MetadataClient(os.environ["RUN_ID"], is_root=os.environ["RUN_IS_ROOT"] == "1")

The platform may also set ``TRIGGER_RUN_TOKEN``, a short-lived run-scoped token it
replaces by a message to the task's own process, which a child process never
receives: the client does not fall back to it.
"""

from __future__ import annotations

try:
    import httpx as _httpx  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    msg = "metaops.client needs httpx: pip install 'metaops[client]'"
    raise ImportError(msg) from None

from metaops.buffer import RejectedFlush
from metaops.client._ambient import AmbientMetadata, metadata
from metaops.client._async import AsyncMetadataClient
from metaops.client._base import EXIT_TIMEOUT
from metaops.client._errors import (
    ClientClosedError,
    MissingCredentialsError,
    RequestRefusedError,
    ServiceUnavailableError,
    WrongEventLoopError,
)
from metaops.client._retry import RetryPolicy
from metaops.client._streams import StreamChunk, read_stream, read_stream_async
from metaops.client._subscribe import RunSnapshot, Subscription, subscribe, subscribe_async
from metaops.client._sync import MetadataClient

__all__ = [
    "EXIT_TIMEOUT",
    "AmbientMetadata",
    "AsyncMetadataClient",
    "ClientClosedError",
    "MetadataClient",
    "MissingCredentialsError",
    "RejectedFlush",
    "RequestRefusedError",
    "RetryPolicy",
    "RunSnapshot",
    "ServiceUnavailableError",
    "StreamChunk",
    "Subscription",
    "WrongEventLoopError",
    "metadata",
    "read_stream",
    "read_stream_async",
    "subscribe",
    "subscribe_async",
]
