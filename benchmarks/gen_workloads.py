#!/usr/bin/env python3
"""Deterministic benchmark workloads for run-metadata operations (JSON files).

usage: gen_workloads.py OUTDIR
  state_256k.json     a realistic ~256 KB metadata object (the documented size limit)
  state_64k.json      a ~64 KB one
  batch_1k.json       1,000 mixed operations (wire form) to apply in one call to state_256k
  sdk_10k.json        10,000 operations issued one at a time by a task (progress, counters, logs, status)
  collapse_100k.json  100,000 operations queued between two flushes, for the batch reducer

The project's own copy of the generator behind the shared workloads, typed; it
writes the same bytes (``workloads.sha256`` records them, ``_workloads.py``
checks them). Every draw from the seeded generator happens in the original
order: reordering any expression here changes the files.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

SEED = 20261122

# Wire operations and metadata are plain JSON; the generator builds them untyped.
_Op = dict[str, Any]


def state(r: random.Random, target: int) -> dict[str, Any]:
    """Metadata grown row by row until its compact JSON reaches ``target`` bytes."""
    s: dict[str, Any] = {
        "status": "processing",
        "progress": 0.0,
        "user": {"id": "user_1234", "name": "Eric"},
        "counters": {f"c{i}": 0 for i in range(20)},
        "logs": [],
        "rows": [],
        "tags": [],
    }
    i = 0
    while len(json.dumps(s, separators=(",", ":"), ensure_ascii=False).encode()) < target:
        s["rows"].append(
            {
                "id": f"row_{i}",
                "ok": r.random() < 0.9,
                "ms": r.randint(1, 5000),
                "score": round(r.random(), 4),
                "labels": [r.choice("abcdef") for _ in range(3)],
                "note": r.choice(["", "retry", "ünïcödé", "日本語", "🎉"]),
            }
        )
        if i % 10 == 0:
            s["logs"].append(f"Step {i} complete")
        i += 1
    return s


def mixed_op(r: random.Random, i: int) -> _Op:
    """One operation of the server-side mix: counters, nested paths, logs, tags, deletes."""
    k = r.random()
    if k < 0.30:
        return {"type": "increment", "key": f"c{r.randint(0, 4)}", "value": r.choice([1, 1, 1, 2, -1])}
    if k < 0.40:
        return {"type": "increment", "key": f"$.counters.c{r.randint(0, 19)}", "value": 1}
    if k < 0.55:
        return {
            "type": "set",
            "key": r.choice(["status", "progress", "step"]),
            "value": r.choice(["processing", i / 1000, i]),
        }
    if k < 0.62:
        return {"type": "set", "key": f"$.rows.{r.randint(0, 300)}.ok", "value": r.random() < 0.5}
    if k < 0.80:
        return {"type": "append", "key": "logs", "value": f"Step {i} complete"}
    if k < 0.85:
        return {"type": "append", "key": "$.user.events", "value": {"i": i, "at": "2026-11-22T00:00:00.000Z"}}
    if k < 0.90:
        return {"type": "remove", "key": "tags", "value": f"t{r.randint(0, 9)}"}
    if k < 0.95:
        return {"type": "append", "key": "tags", "value": f"t{r.randint(0, 9)}"}
    if k < 0.99:
        return {"type": "delete", "key": r.choice(["tmp", "step", "cursor"])}
    return {"type": "set", "key": "cursor", "value": {"page": i, "of": 100}}


def sdk_op(r: random.Random, i: int, n: int) -> _Op:
    """One SDK call of a task processing ``n`` rows: progress, counters, status, logs."""
    k = r.random()
    if k < 0.35:
        return {"type": "increment", "key": "processedRows", "value": 1}
    if k < 0.45:
        return {
            "type": "increment",
            "key": r.choice(["failed", "retried", "bytes"]),
            "value": r.choice([1, 1, 512]),
        }
    if k < 0.65:
        return {
            "type": "set",
            "key": "progress",
            "value": {"step": i + 1, "total": n, "percentage": round((i + 1) * 100 / n)},
        }
    if k < 0.75:
        return {"type": "set", "key": "status", "value": r.choice(["fetching", "processing", "uploading"])}
    if k < 0.92:
        return {"type": "append", "key": "logs", "value": f"Row {i} done"}
    if k < 0.96:
        return {"type": "append", "key": "rowRuns", "value": f"run_{i:08d}"}
    return {"type": "remove", "key": "rowRuns", "value": f"run_{max(0, i - 50):08d}"}


def workloads() -> dict[str, Any]:
    """Every workload by file name, in generation order (the order of the random draws)."""
    r = random.Random(SEED)
    return {
        "state_256k.json": state(r, 250_000),
        "state_64k.json": state(r, 62_000),
        "batch_1k.json": [mixed_op(r, i) for i in range(1_000)],
        "sdk_10k.json": [sdk_op(r, i, 10_000) for i in range(10_000)],
        "collapse_100k.json": [
            sdk_op(r, i, 100_000) if r.random() < 0.7 else mixed_op(r, i) for i in range(100_000)
        ],
    }


def generate(out: Path) -> list[Path]:
    """Write every workload into ``out`` (created if needed); return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, value in workloads().items():
        path = out / name
        with path.open("w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, separators=(",", ":"))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gen_workloads.py OUTDIR", file=sys.stderr)
        return 2
    for path in generate(Path(argv[1])):
        print(path.name, os.path.getsize(path), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
