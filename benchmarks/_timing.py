"""A small wall-clock timer: warm-ups, then the median of several repetitions.

Calls faster than ``min_rep_seconds`` are looped inside one repetition (as
``timeit`` does) so that the clock's resolution and the loop's own overhead do not
count; the result is always seconds per call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Seconds per call of each repetition, and how many calls one repetition made."""

    per_call: tuple[float, ...]
    calls_per_rep: int

    @property
    def median(self) -> float:
        """The median seconds per call."""
        return statistics.median(self.per_call)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repetitions were."""
        return (max(self.per_call) - min(self.per_call)) / self.median


def _calls_per_rep(fn: Callable[[], object], min_rep_seconds: float) -> int:
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start >= min_rep_seconds:
            return calls
        calls *= 2 if calls < 8 else 10


def measure(fn: Callable[[], object], *, reps: int, warmup: int = 1, min_rep_seconds: float = 0.02) -> Timing:
    """Time ``fn`` after ``warmup`` repetitions; ``reps`` repetitions are kept."""
    if reps < 1:
        msg = f"measure: reps must be at least 1, got {reps}"
        raise ValueError(msg)
    calls = _calls_per_rep(fn, min_rep_seconds)
    samples = []
    for index in range(warmup + reps):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        elapsed = time.perf_counter() - start
        if index >= warmup:
            samples.append(elapsed / calls)
    return Timing(tuple(samples), calls)
