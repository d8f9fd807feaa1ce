"""The server side of run metadata, with the storage injected: no I/O here.

Three pieces, each usable alone:

* :func:`parse_update_request` reads the platform's ``PUT /api/v1/runs/{runId}/metadata``
  body, :func:`compute_update` turns it into the new metadata (``apply`` +
  ``check_size``, or ``apply_sized`` when the current size is known, so that the cost
  follows what the operations touch), saying when nothing changed so that nothing is
  written, and :func:`related_targets` says which runs its parent and root
  operations go to.
* :func:`update_run` is the optimistic-concurrency loop: read, compute,
  compare-and-swap, retry with bounded jittered backoff, and on running out of
  attempts hand the operations to a buffer instead of dropping them.
* :class:`OperationBuffer` holds operations that many writers send for one run
  (a child's ``parentOperations``/``rootOperations``), ordered by an arrival
  sequence number, folded with ``compose``; :func:`flush_run` writes each run's
  collapsed batch through the same loop. Operations that would take a run past the
  size limit come back from the flush as :class:`Rejection` values with the reason;
  they are neither retried forever nor dropped silently.

Where the reference platform differs, on purpose: it drops buffered operations over
the limit with a log line, and orders its buffer by ``Date.now()``.
"""

from __future__ import annotations

import bisect
import random as _random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from metaops._apply import ApplyResult, apply, apply_sized
from metaops._collapse import compose
from metaops._errors import (
    InvalidArgumentError,
    InvalidOperationError,
    InvalidRequestError,
    InvalidValueError,
    MetadataTooLargeError,
)
from metaops._json import JSON, describe, describe_json, json_identical, normalize
from metaops._size import json_size, metadata_limit
from metaops._values import Operation, Update, parse_operations

__all__ = [
    "BufferedEntry",
    "ComputedUpdate",
    "FlushPlan",
    "FlushResult",
    "InvalidRequestError",
    "OperationBuffer",
    "OperationSink",
    "PendingBatch",
    "Rejection",
    "RetryPolicy",
    "UpdateRequest",
    "UpdateResult",
    "compute_update",
    "flush_run",
    "parse_update_request",
    "plan_flush",
    "related_targets",
    "update_run",
]

Metadata = dict[str, JSON]
ReadFn = Callable[[str], tuple[Metadata, int]]
"""``read(run_id) -> (metadata, version)``; raises (e.g. ``KeyError``) for an unknown run."""
CompareAndSwapFn = Callable[[str, int, Metadata], bool]
"""``compare_and_swap(run_id, expected_version, new_metadata) -> bool``: False when the version moved."""


# --------------------------------------------------------------------------- request


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """A parsed update body.

    ``operations`` is ``None`` when the body carries no operations list: the
    platform applies a list of operations when there is one, even an empty one,
    otherwise replaces the metadata with ``metadata`` when there is one, and
    otherwise leaves the run's own metadata alone (a body with only parent or root
    operations).
    """

    operations: tuple[Operation, ...] | None
    metadata: Metadata | None = None
    parent_operations: tuple[Operation, ...] = ()
    root_operations: tuple[Operation, ...] = ()

    @property
    def own_operations(self) -> tuple[Operation, ...]:
        """What the request does to its own run: its operations, one ``Update`` that replaces, or nothing."""
        if self.operations is not None:
            return self.operations
        if self.metadata is None:
            return ()
        return (Update._trusted(self.metadata),)


_SECTIONS = ("operations", "parentOperations", "rootOperations")


def parse_update_request(body: object) -> UpdateRequest:
    """The request body ``{"metadata"?, "operations"?, "parentOperations"?, "rootOperations"?}``, checked.

    Accepts what the reference schema accepts (unknown fields are ignored; ``null``
    is not an absent field) and raises :class:`InvalidRequestError` naming the field,
    and for an operation its index and field. A body with only ``parentOperations``
    and/or ``rootOperations`` is accepted, as the platform accepts it (the run's own
    metadata is left alone); a body with none of the four fields is refused.

    >>> request = parse_update_request({"operations": [{"type": "increment", "key": "n", "value": 1}],
    ...                                 "metadata": {"ignored": True}})
    >>> request.operations, request.metadata is not None
    ((Increment(key='n', value=1),), True)
    >>> parse_update_request({"parentOperations": [{"type": "increment", "key": "done", "value": 1}]})
    ... # doctest: +NORMALIZE_WHITESPACE
    UpdateRequest(operations=None, metadata=None, parent_operations=(Increment(key='done', value=1),),
                  root_operations=())
    >>> parse_update_request({"operations": [{"type": "set", "key": "__proto__", "value": 1}]})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    metaops.InvalidRequestError: operations: operation 0: field 'key': expected a safe key, ...
    """
    if not isinstance(body, dict):
        got = describe_json(body)
        msg = f"request body: expected a JSON object with 'operations' or 'metadata', got {got}"
        raise InvalidRequestError(msg, section=None)
    metadata = _parse_metadata(body["metadata"]) if "metadata" in body else None
    sections = {name: _parse_section(body, name) for name in _SECTIONS}
    operations = sections["operations"]
    if metadata is None and all(section is None for section in sections.values()):
        msg = (
            "request body: expected 'operations' (a list), 'metadata' (an object), "
            "'parentOperations' or 'rootOperations', got none of them"
        )
        raise InvalidRequestError(msg, section=None)
    return UpdateRequest(
        operations=operations,
        metadata=metadata,
        parent_operations=sections["parentOperations"] or (),
        root_operations=sections["rootOperations"] or (),
    )


def _parse_metadata(value: object) -> Metadata:
    if not isinstance(value, dict):
        msg = f"metadata: expected an object (the whole metadata), got {describe_json(value)}"
        raise InvalidRequestError(msg, section="metadata", field="metadata")
    try:
        return normalize(value, "metadata", wire=True, metadata=True)  # type: ignore[return-value]
    except InvalidValueError as error:
        raise InvalidRequestError(str(error), section="metadata", field="metadata") from None


def _parse_section(body: dict[str, object], name: str) -> tuple[Operation, ...] | None:
    if name not in body:
        return None
    raw = body[name]
    if not isinstance(raw, list):
        msg = f"{name}: expected a list of operations, got {describe_json(raw)}"
        raise InvalidRequestError(msg, section=name)
    try:
        return parse_operations(raw)
    except InvalidOperationError as error:
        raise InvalidRequestError(
            f"{name}: {error}", section=name, index=error.index, field=error.field
        ) from None


def related_targets(
    run_id: str, parent_id: str | None, root_id: str | None, request: UpdateRequest
) -> tuple[tuple[str, tuple[Operation, ...]], ...]:
    """Where a request's parent and root operations go: ``(run, operations)`` pairs, parent first.

    As the platform does, a run without a parent applies its ``parentOperations`` to
    itself, and a run without a root (a root run, or one that is its own root) its
    ``rootOperations``. Empty sections go nowhere.

    >>> from metaops import Increment
    >>> request = UpdateRequest(
    ...     (), parent_operations=(Increment("done"),), root_operations=(Increment("all"),)
    ... )
    >>> related_targets("child", "parent", "root", request)
    (('parent', (Increment(key='done', value=1),)), ('root', (Increment(key='all', value=1),)))
    >>> related_targets("root", None, None, request)
    (('root', (Increment(key='done', value=1),)), ('root', (Increment(key='all', value=1),)))
    """
    pairs = ((parent_id or run_id, request.parent_operations), (root_id or run_id, request.root_operations))
    return tuple((target, operations) for target, operations in pairs if operations)


@dataclass(frozen=True, slots=True)
class ComputedUpdate:
    """The outcome of applying a request's operations to one version of the metadata.

    ``changed`` is False when nothing needs writing (every operation unapplied, or
    the result identical to the input, key order included); then ``metadata`` is
    the input object itself and ``size`` is the size passed in (``None`` when none
    was: not measured). Otherwise ``size`` is the new JSON size, within the limit.
    """

    metadata: Metadata
    changed: bool
    unapplied: tuple[Operation, ...]
    size: int | None


def compute_update(
    current: Metadata, operations: Sequence[Operation], *, limit: int | None = None, size: int | None = None
) -> ComputedUpdate:
    """Apply ``operations`` to ``current``; :class:`MetadataTooLargeError` past the limit.

    The limit is ``limit``, else ``TASK_RUN_METADATA_MAXIMUM_SIZE``, else 256 KB. A
    result that changes nothing is never measured, so metadata already over a
    lowered limit can still take updates that leave it as it is.

    ``size``, when given, is ``json_size(current)``: the new size is then kept up to
    date by ``apply_sized`` as the operations write, instead of measuring the result,
    so the cost follows what the operations touch rather than the metadata's size.

    >>> from metaops import Increment, Remove
    >>> compute_update({"n": 1}, [Increment("n", 2)])
    ComputedUpdate(metadata={'n': 3}, changed=True, unapplied=(), size=7)
    >>> compute_update({"n": 1}, [Remove("n", 1)]).changed
    False
    >>> compute_update({"n": 1}, [Increment("n", 99)], size=7)
    ComputedUpdate(metadata={'n': 100}, changed=True, unapplied=(), size=9)
    """
    allowed = metadata_limit(limit)
    result, new_size = _apply(current, operations, size)
    if result.metadata is current:
        return ComputedUpdate(current, False, result.unapplied, size)
    if new_size is None:
        new_size = json_size(result.metadata)
    if new_size > allowed:
        raise MetadataTooLargeError(new_size, allowed)
    return ComputedUpdate(result.metadata, True, result.unapplied, new_size)


def _apply(
    current: Metadata, operations: Iterable[Operation], size: int | None
) -> tuple[ApplyResult, int | None]:
    """``apply``, and the result's size when ``size`` (the size of ``current``) is known."""
    if size is None:
        return apply(current, operations), None
    return apply_sized(current, operations, size)


# --------------------------------------------------------------------------- retry


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many compare-and-swap attempts to make and how long to wait between them.

    Before retry ``k`` (0-based) the wait is drawn from ``[cap/2, cap]`` with
    ``cap = min(max_delay, base_delay * factor**k)`` ("equal jitter"): writers that
    collided spread out, and each still waits a little.
    """

    attempts: int = 5
    base_delay: float = 0.005
    factor: float = 2.0
    max_delay: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            msg = f"RetryPolicy: attempts must be an int >= 1, got {self.attempts!r}"
            raise InvalidArgumentError(msg)
        for name in ("base_delay", "factor", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                msg = f"RetryPolicy: {name} must be a number >= 0, got {value!r}"
                raise InvalidArgumentError(msg)

    def delay(self, retry: int, random: Callable[[], float]) -> float:
        """The wait in seconds before retry number ``retry`` (0 for the first retry).

        >>> RetryPolicy(base_delay=0.01, max_delay=0.03).delay(3, lambda: 1.0)
        0.03
        """
        cap = min(self.max_delay, self.base_delay * self.factor**retry)
        return cap / 2 + random() * cap / 2


_T = TypeVar("_T")


def _retry(
    attempt: Callable[[int], _T | None],
    policy: RetryPolicy,
    random: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[_T | None, int]:
    """The one retry loop: ``attempt(number)`` (1-based) until it gives a result or the attempts run out.

    ``None`` from ``attempt`` is a lost race; the wait before the next attempt is
    ``policy.delay``. Returns the result (``None`` when every attempt lost) and how
    many attempts were made.
    """
    for number in range(1, policy.attempts + 1):
        outcome = attempt(number)
        if outcome is not None:
            return outcome, number
        if number < policy.attempts:
            sleep(policy.delay(number - 1, random))
    return None, policy.attempts


class OperationSink(Protocol):
    """Where :func:`update_run` hands operations it could not write itself."""

    def add(self, run_id: str, operations: Iterable[Operation]) -> int:
        """Take ``operations`` for ``run_id``; return their arrival sequence number."""
        ...

    def busy(self, run_id: str) -> bool:
        """Whether operations for ``run_id`` are waiting or being flushed."""
        ...


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What :func:`update_run` did.

    ``status`` is ``"written"`` (committed at ``version``), ``"unchanged"`` (nothing
    to write; ``version`` is the one read) or ``"buffered"`` (handed to the buffer
    under sequence number ``seq``; ``metadata`` is then the optimistic view: the
    operations applied to the last version read, which the flush may still change).
    """

    status: Literal["written", "unchanged", "buffered"]
    metadata: Metadata
    version: int | None
    attempts: int
    unapplied: tuple[Operation, ...] = ()
    seq: int | None = None


def update_run(
    run_id: str,
    operations: Sequence[Operation],
    *,
    read: ReadFn,
    compare_and_swap: CompareAndSwapFn,
    buffer: OperationSink,
    policy: RetryPolicy | None = None,
    random: Callable[[], float] = _random.random,
    sleep: Callable[[float], None] = time.sleep,
    limit: int | None = None,
) -> UpdateResult:
    """Apply ``operations`` to a stored run with optimistic concurrency; never lose them.

    Each attempt reads ``(metadata, version)``, computes the update and, when it
    changes something, swaps it in if the version is still the one read. A lost
    race sleeps ``policy.delay(...)`` and retries; after ``policy.attempts`` lost
    races the operations go to ``buffer``. When ``buffer`` already holds operations
    for the run, these join them without touching the store, so that a writer's
    operations are applied in the order it sent them.

    A batch that would take the run past the limit raises
    :class:`MetadataTooLargeError` before anything is written or buffered.

    >>> from metaops import Increment
    >>> store = {"run": ({"n": 1}, 7)}
    >>> def cas(run_id, version, metadata):
    ...     if store[run_id][1] != version:
    ...         return False
    ...     store[run_id] = (metadata, version + 1)
    ...     return True
    >>> result = update_run("run", [Increment("n")], read=store.__getitem__, compare_and_swap=cas,
    ...                     buffer=OperationBuffer())
    >>> result.status, result.metadata, result.version
    ('written', {'n': 2}, 8)
    """
    policy = policy or RetryPolicy()
    batch = tuple(operations)
    first = read(run_id)
    if not batch:
        return UpdateResult("unchanged", first[0], first[1], 0)
    if buffer.busy(run_id):
        computed = compute_update(first[0], batch, limit=limit)
        seq = buffer.add(run_id, batch)
        return UpdateResult("buffered", computed.metadata, None, 0, computed.unapplied, seq)
    last: list[ComputedUpdate] = []

    def attempt(number: int) -> UpdateResult | None:
        current, version = first if number == 1 else read(run_id)
        computed = compute_update(current, batch, limit=limit)
        last[:] = [computed]
        if not computed.changed:
            return UpdateResult("unchanged", current, version, number, computed.unapplied)
        if compare_and_swap(run_id, version, computed.metadata):
            return UpdateResult("written", computed.metadata, version + 1, number, computed.unapplied)
        return None

    result, attempts = _retry(attempt, policy, random, sleep)
    if result is not None:
        return result
    seq = buffer.add(run_id, batch)
    [computed] = last
    return UpdateResult("buffered", computed.metadata, None, attempts, computed.unapplied, seq)


# --------------------------------------------------------------------------- buffer


@dataclass(frozen=True, slots=True)
class BufferedEntry:
    """Operations one writer sent for ``run_id``, with their arrival sequence number."""

    seq: int
    run_id: str
    operations: tuple[Operation, ...]


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A run's waiting entries, taken out of the buffer for one flush.

    ``operations`` is every entry's operations folded in ``seq`` order with
    ``compose``: the one collapsed batch the flush writes.
    """

    run_id: str
    entries: tuple[BufferedEntry, ...]
    operations: tuple[Operation, ...]

    @property
    def seqs(self) -> tuple[int, ...]:
        """The entries' sequence numbers, ascending."""
        return tuple(entry.seq for entry in self.entries)


class OperationBuffer:
    """Operations for runs, from many writers, waiting to be written.

    Entries are kept in arrival order by sequence number (assigned here, or given by
    the caller when a durable store numbers them), never by wall clock, so the same
    arrivals give the same batches. A run's entries are taken out together
    (:meth:`take`) and either settled once written (:meth:`settle`) or given back
    (:meth:`give_back`), when they rejoin ahead of anything newer. While a run's
    batch is out, the run cannot be taken again: its entries are written one batch
    at a time, in order.

    Thread-safe: request threads add while a flusher takes.

    >>> from metaops import Append, Increment
    >>> buffer = OperationBuffer()
    >>> buffer.add("parent", [Increment("done")]), buffer.add("parent", [Append("log", "b")])
    (1, 2)
    >>> batch = buffer.take("parent")
    >>> batch.seqs, batch.operations
    ((1, 2), (Increment(key='done', value=1), Append(key='log', value='b')))
    >>> buffer.busy("parent"), buffer.take("parent")
    (True, None)
    >>> buffer.settle(batch); buffer.busy("parent")
    False
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_seq = 1
        self._seqs: set[int] = set()
        self._entries: dict[str, list[BufferedEntry]] = {}
        self._folded: dict[str, tuple[Operation, ...]] = {}
        self._out: dict[str, PendingBatch] = {}

    def add(self, run_id: str, operations: Iterable[Operation], *, seq: int | None = None) -> int:
        """Queue ``operations`` for ``run_id``; return their sequence number.

        ``seq`` (a positive int not used before) numbers the entry from outside, e.g.
        a durable outbox's row id; otherwise the next number after every one seen.
        """
        batch = tuple(operations)
        if not isinstance(run_id, str):
            msg = f"OperationBuffer.add: run_id must be a str, got {describe(run_id)}"
            raise InvalidValueError(msg, "run_id")
        with self._lock:
            if seq is None:
                seq = self._next_seq
            elif isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
                msg = f"OperationBuffer.add: seq must be an int >= 1, got {seq!r}"
                raise InvalidArgumentError(msg)
            elif seq in self._seqs:
                msg = f"OperationBuffer.add: seq {seq} is already in the buffer"
                raise InvalidArgumentError(msg)
            self._seqs.add(seq)
            self._next_seq = max(self._next_seq, seq + 1)
            entry = BufferedEntry(seq, run_id, batch)
            entries = self._entries.setdefault(run_id, [])
            if not entries or entries[-1].seq < seq:
                entries.append(entry)
                self._folded[run_id] = compose(self._folded.get(run_id, ()), batch)
            else:
                bisect.insort(entries, entry, key=_by_seq)
                self._folded[run_id] = _fold(entries)
            return seq

    def busy(self, run_id: str) -> bool:
        """Whether ``run_id`` has entries waiting or a batch out for flushing."""
        with self._lock:
            return run_id in self._entries or run_id in self._out

    def take(self, run_id: str) -> PendingBatch | None:
        """All of ``run_id``'s waiting entries as one batch; ``None`` if none, or one is already out."""
        with self._lock:
            if run_id in self._out or run_id not in self._entries:
                return None
            entries = self._entries.pop(run_id)
            batch = PendingBatch(run_id, tuple(entries), self._folded.pop(run_id))
            self._out[run_id] = batch
            return batch

    def settle(self, batch: PendingBatch) -> None:
        """Forget a taken batch: it was written (or rejected, and reported)."""
        with self._lock:
            self._release(batch)
            self._seqs.difference_update(batch.seqs)

    def give_back(self, batch: PendingBatch) -> None:
        """Return a taken batch unwritten; its entries go before any that arrived since."""
        with self._lock:
            self._release(batch)
            entries = sorted((*batch.entries, *self._entries.get(batch.run_id, ())), key=_by_seq)
            if entries:
                self._entries[batch.run_id] = entries
                self._folded[batch.run_id] = _fold(entries)

    def _release(self, batch: PendingBatch) -> None:
        if self._out.get(batch.run_id) is not batch:
            msg = f"OperationBuffer: this batch for run {batch.run_id!r} is not the one taken out"
            raise InvalidArgumentError(msg)
        del self._out[batch.run_id]

    def runs(self) -> tuple[str, ...]:
        """The runs with entries that can be taken now, oldest first entry first."""
        with self._lock:
            ready = [(entries[0].seq, run) for run, entries in self._entries.items() if run not in self._out]
        return tuple(run for _, run in sorted(ready))

    def pending(self, run_id: str) -> tuple[BufferedEntry, ...]:
        """``run_id``'s waiting entries (not those taken out), in order."""
        with self._lock:
            return tuple(self._entries.get(run_id, ()))

    def __len__(self) -> int:
        """How many entries are waiting or out for flushing."""
        with self._lock:
            return sum(map(len, self._entries.values())) + sum(len(b.entries) for b in self._out.values())

    def __repr__(self) -> str:
        entries = len(self)
        with self._lock:
            runs = len(self._entries.keys() | self._out.keys())
        return f"<OperationBuffer: {entries} entries for {runs} runs>"


def _by_seq(entry: BufferedEntry) -> int:
    return entry.seq


def _fold(entries: Iterable[BufferedEntry]) -> tuple[Operation, ...]:
    folded: tuple[Operation, ...] = ()
    for entry in entries:
        folded = compose(folded, entry.operations)
    return folded


# --------------------------------------------------------------------------- flush


@dataclass(frozen=True, slots=True)
class Rejection:
    """An entry a flush refused because it would take its run past the size limit.

    ``size`` is the JSON size it would give the run.
    """

    entry: BufferedEntry
    reason: str
    size: int
    limit: int


@dataclass(frozen=True, slots=True)
class FlushPlan:
    """What writing a :class:`PendingBatch` onto one version of a run amounts to.

    ``applied`` entries are in ``metadata``; ``rejected`` ones are not (each with its
    reason); together they are the whole batch. ``changed`` is False when there is
    nothing to write (the store should still check the version, and then drop the
    entries). ``unapplied`` lists operations the apply did not apply (of the folded
    batch, or of the applied entries when some were rejected). ``operations`` are
    what was applied to the input to give ``metadata`` (empty when nothing changed):
    a store that logs operations instead of the whole metadata writes these.
    ``size`` is the JSON size of ``metadata`` when it was known or measured.
    """

    run_id: str
    metadata: Metadata
    changed: bool
    applied: tuple[BufferedEntry, ...]
    rejected: tuple[Rejection, ...] = ()
    unapplied: tuple[Operation, ...] = ()
    operations: tuple[Operation, ...] = ()
    size: int | None = None

    @property
    def seqs(self) -> tuple[int, ...]:
        """Every sequence number the plan settles (applied and rejected)."""
        return tuple(sorted((*(e.seq for e in self.applied), *(r.entry.seq for r in self.rejected))))


def plan_flush(
    current: Metadata, batch: PendingBatch, *, limit: int | None = None, size: int | None = None
) -> FlushPlan:
    """The new metadata for ``batch`` written onto ``current``, within the size limit.

    The folded batch is applied in one go. Only when the result is over the limit
    are the entries applied one by one, in ``seq`` order, each one skipped (and
    reported as a :class:`Rejection`) when it would leave the metadata over the
    limit, so that one oversized writer does not cost the others their updates.
    ``size``, when given, is ``json_size(current)``, kept up to date as in
    :func:`compute_update` instead of measuring.

    >>> from metaops import Append, Increment
    >>> buffer = OperationBuffer()
    >>> _ = buffer.add("p", [Increment("n")]); _ = buffer.add("p", [Append("log", "x" * 50)])
    >>> plan = plan_flush({"n": 0}, buffer.take("p"), limit=40)
    >>> plan.metadata, [r.entry.seq for r in plan.rejected], plan.operations
    ({'n': 1}, [2], (Increment(key='n', value=1),))
    """
    allowed = metadata_limit(limit)
    result, new_size = _apply(current, batch.operations, size)
    if result.metadata is current:
        return FlushPlan(batch.run_id, current, False, batch.entries, (), result.unapplied, (), size)
    if new_size is None:
        new_size = json_size(result.metadata)
    if new_size <= allowed:
        return FlushPlan(
            batch.run_id,
            result.metadata,
            True,
            batch.entries,
            (),
            result.unapplied,
            batch.operations,
            new_size,
        )
    state, state_size = current, size
    applied: list[BufferedEntry] = []
    rejected: list[Rejection] = []
    unapplied: list[Operation] = []
    for entry in batch.entries:
        step, step_size = _apply(state, entry.operations, state_size)
        if step.metadata is not state:
            if step_size is None:
                step_size = json_size(step.metadata)
            what = f"operations #{entry.seq}"
            if step_size > allowed:
                reason = (
                    f"{what} would make the metadata of run {batch.run_id!r} "
                    f"{step_size:,} bytes of JSON, over the limit of {allowed:,} bytes"
                )
                rejected.append(Rejection(entry, reason, step_size, allowed))
                continue
        # Without a known size to start from, each step is measured, never carried over.
        state, state_size = step.metadata, (step_size if size is not None else None)
        applied.append(entry)
        unapplied.extend(step.unapplied)
    # Both nest at most MAX_METADATA_DEPTH levels (apply's depth invariant): comparable.
    changed = state is not current and not json_identical(state, current)
    return FlushPlan(
        batch.run_id,
        state if changed else current,
        changed,
        tuple(applied),
        tuple(rejected),
        tuple(unapplied),
        tuple(op for entry in applied for op in entry.operations) if changed else (),
        state_size if changed else size,
    )


CommitFn = Callable[[str, int, FlushPlan], bool]
"""``commit(run_id, expected_version, plan) -> bool``: write ``plan`` atomically if the version is unchanged.

Atomically: the new metadata with the version bumped (only when ``plan.changed``), and
whatever the store keeps to forget ``plan.seqs`` and to report ``plan.rejected``. The
version is checked even when nothing changed: the batch is then settled as applied at
that version. False when the version moved.
"""


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What :func:`flush_run` did for one run.

    ``status``: ``"committed"`` (``plan`` written at ``version``), ``"idle"`` (nothing
    waiting), ``"busy"`` (another flush has the run's batch out) or ``"deferred"``
    (every attempt lost its race; the entries are back in the buffer).
    """

    run_id: str
    status: Literal["committed", "idle", "busy", "deferred"]
    plan: FlushPlan | None = None
    version: int | None = None
    attempts: int = 0
    rejected: tuple[Rejection, ...] = field(default=())


def flush_run(
    buffer: OperationBuffer,
    run_id: str,
    *,
    read: ReadFn,
    commit: CommitFn,
    policy: RetryPolicy | None = None,
    random: Callable[[], float] = _random.random,
    sleep: Callable[[float], None] = time.sleep,
    limit: int | None = None,
) -> FlushResult:
    """Write ``run_id``'s waiting entries as one collapsed batch, with the retry loop of :func:`update_run`.

    Entries over the size limit are settled as rejected (in the result, for the
    caller to report); entries whose every attempt lost the race go back to the
    buffer for a later flush. If ``read`` or ``commit`` raises, the entries go back
    and the error propagates.

    >>> from metaops import Increment
    >>> store = {"parent": ({"done": 0}, 1)}
    >>> def commit(run_id, version, plan):
    ...     store[run_id] = (plan.metadata, version + 1)
    ...     return True
    >>> buffer = OperationBuffer()
    >>> for child in range(3):
    ...     _ = buffer.add("parent", [Increment("done")])
    >>> flush_run(buffer, "parent", read=store.__getitem__, commit=commit).plan.metadata
    {'done': 3}
    """
    policy = policy or RetryPolicy()
    batch = buffer.take(run_id)
    if batch is None:
        return FlushResult(run_id, "busy" if buffer.busy(run_id) else "idle")

    def attempt(number: int) -> FlushResult | None:
        current, version = read(run_id)
        plan = plan_flush(current, batch, limit=limit)
        if not commit(run_id, version, plan):
            return None
        written = version + 1 if plan.changed else version
        return FlushResult(run_id, "committed", plan, written, number, plan.rejected)

    try:
        result, attempts = _retry(attempt, policy, random, sleep)
    except BaseException:
        buffer.give_back(batch)
        raise
    if result is None:
        buffer.give_back(batch)
        return FlushResult(run_id, "deferred", None, None, attempts)
    buffer.settle(batch)
    return result
