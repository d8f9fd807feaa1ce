"""Cost against a key's length: every operation takes time linear in its key.

usage: python -m benchmarks.path_length [--reps N]

Times ``apply``, ``collapse``, ``compose``, ``chunk`` and a ``RunMetadata`` queueing
calls for its parent and draining them, on ``$.`` keys of 1,000 and of 32,000 path
segments (2 KB and 64 KB keys), and prints the ratio of the two times: about 32
where the cost is linear in the key, about 1,000 where it is quadratic. Every call
uses keys it has not seen before, so that no cache of parsed keys hides the work.

``tests/test_path_length.py`` runs the same cases and checks only that each ratio
stays far below the quadratic one.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

if not __package__:
    # Run as a file (python benchmarks/path_length.py): make the project importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._timing import measure
from metaops import (
    JSON,
    Append,
    Increment,
    Operation,
    Remove,
    RunMetadata,
    Set,
    apply,
    chunk,
    collapse,
    compose,
)

SHORT = 1_000
LONG = 32_000
# Linear cost gives LONG / SHORT; a quadratic one its square.
LINEAR_RATIO = LONG / SHORT

# Metadata nested as deeply as metaops lets it: a long path is followed this far.
_NESTING = 200
_fresh = itertools.count()


def _nested(levels: int) -> dict[str, JSON]:
    state: dict[str, JSON] = {"leaf": 1}
    for _ in range(levels):
        state = {"a": state}
    return state


_STATE = _nested(_NESTING)


def long_key(segments: int) -> str:
    """A ``$.`` key of ``segments`` components, ``$.a.a.....a.kN``, never returned before."""
    return "$." + "a." * (segments - 1) + f"k{next(_fresh)}"


def _batch(segments: int) -> list[Operation]:
    """Operations on a long path, its descendants and its ancestor: what collapse tracks."""
    key = long_key(segments)
    parent = key.rpartition(".")[0]
    return [
        Set(f"{key}.x", 1),
        Increment(f"{key}.x", 2),
        Append(f"{key}.y", "a"),
        Set(key, {"x": 0}),
        Increment(f"{key}.x"),
        Increment(f"{key}.y"),
        Remove(parent, 1),
        Set(f"{key}.z", [1]),
    ]


def apply_case(segments: int) -> Callable[[], object]:
    """A set on a long path over metadata nested as deeply as metaops allows."""
    return lambda: apply(_STATE, Set(long_key(segments), 1))


def collapse_case(segments: int) -> Callable[[], object]:
    """Collapsing writes to a long path and the paths around it."""
    return lambda: collapse(_batch(segments))


def compose_case(segments: int) -> Callable[[], object]:
    """Composing a batch onto a collapsed one, both on long paths."""

    def run() -> object:
        ops = _batch(segments)
        return compose(collapse(ops[:4]), ops[4:])

    return run


def chunk_case(segments: int) -> Callable[[], object]:
    """Splitting operations with long keys into bodies that hold two each."""

    def run() -> object:
        ops = [Set(long_key(segments), i) for i in range(6)]
        return chunk(ops, max_bytes=3 * len(ops[0].key))

    return run


def buffer_case(segments: int) -> Callable[[], object]:
    """A child run queueing calls on long paths for its parent and root, then draining."""

    def run() -> object:
        md = RunMetadata(is_root=False)
        key = long_key(segments)
        parent = key.rpartition(".")[0]
        md.parent.set(f"{key}.x", 1).increment(f"{key}.x", 2).append(f"{key}.y", "a")
        md.parent.set(key, {"x": 0}).increment(f"{key}.x").increment(f"{key}.y")
        md.root.remove(parent, 1).set(f"{key}.z", [1])
        return md.drain().texts()

    return run


CASES: dict[str, Callable[[int], Callable[[], object]]] = {
    "apply": apply_case,
    "collapse": collapse_case,
    "compose": compose_case,
    "chunk": chunk_case,
    "RunMetadata set + drain": buffer_case,
}


def ratios(reps: int) -> dict[str, tuple[float, float]]:
    """Per case, the median seconds per call at SHORT and at LONG segments."""
    out = {}
    for name, case in CASES.items():
        short = measure(case(SHORT), reps=reps).median
        long = measure(case(LONG), reps=reps).median
        out[name] = (short, long)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.path_length", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--reps", type=int, default=7, help="repetitions per case and length (default 7)")
    args = parser.parse_args(argv)
    print(f"| operation | {SHORT:,} segments | {LONG:,} segments | ratio (linear: {LINEAR_RATIO:.0f}) |")
    print("|---|---:|---:|---:|")
    for name, (short, long) in ratios(args.reps).items():
        print(f"| {name} | {short * 1e3:.3f} ms | {long * 1e3:.2f} ms | {long / short:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
