"""Fixtures of the benchmark suites: the shared workloads, generated, verified and parsed once."""

from __future__ import annotations

import pytest

from benchmarks._cases import Workloads, load_workloads


@pytest.fixture(scope="session")
def workloads() -> Workloads:
    """Every workload, loaded and parsed outside any timing."""
    return load_workloads()
