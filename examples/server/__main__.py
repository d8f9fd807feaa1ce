"""``python -m examples.server``: serve run metadata on 127.0.0.1.

The token comes from ``--token``, else ``$METAOPS_SERVER_TOKEN``, else a random one
(printed). The first line on stdout says where it listens, e.g.
``listening on http://127.0.0.1:8030``; with ``--port 0`` the port is picked by the
system, and that line is how to find it. SIGTERM or Ctrl-C stops it; queued
parent/root operations stay in the database's outbox and are written after a restart.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from types import FrameType

from examples.server.app import REQUEST_TIMEOUT, MetadataHTTPServer
from examples.server.service import MetadataService, ServiceConfig
from examples.server.storage import SQLiteStorage
from metaops.server import RetryPolicy

TOKEN_ENV = "METAOPS_SERVER_TOKEN"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.server", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="metaops-example.sqlite3", help="SQLite file (created if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8030, help="port (0: any free one)")
    parser.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV}, else random)")
    parser.add_argument("--limit", type=int, default=None, help="metadata size limit in bytes")
    parser.add_argument(
        "--flush-interval", type=float, default=0.1, help="seconds between background flushes (0: never)"
    )
    parser.add_argument(
        "--no-inline-flush", action="store_true", help="leave queued operations to the background flusher"
    )
    parser.add_argument("--attempts", type=int, default=5, help="compare-and-swap attempts per update")
    parser.add_argument(
        "--synchronous", default="FULL", choices=["NORMAL", "FULL"], help="SQLite durability (default FULL)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        help=f"seconds a client may keep the server waiting before it hangs up (default {REQUEST_TIMEOUT:g})",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or Ctrl-C."""
    args = _parser().parse_args(argv)
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
    service = MetadataService(SQLiteStorage(args.db, synchronous=args.synchronous), config)
    server = MetadataHTTPServer((args.host, args.port), service, token, request_timeout=args.request_timeout)

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


if __name__ == "__main__":
    sys.exit(main())
