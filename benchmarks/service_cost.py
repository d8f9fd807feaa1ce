"""CPU per update in the service, against the size of the metadata: it should not grow.

    python -m benchmarks.service_cost            # ~20 s

An in-process :class:`metaops.service.MetadataService` on SQLite applies one increment at a
time to runs holding a few hundred bytes, ~20 KB and 250 KB of metadata (``state_256k.json``
and cuts of it), and for each size reports the process CPU time per update (the fsync
wait is not CPU, so the disk's noise stays out) and, for comparison, what re-reading and
re-writing the whole metadata as JSON costs (``json.loads`` of the stored text plus
``json_text`` of the result: the least a server that stores and answers the whole
metadata on every update spends). Medians of repetitions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._workloads import ensure_workloads
from metaops import json_size, json_text
from metaops.service import MetadataService, ServiceConfig, SQLiteStorage


def _state_of_size(state: dict[str, Any], target: int) -> dict[str, Any]:
    """``state`` with its rows cut until its JSON size is about ``target`` bytes."""
    rows = list(state["rows"])
    base = {**state, "rows": []}
    per_row = (json_size(state) - json_size(base)) / max(1, len(rows))
    keep = max(1, int((target - json_size(base)) / per_row))
    return {**state, "rows": rows[:keep], "logs": state["logs"][: max(1, keep // 10)]}


def _cpu_per_call(function: Any, repetitions: int, calls: int) -> float:
    """Median process CPU seconds per call over ``repetitions`` runs of ``calls`` calls."""
    samples = []
    for _ in range(repetitions):
        started = time.process_time()
        for _ in range(calls):
            function()
        samples.append((time.process_time() - started) / calls)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.service_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--calls", type=int, default=200, help="updates per repetition (default: %(default)s)"
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default: %(default)s)")
    args = parser.parse_args(argv)
    state = json.loads((ensure_workloads() / "state_256k.json").read_text(encoding="utf-8"))
    print("| metadata bytes | service CPU µs/update | whole-JSON round trip µs | ratio |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="metaops-cost-") as directory:
        service = MetadataService(
            SQLiteStorage(Path(directory) / "runs.sqlite3"), ServiceConfig(flush_interval=0)
        )
        for target in (2_500, 25_000, 250_000):
            metadata = _state_of_size(state, target) if target < 250_000 else state
            run_id = f"run_{target}"
            service.create_run(run_id, metadata=metadata)
            body = {"operations": [{"type": "increment", "key": "$.counters.c1", "value": 1}]}
            update = _cpu_per_call(
                lambda run_id=run_id, body=body: service.update(run_id, body), args.reps, args.calls
            )
            text = json_text(metadata)
            round_trip = _cpu_per_call(
                lambda text=text: json_text(json.loads(text)), args.reps, max(10, args.calls // 10)
            )
            print(
                f"| {json_size(metadata):,} | {update * 1e6:,.0f} | {round_trip * 1e6:,.0f} | "
                f"{round_trip / update:.1f} |"
            )
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
