"""The metadata service: metaops.server's pure pieces wired to a :class:`Storage`.

One ``PUT`` goes:

1. parse the body (:func:`metaops.server.parse_update_request`; a bad one changes nothing);
2. find the run (unknown: :class:`RunNotFoundError`), refuse it if it completed over
   an hour ago (:class:`RunCompletedError`);
3. the run's own operations through :func:`metaops.server.update_run`: a
   compare-and-swap loop with jittered backoff. An update over the size limit
   raises :class:`metaops.MetadataTooLargeError` before anything is written;
4. parent and root operations (when the run has a parent / root) are *queued* in the
   same transaction as the run's own write: the compare-and-swap that writes the run
   also inserts them into the storage's outbox, so a request either changes the run
   and queues them, or does neither (a retry after a failure then applies it once).
   When nothing is written (nothing changed, or the own operations are queued
   themselves), they go into the outbox with the own operations or alone, again in
   one transaction. Once committed they join the in-memory
   :class:`metaops.server.OperationBuffer` under the outbox's sequence numbers;
5. the queued runs are flushed **inline**, before the response, each for at most
   ``flush_rounds`` rounds of :func:`metaops.server.flush_run` (itself bounded by the
   retry policy), so the response is never held up for long. Whatever an inline
   flush leaves (another request's flush has the run's batch out, or every attempt
   lost its race) a background flusher writes every ``flush_interval`` seconds; on
   restart the outbox is loaded back into the buffer. A parent's metadata therefore
   shows a child's operations when the child's request returns in the common case,
   and within a flush interval in every case.

Once the request's writes have committed, nothing after them turns the answer into an
error: an inline flush that fails is logged and left to the background flusher, as
answering 500 for a committed update would invite a retry that applies it twice.

Own operations that lose every race join the buffer the same way (durably) and are
flushed inline too; the response then carries the committed metadata when that
flush wrote them, else the operations applied to the last version read (what the
platform answers). While a run has queued operations, its own updates queue behind
them, so each writer's operations land in the order it sent them.

The platform queues parent/root operations before it updates the run itself, so a
request answered 413 (or failing otherwise) has still changed the parent; here the
run's own update comes first, and a refused request changes nothing.

Queued operations that would take a run past the size limit are rejected at the
flush: logged, recorded in the storage (``rejections``), never retried and never
dropped silently. An own update rejected that way during its own request's inline
flush is answered 413.
"""

from __future__ import annotations

import logging
import random as _random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from examples.server.storage import Metadata, OutboxEntry, RunRecord, Storage
from metaops import JSON, MetadataTooLargeError, Operation, check_size, metadata_limit
from metaops.server import (
    FlushPlan,
    FlushResult,
    OperationBuffer,
    RetryPolicy,
    flush_run,
    parse_update_request,
    update_run,
)

__all__ = [
    "MetadataService",
    "RunCompletedError",
    "RunExistsError",
    "RunNotFoundError",
    "ServiceConfig",
]

_log = logging.getLogger("examples.server")

UPDATABLE_WINDOW = 3600.0
"""A completed run takes metadata updates for one hour (the platform's window)."""


class RunNotFoundError(LookupError):
    """No run has this id."""


class RunCompletedError(ValueError):
    """The run completed longer ago than the updatable window."""


class RunExistsError(ValueError):
    """A run with this id already exists."""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """Tuning knobs; the defaults suit a test or a demo on one machine.

    ``limit`` is the metadata size limit in bytes (``None``: the environment's
    ``TASK_RUN_METADATA_MAXIMUM_SIZE``, else 256 KB). ``flush_interval`` is the
    background flusher's period in seconds (0 disables it). ``inline_flush`` flushes
    queued runs before answering the request that queued them.
    """

    limit: int | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    flush_interval: float = 0.1
    inline_flush: bool = True
    flush_rounds: int = 3
    updatable_window: float = UPDATABLE_WINDOW


class MetadataService:
    """Run metadata over a :class:`Storage`: get, update, and the parent/root buffer."""

    def __init__(
        self,
        storage: Storage,
        config: ServiceConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._storage = storage
        self._config = config or ServiceConfig()
        self._limit = metadata_limit(self._config.limit)
        self._clock = clock
        self._random = random
        self._sleep = sleep
        self._buffer = OperationBuffer()
        # Outbox insert and buffer add happen together, so buffer order is outbox order.
        self._outbox_lock = threading.Lock()
        for entry in storage.pending():
            self._buffer.add(entry.run_id, entry.operations, seq=entry.seq)
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    @property
    def storage(self) -> Storage:
        """The storage this service writes to."""
        return self._storage

    @property
    def limit(self) -> int:
        """The metadata size limit in bytes."""
        return self._limit

    def start(self) -> None:
        """Start the background flusher (unless ``flush_interval`` is 0)."""
        if self._config.flush_interval > 0 and self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_forever, name="metadata-flusher", daemon=True)
            self._flusher.start()

    def close(self) -> None:
        """Stop the flusher and close the storage; queued operations stay in the outbox."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self._storage.close()

    # ------------------------------------------------------------ the OperationSink

    def add(self, run_id: str, operations: Iterable[Operation]) -> int:
        """Queue ``operations`` for ``run_id``, durably; return their sequence number."""
        return self._enqueue([(run_id, tuple(operations))])[0]

    def _enqueue(self, entries: Sequence[OutboxEntry]) -> list[int]:
        with self._outbox_lock:
            seqs = self._storage.enqueue(entries)
            self._buffer_committed(entries, seqs)
        return seqs

    def _swap_and_enqueue(
        self, run_id: str, expected_version: int, metadata: Metadata, entries: Sequence[OutboxEntry]
    ) -> bool:
        with self._outbox_lock:
            seqs = self._storage.compare_and_swap(run_id, expected_version, metadata, entries)
            if seqs is None:
                return False
            self._buffer_committed(entries, seqs)
        return True

    def _buffer_committed(self, entries: Sequence[OutboxEntry], seqs: Sequence[int]) -> None:
        # Called under the outbox lock, so that buffer order is outbox order.
        for (target, operations), seq in zip(entries, seqs, strict=True):
            self._buffer.add(target, operations, seq=seq)

    def busy(self, run_id: str) -> bool:
        """Whether ``run_id`` has operations queued or being flushed."""
        return self._buffer.busy(run_id)

    def pending(self) -> int:
        """How many queued entries are not yet written."""
        return len(self._buffer)

    # ------------------------------------------------------------ requests

    def get_metadata(self, run_id: str) -> Metadata:
        """The run's stored metadata."""
        try:
            metadata, _ = self._storage.read(run_id)
        except KeyError:
            raise RunNotFoundError(run_id) from None
        return metadata

    def update_metadata(self, run_id: str, body: object) -> Metadata:
        """Handle one update body for ``run_id``; return the metadata to answer with.

        Raises :class:`~metaops.InvalidRequestError`, :class:`RunNotFoundError`,
        :class:`RunCompletedError` or :class:`~metaops.MetadataTooLargeError`; none of
        them leaves anything changed. Nor does any other error raised here (a failing
        database): the run's write and the queuing of its parent/root operations are
        one transaction, and once it has committed, errors are logged instead.
        """
        request = parse_update_request(body)
        run = self._storage.get_run(run_id, metadata=False)  # update_run reads it, with its version
        if run is None:
            raise RunNotFoundError(run_id)
        if run.completed_at is not None and run.completed_at <= self._clock() - self._config.updatable_window:
            msg = "Cannot update metadata for a completed run"
            raise RunCompletedError(msg)
        related = self._related(run, request.parent_operations, request.root_operations)
        writes = _RequestWrites(self, related)
        result = update_run(
            run_id,
            request.own_operations,
            read=self._storage.read,
            compare_and_swap=writes.compare_and_swap,
            buffer=writes,
            policy=self._config.policy,
            random=self._random,
            sleep=self._sleep,
            limit=self._limit,
        )
        writes.enqueue_rest()
        metadata = result.metadata
        if self._config.inline_flush:
            if result.status == "buffered":
                metadata = self._settle_own(run_id, result.seq, metadata)
            for target in dict.fromkeys(target for target, _ in related):
                self._flush_committed(target)
        return metadata

    def _settle_own(self, run_id: str, seq: int | None, optimistic: Metadata) -> Metadata:
        for flushed in self._flush_committed(run_id):
            if flushed.plan is None:
                continue
            if any(entry.seq == seq for entry in flushed.plan.applied):
                return flushed.plan.metadata
            for rejection in flushed.plan.rejected:
                if rejection.entry.seq == seq:
                    raise MetadataTooLargeError(rejection.size, rejection.limit)
        return optimistic

    def _flush_committed(self, run_id: str) -> list[FlushResult]:
        """Flush after the request's writes committed: a failure is logged, never raised."""
        results: list[FlushResult] = []
        try:
            self._flush_into(run_id, results)
        except Exception:  # the entries went back to the buffer; the background flusher retries
            _log.exception("inline flush of run %s failed; left to the background flusher", run_id)
        return results

    def _related(
        self, run: RunRecord, parent_ops: Sequence[Operation], root_ops: Sequence[Operation]
    ) -> list[OutboxEntry]:
        entries: list[OutboxEntry] = []
        for target, ops, kind in ((run.parent_id, parent_ops, "parent"), (run.root_id, root_ops, "root")):
            if not ops:
                continue
            if target is None:
                # As the platform does: a run without a parent (or root) has nowhere to send them.
                _log.info("run %s has no %s run: ignoring %d %s operations", run.id, kind, len(ops), kind)
                continue
            entries.append((target, tuple(ops)))
        return entries

    # ------------------------------------------------------------ flushing

    def flush(self, run_id: str) -> list[FlushResult]:
        """Write ``run_id``'s queued operations: at most ``flush_rounds`` batches."""
        results: list[FlushResult] = []
        self._flush_into(run_id, results)
        return results

    def _flush_into(self, run_id: str, results: list[FlushResult]) -> None:
        # Appends as it goes, so that a caller catching an error still sees the rounds done.
        for _ in range(max(1, self._config.flush_rounds)):
            flushed = flush_run(
                self._buffer,
                run_id,
                read=self._storage.read,
                commit=self._commit,
                policy=self._config.policy,
                random=self._random,
                sleep=self._sleep,
                limit=self._limit,
            )
            results.append(flushed)
            for rejection in flushed.rejected:
                _log.warning("run %s: rejected queued operations: %s", run_id, rejection.reason)
            if flushed.status != "committed" or not self._buffer.pending(run_id):
                break

    def _commit(self, run_id: str, expected_version: int, plan: FlushPlan) -> bool:
        return self._storage.commit_flush(run_id, expected_version, plan, self._clock())

    def flush_all(self, timeout: float = 10.0) -> int:
        """Flush until nothing is queued or ``timeout`` seconds pass; return what is left."""
        deadline = time.monotonic() + timeout
        while len(self._buffer) and time.monotonic() < deadline:
            runs = self._buffer.runs()
            if not runs:
                time.sleep(0.002)  # every queued run is being flushed by another thread
            for run_id in runs:
                self.flush(run_id)
        return len(self._buffer)

    def _flush_forever(self) -> None:
        while not self._stop.wait(self._config.flush_interval):
            for run_id in self._buffer.runs():
                try:
                    self.flush(run_id)
                except Exception:  # keep flushing the others; the entries went back to the buffer
                    _log.exception("flushing run %s failed", run_id)

    # ------------------------------------------------------------ admin

    def create_run(
        self,
        run_id: str | None = None,
        *,
        metadata: Metadata | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
    ) -> RunRecord:
        """Create a run. A child's root defaults to its parent's root (or the parent).

        ``metadata`` is checked as a ``PUT`` replacing it would be:
        :class:`~metaops.InvalidRequestError` if it is not JSON metaops takes (nested too
        deeply, say), :class:`~metaops.MetadataTooLargeError` past the limit.
        """
        run_id = run_id or "run_" + secrets.token_hex(10)
        checked = parse_update_request({"metadata": metadata or {}}).metadata
        assert checked is not None
        check_size(checked, self._limit)
        if parent_id is not None and root_id is None:
            parent = self._storage.get_run(parent_id, metadata=False)
            if parent is None:
                raise RunNotFoundError(parent_id)
            root_id = parent.root_id or parent.id
        try:
            return self._storage.create_run(run_id, metadata=checked, parent_id=parent_id, root_id=root_id)
        except KeyError as error:
            raise RunNotFoundError(error.args[0]) from None
        except ValueError as error:
            raise RunExistsError(str(error)) from None

    def complete_run(self, run_id: str, completed_at: float | None = None) -> RunRecord:
        """Mark a run completed (now, or at ``completed_at``, a Unix time)."""
        try:
            return self._storage.complete_run(run_id, self._clock() if completed_at is None else completed_at)
        except KeyError:
            raise RunNotFoundError(run_id) from None

    def describe_run(self, run_id: str) -> dict[str, JSON]:
        """The run's record, its queued entries and its rejections."""
        run = self._storage.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return {
            **run.to_json(),
            "queued": len(self._buffer.pending(run_id)),
            "rejected": self._storage.rejections(run_id),  # type: ignore[dict-item]
        }


class _RequestWrites:
    """One request's writes, so that its parent/root entries commit with whatever it writes first.

    :func:`metaops.server.update_run` calls :meth:`compare_and_swap` (the run's own
    write) or :meth:`add` (its own operations, queued); whichever commits first
    carries the related entries in its transaction. :meth:`enqueue_rest` queues them
    alone when neither committed (nothing needed writing).
    """

    def __init__(self, service: MetadataService, related: list[OutboxEntry]) -> None:
        self._service = service
        self._related = related

    def compare_and_swap(self, run_id: str, expected_version: int, metadata: Metadata) -> bool:
        if not self._related:
            return self._service.storage.compare_and_swap(run_id, expected_version, metadata) is not None
        if not self._service._swap_and_enqueue(run_id, expected_version, metadata, self._related):
            return False
        self._related = []
        return True

    def add(self, run_id: str, operations: Iterable[Operation]) -> int:
        seqs = self._service._enqueue([(run_id, tuple(operations)), *self._related])
        self._related = []
        return seqs[0]

    def busy(self, run_id: str) -> bool:
        return self._service.busy(run_id)

    def enqueue_rest(self) -> None:
        if self._related:
            self._service._enqueue(self._related)
            self._related = []
