"""Streams from Python over real HTTP: ``stream(key, values)`` sends values as they come,
``read_stream`` resumes after a drop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from metaops import InvalidArgumentError, InvalidValueError
from metaops.client import (
    AsyncMetadataClient,
    MetadataClient,
    RequestRefusedError,
    StreamChunk,
    metadata,
    read_stream,
    read_stream_async,
)
from metaops.service import RunningServer

from . import _realtime_support as support
from ._realtime_support import SECRET, CuttingProxy

# The client's logic does not depend on the storage (the server suites cover both).
server = support.sqlite_server
client = support.client
run_id = support.run_id


def _values(server: RunningServer, run_id: str, key: str) -> list[Any]:
    return [chunk.value for chunk in read_stream(run_id, key, base_url=server.url, access_token=SECRET)]


def test_values_are_sent_as_they_come(server: RunningServer, run_id: str) -> None:
    """Each value is produced only after a reader got the one before: a stream() that waited
    for the end of its values (or for a batch to fill) would never finish."""
    received: list[StreamChunk] = []
    got = threading.Condition()

    def reader() -> None:
        for chunk in read_stream(run_id, "live", base_url=server.url, access_token=SECRET):
            with got:
                received.append(chunk)
                got.notify_all()

    def values() -> Iterator[str]:
        for index in range(5):
            yield f"token {index}"
            with got:
                assert got.wait_for(lambda: len(received) > index, timeout=30), received  # noqa: B023

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with MetadataClient(run_id, base_url=server.url, access_token=SECRET) as md:
        assert md.stream("live", values()) == 5
    thread.join(timeout=30)
    assert [(chunk.index, chunk.value) for chunk in received] == [(i, f"token {i}") for i in range(5)]


def test_through_the_ambient_metadata_and_outside_a_run(server: RunningServer, run_id: str) -> None:
    untouched = iter([1, 2])
    assert metadata.stream("s", untouched) == 0
    assert list(untouched) == [1, 2]  # outside a run nothing is read

    def task() -> int:
        return metadata.stream("progress", ({"done": i, "total": 3} for i in range(1, 4)))

    with MetadataClient(run_id, base_url=server.url, access_token=SECRET):
        assert task() == 3
    assert _values(server, run_id, "progress") == [{"done": i, "total": 3} for i in range(1, 4)]


def test_async_client_and_ambient_take_async_iterables(server: RunningServer, run_id: str) -> None:
    async def main() -> int:
        async def numbers() -> Any:
            for n in range(3):
                yield n

        async with AsyncMetadataClient(run_id, base_url=server.url, access_token=SECRET):
            return await metadata.astream("numbers", numbers())

    assert asyncio.run(main()) == 3

    async def read() -> list[Any]:
        return [
            c.value
            async for c in read_stream_async(run_id, "numbers", base_url=server.url, access_token=SECRET)
        ]

    assert asyncio.run(read()) == [0, 1, 2]


def test_a_bad_value_is_refused_at_the_call_and_what_came_before_stays(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    def values() -> Iterator[object]:
        yield "fine"
        yield {"a set": {1, 2}}

    with MetadataClient(run_id, base_url=server.url, access_token=SECRET) as md:
        with pytest.raises(InvalidValueError):
            md.stream("s", values())
        with pytest.raises(InvalidArgumentError):
            md.stream("not/a key", ["x"])
        # The stream stayed open: a later call continues it, then finishes it.
        assert md.stream("s", ["more"]) == 1
    assert _values(server, run_id, "s") == ["fine", "more"]
    missing = MetadataClient("run_nope", base_url=server.url, access_token=SECRET)
    with pytest.raises(RequestRefusedError) as refused:
        missing.stream("s", ["x"])
    missing.close()
    assert refused.value.status == 404


def test_read_stream_resumes_after_a_dropped_connection(
    server: RunningServer, client: httpx.Client, run_id: str
) -> None:
    body = "".join(f'"chunk {i} {"x" * 100}"\n' for i in range(6)).encode()
    assert (
        client.post(f"/realtime/v1/streams/{run_id}/s", content=body, params={"end": "true"}).status_code
        == 200
    )
    proxy = CuttingProxy(server.port, cut_after=[600])  # the first answer is cut inside an event
    try:
        chunks = list(read_stream(run_id, "s", base_url=proxy.url, access_token=SECRET))
    finally:
        proxy.close()
    assert [(chunk.index, chunk.value) for chunk in chunks] == [
        (i, f"chunk {i} {'x' * 100}") for i in range(6)
    ]
    assert proxy.connections == 2
    [_, resumed] = proxy.requests
    assert "last-event-id: " in resumed.lower()
