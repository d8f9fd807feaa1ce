"""The SDK side of run metadata: a buffer that applies each call locally and queues it.

:class:`RunMetadata` is what a Python task SDK embeds behind its ``metadata``
object. It holds the run's metadata, applies every call at once (so ``current()``
and ``get()`` see it), enforces the size limit on every call, and queues the
operations for the host to send: there is no network code here. The host drains a
:class:`Flush`, sends its bodies, and then hands back the server's answer
(:meth:`RunMetadata.accept`), the failed flush to retry (:meth:`RunMetadata.restore`),
or the flush the platform refused for good (:meth:`RunMetadata.reject`).

>>> from metaops.buffer import RunMetadata
>>> md = RunMetadata({"status": "queued"})
>>> md.set("status", "processing").increment("rows", 2).append("logs", "started")
RunMetadata({'status': 'processing', 'rows': 2, 'logs': ['started']}, is_root=True, limit=262144)
>>> md.get("logs")
ListView(['started'])
>>> flush = md.drain()
>>> flush.bodies[0]["operations"][1]
{'type': 'increment', 'key': 'rows', 'value': 2}
>>> md.accept(flush, {"status": "processing", "rows": 2, "logs": ["started"]})

Every call costs what it touches: :func:`metaops._apply.apply_sized` copies only
the containers on the written path and keeps the JSON size up to date from what
each write adds and removes, so nothing re-serializes the whole metadata.

The store is never mutated in place: every call builds a new top-level dict that
shares the untouched subtrees with the previous one. That is what makes
:meth:`RunMetadata.current` a consistent, read-only snapshot.

Where this differs from the reference SDK (``StandardMetadataManager`` in
``@trigger.dev/core`` 4.8.3), on purpose:

* a call with a non-JSON value, a wrong argument type or an unsafe key raises at
  once, and one that would take the metadata past the size limit raises
  :class:`~metaops.MetadataTooLargeError`; the reference's manager checks neither
  at the call (the platform refuses the flush);
* an unapplied call is reported (:attr:`RunMetadata.unapplied`, ``Flush.unapplied``)
  where the reference drops it silently;
* ``decrement(key, n)`` sends ``increment(key, -n)`` on the parent and root too
  (the reference sends ``-abs(n)`` there);
* a failed flush is put back (:meth:`RunMetadata.restore`), a refused one is kept
  with its reason (:meth:`RunMetadata.reject`), and a successful one keeps what was
  queued meanwhile (:meth:`RunMetadata.accept`); the reference logs a failure and
  drops the operations, and overwrites its store with the response, losing the
  calls made during the request;
* ``get`` takes ``$.`` paths, as the update methods do (the reference's ``getKey``
  reads a top-level key, whatever it holds);
* bodies are split under the request limit.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from metaops._apply import apply_sized
from metaops._arguments import checked_key, checked_metadata
from metaops._bodies import (
    KEY_CHAR_MAX_BYTES,
    NUMBER_TEXT_MAX_BYTES,
    OPERATION_FRAME_BYTES,
    WRAPPER_BYTES,
    Flush,
)
from metaops._collapse import MAX_REQUEST_BYTES, collapse
from metaops._errors import (
    FlushInFlightError,
    InvalidArgumentError,
    InvalidValueError,
    MetadataTooLargeError,
)
from metaops._json import JSON, MISSING, describe
from metaops._paths import NOTHING, SAFE_KEYS, first, key_facts, match
from metaops._size import json_size, metadata_limit, value_size
from metaops._updates import CallNames, UpdateMethods
from metaops._values import Operation, call_text
from metaops._views import DictView, ListView, view

__all__ = [
    "DictView",
    "Flush",
    "FlushInFlightError",
    "ListView",
    "MetadataUpdater",
    "RejectedFlush",
    "RunMetadata",
]

_Target = Literal["parent", "root"]


class RejectedFlush(NamedTuple):
    """A flush the platform refused for good, set aside by :meth:`RunMetadata.reject`.

    The pair ``(flush, reason)``: ``flush`` is what was refused (its operations are
    not sent again) and ``reason`` why, in the host's words (the server's error
    message, say).

    >>> md = RunMetadata()
    >>> md.reject(md.set("a", 1).drain(), "400: invalid body")
    >>> flush, reason = md.rejected[0]
    >>> flush.operations, reason
    ((Set(key='a', value=1),), '400: invalid body')
    """

    flush: Flush
    reason: str


class RunMetadata(UpdateMethods):
    """A run's metadata as the task sees it, and the operations queued for the platform.

    ``metadata`` is the run's metadata when it starts (a dict, copied). ``is_root``
    says the run has no parent; then :attr:`parent` and :attr:`root` act on the run
    itself, as in the reference SDK. ``limit`` is the size limit in bytes (else
    ``TASK_RUN_METADATA_MAXIMUM_SIZE``, else 262,144); ``max_request_bytes`` bounds
    each request body of a :class:`Flush`.

    Every update method returns the object, so calls chain. A call is *applied*
    (changes the metadata, and is queued), *changes nothing* (not queued), is
    *unapplied* (a ``remove`` from something that is not a list; not queued, and
    reported in :attr:`unapplied` and the next :class:`Flush`), or is *refused* with
    an error before anything changes: :class:`~metaops.InvalidValueError` (a
    ``TypeError``) for a value that is not JSON or an argument of the wrong type,
    :class:`~metaops.InvalidOperationError` for an unsafe key,
    :class:`~metaops.MetadataTooLargeError` for a call that would take the
    metadata past the limit, that is, leave it over the limit and larger than it
    was (or for an operation too large for any request body).

    Safe to call from several threads.

    >>> md = RunMetadata({"progress": 0.1}, is_root=False)
    >>> md.increment("progress", 0.4).get("progress")
    0.5
    >>> md.parent.increment("processedRows").append("rowRuns", "run_1")
    MetadataUpdater(target='parent')
    >>> md.current()
    DictView({'progress': 0.5})
    >>> md.drain().parent_operations
    (Increment(key='processedRows', value=1), Append(key='rowRuns', value='run_1'))
    """

    __slots__ = (
        "_body_room",
        "_flight",
        "_is_root",
        "_limit",
        "_lock",
        "_max_request_bytes",
        "_parent",
        "_parent_queue",
        "_queue",
        "_rejected",
        "_root",
        "_root_queue",
        "_shown",
        "_state",
        "_unapplied",
    )
    _names = CallNames.prefixed("")

    def __init__(
        self,
        metadata: Mapping[str, object] | None = None,
        *,
        is_root: bool = True,
        limit: int | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        if not isinstance(is_root, bool):
            msg = f"RunMetadata: is_root must be a bool, got {describe(is_root)}"
            raise InvalidValueError(msg, "is_root")
        allowed = metadata_limit(limit)
        store = {} if metadata is None else checked_metadata(metadata, "RunMetadata")
        size = json_size(store)
        if size > allowed:
            raise MetadataTooLargeError(size, allowed)
        # Validated by the constructor every Flush goes through.
        Flush(max_bytes=max_request_bytes)
        self._limit = allowed
        self._max_request_bytes = max_request_bytes
        self._body_room = max_request_bytes - WRAPPER_BYTES - OPERATION_FRAME_BYTES - NUMBER_TEXT_MAX_BYTES
        self._is_root = is_root
        self._lock = threading.Lock()
        # (metadata, its JSON size): replaced as one value, so a reader never sees a torn pair.
        self._state: tuple[dict[str, JSON], int] = (store, size)
        # The view current() last handed out: made again only once the metadata changed.
        self._shown: DictView | None = None
        self._queue: list[Operation] = []
        self._parent_queue: list[Operation] = []
        self._root_queue: list[Operation] = []
        self._unapplied: list[Operation] = []
        self._rejected: tuple[RejectedFlush, ...] = ()
        # The flush out for delivery; _DRAINING while drain() builds it.
        self._flight: Flush | object | None = None
        self._parent = MetadataUpdater(self, "parent")
        self._root = MetadataUpdater(self, "root")

    # ----------------------------------------------------------------- reading

    def current(self) -> DictView:
        """The metadata now, as a read-only ``dict`` (a snapshot later calls do not change).

        It works wherever a dict of JSON does (``json.dumps``, :func:`metaops.json_size`,
        ``==``), and nothing done to it, or to the views nested in it, reaches the
        buffer (see :class:`DictView`). Its cost is the number of top-level keys, paid
        once per change of the metadata: between two changes, every call returns the
        same view.

        >>> import json
        >>> md = RunMetadata({"n": 1})
        >>> before = md.current()
        >>> md.increment("n").current(), before, json.dumps(before)
        (DictView({'n': 2}), DictView({'n': 1}), '{"n": 1}')
        """
        metadata = self._state[0]
        shown = self._shown
        if shown is None or shown._data is not metadata:
            shown = view(metadata)
            self._shown = shown
        return shown

    def get(self, key: str) -> Any:
        """The value at ``key`` (read-only views for containers); ``None`` when there is none.

        ``key`` is what the update methods take: a top-level key, read literally, or a
        ``$.`` path. Through wildcards or slices, a path reads what an update at that
        key reads (an ``increment`` adds to it): its first match, a list found through
        ``d`` of them flattened ``d`` levels (the reference's ``first``). An unsafe key
        is refused as the update methods refuse it.

        >>> md = RunMetadata({"n": 1, "logs": ["a"], "runs": [{"rows": 2}, {"rows": 5}]})
        >>> md.get("n"), md.get("logs"), md.get("absent")
        (1, ListView(['a']), None)
        >>> md.get("$.runs.1.rows"), md.get("$.runs.*.rows"), md.get("$.logs.7")
        (5, 2, None)
        """
        if type(key) is not str or key not in SAFE_KEYS:
            key = checked_key(key, "get")
        metadata = self._state[0]
        if not key.startswith("$."):
            return view(metadata.get(key))
        found = first(match(metadata, key_facts(key).components))  # type: ignore[arg-type]
        return None if found is MISSING or found is NOTHING else view(found)  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        """The JSON size of :meth:`current` in bytes, kept up to date call by call."""
        return self._state[1]

    @property
    def limit(self) -> int:
        """The size limit in bytes."""
        return self._limit

    @property
    def is_root(self) -> bool:
        """Whether the run has no parent (then :attr:`parent` and :attr:`root` act on it)."""
        return self._is_root

    @property
    def parent(self) -> MetadataUpdater:
        """Updates to the parent run's metadata (this run's own when it is the root)."""
        return self._parent

    @property
    def root(self) -> MetadataUpdater:
        """Updates to the root run's metadata (this run's own when it is the root)."""
        return self._root

    @property
    def pending(self) -> bool:
        """Whether operations are queued (not counting a flush in flight)."""
        return bool(self._queue or self._parent_queue or self._root_queue)

    @property
    def in_flight(self) -> Flush | None:
        """The flush drained and not yet accepted, restored or rejected, if any."""
        flight = self._flight
        return flight if isinstance(flight, Flush) else None

    @property
    def unapplied(self) -> tuple[Operation, ...]:
        """The run's own calls reported unapplied since the last drain, in order.

        Their values are shared, not copied (see :class:`Flush`): read-only.

        >>> RunMetadata({"n": 1}).remove("n", 1).unapplied
        (Remove(key='n', value=1),)
        """
        with self._lock:
            return tuple(self._unapplied)

    @property
    def rejected(self) -> tuple[RejectedFlush, ...]:
        """Every flush set aside by :meth:`reject`, with its reason, oldest first."""
        return self._rejected

    # ----------------------------------------------------------------- updating

    def _enqueue(self, op: Operation) -> None:
        """Apply ``op`` to the metadata and queue it, unless it changes nothing or is refused."""
        state = self._state
        # Applied outside the lock; redone inside only if another call got in between.
        result, size = apply_sized(state[0], op, state[1])
        # A value that is only matched (a remove's) need not be in the metadata (a wildcard
        # can apply it where no item equals it), so the metadata's size does not bound it.
        role = op._value_role
        value_bytes = value_size(op.value) if role == "matched" else 0  # type: ignore[union-attr]
        with self._lock:
            if self._state is not state:
                state = self._state
                result, size = apply_sized(state[0], op, state[1])
            metadata, unapplied = result
            if unapplied:
                self._unapplied.append(op)
                return
            if metadata is state[0]:
                return
            # Past the limit means ending over it and larger than before: metadata already
            # over it (an adopted server answer) can still shrink, or change in place.
            if size > self._limit and size > state[1]:
                raise MetadataTooLargeError(size, self._limit, what=f"metadata after {call_text(op)}")
            # Every queued operation must fit a request body alone, or no drain could send
            # it. Its JSON is at most its key and its value: a stored value (a set's, an
            # append's, a replacement's) is now in the metadata, so within ``size``; an
            # amount is a number, within the body room; a matched one was measured above.
            # Only when that bound could overflow a body is the operation itself measured.
            bound = size if role == "stored" else value_bytes
            if op._keyed:
                bound += len(op.key) * KEY_CHAR_MAX_BYTES  # type: ignore[union-attr]
            if bound > self._body_room:
                self._check_body(op)
            self._state = (metadata, size)
            self._queue.append(op)

    def _remote(self, target: _Target, op: Operation) -> None:
        """Queue ``op`` for the parent or the root run (this run itself when it is the root)."""
        if self._is_root:
            self._enqueue(op)
            return
        # The other run's metadata is not here: refuse only what could never succeed.
        role = op._value_role
        value_bytes = 0 if role is None else value_size(op.value)  # type: ignore[union-attr]
        if value_bytes > self._limit and role == "stored":
            # A stored value ends up in the metadata whole: alone it is over the limit.
            raise MetadataTooLargeError(
                value_bytes, self._limit, what=f"the value of {target}.{call_text(op)}"
            )
        key_bytes = len(op.key) * KEY_CHAR_MAX_BYTES if op._keyed else 0  # type: ignore[union-attr]
        if WRAPPER_BYTES + OPERATION_FRAME_BYTES + key_bytes + value_bytes > self._max_request_bytes:
            self._check_body(op)
        with self._lock:
            if target == "parent":
                self._parent_queue.append(op)
            else:
                self._root_queue.append(op)

    def _check_body(self, op: Operation) -> None:
        """Refuse ``op`` if its JSON cannot fit in a request body even alone."""
        size = WRAPPER_BYTES + json_size(op.to_wire())
        if size > self._max_request_bytes:
            raise MetadataTooLargeError(
                size, self._max_request_bytes, what=f"a request body holding only {call_text(op)}"
            )

    # ----------------------------------------------------------------- flushing

    def drain(self) -> Flush:
        """Take everything queued as one :class:`Flush`, which is then in flight.

        Resolve it with :meth:`accept` (the platform took it), :meth:`restore` (it
        failed; it is sent again) or :meth:`reject` (the platform refused it for good)
        before draining again: :class:`FlushInFlightError` otherwise. A flush with
        nothing to send is not in flight (it may still report ``unapplied``). The
        run's final flush is a drain too; send ``flush.packet()`` with the completion.

        >>> md = RunMetadata()
        >>> flush = md.set("a", 1).increment("n").increment("n").drain()
        >>> flush.operations
        (Set(key='a', value=1), Increment(key='n', value=2))
        >>> md.in_flight is flush
        True
        """
        with self._lock:
            if self._flight is not None:
                msg = "drain: a flush is in flight; accept(), restore() or reject() it first"
                raise FlushInFlightError(msg)
            taken = (self._queue, self._parent_queue, self._root_queue)
            unapplied = tuple(self._unapplied)
            self._unapplied = []
            if not any(taken):
                return Flush(unapplied=unapplied, max_bytes=self._max_request_bytes)
            self._queue, self._parent_queue, self._root_queue = [], [], []
            self._flight = _DRAINING
        try:
            try:
                flush = Flush(
                    collapse(taken[0]),
                    collapse(taken[1]),
                    collapse(taken[2]),
                    unapplied,
                    max_bytes=self._max_request_bytes,
                )
            except MetadataTooLargeError:
                # Collapsing merged operations into one too large for a body (a replacement
                # absorbing the writes after it). Each queued operation was checked to fit
                # alone, so the batches as queued can always be sent.
                flush = Flush(
                    tuple(taken[0]),
                    tuple(taken[1]),
                    tuple(taken[2]),
                    unapplied,
                    max_bytes=self._max_request_bytes,
                )
        except BaseException:
            # (A KeyboardInterrupt or MemoryError in the middle of collapsing, say:
            # nothing taken may be lost.)
            with self._lock:
                self._requeue(taken)
                self._unapplied[:0] = unapplied
                self._flight = None
            raise
        with self._lock:
            # Collapsing can leave nothing to send (operations no metadata can match): a
            # host sends nothing then, and must not be left owing an accept or restore.
            self._flight = flush if flush else None
        return flush

    def restore(self, flush: Flush, *, delivered: int = 0) -> None:
        """Put back a flush that failed, ahead of everything queued since; the next drain resends it.

        ``delivered`` is how many of its bodies the platform did take (they were sent
        in order and the later ones failed): only the rest is put back. The local
        metadata stays as it is; it already shows every queued call. The flush's
        ``unapplied`` reports are not put back: they were handed out with it.

        >>> md = RunMetadata()
        >>> failed = md.set("status", "a").drain()
        >>> md.append("logs", "meanwhile").restore(failed)
        >>> md.drain().operations
        (Set(key='status', value='a'), Append(key='logs', value='meanwhile'))
        """
        if isinstance(delivered, bool) or not isinstance(delivered, int):
            msg = f"restore: delivered must be an int, got {describe(delivered)}"
            raise InvalidValueError(msg, "delivered")
        with self._lock:
            self._check_flight(flush, "restore")
            bodies = len(flush.texts())
            if not 0 <= delivered <= bodies:
                msg = f"restore: delivered must be between 0 and {bodies} (the bodies), got {delivered}"
                raise InvalidArgumentError(msg)
            self._requeue(flush._after(delivered))
            self._flight = None

    def reject(self, flush: Flush, reason: str) -> None:
        """Set aside a flush the platform refused for good (a 400, 413, ...), with ``reason``.

        The flush leaves flight and its operations are not queued again: they are kept,
        with the reason, in :attr:`rejected` for the host to report or inspect. The
        local metadata is left as it is (it still shows the refused calls); the next
        :meth:`accept` adopts the server's metadata and applies what was queued since,
        which heals any difference. Calls and drains go on as before.

        >>> md = RunMetadata()
        >>> refused = md.set("status", "x" * 10).drain()
        >>> md.increment("n").reject(refused, "413: the metadata is too large")
        >>> md.in_flight, md.get("status"), md.drain().operations
        (None, 'xxxxxxxxxx', (Increment(key='n', value=1),))
        >>> md.rejected[0].flush is refused, md.rejected[0].reason
        (True, '413: the metadata is too large')
        """
        if not isinstance(reason, str):
            msg = f"reject: reason must be a str, got {describe(reason)}"
            raise InvalidValueError(msg, "reason")
        with self._lock:
            self._check_flight(flush, "reject")
            self._rejected = (*self._rejected, RejectedFlush(flush, str.__str__(reason)))
            self._flight = None

    def _requeue(self, ops: Sequence[Sequence[Operation]]) -> None:
        """Put ``ops`` (self, parent, root) ahead of the queues, in new lists.

        Queues only ever grow in place by appending: accept() relies on that to
        re-apply the part of a queue it has not seen yet.
        """
        self._queue = [*ops[0], *self._queue]
        self._parent_queue = [*ops[1], *self._parent_queue]
        self._root_queue = [*ops[2], *self._root_queue]

    def accept(self, flush: Flush, metadata: Mapping[str, object]) -> None:
        """The platform took ``flush`` and answered with the run's ``metadata``: adopt it.

        What was queued while the flush was in flight is applied again on top, so
        the local metadata keeps showing it (it is still queued for the next drain).
        The size is measured once; the limit is not enforced here (the server's
        metadata is what it is). While the metadata is over the limit, a call that
        does not make it larger is allowed, and one that does is refused.
        With an empty ``Flush()`` and nothing in flight, this is a refresh.

        >>> md = RunMetadata()
        >>> flush = md.increment("n").drain()
        >>> md.append("logs", "meanwhile").accept(flush, {"n": 1, "fromChild": True})
        >>> md.current()
        DictView({'n': 1, 'fromChild': True, 'logs': ['meanwhile']})
        """
        store = checked_metadata(metadata, "accept")
        size = json_size(store)
        queue = self._queue
        seen = len(queue)
        result, size = apply_sized(store, queue[:seen], size)
        with self._lock:
            self._check_flight(flush, "accept")
            if self._queue is queue:
                result, size = apply_sized(result.metadata, queue[seen:], size)
            else:  # drained and restored in between (a refresh raced a drain): start over
                result, size = apply_sized(store, self._queue, json_size(store))
            self._state = (result.metadata, size)
            self._flight = None

    def _check_flight(self, flush: Flush, method: str) -> None:
        if not isinstance(flush, Flush):
            msg = f"{method}: expected the Flush that drain() returned, got {describe(flush)}"
            raise InvalidValueError(msg, "flush")
        flight = self._flight
        if flight is None and not flush:
            return
        if not isinstance(flight, Flush) or (flush is not flight and flush != flight):
            if isinstance(flight, Flush):
                msg = f"{method}: this flush is not the one in flight"
            elif flight is _DRAINING:
                msg = f"{method}: a flush is being drained; only that one can be {method}ed next"
            else:
                msg = f"{method}: no flush is in flight (only an empty one can be {method}ed now)"
            raise InvalidArgumentError(msg)

    def __repr__(self) -> str:
        body = (
            ""
            if self._max_request_bytes == MAX_REQUEST_BYTES
            else f", max_request_bytes={self._max_request_bytes}"
        )
        return f"RunMetadata({self._state[0]!r}, is_root={self._is_root}, limit={self._limit}{body})"


_DRAINING = object()


class MetadataUpdater(UpdateMethods):
    """The update methods for the parent or the root run, queued to their own list.

    The other run's metadata is not here, so nothing is applied locally; a call is
    validated (JSON values, safe keys) and refused only when it could never
    succeed (a value larger than the limit, an operation too large for a request
    body). When this run is the root, the calls act on the run itself.

    >>> md = RunMetadata(is_root=False)
    >>> md.parent.increment("processedRows").append("runs", "run_1") is md.parent
    True
    >>> md.current(), md.drain().parent_operations
    (DictView({}), (Increment(key='processedRows', value=1), Append(key='runs', value='run_1')))
    >>> own = RunMetadata()  # a root run: its parent and root are itself
    >>> own.root.increment("n", 2) is own.root, own.get("n")
    (True, 2)
    """

    __slots__ = ("_names", "_owner", "_target")

    def __init__(self, owner: RunMetadata, target: _Target) -> None:
        self._owner = owner
        self._target: _Target = target
        self._names = CallNames.prefixed(f"{target}.")

    def _enqueue(self, op: Operation) -> None:
        self._owner._remote(self._target, op)

    def __repr__(self) -> str:
        return f"MetadataUpdater(target={self._target!r})"


# Shown, pickled and documented where users import them from.
for _public in (DictView, ListView, Flush):
    _public.__module__ = __name__
