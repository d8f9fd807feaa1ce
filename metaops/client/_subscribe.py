"""Watch a run live from Python: ``subscribe(run_id)`` and ``subscribe_async(run_id)``.

They speak the protocol the official SDK's ``runs.subscribeToRun`` speaks
(``GET /realtime/v1/runs/{runId}``: a snapshot, then long-polls), against ``metaops
serve`` or anything that answers it, and yield :class:`RunSnapshot` values: the
run's state, its metadata included, each newer than the one before. Changes that
land between two polls come as one snapshot, the newest: a slow consumer gets the
latest state, never a backlog.

After a dropped connection (or a 5xx, 408, 429) the subscription asks again from
where it was, so the first answer after it is the run as it is now: nothing of the
latest state is missed. ``retry`` bounds the attempts in a row that get no answer
(then :class:`~metaops.client.ServiceUnavailableError`); a refusal (401, 403, 404,
400) raises :class:`~metaops.client.RequestRefusedError`. The iteration ends after
the snapshot in which the run is completed (``stop_on_completion=False``: never).

With ``streams=True`` the run's streams come too: for every key in the run's
``streams``, its chunks (:class:`~metaops.client.StreamChunk`) as they arrive,
interleaved with the snapshots; the iteration then ends once the run completed and
every stream ended. At most :data:`MAX_QUEUED` items wait for the consumer; past
that, reading from the service waits.

``base_url`` and ``access_token`` default to ``$TRIGGER_API_URL`` and
``$TRIGGER_SECRET_KEY``; a public access token for the run (``metaops token RUN_ID``)
is enough, and is what a process that must not hold the secret should use.

.. code-block:: python

    from metaops.client import subscribe

    for run in subscribe("run_1234", base_url="http://127.0.0.1:8030", access_token=token):
        print(run.metadata.get("progress"), run.status)
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from metaops._errors import InvalidValueError
from metaops._json import JSON, describe
from metaops.client._base import _access_token, _base_url, async_send, async_sleep, sleep, sync_send
from metaops.client._core import Answer, Send, Steps, drive, drive_async
from metaops.client._errors import MissingCredentialsError
from metaops.client._retry import RetryPolicy
from metaops.client._streams import (
    StreamChunk,
    _read_stream,
    _StreamReading,
    read_stream_async,
    send_retried,
)

__all__ = ["MAX_QUEUED", "RunSnapshot", "Subscription", "credentials", "subscribe", "subscribe_async"]

MAX_QUEUED = 1000
POLL_TIMEOUT = 60.0
"""Seconds a poll may take; the service holds one at most about 22 s."""

# The SDK's mapping of the run's stored status to the one it shows (what a run's ``status`` is).
_STATUSES = {
    "DELAYED": "DELAYED",
    "WAITING_FOR_DEPLOY": "PENDING_VERSION",
    "PENDING_VERSION": "PENDING_VERSION",
    "PENDING": "QUEUED",
    "PAUSED": "WAITING",
    "WAITING_TO_RESUME": "WAITING",
    "DEQUEUED": "DEQUEUED",
    "EXECUTING": "EXECUTING",
    "RETRYING_AFTER_FAILURE": "EXECUTING",
    "CANCELED": "CANCELED",
    "COMPLETED_SUCCESSFULLY": "COMPLETED",
    "SYSTEM_FAILURE": "SYSTEM_FAILURE",
    "CRASHED": "CRASHED",
    "EXPIRED": "EXPIRED",
    "TIMED_OUT": "TIMED_OUT",
    "INTERRUPTED": "FAILED",
    "COMPLETED_WITH_ERRORS": "FAILED",
}


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run as Realtime showed it at one moment.

    ``status`` is what the official SDK shows (``EXECUTING``, ``COMPLETED``, ...);
    ``metadata`` the run's metadata (``{}`` when the service sent none); times are
    aware UTC datetimes; ``streams`` the keys of the run's streams; ``offset`` the
    position of this state in the service's shape log.
    """

    id: str
    status: str
    metadata: dict[str, JSON]
    created_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None
    streams: tuple[str, ...]
    offset: str

    @property
    def completed(self) -> bool:
        """Whether the run completed (its ``completedAt`` is set)."""
        return self.completed_at is not None


def credentials(name: str, base_url: str | None, access_token: str | None) -> tuple[str, str]:
    """The service's URL and the token, from the arguments or the SDK's environment variables."""
    url = _base_url(name, base_url)
    token = _access_token(name, access_token, have_url=bool(url))
    if not url:
        missing: tuple[str, ...] = ("base_url (TRIGGER_API_URL)",)
        if not token:
            missing += ("access_token (TRIGGER_SECRET_KEY)",)
        msg = f"{name}: no service URL: pass base_url= or set TRIGGER_API_URL"
        raise MissingCredentialsError(msg, missing)
    return url, token


# --------------------------------------------------------------------------- values


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _text_array(value: object) -> tuple[str, ...]:
    """A one-dimensional Postgres array literal of text (``{"a","b"}``, ``{a,b}``) as a tuple."""
    if isinstance(value, list):
        return tuple(str(item) for item in value)
    if not isinstance(value, str) or len(value) < 2 or value[0] != "{" or value[-1] != "}":
        return ()
    items: list[str] = []
    body, index, current, quoted = value[1:-1], 0, [], False
    if not body:
        return ()
    while index < len(body):
        char = body[index]
        if quoted:
            if char == "\\" and index + 1 < len(body):
                index += 1
                current.append(body[index])
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"':
            quoted = True
        elif char == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    items.append("".join(current))
    return tuple(items)


def _snapshot(row: dict[str, Any], offset: str) -> RunSnapshot:
    metadata: dict[str, JSON] = {}
    text, kind = row.get("metadata"), row.get("metadataType")
    if isinstance(text, str) and text and kind == "application/json":
        loaded = json.loads(text)
        if isinstance(loaded, dict):
            metadata = loaded
    status = row.get("status")
    return RunSnapshot(
        id=str(row.get("friendlyId") or row.get("id") or ""),
        status=_STATUSES.get(status, "QUEUED") if isinstance(status, str) else "QUEUED",
        metadata=metadata,
        created_at=_timestamp(row.get("createdAt")),
        updated_at=_timestamp(row.get("updatedAt")),
        completed_at=_timestamp(row.get("completedAt")),
        streams=_text_array(row.get("realtimeStreams")),
        offset=offset,
    )


# --------------------------------------------------------------------------- the protocol, sans I/O


class ShapeFollower:
    """One run's shape, followed poll by poll; no I/O (:meth:`poll` yields the requests)."""

    def __init__(self, run_id: str, token: str, policy: RetryPolicy, timeout: float = POLL_TIMEOUT) -> None:
        self.path = f"/realtime/v1/runs/{quote(run_id, safe='')}"
        self.headers = (("authorization", f"Bearer {token}"), ("accept", "application/json"))
        self.policy = policy
        self.timeout = timeout
        self.handle: str | None = None
        self.offset = "-1"
        self.cursor: str | None = None
        self.live = False
        self.row: dict[str, Any] = {}
        # Whether the row changed since the last up-to-date: a batch without one is told later.
        self.changed = False

    def _request(self) -> Send:
        params = {"log": "full", "offset": self.offset}
        if self.handle is not None:
            params["handle"] = self.handle
        if self.live:
            params["live"] = "true"
            params["cursor"] = self.cursor or ""
        return Send("GET", f"{self.path}?{urlencode(params)}", self.headers, None, self.timeout)

    def poll(self) -> Steps[list[RunSnapshot]]:
        """One answer's worth of snapshots (often none: nothing changed during the hold)."""
        answer = yield from send_retried(self._request(), self.policy, f"subscribe {self.path}", (200, 409))
        if answer.status == 409:  # must refetch: start over from a snapshot
            self.handle = answer.headers.get("electric-handle")
            self.offset, self.live, self.row, self.changed = "-1", False, {}, False
            return []
        return self._take(answer)

    def _take(self, answer: Answer) -> list[RunSnapshot]:
        headers = answer.headers
        self.handle = headers.get("electric-handle", self.handle)
        self.offset = headers.get("electric-offset", self.offset)
        self.cursor = headers.get("electric-cursor", self.cursor)
        messages = json.loads(answer.content) if answer.content.strip() else []
        snapshots: list[RunSnapshot] = []
        for message in messages:
            control = message.get("headers", {}).get("control")
            if control == "up-to-date":
                self.live = True
                if self.changed and self.row:
                    snapshots.append(_snapshot(self.row, self.offset))
                self.changed = False
            elif control == "must-refetch":
                self.row, self.offset, self.live, self.changed = {}, "-1", False, False
            elif isinstance(message.get("value"), dict):
                operation = message.get("headers", {}).get("operation")
                self.row = (
                    dict(message["value"]) if operation == "insert" else {**self.row, **message["value"]}
                )
                self.changed = True
        return snapshots


def _settings(
    name: str, run_id: object, base_url: str | None, access_token: str | None, retry: RetryPolicy | None
) -> tuple[str, str, RetryPolicy]:
    """What ``subscribe`` and ``subscribe_async`` check alike: the URL, the token and the policy."""
    if not isinstance(run_id, str) or not run_id:
        msg = f"{name}: run_id must be a non-empty str, got {describe(run_id)}"
        raise InvalidValueError(msg, "run_id")
    url, token = credentials(name, base_url, access_token)
    if retry is None:
        return url, token, RetryPolicy(attempts=10, max_delay=5.0)
    if not isinstance(retry, RetryPolicy):
        msg = f"{name}: retry must be a RetryPolicy, got {describe(retry)}"
        raise InvalidValueError(msg, "retry")
    return url, token, retry


# --------------------------------------------------------------------------- blocking


def _follow(
    url: str,
    token: str,
    run_id: str,
    policy: RetryPolicy,
    stop: bool,
    halt: threading.Event | None = None,
) -> Iterator[RunSnapshot]:
    """The run's snapshots, poll after poll; with ``halt``, ends at the first poll after it is set
    (a thread following for someone who left must not poll for ever: a quiet run never yields)."""
    follower = ShapeFollower(run_id, token, policy)
    with httpx.Client(base_url=url, timeout=POLL_TIMEOUT) as http:
        while halt is None or not halt.is_set():
            for snapshot in drive(follower.poll(), lambda request: sync_send(http, request), sleep):
                yield snapshot
                if stop and snapshot.completed:
                    return


class Subscription:
    """What :func:`subscribe` returns: an iterator of snapshots (and chunks), closed by :meth:`close`
    or by leaving its ``with`` block."""

    def __init__(self, items: Iterator[Any], stop: threading.Event | None = None) -> None:
        self._items = items
        self._stop = stop

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Any:
        return next(self._items)

    def close(self) -> None:
        """Stop following the run. The threads of ``streams=True`` end within one long-poll
        (about 20 s) and one keep-alive of a stream (10 s); so does a subscription dropped
        without closing, once it is garbage-collected."""
        if self._stop is not None:
            self._stop.set()
        close = getattr(self._items, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(
    run_id: str,
    *,
    base_url: str | None = None,
    access_token: str | None = None,
    stop_on_completion: bool = True,
    streams: bool = False,
    retry: RetryPolicy | None = None,
) -> Subscription:
    """Follow run ``run_id`` live: an iterator of :class:`RunSnapshot` (see the module's docstring).

    With ``streams=True``, :class:`~metaops.client.StreamChunk` values too.
    """
    url, token, policy = _settings("subscribe", run_id, base_url, access_token, retry)
    if not streams:
        return Subscription(_follow(url, token, run_id, policy, stop_on_completion))
    stop = threading.Event()
    return Subscription(_merged(url, token, run_id, policy, stop_on_completion, stop), stop)


@dataclass(frozen=True, slots=True)
class _Ended:
    """A reader thread (the run's, or a stream's: ``key``) ended; with ``error`` when it failed."""

    key: str | None
    error: BaseException | None = None


class _Readers:
    """The readers a merged subscription still waits for, told by what they queue: the run's
    (``None``), and each stream's (its key) from its ``("started", key)`` to its :class:`_Ended`."""

    def __init__(self) -> None:
        self.running: set[str | None] = {None}

    def passes(self, item: object) -> bool:
        """Whether ``item`` goes to the consumer (a snapshot or a chunk); a reader's error is raised."""
        if isinstance(item, tuple):
            self.running.add(item[1])
            return False
        if isinstance(item, _Ended):
            if item.error is not None:
                raise item.error
            self.running.discard(item.key)
            return False
        return True


def _merged(
    url: str, token: str, run_id: str, policy: RetryPolicy, stop_on_completion: bool, stop: threading.Event
) -> Iterator[Any]:
    items: queue.Queue[Any] = queue.Queue(maxsize=MAX_QUEUED)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.2)
            except queue.Full:
                continue
            return True
        return False

    def read(key: str) -> None:
        try:
            reading = _StreamReading("subscribe", run_id, key, url, token, -1, policy, 60.0)
            for chunk in _read_stream(reading, halt=stop):
                if not put(chunk):
                    return
        except BaseException as error:  # handed to the consumer
            put(_Ended(key, error))
            return
        put(_Ended(key))

    def follow() -> None:
        started: set[str] = set()
        try:
            for snapshot in _follow(url, token, run_id, policy, stop_on_completion, stop):
                for key in snapshot.streams:
                    if key not in started:
                        started.add(key)
                        put(("started", key))  # before any chunk of it, and before the run ends
                        threading.Thread(
                            target=read, args=(key,), name=f"metaops-read:{key}", daemon=True
                        ).start()
                if not put(snapshot):
                    return
        except BaseException as error:
            put(_Ended(None, error))
            return
        put(_Ended(None))

    threading.Thread(target=follow, name=f"metaops-subscribe:{run_id}", daemon=True).start()
    readers = _Readers()
    try:
        while readers.running:
            item = items.get()
            if readers.passes(item):
                yield item
    finally:
        stop.set()


# --------------------------------------------------------------------------- asyncio


async def _follow_async(
    url: str, token: str, run_id: str, policy: RetryPolicy, stop: bool
) -> AsyncIterator[RunSnapshot]:
    follower = ShapeFollower(run_id, token, policy)
    async with httpx.AsyncClient(base_url=url, timeout=POLL_TIMEOUT) as http:
        while True:
            for snapshot in await drive_async(
                follower.poll(), lambda request: async_send(http, request), async_sleep
            ):
                yield snapshot
                if stop and snapshot.completed:
                    return


async def subscribe_async(
    run_id: str,
    *,
    base_url: str | None = None,
    access_token: str | None = None,
    stop_on_completion: bool = True,
    streams: bool = False,
    retry: RetryPolicy | None = None,
) -> AsyncIterator[RunSnapshot | StreamChunk]:
    """:func:`subscribe` for asyncio: ``async for run in subscribe_async(run_id): ...``."""
    url, token, policy = _settings("subscribe_async", run_id, base_url, access_token, retry)
    if not streams:
        async for snapshot in _follow_async(url, token, run_id, policy, stop_on_completion):
            yield snapshot
        return
    items: asyncio.Queue[Any] = asyncio.Queue(maxsize=MAX_QUEUED)

    async def read(key: str) -> None:
        try:
            async for chunk in read_stream_async(run_id, key, base_url=url, access_token=token, retry=policy):
                await items.put(chunk)
        except Exception as error:  # handed to the consumer
            await items.put(_Ended(key, error))
            return
        await items.put(_Ended(key))

    tasks: list[asyncio.Task[None]] = []

    async def follow() -> None:
        started: set[str] = set()
        try:
            async for snapshot in _follow_async(url, token, run_id, policy, stop_on_completion):
                for key in snapshot.streams:
                    if key not in started:
                        started.add(key)
                        await items.put(("started", key))
                        tasks.append(asyncio.ensure_future(read(key)))
                await items.put(snapshot)
        except Exception as error:
            await items.put(_Ended(None, error))
            return
        await items.put(_Ended(None))

    tasks.append(asyncio.ensure_future(follow()))
    readers = _Readers()
    try:
        while readers.running:
            item = await items.get()
            if readers.passes(item):
                yield item
    finally:
        for task in tasks:
            task.cancel()
