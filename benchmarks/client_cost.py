"""What an update call costs through metaops.client, against RunMetadata alone, in one run.

    python -m benchmarks.client_cost                  # default: 11 repetitions of 50,000 calls
    python -m benchmarks.client_cost --reps 5 --calls 20000 --json out.json

Starts ``metaops serve`` in this process (uvicorn in a thread, a temporary SQLite
file, loopback), creates a run, and times ``increment("n")`` three ways, the
repetitions interleaved so that drift hits all three alike:

* ``RunMetadata.increment``: the buffer alone (validate, apply, track the size, queue);
* ``MetadataClient.increment``: the same through the client, while its flusher thread
  drains, collapses and sends the queue every ``--interval`` seconds (1 s, the
  reference's period) to the service: that work competes for the GIL and is counted;
* ``metadata.increment``: the ambient object, bound by ``with``, which looks the client
  up in a ContextVar on every call.

Each figure is the median over the repetitions of (elapsed / calls). The ratio is the
client's median over the buffer's; the target is at most 2x: the caller's thread
never waits on the network. After timing, the client is closed and the stored
counter must equal the calls made through it (a fast wrong client fails the run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from metaops import RunMetadata
from metaops.client import MetadataClient, metadata
from metaops.service import MetadataService, ServiceConfig, open_storage, running_server

TOKEN = "client-cost-token"


def _per_call(loop: Callable[[int], None], calls: int) -> float:
    start = time.perf_counter()
    loop(calls)
    return (time.perf_counter() - start) / calls


def _buffer_loop(calls: int) -> None:
    buffer = RunMetadata()
    increment = buffer.increment
    for _ in range(calls):
        increment("n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=11, help="repetitions of each loop (default 11)")
    parser.add_argument("--calls", type=int, default=50_000, help="calls per repetition (default 50,000)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="the client's flush_interval (default 1 s)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE, as JSON")
    options = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as directory:
        service = MetadataService(open_storage(f"sqlite:///{directory}/runs.sqlite3"), ServiceConfig())
        with running_server(service, TOKEN) as server:
            httpx.post(
                f"{server.url}/admin/runs",
                json={"id": "run_bench"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ).raise_for_status()
            client = MetadataClient(
                "run_bench", base_url=server.url, access_token=TOKEN, flush_interval=options.interval
            )

            def client_loop(calls: int) -> None:
                increment = client.increment
                for _ in range(calls):
                    increment("n")

            def ambient_loop(calls: int) -> None:
                increment = metadata.increment
                for _ in range(calls):
                    increment("n")

            loops = {
                "RunMetadata.increment": _buffer_loop,
                "MetadataClient.increment": client_loop,
                "metadata.increment (ambient)": ambient_loop,
            }
            samples: dict[str, list[float]] = {name: [] for name in loops}
            with client:
                for loop in loops.values():  # warm-up
                    loop(options.calls // 10)
                for _ in range(options.reps):
                    for name, loop in loops.items():
                        samples[name].append(_per_call(loop, options.calls))
            made = (options.calls // 10 + options.calls * options.reps) * 2
            stored = httpx.get(
                f"{server.url}/api/v1/runs/run_bench/metadata", headers={"Authorization": f"Bearer {TOKEN}"}
            ).json()["metadata"]["n"]
            requests = client._core.requests

    if stored != made:
        print(f"FAILED: the client made {made:,} increments, the service stored {stored:,}", file=sys.stderr)
        return 1
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians["RunMetadata.increment"]
    print(f"increment, {options.calls:,} calls x {options.reps} reps, flush_interval {options.interval:g} s")
    print(f"{'':30} {'median µs/call':>15} {'vs RunMetadata':>15} {'spread':>8}")
    for name, median in medians.items():
        values = samples[name]
        spread = (max(values) - min(values)) / median
        print(f"{name:30} {median * 1e6:15.3f} {median / base:14.2f}x {spread:8.0%}")
    print(f"stored {stored:,} = increments made through the client; {requests} requests")
    if options.json is not None:
        figures = {
            "calls": options.calls,
            "reps": options.reps,
            "interval": options.interval,
            "median_seconds": medians,
            "ratio": {name: median / base for name, median in medians.items()},
            "requests": requests,
        }
        options.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
