"""Running the app on uvicorn: in a thread (:func:`running_server`), or as ``metaops serve``.

uvicorn's HTTP/1.1 protocol (h11) is extended in three ways (:class:`_Protocol`):

* a request the HTTP parser refuses (a ``Content-Length`` of ``4_4`` or `` +44 ``,
  a malformed request line, headers past 16 KiB) is answered 400 with a JSON body,
  not uvicorn's text, and the connection is closed after what the client still sends
  has been read and dropped for a moment (closed at once, the client could get a
  reset instead of the answer);
* a connection that does not finish sending a request's headers within
  ``request_timeout`` seconds is closed (uvicorn times out idle keep-alive
  connections only);
* past ``max_connections`` open connections, a new one is answered 503 (JSON) and
  closed, so that idle sockets cannot pile up.

Shutting down (SIGTERM, Ctrl-C, or leaving :func:`running_server`): uvicorn stops
listening, closes idle connections and lets requests in flight finish; any request
that starts meanwhile, or whose body is still arriving, is answered 503 (nothing of
it was done); then the service's storage is closed. Every acknowledged update was
committed before it was acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors.multiprocess import Multiprocess

from metaops._errors import InvalidArgumentError, InvalidLimitError, MetaopsError
from metaops._size import json_text, metadata_limit
from metaops.service._app import REQUEST_TIMEOUT, MetadataApp, create_app
from metaops.service._auth import TOKEN_ENV, quiet_key_length_warnings, weak_secret
from metaops.service._realtime import INTERRUPTIBLE
from metaops.service._service import MetadataService, ServiceConfig
from metaops.service._storage import open_storage

__all__ = ["RunningServer", "main", "running_server"]

_SETTINGS_ENV = "METAOPS_SERVE_SETTINGS"
MAX_CONNECTIONS = 1000
SHUTDOWN_TIMEOUT = 10.0
LINGER_SECONDS = 2.0
"""How long a connection refused as malformed is read (and what comes dropped) before it is closed."""
_log = logging.getLogger("metaops.service")


def _raw_json_response(status: int, reason: bytes, message: str, *, retry: bool = False) -> bytes:
    body = json_text({"error": message}).encode()
    retry_after = b"retry-after: 1\r\n" if retry else b""
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n%s" % (status, reason, len(body), retry_after, body)
    )


class _Config(uvicorn.Config):
    """uvicorn's settings, and the protocol's own (picklable, for worker processes)."""

    def __init__(self, app: Any, *, request_timeout: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.request_timeout = request_timeout
        self.max_connections = max_connections


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with JSON errors, a deadline for headers, and a connection cap."""

    _deadline: asyncio.TimerHandle | None = None
    _discarding = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        config: Any = self.config
        if len(self.connections) >= config.max_connections:
            transport.write(
                _raw_json_response(503, b"Service Unavailable", "Too many connections; try again")
            )
            transport.close()
            return
        super().connection_made(transport)
        self._arm(config.request_timeout)

    def _arm(self, timeout: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(timeout, self._headers_overdue)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_overdue(self) -> None:
        self._deadline = None
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if not in_flight and not self.transport.is_closing():
            # Nothing sent, or headers never finished: nobody is owed an answer.
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # a request is in: its body has the app's own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            config: Any = self.config
            self._arm(config.request_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is not None:  # refused in connection_made: never counted
            super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        body = json_text({"error": f"Malformed HTTP request: {msg}"}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        try:
            output = self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
            output += self.conn.send(h11.Data(data=body))
            output += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:  # a response had started: nothing more can be said
            output = b""
        if output:
            self.transport.write(output)
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Close after an answer given while the client may still be sending (headers past
        h11's 16 KiB, say). Closing at once, with its data unread, makes the kernel answer
        with a reset, which can destroy the answer before the client reads it: so say that
        nothing more comes, drop what arrives for up to :data:`LINGER_SECONDS`, then close."""
        self._discarding = True
        self._disarm()
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if self.transport.can_write_eof():
                self.transport.write_eof()
        with contextlib.suppress(OSError, RuntimeError):
            self.transport.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # what follows a refused request is read and dropped
        super().data_received(data)

    def shutdown(self) -> None:
        app = self.app
        if isinstance(app, MetadataApp):
            app.begin_closing()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.scope.get(INTERRUPTIBLE):
            # A Realtime long-poll or an event stream: nothing to finish, and its client asks
            # again (of another worker, or after the restart) from where it was.
            self.transport.close()
            return
        if (
            cycle is not None
            and not cycle.response_started
            and self.conn.their_state is h11.SEND_BODY
            and not self.transport.is_closing()
        ):
            # Its body is still arriving: nothing was done, and waiting for it could outlast the
            # graceful shutdown (then uvicorn cancels it: a traceback, and a text/plain 500).
            # Answer 503 now; the request's task sees its client gone and ends quietly.
            self.transport.write(
                _raw_json_response(
                    503, b"Service Unavailable", "The server is shutting down; nothing was done", retry=True
                )
            )
            cycle.disconnected = True
            cycle.message_event.set()
            self._close_lingering()
            return
        super().shutdown()


def _uvicorn_config(
    app: Any, *, request_timeout: float, max_connections: int, workers: int = 1, **kwargs: Any
) -> _Config:
    return _Config(
        app,
        request_timeout=request_timeout,
        max_connections=max_connections,
        http=_Protocol,
        lifespan="on",
        log_level=kwargs.pop("log_level", "warning"),
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT,
        workers=workers,
        **kwargs,
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every answer (headers, then body) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class RunningServer:
    """A service being served by :func:`running_server`."""

    url: str
    port: int
    service: MetadataService
    app: MetadataApp


@contextmanager
def running_server(
    service: MetadataService,
    token: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    request_timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> Iterator[RunningServer]:
    """Serve ``service`` on uvicorn in a background thread for the ``with`` block (port 0: a free one).

    On leaving the block, requests in flight finish, then the service is closed.

    >>> from metaops.service import MetadataService, SQLiteStorage
    >>> import tempfile, pathlib, urllib.request
    >>> with tempfile.TemporaryDirectory() as scratch:
    ...     service = MetadataService(SQLiteStorage(pathlib.Path(scratch, "runs.sqlite3")))
    ...     with running_server(service, "secret") as server:
    ...         _ = service.create_run("run_1", metadata={"n": 1})
    ...         request = urllib.request.Request(server.url + "/api/v1/runs/run_1/metadata",
    ...                                          headers={"Authorization": "Bearer secret"})
    ...         print(urllib.request.urlopen(request).read())
    b'{"metadata":{"n":1}}'
    """
    app = create_app(service, token, request_timeout=request_timeout)
    sock = _listen(host, port)
    config = _uvicorn_config(app, request_timeout=request_timeout, max_connections=max_connections)
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as error:  # reported to the caller below
            failure.append(error)

    thread = threading.Thread(target=serve, name="metaops-uvicorn", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(timeout=0.01)
    if not server.started:
        sock.close()
        msg = f"the server did not start: {failure[0] if failure else 'unknown error'}"
        raise RuntimeError(msg)
    try:
        yield RunningServer(_url(sock), sock.getsockname()[1], service, app)
    finally:
        server.should_exit = True
        thread.join(timeout=SHUTDOWN_TIMEOUT + 30)
        sock.close()


# --------------------------------------------------------------------------- the command line


_DESCRIPTION = """\
Serve run metadata over HTTP: GET and PUT /api/v1/runs/{runId}/metadata as the
platform answers them, and the /admin routes (create a run, complete it, read it,
flush queued operations). Stored in SQLite (the default) or PostgreSQL."""

_EPILOG = f"""\
The token is --token, else ${TOKEN_ENV}, else a random one (printed).
The first line on stdout says where the server listens, e.g.
  listening on http://127.0.0.1:8030
with --port 0 the system picks the port, and that line is how to find it.

Databases: sqlite:///relative/path.sqlite3 or sqlite:////absolute/path.sqlite3
(durable: synchronous=FULL in WAL mode), or
postgresql://user:password@host:port/dbname.

--workers N runs N processes on the one port; each keeps its own cache of hot
runs, checked against the database on every request, so any process can serve
any run. With SQLite the processes share the file and take turns writing.

SIGTERM or Ctrl-C stops the server: it stops listening, answers 503 to requests
that start, and lets those in flight finish ({SHUTDOWN_TIMEOUT:g} s at most) before
it closes the database. Queued parent/root operations stay in the database and are
written after a restart. Idempotency keys are kept 24 hours. If the server cannot
start (the port is in use, the database cannot be opened), it prints one line
saying why and exits with status 2.

exit status:
  0    stopped by SIGTERM or Ctrl-C, once the requests in flight finished
  2    bad input: a wrong command line, or the server could not start (the port
       is in use, the database cannot be opened); one line on standard error
       says why"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(text, width, break_on_hyphens=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``metaops serve``."""
    parser.add_argument(
        "--database",
        default="sqlite:///metaops.sqlite3",
        metavar="URL",
        help="sqlite:///FILE or postgresql://... (default: %(default)s, in the working directory)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8030, help="port; 0 for any free one (default: %(default)s)"
    )
    parser.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV}, else random)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="BYTES",
        help="metadata size limit in bytes of JSON (default: $TASK_RUN_METADATA_MAXIMUM_SIZE, else 262144)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes (default: %(default)s)"
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="seconds between background drains of queued parent/root operations; 0 for none "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--no-inline-flush",
        action="store_true",
        help="leave queued operations to the background drain instead of applying them before answering",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="seconds a client may take to send a request's headers or body (default: %(default)g)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        metavar="N",
        help="open connections per process; more are answered 503 (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaops serve", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_HelpFormatter
    )
    add_arguments(parser)
    return parser


@dataclass(frozen=True)
class _Settings:
    """What a worker process needs to build its app (passed through the environment)."""

    database: str
    token: str
    limit: int | None
    flush_interval: float
    inline_flush: bool
    request_timeout: float

    def service(self) -> MetadataService:
        config = ServiceConfig(
            limit=self.limit, flush_interval=self.flush_interval, inline_flush=self.inline_flush
        )
        return MetadataService(open_storage(self.database), config)

    def app(self) -> MetadataApp:
        return create_app(self.service(), self.token, request_timeout=self.request_timeout)


def worker_app() -> MetadataApp:
    """The app of one ``--workers`` process, from the settings its parent put in the environment."""
    quiet_key_length_warnings()  # the parent said it once
    return _Settings(**json.loads(os.environ[_SETTINGS_ENV])).app()


def _redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _fail(message: str) -> int:
    print(f"metaops serve: error: {message}", file=sys.stderr, flush=True)
    return 2


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Serve with parsed ``args`` until SIGTERM or Ctrl-C; 2 with one line on stderr if it cannot start."""
    parser = parser or _parser()
    if not 0 <= args.port <= 65535:
        parser.error(f"--port: expected 0 to 65535, got {args.port}")
    if not 1 <= args.workers <= 64:
        parser.error(f"--workers: expected 1 to 64, got {args.workers}")
    if not 0 < args.request_timeout <= 3600:
        parser.error(f"--request-timeout: expected seconds over 0, up to 3600, got {args.request_timeout}")
    if not 0 <= args.flush_interval <= 3600:
        parser.error(f"--flush-interval: expected seconds from 0 to 3600, got {args.flush_interval}")
    if args.max_connections < 1:
        parser.error(f"--max-connections: expected at least 1, got {args.max_connections}")
    try:
        metadata_limit(args.limit)
    except InvalidLimitError as error:
        if args.limit is not None:
            parser.error(f"--limit: {error}")
        return _fail(str(error))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    token = args.token or os.environ.get(TOKEN_ENV) or ""
    generated = not token
    if generated:
        token = secrets.token_urlsafe(24)
    settings = _Settings(
        database=args.database,
        token=token,
        limit=args.limit,
        flush_interval=args.flush_interval,
        inline_flush=not args.no_inline_flush,
        request_timeout=args.request_timeout,
    )
    # What can go wrong on a given machine (the database, the port) is told in one line.
    try:
        service = settings.service()
    except InvalidArgumentError as error:
        return _fail(str(error).replace(args.database, _redacted(args.database)))
    except (MetaopsError, OSError, ImportError) as error:
        # The storage's message names the database (without its password) and says why.
        message = str(error).replace(args.database, _redacted(args.database))
        return _fail(f"cannot open the database: {message}")
    try:
        sock = _listen(args.host, args.port)
    except OSError as error:
        service.close()
        return _fail(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    print(f"listening on {_url(sock)}", flush=True)
    if generated:
        print(f"token: {token}", flush=True)
    print(f"database: {service.storage.url}; workers: {args.workers}", flush=True)
    weakness = None if generated else weak_secret(token)
    if weakness is not None:
        print(f"metaops serve: warning: the token: {weakness}", file=sys.stderr, flush=True)
    quiet_key_length_warnings()  # said once, above; PyJWT would say it at every token
    log_level = "info" if args.verbose else "warning"
    # uvicorn shuts down gracefully on SIGTERM, then raises it again with the handler it
    # found in place: this one ends the process with status 0, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.workers == 1:
            app = create_app(service, token, request_timeout=args.request_timeout)
            config = _uvicorn_config(
                app,
                request_timeout=args.request_timeout,
                max_connections=args.max_connections,
                log_level=log_level,
            )
            uvicorn.Server(config).run(sockets=[sock])
        else:
            service.close()  # each worker opens its own
            os.environ[_SETTINGS_ENV] = json.dumps(settings.__dict__)
            config = _uvicorn_config(
                f"{__name__}:worker_app",
                factory=True,
                request_timeout=args.request_timeout,
                max_connections=args.max_connections,
                workers=args.workers,
                log_level=log_level,
            )
            Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """``metaops serve`` with ``argv``."""
    parser = _parser()
    return run(parser.parse_args(argv), parser)
