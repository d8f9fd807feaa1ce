"""Per-call cost against metadata size, metaops and the reference measured in the same run, as a PNG.

usage: python -m benchmarks.plot [--out docs/per-call-cost.png] [--reps N] [--json PATH]

One operation (``increment c1``, the single-op benchmark's) applied to metadata of
16 KB to 256 KB, built by ``gen_workloads.state``: metaops's ``apply`` and an SDK
call (``RunMetadata.increment``, which applies, checks the limit and queues), and
the reference's ``applyMetadataOperations`` under node (``per_call_cost.cjs``,
with ``@trigger.dev/core`` 4.8.3 installed into a cache directory by
``tests/node_reference.py``). Medians of ``--reps`` repetitions, taken in rounds over all sizes; the
table is printed too. Without node the reference's line is left out, and the title says why.

matplotlib is needed only here: ``pip install -e '.[plot]'``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a file (python benchmarks/plot.py): make the project importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import gen_workloads
from benchmarks._timing import measure
from metaops import Increment, apply, json_size
from metaops.buffer import RunMetadata
from tests.node_reference import REFERENCE_VERSION, ensure_reference, node_env

ROOT = Path(__file__).resolve().parent.parent
SIZES_KB = (16, 32, 64, 96, 128, 160, 192, 224, 256)
OPERATION = Increment("c1", 1)
NODE_TIMEOUT = 1200


def build_states() -> list[dict[str, Any]]:
    """Metadata of each size in ``SIZES_KB``, just under it (so the 256 KB one is within the limit)."""
    states = []
    for kb in SIZES_KB:
        # The generator grows the state row by row past its target: aim a row short.
        state = gen_workloads.state(random.Random(gen_workloads.SEED + kb), kb * 1024 - 160)
        states.append(state)
    return states


def _interleaved(fns: list[Callable[[], object]], reps: int) -> list[float]:
    """Median seconds per call of each of ``fns``, timed in rounds that visit every one in turn.

    Each repetition of one function sits between repetitions of all the others, so a
    stretch of load from elsewhere on the machine slows every size alike instead of
    bending the curve.
    """
    calls = [measure(fn, reps=1, warmup=1).calls_per_rep for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, count, times in zip(fns, calls, samples, strict=True):
            start = time.perf_counter()
            for _ in range(count):
                fn()
            times.append((time.perf_counter() - start) / count)
    return [statistics.median(times) for times in samples]


def time_metaops(states: list[dict[str, Any]], reps: int) -> tuple[list[float], list[float]]:
    """Median seconds per call of ``apply`` and of ``RunMetadata.increment``, per state."""
    applied: list[Callable[[], object]] = []
    sdk: list[Callable[[], object]] = []
    for state in states:
        applied.append(lambda state=state: apply(state, [OPERATION]))  # type: ignore[misc]
        buffer = RunMetadata(state)
        sdk.append(lambda buffer=buffer: buffer.increment("c1", 1))  # type: ignore[misc]
    return _interleaved(applied, reps), _interleaved(sdk, reps)


def time_reference(states: list[dict[str, Any]], reps: int) -> tuple[list[float] | None, str]:
    """Median seconds per call of the reference's ``applyMetadataOperations``, or why there are none."""
    target = ensure_reference()
    if isinstance(target, str):
        return None, target
    with tempfile.TemporaryDirectory(prefix="metaops-plot-") as scratch:
        path = Path(scratch) / "input.json"
        states_in = [{"size": json_size(state), "state": state} for state in states]
        path.write_text(json.dumps({"op": OPERATION.to_wire(), "states": states_in}), encoding="utf-8")
        try:
            done = subprocess.run(
                ["node", str(Path(__file__).with_name("per_call_cost.cjs")), str(path), str(reps)],
                capture_output=True,
                text=True,
                env=node_env(target),
                timeout=NODE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None, f"node per_call_cost.cjs did not finish within {NODE_TIMEOUT} s"
    if done.returncode != 0:
        tail = " / ".join(done.stderr.strip().splitlines()[-3:])
        return None, f"node per_call_cost.cjs failed with exit status {done.returncode}: {tail}"
    return [statistics.median(row["per_call_s"]) for row in json.loads(done.stdout)], ""


def machine() -> str:
    """The CPU, core count, Python and node versions, for the title."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        node = "no node"
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {python}, node {node.lstrip('v') or '-'}"


def _micro(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


def table(sizes: list[int], applied: list[float], sdk: list[float], reference: list[float] | None) -> str:
    """The measurements as a markdown table."""
    lines = [
        "| metadata | metaops `apply` | metaops SDK call | reference `applyMetadataOperations` "
        "| reference / metaops |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i, size in enumerate(sizes):
        ref = _micro(reference[i]) if reference else "-"
        ratio = f"{reference[i] / applied[i]:,.0f}×" if reference else "-"
        lines.append(f"| {size / 1024:.0f} KB | {_micro(applied[i])} | {_micro(sdk[i])} | {ref} | {ratio} |")
    return "\n".join(lines)


def _time_label(microseconds: float, _position: object) -> str:
    return f"{microseconds:g} µs" if microseconds < 1000 else f"{microseconds / 1000:g} ms"


def draw(
    out: Path,
    sizes: list[int],
    applied: list[float],
    sdk: list[float],
    reference: list[float] | None,
    title: str,
) -> None:
    """The PNG: cost per call (log scale) against metadata size, one line per implementation."""
    # Imported by name: matplotlib is an optional extra, so the type checker need not find it.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    ticker: Any = importlib.import_module("matplotlib.ticker")

    kb = [size / 1024 for size in sizes]
    figure, axes = plt.subplots(figsize=(9, 5.6), dpi=120)
    if reference:
        axes.plot(
            kb,
            [s * 1e6 for s in reference],
            "o-",
            color="#c0392b",
            label=f"reference: applyMetadataOperations (@trigger.dev/core {REFERENCE_VERSION}, node)",
        )
    axes.plot(
        kb, [s * 1e6 for s in sdk], "s--", color="#7f8c8d", label="metaops: RunMetadata.increment (SDK call)"
    )
    axes.plot(kb, [s * 1e6 for s in applied], "o-", color="#2471a3", label="metaops: apply (CPython)")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(_time_label))
    # Room above the lines for the legend.
    axes.set_ylim(1, max([*(s * 1e6 for s in reference or ()), *(s * 1e6 for s in sdk)]) * 12)
    axes.set_xlabel("metadata size (KB of JSON)")
    axes.set_ylabel("time per call (log scale)")
    axes.set_xticks([round(k) for k in kb])
    axes.set_xlim(0, 272)
    axes.grid(True, which="major", alpha=0.35)
    axes.grid(True, which="minor", axis="y", alpha=0.12)
    axes.legend(loc="upper left", fontsize=9)
    if reference:
        # The gap at both ends: a double arrow from metaops's line to the reference's, and the ratio.
        for i, align in ((0, "left"), (len(kb) - 1, "right")):
            ours, ref = applied[i] * 1e6, reference[i] * 1e6
            axes.annotate(
                "",
                xy=(kb[i], ref),
                xytext=(kb[i], ours),
                arrowprops={"arrowstyle": "<->", "color": "#566573"},
            )
            axes.annotate(
                f"{ref / ours:,.0f}× the time\nof metaops's apply",
                xy=(kb[i], (ref * ours) ** 0.5),
                xytext=(6 if align == "left" else -6, 0),
                textcoords="offset points",
                ha=align,
                va="center",
                fontsize=8.5,
                color="#566573",
            )
    axes.set_title(title, fontsize=9.5, loc="left")
    figure.suptitle(
        "One operation (increment c1) on run metadata: cost per call against its size", x=0.01, ha="left"
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and write the PNG; return the exit status."""
    parser = argparse.ArgumentParser(
        # Run with -m, argparse would name the file (plot.py), which is not how to run it again.
        prog="python -m benchmarks.plot" if __package__ else None,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "per-call-cost.png", help="the PNG to write"
    )
    parser.add_argument("--reps", type=int, default=15, help="repetitions per point (default 15)")
    parser.add_argument("--json", type=Path, help="also save the raw numbers here")
    args = parser.parse_args(argv)
    # Before measuring, which takes half a minute: without matplotlib there is nothing to draw with.
    if importlib.util.find_spec("matplotlib") is None:
        sys.stderr.write(
            f"{parser.prog}: matplotlib is not installed; install the plot extra: pip install -e '.[plot]'\n"
        )
        return 2

    states = build_states()
    sizes = [json_size(state) for state in states]
    # The reference first: node runs while nothing else does.
    reference, why = time_reference(states, args.reps)
    applied, sdk = time_metaops(states, args.reps)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    title = f"measured {stamp} on {machine()}; medians of {args.reps} repetitions"
    if reference is None:
        title += f"\nreference not measured: {why}"
    draw(args.out, sizes, applied, sdk, reference, title)
    print(title)
    print()
    print(table(sizes, applied, sdk, reference))
    print(f"\nwrote {args.out}")
    if args.json:
        raw: dict[str, Any] = {
            "date": stamp,
            "machine": machine(),
            "sizes": sizes,
            "metaops_apply_s": applied,
            "metaops_sdk_call_s": sdk,
            "reference_s": reference,
            "reference_missing": why or None,
        }
        args.json.write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
