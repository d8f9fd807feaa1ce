"""What the RunMetadata tests share: a platform stand-in, the buffer's state as JSON, calls."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import settings

from metaops import Append, Delete, Flush, Increment, Operation, Remove, RunMetadata, Set, apply, json_size
from metaops.buffer import MetadataUpdater
from metaops.server import parse_update_request

Metadata = dict[str, Any]

UPDATE_METHODS = ("set", "delete", "append", "remove", "increment", "decrement", "replace")
"""The seven documented update methods, on a run and on its parent and root alike."""


class Server:
    """A platform stand-in: the metadata of this run, its parent and its root, updated by bodies."""

    def __init__(self, own: Metadata | None = None) -> None:
        self.own: Metadata = copy.deepcopy(own or {})
        self.parent: Metadata = {}
        self.root: Metadata = {}

    def take(self, text: str) -> None:
        """Apply one request body, sent as its JSON text, as the platform would."""
        request = parse_update_request(json.loads(text))
        assert request.operations is not None
        self.own = apply(self.own, request.operations).metadata
        self.parent = apply(self.parent, request.parent_operations).metadata
        self.root = apply(self.root, request.root_operations).metadata

    def deliver(self, md: RunMetadata, flush: Flush) -> None:
        """Send every body of ``flush`` and hand the answer back."""
        for text in flush.texts():
            self.take(text)
        md.accept(flush, copy.deepcopy(self.own))

    def flush(self, md: RunMetadata) -> Flush:
        """One successful periodic flush."""
        flush = md.drain()
        if flush:
            self.deliver(md, flush)
        return flush


def snapshot(md: RunMetadata) -> dict[str, Any]:
    """Everything a refused call must leave as it was, as JSON: compare two with ``same_json``.

    The metadata and its tracked size, the unapplied and rejected reports, each of the
    three queues operation by operation, and which flush is in flight. The queues are
    read from the buffer's private lists: nothing public shows them without draining.
    """
    queues = (md._queue, md._parent_queue, md._root_queue)
    return {
        "metadata": md.current().to_dict(),
        "size": md.size,
        "unapplied": [op.to_wire() for op in md.unapplied],
        "rejected": [[id(rejected.flush), rejected.reason] for rejected in md.rejected],
        "queues": [[op.to_wire() for op in queue] for queue in queues],
        "in_flight": id(md.in_flight),
    }


def make_call(target: RunMetadata | MetadataUpdater, op: Operation, via_decrement: bool = False) -> None:
    """Make the documented call that produces ``op``."""
    if isinstance(op, Set):
        target.set(op.key, op.value)
    elif isinstance(op, Delete):
        target.delete(op.key)
    elif isinstance(op, Append):
        target.append(op.key, op.value)
    elif isinstance(op, Remove):
        target.remove(op.key, op.value)
    elif isinstance(op, Increment):
        if via_decrement:
            target.decrement(op.key, -op.value)
        else:
            target.increment(op.key, op.value)
    else:
        target.replace(op.value)


def body_alone(op: Operation) -> int:
    """The JSON size of a request body carrying only ``op``."""
    return json_size({"operations": [op.to_wire()], "parentOperations": [], "rootOperations": []})


def budget(share: int, **changes: Any) -> settings:
    """The loaded profile's settings, with ``1/share`` of its examples in the quick profiles.

    For tests whose every example is costly (a state machine's fifty steps, large drawn
    metadata). Under a profile running at most the "ci" profile's examples ("default", "ci"
    and "dev"), such a test runs a ``share``-th of them, at least ten; a larger profile
    (``--hypothesis-profile=thorough``) runs them all.
    """
    examples = settings().max_examples  # the loaded profile's
    if examples <= settings.get_profile("ci").max_examples:
        examples = max(examples // share, 10)
    return settings(max_examples=examples, **changes)
