"""The metadata service: :mod:`metaops.server`'s pure pieces over a storage, with a cache of hot runs.

One ``PUT`` goes:

1. parse the body (:func:`metaops.server.parse_update_request`; a bad one changes nothing);
2. hold the run for one transaction (:meth:`Storage.write`): a row lock in
   PostgreSQL, the write lock in SQLite, and in this process a lock per run, so
   that writers of one run take turns instead of racing and retrying;
3. bring the run's metadata up to the held version: the cached copy when its version
   is the stored one; otherwise the cached copy with the log entries written since
   (by another process) replayed, or the snapshot and the log when nothing is cached;
4. a repeated ``Idempotency-Key`` stops here: nothing is applied, the answer is the
   current metadata (replayed), with what the request that first used the key carried
   (operations, or none: an empty request that fenced the key);
5. apply the run's own operations with ``apply_sized`` (the size is kept, never
   re-measured), refuse the result over the limit (nothing is written), and write
   the JSON text of the result reusing the text of every subtree the update left
   alone (:class:`~metaops.service._codec.TextCache`);
6. in the same transaction: log the operations (not the metadata; every
   ``snapshot_every`` versions the metadata is written as a new snapshot instead),
   queue the parent and root operations in the outbox, record the key (and whether
   this request carried operations), commit;
7. after the commit, write the queued operations into their runs (each target held
   as in 2.; the batch folded with ``compose``; entries over the limit rejected with
   the reason, never dropped). A failure there is logged, never answered: the
   request has committed. A background thread drains whatever is left, in every
   process, every ``flush_interval`` seconds.

A completed run takes updates for an hour after it completed (the platform's
window), then answers 400. Parent and root operations of a run without a parent (or
that is its own root) apply to the run itself, as the platform does.

Idempotency keys are kept for ``key_retention`` seconds (24 hours by default) after
they were used: a repeat within that time applies nothing, whatever its body.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from metaops._apply import apply_sized
from metaops._errors import (
    InvalidArgumentError,
    InvalidRequestError,
    InvalidValueError,
    MetadataTooLargeError,
)
from metaops._json import JSON, describe
from metaops._size import json_size, json_text, metadata_limit
from metaops._values import Operation, parse_operations
from metaops.server import (
    BufferedEntry,
    OperationBuffer,
    PendingBatch,
    compute_update,
    parse_update_request,
    plan_flush,
    related_targets,
)
from metaops.service._codec import TextCache, loads
from metaops.service._errors import RunCompletedError, RunNotFoundError, ServiceClosingError
from metaops.service._storage import History, KeyUse, OutboxEntry, RunRecord, RunTransaction, Storage

__all__ = ["MetadataService", "RunState", "ServiceConfig", "UpdateOutcome"]

_log = logging.getLogger("metaops.service")

Metadata = dict[str, JSON]

UPDATABLE_WINDOW = 3600.0
"""A completed run takes metadata updates for one hour (the platform's window)."""
KEY_RETENTION = 24 * 3600.0
"""Idempotency keys are kept at least this long (seconds) after their use."""
_MAX_RUN_ID = 255
_LOCK_STRIPES = 64
LATEST_TIME = 253_402_300_799.0
"""9999-12-31T23:59:59Z: the last second a timestamp can name (Realtime writes completedAt)."""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The service's settings; the defaults suit one machine.

    ``limit``: the metadata size limit in bytes (``None``: the environment's
    ``TASK_RUN_METADATA_MAXIMUM_SIZE``, else 256 KB). ``flush_interval``: seconds
    between background drains of the outbox (0: none). ``inline_flush``: drain the
    runs a request queued operations for before answering it. ``snapshot_every``:
    log entries between two snapshots of a run. ``cache_bytes``: JSON bytes of hot
    runs kept in memory (a run takes about ten times its JSON size as Python objects
    and texts: the default, 16 MiB, is about 64 runs of 250 KB in 160 MB).
    ``drain_batch``: queued entries applied per transaction.
    """

    limit: int | None = None
    flush_interval: float = 0.1
    inline_flush: bool = True
    updatable_window: float = UPDATABLE_WINDOW
    key_retention: float = KEY_RETENTION
    snapshot_every: int = 128
    cache_bytes: int = 16 * 1024 * 1024
    drain_batch: int = 1000

    def __post_init__(self) -> None:
        metadata_limit(self.limit)
        for name in ("flush_interval", "updatable_window", "key_retention"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value < float("inf")
            ):
                msg = f"ServiceConfig: {name} must be a number of seconds >= 0, got {value!r}"
                raise InvalidArgumentError(msg)
        for name in ("snapshot_every", "cache_bytes", "drain_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"ServiceConfig: {name} must be an int >= 1, got {value!r}"
                raise InvalidArgumentError(msg)


class RunState:
    """A run's metadata at one version, with its size and JSON text (UTF-8). Read-only."""

    __slots__ = ("metadata", "size", "text", "texts", "version")

    def __init__(self, version: int, metadata: Metadata, size: int, text: bytes, texts: TextCache) -> None:
        self.version = version
        self.metadata = metadata
        self.size = size
        self.text = text
        self.texts = texts

    def __repr__(self) -> str:
        return f"<RunState version {self.version}: {self.size:,} bytes>"


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """What an update answered: the run's state after it, and whether its key was a repeat.

    For a repeat, ``original`` says what the request that first used the key carried
    (:data:`~metaops.service.KeyUse`): a client that fenced the key learns from
    it whether its own earlier body or an empty request (a fence) spent it.
    """

    state: RunState
    replayed: bool = False
    original: KeyUse | None = None


def _operations_text(operations: Sequence[Operation]) -> str:
    return json_text([op.to_wire() for op in operations])


def _successor(state: RunState, version: int, metadata: Metadata, size: int) -> RunState:
    # apply leaves metadata at most MAX_METADATA_DEPTH levels deep (a deeper write is
    # unapplied), and encode takes one frame per level: the text is always written.
    return RunState(version, metadata, size, state.texts.encode(metadata), state.texts)


def _loaded(version: int, text: str) -> RunState:
    metadata = loads(text)
    texts = TextCache()
    return RunState(version, metadata, json_size(metadata), texts.encode(metadata), texts)


def _replayed(base: RunState, history: History) -> RunState:
    """``base`` (at the version the history continues from) with the history's entries applied."""
    metadata, size = base.metadata, base.size
    for entry in history.entries:
        result, size = apply_sized(metadata, parse_operations(loads(entry.operations)), size)
        metadata = result.metadata
    if metadata is base.metadata:
        return RunState(history.version, base.metadata, base.size, base.text, base.texts)
    return RunState(history.version, metadata, size, base.texts.encode(metadata), base.texts)


class MetadataService:
    """Run metadata over a :class:`~metaops.service.Storage`; thread-safe.

    ``clock`` gives Unix seconds (completion windows, key ages, rejection times).
    """

    def __init__(
        self, storage: Storage, config: ServiceConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._storage = storage
        self._config = config or ServiceConfig()
        self._limit = metadata_limit(self._config.limit)
        self._clock = clock
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._cache: OrderedDict[str, RunState] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cached_bytes = 0
        self._closing = False
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._last_expiry = 0.0

    @property
    def storage(self) -> Storage:
        """The storage this service writes to."""
        return self._storage

    @property
    def limit(self) -> int:
        """The metadata size limit in bytes."""
        return self._limit

    @property
    def closing(self) -> bool:
        """Whether :meth:`begin_closing` was called: new work is refused."""
        return self._closing

    def start(self) -> None:
        """Start the background drainer (unless ``flush_interval`` is 0)."""
        if self._config.flush_interval > 0 and self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_forever, name="metaops-drainer", daemon=True)
            self._flusher.start()

    def begin_closing(self) -> None:
        """Refuse new work with :class:`ServiceClosingError`; work in progress goes on."""
        self._closing = True

    def close(self) -> None:
        """Stop the drainer and close the storage; queued operations stay in the outbox."""
        self._closing = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=30)
        self._storage.close()

    def _check_open(self) -> None:
        if self._closing:
            msg = "the service is shutting down; nothing was done"
            raise ServiceClosingError(msg)

    def _lock(self, run_id: str) -> threading.Lock:
        return self._locks[hash(run_id) % _LOCK_STRIPES]

    # ------------------------------------------------------------ the cache

    def _cached(self, run_id: str) -> RunState | None:
        with self._cache_lock:
            return self._cache.get(run_id)

    def _install(self, run_id: str, state: RunState) -> None:
        with self._cache_lock:
            old = self._cache.get(run_id)
            if old is not None:
                if old.version > state.version:
                    return
                self._cached_bytes -= old.size
            self._cache[run_id] = state
            self._cache.move_to_end(run_id)
            self._cached_bytes += state.size
            while self._cached_bytes > self._config.cache_bytes and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.size

    def _current(self, run_id: str, record: RunRecord, history: Callable[[int | None], History]) -> RunState:
        """The run at ``record.version``: cached, caught up from the log, or rebuilt."""
        cached = self._cached(run_id)
        if cached is not None and cached.version == record.version:
            return cached
        since = cached.version if cached is not None and cached.version < record.version else None
        return self._rebuild(run_id, cached, history(since))

    def _rebuild(self, run_id: str, cached: RunState | None, found: History) -> RunState:
        # Without a snapshot, the history continues from the cached version it was asked from.
        base = cached if found.snapshot is None else _loaded(found.snapshot_version, found.snapshot)
        assert base is not None
        assert base.version == found.snapshot_version
        state = _replayed(base, found)
        self._install(run_id, state)
        return state

    # ------------------------------------------------------------ reads

    def get(self, run_id: str) -> RunState:
        """The run's metadata now; :class:`RunNotFoundError` if unknown."""
        self._check_open()
        _nameable(run_id)
        record = self._storage.get_run(run_id)
        if record is None:
            raise RunNotFoundError(run_id)
        cached = self._cached(run_id)
        if cached is not None and cached.version == record.version:
            return cached
        since = cached.version if cached is not None and cached.version < record.version else None
        # One consistent read (it may be newer than the record just read: it is what counts).
        found = self._storage.history(run_id, since)
        if found is None:  # pragma: no cover - runs are never deleted
            raise RunNotFoundError(run_id)
        return self._rebuild(run_id, cached, found)

    # ------------------------------------------------------------ updates

    def update(self, run_id: str, body: object, *, key: str | None = None) -> UpdateOutcome:
        """Handle one update body for ``run_id``, at most once per idempotency ``key``.

        Raises :class:`~metaops.InvalidRequestError`, :class:`RunNotFoundError`,
        :class:`RunCompletedError`, :class:`~metaops.MetadataTooLargeError` (nothing
        is written for any of them), or :class:`~metaops.service.StorageError`.
        """
        self._check_open()
        _nameable(run_id)
        request = parse_update_request(body)
        own = request.own_operations
        now = self._clock()
        with self._lock(run_id), self._storage.write(run_id) as tx:
            assert tx is not None
            record = tx.record
            state = self._current(run_id, record, tx.history)
            used = None if key is None else tx.key_use(key)
            if used is not None:
                return UpdateOutcome(state, replayed=True, original=used)
            window = self._config.updatable_window
            if record.completed_at is not None and record.completed_at <= now - window:
                msg = "Cannot update metadata for a completed run"
                raise RunCompletedError(msg)
            new = state
            if own:
                computed = compute_update(state.metadata, own, limit=self._limit, size=state.size)
                if computed.changed:
                    assert computed.size is not None
                    new = _successor(state, record.version + 1, computed.metadata, computed.size)
                    tx.append(_operations_text(own), snapshot=self._snapshot(record, new))
            targets = related_targets(run_id, record.parent_id, record.root_id, request)
            for target, operations in targets:
                tx.enqueue(target, _operations_text(operations), now)
            if key is not None:
                carried = bool(own or request.parent_operations or request.root_operations)
                tx.use_key(key, now, operations=carried)
        self._install(run_id, new)
        if targets and self._config.inline_flush:
            for target in dict.fromkeys(target for target, _ in targets):
                self._drain_committed(target)
        return UpdateOutcome(new)

    def _snapshot(self, record: RunRecord, new: RunState) -> str | None:
        """The new state's text when it is time for a snapshot (every ``snapshot_every`` versions)."""
        if new.version - record.snapshot_version >= self._config.snapshot_every:
            return new.text.decode()
        return None

    # ------------------------------------------------------------ the outbox

    def drain(self, run_id: str, *, wait: bool = True) -> int:
        """Apply up to ``drain_batch`` of ``run_id``'s queued entries; return how many were settled.

        With ``wait=False``, gives 0 at once if the run is held elsewhere.
        """
        lock = self._lock(run_id)
        if not lock.acquire(blocking=wait):
            return 0
        try:
            with self._storage.write(run_id, wait=wait) as tx:
                if tx is None:
                    return 0
                entries = tx.pending(self._config.drain_batch)
                if not entries:
                    return 0
                record = tx.record
                state = self._current(run_id, record, tx.history)
                buffer = OperationBuffer()
                by_seq: dict[int, OutboxEntry] = {}
                for entry in entries:
                    # They were checked when they arrived; a bad one would have been refused then.
                    buffer.add(run_id, parse_operations(loads(entry.operations)), seq=entry.seq)
                    by_seq[entry.seq] = entry
                batch = buffer.take(run_id)
                assert batch is not None
                now = self._clock()
                try:
                    new = self._apply_batch(tx, record, state, batch.entries, batch.operations, by_seq, now)
                except InvalidValueError:
                    # Nested too deeply to write, all together: each entry alone, so that only
                    # the ones at fault are refused.
                    new = state
                    for one in batch.entries:
                        try:
                            new = self._apply_batch(tx, record, new, (one,), one.operations, by_seq, now)
                        except InvalidValueError as error:
                            reason = f"operations #{one.seq}: {error}"
                            _log.warning("run %s: rejected queued operations: %s", run_id, reason)
                            tx.reject(by_seq[one.seq], reason, now)
            self._install(run_id, new)
            return len(entries)
        finally:
            lock.release()

    def _apply_batch(
        self,
        tx: RunTransaction,
        record: RunRecord,
        state: RunState,
        entries: Sequence[BufferedEntry],
        folded: Sequence[Operation],
        by_seq: dict[int, OutboxEntry],
        now: float,
    ) -> RunState:
        """Write ``entries`` (``folded`` together) onto ``state`` in ``tx``; the state after them.

        Entries over the size limit are rejected with the reason; :class:`InvalidValueError`
        (and nothing written) when the result is nested too deeply to write.
        """
        batch = PendingBatch(record.id, tuple(entries), tuple(folded))
        plan = plan_flush(state.metadata, batch, limit=self._limit, size=state.size)
        new = state
        if plan.changed:
            assert plan.size is not None
            new = _successor(state, state.version + 1, plan.metadata, plan.size)
            tx.append(_operations_text(plan.operations), snapshot=self._snapshot(record, new))
        tx.settle([entry.seq for entry in plan.applied])
        for rejection in plan.rejected:
            _log.warning("run %s: rejected queued operations: %s", record.id, rejection.reason)
            tx.reject(by_seq[rejection.entry.seq], rejection.reason, now)
        return new

    def _drain_committed(self, run_id: str) -> None:
        """Drain after a request committed: a failure is logged, never raised (the request stands).

        When another request of this process is draining the run already, this one does not
        wait for it: that drain, the next one, or the background drainer writes the entry.
        """
        try:
            for _ in range(3):
                if self.drain(run_id, wait=False) < self._config.drain_batch:
                    return
        except Exception:
            _log.exception("inline drain of run %s failed; left to the background drainer", run_id)

    def expire_keys(self) -> int:
        """Forget idempotency keys older than ``key_retention``; how many. The drainer does it each minute."""
        return self._storage.expire_keys(self._clock() - self._config.key_retention)

    def flush_all(self, timeout: float = 10.0) -> int:
        """Drain every queued entry, or until ``timeout`` seconds pass; return how many are left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self._storage.outbox_runs(100)
            if not runs:
                return 0
            for run_id in runs:
                self.drain(run_id)
        return self._storage.outbox_size()

    def _flush_forever(self) -> None:
        while not self._stop.wait(self._config.flush_interval):
            try:
                for run_id in self._storage.outbox_runs(100):
                    if self._stop.is_set():
                        return
                    self.drain(run_id, wait=False)
                now = self._clock()
                if now - self._last_expiry >= 60:
                    self._last_expiry = now
                    self.expire_keys()
            except Exception:  # keep going; the entries stay in the outbox
                if not self._stop.is_set():
                    _log.exception("background drain failed")

    # ------------------------------------------------------------ runs

    def create_run(
        self,
        run_id: str | None = None,
        *,
        metadata: object = None,
        parent_id: str | None = None,
        root_id: str | None = None,
    ) -> RunRecord:
        """Create a run. A child's root defaults to its parent's root (or the parent itself).

        ``metadata`` is checked as a ``PUT`` replacing it would be; ids must be
        non-empty strings of at most 255 characters without ``/`` or NUL, encodable as
        UTF-8 (:class:`~metaops.InvalidRequestError` naming the field otherwise).
        """
        self._check_open()
        run_id = "run_" + secrets.token_hex(12) if run_id is None else _run_id(run_id, "id")
        parent_id = None if parent_id is None else _run_id(parent_id, "parentId")
        root_id = None if root_id is None else _run_id(root_id, "rootId")
        checked = parse_update_request({"metadata": {} if metadata is None else metadata}).metadata
        assert checked is not None
        texts = TextCache()
        size = json_size(checked)
        if size > self._limit:
            raise MetadataTooLargeError(size, self._limit)
        text = texts.encode(checked)
        if parent_id is not None and root_id is None:
            parent = self._storage.get_run(parent_id)
            if parent is None:
                raise RunNotFoundError(parent_id)
            root_id = parent.root_id or parent.id
        record = self._storage.create_run(
            run_id, metadata=text.decode(), parent_id=parent_id, root_id=root_id, created_at=self._clock()
        )
        self._install(run_id, RunState(0, checked, size, text, texts))
        return record

    def complete_run(self, run_id: str, completed_at: float | None = None) -> RunRecord:
        """Mark a run completed (now, or at ``completed_at``, Unix seconds from 0 to
        :data:`LATEST_TIME`: :class:`~metaops.InvalidArgumentError` otherwise)."""
        self._check_open()
        if completed_at is not None and (
            isinstance(completed_at, bool)
            or not isinstance(completed_at, (int, float))
            or not 0 <= completed_at <= LATEST_TIME
        ):
            msg = f"completedAt: expected Unix seconds from 0 to {LATEST_TIME:.0f}, got {completed_at!r}"
            raise InvalidArgumentError(msg)
        _nameable(run_id)
        return self._storage.complete_run(run_id, self._clock() if completed_at is None else completed_at)

    def describe(self, run_id: str) -> dict[str, Any]:
        """The run as the admin route shows it: record, metadata, queued and rejected entries."""
        state = self.get(run_id)
        record = self._storage.get_run(run_id)
        if record is None:  # pragma: no cover - runs are never deleted
            raise RunNotFoundError(run_id)
        return {
            "id": record.id,
            "metadata": state.metadata,
            "version": state.version,
            "parentId": record.parent_id,
            "rootId": record.root_id,
            "completed": record.completed_at is not None,
            "completedAt": record.completed_at,
            "createdAt": record.created_at,
            "queued": self._storage.outbox_size(run_id),
            "rejected": [
                {
                    "seq": r.seq,
                    "operations": loads(r.operations),
                    "reason": r.reason,
                    "rejectedAt": r.rejected_at,
                }
                for r in self._storage.rejections(run_id)
            ],
        }


def _nameable(run_id: str) -> None:
    """:class:`RunNotFoundError` for an id no run can have (PostgreSQL cannot even look it up)."""
    if "\x00" in run_id:
        raise RunNotFoundError(run_id)


def _run_id(value: object, field: str) -> str:
    """A run id as the service takes it, or :class:`InvalidRequestError` naming ``field``."""
    if not isinstance(value, str) or not value:
        msg = f"{field}: expected a non-empty string, got {describe(value)}"
        raise InvalidRequestError(msg, section=field, field=field)
    if "/" in value or len(value) > _MAX_RUN_ID:
        msg = f"{field}: expected at most {_MAX_RUN_ID} characters without '/', got {len(value)} characters"
        raise InvalidRequestError(msg, section=field, field=field)
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; SQLite could, but a run must be the same on both.
        msg = f"{field}: expected text without NUL characters, got one at index {value.index(chr(0))}"
        raise InvalidRequestError(msg, section=field, field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        msg = f"{field}: expected text encodable as UTF-8, got a lone surrogate at index {error.start}"
        raise InvalidRequestError(msg, section=field, field=field) from None
    return value
