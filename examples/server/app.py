"""The HTTP face of the example server (``http.server``, one thread per connection).

Platform routes (what the official SDK calls), bearer token required:

* ``GET /api/v1/runs/{runId}/metadata`` → 200 ``{"metadata": {...}}``
* ``PUT /api/v1/runs/{runId}/metadata`` with ``{"metadata"?, "operations"?,
  "parentOperations"?, "rootOperations"?}`` → 200 ``{"metadata": {...}}``

Errors answer ``{"error": "<message>"}``: 400 malformed JSON, a wrong shape or an
unsafe key (the message names the field and the operation's index), 400 for a run
completed over an hour ago, 401 without the token or with another, 404 for an
unknown run, 413 for a body over 2 MiB or metadata over the size limit, 408 for a
body that stops arriving, 503 (nothing done) once the server is shutting down. A
connection quiet for ``request_timeout`` seconds (30 by default) while the server
waits on the client is closed.

Admin routes (same token), for tests and demos:

* ``POST /admin/runs`` ``{"id"?, "metadata"?, "parentId"?, "rootId"?}`` → 201, the run
* ``POST /admin/runs/{runId}/complete`` ``{"completedAt"?: <Unix seconds>}`` → 200, the run
* ``GET /admin/runs/{runId}`` → the run, with ``queued`` and ``rejected`` operations
* ``POST /admin/flush`` ``{"timeout"?: <seconds>}`` → ``{"pending": <entries left>}``
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from examples.server.service import (
    MetadataService,
    RunCompletedError,
    RunExistsError,
    RunNotFoundError,
)
from examples.server.storage import json_text
from metaops import MetadataTooLargeError, MetaopsError
from metaops.server import InvalidRequestError

__all__ = ["MAX_BODY_BYTES", "REQUEST_TIMEOUT", "SHUTDOWN_TIMEOUT", "MetadataHTTPServer", "running_server"]

MAX_BODY_BYTES = 2 * 1024 * 1024
"""The platform's request body limit on the metadata route (2 MiB)."""

_DRAIN_BYTES = 4 * MAX_BODY_BYTES

REQUEST_TIMEOUT = 30.0
"""Seconds a connection may wait on the client (its request, body, or reading the answer)."""

SHUTDOWN_TIMEOUT = 10.0
"""Seconds :meth:`MetadataHTTPServer.server_close` waits for requests in flight."""

_log = logging.getLogger("examples.server.http")


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MetadataHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server answering the metadata routes for ``service``."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of concurrent clients (twenty
    # children flushing at once) would see connections reset.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        service: MetadataService,
        token: str,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ) -> None:
        if not token:
            msg = "the bearer token must not be empty"
            raise ValueError(msg)
        if (
            isinstance(request_timeout, bool)
            or not isinstance(request_timeout, (int, float))
            or not request_timeout > 0
        ):
            msg = f"request_timeout must be a number of seconds > 0, got {request_timeout!r}"
            raise ValueError(msg)
        self.service = service
        self.token = token
        self.request_timeout = float(request_timeout)
        self.shutdown_timeout = shutdown_timeout
        self._requests = threading.Condition()
        self._in_flight = 0
        self._closing = False
        super().__init__(address, _Handler)

    @property
    def closing(self) -> bool:
        """Whether :meth:`server_close` has begun: new requests are refused with 503."""
        return self._closing

    def server_close(self) -> None:
        """Stop listening, refuse new requests, and wait (``shutdown_timeout`` at most) for
        those in flight, so that the service can be closed after this returns.

        Handler threads are daemons and are not joined (a keep-alive connection may sit
        idle for ``request_timeout``); what must not outlive the service is a request
        using its storage, and those are counted.
        """
        super().server_close()
        with self._requests:
            self._closing = True
            if not self._requests.wait_for(lambda: self._in_flight == 0, self.shutdown_timeout):
                _log.warning(
                    "%d requests still in flight after %g s; closing anyway",
                    self._in_flight,
                    self.shutdown_timeout,
                )

    def _enter(self) -> bool:
        with self._requests:
            if self._closing:
                return False
            self._in_flight += 1
            return True

    def _leave(self) -> None:
        with self._requests:
            self._in_flight -= 1
            if not self._in_flight:
                self._requests.notify_all()

    @property
    def url(self) -> str:
        """The base URL clients use (what the SDK's ``ApiClient`` takes)."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK's fetch and the tests reuse connections
    server_version = "metaops-example/0.1"
    # Headers and body go out in two writes; with Nagle on, the body would wait for the
    # client's delayed ACK (~40 ms) on every keep-alive request.
    disable_nagle_algorithm = True
    # Without a timeout, a client that stops sending (or reading) holds its thread for
    # ever; with one, it loses the connection. setup() applies the server's own value.
    timeout = REQUEST_TIMEOUT
    server: MetadataHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    def _handle(self, method: str) -> None:
        if not self.server._enter():
            self._refuse()
            return
        try:
            self._answer(method)
        finally:
            self.server._leave()

    def _refuse(self) -> None:
        # Shutting down: the service may already be closed, so nothing here may touch it.
        try:
            unread = self._body_length()
        except _HTTPError:
            unread = 0
        self.close_connection = True
        self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "The server is shutting down; nothing was done"})
        self._discard(unread)

    def _answer(self, method: str) -> None:
        unread = 0  # body bytes to drain after answering
        try:
            length = self._body_length()
            try:
                self._authenticate()
            except _HTTPError:
                # Answered from the headers alone: a client without the token is owed no
                # reading of its body (nor a 413 for it). Draining it after the answer lets
                # the client, still sending, read the 401 rather than a reset connection.
                self.close_connection = True
                unread = length
                raise
            body = self._read_body(length)
            status, payload = self._route(method, body)
        except _HTTPError as error:
            status, payload = error.status, {"error": str(error)}
        except InvalidRequestError as error:
            status, payload = HTTPStatus.BAD_REQUEST, {"error": str(error)}
        except RunNotFoundError:
            status, payload = HTTPStatus.NOT_FOUND, {"error": "Task Run not found"}
        except (RunCompletedError, RunExistsError) as error:
            status, payload = HTTPStatus.BAD_REQUEST, {"error": str(error)}
        except MetadataTooLargeError as error:
            status, payload = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(error)}
        except MetaopsError as error:
            status, payload = HTTPStatus.BAD_REQUEST, {"error": str(error)}
        except RecursionError:
            # Only input nested deeper than Python's stack gets here (metaops refuses most
            # of it first, saying where), and only from parsing or applying: before any write.
            _log.warning("%s %s: input nested too deeply", method, self.path)
            status, payload = HTTPStatus.BAD_REQUEST, {"error": "Invalid JSON body: nested too deeply"}
        except Exception:
            _log.exception("%s %s failed", method, self.path)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "Internal Server Error"}
        self._send(status, payload)
        if unread:
            self._discard(unread)

    def _body_length(self) -> int:
        """The body's length from the headers; a body framed any other way is refused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            self.close_connection = True
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"Invalid Content-Length: {raw!r}") from None
        return length

    def _read_body(self, length: int) -> bytes:
        if length > MAX_BODY_BYTES:
            self._discard(length)
            raise _HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"Request body is {length:,} bytes, over the limit of {MAX_BODY_BYTES:,} bytes",
            )
        parts: list[bytes] = []
        received = 0
        while received < length:
            try:
                # read1, not read: on a timeout, what came before it is still counted.
                part = self.rfile.read1(length - received)
            except TimeoutError:
                break
            if not part:
                break
            parts.append(part)
            received += len(part)
        body = b"".join(parts)
        if len(body) < length:
            self.close_connection = True
            raise _HTTPError(
                HTTPStatus.REQUEST_TIMEOUT,
                f"Request body: {len(body):,} of {length:,} bytes came before the connection "
                f"went quiet for {self.server.request_timeout:g} s or closed",
            )
        return body

    def _discard(self, length: int) -> None:
        # Reading what the client is still sending lets it see the 413 rather than a
        # reset connection; past a few limits' worth, hanging up is cheaper.
        if length > _DRAIN_BYTES:
            self.close_connection = True
            return
        while length > 0:
            try:
                chunk = self.rfile.read(min(length, 65536))
            except TimeoutError:
                chunk = b""
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.server.token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise _HTTPError(HTTPStatus.UNAUTHORIZED, "Invalid or Missing API key")

    def _route(self, method: str, body: bytes) -> tuple[int, Any]:
        path = urlsplit(self.path).path
        parts = [unquote(part) for part in path.strip("/").split("/")]
        service = self.server.service
        if len(parts) == 5 and parts[:3] == ["api", "v1", "runs"] and parts[4] == "metadata" and parts[3]:
            run_id = parts[3]
            if method == "GET":
                return HTTPStatus.OK, {"metadata": service.get_metadata(run_id)}
            if method == "PUT":
                return HTTPStatus.OK, {"metadata": service.update_metadata(run_id, _parse_json(body))}
            raise _HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed here; use GET or PUT")
        if parts[:1] == ["admin"]:
            return self._admin(method, parts[1:], body)
        raise _HTTPError(HTTPStatus.NOT_FOUND, f"No route for {method} {path}")

    def _admin(self, method: str, parts: list[str], body: bytes) -> tuple[int, Any]:
        service = self.server.service
        if method == "POST" and parts == ["runs"]:
            spec = _object(_parse_json(body) if body else {}, "run")
            run = service.create_run(
                _optional_str(spec, "id"),
                metadata=_optional_metadata(spec),
                parent_id=_optional_str(spec, "parentId"),
                root_id=_optional_str(spec, "rootId"),
            )
            return HTTPStatus.CREATED, run.to_json()
        if method == "POST" and len(parts) == 3 and parts[0] == "runs" and parts[2] == "complete":
            spec = _object(_parse_json(body) if body else {}, "body")
            at = spec.get("completedAt")
            if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float))):
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "completedAt: expected Unix seconds (a number)")
            return HTTPStatus.OK, service.complete_run(parts[1], at).to_json()
        if method == "GET" and len(parts) == 2 and parts[0] == "runs":
            return HTTPStatus.OK, service.describe_run(parts[1])
        if method == "POST" and parts == ["flush"]:
            spec = _object(_parse_json(body) if body else {}, "body")
            timeout = spec.get("timeout", 10.0)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 60:
                raise _HTTPError(HTTPStatus.BAD_REQUEST, "timeout: expected seconds between 0 and 60")
            return HTTPStatus.OK, {"pending": service.flush_all(float(timeout))}
        raise _HTTPError(HTTPStatus.NOT_FOUND, f"No admin route for {method} /admin/{'/'.join(parts)}")

    def _send(self, status: int, payload: Any) -> None:
        data = json_text(payload).encode("ascii")
        if self.server.closing:
            self.close_connection = True  # so that keep-alive threads end too
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _reject_constant(name: str) -> Any:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as error:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"Invalid JSON body: not UTF-8 ({error.reason})") from None
    except RecursionError:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "Invalid JSON body: nested too deeply") from None
    except ValueError as error:
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"Invalid JSON body: {error}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"{what}: expected a JSON object")
    return value


def _optional_str(spec: dict[str, Any], key: str) -> str | None:
    value = spec.get(key)
    if value is not None and (not isinstance(value, str) or not value or "/" in value):
        raise _HTTPError(HTTPStatus.BAD_REQUEST, f"{key}: expected a non-empty string without '/'")
    return value


def _optional_metadata(spec: dict[str, Any]) -> dict[str, Any] | None:
    value = spec.get("metadata")
    if value is not None and not isinstance(value, dict):
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "metadata: expected an object")
    return value


@contextmanager
def running_server(
    service: MetadataService,
    token: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> Iterator[MetadataHTTPServer]:
    """Serve in a background thread for the ``with`` block (port 0: an ephemeral one).

    On leaving the block, requests in flight finish before the service is closed.
    """
    server = MetadataHTTPServer(
        (host, port), service, token, request_timeout=request_timeout, shutdown_timeout=shutdown_timeout
    )
    service.start()
    thread = threading.Thread(target=server.serve_forever, name="metadata-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        service.close()
