"""Reducer benchmarks: collapse of a queued batch, and compose of arriving batches.

The collapsed lengths are recorded in each benchmark's ``extra_info`` (the targets,
a third of the reference's count, are checked by ``compare_reference``).
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks import _cases
from benchmarks._cases import Workloads
from metaops import JSON, Operation, apply, json_equal


def _same_effect(state: dict[str, JSON], shorter: tuple[Operation, ...], ops: tuple[Operation, ...]) -> bool:
    return json_equal(apply(state, shorter).metadata, apply(state, ops).metadata)


@pytest.mark.benchmark(min_rounds=7, max_time=0.5, warmup=True, warmup_iterations=1)
def test_collapse_100k(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """Collapsing 100,000 queued operations keeps their effect and never lengthens the batch."""
    ops = workloads.collapse_100k
    collapsed = benchmark(_cases.collapse_all, ops)
    benchmark.extra_info["input_length"] = len(ops)
    benchmark.extra_info["collapsed_length"] = len(collapsed)
    assert len(collapsed) <= len(ops)
    assert _same_effect(workloads.state_64k, collapsed, ops)


def test_collapse_sdk_10k(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """Collapsing the SDK's 10,000 calls keeps their effect and never lengthens the batch."""
    ops = workloads.sdk_10k
    collapsed = benchmark(_cases.collapse_all, ops)
    benchmark.extra_info["input_length"] = len(ops)
    benchmark.extra_info["collapsed_length"] = len(collapsed)
    assert len(collapsed) <= len(ops)
    assert _same_effect(workloads.state_64k, collapsed, ops)


@pytest.mark.benchmark(min_rounds=5, max_time=0.5, warmup=True, warmup_iterations=1)
def test_compose_1k_batches_of_100(benchmark: BenchmarkFixture, workloads: Workloads) -> None:
    """Folding 1,000 arriving batches with compose gives what one collapse of them all gives."""
    buffer = benchmark(_cases.compose_fold, workloads.arriving)
    benchmark.extra_info["batches"] = len(workloads.arriving)
    benchmark.extra_info["collapsed_length"] = len(buffer)
    assert buffer == _cases.collapse_all(workloads.collapse_100k)
