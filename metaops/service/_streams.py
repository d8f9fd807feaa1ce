"""Streams over HTTP: producers ``POST`` chunks, consumers read them live as server-sent events.

Reading, as the official SDK 4.8.3's ``withStreams()`` and ``streams.read()`` do (SSE v1):

* ``GET /realtime/v1/streams/{runId}/{key}`` answers ``200`` ``text/event-stream``:
  one event per chunk, ``id: <index>`` (0, 1, 2, ...) and ``data: <the chunk's JSON>``,
  from the start, or after the chunk named by ``Last-Event-ID`` (what an
  ``EventSource``, the SDK and :func:`metaops.client.read_stream` send when they
  reconnect), or from the end with ``X-Trigger-Stream-Start: latest``. The response
  stays open while more may come, with a ``: ping`` comment every
  :data:`PING_INTERVAL` seconds; it ends (cleanly, after a ``: end`` comment) once
  the stream is finished and everything was sent, or once the run is completed and
  nothing more is there (noticed within a ping), or (without ``: end``) after
  ``Timeout-Seconds`` when the request has that header. For the SDK a clean end
  means "no more chunks".
* A key the run has no stream for (yet) is not an error: the response waits for it,
  so a consumer may start before the producer, and a key the run lists is never
  answered 404 (which would crash the Node SDK). An unknown run is 404, a malformed
  key or ``Last-Event-ID`` 400.

Writing (ours; the SDK's own writer works inside a platform task only):

* ``POST /realtime/v1/streams/{runId}/{key}`` with an NDJSON body (one JSON value per
  line; blank lines ignored; at most 2 MiB) appends the values as chunks, creating
  the stream on first use (it then appears in the run's ``realtimeStreams``). Query
  ``?index=N`` says the body's first chunk is chunk ``N``: chunks the stream already
  holds are skipped, so a retry of a write whose answer was lost stores nothing
  twice; ``N`` past the end is ``409`` with ``{"length": ...}``. ``?end=true``
  finishes the stream after these chunks. Answer: ``{"length": chunks stored,
  "accepted": added now, "finished": bool}``. ``413`` past a bound (see
  :mod:`metaops.service._streams_store`), ``409`` a finished stream, ``404`` an
  unknown run. Only the secret token writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from metaops._errors import InvalidArgumentError, MetaopsError
from metaops._size import json_text
from metaops.service._codec import loads
from metaops.service._errors import RunNotFoundError, ServiceClosingError, StorageError
from metaops.service._realtime import INTERRUPTIBLE
from metaops.service._service import MetadataService
from metaops.service._streams_store import (
    MAX_STREAM_CHUNKS,
    AppendResult,
    ChunkGapError,
    StreamFinishedError,
    StreamFullError,
    StreamStore,
    check_stream_key,
)

__all__ = ["PING_INTERVAL", "StreamHub", "StreamReader", "write_stream_route"]

_log = logging.getLogger("metaops.service.streams")

PING_INTERVAL = 10.0
MAX_WRITE_BYTES = 2 * 1024 * 1024
_INDEX = re.compile(r"\d{1,18}")
_MAX_TIMEOUT = 24 * 3600.0

Run = Callable[[Callable[[], Any]], Awaitable[Any]]


class _Signal:
    __slots__ = ("changed", "refs")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.refs = 0
        self.changed: asyncio.Future[None] = loop.create_future()


class StreamHub:
    """One per process: wakes the readers of a stream when the stream store's feed says it changed."""

    def __init__(self) -> None:
        self._signals: dict[tuple[str, str], _Signal] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def readers(self) -> int:
        """How many streams this process's readers wait on now."""
        return len(self._signals)

    def start(self) -> None:
        """Bind to the running event loop."""
        self._loop = asyncio.get_running_loop()

    def heard(self, run_id: str, key: str, length: int) -> None:
        """The stream store's listener; from any thread, never blocks."""
        loop = self._loop
        if loop is not None and (run_id, key) in self._signals:
            with contextlib.suppress(RuntimeError):  # the loop closed
                loop.call_soon_threadsafe(self._wake, (run_id, key))

    def _wake(self, stream: tuple[str, str]) -> None:
        signal = self._signals.get(stream)
        if signal is not None and self._loop is not None:
            changed, signal.changed = signal.changed, self._loop.create_future()
            if not changed.done():
                changed.set_result(None)

    def waiting(self, run_id: str, key: str) -> int:
        """How many readers of the stream this process serves now."""
        signal = self._signals.get((run_id, key))
        return 0 if signal is None else signal.refs

    def acquire(self, run_id: str, key: str) -> _Signal:
        assert self._loop is not None, "StreamHub.start() was not called"
        signal = self._signals.get((run_id, key))
        if signal is None:
            signal = self._signals[(run_id, key)] = _Signal(self._loop)
        signal.refs += 1
        return signal

    def release(self, run_id: str, key: str, signal: _Signal) -> None:
        signal.refs -= 1
        if signal.refs == 0 and self._signals.get((run_id, key)) is signal:
            del self._signals[(run_id, key)]


def _json_error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: object
) -> Response:
    body = json_text({"error": message, **extra}).encode()
    return Response(body, status, headers, media_type="application/json")


def _start_after(request: Request) -> int | None:
    """The index to resume after: ``Last-Event-ID``; ``None`` for "from the end"; -1 from the start."""
    last = request.headers.get("last-event-id")
    if last is not None and last.strip():
        if _INDEX.fullmatch(last.strip()) is None:
            msg = f"Last-Event-ID: expected a chunk index this server sent, got {last[:40]!r}"
            raise InvalidArgumentError(msg)
        return int(last.strip())
    if request.headers.get("x-trigger-stream-start", "").lower() == "latest":
        return None
    return -1


def _timeout(request: Request) -> float:
    given = request.headers.get("timeout-seconds")
    if given is None:
        return _MAX_TIMEOUT
    try:
        seconds = float(given)
    except ValueError:
        msg = f"Timeout-Seconds: expected a number of seconds, got {given[:40]!r}"
        raise InvalidArgumentError(msg) from None
    if not 0 < seconds <= _MAX_TIMEOUT:
        msg = f"Timeout-Seconds: expected seconds over 0, up to {_MAX_TIMEOUT:g}, got {given[:40]!r}"
        raise InvalidArgumentError(msg)
    return seconds


class StreamReader:
    """``GET /realtime/v1/streams/{run_id}/{key}``: :meth:`endpoint` is the route's endpoint."""

    def __init__(self, service: MetadataService, store: StreamStore, hub: StreamHub, run: Run) -> None:
        self.service = service
        self.store = store
        self.hub = hub
        self.run = run

    async def endpoint(self, request: Request) -> Response:
        """Answer one reader: the events of the stream, live (see the module's docstring)."""
        service, store, hub, run = self.service, self.store, self.hub, self.run
        run_id: str = request.path_params["run_id"]
        try:
            key = check_stream_key(request.path_params["key"])
            after = _start_after(request)
            timeout = _timeout(request)
            if await run(lambda: service.storage.get_run(run_id)) is None:
                return _json_error(404, "Task Run not found")
            if after is None:
                info = await run(lambda: store.info(run_id, key))
                after = -1 if info is None else info.length - 1
        except InvalidArgumentError as error:
            return _json_error(400, str(error))
        except (StorageError, ServiceClosingError) as error:
            return _json_error(503, str(error))

        def completed() -> bool:
            record = service.storage.get_run(run_id)
            return record is None or record.completed_at is not None

        request.scope[INTERRUPTIBLE] = True
        events = _events(store, hub, run, run_id, key, after, timeout, completed)
        headers = {"Cache-Control": "no-store", "X-Stream-Version": "v1", "X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _events(
    store: StreamStore,
    hub: StreamHub,
    run: Run,
    run_id: str,
    key: str,
    after: int,
    timeout: float,
    completed: Callable[[], bool],
) -> AsyncIterator[bytes]:
    """The SSE body: pages of chunks as they are stored, pings while waiting, the end when finished
    (or when the run completed and nothing more came)."""
    signal = hub.acquire(run_id, key)
    deadline = time.monotonic() + timeout
    check = True  # whether to look at the run before waiting: first, then after each ping
    try:
        while True:
            changed = signal.changed  # taken before reading: a write after the read wakes us
            try:
                page = await run(functools.partial(store.read, run_id, key, after))
            except (StorageError, ServiceClosingError) as error:
                # Headers are sent: all that is left is ending the response; the consumer resumes.
                _log.warning("stream %s/%s: %s; ending the response", run_id, key, error)
                return
            if page is not None and page.chunks:
                parts = []
                for index, text in page.chunks:
                    parts.append(b"id: %d\ndata: %s\n\n" % (index, text.encode()))
                after = page.chunks[-1][0]
                yield b"".join(parts)
                continue
            if page is not None and page.finished and after >= page.length - 1:
                yield b": end\n\n"
                return
            if check:
                check = False
                try:
                    if await run(completed):
                        yield b": end\n\n"
                        return
                except (StorageError, ServiceClosingError):
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with anyio.move_on_after(min(PING_INTERVAL, remaining)) as waited:
                # Shielded: the future is shared by every reader of the stream, and awaiting it
                # unshielded would cancel it for all of them when this one is cancelled.
                await asyncio.shield(changed)
            if waited.cancelled_caught:
                check = True
                yield b": ping\n\n"
    finally:
        hub.release(run_id, key, signal)


def _parse_chunks(body: bytes, key: str) -> list[str]:
    """The chunks of an NDJSON body, each written anew; past :data:`MAX_STREAM_CHUNKS` values,
    :class:`StreamFullError` without parsing the rest (no stream holds that many)."""
    chunks: list[str] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(chunks) == MAX_STREAM_CHUNKS:
            msg = f"stream {key!r}: over {MAX_STREAM_CHUNKS:,} chunks in one write would pass the limit"
            raise StreamFullError(msg)
        try:
            value = loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            msg = f"line {number}: not UTF-8 ({error.reason})"
            raise InvalidArgumentError(msg) from None
        except RecursionError:
            msg = f"line {number}: JSON nested too deeply"
            raise InvalidArgumentError(msg) from None
        except ValueError as error:
            msg = f"line {number}: not JSON: {error}"
            raise InvalidArgumentError(msg) from None
        # Written anew, compact: a chunk's text then holds no line break to cut an SSE event.
        # (json_text writes whatever loads read: its encoder nests as deeply as the decoder.)
        chunks.append(json_text(value))
    return chunks


class _BodyTooLarge(Exception):
    pass


async def _body(request: Request, timeout: float) -> bytes:
    parts: list[bytes] = []
    size = 0
    with anyio.fail_after(timeout):
        async for part in request.stream():
            size += len(part)
            if size > MAX_WRITE_BYTES:
                raise _BodyTooLarge
            parts.append(part)
    return b"".join(parts)


def write_stream_route(
    store: StreamStore, run: Run, *, request_timeout: float = 30.0, clock: Callable[[], float] = time.time
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of ``POST /realtime/v1/streams/{run_id}/{key}``."""

    async def write_stream(request: Request) -> Response:
        run_id: str = request.path_params["run_id"]
        try:
            key = check_stream_key(request.path_params["key"])
            index = request.query_params.get("index")
            if index is not None and _INDEX.fullmatch(index) is None:
                msg = f"index: expected the index of the body's first chunk (digits), got {index[:40]!r}"
                raise InvalidArgumentError(msg)
            end = request.query_params.get("end", "false")
            if end not in ("true", "false"):
                msg = f"end: expected true or false, got {end[:20]!r}"
                raise InvalidArgumentError(msg)
            try:
                body = await _body(request, request_timeout)
            except TimeoutError:
                message = f"Request body did not arrive within {request_timeout:g} s"
                return _json_error(408, message, headers={"Connection": "close"})
            except _BodyTooLarge:
                # The rest of the body is not read: the connection cannot carry another request.
                message = f"Request body is over the limit of {MAX_WRITE_BYTES:,} bytes"
                return _json_error(413, message, headers={"Connection": "close"})
            except ClientDisconnect:
                # Nobody is left to answer, and nothing was stored.
                return _json_error(400, "Request body: the client went away before it arrived")
            first = None if index is None else int(index)

            def append() -> AppendResult:
                # Parsed on a worker thread, not the event loop: 2 MiB of NDJSON can hold
                # 100,000 values, a second of work every other request would wait for.
                chunks = _parse_chunks(body, key)
                return store.append(run_id, key, chunks, first=first, end=end == "true", at=clock())

            result = await run(append)
        except RunNotFoundError:
            return _json_error(404, "Task Run not found")
        except ChunkGapError as error:
            return _json_error(409, str(error), length=error.length)
        except StreamFinishedError as error:
            return _json_error(409, str(error))
        except StreamFullError as error:
            return _json_error(413, str(error))
        except (StorageError, ServiceClosingError) as error:
            return Response(
                json_text({"error": str(error)}).encode(), 503, {"Retry-After": "1"}, "application/json"
            )
        except MetaopsError as error:
            return _json_error(400, str(error))
        payload = {"length": result.length, "accepted": result.accepted, "finished": result.finished}
        return Response(json_text(payload).encode(), 200, media_type="application/json")

    return write_stream
