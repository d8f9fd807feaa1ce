"""What the sync and async clients share: settings, the update methods, binding, exit.

The update methods are the same on both (they never do I/O: they apply the call
to the local :class:`~metaops.RunMetadata` and queue it); only flushing differs.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import math
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import httpx

from metaops._errors import InvalidArgumentError, InvalidValueError
from metaops._json import describe
from metaops.buffer import DictView, MetadataUpdater, RejectedFlush, RunMetadata
from metaops.client._core import Answer, Core, Failure, RoundResult, Send, drive, log
from metaops.client._errors import ClientClosedError, MissingCredentialsError, ServiceUnavailableError
from metaops.client._retry import RetryPolicy

__all__ = [
    "EXIT_TIMEOUT",
    "BaseClient",
    "answer_of",
    "async_send",
    "async_sleep",
    "bound",
    "check_open",
    "final_flush",
    "register",
    "sleep",
    "sync_send",
    "timeout_argument",
    "tls",
    "transport_failure",
    "unregister",
]

EXIT_TIMEOUT = 5.0
"""Seconds the interpreter's exit spends, at most, flushing the clients nobody closed."""

_C = TypeVar("_C", bound="BaseClient")

_tls: ssl.SSLContext | None = None
_tls_lock = threading.Lock()


def tls() -> ssl.SSLContext:
    """httpx's default TLS settings, built once per process and shared by every client.

    Building them loads the CA bundle: about 0.1 s, paid by each ``httpx.Client()``
    that is not handed a context (a client per run would spend most of its life there).
    """
    global _tls
    with _tls_lock:
        if _tls is None:
            _tls = httpx.create_ssl_context()
        return _tls


# The client the ambient ``metadata`` acts on in this context (thread, task).
bound: contextvars.ContextVar[BaseClient | None] = contextvars.ContextVar(
    "metaops.client.bound", default=None
)


class BaseClient:
    """One run's metadata: the update methods, and the settings both clients take.

    The constructor is written once, here: it checks the settings and builds the
    buffer and the transport core, then :meth:`_open` (the sync or async client's)
    opens the HTTP client and starts the flusher, and the client is registered
    for the flush at interpreter exit.
    """

    def __init__(
        self,
        run_id: str,
        *,
        base_url: str | None = None,
        access_token: str | None = None,
        flush_interval: float = 1.0,
        metadata: Mapping[str, object] | None = None,
        is_root: bool = True,
        limit: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        on_reject: Callable[[RejectedFlush], object] | None = None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(run_id, str):
            msg = f"{name}: run_id must be a str, got {describe(run_id)}"
            raise InvalidValueError(msg, "run_id")
        if not run_id or not run_id.isprintable():
            msg = f"{name}: run_id must be a non-empty printable str, got {run_id!r}"
            raise InvalidArgumentError(msg)
        self._base_url = _base_url(name, base_url)
        token = _access_token(name, access_token, have_url=bool(self._base_url))
        if not self._base_url:
            missing: tuple[str, ...] = ("base_url (TRIGGER_API_URL)",)
            if not token:
                missing += ("access_token (TRIGGER_SECRET_KEY)",)
            msg = f"{name}: no service URL: pass base_url= or set TRIGGER_API_URL" + (
                ", and no access token: pass access_token= or set TRIGGER_SECRET_KEY" if not token else ""
            )
            raise MissingCredentialsError(msg, missing)
        self._interval = _seconds(name, "flush_interval", flush_interval)
        self._timeout = _seconds(name, "timeout", timeout)
        if retry is None:
            retry = RetryPolicy()
        elif not isinstance(retry, RetryPolicy):
            msg = f"{name}: retry must be a RetryPolicy, got {describe(retry)}"
            raise InvalidValueError(msg, "retry")
        if on_reject is not None and not callable(on_reject):
            msg = f"{name}: on_reject must be callable, got {describe(on_reject)}"
            raise InvalidValueError(msg, "on_reject")
        self._run_id = run_id
        self._metadata = RunMetadata(metadata, is_root=is_root, limit=limit)
        self._core = Core(run_id, self._metadata, access_token=token, policy=retry, timeout=self._timeout)
        self._on_reject = on_reject
        self._failing = False
        self._closed = False
        self._bindings: list[contextvars.Token[BaseClient | None]] = []
        self._parent = _ClientUpdater(self, self._metadata.parent)
        self._root = _ClientUpdater(self, self._metadata.root)
        self._open()
        register(self)

    def _open(self) -> None:  # pragma: no cover - overridden
        """Open the HTTP client and start flushing: all that the sync and async clients make differently."""
        raise NotImplementedError

    # ----------------------------------------------------------------- updates (no I/O)

    def _buffer_for(self, method: str) -> RunMetadata:
        """The buffer, once ``method`` is known not to be refused: a closed client would never send it."""
        if self._closed:
            _closed(self, method)
        return self._metadata

    def set(self: _C, key: str, value: object) -> _C:
        """Set ``key`` (or every match of a ``$.`` path) to ``value``; sent at the next flush."""
        self._buffer_for("set").set(key, value)
        return self

    def delete(self: _C, key: str) -> _C:
        """Delete the top-level ``key``."""
        self._buffer_for("delete").delete(key)
        return self

    def append(self: _C, key: str, value: object) -> _C:
        """Append ``value`` to the list at ``key`` (a missing key becomes ``[value]``)."""
        self._buffer_for("append").append(key, value)
        return self

    def remove(self: _C, key: str, value: object) -> _C:
        """Remove every item equal to ``value`` from the list at ``key``."""
        self._buffer_for("remove").remove(key, value)
        return self

    def increment(self: _C, key: str, n: int | float = 1) -> _C:
        """Add ``n`` to the number at ``key``."""
        self._buffer_for("increment").increment(key, n)
        return self

    def decrement(self: _C, key: str, n: int | float = 1) -> _C:
        """Subtract ``n`` from the number at ``key``."""
        self._buffer_for("decrement").decrement(key, n)
        return self

    def replace(self: _C, metadata: Mapping[str, object]) -> _C:
        """Replace the whole metadata with ``metadata``."""
        self._buffer_for("replace").replace(metadata)
        return self

    @property
    def parent(self) -> _ClientUpdater:
        """Updates to the parent run's metadata (this run's own when it is the root)."""
        return self._parent

    @property
    def root(self) -> _ClientUpdater:
        """Updates to the root run's metadata (this run's own when it is the root)."""
        return self._root

    # ----------------------------------------------------------------- reading (local)

    def current(self) -> DictView:
        """The run's metadata as this process sees it: the last answer plus every call since."""
        return self._metadata.current()

    def get(self, key: str) -> Any:
        """The value at the top-level ``key`` of :meth:`current` (``None`` when absent)."""
        return self._metadata.get(key)

    # ----------------------------------------------------------------- state

    @property
    def run_id(self) -> str:
        """The run this client updates."""
        return self._run_id

    @property
    def base_url(self) -> str:
        """The service's URL."""
        return self._base_url

    @property
    def pending(self) -> bool:
        """Whether calls wait to be sent (queued, or in a flush held for its outcome)."""
        return not self._core.idle

    @property
    def rejected(self) -> tuple[RejectedFlush, ...]:
        """Every flush the service refused for good, with its reason, oldest first."""
        return self._core.rejected

    @property
    def held(self) -> bool:
        """Whether a flush that may have been applied waits for its outcome (sent before anything newer)."""
        return self._core.held is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has begun: updates are refused from then on."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}({self._run_id!r}, base_url={self._base_url!r}, {state})"

    # ----------------------------------------------------------------- binding

    def _bind(self) -> None:
        self._bindings.append(bound.set(self))

    def _unbind(self) -> None:
        if self._bindings:
            bound.reset(self._bindings.pop())

    @contextlib.contextmanager
    def _leaving(self, error: BaseException | None) -> Iterator[None]:
        """Around the ``close()`` that ends a ``with`` block (``async with`` alike), after unbinding.

        When the block raised, a close that fails is logged: raising it would hide the
        block's own error, which says more.
        """
        self._unbind()
        if error is None:
            yield
            return
        try:
            yield
        except ServiceUnavailableError:
            log.exception("run %s: closing after %r failed", self._run_id, error)

    # ----------------------------------------------------------------- after a round

    def _report(self, results: Iterable[RoundResult]) -> None:
        """Hand what the rounds set aside to ``on_reject``, outside any round (so it may flush)."""
        callback = self._on_reject
        if callback is None:
            return
        for result in results:
            for rejected in result.rejected:
                try:
                    callback(rejected)
                except Exception:
                    log.exception("run %s: the on_reject callback raised", self._run_id)

    def _note_background(self, result: RoundResult) -> None:
        """Log a background round's failure once, not at every interval while the service is down."""
        if result.failure is not None:
            if not self._failing:
                log.warning("%s; trying again every %g s", result.failure, self._interval)
            else:
                log.debug("%s", result.failure)
            self._failing = True
        elif self._failing:
            log.info("run %s: the service takes updates again", self._run_id)
            self._failing = False

    # ----------------------------------------------------------------- exit

    def _close_at_exit(self, deadline: float) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class _ClientUpdater:
    """``client.parent`` / ``client.root``: the buffer's updater, refused once the client is closed."""

    __slots__ = ("_client", "_updater")

    def __init__(self, client: BaseClient, updater: MetadataUpdater) -> None:
        self._client = client
        self._updater = updater

    def _check(self, method: str) -> MetadataUpdater:
        if self._client._closed:
            _closed(self._client, f"{self._updater._target}.{method}")
        return self._updater

    def set(self, key: str, value: object) -> _ClientUpdater:
        """Queue ``set(key, value)`` for the target run."""
        self._check("set").set(key, value)
        return self

    def delete(self, key: str) -> _ClientUpdater:
        """Queue ``delete(key)`` for the target run."""
        self._check("delete").delete(key)
        return self

    def append(self, key: str, value: object) -> _ClientUpdater:
        """Queue ``append(key, value)`` for the target run."""
        self._check("append").append(key, value)
        return self

    def remove(self, key: str, value: object) -> _ClientUpdater:
        """Queue ``remove(key, value)`` for the target run."""
        self._check("remove").remove(key, value)
        return self

    def increment(self, key: str, n: int | float = 1) -> _ClientUpdater:
        """Queue ``increment(key, n)`` for the target run."""
        self._check("increment").increment(key, n)
        return self

    def decrement(self, key: str, n: int | float = 1) -> _ClientUpdater:
        """Queue an increment by ``-n`` for the target run."""
        self._check("decrement").decrement(key, n)
        return self

    def replace(self, metadata: Mapping[str, object]) -> _ClientUpdater:
        """Queue the replacement of the target run's whole metadata."""
        self._check("replace").replace(metadata)
        return self

    def __repr__(self) -> str:
        return f"<{self._updater._target} of {self._client!r}>"


def _closed(client: BaseClient, method: str) -> None:
    name = type(client).__name__
    msg = f"{method}: {name} for run {client.run_id!r} is closed; the call would never be sent"
    raise ClientClosedError(msg)


# --------------------------------------------------------------------------- settings


def _argument_or_environment(name: str, what: str, value: str | None, variable: str) -> str:
    """``value``, or when it is ``None`` the environment's ``variable`` (the SDK's own defaults)."""
    if value is None:
        return os.environ.get(variable) or ""
    if not isinstance(value, str):
        msg = f"{name}: {what} must be a str, got {describe(value)}"
        raise InvalidValueError(msg, what)
    return value


def _base_url(name: str, base_url: str | None) -> str:
    base_url = _argument_or_environment(name, "base_url", base_url, "TRIGGER_API_URL")
    if not base_url:
        return ""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as error:
        msg = f"{name}: base_url {base_url!r} is not a URL: {error}"
        raise InvalidArgumentError(msg) from None
    if url.scheme not in ("http", "https") or not url.host:
        msg = f"{name}: base_url must be an http:// or https:// URL with a host, got {base_url!r}"
        raise InvalidArgumentError(msg)
    return base_url.rstrip("/")


def _access_token(name: str, token: str | None, *, have_url: bool) -> str:
    token = _argument_or_environment(name, "access_token", token, "TRIGGER_SECRET_KEY")
    if not token:
        if have_url:
            msg = f"{name}: no access token: pass access_token= or set TRIGGER_SECRET_KEY"
            raise MissingCredentialsError(msg, ("access_token (TRIGGER_SECRET_KEY)",))
        return ""
    if not token.isascii() or not token.isprintable() or " " in token:
        msg = f"{name}: access_token must be printable ASCII without spaces (it goes in a header)"
        raise InvalidArgumentError(msg)
    return token


def _seconds(name: str, what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name}: {what} must be a number of seconds, got {describe(value)}"
        raise InvalidValueError(msg, what)
    if not 0 < value < math.inf:
        msg = f"{name}: {what} must be a finite number of seconds > 0, got {value!r}"
        raise InvalidArgumentError(msg)
    return float(value)


def timeout_argument(client: BaseClient, method: str, value: object) -> float | None:
    """``timeout=`` of ``flush``/``close``: ``None`` (no limit) or finite seconds >= 0."""
    if value is None:
        return None
    what = f"{type(client).__name__}.{method}: timeout"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{what} must be a number of seconds or None, got {describe(value)}"
        raise InvalidValueError(msg, "timeout")
    if not 0 <= value < math.inf:
        msg = f"{what} must be a finite number of seconds >= 0 (None: no limit), got {value!r}"
        raise InvalidArgumentError(msg)
    return float(value)


def check_open(client: BaseClient, method: str) -> None:
    """:class:`ClientClosedError` once ``client`` is closed (its connections are, or soon will be)."""
    if client._closed:
        _closed(client, method)


# --------------------------------------------------------------------------- blocking I/O


# Only the send itself is blocking or awaited; the request is built, and the response read,
# by the same code for both (httpx's own split: build_request, then send).


def sync_send(http: httpx.Client, request: Send) -> Answer | Failure:
    """Make ``request`` with ``http``; a transport error becomes a :class:`Failure`."""
    try:
        response = http.send(_built(http, request))
    except httpx.TransportError as error:
        return transport_failure(error)
    return answer_of(response)


async def async_send(http: httpx.AsyncClient, request: Send) -> Answer | Failure:
    """:func:`sync_send` with ``httpx.AsyncClient``."""
    try:
        response = await http.send(_built(http, request))
    except httpx.TransportError as error:
        return transport_failure(error)
    return answer_of(response)


def _built(http: httpx.Client | httpx.AsyncClient, request: Send) -> httpx.Request:
    return http.build_request(
        request.method,
        request.path,
        content=request.content,
        headers=request.headers,
        timeout=request.timeout,
    )


def answer_of(response: httpx.Response) -> Answer:
    """What the core reads of a response (its body read)."""
    return Answer(response.status_code, response.headers, response.content)


def transport_failure(error: httpx.TransportError) -> Failure:
    """What a transport error says about its request: only a connection never made sent nothing."""
    text = str(error)
    described = f"{type(error).__name__}: {text}" if text else type(error).__name__
    unsent = isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    return Failure(described, reached=not unsent)


def sleep(seconds: float) -> bool:
    """A wait nothing cuts short (a final flush's)."""
    time.sleep(seconds)
    return False


async def async_sleep(seconds: float) -> bool:
    """:func:`sleep` on the event loop."""
    await asyncio.sleep(seconds)
    return False


def final_flush(client: BaseClient, http: httpx.Client, deadline: float | None) -> list[RoundResult]:
    """Flush until nothing is queued or held, or a round fails (the last result then says why).

    Calls that raced ``close`` (made before it marked the client closed, queued after
    a drain) are picked up by the next round.
    """
    core = client._core
    results: list[RoundResult] = []
    while not core.idle:
        results.append(drive(core.flush(deadline), lambda request: sync_send(http, request), sleep))
        if results[-1].failure is not None:
            break
    return results


# --------------------------------------------------------------------------- interpreter exit

_open: weakref.WeakSet[BaseClient] = weakref.WeakSet()
_registered = False
_registry_lock = threading.Lock()


def register(client: BaseClient) -> None:
    """Flush ``client`` at interpreter exit unless it is closed before."""
    global _registered
    with _registry_lock:
        _open.add(client)
        if not _registered:
            atexit.register(_flush_at_exit)
            _registered = True


def unregister(client: BaseClient) -> None:
    with _registry_lock:
        _open.discard(client)


def _flush_at_exit() -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    with _registry_lock:
        clients = list(_open)
    for client in clients:
        try:
            client._close_at_exit(deadline)
        except Exception:
            log.exception("run %s: the flush at exit failed", client.run_id)
