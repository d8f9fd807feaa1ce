"""Realtime: ``GET /realtime/v1/runs/{runId}``, a run's changes as the official SDK's
``runs.subscribeToRun`` reads them, in Electric's shape protocol.

The exchange (what ``@trigger.dev/core`` 4.8.3 and ``@electric-sql/client`` send and check):

* **Snapshot**: ``?offset=-1`` (``log``, ``cursor`` and unknown parameters are
  ignored) answers at once: ``200``, a JSON array holding the run's row as an
  ``insert`` and ``{"headers": {"control": "up-to-date"}}``, with the headers
  ``electric-handle``, ``electric-offset``, ``electric-schema`` and
  ``electric-up-to-date``.
* **Live**: ``?live=true&handle=H&offset=O`` is a long-poll. If the run moved past
  ``O`` it answers at once with the row as it is now (an ``update``); otherwise it
  waits for the next change, at most :data:`HOLD` seconds (±10 %), and then answers
  ``[up-to-date]`` with ``O`` echoed. Live answers carry ``electric-cursor``. Every
  change between two polls is folded into the newest row: a subscriber gets the
  latest state, never a queue of states, whatever its speed.
* A handle that is not the run's (the run was created anew), or an offset ahead of
  the run, answers ``409`` ``[{"headers": {"control": "must-refetch"}}]`` with the
  run's handle: the client starts over at ``offset=-1``.
* Errors: ``400`` a malformed ``offset``/``handle``/``live``/``skipColumns``, a live
  or resumed request without ``handle``; ``401``/``403`` (the app's guard); ``404``
  an unknown run; ``503`` the database failed (the SDK retries 5xx). The SDK stops
  silently on a 4xx, so these are for plain HTTP clients.

**The row.** Columns in the platform's encoding (every value a string or ``null``,
types in ``electric-schema``):

=================  =========================================================
``id``             the run's id (metaops has no internal id)
``friendlyId``     the run's id (the SDK's ``run.id``)
``taskIdentifier`` ``"metaops"`` (runs here have no task)
``status``         ``EXECUTING`` while open, ``COMPLETED_SUCCESSFULLY`` once
                   completed (the SDK's ``EXECUTING`` / ``COMPLETED``)
``createdAt``      when the run was created; also ``startedAt``
``updatedAt``      when it completed, else when it was created (the store
                   keeps no time of the last write)
``completedAt``    when it completed, else ``null``; its first non-null value
                   ends a default subscription (``stopOnCompletion``)
``metadata``       the run's metadata, its JSON text, with ``metadataType``
                   ``application/json``
``isTest``         ``false``; ``runTags`` ``[]``
``realtimeStreams`` the run's stream keys (``withStreams()`` reads them)
=================  =========================================================

Timestamps are UTC without a zone suffix, milliseconds (``2025-01-02T03:04:05.678``):
the SDK appends ``Z``. ``?skipColumns=metadata,...`` leaves out columns other than
the six the SDK requires.

**Offsets and handles.** A run's handle is its creation time in milliseconds; a
store recreated from scratch gives new handles, which clients notice (409). Its
offset is ``<version>_<n>`` with ``version`` the metadata's version (it counts
writes) and ``n = 2 × stream keys + completed``: every change to the row raises it,
and every worker computes the same offset for the same state, so a client may poll
any process.

**One hub per process** (:class:`RunHub`) hears the storage's change feed (and the
streams', for new keys), re-reads a watched run once per burst of changes (never
once per subscriber), keeps one view of it (its row, encoded once), and wakes the
polls waiting on it. A run is watched while a poll waits on it and for a second
after. What a subscriber costs while it waits: one pending request, no buffer. A
view not re-read for :data:`HOLD` seconds is re-read by the next poll, so a
notification lost (a dropped ``LISTEN`` connection) delays a subscriber by one
hold at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from metaops.service._errors import RunNotFoundError, ServiceClosingError, StorageError
from metaops.service._service import MetadataService
from metaops.service._streams_store import StreamStore

__all__ = ["HOLD", "RealtimeEndpoint", "RunHub", "RunView", "build_reader"]

_log = logging.getLogger("metaops.service.realtime")

HOLD = 20.0
"""Seconds a live poll waits for a change before it answers "nothing new" (the platform's hold)."""
LINGER = 1.0
"""Seconds a run stays watched after its last poll ended (a subscriber polls again at once)."""
TASK_IDENTIFIER = "metaops"
INTERRUPTIBLE = "metaops.interruptible"
"""Set in a request's ASGI scope by the live routes: at shutdown the server closes its
connection instead of waiting for it (the client reconnects and resumes)."""

_T = TypeVar("_T")
Run = Callable[[Callable[[], _T]], Awaitable[_T]]

_COLUMN_TYPES: dict[str, dict[str, Any]] = {
    "id": {"type": "text"},
    "taskIdentifier": {"type": "text"},
    "friendlyId": {"type": "text"},
    "status": {"type": "text"},
    "createdAt": {"type": "timestamp"},
    "updatedAt": {"type": "timestamp"},
    "startedAt": {"type": "timestamp"},
    "completedAt": {"type": "timestamp"},
    "isTest": {"type": "bool"},
    "metadata": {"type": "text"},
    "metadataType": {"type": "text"},
    "runTags": {"type": "text", "dims": 1},
    "realtimeStreams": {"type": "text", "dims": 1},
}
REQUIRED_COLUMNS = frozenset({"id", "taskIdentifier", "friendlyId", "status", "createdAt", "updatedAt"})
SCHEMA = json.dumps(_COLUMN_TYPES, separators=(",", ":"))

_OFFSET = re.compile(r"(\d{1,18})_(\d{1,18})")
_HANDLE = re.compile(r"\d{1,18}")
_UP_TO_DATE = b'{"headers":{"control":"up-to-date"}}'
_MUST_REFETCH = b'[{"headers":{"control":"must-refetch"}}]'


def _timestamp(seconds: float | None) -> bytes:
    if seconds is None:
        return b"null"
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return b'"' + moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3].encode() + b'"'


def _string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


class RunView:
    """What Realtime serves for a run at one state: its handle, offset and encoded row. Read-only."""

    __slots__ = (
        "_bodies",
        "columns",
        "completed",
        "handle",
        "key",
        "offset",
        "position",
        "run_id",
        "streams",
        "value",
    )

    def __init__(
        self,
        run_id: str,
        *,
        version: int,
        created_at: float,
        completed_at: float | None,
        metadata: bytes,
        streams: tuple[str, ...],
    ) -> None:
        self.run_id = run_id
        self.completed = completed_at is not None
        self.streams = streams
        self.position = (version, 2 * len(streams) + int(self.completed))
        self.handle = str(int(created_at * 1000))
        self.offset = f"{self.position[0]}_{self.position[1]}"
        identifier = _string(run_id)
        created = _timestamp(created_at)
        # Keys are checked to need no quoting in a Postgres array literal.
        streams_literal = "{" + ",".join(f'"{key}"' for key in streams) + "}"
        self.columns: tuple[tuple[str, bytes], ...] = (
            ("id", identifier),
            ("taskIdentifier", _string(TASK_IDENTIFIER)),
            ("friendlyId", identifier),
            ("status", b'"COMPLETED_SUCCESSFULLY"' if self.completed else b'"EXECUTING"'),
            ("createdAt", created),
            ("updatedAt", _timestamp(completed_at) if completed_at is not None else created),
            ("startedAt", created),
            ("completedAt", _timestamp(completed_at)),
            ("isTest", b'"f"'),
            ("metadata", _string(metadata.decode())),
            ("metadataType", b'"application/json"'),
            ("runTags", b'"{}"'),
            ("realtimeStreams", _string(streams_literal)),
        )
        self.value = self._value(frozenset())
        self.key = _string(f'"public"."TaskRun"/"{run_id}"')
        self._bodies: dict[str, bytes] = {}

    def _value(self, skipped: frozenset[str]) -> bytes:
        fields = (b'"' + name.encode() + b'":' + text for name, text in self.columns if name not in skipped)
        return b"{" + b",".join(fields) + b"}"

    def body(self, operation: str, skipped: frozenset[str] = frozenset()) -> bytes:
        """The answer's body: the row (as an ``insert`` or an ``update``), then up-to-date.

        Built once per view and operation, and shared by every poll answered with it
        (one write each: a write is a system call, dearer than the copy).
        """
        body = None if skipped else self._bodies.get(operation)
        if body is None:
            value = self.value if not skipped else self._value(skipped)
            head = b'[{"key":' + self.key + b',"headers":{"operation":"' + operation.encode() + b'"},"value":'
            body = b"".join((head, value, b"},", _UP_TO_DATE, b"]"))
            if not skipped:
                self._bodies[operation] = body
        return body

    def __repr__(self) -> str:
        return f"<RunView {self.run_id} at {self.offset}>"


class _Watch:
    """One watched run in a process: its latest view, and the polls waiting for the next one."""

    __slots__ = ("changed", "dirty", "error", "read_at", "refreshing", "refs", "run_id", "view")

    def __init__(self, run_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.run_id = run_id
        self.refs = 0
        self.view: RunView | None = None
        self.read_at = float("-inf")
        self.dirty = True
        self.error: BaseException | None = None
        self.refreshing: asyncio.Task[None] | None = None
        self.changed: asyncio.Future[None] = loop.create_future()


class RunHub:
    """Fans one process's run changes out to the polls waiting on them (see the module's docstring).

    ``read(run_id)`` builds a run's view (``None``: unknown run); it blocks and runs
    through ``run`` (a worker thread).
    """

    def __init__(self, read: Callable[[str], RunView | None], run: Run[Any], *, hold: float = HOLD) -> None:
        self._read = read
        self._run = run
        self.hold = hold
        self._watches: dict[str, _Watch] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reads = 0
        """How many times a view was read from the database (for tests and benchmarks)."""

    @property
    def watched(self) -> int:
        """How many runs this process watches now."""
        return len(self._watches)

    def start(self) -> None:
        """Bind to the running event loop (call from it, before anything is heard)."""
        self._loop = asyncio.get_running_loop()

    def heard(self, run_id: str, *_: object) -> None:
        """A change feed's listener: ``run_id`` changed. From any thread; never blocks."""
        loop = self._loop
        # A dict lookup from another thread: at worst stale, and a run watched from now on is read anew.
        if loop is not None and run_id in self._watches:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(self._mark, run_id)

    def heard_stream(self, run_id: str, key: str) -> None:
        """A stream of ``run_id`` changed: its row changes only when the key is new. Any thread."""
        watch = self._watches.get(run_id)
        view = None if watch is None else watch.view
        if watch is not None and (view is None or key not in view.streams):
            self.heard(run_id)

    def _mark(self, run_id: str) -> None:
        watch = self._watches.get(run_id)
        if watch is not None:
            watch.dirty = True
            self._refresh_soon(watch)

    def _refresh_soon(self, watch: _Watch) -> None:
        if watch.refreshing is None and self._loop is not None:
            watch.refreshing = self._loop.create_task(self._refresh(watch))

    async def _refresh(self, watch: _Watch) -> None:
        try:
            # Changes heard while reading make it read again: the last read starts after the last commit.
            while watch.dirty:
                watch.dirty = False
                started = time.monotonic()
                self.reads += 1
                try:
                    view = await self._run(lambda: self._read(watch.run_id))
                except Exception as error:  # the polls waiting on it answer 503
                    watch.error = error
                    return
                watch.error = None
                watch.read_at = started
                old = watch.view
                watch.view = view
                if view is not None and (old is None or view.position != old.position):
                    self._wake(watch)
        finally:
            watch.refreshing = None

    def _wake(self, watch: _Watch) -> None:
        assert self._loop is not None
        changed, watch.changed = watch.changed, self._loop.create_future()
        if not changed.done():
            changed.set_result(None)

    def acquire(self, run_id: str) -> _Watch:
        """Watch ``run_id`` for one poll; :meth:`release` it after."""
        assert self._loop is not None, "RunHub.start() was not called"
        watch = self._watches.get(run_id)
        if watch is None:
            watch = self._watches[run_id] = _Watch(run_id, self._loop)
        watch.refs += 1
        return watch

    def release(self, watch: _Watch) -> None:
        """One poll on the run ended; the run stays watched for :data:`LINGER` seconds after the last."""
        watch.refs -= 1
        if watch.refs == 0 and self._loop is not None:
            self._loop.call_later(LINGER, self._forget, watch)

    def _forget(self, watch: _Watch) -> None:
        if watch.refs == 0 and self._watches.get(watch.run_id) is watch:
            del self._watches[watch.run_id]
            if watch.refreshing is not None:
                watch.refreshing.cancel()

    async def view(self, watch: _Watch, *, max_age: float | None = None) -> RunView | None:
        """The run's view, read anew when it was never read, changed since, or is older than ``max_age``.

        Raises what reading raised (:class:`StorageError`, ...).
        """
        age = self.hold if max_age is None else max_age
        if watch.view is None or time.monotonic() - watch.read_at > age:
            watch.dirty = True
        if watch.dirty:
            self._refresh_soon(watch)
        refreshing = watch.refreshing
        if refreshing is not None:
            # Shielded: a poll that goes away must not cancel the read others wait for.
            await asyncio.shield(refreshing)
        if watch.error is not None:
            raise watch.error
        return watch.view


def build_reader(service: MetadataService, streams: StreamStore) -> Callable[[str], RunView | None]:
    """``read(run_id)``: the run's view from the service (its cached metadata) and the stream store."""
    storage = service.storage

    def read(run_id: str) -> RunView | None:
        record = storage.get_run(run_id)
        if record is None:
            return None
        state = service.get(run_id)
        keys = streams.keys(run_id)
        return RunView(
            run_id,
            version=state.version,
            created_at=record.created_at,
            completed_at=record.completed_at,
            metadata=state.text,
            streams=keys,
        )

    return read


class _BadRequest(Exception):
    pass


def _parameters(query: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, strict_parsing=False)
    except ValueError as error:
        raise _BadRequest(f"query string: {error}") from None
    return dict(pairs)


def _position(offset: str) -> tuple[int, int] | None:
    """``None`` for ``-1`` (the start), else ``(version, n)`` (malformed: :class:`_BadRequest`)."""
    if offset == "-1":
        return None
    match = _OFFSET.fullmatch(offset)
    if match is None:
        raise _BadRequest(f"offset: expected -1 or <version>_<n> (digits), got {offset[:40]!r}")
    return int(match[1]), int(match[2])


def _skipped(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    required = sorted(names & REQUIRED_COLUMNS)
    if required:
        raise _BadRequest(f"skipColumns: {', '.join(required)} cannot be skipped")
    return names


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _send(send, status, json.dumps({"error": message}).encode(), headers or [])


async def _disconnected(receive: Receive) -> None:
    """Returns when the client went away (a GET's body is read first)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class RealtimeEndpoint:
    """The ASGI endpoint of ``GET /realtime/v1/runs/{run_id}`` (see the module's docstring).

    Raw ASGI rather than a request handler: a poll waiting for a change also watches
    for its client going away.
    """

    def __init__(self, hub: RunHub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id: str = scope["path_params"]["run_id"]
        try:
            query = _parameters(scope.get("query_string", b""))
            client = _position(query.get("offset", "-1"))
            live = query.get("live", "false")
            if live not in ("true", "false"):
                raise _BadRequest(f"live: expected true or false, got {live[:20]!r}")
            handle = query.get("handle")
            if handle is not None and _HANDLE.fullmatch(handle) is None:
                shown = handle[:40]
                raise _BadRequest(f"handle: expected the digits of a handle this server gave, got {shown!r}")
            if client is not None and handle is None:
                raise _BadRequest("handle: required with an offset other than -1")
            if live == "true" and client is None:
                raise _BadRequest("offset: a live request needs the offset of an earlier answer")
            skipped = _skipped(query.get("skipColumns"))
        except _BadRequest as error:
            await _error(send, 400, str(error))
            return
        scope[INTERRUPTIBLE] = True
        watch = self.hub.acquire(run_id)
        try:
            await _answer(self.hub, watch, send, receive, client, handle, live == "true", skipped)
        except RunNotFoundError:
            await _error(send, 404, "Task Run not found")
        except (StorageError, ServiceClosingError) as error:
            await _error(send, 503, str(error), [(b"retry-after", b"1")])
        except Exception:
            _log.exception("GET /realtime/v1/runs/%s failed", run_id)
            await _error(send, 500, "Internal Server Error")
        finally:
            self.hub.release(watch)


async def _answer(
    hub: RunHub,
    watch: _Watch,
    send: Send,
    receive: Receive,
    client: tuple[int, int] | None,
    handle: str | None,
    live: bool,
    skipped: frozenset[str],
) -> None:
    view = await hub.view(watch)
    if view is None:
        raise RunNotFoundError(watch.run_id)
    if client is None:
        headers = _headers(view.handle, view.offset, live=False)
        await _send(send, 200, view.body("insert", skipped), headers)
        return
    if client > view.position:  # a newer state seen elsewhere (another worker): catch up, once
        view = await hub.view(watch, max_age=0.0)
        if view is None:
            raise RunNotFoundError(watch.run_id)
    if handle != view.handle or client > view.position:
        headers = [(b"electric-handle", view.handle.encode())]
        await _send(send, 409, _MUST_REFETCH, headers)
        return
    if live and view.position <= client:
        view = await _wait(hub, watch, receive, client)
        if view is None:
            return  # the client went away
    offset = view.offset if view.position > client else f"{client[0]}_{client[1]}"
    headers = _headers(view.handle, offset, live=live)
    if view.position > client:
        await _send(send, 200, view.body("update", skipped), headers)
    else:
        await _send(send, 200, b"[" + _UP_TO_DATE + b"]", headers)


async def _wait(hub: RunHub, watch: _Watch, receive: Receive, client: tuple[int, int]) -> RunView | None:
    """The run's view once past ``client``, or as it is after the hold; ``None`` if the client left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + hub.hold * random.uniform(0.9, 1.1)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        while True:
            view = watch.view
            if view is not None and view.position > client:
                return view
            remaining = deadline - loop.time()
            if remaining <= 0:
                # Nothing heard for a whole hold: read once more, in case a notification was lost.
                return await hub.view(watch)
            changed = watch.changed
            await asyncio.wait((changed, gone), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                return None
            if watch.error is not None:
                raise watch.error
    finally:
        gone.cancel()


def _headers(handle: str, offset: str, *, live: bool) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"electric-handle", handle.encode()),
        (b"electric-offset", offset.encode()),
        (b"electric-up-to-date", b""),
    ]
    if live:
        headers.append((b"electric-cursor", str(int(time.time())).encode()))
    else:
        headers.append((b"electric-schema", SCHEMA.encode()))
    return headers
