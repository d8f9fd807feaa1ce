"""metaops.client misused: what an audit found, each answered with a typed error or made to work.

Every refusal is a :class:`~metaops.MetaopsError` that is also the matching built-in,
raised before anything changes; never a bare ``TypeError`` from deep inside, nor
httpx's own ``RuntimeError``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("httpx", reason="the client needs the client extra: pip install 'metaops[client]'")

from metaops import InvalidArgumentError, InvalidValueError
from metaops.client import (
    AsyncMetadataClient,
    ClientClosedError,
    MetadataClient,
    RetryPolicy,
    WrongEventLoopError,
    read_stream,
    read_stream_async,
    subscribe,
)
from tests._client_service import TOKEN, ThreadedService, threaded_service
from tests._realtime_support import SECRET, live_server

FAST = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05)
_ids = itertools.count()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedService]:
    with threaded_service(f"sqlite:///{tmp_path_factory.mktemp('misuse') / 'runs.sqlite3'}") as running:
        yield running


@pytest.fixture
def run_id(service: ThreadedService) -> str:
    name = f"misuse_{next(_ids)}"
    service.create_run(name)
    return name


def _sync(service: ThreadedService, run_id: str) -> MetadataClient:
    return MetadataClient(run_id, base_url=service.url, access_token=TOKEN, flush_interval=60, retry=FAST)


def _async(service: ThreadedService, run_id: str) -> AsyncMetadataClient:
    return AsyncMetadataClient(
        run_id, base_url=service.url, access_token=TOKEN, flush_interval=60, retry=FAST
    )


def _stream_keys(service: ThreadedService, run_id: str) -> Any:
    answer = httpx.get(
        f"{service.url}/realtime/v1/runs/{run_id}",
        params={"offset": "-1"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    return answer.json()[0]["value"]["realtimeStreams"]


BAD_TIMEOUTS = [
    ("1", InvalidValueError, TypeError),
    (True, InvalidValueError, TypeError),
    (float("nan"), InvalidArgumentError, ValueError),
    (-1, InvalidArgumentError, ValueError),
    (float("inf"), InvalidArgumentError, ValueError),
]


@pytest.mark.parametrize(("timeout", "error", "builtin"), BAD_TIMEOUTS, ids=repr)
def test_flush_and_close_refuse_a_timeout_that_is_not_seconds(
    service: ThreadedService, run_id: str, timeout: Any, error: type[Exception], builtin: type[Exception]
) -> None:
    """``flush(timeout="1")`` raised a bare TypeError from an addition deep inside, and a NaN or
    negative timeout was taken as it came. Both are refused, typed, before anything is sent or
    closed; the queued call is still sent afterwards."""
    md = _sync(service, run_id)
    md.increment("n")
    for call in (md.flush, md.close):
        with pytest.raises(error) as raised:
            call(timeout)
        assert isinstance(raised.value, builtin)
        assert "timeout" in str(raised.value)
    assert not md.closed
    assert md.pending
    md.close()
    assert service.metadata(run_id) == {"n": 1}

    async def main() -> None:
        amd = _async(service, run_id)
        amd.increment("n")
        for call in (amd.flush, amd.close):
            with pytest.raises(error):
                await call(timeout)
        assert not amd.closed
        assert amd.pending
        await amd.close()

    asyncio.run(main())
    assert service.metadata(run_id) == {"n": 2}


def test_retrieve_after_close_is_a_client_closed_error(service: ThreadedService, run_id: str) -> None:
    """After ``close()``, ``retrieve()`` raised httpx's RuntimeError ("the client has been
    closed"); now the same ClientClosedError as every other call on a closed client."""
    md = _sync(service, run_id)
    md.close()
    with pytest.raises(ClientClosedError, match=r"^retrieve: MetadataClient for run 'misuse_\d+' is closed"):
        md.retrieve()

    async def main() -> None:
        amd = _async(service, run_id)
        await amd.close()
        with pytest.raises(ClientClosedError, match=r"^retrieve: AsyncMetadataClient"):
            await amd.retrieve()

    asyncio.run(main())


def test_stream_of_something_not_iterable_is_refused_before_the_stream_exists(
    service: ThreadedService, run_id: str
) -> None:
    """``stream("log", 5)`` created the stream on the service, then raised a bare TypeError from
    its loop. Now InvalidValueError (a TypeError) naming the argument, and no stream is made."""
    md = _sync(service, run_id)
    with pytest.raises(InvalidValueError, match=r"^stream\('log'\): values must be an iterable"):
        md.stream("log", 5)  # type: ignore[arg-type]
    md.close()

    async def main() -> None:
        async with _async(service, run_id) as amd:
            with pytest.raises(InvalidValueError, match=r"^stream\('log'\): values must be an iterable"):
                await amd.stream("log", 5)  # type: ignore[arg-type]

    asyncio.run(main())
    assert _stream_keys(service, run_id) == "{}"


def test_an_async_client_outlives_its_first_event_loop(service: ThreadedService, run_id: str) -> None:
    """An AsyncMetadataClient used in a second ``asyncio.run`` raised "Event loop is closed"
    from httpx: its connections belonged to the first loop. Once that loop has ended, the
    next one takes over (new connections, a new flushing task), and nothing queued is lost."""
    md = _async(service, run_id)

    async def first() -> None:
        md.increment("n")
        await md.flush()
        md.increment("n")  # queued when the loop ends

    async def second() -> None:
        md.increment("n")
        await md.flush()
        assert await md.retrieve() == {"n": 3}
        async with md:
            md.increment("n")

    asyncio.run(first())
    asyncio.run(second())
    assert service.metadata(run_id) == {"n": 4}


def test_an_async_client_awaited_on_a_second_running_loop_is_a_typed_error(
    service: ThreadedService, run_id: str
) -> None:
    """While the client's own loop still runs, another loop (in another thread) cannot use it:
    WrongEventLoopError (a RuntimeError), and the client still works on its own loop."""
    seen: list[BaseException] = []

    async def main() -> None:
        md = _async(service, run_id)
        md.increment("n")

        def elsewhere() -> None:
            async def use() -> None:
                await md.flush()

            try:
                asyncio.run(use())
            except BaseException as error:  # checked below, in the test's thread
                seen.append(error)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.01)
        await md.close()

    asyncio.run(main())
    [error] = seen
    assert isinstance(error, WrongEventLoopError)
    assert isinstance(error, RuntimeError)
    assert "make a client for each event loop" in str(error)
    assert service.metadata(run_id) == {"n": 1}


@pytest.mark.parametrize(
    ("arguments", "error", "words"),
    [
        ({"run_id": 5}, InvalidValueError, "run_id must be a non-empty str, got 5"),
        ({"after": "x"}, InvalidValueError, "after must be a chunk index"),
        ({"after": -5}, InvalidArgumentError, "after must be -1 (from the start) or a chunk index, got -5"),
        ({"timeout": "x"}, InvalidValueError, "timeout must be a number of seconds"),
        ({"timeout": float("nan")}, InvalidArgumentError, "timeout must be a finite number of seconds > 0"),
        ({"retry": 3}, InvalidValueError, "retry must be a RetryPolicy, got 3"),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_read_stream_refuses_bad_arguments_at_the_call(
    service: ThreadedService, run_id: str, arguments: dict[str, Any], error: type[Exception], words: str
) -> None:
    """read_stream(5, "log") raised a bare TypeError from urllib, ``after="x"`` a TypeError
    from a comparison, ``timeout=nan`` httpx's ValueError, all at the first ``next()``; a
    ``retry`` that is not a RetryPolicy went unnoticed until a retry. Now typed errors, at
    the call, for the sync and the async reader alike."""
    given: dict[str, Any] = {"run_id": run_id, "key": "log", **arguments}
    credentials: dict[str, Any] = {"base_url": service.url, "access_token": TOKEN}
    with pytest.raises(error) as raised:
        read_stream(given.pop("run_id"), given.pop("key"), **credentials, **given)
    assert str(raised.value).startswith(f"read_stream: {words}")
    given = {"run_id": run_id, "key": "log", **arguments}
    with pytest.raises(error, match=r"^read_stream_async: "):
        read_stream_async(given.pop("run_id"), given.pop("key"), **credentials, **given)


def test_a_closed_subscription_with_streams_leaves_no_thread_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """subscribe(..., streams=True) reads in threads. Closed (or dropped), its thread following
    the run checked for the stop only when the run changed, and a stream's reader only when a
    chunk came: on a quiet run they polled the service for ever, a thread and a connection
    each. Now they end at their next poll or keep-alive (shortened here)."""
    monkeypatch.setattr("metaops.service._realtime.HOLD", 0.3)
    monkeypatch.setattr("metaops.service._streams.PING_INTERVAL", 0.2)
    with live_server(f"sqlite:///{tmp_path / 'runs.sqlite3'}") as server:
        admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {SECRET}"})
        assert admin.post("/admin/runs", json={"id": "quiet", "metadata": {"n": 1}}).status_code == 201
        assert admin.post("/realtime/v1/streams/quiet/log", content=b'"a"\n').status_code == 200
        admin.close()

        def following() -> list[str]:
            return [
                t.name
                for t in threading.enumerate()
                if t.name in ("metaops-subscribe:quiet", "metaops-read:log")
            ]

        for _ in range(3):
            subscription = subscribe("quiet", base_url=server.url, access_token=SECRET, streams=True)
            seen = [next(subscription), next(subscription)]
            assert {type(item).__name__ for item in seen} == {"RunSnapshot", "StreamChunk"}
            subscription.close()
        deadline = time.monotonic() + 20
        while following() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert following() == []


def test_close_from_on_reject_in_the_background_closes_the_client(service: ThreadedService) -> None:
    """``on_reject`` runs in the flusher thread for a background flush; a callback that closes
    the client there got RuntimeError("cannot join current thread"), and the client's
    connections stayed open. Now close() works from there too."""
    outcomes: list[str] = []

    def give_up(rejected: object) -> None:
        try:
            md.close()
        except Exception as error:  # reported below
            outcomes.append(repr(error))
        else:
            outcomes.append("closed")

    md = MetadataClient(
        "no-such-run", base_url=service.url, access_token=TOKEN, flush_interval=0.02, on_reject=give_up
    )
    md.set("a", 1)
    deadline = time.monotonic() + 20
    while not outcomes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes == ["closed"]
    assert md.closed
    md._thread.join(timeout=20)
    assert not md._thread.is_alive()
    assert md._http.is_closed
