"""``python -m examples.server``: serve run metadata on 127.0.0.1.

The token comes from ``--token``, else ``$METAOPS_SERVER_TOKEN``, else a random one
(printed). The first line on stdout says where it listens, e.g.
``listening on http://127.0.0.1:8030``; with ``--port 0`` the port is picked by the
system, and that line is how to find it. SIGTERM or Ctrl-C stops it, after the
requests in flight (see :meth:`MetadataHTTPServer.server_close`); queued parent/root
operations stay in the database's outbox and are written after a restart.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import secrets
import signal
import sqlite3
import sys
import textwrap
from types import FrameType

from examples.server.app import REQUEST_TIMEOUT, MetadataHTTPServer
from examples.server.service import MetadataService, ServiceConfig
from examples.server.storage import SQLiteStorage
from metaops import InvalidLimitError, metadata_limit
from metaops.server import RetryPolicy

TOKEN_ENV = "METAOPS_SERVER_TOKEN"


_DESCRIPTION = """\
Serve run metadata over HTTP, stored in SQLite: GET and PUT
/api/v1/runs/{runId}/metadata as the platform answers them, and the /admin routes."""

_EPILOG = f"""\
The token is --token, else ${TOKEN_ENV}, else a random one (printed).
The first line on stdout says where the server listens, e.g.
  listening on http://127.0.0.1:8030
with --port 0 the system picks the port, and that line is how to find it.

SIGTERM or Ctrl-C stops the server: it stops listening, answers 503 to new
requests, and lets those in flight finish (10 s at most) before it closes the
database. Queued parent/root operations stay in the database's outbox and are
written after a restart. If the server cannot start
(the port is in use, the database cannot be opened), it prints one line saying
why and exits with status 2."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _split_lines(self, text: str, width: int) -> list[str]:
        # argparse would break "metaops-example.sqlite3" at its hyphen.
        return textwrap.wrap(text, width, break_on_hyphens=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.server",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--db",
        default="metaops-example.sqlite3",
        help="SQLite file, created if missing (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback only)"
    )
    parser.add_argument(
        "--port", type=int, default=8030, help="port; 0 for any free one (default: %(default)s)"
    )
    parser.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV}, else random)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="metadata size limit in bytes of JSON (default: $TASK_RUN_METADATA_MAXIMUM_SIZE, else 262144)",
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=0.1,
        help="seconds between background flushes of queued operations; 0 for none (default: %(default)s)",
    )
    parser.add_argument(
        "--no-inline-flush",
        action="store_true",
        help="leave queued operations to the background flusher instead of flushing before answering",
    )
    parser.add_argument(
        "--attempts", type=int, default=5, help="compare-and-swap attempts per update (default: %(default)s)"
    )
    parser.add_argument(
        "--synchronous",
        default="FULL",
        choices=["NORMAL", "FULL"],
        help="SQLite durability: FULL survives power loss, NORMAL a killed process (default: %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        help="seconds a quiet client may hold a connection before it is closed (default: %(default)g)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or Ctrl-C; 2 (with one line on stderr) if it cannot start."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    token = args.token or os.environ.get(TOKEN_ENV)
    generated = not token
    if not token:
        token = secrets.token_urlsafe(24)
    config = ServiceConfig(
        limit=args.limit,
        policy=RetryPolicy(attempts=args.attempts),
        flush_interval=args.flush_interval,
        inline_flush=not args.no_inline_flush,
    )
    # What can go wrong on a given machine (the file, the port) is told in one line, as a
    # command line tool would; a traceback here would only be about this function.
    try:
        storage = SQLiteStorage(args.db, synchronous=args.synchronous)
    except (sqlite3.Error, OSError, RuntimeError) as error:
        return _fail(f"cannot open the database {args.db}: {error}")
    try:
        service = MetadataService(storage, config)
    except (sqlite3.Error, ValueError) as error:
        storage.close()
        return _fail(f"cannot read the queued operations in {args.db}: {error}")
    try:
        server = MetadataHTTPServer(
            (args.host, args.port), service, token, request_timeout=args.request_timeout
        )
    except OSError as error:
        service.close()
        return _fail(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    service.start()
    print(f"listening on {server.url}", flush=True)
    if generated:
        print(f"token: {token}", flush=True)
    print(f"database: {os.path.abspath(args.db)}; {service.pending()} queued entries", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.close()
    return 0


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values that would fail later with a traceback; parser.error exits 2."""
    if not 0 <= args.port <= 65535:
        parser.error(f"--port: expected 0 to 65535, got {args.port}")
    if args.attempts < 1:
        parser.error(f"--attempts: expected at least 1, got {args.attempts}")
    if not 0 <= args.flush_interval < math.inf:
        parser.error(f"--flush-interval: expected seconds >= 0, got {args.flush_interval}")
    if not 0 < args.request_timeout < math.inf:
        parser.error(f"--request-timeout: expected seconds > 0, got {args.request_timeout}")
    try:
        metadata_limit(args.limit)  # without --limit, this reads TASK_RUN_METADATA_MAXIMUM_SIZE
    except InvalidLimitError as error:
        if args.limit is not None:
            parser.error(f"--limit: {error}")
        parser.exit(_fail(str(error)))


def _fail(message: str) -> int:
    print(f"python -m examples.server: error: {message}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
