"""The load test of ``metaops serve`` on PostgreSQL with 1 and 4 workers, beside SQLite, in one run.

    python -m benchmarks.load_postgres                         # default bounds
    python -m benchmarks.load_postgres --requests 1000 --seconds 10 --json out.json

Starts a throwaway PostgreSQL cluster with its default durability (``fsync`` on,
``synchronous_commit=on``; tests/_postgres.py), and runs the scenarios of
:mod:`benchmarks.load_server` (one increment, sequential, same run ×N, own runs ×N,
children ×2N, on runs holding ~250 KB of metadata) against ``metaops serve
--database postgresql://... --workers W`` for each ``W`` of ``--workers`` (a fresh
database each), then against SQLite (one worker) for comparison. Prints one Markdown
table, with the machine's core count: the server, its workers, PostgreSQL and the
load generator all share those cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks._workloads import ensure_workloads
from benchmarks.load_server import Result, run_scenarios
from metaops import json_size
from tests._postgres import PostgresCluster, PostgresUnavailableError


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios on PostgreSQL (each worker count) and SQLite; print a Markdown table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load_postgres", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per scenario at most (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="seconds per scenario at most (default: %(default)g)"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 4],
        help="worker counts to run on PostgreSQL (default: 1 4)",
    )
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite comparison")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE, as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 0 < args.seconds <= 600 or not 1 <= args.clients <= 64:
        parser.error("bounds: --requests 1 to 100000, --seconds over 0 up to 600, --clients 1 to 64")
    if not all(1 <= workers <= 32 for workers in args.workers):
        parser.error("--workers: each from 1 to 32")
    state = json.loads((ensure_workloads() / "state_256k.json").read_text(encoding="utf-8"))
    bounds = {"clients": args.clients, "max_requests": args.requests, "max_seconds": args.seconds}
    runs: list[tuple[str, int, list[Result]]] = []
    try:
        cluster = PostgresCluster.start(durable=True)
    except PostgresUnavailableError as error:
        print(f"PostgreSQL cannot start here: {error}", file=sys.stderr)
        return 2
    with cluster:
        for workers in args.workers:
            url = cluster.create_database(f"bench_{workers}_workers")
            runs.append(("postgresql", workers, run_scenarios(url, state, workers=workers, **bounds)))
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory(prefix="metaops-load-") as directory:
            database = f"sqlite:///{Path(directory) / 'runs.sqlite3'}"
            runs.append(("sqlite", 1, run_scenarios(database, state, **bounds)))
    size = json_size(state)
    print(
        f"metaops serve; metadata {size:,} bytes of JSON; loopback; {os.cpu_count()} cores ({_cpu_model()}) "
        "shared by the server, PostgreSQL and the load generator; PostgreSQL with its default durability"
    )
    print()
    print("| database | workers | scenario | clients | requests | updates/s | p50 ms | p99 ms | max ms |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for database, workers, results in runs:
        for r in results:
            print(
                f"| {database} | {workers} | {r.scenario} | {r.clients} | {r.requests} | "
                f"{r.updates_per_second} | {r.p50_ms} | {r.p99_ms} | {r.max_ms} |"
            )
    if args.json:
        payload = {
            "metadata_bytes": size,
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "runs": [
                {"database": database, "workers": workers, "results": [asdict(r) for r in results]}
                for database, workers, results in runs
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
