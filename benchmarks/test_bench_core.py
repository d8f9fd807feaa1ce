"""Core benchmarks: apply one operation, the SDK loop, a server batch, and the JSON size.

Run with ``python -m pytest benchmarks --benchmark-enable -p no:cacheprovider``.
Each benchmark checks its result once after timing, so a fast wrong answer fails.
"""

from __future__ import annotations

import json
from typing import Any

from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks import _cases
from benchmarks._cases import Workloads
from metaops import JSON, Operation, apply, json_equal, parse_operations


def _applied_one_by_one(
    state: dict[str, JSON], ops: tuple[Operation, ...]
) -> tuple[dict[str, JSON], list[Operation]]:
    unapplied: list[Operation] = []
    for op in ops:
        result = apply(state, op)
        unapplied.extend(result.unapplied)
        state = result.metadata
    return state, unapplied


def _with_js_numbers(value: Any) -> Any:
    """``value`` with integral floats as ints: JavaScript writes ``0.0`` as ``0``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_with_js_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: _with_js_numbers(item) for key, item in value.items()}
    return value


def test_apply_single_op_on_256k(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """One increment on the 256 KB state creates the key and shares every untouched subtree."""
    state = workloads.state_256k
    result = benchmark(_cases.apply_single_op, state)
    assert "c1" not in state
    assert result.metadata["c1"] == 1
    assert not result.unapplied
    assert all(result.metadata[key] is value for key, value in state.items())


def test_sdk_loop_10k_on_64k(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """The SDK loop keeps exactly the changes: its queue, and its flush body, rebuild its store."""
    run = benchmark(_cases.sdk_loop, workloads.state_64k, workloads.sdk_10k)
    assert json_equal(apply(workloads.state_64k, run.queued).metadata, run.store)
    flushed = parse_operations(json.loads(run.body)["operations"])
    assert json_equal(apply(workloads.state_64k, flushed).metadata, run.store)


def test_sdk_loop_from_wire_10k_on_64k(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """Building each operation inside the loop ends in the same store and queue."""
    run = benchmark(_cases.sdk_loop_from_wire, workloads.state_64k, workloads.sdk_10k_wire)
    expected = _cases.sdk_loop(workloads.state_64k, workloads.sdk_10k)
    assert run.queued == expected.queued
    assert json_equal(run.store, expected.store)


def test_apply_batch_1k_on_256k(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """One call with 1,000 operations equals applying them one at a time."""
    result = benchmark(_cases.apply_batch, workloads.state_256k, workloads.batch_1k)
    store, unapplied = _applied_one_by_one(workloads.state_256k, workloads.batch_1k)
    assert json_equal(result.metadata, store)
    assert list(result.unapplied) == unapplied


def test_json_size_256k(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """The size is the UTF-8 length of the compact JSON, with numbers written as JavaScript does."""
    state = workloads.state_256k
    size = benchmark(_cases.size, state)
    text = json.dumps(_with_js_numbers(state), ensure_ascii=False, separators=(",", ":"))
    assert size == len(text.encode("utf-8"))
