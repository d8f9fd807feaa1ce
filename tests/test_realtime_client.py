"""``metaops.client.subscribe`` and ``subscribe_async`` against ``metaops serve`` over real HTTP."""

from __future__ import annotations

import asyncio
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from metaops import InvalidValueError
from metaops.client import (
    AsyncMetadataClient,
    MetadataClient,
    MissingCredentialsError,
    RequestRefusedError,
    RunSnapshot,
    StreamChunk,
    subscribe,
    subscribe_async,
)
from metaops.client._subscribe import _text_array
from metaops.service import RunningServer

from . import _realtime_support as support
from ._realtime_support import SECRET, CuttingProxy, realtime_of

# The client's logic does not depend on the storage (the server suites cover both).
server = support.sqlite_server
client = support.client


@pytest.fixture
def run_id(client: httpx.Client) -> str:
    run = "run_" + secrets.token_hex(4)
    assert client.post("/admin/runs", json={"id": run, "metadata": {"n": 0}}).status_code == 201
    return run


def _increment(client: httpx.Client, run_id: str) -> None:
    answer = client.put(
        f"/api/v1/runs/{run_id}/metadata",
        json={"operations": [{"type": "increment", "key": "n", "value": 1}]},
    )
    assert answer.status_code == 200


def _consume(iterator: Iterator[Any]) -> tuple[queue.Queue[Any], threading.Thread]:
    """Items of ``iterator``, read in a thread, through a queue (an exception ends up in it too)."""
    items: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        try:
            for item in iterator:
                items.put(item)
        except BaseException as error:
            items.put(error)
        items.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return items, thread


def test_subscribe_yields_each_state_in_order_and_ends_with_the_completed_run(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    items, thread = _consume(subscribe(run_id, base_url=server.url, access_token=SECRET))
    first = items.get(timeout=30)
    assert isinstance(first, RunSnapshot)
    assert (first.id, first.status, first.metadata, first.completed, first.streams) == (
        run_id,
        "EXECUTING",
        {"n": 0},
        False,
        (),
    )
    assert first.created_at is not None
    assert first.created_at.tzinfo is not None
    for n in range(1, 4):  # lockstep: none folded
        _increment(client, run_id)
        assert items.get(timeout=30).metadata == {"n": n}
    assert client.post(f"/admin/runs/{run_id}/complete").status_code == 200
    last = items.get(timeout=30)
    assert (last.metadata, last.status, last.completed) == ({"n": 3}, "COMPLETED", True)
    assert items.get(timeout=30) is None  # the iteration ended
    thread.join(timeout=30)


def test_after_a_dropped_connection_the_subscriber_gets_the_latest_state(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    proxy = CuttingProxy(server.port)
    hub = realtime_of(server)
    try:
        subscription = subscribe(run_id, base_url=proxy.url, access_token=SECRET)
        items, thread = _consume(subscription)
        assert items.get(timeout=30).metadata == {"n": 0}
        while not any("live=true" in request for request in proxy.requests):
            time.sleep(0.01)
        while sum(watch.refs for watch in hub._watches.values()) == 0:
            time.sleep(0.01)
        proxy.cut()  # the long-poll's connection drops while it waits
        for _ in range(3):  # changes the subscriber was not connected for (some or all)
            _increment(client, run_id)
        # The reconnect may land between two increments on a loaded machine, so the
        # subscriber may see a state in between; it must end on the latest, in order.
        seen = [items.get(timeout=30).metadata["n"]]
        while seen[-1] != 3:
            seen.append(items.get(timeout=30).metadata["n"])
        assert seen == sorted(set(seen))
        assert 1 <= seen[0] <= 3
        assert client.post(f"/admin/runs/{run_id}/complete").status_code == 200
        assert items.get(timeout=30).completed
        assert items.get(timeout=30) is None
        thread.join(timeout=30)
        live = [request for request in proxy.requests if "live=true" in request]
        assert len(live) >= 2
        assert all("offset=0_0" in request for request in live[:2])  # asked again from where it was
    finally:
        proxy.close()


def test_subscribe_async_with_streams_gets_snapshots_and_every_chunk(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    async def main() -> list[RunSnapshot | StreamChunk]:
        seen: list[RunSnapshot | StreamChunk] = []

        async def produce() -> int:
            async def tokens() -> Any:
                for word in ("Hello", ", ", "world"):
                    yield word
                    await asyncio.sleep(0)

            async with AsyncMetadataClient(run_id, base_url=server.url, access_token=SECRET) as md:
                sent = await md.stream("tokens", tokens())
                md.set("done", True)
            return sent

        async def consume() -> None:
            async for item in subscribe_async(run_id, base_url=server.url, access_token=SECRET, streams=True):
                seen.append(item)

        consumer = asyncio.ensure_future(consume())
        assert await produce() == 3
        await asyncio.to_thread(lambda: client.post(f"/admin/runs/{run_id}/complete"))
        await asyncio.wait_for(consumer, timeout=60)
        return seen

    seen = asyncio.run(main())
    chunks = [(item.key, item.index, item.value) for item in seen if isinstance(item, StreamChunk)]
    assert chunks == [("tokens", 0, "Hello"), ("tokens", 1, ", "), ("tokens", 2, "world")]
    runs = [item for item in seen if isinstance(item, RunSnapshot)]
    assert runs[-1].completed
    assert runs[-1].metadata == {"n": 0, "done": True}
    assert runs[-1].streams == ("tokens",)


def test_subscribe_with_streams_gets_snapshots_and_every_chunk(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    """The blocking merge (a thread per reader) gives what the asyncio one does, and ends once the
    run completed and its stream ended."""
    items, thread = _consume(subscribe(run_id, base_url=server.url, access_token=SECRET, streams=True))
    assert items.get(timeout=30).metadata == {"n": 0}
    with MetadataClient(run_id, base_url=server.url, access_token=SECRET) as md:
        assert md.stream("tokens", ["Hello", ", ", "world"]) == 3
        md.set("done", True)
    assert client.post(f"/admin/runs/{run_id}/complete").status_code == 200
    seen: list[Any] = []
    while (item := items.get(timeout=60)) is not None:
        seen.append(item)
    thread.join(timeout=30)
    chunks = [(item.key, item.index, item.value) for item in seen if isinstance(item, StreamChunk)]
    assert chunks == [("tokens", 0, "Hello"), ("tokens", 1, ", "), ("tokens", 2, "world")]
    runs = [item for item in seen if isinstance(item, RunSnapshot)]
    assert len(runs) + len(chunks) == len(seen)  # no error, nothing else
    assert runs[-1].completed
    assert runs[-1].metadata == {"n": 0, "done": True}
    assert runs[-1].streams == ("tokens",)


def test_refusals_and_missing_credentials(server: RunningServer, client: httpx.Client, run_id: str) -> None:
    with pytest.raises(RequestRefusedError) as unknown:
        next(subscribe("run_nope", base_url=server.url, access_token=SECRET))
    assert unknown.value.status == 404
    other = client.post("/api/v1/auth/public-tokens", json={"scopes": ["read:runs:run_else"]}).json()["token"]
    with pytest.raises(RequestRefusedError) as forbidden:
        next(subscribe(run_id, base_url=server.url, access_token=other))
    assert forbidden.value.status == 403
    mine = client.post("/api/v1/auth/public-tokens", json={"scopes": [f"read:runs:{run_id}"]}).json()["token"]
    with subscribe(run_id, base_url=server.url, access_token=mine) as subscription:
        assert next(subscription).metadata == {"n": 0}
    with pytest.raises(MissingCredentialsError):
        subscribe(run_id, base_url=None, access_token=None)


def test_bad_arguments_are_refused_at_the_call_by_both_subscribes(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before any request, with the function's name in the message (the async one at
    its first step, as a generator); the run id first, then the credentials, then the policy."""
    monkeypatch.delenv("TRIGGER_API_URL", raising=False)
    monkeypatch.delenv("TRIGGER_SECRET_KEY", raising=False)

    def first_async(**arguments: Any) -> Any:
        async def main() -> Any:
            return await subscribe_async(**arguments).__anext__()

        return asyncio.run(main())

    calls: list[tuple[str, Callable[..., Any]]] = [("subscribe", subscribe), ("subscribe_async", first_async)]
    for name, call in calls:
        with pytest.raises(InvalidValueError, match=f"^{name}: run_id must be a non-empty str, got "):
            call(run_id="", base_url=server.url, access_token=SECRET)
        with pytest.raises(InvalidValueError, match=f"^{name}: run_id must be a non-empty str, got .*7"):
            call(run_id=7, base_url=server.url, access_token=SECRET)
        with pytest.raises(InvalidValueError, match=f"^{name}: retry must be a RetryPolicy, got .*3"):
            call(run_id="run_x", base_url=server.url, access_token=SECRET, retry=3)
        with pytest.raises(MissingCredentialsError, match=f"^{name}: no service URL"):
            call(run_id="run_x", base_url=None, access_token=None, retry=3)
        with pytest.raises(InvalidValueError, match=f"^{name}: run_id"):
            call(run_id=None, base_url=None, access_token=None, retry=3)


def test_postgres_array_literals() -> None:
    assert _text_array("{}") == ()
    assert _text_array('{"a","b.c"}') == ("a", "b.c")
    assert _text_array('{plain,"with \\"quote\\"",x}') == ("plain", 'with "quote"', "x")
    assert _text_array(None) == ()


def test_the_follower_starts_over_on_must_refetch_and_merges_partial_updates() -> None:
    """Sans I/O: a 409 sends it back to a snapshot under the new handle; an update carrying some
    columns changes only those; a batch without up-to-date yields nothing yet."""
    from metaops.client._core import Answer, Send
    from metaops.client._retry import RetryPolicy
    from metaops.client._subscribe import ShapeFollower

    def row(**value: Any) -> dict[str, Any]:
        return {"key": "k", "value": value, "headers": {"operation": "insert"}}

    up_to_date = {"headers": {"control": "up-to-date"}}
    base = {
        "id": "r",
        "friendlyId": "r",
        "status": "EXECUTING",
        "metadata": '{"n":1}',
        "metadataType": "application/json",
    }
    follower = ShapeFollower("r", "token", RetryPolicy(attempts=1))

    def answer(status: int, headers: dict[str, str], messages: object) -> list[RunSnapshot]:
        steps = follower.poll()
        request = next(steps)
        assert isinstance(request, Send)
        try:
            steps.send(Answer(status, headers, json.dumps(messages).encode()))
        except StopIteration as done:
            result: list[RunSnapshot] = done.value
            return result
        raise AssertionError("the poll asked for more")

    [first] = answer(200, {"electric-handle": "h1", "electric-offset": "1_0"}, [row(**base), up_to_date])
    assert (first.metadata, first.offset) == ({"n": 1}, "1_0")
    assert follower.live
    update = {"key": "k", "value": {"metadata": '{"n":2}'}, "headers": {"operation": "update"}}
    assert (
        answer(200, {"electric-offset": "2_0", "electric-cursor": "c"}, [update]) == []
    )  # not up to date yet
    [second] = answer(200, {"electric-offset": "2_0"}, [up_to_date])
    assert (second.metadata, second.status, second.id) == ({"n": 2}, "EXECUTING", "r")
    assert answer(409, {"electric-handle": "h2"}, [{"headers": {"control": "must-refetch"}}]) == []
    assert (follower.handle, follower.offset, follower.live, follower.row) == ("h2", "-1", False, {})
    assert "offset=-1" in follower._request().path
