"""The HTTP face of the service: a Starlette app over :class:`MetadataService`.

Platform routes (what the official SDK calls), bearer token required:

* ``GET /api/v1/runs/{runId}/metadata`` → 200 ``{"metadata": {...}}``
* ``PUT /api/v1/runs/{runId}/metadata`` with ``{"metadata"?, "operations"?,
  "parentOperations"?, "rootOperations"?}`` → 200 ``{"metadata": {...}}`` (the run's
  metadata after its own operations; parent and root operations are queued and
  applied after the write commits). An ``Idempotency-Key`` header (1 to 255 visible
  ASCII characters) makes it apply at most once per run and key: a repeat, whatever
  its body, applies nothing and answers 200 with the current metadata,
  ``Idempotent-Replayed: true`` and ``Idempotent-Original: operations`` or ``empty``:
  whether the request that first used the key carried operations (a client that fenced
  the key with an empty request can tell its fence's record from its body's).

Admin routes (same token), for tests, demos and operators:

* ``POST /admin/runs`` ``{"id"?, "metadata"?, "parentId"?, "rootId"?}`` → 201, the run
* ``POST /admin/runs/{runId}/complete`` ``{"completedAt"?: <Unix seconds>}`` → 200, the run
* ``GET /admin/runs/{runId}`` → the run, with its ``queued`` count and ``rejected`` entries
* ``POST /admin/flush`` ``{"timeout"?: <seconds>}`` → ``{"pending": <entries left>}``

Live routes (:mod:`metaops.service._realtime`, :mod:`metaops.service._streams`,
:mod:`metaops.service._auth`): ``GET /realtime/v1/runs/{runId}`` (the official SDK's
``runs.subscribeToRun``), ``GET``/``POST /realtime/v1/streams/{runId}/{key}``, ``POST
/api/v1/auth/jwt/claims`` and ``POST /api/v1/auth/public-tokens``. A public access token
(a run-scoped JWT) may ``GET`` the metadata, Realtime and stream routes of its runs:
403 for anything else.

The dashboard (:mod:`metaops.service._dashboard`): ``GET /runs/{runId}?token=<public
token>``, an HTML page following the run live; it authenticates itself and answers
its refusals (401, 403, 404) as HTML pages.

Every other answer other than 2xx is ``{"error": "<message>"}``: 400 malformed body (the
message names the field), a run completed over an hour ago, a bad header; 401
without the token (decided from the headers, before any body is read, comparing in
constant time); 404 unknown run or route; 405 a method the route does not take; 408
a body that stops arriving; 413 a body over 2 MiB or metadata over the limit; 501 a
method HTTP does not define; 503 (with ``Retry-After``) while shutting down or when
the database fails, nothing done.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from metaops._errors import MetadataTooLargeError, MetaopsError
from metaops._size import json_text
from metaops.service._auth import Authority
from metaops.service._codec import loads
from metaops.service._dashboard import Dashboard
from metaops.service._errors import (
    RunCompletedError,
    RunExistsError,
    RunNotFoundError,
    ServiceClosingError,
    StorageError,
)
from metaops.service._realtime_app import Realtime
from metaops.service._service import MetadataService, UpdateOutcome

__all__ = ["MAX_BODY_BYTES", "REQUEST_TIMEOUT", "MetadataApp", "create_app"]

_log = logging.getLogger("metaops.service.http")

MAX_BODY_BYTES = 2 * 1024 * 1024
"""The platform's request body limit on the metadata route (2 MiB)."""
REQUEST_TIMEOUT = 30.0
"""Seconds a client may take to send a request's headers, or its body once they came."""
RETRY_AFTER = "1"
_DRAIN_BYTES = 4 * MAX_BODY_BYTES
"""An unread body up to this size is read and dropped after a refusal, so that the client,
still sending, can read the answer; past it, the connection is closed instead."""
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_T = TypeVar("_T")


class _Refusal(Exception):
    """An answer other than 200, decided before or instead of the service's work."""

    def __init__(
        self, status: int, message: str, *, close: bool = False, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.close = close
        self.headers = headers or {}


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    return Response(json_text(payload).encode(), status, headers, media_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


async def _send_error(send: Send, status: int, message: str, headers: dict[str, str]) -> None:
    body = json_text({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class MetadataApp:
    """The ASGI app of :func:`create_app`; what every request goes through before routing.

    Decided from the headers alone:

    501 for a method HTTP does not define, 503 while the service shuts down, 401
    without the token: none of them reads the body (``Connection: close`` then, so
    that an unread body is never taken for the next request).
    """

    def __init__(
        self, app: ASGIApp, service: MetadataService, authority: Authority, dashboard: Dashboard | None = None
    ) -> None:
        self._app = app
        self._service = service
        self._authority = authority
        self._dashboard = dashboard

    @property
    def service(self) -> MetadataService:
        """The service this app answers for."""
        return self._service

    def begin_closing(self) -> None:
        """The server is shutting down: answer 503 to any request that starts from now on."""
        self._service.begin_closing()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        method = scope["method"]
        if method not in _KNOWN_METHODS:
            await _send_error(
                send, 501, f"{method} is not a method this server implements", {"Connection": "close"}
            )
            return
        if self._service.closing:
            message = "The server is shutting down; nothing was done"
            await _send_error(send, 503, message, {"Connection": "close", "Retry-After": RETRY_AFTER})
            return
        if "\x00" in scope["path"]:
            # No run, stream or route has a NUL in its name, and PostgreSQL cannot even look one
            # up (it would answer an error, taken for a database failure: 503, "retry").
            await _send_error(
                send, 404, "Not found: the path holds a NUL character", _unread_body_headers(scope)
            )
            return
        if self._dashboard is not None and self._dashboard.owns(scope):
            # The page authenticates itself: its token comes in the link, its refusals are pages.
            await self._dashboard(scope, receive, send)
            return
        # The secret, or a public token within its reach (401 / 403 otherwise).
        refusal = self._authority.check(scope)
        if refusal is not None:
            status, message = refusal
            await _send_error(send, status, message, _unread_body_headers(scope))
            return
        await self._app(scope, receive, send)


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)  # the HTTP parser took digits only
    return None


def _unread_body_headers(scope: Scope) -> dict[str, str]:
    """Headers for an answer given without reading the body: close when it is too big to drop."""
    declared = _declared_length(scope["headers"])
    if declared is None:
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        return {"Connection": "close"} if chunked else {}
    return {"Connection": "close"} if declared > _DRAIN_BYTES else {}


async def _read_body(request: Request, timeout: float) -> bytes:
    """The body, at most 2 MiB, arriving within ``timeout`` seconds; else 413 or 408."""
    declared = _declared_length(request.scope["headers"])
    if declared is not None and declared > MAX_BODY_BYTES:
        message = f"Request body is {declared:,} bytes, over the limit of {MAX_BODY_BYTES:,} bytes"
        raise _Refusal(413, message, headers=_unread_body_headers(request.scope))
    parts: list[bytes] = []
    received = 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                received += len(chunk)
                if received > MAX_BODY_BYTES:
                    message = f"Request body is over the limit of {MAX_BODY_BYTES:,} bytes"
                    raise _Refusal(413, message, close=True)
                parts.append(chunk)
    except TimeoutError:
        expected = f" of {declared:,}" if declared is not None else ""
        message = (
            f"Request body: {received:,}{expected} bytes came before the connection "
            f"went quiet for {timeout:g} s"
        )
        raise _Refusal(408, message, close=True) from None
    except ClientDisconnect:
        # Nobody is left to answer (the server drops what is sent now), and nothing was done:
        # a client's own hang-up is no error of the server's.
        raise _Refusal(400, "Request body: the client went away before it arrived", close=True) from None
    return b"".join(parts)


def _parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _Refusal(400, f"Invalid JSON body: not UTF-8 ({error.reason})") from None
    try:
        return loads(text)
    except RecursionError:
        raise _Refusal(400, "Invalid JSON body: nested too deeply") from None
    except ValueError as error:
        raise _Refusal(400, f"Invalid JSON body: {error}") from None


def _object(body: bytes, what: str) -> dict[str, Any]:
    value = _parse_json(body) if body else {}
    if not isinstance(value, dict):
        raise _Refusal(400, f"{what}: expected a JSON object")
    return value


def _replay_headers(outcome: UpdateOutcome) -> dict[str, str]:
    """A repeat's headers: it was replayed, and what the request that used the key carried
    (left out for a key stored before that was kept: the client then cannot tell)."""
    headers = {"Idempotent-Replayed": "true"}
    if outcome.original in ("operations", "empty"):
        headers["Idempotent-Original"] = outcome.original
    return headers


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all("!" <= c <= "~" for c in key):
        raise _Refusal(400, "Idempotency-Key: expected 1 to 255 visible ASCII characters")
    return key


def create_app(
    service: MetadataService,
    token: str,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    threads: int = 32,
    manage_service: bool = True,
) -> MetadataApp:
    """The ASGI app answering the metadata and admin routes for ``service``, guarded by ``token``.

    The service's blocking work runs on at most ``threads`` worker threads. With
    ``manage_service``, the app's lifespan starts the service's background drainer
    and closes the service at shutdown, after the requests in flight.
    """
    authority = Authority(token)
    limiter = anyio.CapacityLimiter(threads)

    async def run(function: Callable[[], _T]) -> _T:
        return await anyio.to_thread.run_sync(function, limiter=limiter)

    realtime = Realtime(service, authority, run, request_timeout=request_timeout)

    async def answer(request: Request, work: Callable[[], Any]) -> Response:
        """Run the route's work; turn what it raises into the answer that says what went wrong."""
        try:
            result = await work()
        except _Refusal as refusal:
            headers = dict(refusal.headers)
            if refusal.close:
                headers["Connection"] = "close"
            return _error(refusal.status, str(refusal), headers)
        except RunNotFoundError:
            return _error(404, "Task Run not found")
        except (RunCompletedError, RunExistsError) as error:
            return _error(400, str(error))
        except MetadataTooLargeError as error:
            return _error(413, str(error))
        except (ServiceClosingError, StorageError) as error:
            return _error(503, str(error), {"Retry-After": RETRY_AFTER})
        except MetaopsError as error:
            return _error(400, str(error))
        except RecursionError:
            _log.warning("%s %s: input nested too deeply", request.method, request.url.path)
            return _error(400, "Invalid JSON body: nested too deeply")
        except Exception:
            _log.exception("%s %s failed", request.method, request.url.path)
            return _error(500, "Internal Server Error")
        assert isinstance(result, Response)
        return result

    async def metadata(request: Request) -> Response:
        return await (put_metadata if request.method == "PUT" else get_metadata)(request)

    async def get_metadata(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def work() -> Response:
            state = await run(lambda: service.get(run_id))
            return Response(b'{"metadata":' + state.text + b"}", media_type="application/json")

        return await answer(request, work)

    async def put_metadata(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def work() -> Response:
            key = _idempotency_key(request)
            body = _parse_json(await _read_body(request, request_timeout))
            outcome = await run(lambda: service.update(run_id, body, key=key))
            headers = _replay_headers(outcome) if outcome.replayed else None
            return Response(b'{"metadata":' + outcome.state.text + b"}", 200, headers, "application/json")

        return await answer(request, work)

    async def create_run(request: Request) -> Response:
        async def work() -> Response:
            spec = _object(await _read_body(request, request_timeout), "run")
            record = await run(
                lambda: service.create_run(
                    spec.get("id"),
                    metadata=spec.get("metadata"),
                    parent_id=spec.get("parentId"),
                    root_id=spec.get("rootId"),
                )
            )
            return _json(201, await run(lambda: service.describe(record.id)))

        return await answer(request, work)

    async def complete_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def work() -> Response:
            spec = _object(await _read_body(request, request_timeout), "body")
            at = spec.get("completedAt")
            if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float))):
                raise _Refusal(400, "completedAt: expected Unix seconds (a number)")
            await run(lambda: service.complete_run(run_id, at))
            return _json(200, await run(lambda: service.describe(run_id)))

        return await answer(request, work)

    async def describe_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        async def work() -> Response:
            return _json(200, await run(lambda: service.describe(run_id)))

        return await answer(request, work)

    async def flush(request: Request) -> Response:
        async def work() -> Response:
            spec = _object(await _read_body(request, request_timeout), "body")
            timeout = spec.get("timeout", 10.0)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 60:
                raise _Refusal(400, "timeout: expected seconds between 0 and 60")
            return _json(200, {"pending": await run(lambda: service.flush_all(float(timeout)))})

        return await answer(request, work)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 404:
            message = f"No route for {request.method} {request.url.path}"
        else:
            message = exc.detail
        return _error(exc.status_code, message, dict(exc.headers or {}))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_service:
            service.start()
        realtime.start()
        try:
            yield
        finally:
            realtime.stop()
            if manage_service:
                await anyio.to_thread.run_sync(service.close)

    routes = [
        Route("/api/v1/runs/{run_id}/metadata", metadata, methods=["GET", "PUT"]),
        Route("/admin/runs", create_run, methods=["POST"]),
        Route("/admin/runs/{run_id}/complete", complete_run, methods=["POST"]),
        Route("/admin/runs/{run_id}", describe_run, methods=["GET"]),
        Route("/admin/flush", flush, methods=["POST"]),
        *realtime.routes,
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.router.redirect_slashes = False
    return MetadataApp(app, service, authority, Dashboard(service, authority, run))
