"""``python -m metaops demo``: the documented CSV import, through ``metaops serve`` and ``metaops.client``.

The run-metadata documentation's example: a parent run (``handle-csv-upload``)
fetches a CSV file, sets its ``status`` and ``totalRows``, and triggers one child run
(``handle-csv-row``) per row; each child reports to its parent with
``metadata.parent.increment("processedRows", 1).append("rowRuns", ctx.run.id)``, and
the parent sets ``status`` to ``complete`` at the end. A frontend draws
``processedRows`` of ``totalRows`` as a progress bar.

Here every piece is a public one. The service is ``metaops serve``
(:func:`metaops.service.running_server`) on a free port of 127.0.0.1, with SQLite in
a temporary directory; it folds the children's parent operations into the parent's
metadata every 0.1 s, as the platform's periodic flush does. Each run (the parent and
every child) is a :class:`metaops.client.MetadataClient` bound to the ambient
:data:`metaops.client.metadata`; the children run :data:`CHILDREN_AT_ONCE` at a time.
The parent also writes a log stream (``metadata.stream("log", ...)``: a line per
imported row), and the service serves the dashboard page, where all of it shows live
(``python -m metaops demo --serve`` prints the page's link and keeps serving).

The service counts the metadata updates it is asked for (requests, bytes and
operations), and the summary sets them against sending every call as a request of its
own and writing each into the parent on its own. At the end, the parent's metadata is
checked against every call applied one by one with :func:`metaops.apply` (the children
ran side by side, so ``rowRuns`` may list them in another order).
"""

from __future__ import annotations

import contextvars
import csv
import io
import json
import os
import queue
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from metaops import (
    JSON,
    Append,
    Flush,
    Increment,
    Operation,
    Set,
    apply,
    json_equal,
    json_size,
    json_text,
    metadata_limit,
)
from metaops.client import MetadataClient, metadata
from metaops.service import (
    MetadataService,
    RunState,
    ServiceConfig,
    UpdateOutcome,
    open_storage,
    running_server,
)

__all__ = ["CHILDREN_AT_ONCE", "DEFAULT_ROWS", "DemoReport", "run_demo", "summary"]

Metadata = dict[str, JSON]

DEFAULT_ROWS = 500
CHILDREN_AT_ONCE = 4
"""Child runs working at the same time (the platform runs a batch's children concurrently)."""
SERVE_ROW_SECONDS = 0.04
"""With ``--serve``, each child works this long on its row, so that a person can watch."""
FOLD_INTERVAL = 0.1
"""Seconds between two folds of queued parent operations into the parent's metadata."""
POLL_INTERVAL = 0.1


# --------------------------------------------------------------------------- the service


class _CountingService(MetadataService):
    """The service, counting the metadata updates it is asked for.

    Every ``PUT /api/v1/runs/{runId}/metadata`` is one :meth:`update`. Its bytes are
    counted as the body's compact JSON (:func:`metaops.json_text`), which is what
    metaops.client sends. The first read of the :attr:`watched` run (the dashboard's
    script asking for it) sets :attr:`read`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counting = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.operations = 0
        self.watched: str | None = None
        self.read = threading.Event()

    def update(self, run_id: str, body: object, *, key: str | None = None) -> UpdateOutcome:
        operations = 0
        if isinstance(body, dict):
            for field in ("operations", "parentOperations", "rootOperations"):
                value = body.get(field)
                operations += len(value) if isinstance(value, list) else 0
            operations += "metadata" in body
        size = len(json_text(body).encode())
        with self._counting:
            self.requests += 1
            self.bytes += size
            self.operations += operations
        return super().update(run_id, body, key=key)

    def get(self, run_id: str) -> RunState:
        if run_id == self.watched:
            self.read.set()
        return super().get(run_id)


@dataclass
class _Service:
    url: str
    secret: str
    counted: _CountingService
    admin: httpx.Client


def _scratch_directory() -> str | None:
    """Where the scratch database goes: memory-backed when the system has it (a demo needs no fsync)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextmanager
def _service(port: int = 0) -> Iterator[_Service]:
    """``metaops serve`` in a thread (:func:`~metaops.service.running_server`), SQLite in scratch space."""
    secret = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory(prefix="metaops-demo-", dir=_scratch_directory()) as scratch:
        storage = open_storage(f"sqlite:///{os.path.join(scratch, 'runs.sqlite3')}")
        service = _CountingService(storage, ServiceConfig(flush_interval=FOLD_INTERVAL, inline_flush=False))
        with running_server(service, secret, port=port) as server:
            headers = {"Authorization": f"Bearer {secret}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as admin:
                yield _Service(server.url, secret, service, admin)


def _check(answer: httpx.Response) -> Any:
    if answer.is_error:
        msg = f"{answer.request.method} {answer.request.url.path}: {answer.status_code} {answer.text[:200]}"
        raise RuntimeError(msg)
    return answer.json()


# --------------------------------------------------------------------------- the log stream


class _Log:
    """The parent's log stream (``log``): lines written by any thread, sent by ``metadata.stream``.

    A thread of the parent's run takes the lines from a queue as they come and hands
    them to the ambient ``metadata.stream("log", ...)`` (in a copy of the run's
    context, so that ``metadata`` is the parent's client there too).
    """

    _END = None

    def __init__(self, key: str = "log") -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.written = 0
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(metadata.stream, key, self._taken()), name="metaops-demo-log"
        )
        self._thread.start()

    def _taken(self) -> Iterator[str]:
        while (line := self._lines.get()) is not None:
            yield line

    def write(self, line: str) -> None:
        self.written += 1
        self._lines.put(line)

    def close(self) -> None:
        """End the stream (readers see its end) once every line is sent."""
        self._lines.put(self._END)
        self._thread.join()


# --------------------------------------------------------------------------- the runs


def _csv_file(rows: int, rng: random.Random) -> str:
    """The uploaded file: a CSV of ``rows`` customer rows."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "name", "email", "amount"])
    for index in range(rows):
        name = rng.choice(["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken"])
        writer.writerow([index + 1, name, f"{name.lower()}{index}@example.com", f"{rng.uniform(1, 500):.2f}"])
    return text.getvalue()


class _Calls:
    """Every metadata call the runs make, as made: what one request per call would send."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.parent: list[Operation] = []
        self.children: dict[str, list[Operation]] = {}

    def by_parent(self, *operations: Operation) -> None:
        with self._lock:
            self.parent.extend(operations)

    def by_child(self, child_id: str, *operations: Operation) -> None:
        with self._lock:
            self.children.setdefault(child_id, []).extend(operations)

    @property
    def count(self) -> int:
        return len(self.parent) + sum(len(ops) for ops in self.children.values())

    def one_by_one_bytes(self) -> int:
        """Bytes of the request bodies when each call is flushed alone (the client's own body format)."""
        own = (Flush((op,)) for op in self.parent)
        for_parent = (Flush(parent_operations=(op,)) for op in self._children_calls())
        return sum(len(text.encode()) for flush in (*own, *for_parent) for text in flush.texts())

    def _children_calls(self) -> list[Operation]:
        return [op for ops in self.children.values() for op in ops]


def _handle_csv_row(row: dict[str, str], index: int, calls: _Calls, log: _Log, pause: float) -> None:
    """The child task, inside its run: do the work, then report to the parent run."""
    if "@" not in row["email"] or float(row["amount"]) < 0:
        msg = f"row {index + 1} is malformed: {row!r}"
        raise ValueError(msg)
    if pause:
        time.sleep(pause)
    run_id = metadata.run_id
    assert run_id is not None
    metadata.parent.increment("processedRows", 1).append("rowRuns", run_id)
    calls.by_child(run_id, Increment("processedRows", 1), Append("rowRuns", run_id))
    log.write(f"row {index + 1}: {row['name']}, {row['amount']} → {run_id}")


def _child_run(
    service: _Service, parent_id: str, row: dict[str, str], index: int, calls: _Calls, log: _Log, pause: float
) -> None:
    child_id = _check(service.admin.post("/admin/runs", json={"parentId": parent_id}))["id"]
    with MetadataClient(child_id, base_url=service.url, access_token=service.secret, is_root=False):
        _handle_csv_row(row, index, calls, log, pause)


@dataclass(frozen=True)
class DemoReport:
    """What the demo did, for the summary (and for ``--json``)."""

    rows: int
    calls: int
    parent_calls: int
    child_calls: int
    requests: int
    operations: int
    bytes_sent: int
    one_by_one_bytes: int
    parent_writes: int
    log_lines: int
    rejected: tuple[str, ...]
    """Children whose report the service refused (the parent would have passed the limit)."""
    metadata: Metadata
    size: int
    limit: int
    consistent: bool
    seconds: float
    url: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object (``--json``)."""
        return {
            "rows": self.rows,
            "calls": {"total": self.calls, "parent": self.parent_calls, "children": self.child_calls},
            "requests": {"metaops": self.requests, "oneByOne": self.calls},
            "operations": {"metaops": self.operations, "oneByOne": self.calls},
            "bytes": {"metaops": self.bytes_sent, "oneByOne": self.one_by_one_bytes},
            "parentWrites": {"metaops": self.parent_writes, "oneByOne": self.calls},
            "logLines": self.log_lines,
            "rejected": list(self.rejected),
            "metadata": self.metadata,
            "size": self.size,
            "limit": self.limit,
            "consistent": self.consistent,
            "seconds": round(self.seconds, 3),
        }


class _Progress:
    """A progress bar on a terminal; otherwise a line at every tenth of the rows, and the last state."""

    WIDTH = 30

    def __init__(self, out: TextIO | None, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.tenth = -1
        self.drawn = 0  # the length of the line last drawn on the terminal
        self.printed: tuple[int, int, object] | None = None  # the last plain line's state

    def show(self, metadata: Metadata, *, final: bool = False) -> None:
        total = metadata.get("totalRows")
        done = metadata.get("processedRows", 0)
        status = metadata.get("status")
        if self.out is None or not isinstance(total, int) or not isinstance(done, int):
            return
        share = done / total if total else 1.0
        if self.tty:
            filled = int(self.WIDTH * min(share, 1.0))
            bar = "#" * filled + "." * (self.WIDTH - filled)
            line = f"  [{bar}] {done:>{len(f'{total:,}')},}/{total:,} rows {share:4.0%}  {status}"
            # A carriage return only moves the cursor: pad over what a longer line left behind.
            self.out.write(f"\r{line:<{self.drawn}}")
            self.drawn = len(line)
            self.out.flush()
            return
        tenth = int(share * 10)
        if tenth > self.tenth or (final and (done, total, status) != self.printed):
            self.tenth = max(tenth, self.tenth)
            self.printed = (done, total, status)
            self.out.write(f"  {done:,}/{total:,} rows ({share:.0%}), status {status}\n")
            self.out.flush()

    def end(self, metadata: Metadata) -> None:
        """Show the final state, whatever was shown before (a pipe too ends on it)."""
        if self.out is None:
            return
        self.show(metadata, final=True)
        if self.tty:
            self.out.write("\n")


def run_demo(
    rows: int = DEFAULT_ROWS,
    *,
    seed: int = 2026,
    progress: TextIO | None = None,
    tty: bool = False,
    serve: bool = False,
    port: int = 0,
    announce: Callable[[str, threading.Event], None] | None = None,
    after: Callable[[DemoReport], None] | None = None,
) -> DemoReport:
    """Run the CSV example with ``rows`` child runs; report what happened.

    ``progress`` receives the progress display (a bar when ``tty``, else plain lines).
    With ``serve``, the children take :data:`SERVE_ROW_SECONDS` over each row.
    ``announce(link, opened)`` is called with the parent's dashboard link before the
    import starts, which it may delay; ``opened`` is set when the page first reads
    the run. ``after(report)`` is called at the end, with the service still up.
    """
    rng = random.Random(seed)
    with _service(port) as service:
        parent_id = _check(service.admin.post("/admin/runs", json={}))["id"]
        service.counted.watched = parent_id
        url = None
        if announce is not None:
            token = _check(
                service.admin.post(
                    "/api/v1/auth/public-tokens",
                    json={"scopes": [f"read:runs:{parent_id}"], "expirationTime": "24h"},
                )
            )["token"]
            url = f"{service.url}/runs/{quote(parent_id, safe='')}?token={token}"
            announce(url, service.counted.read)
        started = time.perf_counter()
        found = _import(service, parent_id, rows, rng, progress, tty, SERVE_ROW_SECONDS if serve else 0.0)
        report = DemoReport(**found, seconds=time.perf_counter() - started, url=url)
        if after is not None:
            after(report)
    return report


def _import(
    service: _Service,
    parent_id: str,
    rows: int,
    rng: random.Random,
    progress_out: TextIO | None,
    tty: bool,
    pause: float,
) -> dict[str, Any]:
    calls = _Calls()
    bar = _Progress(progress_out, tty=tty)
    metadata_path = f"/api/v1/runs/{quote(parent_id, safe='')}/metadata"
    # handle-csv-upload, in its run
    with MetadataClient(parent_id, base_url=service.url, access_token=service.secret) as parent:
        metadata.set("status", "fetching")
        calls.by_parent(Set("status", "fetching"))
        records = list(csv.DictReader(io.StringIO(_csv_file(rows, rng))))
        metadata.set("status", "processing").set("totalRows", len(records))
        calls.by_parent(Set("status", "processing"), Set("totalRows", len(records)))
        log = _Log()
        try:
            log.write(f"fetched customers.csv: {len(records):,} rows; one child run per row")
            parent.flush()  # as the SDK does before the task waits on its children
            if progress_out is not None:
                bar.show(_check(service.admin.get(metadata_path))["metadata"])
            # batchTriggerAndWait: the children, a few at a time, each in its own run.
            with ThreadPoolExecutor(CHILDREN_AT_ONCE, thread_name_prefix="metaops-demo-child") as children:
                done = [
                    children.submit(_child_run, service, parent_id, row, index, calls, log, pause)
                    for index, row in enumerate(records)
                ]
                try:
                    while not all(future.done() for future in done):
                        if progress_out is not None:
                            bar.show(_check(service.admin.get(metadata_path))["metadata"])
                        time.sleep(POLL_INTERVAL)
                except BaseException:  # Ctrl-C: the children at work finish, the others never start
                    children.shutdown(cancel_futures=True)
                    raise
                for future in done:
                    future.result()  # a child that failed fails the demo
            metadata.set("status", "complete")
            calls.by_parent(Set("status", "complete"))
            log.write(f"imported {len(records):,} rows")
        finally:
            log.close()  # whatever happened: its thread must not outlive the run
    _check(service.admin.post("/admin/flush", json={}))
    _check(service.admin.post(f"/admin/runs/{quote(parent_id, safe='')}/complete", json={}))
    described = _check(service.admin.get(f"/admin/runs/{quote(parent_id, safe='')}"))
    stored: Metadata = described["metadata"]
    bar.end(stored)
    rejected = _rejected_children(described["rejected"])
    accepted = [op for child_id, ops in calls.children.items() if child_id not in rejected for op in ops]
    expected = apply({}, [*calls.parent, *accepted]).metadata
    counted = service.counted
    return {
        "rows": len(records),
        "calls": calls.count,
        "parent_calls": len(calls.parent),
        "child_calls": calls.count - len(calls.parent),
        "requests": counted.requests,
        "operations": counted.operations,
        "bytes_sent": counted.bytes,
        "one_by_one_bytes": calls.one_by_one_bytes(),
        "parent_writes": described["version"],
        "log_lines": log.written,
        "rejected": tuple(sorted(rejected)),
        "metadata": stored,
        "size": json_size(stored),
        "limit": metadata_limit(None),
        "consistent": json_equal(_ordered(stored), _ordered(expected)),
    }


def _rejected_children(rejected: list[dict[str, Any]]) -> set[str]:
    """The children whose report was refused: the run ids their refused appends carried."""
    children = set()
    for entry in rejected:
        for op in entry["operations"]:
            if op.get("type") == "append" and op.get("key") == "rowRuns":
                children.add(op["value"])
    return children


def _ordered(value: Metadata) -> Metadata:
    """``value`` with ``rowRuns`` sorted: children ran concurrently, so they arrived in any order."""
    runs = value.get("rowRuns")
    if isinstance(runs, list):
        return {**value, "rowRuns": sorted(runs, key=str)}
    return value


# --------------------------------------------------------------------------- the summary


def _js_number(value: float) -> str:
    """A number as JavaScript writes it.

    >>> [_js_number(n) for n in (1.0, 1e-07, 0.25, 12, 1.5e300, 1e21)]
    ['1', '1e-7', '0.25', '12', '1.5e+300', '1e+21']
    """
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e21):
        return str(int(value))
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent):+d}" if exponent else text


def _shown(value: JSON, width: int) -> str:
    """``value`` on one line of at most ``width`` characters, as JSON.stringify spells it."""
    if isinstance(value, list):
        count = f"{len(value):,} item" + ("" if len(value) == 1 else "s")
        if not value:
            return "[]"
        first, last = _shown(value[0], 40), _shown(value[-1], 40)
        for text in (
            f"{count}: [{first}, ..., {last}]" if len(value) > 1 else f"[{first}]",
            f"{count}: [{first}, ...]",
            count,
        ):
            if len(text) <= width:
                return text
        return count[:width]
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (int, float)):
        text = _js_number(value)
    else:
        text = json_text(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _fewer(metaops: int, one_by_one: int) -> str:
    if metaops >= one_by_one:
        return ""
    saved = 1 - metaops / one_by_one
    return f"{saved:.0%} fewer" if saved >= 0.01 else f"{one_by_one - metaops:,} fewer"


def _share(part: int, whole: int) -> str:
    share = part / whole if whole else 0.0
    return f"{share:.1%}" if share < 0.1 else f"{share:.0%}"


def summary(report: DemoReport) -> str:
    """What the demo prints after its progress display; no line is 80 columns or wider."""
    children_sent = report.child_calls - 2 * len(report.rejected)
    rows = [
        ("requests sent", report.requests, report.calls),
        ("bytes sent", report.bytes_sent, report.one_by_one_bytes),
        ("operations sent", report.operations, report.calls),
        ("writes of the parent", report.parent_writes, report.calls),
    ]
    lines = [
        "",
        f"{report.calls:,} metadata calls -> {report.requests:,} requests -> "
        f"{report.parent_writes:,} writes of the parent's metadata",
        "",
        "What happened",
        f"  The parent run set its status and totalRows, then started {report.rows:,} child",
        f"  runs, {CHILDREN_AT_ONCE} at a time. Each reported its row to the parent with",
        '  metadata.parent.increment("processedRows", 1).append("rowRuns", id).',
        "  metaops.client sent each child's calls in one request, and metaops serve",
        f"  folded the {children_sent:,} operations the children sent into "
        f"{report.parent_writes:,} writes of the parent.",
        "",
        "What metaops saved           with metaops     one by one",
        *(
            f"  {label:<22} {metaops:>12,}   {one_by_one:>12,}   {_fewer(metaops, one_by_one)}".rstrip()
            for label, metaops, one_by_one in rows
        ),
        "  (one by one: every call sent as a request of its own and written on its own)",
        "",
        f"Final metadata of the parent ({report.size:,} bytes, "
        f"{_share(report.size, report.limit)} of the {report.limit:,}-byte limit)",
    ]
    for key, value in report.metadata.items():
        label = f"  {key:<14} "
        lines.append(label + _shown(value, 79 - len(label)))
    lines.append("")
    accepted = report.calls - 2 * len(report.rejected)
    if report.consistent:
        lines.append(f"Check: the parent's metadata equals the {accepted:,} calls applied one by one")
        if report.rows > 1:
            lines.append("(the children ran side by side: rowRuns lists them as their reports arrived).")
    else:
        lines.append("MISMATCH: the parent's metadata differs from the calls applied one by one.")
    if report.rejected:
        lines.append(
            f"Refused: {len(report.rejected):,} children's reports, which would have taken the parent"
        )
        lines.append(f"past its size limit ({report.limit:,} bytes); nothing else was lost.")
    lines.append(f"Took {report.seconds:.1f} s.")
    return "\n".join(lines) + "\n"
