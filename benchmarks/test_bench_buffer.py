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
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from metaops import JSON, Operation, apply, json_equal, json_size, parse_operations
from metaops.buffer import Flush, RunMetadata

# Where the shared workloads live when the project's generator is not available.
SHARED_BENCH = Path(os.environ.get("METAOPS_SHARED_BENCH", "/work/shared/bench"))

Call = tuple[Callable[..., object], str, Any]


def _load() -> tuple[dict[str, JSON], list[dict[str, Any]]]:
    """``state_64k`` and the wire operations of ``sdk_10k``, from the verified cache if possible."""
    try:
        from benchmarks._workloads import ensure_workloads
    except ImportError:
        directory = SHARED_BENCH
        if not (directory / "sdk_10k.json").is_file():
            pytest.skip(
                f"no workloads: benchmarks/_workloads.py is absent and {directory} has no sdk_10k.json "
                "(set METAOPS_SHARED_BENCH to the shared bench directory)"
            )
    else:
        directory = ensure_workloads()
    with (directory / "state_64k.json").open(encoding="utf-8") as f:
        state: dict[str, JSON] = json.load(f)
    with (directory / "sdk_10k.json").open(encoding="utf-8") as f:
        wire: list[dict[str, Any]] = json.load(f)
    return state, wire


@pytest.fixture(scope="module")
def sdk_workload() -> tuple[dict[str, JSON], list[dict[str, Any]]]:
    """The SDK loop's starting metadata and its 10,000 calls, loaded outside any timing."""
    return _load()


def _calls(wire: list[dict[str, Any]]) -> list[Call]:
    """Each wire operation as (unbound method, key, value), built before the timing."""
    methods: dict[str, Callable[..., object]] = {
        "set": RunMetadata.set,
        "increment": RunMetadata.increment,
        "append": RunMetadata.append,
        "remove": RunMetadata.remove,
    }
    return [(methods[op["type"]], op["key"], op["value"]) for op in wire]


def sdk_loop(state: dict[str, JSON], calls: list[Call]) -> tuple[RunMetadata, Flush, tuple[str, ...]]:
    """A run from ``state`` makes every call, then drains and serializes its flush."""
    md = RunMetadata(state)
    for method, key, value in calls:
        method(md, key, value)
    flush = md.drain()
    return md, flush, flush.texts()


def test_sdk_loop_10k_on_64k(
    benchmark: BenchmarkFixture, sdk_workload: tuple[dict[str, JSON], list[dict[str, Any]]]
) -> None:
    """The flush rebuilds the metadata from state_64k; the size is tracked; unapplied calls are reported."""
    state, wire = sdk_workload
    calls = _calls(wire)
    md, flush, texts = benchmark(sdk_loop, state, calls)
    current = md.current().to_dict()
    assert md.size == json_size(current)
    sent = parse_operations(op for text in texts for op in json.loads(text)["operations"])
    assert json_equal(apply(state, sent).metadata, current)
    replayed = state
    unapplied: list[Operation] = []
    for op in parse_operations(wire):
        result = apply(replayed, op)
        replayed = result.metadata
        unapplied.extend(result.unapplied)
    assert json_equal(replayed, current)
    assert list(flush.unapplied) == unapplied


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


def test_accept_64k_with_calls_in_flight(
    benchmark: BenchmarkFixture, sdk_workload: tuple[dict[str, JSON], list[dict[str, Any]]]
) -> None:
    """Adopting the server's 64 KB answer (copied, measured once) under 100 calls made meanwhile."""
    state, wire = sdk_workload
    calls = _calls(wire[:100])

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
    for op in parse_operations(wire[:100]):
        expected = apply(expected, op).metadata
    assert json_equal(md.current().to_dict(), expected)
