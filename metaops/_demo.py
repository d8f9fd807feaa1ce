"""``python -m metaops demo``: the documented CSV example, end to end in one process.

A parent run (``handle-csv-upload``) fetches a CSV, sets its ``status`` and
``totalRows`` and triggers one child run (``handle-csv-row``) per row; each child
reports to the parent with ``metadata.parent.increment("processedRows", 1)
.append("rowRuns", ctx.run.id)`` and sets the parent's ``progress``. Every run has
its own SDK buffer (:class:`metaops.buffer.RunMetadata`) whose flushes travel as
JSON request bodies to the server side (:mod:`metaops.server`): the run's own
operations through the compare-and-swap loop, the parent's through the operation
buffer, flushed once per wave of children into a SQLite file (standard library,
a temporary directory) as the platform's periodic flush would.

The run is checked as it goes: the parent's stored metadata must equal what
applying every call one by one, uncollapsed, gives. The summary compares what was
sent with what the reference's collapsing rule would have sent.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from metaops._apply import apply
from metaops._collapse import collapse, reference_rule
from metaops._json import JSON, js_key_order, json_equal
from metaops._size import js_number, json_size, json_text, metadata_limit
from metaops._values import Append, Increment, Operation, Set
from metaops.buffer import RunMetadata
from metaops.server import (
    FlushPlan,
    FlushResult,
    OperationBuffer,
    flush_run,
    parse_update_request,
    update_run,
)

__all__ = ["DemoReport", "run_demo", "summary"]

Metadata = dict[str, JSON]

DEFAULT_ROWS = 3_000
DEFAULT_WAVE = 100


# --------------------------------------------------------------------------- the store


class _Store:
    """Runs in one SQLite file: metadata as JSON text, and a version for compare-and-swap."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        # A scratch file for one process: durability against power loss buys nothing here.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, parent_id TEXT REFERENCES runs (id),"
            " metadata TEXT NOT NULL, version INTEGER NOT NULL)"
        )

    def close(self) -> None:
        self._db.close()

    def create_run(self, run_id: str, parent_id: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO runs (id, parent_id, metadata, version) VALUES (?, ?, '{}', 0)", (run_id, parent_id)
        )

    def parent_of(self, run_id: str) -> str | None:
        row = self._db.execute("SELECT parent_id FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        parent: str | None = row[0]
        return parent

    def read(self, run_id: str) -> tuple[Metadata, int]:
        row = self._db.execute("SELECT metadata, version FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        return json.loads(row[0]), row[1]

    def compare_and_swap(self, run_id: str, expected_version: int, metadata: Metadata) -> bool:
        cursor = self._db.execute(
            "UPDATE runs SET metadata = ?, version = version + 1 WHERE id = ? AND version = ?",
            (json_text(metadata), run_id, expected_version),
        )
        return cursor.rowcount == 1

    def commit(self, run_id: str, expected_version: int, plan: FlushPlan) -> bool:
        if plan.changed:
            return self.compare_and_swap(run_id, expected_version, plan.metadata)
        row = self._db.execute("SELECT version FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row is not None and row[0] == expected_version


# --------------------------------------------------------------------------- the server


@dataclass
class _Counts:
    calls: int = 0
    parent_calls: int = 0
    child_calls: int = 0
    requests: int = 0
    sdk_flushes: int = 0
    bytes_sent: int = 0
    sent: int = 0
    reference_sent: int = 0
    server_flushes: int = 0
    server_in: int = 0
    server_applied: int = 0
    server_reference: int = 0
    # (sequence number, the size it would have made) of each entry refused over the limit
    rejected: list[tuple[int, int]] = field(default_factory=list)


class _Platform:
    """The server side: update requests in, the parent buffer flushed into the store."""

    def __init__(self, store: _Store, counts: _Counts, limit: int) -> None:
        self.store = store
        self.buffer = OperationBuffer()
        self.counts = counts
        self.limit = limit

    def update(self, run_id: str, body_text: str) -> tuple[Metadata, int | None]:
        """Handle ``PUT /api/v1/runs/{run_id}/metadata``: the run's metadata, and the buffer's
        sequence number for the parent operations (None when there were none)."""
        request = parse_update_request(json.loads(body_text))
        result = update_run(
            run_id,
            request.own_operations,
            read=self.store.read,
            compare_and_swap=self.store.compare_and_swap,
            buffer=self.buffer,
            limit=self.limit,
        )
        seq = None
        parent = self.store.parent_of(run_id)
        if request.parent_operations and parent is not None:
            seq = self.buffer.add(parent, request.parent_operations)
        return result.metadata, seq

    def flush(self, run_id: str) -> FlushResult:
        """Write ``run_id``'s buffered entries into the store as one collapsed batch."""
        # One thread: the entries waiting now are the ones flush_run takes.
        waiting = self.buffer.pending(run_id)
        result = flush_run(
            self.buffer, run_id, read=self.store.read, commit=self.store.commit, limit=self.limit
        )
        if result.plan is not None:
            arrived = [op for entry in waiting for op in entry.operations]
            counts = self.counts
            counts.server_flushes += 1
            counts.server_in += len(arrived)
            counts.server_applied += len(collapse(arrived))
            counts.server_reference += len(reference_rule(arrived))
            counts.rejected.extend((r.entry.seq, r.size) for r in result.rejected)
        return result


# --------------------------------------------------------------------------- the runs


def _run_id(rng: random.Random) -> str:
    """A run id shaped like the platform's: ``run_`` and 25 lowercase base-36 characters."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "run_" + "".join(rng.choice(digits) for _ in range(25))


def _csv_file(rows: int, rng: random.Random) -> str:
    """The uploaded file: a CSV of ``rows`` customer rows."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "name", "email", "amount"])
    for index in range(rows):
        name = rng.choice(["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken"])
        writer.writerow([index + 1, name, f"{name.lower()}{index}@example.com", f"{rng.uniform(1, 500):.2f}"])
    return text.getvalue()


class _Sdk:
    """One run's SDK side: its buffer, and the flush that sends what it queued."""

    def __init__(self, platform: _Platform, run_id: str, *, is_root: bool) -> None:
        self.platform = platform
        self.run_id = run_id
        self.metadata = RunMetadata(is_root=is_root, limit=platform.limit)
        # Every call as made, uncollapsed: what the reference's SDK would queue.
        self.own_calls: list[Operation] = []
        self.parent_calls: list[Operation] = []

    def flush(self, uncollapsed: dict[int, list[Operation]]) -> None:
        """Drain the buffer, send its bodies and adopt the server's answer.

        The parent calls behind each entry the server buffers go into ``uncollapsed``,
        under the entry's sequence number.
        """
        counts = self.platform.counts
        flush = self.metadata.drain()
        if not flush:
            return
        counts.sdk_flushes += 1
        counts.sent += len(flush.operations) + len(flush.parent_operations) + len(flush.root_operations)
        counts.reference_sent += len(reference_rule(self.own_calls)) + len(reference_rule(self.parent_calls))
        answer: Metadata = {}
        last: int | None = None
        for text in flush.texts():
            counts.requests += 1
            counts.bytes_sent += len(text.encode("utf-8"))
            answer, seq = self.platform.update(self.run_id, text)
            if seq is not None:
                # A flush this small is one body; were it split, its calls go with its last entry.
                uncollapsed[seq] = []
                last = seq
        if last is not None:
            uncollapsed[last] = list(self.parent_calls)
        self.own_calls.clear()
        self.parent_calls.clear()
        self.metadata.accept(flush, answer)


@dataclass(frozen=True)
class DemoReport:
    """What the demo did, for the summary (and for ``--json``)."""

    rows: int
    waves: int
    calls: int
    parent_calls: int
    child_calls: int
    requests: int
    sdk_flushes: int
    bytes_sent: int
    sent: int
    reference_sent: int
    server_flushes: int
    server_in: int
    server_applied: int
    server_reference: int
    rejected: tuple[tuple[int, int], ...]
    metadata: Metadata
    size: int
    limit: int
    consistent: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object (``--json``)."""
        return {
            "rows": self.rows,
            "waves": self.waves,
            "calls": {"total": self.calls, "parent": self.parent_calls, "children": self.child_calls},
            "requests": self.requests,
            "sdkFlushes": self.sdk_flushes,
            "bytesSent": self.bytes_sent,
            "operationsSent": {"metaops": self.sent, "referenceRule": self.reference_sent},
            "serverFlushes": self.server_flushes,
            "serverOperations": {
                "arrived": self.server_in,
                "metaops": self.server_applied,
                "referenceRule": self.server_reference,
            },
            "rejected": [{"seq": seq, "size": size} for seq, size in self.rejected],
            "metadata": self.metadata,
            "size": self.size,
            "limit": self.limit,
            "consistent": self.consistent,
            "seconds": round(self.seconds, 3),
        }


class _Progress:
    """A progress bar on a terminal; otherwise a plain line at every tenth of the rows."""

    WIDTH = 30

    def __init__(self, out: TextIO | None, total: int, *, tty: bool) -> None:
        self.out = out
        self.total = total
        self.tty = tty
        self.tenth = -1
        self.drawn = 0  # the length of the line last drawn on the terminal

    def show(self, metadata: Metadata) -> None:
        if self.out is None:
            return
        done = metadata.get("processedRows", 0)
        done = done if isinstance(done, int) else 0
        status = metadata.get("status")
        share = done / self.total if self.total else 1.0
        if self.tty:
            filled = int(self.WIDTH * share)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            line = f"  [{bar}] {done:>{len(f'{self.total:,}')},}/{self.total:,} rows {share:4.0%}  {status}"
            # A carriage return only moves the cursor: pad over what a longer line left behind
            # (spaces rather than an escape code, which not every terminal understands).
            self.out.write(f"\r{line:<{self.drawn}}")
            self.drawn = len(line)
            self.out.flush()
            return
        tenth = int(share * 10)
        if tenth > self.tenth:
            self.tenth = tenth
            self.out.write(f"  {done:,}/{self.total:,} rows ({share:.0%}), status {status}\n")
            self.out.flush()

    def end(self) -> None:
        if self.out is not None and self.tty:
            self.out.write("\n")


def run_demo(
    rows: int = DEFAULT_ROWS,
    *,
    wave: int = DEFAULT_WAVE,
    seed: int = 2026,
    progress: TextIO | None = None,
    tty: bool = False,
    limit: int | None = None,
) -> DemoReport:
    """Run the CSV example with ``rows`` child runs, ``wave`` at a time; report what happened.

    ``progress`` receives the progress display (a bar when ``tty``, else plain lines).
    """
    started = time.perf_counter()
    allowed = metadata_limit(limit)
    rng = random.Random(seed)
    counts = _Counts()
    with tempfile.TemporaryDirectory(prefix="metaops-demo-") as scratch:
        store = _Store(Path(scratch) / "runs.sqlite3")
        try:
            report = _run(store, counts, rows, wave, rng, allowed, progress, tty)
        finally:
            store.close()
    return DemoReport(**{**report, "seconds": time.perf_counter() - started})


def _run(
    store: _Store,
    counts: _Counts,
    rows: int,
    wave: int,
    rng: random.Random,
    limit: int,
    progress_out: TextIO | None,
    tty: bool,
) -> dict[str, Any]:
    platform = _Platform(store, counts, limit)
    parent_id = _run_id(rng)
    store.create_run(parent_id)
    parent = _Sdk(platform, parent_id, is_root=True)
    # Every call applied one by one, uncollapsed, in the order the store took them (the
    # parent's own calls reach the store while its buffer is empty: call order is store order).
    expected: Metadata = {}
    uncollapsed: dict[int, list[Operation]] = {}

    def parent_calls(*ops: Operation) -> None:
        nonlocal expected
        counts.calls += len(ops)
        counts.parent_calls += len(ops)
        parent.own_calls.extend(ops)
        expected = apply(expected, ops).metadata

    def flush_parent_buffer() -> None:
        nonlocal expected
        result = platform.flush(parent_id)
        if result.plan is not None:
            for entry in result.plan.applied:
                expected = apply(expected, uncollapsed.pop(entry.seq)).metadata
            for rejection in result.plan.rejected:
                del uncollapsed[rejection.entry.seq]

    # handle-csv-upload
    parent.metadata.set("status", "fetching")
    parent_calls(Set("status", "fetching"))
    records = list(csv.DictReader(io.StringIO(_csv_file(rows, rng))))
    parent.metadata.set("status", "processing").set("totalRows", len(records))
    parent_calls(Set("status", "processing"), Set("totalRows", len(records)))
    # The SDK flushes before the task waits on its children (batch.triggerAndWait).
    parent.flush(uncollapsed)

    bar = _Progress(progress_out, len(records), tty=tty)
    bar.show(store.read(parent_id)[0])
    waves = 0
    for start in range(0, len(records), wave):
        waves += 1
        for index in range(start, min(start + wave, len(records))):
            child = _Sdk(platform, _run_id(rng), is_root=False)
            store.create_run(child.run_id, parent_id)
            _handle_csv_row(child, records[index], index, len(records))
            counts.calls += len(child.parent_calls)
            counts.child_calls += len(child.parent_calls)
            child.flush(uncollapsed)
        # The platform's periodic flush of the parent's buffer.
        flush_parent_buffer()
        bar.show(store.read(parent_id)[0])

    parent.metadata.set("status", "complete")
    parent_calls(Set("status", "complete"))
    parent.flush(uncollapsed)
    flush_parent_buffer()
    stored, _ = store.read(parent_id)
    bar.show(stored)
    bar.end()
    consistent = (
        not uncollapsed
        and json_equal(stored, expected)
        and json_equal(parent.metadata.current().to_dict(), stored)
    )
    return {
        **asdict(counts),
        "rejected": tuple(counts.rejected),
        "rows": len(records),
        "waves": waves,
        "metadata": stored,
        "size": json_size(stored),
        "limit": limit,
        "consistent": consistent,
    }


def _handle_csv_row(child: _Sdk, row: dict[str, str], index: int, total: int) -> None:
    """The child task: do some work with the row, then report to the parent run."""
    if "@" not in row["email"] or float(row["amount"]) < 0:
        msg = f"row {index + 1} is malformed: {row!r}"
        raise ValueError(msg)
    progress = round((index + 1) / total, 4)
    child.metadata.parent.increment("processedRows", 1).append("rowRuns", child.run_id)
    child.metadata.parent.set("progress", progress)
    child.parent_calls.extend(
        [Increment("processedRows", 1), Append("rowRuns", child.run_id), Set("progress", progress)]
    )


def _abbreviated(value: JSON, keep: int = 2) -> JSON:
    """``value`` with long lists cut to their first items, a count, and their last item."""
    if isinstance(value, dict):
        return {key: _abbreviated(item, keep) for key, item in value.items()}
    if isinstance(value, list) and len(value) > keep + 2:
        return [*value[:keep], f"... {len(value) - keep - 1:,} more ...", value[-1]]
    return value


def _js_text(value: JSON) -> str:
    """``value`` as JavaScript's ``JSON.stringify`` writes it, as the platform stores and shows it.

    Numbers in JavaScript's spelling, keys in JavaScript's order (integer-like keys first).

    >>> _js_text({"progress": 1.0, "small": 1e-7, "10": None, "rows": [1, "日本"]})
    '{"10":null,"progress":1,"small":1e-7,"rows":[1,"日本"]}'
    """
    if isinstance(value, dict):
        return "{" + ",".join(f"{json_text(key)}:{_js_text(value[key])}" for key in js_key_order(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_js_text(item) for item in value) + "]"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = js_number(value)
        return "null" if text in ("NaN", "Infinity", "-Infinity") else text
    return json_text(value)


def summary(report: DemoReport) -> str:
    """The summary the demo prints after its progress display."""

    def share(part: int, whole: int) -> str:
        return f"{part / whole:.1%}" if whole else "-"

    lines = [
        "",
        "Summary",
        f"  runs             1 parent run and {report.rows:,} child runs (one per row), "
        f"in {report.waves:,} waves",
        f"  calls made       {report.calls:,} metadata calls: {report.parent_calls:,} by the parent, "
        f"{report.child_calls:,} by the children on metadata.parent",
        f"  SDK flushes      {report.sdk_flushes:,}, sending {report.requests:,} update requests, "
        f"{report.bytes_sent:,} bytes of JSON",
        f"  operations sent  {report.sent:,} after collapsing; the reference's rule: "
        f"{report.reference_sent:,}",
        "                   (a child's flush holds one increment, one append and one set: nothing merges)",
        f"  server flushes   {report.server_flushes:,} of the parent's buffer, into SQLite: "
        f"{report.server_in:,} operations arrived,",
        f"                   {report.server_applied:,} applied after composing: "
        f"{share(report.server_applied, report.server_reference)} of the {report.server_reference:,} "
        "the reference's rule leaves",
        f"  final metadata   {_js_text(_abbreviated(report.metadata))}",
        f"  size             {report.size:,} bytes of JSON: {share(report.size, report.limit)} of the "
        f"{report.limit:,}-byte limit",
    ]
    if report.rejected:
        seq, size = report.rejected[0]
        lines.append(
            f"  rejected         {len(report.rejected):,} children's updates, each of which would have taken "
            f"the parent past the limit (the first: #{seq:,}, to {size:,} bytes)"
        )
    verdict = (
        "the stored metadata equals every accepted call applied one by one, uncollapsed"
        if report.consistent
        else "MISMATCH: the stored metadata differs from every accepted call applied one by one"
    )
    lines.append(f"  check            {verdict}")
    lines.append(f"  time             {report.seconds:.2f} s")
    return "\n".join(lines) + "\n"
