"""RunMetadata benchmarks: the SDK loop through the documented methods, with size tracking on.

Run with ``python -m pytest benchmarks/test_bench_buffer.py --benchmark-enable -p no:cacheprovider``.

The SDK loop mirrors the reference's timed loop (``tests/node/bench.cjs``,
``sdk_enqueue_10k_on_64k_ms``): a buffer starts from ``state_64k``, each operation of
``sdk_10k`` arrives as the matching method call (``set``/``increment``/``append``/
``remove``), and the queue is flushed: here ``drain()`` (collapse and split into
request bodies) and the bodies' JSON text (the reference ends with
``JSON.stringify({operations: collapseOperations(queue)})``). Every call validates
its value, applies it locally, checks the limit against the tracked size, and
queues it. The ratio is the reference's median over this one, measured in the
same run (``python -m benchmarks.compare_reference`` or ``node tests/node/bench.cjs``).

Each benchmark checks its result once after timing, so a fast wrong answer fails.
"""

from __future__ import annotations

import json

from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks import _cases
from benchmarks._cases import Workloads
from metaops import Flush, Operation, RunMetadata, apply, json_equal, json_size, parse_operations


def test_sdk_loop_10k_on_64k(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """The flush rebuilds the metadata from state_64k; the size is tracked; unapplied calls are reported."""
    state = workloads.state_64k
    run = benchmark(_cases.buffer_sdk_loop, state, workloads.sdk_10k_calls)
    current = run.buffer.current().to_dict()
    assert run.buffer.size == json_size(current)
    sent = parse_operations(op for text in run.texts for op in json.loads(text)["operations"])
    assert json_equal(apply(state, sent).metadata, current)
    replayed = state
    unapplied: list[Operation] = []
    for op in workloads.sdk_10k:
        result = apply(replayed, op)
        replayed = result.metadata
        unapplied.extend(result.unapplied)
    assert json_equal(replayed, current)
    assert list(run.flush.unapplied) == unapplied


def test_sdk_loop_parent_updates_10k(benchmark: BenchmarkFixture) -> None:
    """A child run's 10,000 parent/root updates (the CSV example) are queued and drained."""

    def loop() -> Flush:
        md = RunMetadata({"row": 1}, is_root=False)
        parent = md.parent
        for i in range(5_000):
            parent.increment("processedRows", 1).append("rowRuns", f"run_{i:08d}")
        return md.drain()

    flush = benchmark(loop)
    assert apply({}, flush.parent_operations).metadata == {
        "processedRows": 5_000,
        "rowRuns": [f"run_{i:08d}" for i in range(5_000)],
    }


def test_accept_64k_with_calls_in_flight(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """Adopting the server's 64 KB answer (copied, measured once) under 100 calls made meanwhile."""
    state = workloads.state_64k
    calls = workloads.sdk_10k_calls[:100]

    def flight() -> RunMetadata:
        md = RunMetadata(state)
        md.set("status", "flushing")
        flush = md.drain()
        for method, key, value in calls:
            method(md, key, value)
        md.accept(flush, state)
        return md

    md = benchmark(flight)
    assert md.size == json_size(md.current().to_dict())
    expected = state
    for op in workloads.sdk_10k[:100]:
        expected = apply(expected, op).metadata
    assert json_equal(md.current().to_dict(), expected)
