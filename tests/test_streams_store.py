"""The stream store on both backends: numbered chunks, retries skipped, bounds, pages, the feed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from metaops import InvalidArgumentError
from metaops.service import RunNotFoundError, Storage, open_storage
from metaops.service._streams_memory import MemoryStreamStore
from metaops.service._streams_store import (
    MAX_CHUNK_BYTES,
    MAX_STREAMS_PER_RUN,
    PAGE_BYTES,
    ChunkGapError,
    StreamFinishedError,
    StreamFullError,
    StreamStore,
    check_stream_key,
    open_stream_store,
)


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    opened = open_storage(database_url)
    opened.create_run("run_1", metadata="{}", parent_id=None, root_id=None, created_at=1.0)
    yield opened
    opened.close()


@pytest.fixture(params=["database", "memory"])
def store(storage: Storage, request: pytest.FixtureRequest) -> Iterator[StreamStore]:
    """The stream store beside the storage, in its database; or in memory, beside a storage the
    service has no stream tables for."""
    opened = open_stream_store(storage if request.param == "database" else _Wrapped(storage))  # type: ignore[arg-type]
    assert isinstance(opened, MemoryStreamStore) == (request.param == "memory")
    yield opened
    opened.close()


class _Wrapped:
    """A storage of no kind the service knows (it only passes calls on)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def __getattr__(self, name: str) -> object:
        return getattr(self._storage, name)


def _texts(values: list[object]) -> list[str]:
    return [json.dumps(value) for value in values]


def test_chunks_are_numbered_and_a_retried_write_stores_nothing_twice(store: StreamStore) -> None:
    first = store.append("run_1", "tokens", _texts(["a", "b"]), first=None, end=False, at=2.0)
    assert (first.length, first.accepted, first.created, first.finished) == (2, 2, True, False)
    # The same write again (its answer was lost), then one overlapping it.
    again = store.append("run_1", "tokens", _texts(["a", "b"]), first=0, end=False, at=3.0)
    assert (again.length, again.accepted, again.created) == (2, 0, False)
    overlap = store.append("run_1", "tokens", _texts(["b", "c"]), first=1, end=True, at=4.0)
    assert (overlap.length, overlap.accepted, overlap.finished) == (3, 1, True)
    page = store.read("run_1", "tokens", -1)
    assert page is not None
    assert page.chunks == ((0, '"a"'), (1, '"b"'), (2, '"c"'))
    assert (page.length, page.finished) == (3, True)
    after = store.read("run_1", "tokens", 1)
    assert after is not None
    assert after.chunks == ((2, '"c"'),)


def test_refused_writes_change_nothing(store: StreamStore, storage: Storage) -> None:
    store.append("run_1", "s", _texts([1]), first=None, end=False, at=1.0)
    with pytest.raises(ChunkGapError) as gap:
        store.append("run_1", "s", _texts([3]), first=3, end=False, at=1.0)
    assert gap.value.length == 1
    with pytest.raises(StreamFullError):
        store.append("run_1", "s", ["1", '"' + "x" * MAX_CHUNK_BYTES + '"'], first=None, end=False, at=1.0)
    with pytest.raises(RunNotFoundError):
        store.append("run_nope", "s", ["1"], first=None, end=False, at=1.0)
    info = store.info("run_1", "s")
    assert info is not None
    assert (info.length, info.bytes, info.finished) == (1, 1, False)
    assert store.keys("run_nope") == ()
    store.append("run_1", "s", [], first=None, end=True, at=1.0)
    with pytest.raises(StreamFinishedError):
        store.append("run_1", "s", ["2"], first=None, end=False, at=1.0)
    # A retry of the finishing write is still fine.
    assert store.append("run_1", "s", _texts([1]), first=0, end=True, at=1.0).accepted == 0


def test_a_run_has_a_bounded_number_of_streams_listed_in_creation_order(store: StreamStore) -> None:
    keys = [f"k{i}" for i in range(MAX_STREAMS_PER_RUN)]
    for key in reversed(keys):
        store.append("run_1", key, [], first=None, end=False, at=1.0)
    assert store.keys("run_1") == tuple(reversed(keys))
    with pytest.raises(StreamFullError):
        store.append("run_1", "one-more", [], first=None, end=False, at=1.0)
    assert len(store.keys("run_1")) == MAX_STREAMS_PER_RUN


def test_reads_come_in_pages_of_bounded_bytes(store: StreamStore) -> None:
    chunk = '"' + "y" * (64 * 1024 - 2) + '"'
    count = 2 * PAGE_BYTES // len(chunk) + 1
    store.append("run_1", "big", [chunk] * count, first=None, end=True, at=1.0)
    after, seen = -1, []
    while True:
        page = store.read("run_1", "big", after)
        assert page is not None
        if not page.chunks:
            break
        assert sum(len(text) for _, text in page.chunks) <= max(PAGE_BYTES, len(chunk))
        seen += [index for index, _ in page.chunks]
        after = page.chunks[-1][0]
    assert seen == list(range(count))


def test_writers_on_threads_announce_every_change(store: StreamStore) -> None:
    heard: list[tuple[str, str, int]] = []
    unsubscribe = store.subscribe(lambda run, key, length: heard.append((run, key, length)))
    threads = [
        threading.Thread(
            target=lambda k=k: [
                store.append("run_1", k, ["0"], first=None, end=False, at=1.0) for _ in range(5)
            ]
        )
        for k in ("x", "y")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    unsubscribe()
    assert sorted(heard) == sorted([("run_1", k, n) for k in ("x", "y") for n in range(1, 6)])
    store.append("run_1", "x", ["0"], first=None, end=False, at=1.0)
    assert len(heard) == 10


@pytest.mark.parametrize("key", ["", ".hidden", "a/b", "a b", "é", "x" * 129, 7])
def test_stream_keys_must_survive_a_url_path(key: object) -> None:
    with pytest.raises(InvalidArgumentError):
        check_stream_key(key)


def test_on_postgresql_another_process_hears_every_write(postgres_url: str) -> None:
    """Two storages on one schema stand for two worker processes: LISTEN/NOTIFY carries the writes."""
    writer_storage, reader_storage = open_storage(postgres_url), open_storage(postgres_url)
    writer, reader = open_stream_store(writer_storage), open_stream_store(reader_storage)
    try:
        writer_storage.create_run("run_1", metadata="{}", parent_id=None, root_id=None, created_at=1.0)
        heard: list[tuple[str, str, int]] = []
        done = threading.Event()

        def listener(run_id: str, key: str, length: int) -> None:
            heard.append((run_id, key, length))
            if length == 3:
                done.set()

        reader.subscribe(listener)
        for _ in range(3):
            writer.append("run_1", "tokens", ["1"], first=None, end=False, at=1.0)
        assert done.wait(timeout=30), heard
        assert heard == [("run_1", "tokens", 1), ("run_1", "tokens", 2), ("run_1", "tokens", 3)]
    finally:
        for closing in (writer, reader, writer_storage, reader_storage):
            closing.close()
