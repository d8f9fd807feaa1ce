"""Every operation costs time linear in its key: keys of 1,000 and 32,000 path segments.

A key of 32,000 segments (64 KB) once took collapse, compose and a RunMetadata drain
time that grew with the square of its length (0.8 s for a 16 KB key; a 48 KB key in
one request stalled a server for 10 s). The cases are ``benchmarks/path_length.py``'s,
which prints the measured ratios; here only a ratio is checked, and a generous one:
linear cost gives about 32, quadratic about 1,000, and the bound is 32 * 4. No
absolute time is asserted.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator

import pytest

from benchmarks.path_length import CASES, LINEAR_RATIO, LONG, SHORT
from metaops import Set, apply, collapse, compose

BOUND = LINEAR_RATIO * 4


@pytest.fixture(autouse=True)
def _no_collector_pauses() -> Iterator[None]:
    # As timeit does: a collection of the whole test process's heap, landing in one
    # timing and not the other, would measure the heap rather than the operation.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _best(run: Callable[[], object], times: int) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("name", list(CASES))
def test_cost_grows_linearly_with_the_key(name: str) -> None:
    """32,000 segments cost far less than (32,000 / 1,000)**2 times what 1,000 do."""
    case = CASES[name]
    short = _best(case(SHORT), 5)
    long = _best(case(LONG), 2)
    assert long / short < BOUND, f"{name}: {LONG:,} segments took {long / short:.0f}x {SHORT:,}"


def test_a_24000_segment_key_collapses_and_composes() -> None:
    """The key that stalled a server collapses as a short one does."""
    key = "$." + ".".join(["a"] * 24_000)
    ops = [Set(key, 1), Set(f"{key}.b", 2), Set(key, 3), Set(key, 4)]
    # The write below the path ends the first set's chain; the last two merge.
    expected = (Set(key, 1), Set(f"{key}.b", 2), Set(key, 4))
    assert collapse(ops) == expected
    assert compose(collapse(ops[:2]), ops[2:]) == expected
    assert apply({}, ops).metadata == {}
