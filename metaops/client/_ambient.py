"""The ambient ``metadata``: the client bound to the current context, or nothing.

A client entered with ``with`` / ``async with`` is bound through a
:class:`contextvars.ContextVar`: the code it calls, and asyncio tasks started
inside (each gets a copy of the context), see it. A new thread starts with an
empty context, so it sees nothing unless started inside a copy of the caller's::

    ctx = contextvars.copy_context()
    threading.Thread(target=ctx.run, args=(work,)).start()
    # or: executor.submit(contextvars.copy_context().run, work)

Outside any bound client the update calls do nothing and return without error,
and :meth:`AmbientMetadata.current` and :meth:`AmbientMetadata.get` return ``None``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any, Literal

from metaops._errors import InvalidValueError
from metaops.buffer import DictView
from metaops.client._base import BaseClient, bound

__all__ = ["AmbientMetadata", "AmbientUpdater", "metadata"]


class AmbientMetadata:
    """What ``metadata`` does: the bound client's methods, or nothing outside a run.

    >>> from metaops.client import metadata
    >>> metadata.set("status", "ignored").increment("n") is metadata
    True
    >>> metadata.current() is None, metadata.get("status") is None, metadata.client is None
    (True, True, True)
    """

    __slots__ = ("_parent", "_root")

    def __init__(self) -> None:
        self._parent = AmbientUpdater("parent")
        self._root = AmbientUpdater("root")

    @property
    def client(self) -> BaseClient | None:
        """The client bound to this context (a MetadataClient or AsyncMetadataClient), if any."""
        return bound.get()

    @property
    def run_id(self) -> str | None:
        """The bound client's run id, if any."""
        client = bound.get()
        return None if client is None else client.run_id

    def set(self, key: str, value: object) -> AmbientMetadata:
        """``client.set(key, value)`` on the bound client; nothing outside a run."""
        client = bound.get()
        if client is not None:
            client.set(key, value)
        return self

    def delete(self, key: str) -> AmbientMetadata:
        """``client.delete(key)`` on the bound client; nothing outside a run."""
        client = bound.get()
        if client is not None:
            client.delete(key)
        return self

    def append(self, key: str, value: object) -> AmbientMetadata:
        """``client.append(key, value)`` on the bound client; nothing outside a run."""
        client = bound.get()
        if client is not None:
            client.append(key, value)
        return self

    def remove(self, key: str, value: object) -> AmbientMetadata:
        """``client.remove(key, value)`` on the bound client; nothing outside a run."""
        client = bound.get()
        if client is not None:
            client.remove(key, value)
        return self

    def increment(self, key: str, n: int | float = 1) -> AmbientMetadata:
        """``client.increment(key, n)`` on the bound client; nothing outside a run."""
        client = bound.get()
        if client is not None:
            client.increment(key, n)
        return self

    def decrement(self, key: str, n: int | float = 1) -> AmbientMetadata:
        """``client.decrement(key, n)`` on the bound client; nothing outside a run."""
        client = bound.get()
        if client is not None:
            client.decrement(key, n)
        return self

    def replace(self, metadata: Mapping[str, object]) -> AmbientMetadata:
        """``client.replace(metadata)`` on the bound client; nothing outside a run."""
        client = bound.get()
        if client is not None:
            client.replace(metadata)
        return self

    @property
    def parent(self) -> AmbientUpdater:
        """The bound client's ``parent`` updates; nothing outside a run."""
        return self._parent

    @property
    def root(self) -> AmbientUpdater:
        """The bound client's ``root`` updates; nothing outside a run."""
        return self._root

    def current(self) -> DictView | None:
        """The bound client's metadata as this process sees it; ``None`` outside a run."""
        client = bound.get()
        return None if client is None else client.current()

    def get(self, key: str) -> Any:
        """The value at ``key`` of :meth:`current`; ``None`` outside a run."""
        client = bound.get()
        return None if client is None else client.get(key)

    def flush(self, timeout: float | None = None) -> None:
        """Flush the bound :class:`~metaops.client.MetadataClient`; nothing outside a run.

        Bound to an :class:`~metaops.client.AsyncMetadataClient`, use ``await metadata.aflush()``.
        """
        from metaops.client._async import AsyncMetadataClient
        from metaops.client._sync import MetadataClient

        client = bound.get()
        if isinstance(client, MetadataClient):
            client.flush(timeout)
        elif isinstance(client, AsyncMetadataClient):
            msg = "metadata.flush(): the bound client is an AsyncMetadataClient: `await metadata.aflush()`"
            raise InvalidValueError(msg, "client")

    async def aflush(self, timeout: float | None = None) -> None:
        """Flush the bound client from async code (a sync one in a worker thread); nothing outside a run."""
        from metaops.client._async import AsyncMetadataClient
        from metaops.client._sync import MetadataClient

        client = bound.get()
        if isinstance(client, AsyncMetadataClient):
            await client.flush(timeout)
        elif isinstance(client, MetadataClient):
            await asyncio.to_thread(client.flush, timeout)

    def stream(self, key: str, values: Iterable[object]) -> int:
        """``client.stream(key, values)`` on the bound :class:`~metaops.client.MetadataClient`.

        Outside a run nothing is read from ``values`` or sent, and 0 is returned.
        Bound to an :class:`~metaops.client.AsyncMetadataClient`, use ``await metadata.astream(...)``.
        """
        from metaops.client._async import AsyncMetadataClient
        from metaops.client._sync import MetadataClient

        client = bound.get()
        if isinstance(client, MetadataClient):
            return client.stream(key, values)
        if isinstance(client, AsyncMetadataClient):
            msg = (
                "metadata.stream(): the bound client is an AsyncMetadataClient: `await metadata.astream(...)`"
            )
            raise TypeError(msg)
        return 0

    async def astream(self, key: str, values: AsyncIterable[object] | Iterable[object]) -> int:
        """Stream from async code: the bound async client's ``stream``, or a sync one's in a worker
        thread (then ``values`` must be a plain iterable); 0 outside a run."""
        from metaops.client._async import AsyncMetadataClient
        from metaops.client._sync import MetadataClient

        client = bound.get()
        if isinstance(client, AsyncMetadataClient):
            return await client.stream(key, values)
        if isinstance(client, MetadataClient):
            if isinstance(values, AsyncIterable):
                msg = "metadata.astream(): a MetadataClient is bound: give it a plain iterable"
                raise TypeError(msg)
            return await asyncio.to_thread(client.stream, key, values)
        return 0

    def __repr__(self) -> str:
        client = bound.get()
        return f"<metadata: {client!r}>" if client is not None else "<metadata: outside a run>"


class AmbientUpdater:
    """``metadata.parent`` / ``metadata.root``: the bound client's, or nothing outside a run."""

    __slots__ = ("_target",)

    def __init__(self, target: Literal["parent", "root"]) -> None:
        self._target = target

    def _client(self) -> Any:
        client = bound.get()
        return None if client is None else (client.parent if self._target == "parent" else client.root)

    def set(self, key: str, value: object) -> AmbientUpdater:
        """Queue ``set(key, value)`` for the target run of the bound client."""
        updater = self._client()
        if updater is not None:
            updater.set(key, value)
        return self

    def delete(self, key: str) -> AmbientUpdater:
        """Queue ``delete(key)`` for the target run of the bound client."""
        updater = self._client()
        if updater is not None:
            updater.delete(key)
        return self

    def append(self, key: str, value: object) -> AmbientUpdater:
        """Queue ``append(key, value)`` for the target run of the bound client."""
        updater = self._client()
        if updater is not None:
            updater.append(key, value)
        return self

    def remove(self, key: str, value: object) -> AmbientUpdater:
        """Queue ``remove(key, value)`` for the target run of the bound client."""
        updater = self._client()
        if updater is not None:
            updater.remove(key, value)
        return self

    def increment(self, key: str, n: int | float = 1) -> AmbientUpdater:
        """Queue ``increment(key, n)`` for the target run of the bound client."""
        updater = self._client()
        if updater is not None:
            updater.increment(key, n)
        return self

    def decrement(self, key: str, n: int | float = 1) -> AmbientUpdater:
        """Queue an increment by ``-n`` for the target run of the bound client."""
        updater = self._client()
        if updater is not None:
            updater.decrement(key, n)
        return self

    def replace(self, metadata: Mapping[str, object]) -> AmbientUpdater:
        """Queue the replacement of the target run's metadata, for the bound client."""
        updater = self._client()
        if updater is not None:
            updater.replace(metadata)
        return self

    def __repr__(self) -> str:
        return f"<metadata.{self._target}>"


metadata = AmbientMetadata()
"""The run metadata of the client bound to the current context; does nothing outside a run."""
