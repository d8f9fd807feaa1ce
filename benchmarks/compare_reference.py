"""Time metaops and the reference on the same workloads in one run, and print the ratios.

usage: python -m benchmarks.compare_reference [--quick] [--reps N] [--json PATH] [--check]

The reference (``@trigger.dev/core`` 4.8.3 under node, installed into a cache
directory by ``tests/node_reference.py``) is timed by ``tests/node/bench.cjs``;
metaops by the functions of ``benchmarks/_cases.py`` on the same workload files.
Both report medians. Ratios are ``reference median / metaops median`` for times
(above 1: metaops is faster) and ``metaops / reference`` for collapsed lengths.

The reference's SDK loop takes ~14 s per run: ``BENCH_SDK_REPS`` (default 3) and
``BENCH_SDK_WARMUP`` (default 1) set its runs, as for ``bench.cjs``. ``--quick`` is
a sanity run: a few repetitions, and the reference's SDK loop skipped unless
``BENCH_SDK_REPS`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a file (python benchmarks/compare_reference.py): make the project importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _cases
from benchmarks._cases import Workloads, load_workloads
from benchmarks._timing import Timing, measure
from benchmarks._workloads import ensure_workloads
from tests.node_reference import REFERENCE_VERSION, SCRIPTS, ensure_reference, node_env

SDK_REPS_DEFAULT = "3"
SDK_WARMUP_DEFAULT = "1"
NODE_TIMEOUT = 3600
NOISY_SPREAD = 0.5  # (max - min) / median of the repetitions above which a timing is flagged

# The project's targets: metaops (CPython) against the reference (V8), same machine, same run.
SINGLE_OP_SPEEDUP = 1000.0
SDK_LOOP_SPEEDUP = 300.0
BUFFER_LOOP_SPEEDUP = 200.0
BATCH_SPEEDUP = 2.0
SIZE_SPEEDUP = 0.3
COLLAPSE_SPEEDUP = 0.04
COLLAPSE_US_PER_OP = 1.0
SDK_10K_MAX_LENGTH = 2_749
COLLAPSE_100K_MAX_LENGTH = 30_158
LENGTH_SHARE = 1 / 3


@dataclass(frozen=True)
class Row:
    """One line of the table; ``met`` is None where there is no target or no reference figure.

    An ``informative`` row measures a stricter variant of a target's workload: its
    verdict is shown in parentheses and does not count for ``--check``.
    """

    workload: str
    metaops: str
    reference: str
    ratio: str
    target: str
    met: bool | None
    informative: bool = False


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _times(ratio: float) -> str:
    if ratio >= 100:
        return f"{ratio:,.0f}×"
    if ratio >= 10:
        return f"{ratio:.1f}×"
    return f"{ratio:.3f}×"


def _verdict(row: Row) -> str:
    verdict = {True: "yes", False: "**NO**", None: "—"}[row.met]
    return f"({verdict})" if row.informative and row.met is not None else verdict


def run_reference(directory: Path, *, quick: bool) -> tuple[dict[str, Any] | None, str]:
    """The reference's figures (``bench.cjs`` output, in ms), or None and why not."""
    target = ensure_reference()
    if isinstance(target, str):
        return None, target
    env = node_env(target)
    env.setdefault("BENCH_SDK_REPS", "0" if quick else SDK_REPS_DEFAULT)
    env.setdefault("BENCH_SDK_WARMUP", "0" if quick else SDK_WARMUP_DEFAULT)
    try:
        done = subprocess.run(
            ["node", str(SCRIPTS / "bench.cjs"), str(directory)],
            env=env,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"node bench.cjs did not finish within {NODE_TIMEOUT} s"
    if done.returncode != 0:
        tail = " / ".join(done.stderr.strip().splitlines()[-3:])
        return None, f"node bench.cjs failed with exit status {done.returncode}: {tail}"
    figures: dict[str, Any] = json.loads(done.stdout)
    figures["sdk_reps"] = int(env["BENCH_SDK_REPS"])
    figures["sdk_warmup"] = int(env["BENCH_SDK_WARMUP"])
    return figures, ""


def run_metaops(workloads: Workloads, *, reps: int, warmup: int) -> dict[str, Timing]:
    """metaops's timings, seconds per call, by the name the table uses."""
    cases: dict[str, Callable[[], object]] = {
        "single_op": lambda: _cases.apply_single_op(workloads.state_256k),
        "sdk_loop": lambda: _cases.sdk_loop(workloads.state_64k, workloads.sdk_10k),
        "sdk_loop_from_wire": lambda: _cases.sdk_loop_from_wire(workloads.state_64k, workloads.sdk_10k_wire),
        "batch_1k": lambda: _cases.apply_batch(workloads.state_256k, workloads.batch_1k),
        "json_size": lambda: _cases.size(workloads.state_256k),
        "collapse_100k": lambda: _cases.collapse_all(workloads.collapse_100k),
        "compose_fold": lambda: _cases.compose_fold(workloads.arriving),
        "buffer_sdk_loop": lambda: _cases.buffer_sdk_loop(workloads.state_64k, workloads.sdk_10k_calls),
    }
    timings = {name: measure(fn, reps=reps, warmup=warmup) for name, fn in cases.items()}
    # Some 10 s a run: a few repetitions are enough against a 10x difference.
    timings["recollapse_fold"] = measure(
        lambda: _cases.recollapse_fold(workloads.arriving), reps=min(reps, 3), warmup=0
    )
    return timings


def _speed_row(
    workload: str, ours: Timing, reference_ms: float | None, target: float, *, noun: str = "faster"
) -> Row:
    theirs = None if reference_ms is None else reference_ms / 1e3
    ratio = None if theirs is None else theirs / ours.median
    return Row(
        workload=workload,
        metaops=_duration(ours.median),
        reference="n/a" if theirs is None else _duration(theirs),
        ratio="n/a" if ratio is None else _times(ratio),
        target=f"≥ {target:g}× {noun}",
        met=None if ratio is None else ratio >= target,
    )


def _length_row(workload: str, ours: int, reference: int | None, limit: int) -> Row:
    share = None if reference is None else ours / reference
    within = ours <= limit
    return Row(
        workload=workload,
        metaops=f"{ours:,}",
        reference="n/a" if reference is None else f"{reference:,}",
        ratio="n/a" if share is None else f"{share:.3f}",
        target=f"≤ {limit:,} and ≤ 1/3 of reference",
        met=within if share is None else within and share <= LENGTH_SHARE,
    )


def build_rows(
    timings: dict[str, Timing], lengths: dict[str, int], reference: dict[str, Any] | None
) -> list[Row]:
    """The table: one row per target (and two without one)."""
    ref = reference or {}
    sdk_ms = ref.get("sdk_enqueue_10k_on_64k_ms")  # absent when the reference's SDK loop was skipped
    collapse_time = timings["collapse_100k"]
    us_per_op = collapse_time.median / lengths["collapse_100k_input"] * 1e6
    collapse_row = _speed_row(
        "collapse(collapse_100k)", collapse_time, ref.get("collapse_100k_ms"), COLLAPSE_SPEEDUP, noun="speed"
    )
    collapse_row = replace(
        collapse_row,
        metaops=f"{collapse_row.metaops} ({us_per_op:.2f} µs/op)",
        target=f"≤ {COLLAPSE_US_PER_OP:g} µs/op and {collapse_row.target}",
        met=(us_per_op <= COLLAPSE_US_PER_OP) and (collapse_row.met is not False),
    )
    fold = timings["compose_fold"]
    recollapse = timings["recollapse_fold"]
    return [
        _speed_row(
            "apply 1 op (increment c1) on state_256k",
            timings["single_op"],
            ref.get("apply_single_op_on_256k_ms"),
            SINGLE_OP_SPEEDUP,
        ),
        _speed_row(
            "SDK loop: sdk_10k from state_64k, then flush", timings["sdk_loop"], sdk_ms, SDK_LOOP_SPEEDUP
        ),
        replace(
            _speed_row(
                "(info) SDK loop, each op also built from its wire dict",
                timings["sdk_loop_from_wire"],
                sdk_ms,
                SDK_LOOP_SPEEDUP,
            ),
            informative=True,
        ),
        _speed_row(
            "RunMetadata SDK loop: the same calls as methods, size tracked, drain()",
            timings["buffer_sdk_loop"],
            sdk_ms,
            BUFFER_LOOP_SPEEDUP,
        ),
        _speed_row(
            "apply batch_1k on state_256k",
            timings["batch_1k"],
            ref.get("apply_batch_1k_on_256k_ms"),
            BATCH_SPEEDUP,
        ),
        _speed_row(
            "json_size(state_256k) vs JSON.stringify+byteLength",
            timings["json_size"],
            ref.get("size_256k_ms"),
            SIZE_SPEEDUP,
            noun="speed",
        ),
        collapse_row,
        Row(
            workload="compose: 1,000 arriving batches of 100 (fold)",
            metaops=_duration(fold.median),
            reference="n/a (no compose)",
            ratio=f"{fold.median / collapse_time.median:.1f}× one collapse of all",
            target="—",
            met=None,
        ),
        Row(
            workload="the same fold re-collapsing the buffer at each arrival",
            metaops=_duration(recollapse.median),
            reference="n/a (no compose)",
            ratio=f"compose is {_times(recollapse.median / fold.median)} faster",
            target="compose cheaper",
            met=fold.median < recollapse.median,
        ),
        _length_row(
            "collapsed length of sdk_10k",
            lengths["sdk_10k"],
            ref.get("sdk_10k_collapse_len"),
            SDK_10K_MAX_LENGTH,
        ),
        _length_row(
            "collapsed length of collapse_100k",
            lengths["collapse_100k"],
            ref.get("collapse_100k_len"),
            COLLAPSE_100K_MAX_LENGTH,
        ),
    ]


def markdown(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| workload | metaops median | reference median | ratio | target | met? |",
        "|---|---:|---:|---:|---|:---:|",
    ]
    lines += [
        f"| {r.workload} | {r.metaops} | {r.reference} | {r.ratio} | {r.target} | {_verdict(r)} |"
        for r in rows
    ]
    return "\n".join(lines)


def _node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unavailable"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a fast sanity run (few repetitions)")
    parser.add_argument(
        "--reps", type=int, default=None, help="metaops repetitions per workload (default 11)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also save the raw numbers here"
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 11)

    directory = ensure_workloads()
    workloads = load_workloads()
    load_before = _load()
    timings = run_metaops(workloads, reps=reps, warmup=1)
    load_between = _load()
    reference, why_not = run_reference(directory, quick=args.quick)
    load_after = _load()
    lengths = {
        "sdk_10k": len(_cases.collapse_all(workloads.sdk_10k)),
        "collapse_100k": len(_cases.collapse_all(workloads.collapse_100k)),
        "collapse_100k_input": len(workloads.collapse_100k),
    }
    rows = build_rows(timings, lengths, reference)

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    node = _node_version()
    print(f"# metaops vs @trigger.dev/core {REFERENCE_VERSION}, {started}\n")
    print(f"- machine: {os.cpu_count()} cores, {_cpu_model()}, {platform.system()} {platform.release()}")
    print(f"- Python {python}; Node {node}")
    print(f"- load average (1, 5, 15 min): before {load_before}; after metaops {load_between}", end="")
    print(f"; after the reference {load_after}")
    print(f"- metaops: median of {reps} repetitions after 1 warm-up", end="")
    print(" (a fast call is repeated in a loop of ≥ 20 ms per repetition)")
    if reference is None:
        print(f"- reference: not run: {why_not}")
    else:
        print(
            f"- reference: bench.cjs medians; SDK loop {reference['sdk_reps']} run(s) after "
            f"{reference['sdk_warmup']} warm-up(s)" + ("" if reference["sdk_reps"] else " (skipped)")
        )
    noisy = [name for name, timing in timings.items() if timing.spread > NOISY_SPREAD]
    if noisy:
        print(
            f"- noisy (repetitions spread over {NOISY_SPREAD:.0%} of the median): {', '.join(noisy)}; re-run"
        )
    print("- ratio: reference median / metaops median for times, metaops / reference for lengths\n")
    print(markdown(rows))

    if args.json is not None:
        raw = {
            "date": started,
            "machine": {"cores": os.cpu_count(), "cpu": _cpu_model(), "system": platform.platform()},
            "python": python,
            "node": node,
            "load": {"before": load_before, "after_metaops": load_between, "after_node": load_after},
            "metaops_seconds": {
                name: {"median": t.median, "per_call": list(t.per_call), "calls_per_rep": t.calls_per_rep}
                for name, t in timings.items()
            },
            "lengths": lengths,
            "reference_ms": reference,
            "reference_unavailable": why_not or None,
            "rows": [asdict(row) for row in rows],
        }
        args.json.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 1 if args.check and any(row.met is False and not row.informative for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
