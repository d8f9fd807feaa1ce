"""Load test of ``metaops serve``: updates to runs holding 250 KB of metadata, over loopback.

    python -m benchmarks.load_server                       # every scenario, SQLite in a temp dir
    python -m benchmarks.load_server --database postgresql://postgres@127.0.0.1:5432/bench --workers 4
    python -m benchmarks.load_server --requests 2000 --seconds 10 --json out.json

Starts ``python -m metaops serve`` on 127.0.0.1 (ephemeral port; a temporary SQLite
database unless ``--database`` names one), creates runs holding the project's
~250 KB workload state (``state_256k.json``), and sends ``PUT
/api/v1/runs/{runId}/metadata`` bodies. Each scenario stops at ``--requests``
requests or ``--seconds`` seconds, whichever comes first, and prints updates per
second and latency percentiles (nearest rank). After each scenario the stored
counters are checked against the acknowledged requests: a fast wrong server fails
the run. The client reads each answer (the run's 250 KB of metadata) but parses it
only when it is not a 200, so that the figures are the server's.

Scenarios:

* ``one increment``: one client, one run, one ``increment`` per PUT: the cost of an update.
* ``sequential``: one client, one run, bodies shaped like the SDK's flush (counter
  increments, progress and status sets, a log line appended and an older one removed).
* ``same-run xN``: N clients racing on one run (flush bodies).
* ``own-runs xN``: N clients, each on its own 250 KB run.
* ``children x2N``: 2N child runs sending ``parentOperations`` to one 250 KB parent.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks._workloads import ensure_workloads
from metaops import json_size
from tests._serve import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "load-test-token"
_HEADER = "| scenario | clients | requests | s | updates/s | p50 ms | p90 ms | p99 ms | max ms | writes |"
SETTLE_SECONDS = 2.0
HISTORY = 8  # log lines each client keeps: appended, then removed this many flushes later


@dataclass(frozen=True)
class Result:
    """One scenario's figures."""

    scenario: str
    clients: int
    requests: int
    seconds: float
    updates_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    writes: int


class _Client:
    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.last_used = time.monotonic()

    def call(self, method: str, path: str, body: object = None, *, parse: bool = True) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        if time.monotonic() - self.last_used > 3:
            self.connection.close()  # the server closes connections idle for 5 s: do not race it
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        payload = response.read()
        self.last_used = time.monotonic()
        if parse or response.status != 200:
            return response.status, json.loads(payload)
        return response.status, None

    def close(self) -> None:
        self.connection.close()


def _flush_ops(client: int, step: int, rows: int) -> list[dict[str, Any]]:
    return [
        {"type": "increment", "key": f"$.counters.c{step % 20}", "value": 1},
        {"type": "set", "key": "progress", "value": round(step / 1000, 4)},
        {"type": "set", "key": "status", "value": "processing"},
        {"type": "append", "key": "logs", "value": f"client {client} flush {step}"},
        {"type": "remove", "key": "logs", "value": f"client {client} flush {step - HISTORY}"},
        {"type": "set", "key": f"$.rows.{(step * 7) % rows}.ok", "value": step % 2 == 0},
    ]


def _percentile(sorted_ms: list[float], fraction: float) -> float:
    if not sorted_ms:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_ms) + 0.5))  # nearest rank
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def _run(
    port: int,
    name: str,
    targets: list[str],
    body_for: Callable[[int, int], dict[str, Any]],
    max_requests: int,
    max_seconds: float,
) -> tuple[list[float], float, list[int]]:
    """Each target gets one client thread; returns latencies, elapsed seconds, acks per client."""
    latencies: list[float] = []
    acks = [0] * len(targets)
    lock = threading.Lock()
    issued = [0]
    deadline = time.perf_counter() + max_seconds
    errors: list[str] = []

    def worker(index: int) -> None:
        client = _Client(port)
        step = 0
        while time.perf_counter() < deadline:
            with lock:
                if issued[0] >= max_requests:
                    break
                issued[0] += 1
            body = body_for(index, step)
            started = time.perf_counter()
            status, payload = client.call("PUT", f"/api/v1/runs/{targets[index]}/metadata", body, parse=False)
            elapsed = time.perf_counter() - started
            if status != 200:
                errors.append(f"{name}: {status} {payload}")
                break
            with lock:
                latencies.append(elapsed * 1000)
            acks[index] += 1
            step += 1
        client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(targets))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    return latencies, elapsed, acks


def _counter_sum(client: _Client, run_id: str) -> int:
    status, payload = client.call("GET", f"/api/v1/runs/{run_id}/metadata")
    assert status == 200, payload
    counters: dict[str, int] = payload["metadata"]["counters"]
    return sum(counters.values()) + int(payload["metadata"].get("increments", 0))


def _version(client: _Client, run_id: str) -> int:
    status, payload = client.call("GET", f"/admin/runs/{run_id}")
    assert status == 200, payload
    version: int = payload["version"]
    return version


def run_scenarios(
    database: str,
    state: dict[str, Any],
    *,
    workers: int = 1,
    clients: int,
    max_requests: int,
    max_seconds: float,
) -> list[Result]:
    """Start ``metaops serve`` on ``database`` with ``workers`` processes, run every scenario against
    it, stop it."""
    rows = len(state["rows"])
    results: list[Result] = []
    server = ServeProcess(database, "--workers", str(workers), token=TOKEN)
    admin = _Client(server.port)
    try:
        prefix = f"run_load_{os.getpid()}_{time.monotonic_ns()}"
        serial = 0

        def make_run(parent: str | None = None, metadata: dict[str, Any] | None = None) -> str:
            nonlocal serial
            serial += 1
            spec: dict[str, Any] = {
                "id": f"{prefix}_{serial}",
                "metadata": state if metadata is None else metadata,
            }
            if parent:
                spec["parentId"] = parent
            status, payload = admin.call("POST", "/admin/runs", spec)
            assert status == 201, payload
            return spec["id"]  # type: ignore[no-any-return]

        def increment(index: int, step: int) -> dict[str, Any]:
            return {"operations": [{"type": "increment", "key": "increments", "value": 1}]}

        def own(index: int, step: int) -> dict[str, Any]:
            return {"operations": _flush_ops(index, step, rows)}

        def as_child(index: int, step: int) -> dict[str, Any]:
            return {
                "operations": [{"type": "increment", "key": "flushes", "value": 1}],
                "parentOperations": _flush_ops(index, step, rows),
            }

        plans: list[tuple[str, list[str], Callable[[int, int], dict[str, Any]], list[str]]] = []
        single = make_run()
        plans.append(("one increment", [single], increment, [single]))
        one = make_run()
        plans.append(("sequential", [one], own, [one]))
        shared = make_run()
        plans.append((f"same-run x{clients}", [shared] * clients, own, [shared]))
        separate = [make_run() for _ in range(clients)]
        plans.append((f"own-runs x{clients}", separate, own, separate))
        parent = make_run()
        children = [make_run(parent, {}) for _ in range(clients * 2)]
        plans.append((f"children x{len(children)}", children, as_child, [parent]))

        # The runs were just written (4 MB of snapshots): let the server put them away first.
        time.sleep(SETTLE_SECONDS)
        for name, targets, body_for, checked in plans:
            before = sum(_version(admin, run) for run in checked)
            stored_before = sum(_counter_sum(admin, run) for run in checked)
            latencies, elapsed, acks = _run(server.port, name, targets, body_for, max_requests, max_seconds)
            status, payload = admin.call("POST", "/admin/flush", {"timeout": 60})
            assert (status, payload) == (200, {"pending": 0}), payload
            stored = sum(_counter_sum(admin, run) for run in checked) - stored_before
            if stored != sum(acks):
                msg = f"{name}: {sum(acks)} updates acknowledged but the counters grew by {stored}"
                raise RuntimeError(msg)
            writes = sum(_version(admin, run) for run in checked) - before
            ordered = sorted(latencies)
            results.append(
                Result(
                    scenario=name,
                    clients=len(targets),
                    requests=len(latencies),
                    seconds=round(elapsed, 3),
                    updates_per_second=round(len(latencies) / elapsed, 1),
                    p50_ms=round(_percentile(ordered, 0.50), 2),
                    p90_ms=round(_percentile(ordered, 0.90), 2),
                    p99_ms=round(_percentile(ordered, 0.99), 2),
                    max_ms=round(ordered[-1], 2) if ordered else float("nan"),
                    writes=writes,
                )
            )
    finally:
        admin.close()
        server.stop()
    return results


_DESCRIPTION = """\
Load test of metaops serve over loopback: PUT bodies against runs holding about
256 KB of metadata. Prints updates per second and latency percentiles per
scenario, as a Markdown table."""

_EPILOG = """\
Scenarios, each bounded by --requests and --seconds (whichever comes first):
  one increment   one client, one run, one increment per PUT: the cost of an update
  sequential      one client, one run, SDK-like flush bodies (6 operations)
  same-run xN     N clients racing on one run
  own-runs xN     N clients, each on its own run
  children x2N    2N child runs sending parentOperations to one parent

The server runs as a subprocess on an ephemeral port, on a temporary SQLite
database unless --database names one (which must be empty of runs named like the
benchmark's, e.g. a fresh PostgreSQL database). After each scenario the stored
counters are checked against the acknowledged requests; a mismatch fails the run."""


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print a markdown table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load_server",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests per scenario at most (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="seconds of requests per scenario at most (default: %(default)g)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=4,
        help="concurrent clients; the children scenario uses twice as many (default: %(default)s)",
    )
    parser.add_argument(
        "--database", metavar="URL", help="the server's database (default: SQLite in a temp dir)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="the server's processes (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE, as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 0 < args.seconds <= 600 or not 1 <= args.clients <= 64:
        parser.error("bounds: --requests 1 to 100000, --seconds over 0 up to 600, --clients 1 to 64")
    state = json.loads((ensure_workloads() / "state_256k.json").read_text(encoding="utf-8"))
    size = json_size(state)
    machine = f"metadata {size:,} bytes of JSON; loopback; {os.cpu_count()} cores"
    runs: list[tuple[str, list[Result]]] = []
    with tempfile.TemporaryDirectory(prefix="metaops-load-") as directory:
        database = args.database or f"sqlite:///{Path(directory) / 'runs.sqlite3'}"
        label = f"metaops serve, {database.partition(':')[0]}, {args.workers} worker(s)"
        results = run_scenarios(
            database,
            state,
            workers=args.workers,
            clients=args.clients,
            max_requests=args.requests,
            max_seconds=args.seconds,
        )
        runs.append((label, results))
        print(f"{label}; {machine}")
        print()
        print(_HEADER)
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r.scenario} | {r.clients} | {r.requests} | {r.seconds} | {r.updates_per_second} | "
                f"{r.p50_ms} | {r.p90_ms} | {r.p99_ms} | {r.max_ms} | {r.writes} |"
            )
        print()
    for label, results in runs:
        same = next(r for r in results if r.scenario.startswith("same-run"))
        print(f"{label}: {same.scenario} p99/p50 = {same.p99_ms / same.p50_ms:.1f}")
    if args.json:
        payload = {
            "machine": machine,
            "runs": [{"server": label, "results": [asdict(r) for r in results]} for label, results in runs],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
