"""``metaops token RUN_ID ...``: mint a read-only public access token, offline, with the server's secret."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn
from urllib.parse import quote

from metaops._errors import InvalidArgumentError
from metaops.service._auth import (
    DEFAULT_EXPIRATION,
    TOKEN_ENV,
    mint_public_token,
    quiet_key_length_warnings,
    weak_secret,
)

__all__ = ["main"]

URL_ENV = "TRIGGER_API_URL"
DEFAULT_BASE = "http://127.0.0.1:8030"

_DESCRIPTION = """\
Print a public access token that reads the given runs (their metadata, Realtime
and streams) and nothing else, never writes, and expires: a JWT signed (HS256)
with the server's secret token, the same kind the official SDK's
auth.createPublicToken() makes. Give it to a browser or any reader that must not
hold the secret. Nothing is sent anywhere: the token is signed here."""

_EPILOG = f"""\
The secret is --token, else ${TOKEN_ENV} (what `metaops serve` uses).
Example:
  metaops token run_1234 --expires 1h
  metaops token run_1234 --url http://127.0.0.1:8030     # the run's dashboard page
  curl -H "Authorization: Bearer $(metaops token run_1234)" \\
       http://127.0.0.1:8030/api/v1/runs/run_1234/metadata

exit status:
  0    printed
  2    bad input: a wrong command line, no secret, a duration that cannot be read;
       one line on standard error says what"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as for every other bad input; --help has the usage.
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="metaops token",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_ID", help="the runs the token reads")
    parser.add_argument(
        "--all-runs", action="store_true", help="read every run (scope read:runs) instead of the RUN_IDs"
    )
    parser.add_argument(
        "--expires",
        default=DEFAULT_EXPIRATION,
        metavar="DURATION",
        help="how long it lives: 90s, 15m, 1h, 2 days, ... (default: %(default)s)",
    )
    parser.add_argument("--token", default=None, help=f"the server's secret (default: ${TOKEN_ENV})")
    parser.add_argument(
        "--url",
        nargs="?",
        const="",
        default=None,
        metavar="BASE",
        help="print the run's dashboard page with the token in it instead "
        f"(BASE: the server, default ${URL_ENV}, else {DEFAULT_BASE}); one RUN_ID",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``metaops token`` with ``argv``; the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (already reported)
        return done.code if isinstance(done.code, int) else 2
    secret = args.token or os.environ.get(TOKEN_ENV) or ""
    if not secret:
        sys.stderr.write(f"metaops token: no secret: pass --token or set ${TOKEN_ENV}\n")
        return 2
    if bool(args.runs) == args.all_runs:
        sys.stderr.write("metaops token: give RUN_IDs or --all-runs (one of them)\n")
        return 2
    if args.url is not None and len(args.runs) != 1:
        sys.stderr.write("metaops token: --url shows one run's page: give exactly one RUN_ID\n")
        return 2
    weakness = weak_secret(secret)
    if weakness is not None:
        sys.stderr.write(f"metaops token: warning: the secret: {weakness}\n")
    quiet_key_length_warnings()  # said once, above
    try:
        if args.all_runs:
            token = mint_public_token(secret, scopes=["read:runs"], expiration=args.expires)
        else:
            token = mint_public_token(secret, args.runs, expiration=args.expires)
    except InvalidArgumentError as error:
        sys.stderr.write(f"metaops token: {error}\n")
        return 2
    if args.url is not None:
        base = (args.url or os.environ.get(URL_ENV) or DEFAULT_BASE).rstrip("/")
        # The dashboard page reads its token from the query (a browser's navigation cannot
        # send a header); the token only reads this run, and expires.
        print(f"{base}/runs/{quote(args.runs[0], safe='')}?token={token}")
        return 0
    print(token)
    return 0
