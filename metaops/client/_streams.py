"""A run's streams from Python: send one chunk by chunk as the values come, read one live.

Writing (``md.stream(key, values)``, ``await md.stream(key, values)``,
``metadata.stream(key, values)``): every value must be JSON (checked at the call,
like an update's value; a refused value never reaches the wire). The caller's
thread (or task) takes the values from the iterable; a sender sends them as they
come: one ``POST /realtime/v1/streams/{runId}/{key}`` at a time, carrying whatever
arrived while the previous one was in flight, each numbered (``?index=``) so that a
retry of a request whose answer was lost stores nothing twice. At most
:data:`MAX_PENDING` values wait for the sender; past that, taking the next value
waits (a producer faster than the network is slowed, not buffered without bound).
When the iterable ends, the stream is finished (``?end=true``): readers see its end.
If the iterable raises, what it gave is sent, the stream stays open, and the error
is raised; a later ``stream`` on the same key continues it. One producer per key.

Reading (:func:`read_stream`, :func:`read_stream_async`): server-sent events from
``GET /realtime/v1/streams/{runId}/{key}``, each a :class:`StreamChunk`, resumed
after a dropped connection from the last chunk received (``Last-Event-ID``): none
missed, none repeated. The iteration ends when the stream is finished (or the run
completed and nothing more came).
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
from collections.abc import AsyncIterable, AsyncIterator, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from metaops._errors import InvalidArgumentError, InvalidValueError
from metaops._json import JSON, describe, normalize
from metaops._size import json_text
from metaops.client._base import answer_of, sleep, sync_send, transport_failure
from metaops.client._core import Answer, Failure, Send, Steps, Wait, drive, error_message
from metaops.client._errors import ClientClosedError, RequestRefusedError, ServiceUnavailableError
from metaops.client._retry import RetryPolicy, is_retryable, retry_after

if TYPE_CHECKING:
    from metaops.client._async import AsyncMetadataClient
    from metaops.client._base import BaseClient
    from metaops.client._sync import MetadataClient

__all__ = [
    "MAX_PENDING",
    "StreamChunk",
    "read_stream",
    "read_stream_async",
    "write_stream",
    "write_stream_async",
]

MAX_PENDING = 1000
"""Values taken from the iterable and not yet sent, at most; then taking the next one waits."""
MAX_BATCH_BYTES = 1024 * 1024
"""Chunk text per request, at most (the service takes 2 MiB)."""
_END = object()  # the values ended: finish the stream
_END_OPEN = object()  # the iterable raised: send what came, leave the stream open
_KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One value of a run's stream: its ``key``, its ``index`` in the stream (from 0), the ``value``."""

    key: str
    index: int
    value: JSON


def stream_path(run_id: str, key: str) -> str:
    """The stream's route; :class:`~metaops.InvalidArgumentError` for a key the service would refuse."""
    if (
        not isinstance(key, str)
        or not 1 <= len(key) <= 128
        or key[0] == "."
        or not _KEY_CHARACTERS.issuperset(key)
    ):
        msg = (
            f"stream key {key!r}: expected 1 to 128 characters from A-Z a-z 0-9 _ . - (not starting with '.')"
        )
        raise InvalidArgumentError(msg)
    return f"/realtime/v1/streams/{quote(run_id, safe='')}/{key}"


def _chunk_text(key: str, index: int, value: object) -> str:
    return json_text(normalize(value, f"stream {key!r}: value #{index}"))


class _Writer:
    """One stream's writes, sans I/O: numbered requests, retried as ``policy`` says."""

    def __init__(self, path: str, headers: tuple[tuple[str, str], ...], policy: RetryPolicy, timeout: float):
        self.path = path
        self.headers = (*headers, ("content-type", "application/x-ndjson"))
        self.policy = policy
        self.timeout = timeout
        self.length: int | None = None  # the stream's length as the service last said
        self.sent = 0

    def post(self, chunks: list[str], *, end: bool) -> Steps[None]:
        """Append ``chunks`` after what the stream holds (the first call, with none, learns its length)."""
        params = [] if self.length is None else [f"index={self.length}"]
        if end:
            params.append("end=true")
        path = self.path + ("?" + "&".join(params) if params else "")
        body = ("\n".join(chunks) + "\n").encode() if chunks else b""
        request = Send("POST", path, self.headers, body, self.timeout)
        answer = yield from send_retried(request, self.policy, f"stream {self.path}", (200,))
        self.length = int(httpx.Response(200, content=answer.content).json()["length"])
        self.sent += len(chunks)


def send_retried(request: Send, policy: RetryPolicy, what: str, done: Container[int]) -> Steps[Answer]:
    """Send ``request`` until it gets an answer whose status is in ``done``, and return that answer.

    A failure or a retryable answer (408, 429, 5xx) is tried again as ``policy`` says (a
    ``Retry-After`` honoured); any other answer raises :class:`RequestRefusedError`, and
    spent attempts :class:`ServiceUnavailableError`, their messages starting with ``what``.
    """
    last = ""
    later: float | None = None
    for attempt in range(policy.attempts):
        if attempt:
            yield Wait(policy.delay(attempt - 1, random.random, later))
        later = None
        reply = yield request
        if isinstance(reply, Failure):
            last = reply.error
            continue
        assert isinstance(reply, Answer)
        if reply.status in done:
            return reply
        if is_retryable(reply.status):
            last, later = f"HTTP {reply.status}", retry_after(reply.headers)
            continue
        msg = f"{what}: HTTP {reply.status}: {error_message(reply)}"
        raise RequestRefusedError(msg, reply.status)
    msg = f"{what}: no answer after {policy.attempts} attempts ({last})"
    raise ServiceUnavailableError(msg, policy.attempts, last)


def _batches(first: object, more: Any) -> tuple[list[str], bool, bool]:
    """``first`` and whatever else waits (``more()`` raising Empty when nothing does), up to a batch;
    then whether the values ended, and whether the stream is to be finished."""
    batch: list[str] = []
    size = 0
    item = first
    while True:
        if item is _END or item is _END_OPEN:
            return batch, True, item is _END
        assert isinstance(item, str)
        batch.append(item)
        size += len(item) + 1
        if size >= MAX_BATCH_BYTES:
            return batch, False, False
        try:
            item = more()
        except (queue.Empty, asyncio.QueueEmpty):
            return batch, False, False


def _check_open(client: BaseClient, key: str) -> None:
    if client._closed:
        msg = f"stream({key!r}): {type(client).__name__} for run {client.run_id!r} is closed"
        raise ClientClosedError(msg)


def _not_iterable(key: str, values: object) -> InvalidValueError:
    msg = f"stream({key!r}): values must be an iterable of JSON values, got {describe(values)}"
    return InvalidValueError(msg, "values")


def write_stream(client: MetadataClient, key: str, values: Iterable[object]) -> int:
    """``client.stream(key, values)``: send ``values`` as they come; the number sent (see the module)."""
    _check_open(client, key)
    try:
        values = iter(values)
    except TypeError:  # refused before the stream is created
        raise _not_iterable(key, values) from None
    core = client._core
    writer = _Writer(stream_path(client.run_id, key), core._headers, core.policy, core.timeout)

    def send(request: Send) -> Answer | Failure:
        return sync_send(client._http, request)

    drive(writer.post([], end=False), send, sleep)  # creates the stream: readers see its key now
    pending: queue.Queue[object] = queue.Queue(maxsize=MAX_PENDING)
    failed: list[BaseException] = []

    def sender() -> None:
        while True:
            batch, stop, finish = _batches(pending.get(), pending.get_nowait)
            try:
                if not failed:
                    drive(writer.post(batch, end=finish), send, sleep)
            except BaseException as error:  # given to the caller's thread
                failed.append(error)
            if stop:
                return

    thread = threading.Thread(target=sender, name=f"metaops-stream:{key}", daemon=True)
    thread.start()
    index = 0
    try:
        for value in values:
            if failed:
                break
            pending.put(_chunk_text(key, index, value))
            index += 1
    except BaseException:
        pending.put(_END_OPEN)
        thread.join()
        raise
    pending.put(_END if not failed else _END_OPEN)
    thread.join()
    if failed:
        raise failed[0]
    return writer.sent


async def write_stream_async(
    client: AsyncMetadataClient, key: str, values: AsyncIterable[object] | Iterable[object]
) -> int:
    """``await client.stream(key, values)``: the same as :func:`write_stream`, on the event loop."""
    _check_open(client, key)
    client._on_own_loop(f"stream({key!r})")
    if not isinstance(values, AsyncIterable):
        try:
            values = iter(values)
        except TypeError:  # refused before the stream is created
            raise _not_iterable(key, values) from None
    core = client._core
    writer = _Writer(stream_path(client.run_id, key), core._headers, core.policy, core.timeout)
    await client._drive(writer.post([], end=False))
    pending: asyncio.Queue[object] = asyncio.Queue(maxsize=MAX_PENDING)

    async def sender() -> None:
        while True:
            batch, stop, finish = _batches(await pending.get(), pending.get_nowait)
            await client._drive(writer.post(batch, end=finish))
            if stop:
                return

    task = asyncio.ensure_future(sender())
    index = 0
    try:
        async for value in _aiter(values):
            if task.done():
                break
            await _put(pending, task, _chunk_text(key, index, value))
            index += 1
    except BaseException:
        if not task.done():
            await _put(pending, task, _END_OPEN)
            await asyncio.wait({task})
        raise
    if not task.done():
        await _put(pending, task, _END)
    await task  # raises what the sender raised
    return writer.sent


async def _put(pending: asyncio.Queue[object], task: asyncio.Future[None], item: object) -> None:
    """Queue ``item``, unless the sender failed meanwhile (then waiting for room would never end)."""
    putting = asyncio.ensure_future(pending.put(item))
    await asyncio.wait({putting, task}, return_when=asyncio.FIRST_COMPLETED)
    if not putting.done():
        putting.cancel()


async def _aiter(values: AsyncIterable[object] | Iterable[object]) -> AsyncIterator[object]:
    if isinstance(values, AsyncIterable):
        async for value in values:
            yield value
    else:
        for value in values:
            yield value


# --------------------------------------------------------------------------- reading


class SSEParser:
    """Server-sent events from lines, sans I/O: :meth:`feed` a line, get an event when one ends."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._id: str | None = None
        self.comments: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str] | None:
        """``(id, data)`` when ``line`` (without its line break) ends an event, else ``None``."""
        if line == "":
            if not self._data:
                return None
            event = (self._id, "\n".join(self._data))
            self._data, self._id = [], None
            return event
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def _stream_headers(token: str, after: int) -> dict[str, str]:
    headers = {"authorization": f"Bearer {token}", "accept": "text/event-stream"}
    if after >= 0:
        headers["last-event-id"] = str(after)
    return headers


def _chunk(key: str, event: tuple[str | None, str]) -> StreamChunk:
    index, data = event
    return StreamChunk(key, int(index or 0), json.loads(data))


class _Retry(Exception):
    def __init__(self, message: str, later: float | None) -> None:
        super().__init__(message)
        self.later = later


class _StreamReading:
    """What :func:`read_stream` and :func:`read_stream_async` decide, sans I/O: where to resume,
    which answers are refusals, when to give up and how long to wait. They only make the requests.

    Made when the reader is called: bad arguments raise then, typed, not at the first ``next()``.
    """

    def __init__(
        self,
        name: str,
        run_id: str,
        key: str,
        base_url: str | None,
        access_token: str | None,
        after: int,
        retry: RetryPolicy | None,
        timeout: float,
    ) -> None:
        from metaops.client._base import _seconds
        from metaops.client._subscribe import _settings

        if isinstance(after, bool) or not isinstance(after, int):
            msg = f"{name}: after must be a chunk index (an int; -1: from the start), got {describe(after)}"
            raise InvalidValueError(msg, "after")
        if after < -1:
            msg = f"{name}: after must be -1 (from the start) or a chunk index, got {after}"
            raise InvalidArgumentError(msg)
        self.url, self._token, self._policy = _settings(name, run_id, base_url, access_token, retry)
        self.path = stream_path(run_id, key)
        # Each read waits up to ``timeout`` (keep-alives come well within it); a connection, 10 s.
        self.timeout = httpx.Timeout(_seconds(name, "timeout", timeout), connect=10.0)
        self._key = key
        self._after = after
        self._failures = 0
        self._parser = SSEParser()

    def headers(self) -> dict[str, str]:
        """The next request's headers: it resumes after the last chunk received."""
        self._parser = SSEParser()
        return _stream_headers(self._token, self._after)

    def refusal(self, response: httpx.Response) -> RequestRefusedError | _Retry:
        """What to raise for an answer other than 200 (its body read): a refusal, or a retry."""
        answer = answer_of(response)
        if not is_retryable(answer.status):
            msg = f"stream {self.path}: HTTP {answer.status}: {error_message(answer)}"
            return RequestRefusedError(msg, answer.status)
        return _Retry(f"HTTP {answer.status}", retry_after(answer.headers))

    def answered(self) -> None:
        """The service answered 200: the failures in a row start again from none."""
        self._failures = 0

    def feed(self, line: str) -> StreamChunk | None:
        """The chunk ``line`` completes, if it does."""
        event = self._parser.feed(line)
        if event is None:
            return None
        chunk = _chunk(self._key, event)
        self._after = chunk.index
        return chunk

    def check_end(self) -> None:
        """The response ended: :class:`_Retry` unless the stream ended with it."""
        if "end" not in self._parser.comments:
            raise _Retry("the response ended early", None)

    def delay(self, error: httpx.TransportError | _Retry) -> float:
        """The wait before the next attempt after ``error``; raises once the attempts in a row are spent."""
        self._failures += 1
        if self._failures >= self._policy.attempts:
            last = str(error) if isinstance(error, _Retry) else transport_failure(error).error
            msg = f"stream {self.path}: no answer after {self._failures} attempts ({last})"
            raise ServiceUnavailableError(msg, self._failures, last) from None
        later = error.later if isinstance(error, _Retry) else None
        return self._policy.delay(self._failures - 1, random.random, later)


def read_stream(
    run_id: str,
    key: str,
    *,
    base_url: str | None = None,
    access_token: str | None = None,
    after: int = -1,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
) -> Iterator[StreamChunk]:
    """The chunks of run ``run_id``'s stream ``key`` after index ``after``, live, until it ends.

    ``base_url`` and ``access_token`` default as :class:`~metaops.client.MetadataClient`'s
    (a public access token for the run is enough). A dropped connection is resumed
    after the last chunk received; ``retry`` bounds the attempts in a row that get
    no answer (:class:`~metaops.client.ServiceUnavailableError` after them). A
    refusal (400, 401, 403, 404) raises :class:`~metaops.client.RequestRefusedError`.

    It ends when the producer finishes the stream, or when the run completes and no
    more chunks are there. Until then it waits for more, for as long as the run goes
    on (``timeout`` bounds each read, and the service sends a keep-alive well within
    it): stop early by leaving the loop. Bad arguments raise at the call.
    """
    return _read_stream(
        _StreamReading("read_stream", run_id, key, base_url, access_token, after, retry, timeout)
    )


def _read_stream(reading: _StreamReading, *, halt: threading.Event | None = None) -> Iterator[StreamChunk]:
    """:func:`read_stream`'s generator; with ``halt``, it ends at the first line after it is set
    (a keep-alive comes every 10 s), for a thread reading for a consumer who left."""
    with httpx.Client(base_url=reading.url, timeout=reading.timeout) as http:
        while True:
            try:
                with http.stream("GET", reading.path, headers=reading.headers()) as response:
                    if response.status_code != 200:
                        response.read()
                        raise reading.refusal(response)
                    reading.answered()
                    for line in response.iter_lines():
                        if halt is not None and halt.is_set():
                            return
                        chunk = reading.feed(line)
                        if chunk is not None:
                            yield chunk
                reading.check_end()
                return
            except (httpx.TransportError, _Retry) as error:
                sleep(reading.delay(error))


def read_stream_async(
    run_id: str,
    key: str,
    *,
    base_url: str | None = None,
    access_token: str | None = None,
    after: int = -1,
    retry: RetryPolicy | None = None,
    timeout: float = 60.0,
) -> AsyncIterator[StreamChunk]:
    """:func:`read_stream` for asyncio: ``async for chunk in read_stream_async(run_id, key): ...``."""
    reading = _StreamReading("read_stream_async", run_id, key, base_url, access_token, after, retry, timeout)
    return _read_stream_async(reading)


async def _read_stream_async(reading: _StreamReading) -> AsyncIterator[StreamChunk]:
    async with httpx.AsyncClient(base_url=reading.url, timeout=reading.timeout) as http:
        while True:
            try:
                async with http.stream("GET", reading.path, headers=reading.headers()) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise reading.refusal(response)
                    reading.answered()
                    async for line in response.aiter_lines():
                        chunk = reading.feed(line)
                        if chunk is not None:
                            yield chunk
                reading.check_end()
                return
            except (httpx.TransportError, _Retry) as error:
                await asyncio.sleep(reading.delay(error))
