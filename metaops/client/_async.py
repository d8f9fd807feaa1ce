"""AsyncMetadataClient: ``httpx.AsyncClient`` and a task on the running loop driving the core."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Iterable
from types import TracebackType
from typing import TypeVar

import httpx

from metaops._json import JSON
from metaops.client._base import (
    BaseClient,
    async_send,
    async_sleep,
    check_open,
    final_flush,
    timeout_argument,
    tls,
    unregister,
)
from metaops.client._core import Answer, Failure, RoundResult, Send, Steps, drive_async, log
from metaops.client._errors import ServiceUnavailableError, WrongEventLoopError

__all__ = ["AsyncMetadataClient"]

_T = TypeVar("_T")


class AsyncMetadataClient(BaseClient):
    """:class:`~metaops.client.MetadataClient` for asyncio: the same updates, awaited flushes.

    The update methods are the same, synchronous and without I/O. Flushing runs
    as a task on the event loop, started when the client is made inside a running
    loop or entered with ``async with`` (which also binds it to the ambient
    :data:`metaops.client.metadata`; tasks started inside inherit it). ``await
    md.flush()``, ``await md.retrieve()`` and ``await md.close()`` do what the
    sync client's methods do.

    A client works on one event loop at a time: once its loop has ended (an
    ``asyncio.run`` returned), the next loop that awaits it takes over, with what
    was left queued; while its loop runs, another loop (in another thread) gets
    :class:`~metaops.client.WrongEventLoopError`.
    """

    def _open(self) -> None:
        self._http = httpx.AsyncClient(base_url=self._base_url, timeout=self._timeout, verify=tls())
        self._rounds = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            self._start()

    def _on_own_loop(self, method: str) -> None:
        """Make sure the client works on the running event loop.

        Its connections and its flushing task live on the loop it started on. When that
        loop has ended (an earlier ``asyncio.run`` returned), this one takes over: new
        connections, a new flushing task; what the old loop left queued or held is sent
        from here, as the core keeps it. While that loop still runs (in another thread),
        :class:`WrongEventLoopError`.
        """
        loop = self._loop
        running = asyncio.get_running_loop()
        if loop is None or loop is running:
            return
        if not loop.is_closed():
            msg = (
                f"{method}: AsyncMetadataClient for run {self._run_id!r} works on the event loop it "
                "started on, which still runs elsewhere: make a client for each event loop"
            )
            raise WrongEventLoopError(msg)
        # The old loop's connections cannot be closed from here (their transports belonged to
        # it); they are dropped with the old httpx client.
        self._http = httpx.AsyncClient(base_url=self._base_url, timeout=self._timeout, verify=tls())
        self._rounds = asyncio.Lock()
        self._stopping = asyncio.Event()
        if self._closed:
            self._stopping.set()
        self._loop = None
        self._task = None
        self._start()

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._loop = asyncio.get_running_loop()
            name = f"metaops-flusher:{self._run_id}"
            self._task = self._loop.create_task(self._flush_periodically(), name=name)

    # ----------------------------------------------------------------- I/O

    async def _send(self, request: Send) -> Answer | Failure:
        return await async_send(self._http, request)

    async def _wait(self, seconds: float) -> bool:
        if self._closed:
            return await async_sleep(seconds)
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def _drive(self, steps: Steps[_T]) -> _T:
        return await drive_async(steps, self._send, self._wait)

    async def _flush_periodically(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            else:
                return
            if self._core.idle or self._rounds.locked():
                continue
            async with self._rounds:
                try:
                    result = await self._drive(self._core.flush())
                except Exception:
                    log.exception("run %s: the background flush failed", self._run_id)
                    continue
            self._note_background(result)
            self._report([result])

    async def _locked(self, what: str, deadline: float | None) -> None:
        if deadline is None:
            await self._rounds.acquire()
            return
        try:
            await asyncio.wait_for(self._rounds.acquire(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            msg = f"run {self._run_id}: {what}: the flush in progress did not end in time"
            raise ServiceUnavailableError(msg) from None

    async def flush(self, timeout: float | None = None) -> None:
        """Send everything queued before the call; return once the service has applied it.

        Raises as :meth:`MetadataClient.flush <metaops.client.MetadataClient.flush>` does.
        """
        timeout = timeout_argument(self, "flush", timeout)
        self._on_own_loop("flush")
        self._start()
        deadline = None if timeout is None else time.monotonic() + timeout
        await self._locked("flush", deadline)
        try:
            result = await self._drive(self._core.flush(deadline))
        finally:
            self._rounds.release()
        self._report([result])
        result.raise_for_outcome()

    async def retrieve(self) -> dict[str, JSON]:
        """Read the run's metadata from the service (a GET, retried like a flush).

        :class:`~metaops.client.ClientClosedError` once the client is closed.
        """
        check_open(self, "retrieve")
        self._on_own_loop("retrieve")
        return await self._drive(self._core.retrieve())

    async def stream(self, key: str, values: AsyncIterable[object] | Iterable[object]) -> int:
        """``await md.stream(key, values)``: :meth:`MetadataClient.stream` for (async) iterables."""
        from metaops.client._streams import write_stream_async

        return await write_stream_async(self, key, values)

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new updates, send everything queued, and stop the flushing task.

        Raises :class:`~metaops.client.ServiceUnavailableError` if the final flush
        fails; the operations stay queued and ``close()`` can be awaited again.
        """
        timeout = timeout_argument(self, "close", timeout)
        if self._http.is_closed:
            return  # closed already: nothing is left to send
        self._on_own_loop("close")
        self._closed = True
        self._stopping.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        await self._locked("close", deadline)
        results: list[RoundResult] = []
        try:
            while not self._core.idle:
                results.append(await self._drive(self._core.flush(deadline)))
                if results[-1].failure is not None:
                    break
        finally:
            self._rounds.release()
        self._report(results)
        if results and results[-1].failure is not None:
            raise results[-1].failure
        if self._task is not None:
            await self._task
        await self._http.aclose()
        unregister(self)

    def _close_at_exit(self, deadline: float) -> None:
        if self._http.is_closed or self._core.idle:
            return
        loop = self._loop
        if loop is not None and loop.is_running():
            # The loop lives on in another thread: close there, where the lock is.
            future = asyncio.run_coroutine_threadsafe(self.close(), loop)
            try:
                future.result(max(0.0, deadline - time.monotonic()))
            except Exception as error:
                log.error("run %s: at exit, close failed: %s", self._run_id, error)
            return
        # The loop has ended (asyncio.run cancelled the flushing task): send what is
        # left with blocking I/O; the core is the same, only the driver differs. A round
        # cut off mid-request left its body held (marked before each request), so the
        # key is settled before anything is sent again.
        self._closed = True
        with httpx.Client(base_url=self._base_url, timeout=self._timeout, verify=tls()) as http:
            results = final_flush(self, http, deadline)
        self._report(results)
        if results and results[-1].failure is not None:
            log.error("%s; at exit, this is lost", results[-1].failure)

    # ----------------------------------------------------------------- context

    async def __aenter__(self) -> AsyncMetadataClient:
        self._on_own_loop("async with")
        self._start()
        self._bind()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._leaving(error):
            await self.close()
