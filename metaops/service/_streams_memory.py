"""Streams in this process's memory, for a storage the service has no stream tables for.

:func:`~metaops.service._streams_store.open_stream_store` falls back to it when the
storage is neither SQLite nor PostgreSQL (a storage of your own, or one wrapped by a
test): the stream routes still work, with the same bounds, but streams are not
durable and not shared between processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from metaops.service._errors import RunNotFoundError
from metaops.service._storage import Listeners
from metaops.service._streams_store import (
    MAX_STREAMS_PER_RUN,
    PAGE_BYTES,
    PAGE_CHUNKS,
    AppendResult,
    StreamInfo,
    StreamListener,
    StreamPage,
    plan_append,
    too_many_streams,
)

if TYPE_CHECKING:
    from metaops.service._storage import Storage

__all__ = ["MemoryStreamStore"]


@dataclass
class _Stream:
    created_at: float
    chunks: list[str] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    finished: bool = False


class MemoryStreamStore:
    """:class:`~metaops.service._streams_store.StreamStore` in memory, beside ``storage`` (which says
    which runs exist)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        self._streams: dict[str, dict[str, _Stream]] = {}
        self._listeners: Listeners[StreamListener] = Listeners()

    def append(
        self, run_id: str, key: str, chunks: Sequence[str], *, first: int | None, end: bool, at: float
    ) -> AppendResult:
        if run_id not in self._streams and self._storage.get_run(run_id) is None:
            raise RunNotFoundError(run_id)
        with self._lock:
            streams = self._streams.setdefault(run_id, {})
            stream = streams.get(key)
            created = stream is None
            if stream is None:
                if len(streams) >= MAX_STREAMS_PER_RUN:
                    raise too_many_streams(run_id)
                stream = _Stream(at)
            stored = stream.ends[-1] if stream.ends else 0
            plan = plan_append(key, len(stream.chunks), stored, stream.finished, chunks, first, end)
            streams[key] = stream
            stream.chunks.extend(plan.chunks)
            stream.ends.extend(plan.ends)
            stream.finished = plan.finished
            listeners = self._listeners.current()
        if created or plan.changes:
            for listener in listeners:
                listener(run_id, key, plan.length)
        return plan.result(created)

    def keys(self, run_id: str) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._streams.get(run_id, {}))

    def info(self, run_id: str, key: str) -> StreamInfo | None:
        with self._lock:
            stream = self._streams.get(run_id, {}).get(key)
            if stream is None:
                return None
            size = stream.ends[-1] if stream.ends else 0
            return StreamInfo(run_id, key, len(stream.chunks), size, stream.finished, stream.created_at)

    def read(self, run_id: str, key: str, after: int) -> StreamPage | None:
        with self._lock:
            stream = self._streams.get(run_id, {}).get(key)
            if stream is None:
                return None
            start = max(0, after + 1)
            base = stream.ends[start - 1] if start > 0 else 0
            stop = start
            while stop < len(stream.chunks) and stop - start < PAGE_CHUNKS:
                if stop > start and stream.ends[stop] - base > PAGE_BYTES:
                    break
                stop += 1
            chunks = tuple((index, stream.chunks[index]) for index in range(start, stop))
            return StreamPage(chunks, len(stream.chunks), stream.finished)

    def subscribe(self, listener: StreamListener) -> Callable[[], None]:
        return self._listeners.add(listener)

    def close(self) -> None:
        pass
