"""What is timed: one function per workload, shared by the pytest suites and ``compare_reference``.

Each mirrors what ``tests/node/bench.cjs`` times on the reference, so that the two
sides of a ratio do the same work:

* ``apply_single_op``: ``increment "c1"`` applied to ``state_256k`` (the reference
  clones the whole metadata for it).
* ``sdk_loop``: the SDK's ``metadata.set/increment/append/remove`` calls of
  ``sdk_10k``, each applied alone to the current store starting from ``state_64k``;
  an operation is queued and its result kept unless it is unapplied or changes
  nothing (``result.metadata is store``). Like the reference's timed loop, it ends
  with the flush body: the queue collapsed and serialized to JSON.
* ``apply_batch``: ``batch_1k`` (parsed beforehand) applied in one call to ``state_256k``.
* ``size``: ``json_size(state_256k)`` against V8's ``JSON.stringify`` + ``Buffer.byteLength``.
* ``collapse_all``: ``collapse(collapse_100k)``.
* ``compose_fold``: ``collapse_100k`` arriving as 1,000 batches of 100, folded into a
  buffer with ``buffer = compose(buffer, batch)`` (no reference counterpart);
  ``recollapse_fold`` is the same fold re-collapsing the whole buffer at each arrival,
  what ``compose`` saves a server from.
* ``buffer_sdk_loop``: the SDK loop through :class:`metaops.RunMetadata`'s documented
  methods, with the size tracked and the limit checked on every call, then ``drain()``
  and the request bodies' JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._workloads import load_all
from metaops import (
    JSON,
    ApplyResult,
    Flush,
    Increment,
    Operation,
    RunMetadata,
    apply,
    collapse,
    compose,
    json_size,
    parse_operation,
    parse_operations,
)

SINGLE_OP = Increment("c1", 1)
ARRIVING_BATCH = 100

# An SDK call of sdk_10k: the unbound RunMetadata method, the key, the value.
SdkCall = tuple[Callable[..., object], str, Any]

_SDK_METHODS: dict[str, Callable[..., object]] = {
    "set": RunMetadata.set,
    "increment": RunMetadata.increment,
    "append": RunMetadata.append,
    "remove": RunMetadata.remove,
}


@dataclass(frozen=True)
class Workloads:
    """The shared workloads, loaded and with their operations parsed once."""

    state_256k: dict[str, JSON]
    state_64k: dict[str, JSON]
    batch_1k: tuple[Operation, ...]
    sdk_10k_wire: list[dict[str, Any]]
    sdk_10k: tuple[Operation, ...]
    collapse_100k: tuple[Operation, ...]
    arriving: tuple[tuple[Operation, ...], ...]

    @property
    def sdk_10k_calls(self) -> list[SdkCall]:
        """Each call of ``sdk_10k`` as (unbound ``RunMetadata`` method, key, value)."""
        return [(_SDK_METHODS[op["type"]], op["key"], op["value"]) for op in self.sdk_10k_wire]


def load_workloads() -> Workloads:
    """Generate (if needed), verify, load and parse every workload."""
    raw = load_all()
    big = parse_operations(raw["collapse_100k"])
    return Workloads(
        state_256k=raw["state_256k"],
        state_64k=raw["state_64k"],
        batch_1k=parse_operations(raw["batch_1k"]),
        sdk_10k_wire=raw["sdk_10k"],
        sdk_10k=parse_operations(raw["sdk_10k"]),
        collapse_100k=big,
        arriving=tuple(big[i : i + ARRIVING_BATCH] for i in range(0, len(big), ARRIVING_BATCH)),
    )


def apply_single_op(state: dict[str, JSON]) -> ApplyResult:
    """One increment applied to ``state``."""
    return apply(state, SINGLE_OP)


@dataclass(frozen=True)
class SdkRun:
    """What the SDK loop ends with: the store, the queued operations, the flush body."""

    store: dict[str, JSON]
    queued: tuple[Operation, ...]
    body: str


def sdk_loop(start: dict[str, JSON], ops: tuple[Operation, ...]) -> SdkRun:
    """Each operation applied alone to the current store, then the queue flushed."""
    store = start
    queued: list[Operation] = []
    for op in ops:
        result = apply(store, op)
        if result.unapplied or result.metadata is store:
            continue
        queued.append(op)
        store = result.metadata
    return SdkRun(store, tuple(queued), _flush_body(queued))


def sdk_loop_from_wire(start: dict[str, JSON], wire: list[dict[str, Any]]) -> SdkRun:
    """:func:`sdk_loop`, also building each operation from its wire form inside the loop.

    The reference's SDK call only wraps its arguments in an object; metaops's
    operation constructors check that the value is JSON. This variant pays for that
    check on every call, the fairest reading of "an SDK call".
    """
    store = start
    queued: list[Operation] = []
    for call in wire:
        op = parse_operation(call)
        result = apply(store, op)
        if result.unapplied or result.metadata is store:
            continue
        queued.append(op)
        store = result.metadata
    return SdkRun(store, tuple(queued), _flush_body(queued))


def _flush_body(queued: list[Operation]) -> str:
    operations = [op.to_wire() for op in collapse(queued)]
    return json.dumps({"operations": operations}, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class BufferRun:
    """What the buffer's SDK loop ends with: the buffer, its flush, the bodies' text."""

    buffer: RunMetadata
    flush: Flush
    texts: tuple[str, ...]


def buffer_sdk_loop(start: dict[str, JSON], calls: list[SdkCall]) -> BufferRun:
    """A run from ``start`` makes every call, then drains and serializes its flush."""
    buffer = RunMetadata(start)
    for method, key, value in calls:
        method(buffer, key, value)
    flush = buffer.drain()
    return BufferRun(buffer, flush, flush.texts())


def apply_batch(state: dict[str, JSON], ops: tuple[Operation, ...]) -> ApplyResult:
    """A whole batch applied in one call."""
    return apply(state, ops)


def size(state: dict[str, JSON]) -> int:
    """The JSON size of ``state`` as JavaScript measures it."""
    return json_size(state)


def collapse_all(ops: tuple[Operation, ...]) -> tuple[Operation, ...]:
    """The reducer over one queued batch."""
    return collapse(ops)


def compose_fold(batches: tuple[tuple[Operation, ...], ...]) -> tuple[Operation, ...]:
    """Arriving batches folded one at a time into a buffer, as a server does."""
    buffer: tuple[Operation, ...] = ()
    for batch in batches:
        buffer = compose(buffer, batch)
    return buffer


def recollapse_fold(batches: tuple[tuple[Operation, ...], ...]) -> tuple[Operation, ...]:
    """:func:`compose_fold` without ``compose``: the whole buffer re-collapsed at each arrival."""
    buffer: tuple[Operation, ...] = ()
    for batch in batches:
        buffer = collapse((*buffer, *batch))
    return buffer
