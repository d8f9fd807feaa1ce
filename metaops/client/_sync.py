"""MetadataClient: ``httpx.Client`` and a daemon thread driving the transport core."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType

import httpx

from metaops._json import JSON
from metaops.client._base import (
    BaseClient,
    check_open,
    final_flush,
    sleep,
    sync_send,
    timeout_argument,
    tls,
    unregister,
)
from metaops.client._core import Answer, Failure, RoundResult, Send, drive, log
from metaops.client._errors import ServiceUnavailableError

__all__ = ["MetadataClient"]


class MetadataClient(BaseClient):
    """Updates one run's metadata over HTTP; the calls return at once, a thread sends them.

    Every update (``set``, ``delete``, ``append``, ``remove``, ``increment``,
    ``decrement``, ``replace``, and the same on ``parent`` and ``root``) is applied
    to the local copy (so :meth:`current` and :meth:`get` show it), queued, and
    returned from without I/O; a call that :class:`~metaops.RunMetadata` refuses
    (a non-JSON value, an unsafe key, past the size limit) raises at once and is
    never sent. A daemon thread flushes every ``flush_interval`` seconds: the queue
    collapses into one request body (or a few, past 1 MiB) sent with an
    ``Idempotency-Key``. Failures are retried as ``retry`` says, and a flush that
    cannot be delivered now is sent again later, never twice (see
    :mod:`metaops.client`). A flush the service refuses for good (400, 401, 403,
    404, 413) is set aside in :attr:`rejected`, logged, and passed to ``on_reject``.

    ``base_url`` defaults to ``$TRIGGER_API_URL`` and ``access_token`` to
    ``$TRIGGER_SECRET_KEY``. ``metadata`` is the run's metadata when it started
    (what :meth:`current` shows until the first answer arrives). ``is_root`` says the
    run has no parent: then ``parent`` and ``root`` act on the run itself.
    ``timeout`` bounds each request, in seconds.

    ``with MetadataClient(...) as md:`` binds the client to the ambient
    :data:`metaops.client.metadata` for the block, and closes it at the end.
    A client never closed is flushed at interpreter exit, within
    :data:`~metaops.client.EXIT_TIMEOUT` seconds for all of them together.
    """

    def _open(self) -> None:
        self._http = httpx.Client(base_url=self._base_url, timeout=self._timeout, verify=tls())
        # One round at a time (the flusher's, flush()'s or close()'s): rounds drain the
        # buffer, and a flush must be resolved before the next is drained.
        self._rounds = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._flush_periodically, name=f"metaops-flusher:{self._run_id}", daemon=True
        )
        self._thread.start()

    # ----------------------------------------------------------------- I/O

    def _send(self, request: Send) -> Answer | Failure:
        return sync_send(self._http, request)

    def _wait(self, seconds: float) -> bool:
        # Cut short by close() (which then sends the flush itself), unless closing already.
        return sleep(seconds) if self._closed else self._stopping.wait(seconds)

    def _flush_periodically(self) -> None:
        while not self._stopping.wait(self._interval):
            if self._core.idle or not self._rounds.acquire(blocking=False):
                continue  # nothing to send, or flush()/close() is sending it
            try:
                if self._stopping.is_set():
                    break
                result = drive(self._core.flush(), self._send, self._stopping.wait)
            except Exception:
                # Only a bug gets here; the flusher must outlive it, and the flush is
                # back in the buffer or held (the core resolves it before raising).
                log.exception("run %s: the background flush failed", self._run_id)
                continue
            finally:
                self._rounds.release()
            self._note_background(result)
            self._report([result])

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued before the call, and return once the service has applied it.

        Raises :class:`~metaops.client.ServiceUnavailableError` when the retries are
        spent (or ``timeout`` seconds pass): nothing is lost, the operations are sent
        again at the next interval. Raises :class:`~metaops.client.RequestRefusedError`
        when the service refused what was sent; it is set aside in :attr:`rejected`.
        """
        timeout = timeout_argument(self, "flush", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._rounds.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            msg = f"run {self._run_id}: flush: the flush in progress did not end within {timeout:g} s"
            raise ServiceUnavailableError(msg)
        try:
            result = drive(self._core.flush(deadline), self._send, self._wait)
        finally:
            self._rounds.release()
        self._report([result])
        result.raise_for_outcome()

    def retrieve(self) -> dict[str, JSON]:
        """Read the run's metadata from the service (a GET, retried like a flush).

        The local copy is not changed: it already shows the calls not yet sent.
        :class:`~metaops.client.ClientClosedError` once the client is closed.
        """
        check_open(self, "retrieve")
        return drive(self._core.retrieve(), self._send, self._wait)

    def stream(self, key: str, values: Iterable[object]) -> int:
        """Send ``values`` as the run's stream ``key``, as they come; finish it when they end.

        Returns how many chunks were sent. Readers get them live (Realtime, the
        official SDK's ``withStreams()``, :func:`metaops.client.read_stream`). See
        :mod:`metaops.client._streams` for batching, retries and bounds.
        """
        from metaops.client._streams import write_stream

        return write_stream(self, key, values)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new updates, send everything queued, and stop the flusher thread.

        Raises :class:`~metaops.client.ServiceUnavailableError` if the final flush
        fails; the operations stay queued and ``close()`` can be called again.
        """
        timeout = timeout_argument(self, "close", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        results = self._last_rounds(deadline)
        if results is None:
            msg = f"run {self._run_id}: close: the flush in progress did not end within {timeout} s"
            raise ServiceUnavailableError(msg)
        if results and results[-1].failure is not None:
            raise results[-1].failure
        if threading.current_thread() is not self._thread:
            # Called from on_reject, in the flusher itself, it ends once this returns.
            self._thread.join()
        self._http.close()
        unregister(self)

    def _close_at_exit(self, deadline: float) -> None:
        if self._http.is_closed:
            return
        results = self._last_rounds(deadline)
        if results is None:
            log.error("run %s: at exit, the flush in progress did not end in time", self._run_id)
        elif results and results[-1].failure is not None:
            log.error("%s; at exit, this is lost", results[-1].failure)

    def _last_rounds(self, deadline: float | None) -> list[RoundResult] | None:
        """What close() and the exit-time flush share: refuse updates, stop the flusher, and flush
        what is left by ``deadline``; ``None`` when the round in progress did not end by then."""
        self._closed = True
        self._stopping.set()
        if not self._rounds.acquire(
            timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())
        ):
            return None
        try:
            results = final_flush(self, self._http, deadline)
        finally:
            self._rounds.release()
        self._report(results)
        return results

    # ----------------------------------------------------------------- context

    def __enter__(self) -> MetadataClient:
        self._bind()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._leaving(error):
            self.close()
