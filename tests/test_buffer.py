"""RunMetadata: the SDK-side buffer, its documented examples, a dict oracle, threads and limits."""

from __future__ import annotations

import copy
import json
import math
import pickle
import random
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from metaops import (
    MAX_REQUEST_BYTES,
    Append,
    Delete,
    Increment,
    InvalidLimitError,
    InvalidOperationError,
    InvalidValueError,
    MetadataTooLargeError,
    Operation,
    Remove,
    Set,
    Update,
    apply,
    is_safe_key,
    json_size,
)
from metaops._json import json_identical
from metaops.buffer import DictView, Flush, FlushInFlightError, ListView, MetadataUpdater, RunMetadata
from metaops.server import parse_update_request
from metaops.strategies import LITERAL_KEYS, json_values, keys, metadata, operations
from tests.oracle import oracle_apply

Metadata = dict[str, Any]


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


def same_json(a: object, b: object) -> bool:
    """Equal as JSON text: same types (a bool is not a number), same key order."""
    return json_identical(a, b)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def close_json(a: object, b: object) -> bool:
    """Equal as JSON, except that two numbers of which one is a float need only be close.

    Collapsing merges float increments, and a merged sum equals the calls' one by one
    only up to reassociation ((x + a) + b against x + (a + b)). Ints stay exact.
    """
    if _is_number(a) and _is_number(b):
        if type(a) is int and type(b) is int:
            return a == b
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)  # type: ignore[arg-type]
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(close_json(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close_json(x, y) for x, y in zip(a, b, strict=True))
    return same_json(a, b)


def plain(value: object) -> object:
    """``value`` with a read-only view turned into the plain dict or list it shows."""
    if isinstance(value, DictView):
        return value.to_dict()
    if isinstance(value, ListView):
        return value.to_list()
    return value


def snapshot(md: RunMetadata) -> dict[str, Any]:
    """Everything a refused call must leave as it was, as JSON: compare two with :func:`same_json`.

    The metadata and its tracked size, the unapplied reports, each of the three queues
    operation by operation, and which flush is in flight. The queues are read from the
    buffer's private lists: nothing public shows them without draining.
    """
    queues = (md._queue, md._parent_queue, md._root_queue)
    return {
        "metadata": md.current().to_dict(),
        "size": md.size,
        "unapplied": [op.to_wire() for op in md.unapplied],
        "queues": [[op.to_wire() for op in queue] for queue in queues],
        "in_flight": id(md.in_flight),
    }


# --------------------------------------------------------------------------- documented examples


def test_progress_tracking_example() -> None:
    """The docs' batch-processing task: progress set per record; the flush reproduces the last one."""
    records = [{"id": f"rec_{i}"} for i in range(7)]
    md = RunMetadata()
    server = Server()
    for i, record in enumerate(records):
        md.set(
            "progress",
            {
                "step": i + 1,
                "total": len(records),
                "percentage": round((i + 1) / len(records) * 100),
                "currentRecord": record["id"],
            },
        )
        if i == 3:
            server.flush(md)
    assert md.get("progress") == {"step": 7, "total": 7, "percentage": 100, "currentRecord": "rec_6"}
    server.flush(md)
    assert server.own == {"progress": {"step": 7, "total": 7, "percentage": 100, "currentRecord": "rec_6"}}
    assert same_json(md.current().to_dict(), server.own)


def test_status_updates_with_logs_example() -> None:
    """The docs' deployment task: status replaced at each step, every log line kept in order."""
    md = RunMetadata()
    steps = [
        ("initializing", "Starting deployment..."),
        ("building", "Building application..."),
        ("deploying", "Deploying to production..."),
        ("verifying", "Verifying deployment..."),
        ("completed", "Deployment successful!"),
    ]
    for status, line in steps:
        md.set("status", status)
        md.append("logs", line)
    assert md.get("status") == "completed"
    assert md.get("logs") == [line for _, line in steps]
    server = Server()
    server.flush(md)
    assert server.own == {"status": "completed", "logs": [line for _, line in steps]}


def test_append_then_remove_example() -> None:
    """append then remove of the same entry leaves an empty list, as the docs print."""
    md = RunMetadata()
    md.set("progress", 0.1)
    md.append("logs", "Step 1 complete")
    assert md.get("logs") == ["Step 1 complete"]
    md.remove("logs", "Step 1 complete")
    assert md.get("logs") == []


def test_increment_and_decrement_examples() -> None:
    """0.1 + 0.4 prints 0.5; 0.5 - 0.4 is JavaScript's 0.09999999999999998, sent as increment -0.4."""
    md = RunMetadata()
    md.set("progress", 0.1)
    md.increment("progress", 0.4)
    assert md.get("progress") == 0.5
    other = RunMetadata()
    other.set("progress", 0.5)
    other.decrement("progress", 0.4)
    assert other.get("progress") == 0.5 - 0.4
    assert other.get("progress") == pytest.approx(0.1)
    flush = other.drain()
    server = Server()
    server.deliver(other, flush)
    assert server.own["progress"] == 0.5 - 0.4


def test_decrement_sends_a_negative_increment_everywhere() -> None:
    """decrement(k, n) is increment(k, -n) on self, parent and root, even for a negative n."""
    md = RunMetadata(is_root=False)
    md.decrement("a", 2).decrement("b")
    md.parent.decrement("p", -3)
    md.root.decrement("r", 0.5)
    flush = md.drain()
    assert [op.to_wire() for op in flush.operations] == [
        {"type": "increment", "key": "a", "value": -2},
        {"type": "increment", "key": "b", "value": -1},
    ]
    assert flush.parent_operations == (Increment("p", 3),)
    assert flush.root_operations == (Increment("r", -0.5),)


def test_increment_and_decrement_take_n_by_name() -> None:
    """The documented signatures are increment(key, n=1) and decrement(key, n=1), n by position or name."""
    md = RunMetadata({"stock": 10}, is_root=False)
    md.increment("stock", n=5).decrement("stock", n=2).decrement("stock", 3).increment(key="stock")
    assert md.get("stock") == 11
    md.parent.increment("rows", n=4).decrement("rows", n=1)
    md.root.decrement("left", n=2).increment("left", n=0.5)
    flush = md.drain()
    assert flush.parent_operations == (Increment("rows", 3),)  # collapsed: 4 - 1
    assert flush.root_operations == (Increment("left", -1.5),)
    with pytest.raises(InvalidValueError, match="increment: n must be a number") as caught:
        md.increment("stock", n="1")  # type: ignore[arg-type]
    assert caught.value.where == "n"
    with pytest.raises(TypeError):
        md.increment("stock", value=1)  # type: ignore[call-arg]


def test_replace_and_delete_examples() -> None:
    """replace swaps the whole object; delete removes one key."""
    md = RunMetadata()
    md.set("progress", 0.1)
    md.replace({"user": {"name": "Eric", "id": "user_1234"}})
    assert md.current() == {"user": {"name": "Eric", "id": "user_1234"}}
    md.set("progress", 0.5).delete("progress")
    assert md.get("progress") is None
    assert "progress" not in md.current()


def test_fluent_chains() -> None:
    """Every update method returns its object, so the docs' chains work on self, parent and root."""
    md = RunMetadata(is_root=False)
    chained = md.set("progress", 0.1).append("logs", "Step 1 complete").increment("progress", 0.4)
    assert chained is md
    assert md.decrement("otherProgress", 0.1) is md
    assert md.current() == {"progress": 0.5, "logs": ["Step 1 complete"], "otherProgress": -0.1}
    for updater in (md.parent, md.root):
        returned = (
            updater.set("progress", 0.1)
            .append("logs", "Step 1 complete")
            .remove("logs", "x")
            .increment("progress", 0.4)
            .decrement("otherProgress", 0.1)
            .delete("gone")
            .replace({"fresh": True})
        )
        assert returned is updater
    flush = md.drain()
    expected = (
        Set("progress", 0.1),
        Append("logs", "Step 1 complete"),
        Remove("logs", "x"),
        Increment("progress", 0.4),
        Increment("otherProgress", -0.1),
        Delete("gone"),
        Update({"fresh": True}),
    )
    for sent in (flush.parent_operations, flush.root_operations):
        assert apply({"logs": ["x"], "other": 1}, sent).metadata == apply({"logs": ["x"]}, expected).metadata


def test_csv_rows_update_the_parent() -> None:
    """The docs' CSV example: each row's child run increments and appends to the parent's metadata."""
    parent_md = RunMetadata()
    platform_parent = Server()
    parent_md.set("status", "fetching")
    rows = [f"row {i}" for i in range(25)]
    parent_md.set("status", "processing").set("totalRows", len(rows))
    platform_parent.flush(parent_md)
    for i, _row in enumerate(rows):
        child = RunMetadata({"row": i}, is_root=False)
        child.parent.increment("processedRows", 1).append("rowRuns", f"run_{i}")
        flush = child.drain()
        assert flush.operations == ()
        assert child.current() == {"row": i}  # nothing of the parent's shows locally
        # The platform applies a child's parentOperations to the parent's metadata.
        request = parse_update_request(json.loads(flush.texts()[0]))
        platform_parent.own = apply(platform_parent.own, request.parent_operations).metadata
        child.accept(flush, {"row": i})
    parent_md.set("status", "complete")
    parent_md.accept(Flush(), platform_parent.own)  # a refresh: the children's updates show
    assert parent_md.get("processedRows") == len(rows)
    platform_parent.flush(parent_md)
    assert platform_parent.own == {
        "status": "complete",
        "totalRows": 25,
        "processedRows": 25,
        "rowRuns": [f"run_{i}" for i in range(25)],
    }
    assert same_json(parent_md.current().to_dict(), platform_parent.own)


def test_a_root_run_sends_parent_and_root_updates_to_itself() -> None:
    """When the run has no parent, metadata.parent and metadata.root act on the run itself."""
    md = RunMetadata({"n": 1}, is_root=True)
    assert md.parent.increment("n") is md.parent
    assert md.root.increment("n", 2) is md.root
    assert md.get("n") == 4
    flush = md.drain()
    assert flush.parent_operations == flush.root_operations == ()
    assert apply({"n": 1}, flush.operations).metadata == {"n": 4}


def test_nothing_propagates_to_children() -> None:
    """A child starts from its own metadata: the parent's state is not copied into it."""
    parent_md = RunMetadata({"secret": 1})
    child = RunMetadata(is_root=False)
    child.parent.set("seen", True)
    assert child.current() == {}
    assert parent_md.current() == {"secret": 1}


@pytest.mark.parametrize(
    "member",
    [
        *(
            getattr(RunMetadata, name)
            for name in (
                "set",
                "delete",
                "append",
                "remove",
                "increment",
                "decrement",
                "replace",
                "current",
                "get",
                "drain",
                "restore",
                "accept",
            )
        ),
        MetadataUpdater,
        *(
            getattr(MetadataUpdater, name)
            for name in ("set", "delete", "append", "remove", "increment", "decrement", "replace")
        ),
        Flush.texts,
        Flush.packet,
        Flush.bodies,
    ],
    ids=lambda member: getattr(member, "__qualname__", None) or "Flush.bodies",
)
def test_public_methods_show_an_example(member: object) -> None:
    """Each public method's docstring carries a doctest example, which --doctest-modules runs."""
    doc = getattr(member, "__doc__", None) or ""
    assert ">>> " in doc


# --------------------------------------------------------------------------- local apply and reporting


def test_unapplied_calls_are_reported_and_the_chain_goes_on() -> None:
    """A remove from a non-list is not queued; it shows in ``unapplied`` and the next flush, once."""
    md = RunMetadata({"n": 1})
    assert md.remove("n", 1).remove("missing", 1).increment("n") is md
    assert md.unapplied == (Remove("n", 1), Remove("missing", 1))
    flush = md.drain()
    assert flush.operations == (Increment("n", 1),)
    assert flush.unapplied == (Remove("n", 1), Remove("missing", 1))
    md.accept(flush, {"n": 2})
    assert not md.unapplied
    assert md.drain().unapplied == ()


def test_calls_that_change_nothing_are_not_queued() -> None:
    """Setting the same value, removing an absent item or incrementing by 0 queues nothing."""
    md = RunMetadata({"a": 1, "tags": ["x"], "n": 5})
    md.set("a", 1).remove("tags", "y").increment("n", 0).delete("absent").set("$.nowhere.deep", 1)
    assert not md.pending
    assert md.unapplied == ()
    flush = md.drain()
    assert not flush
    assert flush.bodies == ()
    assert md.in_flight is None


def test_an_unapplied_flush_only_report_is_not_in_flight() -> None:
    """A drain with nothing to send but an unapplied report needs no accept or restore."""
    md = RunMetadata({"n": 1})
    md.remove("n", 1)
    flush = md.drain()
    assert not flush
    assert flush.unapplied == (Remove("n", 1),)
    assert md.in_flight is None
    md.drain()  # no FlushInFlightError


def test_a_drain_that_collapses_to_nothing_is_not_in_flight() -> None:
    """Queued operations that collapse away leave nothing in flight, so the next drain works.

    A parent write through a slice of the top level can match nothing (metadata is an
    object), so collapse drops it: the flush is empty, and a host sends nothing.
    """
    md = RunMetadata(is_root=False)
    md.parent.set("$.[0:1]", None)
    assert md.pending
    flush = md.drain()
    assert not flush
    assert md.in_flight is None
    assert not md.pending
    md.parent.increment("n")
    assert md.drain().parent_operations == (Increment("n", 1),)


# --------------------------------------------------------------------------- read-only views


def test_current_is_a_read_only_snapshot_all_the_way_down() -> None:
    """Nested lists and dicts of current() cannot be changed, and later calls do not change it."""
    md = RunMetadata({"user": {"name": "Eric", "tags": ["a"]}, "logs": ["one"]})
    view = md.current()
    user = view["user"]
    assert isinstance(user, DictView)
    assert isinstance(user["tags"], ListView)
    with pytest.raises(TypeError):
        view["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        user["tags"][0] = "b"  # type: ignore[index]
    with pytest.raises(AttributeError):
        user["tags"].append("b")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        view.clear()  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        view._data = {}
    listed = view["logs"]
    md.append("logs", "two").set("$.user.name", "Ann")
    assert listed == ["one"]
    assert view == {"user": {"name": "Eric", "tags": ["a"]}, "logs": ["one"]}
    assert md.current() == {"user": {"name": "Ann", "tags": ["a"]}, "logs": ["one", "two"]}


def test_get_returns_values_and_none_for_absent_keys() -> None:
    """get reads a top-level key literally; a container comes back as a read-only view."""
    md = RunMetadata({"n": 1, "$.n": "literal", "items": [1, {"a": 2}], "nothing": None})
    assert md.get("n") == 1
    assert md.get("$.n") == "literal"
    assert md.get("absent") is None
    assert md.get("nothing") is None
    items = md.get("items")
    assert isinstance(items, ListView)
    assert items == [1, {"a": 2}]
    assert items[1] == {"a": 2}
    assert isinstance(items[1], DictView)
    assert items[1:] == [{"a": 2}]
    assert {"a": 2} in items
    with pytest.raises(InvalidValueError, match="key must be a str"):
        md.get(1)  # type: ignore[arg-type]


def test_to_dict_gives_an_independent_copy() -> None:
    """Mutating what to_dict or to_list returns leaves the buffer as it was."""
    md = RunMetadata({"a": {"b": [1]}})
    plain: Any = md.current().to_dict()
    plain["a"]["b"].append(2)
    listed = md.current()["a"]["b"].to_list()
    listed.append(3)
    assert md.current() == {"a": {"b": [1]}}
    assert json.dumps(md.current().to_dict()) == '{"a": {"b": [1]}}'


def test_views_can_be_passed_back_as_values() -> None:
    """A view read from the buffer is accepted wherever JSON is, nested or not."""
    md = RunMetadata({"items": [1, 2], "user": {"id": "u"}})
    md.set("copy", md.get("items")).set("wrapped", {"user": md.get("user"), "list": [md.get("items")]})
    md.append("items", md.get("user"))
    assert md.current() == {
        "items": [1, 2, {"id": "u"}],
        "user": {"id": "u"},
        "copy": [1, 2],
        "wrapped": {"user": {"id": "u"}, "list": [[1, 2]]},
    }
    other = RunMetadata(md.current())
    other.replace(md.current()["user"])
    assert other.current() == {"id": "u"}


def test_views_copy_and_pickle_as_views() -> None:
    """copy.deepcopy and pickle round-trip a view to an equal view."""
    view = RunMetadata({"a": [1, {"b": None}]}).current()
    for clone in (copy.deepcopy(view), pickle.loads(pickle.dumps(view)), copy.copy(view)):
        assert isinstance(clone, DictView)
        assert clone == view
    assert DictView({"a": (1, 2)}) == {"a": [1, 2]}
    assert ListView((1, {"a": 1})) == [1, {"a": 1}]
    assert repr(ListView([1])) == "ListView([1])"
    with pytest.raises(TypeError):
        hash(view)


# --------------------------------------------------------------------------- the size limit


def test_a_call_past_the_limit_raises_and_changes_nothing() -> None:
    """set, append, replace and increment past the limit raise; metadata, size and queues stay."""
    md = RunMetadata({"a": "x" * 50}, limit=100)
    md.set("b", 1)
    before = snapshot(md)
    calls: list[Callable[[], object]] = [
        lambda: md.set("big", "y" * 60),
        lambda: md.append("a", "z" * 60),
        lambda: md.replace({"c": "w" * 120}),
        lambda: md.set("$.a", "v" * 100),
        lambda: md.increment("a-long-key-" + "k" * 40, 1),
    ]
    for call in calls:
        with pytest.raises(MetadataTooLargeError) as caught:
            call()
        assert caught.value.limit == 100
        assert caught.value.size > 100
        assert same_json(snapshot(md), before)
    flush = md.drain()
    assert flush.operations == (Set("b", 1),)


def test_the_limit_is_exact() -> None:
    """A call reaching exactly the limit is accepted; one byte more is refused."""
    md = RunMetadata(limit=20)
    md.set("k", "x" * 12)  # {"k":"xxxxxxxxxxxx"} is 20 bytes
    assert md.size == 20 == json_size(md.current().to_dict())
    with pytest.raises(MetadataTooLargeError):
        md.set("k", "x" * 13)
    assert md.get("k") == "x" * 12


def test_calls_that_shrink_are_allowed_at_the_limit() -> None:
    """Deleting or removing at the limit works: only growth past it is refused."""
    md = RunMetadata({"logs": ["a" * 10, "b"]}, limit=27)
    with pytest.raises(MetadataTooLargeError):
        md.append("logs", "c")
    md.remove("logs", "b").delete("logs")
    assert md.current() == {}


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TASK_RUN_METADATA_MAXIMUM_SIZE sets the limit when no argument does; a bad value is refused."""
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", "16")
    md = RunMetadata()
    assert md.limit == 16
    with pytest.raises(MetadataTooLargeError):
        md.set("key", "0123456789")
    assert RunMetadata(limit=1000).limit == 1000
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", "16kb")
    with pytest.raises(InvalidLimitError):
        RunMetadata()
    monkeypatch.delenv("TASK_RUN_METADATA_MAXIMUM_SIZE")
    assert RunMetadata().limit == 262_144


def test_initial_metadata_over_the_limit_is_refused() -> None:
    """A run cannot start from metadata already past its limit."""
    with pytest.raises(MetadataTooLargeError):
        RunMetadata({"a": "x" * 100}, limit=50)


def test_parent_values_larger_than_the_limit_are_refused() -> None:
    """A parent/root value that alone exceeds the limit could never be stored: refused at the call."""
    md = RunMetadata(is_root=False, limit=50)
    calls: list[Callable[[], object]] = [
        lambda: md.parent.set("a", "x" * 60),
        lambda: md.root.append("a", ["x" * 60]),
        lambda: md.parent.replace({"a": "x" * 60}),
    ]
    for call in calls:
        with pytest.raises(MetadataTooLargeError):
            call()
    md.parent.remove("a", "x" * 60)  # a remove never grows the parent
    assert md.drain().parent_operations == (Remove("a", "x" * 60),)


def test_operations_too_large_for_any_body_are_refused_at_the_call() -> None:
    """With a large limit and small bodies, a call whose operation could never be sent raises."""
    md = RunMetadata(is_root=False, limit=10_000, max_request_bytes=200)
    before = snapshot(md)
    with pytest.raises(MetadataTooLargeError, match="request body"):
        md.set("a", "x" * 300)
    with pytest.raises(MetadataTooLargeError, match="request body"):
        md.parent.remove("a", "x" * 300)
    with pytest.raises(MetadataTooLargeError, match="request body"):
        md.root.delete("k" * 300)
    assert same_json(snapshot(md), before)
    assert not md.drain()


def test_a_remove_too_large_for_any_body_is_refused_at_the_call() -> None:
    """A remove's value need not be in the metadata, so it is measured: too large for a body, it raises.

    A wildcard remove applies where nothing equals its value, so the metadata's size
    says nothing about the operation's. Queued, it would make every drain raise.
    """
    md = RunMetadata({"a": [1], "b": 2})
    md.set("c", 1)
    before = snapshot(md)
    with pytest.raises(MetadataTooLargeError, match="request body holding only remove"):
        md.remove("$.*", "x" * 1_100_000)
    assert same_json(snapshot(md), before)
    assert md.drain().operations == (Set("c", 1),)
    small = RunMetadata({"a": [1], "b": 2}, max_request_bytes=200)
    with pytest.raises(MetadataTooLargeError, match="request body"):
        small.remove("$.*", "x" * 300)
    assert not small.drain()
    small.remove("$.*", "x" * 100)  # one that fits is applied and sent
    (text,) = small.drain().texts()
    assert len(text) <= 200


def test_accept_adopts_server_metadata_over_the_limit() -> None:
    """The server's answer is adopted even past the local limit; then only calls ending within it pass."""
    md = RunMetadata(limit=40)
    md.set("a", 1)
    flush = md.drain()
    md.accept(flush, {"a": 1, "big": "x" * 50})
    assert md.size == json_size({"a": 1, "big": "x" * 50})
    with pytest.raises(MetadataTooLargeError):
        md.set("b", 2)
    md.delete("big")
    assert md.current() == {"a": 1}


def test_over_the_limit_a_call_that_shrinks_is_allowed() -> None:
    """Past the limit (an adopted server answer), calls that shrink or keep the size pass; growth is refused.

    The rule is: refuse a call that would take the metadata past the limit, that is,
    one ending over it and larger than before.
    """
    md = RunMetadata(limit=100)
    md.accept(Flush(), {"logs": ["w" * 40, "x" * 40, "y" * 40, "z" * 40]})
    assert md.size > 100
    md.remove("logs", "w" * 40)  # still over the limit, but smaller
    assert md.get("logs") == ["x" * 40, "y" * 40, "z" * 40]
    assert md.size == json_size(md.current().to_dict()) > 100
    md.set("$.logs.0", "v" * 40)  # the same size
    before = snapshot(md)
    with pytest.raises(MetadataTooLargeError) as caught:
        md.set("$.logs.0", "v" * 41)  # one byte larger
    assert caught.value.size == md.size + 1
    assert same_json(snapshot(md), before)
    md.set("logs", ["short"])
    assert md.drain().operations == (Set("logs", ["short"]),)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (lambda md: md.set("a", {1, 2}), InvalidValueError, "set: value is a set"),
        (lambda md: md.set("a", object()), InvalidValueError, "not a JSON value"),
        (lambda md: md.set("a", math.nan), InvalidValueError, "nan"),
        (lambda md: md.set("a", [1, math.inf]), InvalidValueError, r"value\[1\] is inf"),
        (lambda md: md.set("a", {"k": {2: 3}}), InvalidValueError, "keys must be str"),
        (lambda md: md.set("a", datetime(2026, 1, 1)), InvalidValueError, "naive datetime"),
        (lambda md: md.append("a", b"bytes"), InvalidValueError, "append: value is a bytes"),
        (lambda md: md.remove("a", 2**1100), InvalidValueError, "too large"),
        (lambda md: md.set(1, "v"), InvalidValueError, "set: key must be a str"),
        (lambda md: md.delete(None), InvalidValueError, "delete: key must be a str"),
        (lambda md: md.increment("n", "1"), InvalidValueError, "increment: n must be a number"),
        (lambda md: md.increment("n", True), InvalidValueError, "not bool"),
        (lambda md: md.decrement("n", None), InvalidValueError, "decrement: n must be a number"),
        (lambda md: md.increment("n", math.inf), InvalidValueError, "inf"),
        (lambda md: md.replace([1]), InvalidValueError, "replace: metadata must be a dict"),
        (lambda md: md.replace({"a": {1}}), InvalidValueError, "replace: metadata"),
        (lambda md: md.set("__proto__", 1), InvalidOperationError, "unsafe"),
        (lambda md: md.set("$.constructor", 1), InvalidOperationError, "unsafe"),
        (lambda md: md.delete("$.a.prototype"), InvalidOperationError, "delete: the key"),
        (lambda md: md.increment("$.", 1), InvalidOperationError, "unsafe"),
        (lambda md: md.parent.set("__proto__", 1), InvalidOperationError, "parent.set: the key"),
        (lambda md: md.root.append("$.constructor", 1), InvalidOperationError, "root.append"),
        (lambda md: md.parent.set("a", {1, 2}), InvalidValueError, "parent.set: value is a set"),
        (lambda md: md.root.increment("n", "2"), InvalidValueError, "root.increment: n must be a number"),
        (lambda md: md.parent.replace("x"), InvalidValueError, "parent.replace: metadata must be a dict"),
    ],
)
def test_bad_input_raises_before_anything_changes(call: Any, error: type[Exception], text: str) -> None:
    """Non-JSON values, wrong types and unsafe keys raise a typed error naming the call; nothing changes."""
    md = RunMetadata({"a": [1], "n": 1}, is_root=False)
    md.set("b", 2)
    md.parent.increment("x")
    before = snapshot(md)
    with pytest.raises(error, match=text):
        call(md)
    assert same_json(snapshot(md), before)
    flush = md.drain()
    assert flush.operations == (Set("b", 2),)
    assert flush.parent_operations == (Increment("x", 1),)
    assert flush.root_operations == ()


def test_bad_input_errors_are_the_builtin_types() -> None:
    """A caller that knows nothing of metaops catches TypeError and ValueError."""
    md = RunMetadata()
    with pytest.raises(TypeError):
        md.set("a", {1})
    with pytest.raises(ValueError, match="unsafe"):
        md.set("__proto__", 1)
    with pytest.raises(InvalidValueError, match="is_root must be a bool"):
        RunMetadata(is_root="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="metadata must be a dict"):
        RunMetadata([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidLimitError):
        RunMetadata(max_request_bytes=10)


def test_values_are_copied_and_normalized() -> None:
    """The buffer copies what it is given: later changes by the caller do not reach it."""
    initial = {"a": [1]}
    md = RunMetadata(initial)
    initial["a"].append(2)
    value = {"k": [1, 2]}
    md.set("v", value).append("l", value).replace({"v": value, "t": (1, 2)})
    value["k"].append(3)
    assert md.current() == {"v": {"k": [1, 2]}, "t": [1, 2]}
    aware = datetime(2026, 11, 22, 9, 30, tzinfo=timezone.utc)
    md.set("when", aware)
    assert md.get("when") == "2026-11-22T09:30:00.000Z"


def test_initial_metadata_oddities_are_normalized_or_refused() -> None:
    """The constructor's fast copy agrees with normalize: tuples, subclasses, bad keys, huge ints."""
    assert RunMetadata({"t": (1, [2, (3,)])}).current() == {"t": [1, [2, [3]]]}

    class Tagged(dict):  # type: ignore[type-arg]
        pass

    assert RunMetadata(Tagged(a=Tagged(b=1))).current() == {"a": {"b": 1}}
    with pytest.raises(InvalidValueError, match="keys must be str"):
        RunMetadata({"a": {1: 2}})
    with pytest.raises(InvalidValueError, match="keys must be str"):
        RunMetadata({"a": {True: 2}})
    with pytest.raises(InvalidValueError, match="too large"):
        RunMetadata({"a": [1, 2**1100]}, limit=10**6)
    assert RunMetadata({"a": 2**900}, limit=10**6).get("a") == 2**900
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidValueError, match="circular"):
        RunMetadata({"a": loop})
    assert RunMetadata({"s": "\ud800x"}).get("s") == "\ud800x"


# --------------------------------------------------------------------------- flushes


def test_drain_twice_needs_the_first_resolved() -> None:
    """One flush at a time: a second drain raises until the first is accepted or restored."""
    md = RunMetadata()
    md.set("a", 1)
    flush = md.drain()
    assert md.in_flight is flush
    md.set("b", 2)
    with pytest.raises(FlushInFlightError):
        md.drain()
    with pytest.raises(RuntimeError):
        md.drain()
    md.restore(flush)
    assert md.in_flight is None
    retry = md.drain()
    assert apply({}, retry.operations).metadata == {"a": 1, "b": 2}


def test_restore_and_accept_need_the_flush_in_flight() -> None:
    """Resolving a flush that is not the one out raises ValueError and changes nothing."""
    md = RunMetadata()
    md.set("a", 1)
    with pytest.raises(ValueError, match="no flush is in flight"):
        md.restore(Flush((Set("a", 1),)))
    flush = md.drain()
    with pytest.raises(ValueError, match="not the one in flight"):
        md.accept(Flush((Set("z", 1),)), {"z": 1})
    with pytest.raises(ValueError, match="not the one in flight"):
        md.restore(Flush())
    with pytest.raises(InvalidValueError):
        md.accept("flush", {})  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="metadata must be a dict"):
        md.accept(flush, [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delivered must be between"):
        md.restore(flush, delivered=2)
    assert md.in_flight is flush
    md.accept(flush, {"a": 1})
    with pytest.raises(ValueError, match="no flush is in flight"):
        md.accept(flush, {"a": 1})


def test_restore_puts_a_failed_flush_ahead_of_newer_calls() -> None:
    """After a failure, the retry sends the failed operations first, then what came since."""
    md = RunMetadata()
    md.set("status", "a").append("log", 1)
    failed = md.drain()
    md.set("status", "b").append("log", 2)
    md.restore(failed)
    retry = md.drain()
    assert apply({}, retry.operations).metadata == {"status": "b", "log": [1, 2]}
    server = Server()
    server.deliver(md, retry)
    assert server.own == {"status": "b", "log": [1, 2]}


def test_accept_re_applies_what_was_queued_during_the_flight() -> None:
    """The server's answer replaces the store; calls made meanwhile still show, and are still queued."""
    md = RunMetadata({"n": 0})
    md.increment("n")
    flush = md.drain()
    md.increment("n", 10).append("log", "during")
    # Another writer (a child's parentOperations) changed the server in between.
    md.accept(flush, {"n": 1, "fromChild": True})
    assert md.current() == {"n": 11, "fromChild": True, "log": ["during"]}
    assert md.size == json_size(md.current().to_dict())
    rest = md.drain()
    assert apply({"n": 1, "fromChild": True}, rest.operations).metadata == md.current()


def test_partial_delivery_restores_only_the_undelivered_bodies() -> None:
    """When the first k bodies got through, a retry sends only the rest: nothing doubles."""
    md = RunMetadata(is_root=False, max_request_bytes=180)
    for i in range(12):
        md.increment(f"counter{i}", i + 1)
        md.parent.increment(f"p{i}", 1)
    flush = md.drain()
    assert len(flush.bodies) > 2
    server = Server()
    texts = flush.texts()
    for text in texts[:2]:
        server.take(text)
    md.restore(flush, delivered=2)
    server.flush(md)
    assert server.own == {f"counter{i}": i + 1 for i in range(12)}
    assert server.parent == {f"p{i}": 1 for i in range(12)}


def test_bodies_are_split_under_the_request_limit() -> None:
    """Each body is within max_request_bytes; the three lists keep their order across bodies."""
    md = RunMetadata(is_root=False, max_request_bytes=400, limit=10_000)
    for i in range(30):
        md.append("log", f"line {i}")
        md.parent.append("rows", f"run_{i}")
        if i % 3 == 0:
            md.root.increment("done")
    flush = md.drain()
    bodies = flush.bodies
    assert len(bodies) > 1
    for body in bodies:
        assert json_size(body) <= 400
        assert set(body) == {"operations", "parentOperations", "rootOperations"}
        assert any(body.values())
    for section, ops in (
        ("operations", flush.operations),
        ("parentOperations", flush.parent_operations),
        ("rootOperations", flush.root_operations),
    ):
        assert [wire for body in bodies for wire in body[section]] == [op.to_wire() for op in ops]
    assert [json.loads(text) for text in flush.texts()] == list(bodies)


def test_sent_text_stays_under_the_limit_when_python_writes_longer_numbers() -> None:
    """Python writes 1.0 where JavaScript writes 1: bodies are split again so the sent bytes fit too."""
    md = RunMetadata(max_request_bytes=300, limit=100_000)
    for i in range(12):
        md.set(f"k{i}", [1.0] * 20)
    flush = md.drain()
    texts = flush.texts()
    assert len(texts) == len(flush.bodies) > 1
    for body, text in zip(flush.bodies, texts, strict=True):
        assert json_size(body) <= 300
        assert len(text.encode("utf-8")) <= 300
    server = Server()
    server.deliver(md, flush)
    assert server.own == {f"k{i}": [1.0] * 20 for i in range(12)}


def test_a_collapsed_operation_too_large_for_a_body_is_sent_as_queued() -> None:
    """When collapsing folds calls into one operation too large for a body, the calls go as they came."""
    md = RunMetadata(max_request_bytes=260)
    md.replace({"a": None, "b": None, "n": None, "logs": None, "ключ": None})
    md.set("$.*", {"a": False, "emoji🎉": None})
    flush = md.drain()
    assert all(json_size(body) <= 260 for body in flush.bodies)
    server = Server()
    server.deliver(md, flush)
    assert same_json(server.own, md.current().to_dict())


def test_one_body_when_everything_fits() -> None:
    """Under the limit, the three lists travel together in a single body."""
    md = RunMetadata(is_root=False)
    md.set("a", 1)
    md.parent.set("b", 2)
    md.root.set("c", 3)
    (body,) = md.drain().bodies
    assert body == {
        "operations": [{"type": "set", "key": "a", "value": 1}],
        "parentOperations": [{"type": "set", "key": "b", "value": 2}],
        "rootOperations": [{"type": "set", "key": "c", "value": 3}],
    }


def test_final_flush_packet() -> None:
    """The completion packet carries the whole drained body as JSON text, or no data when empty."""
    md = RunMetadata(is_root=False)
    assert md.drain().packet() == {"dataType": "application/json"}
    md.set("status", "done").increment("n")
    md.parent.append("runs", "run_1")
    flush = md.drain()
    packet = flush.packet()
    assert set(packet) == {"data", "dataType"}
    assert packet["dataType"] == "application/json"
    data = json.loads(packet["data"])
    assert data == {
        "operations": [op.to_wire() for op in flush.operations],
        "parentOperations": [{"type": "append", "key": "runs", "value": "run_1"}],
        "rootOperations": [],
    }
    request = parse_update_request(data)
    assert apply({}, request.own_operations).metadata == {"status": "done", "n": 1}


def test_texts_encode_as_utf8_with_javascript_escapes() -> None:
    """Lone surrogates are escaped as JavaScript writes them, so every body encodes as UTF-8."""
    md = RunMetadata()
    md.set("s", "a\ud800b").set("t", "日本語🎉")
    flush = md.drain()
    (text,) = flush.texts()
    assert "\\ud800" in text
    assert "日本語🎉" in text
    encoded = text.encode("utf-8")
    assert json.loads(encoded) == flush.bodies[0]
    assert json.loads(flush.packet()["data"].encode("utf-8"))["operations"] == flush.bodies[0]["operations"]


def test_flush_is_a_frozen_value() -> None:
    """A Flush cannot be changed; equal contents make equal flushes; repr reads like the call."""
    flush = Flush((Set("a", 1),), unapplied=(Remove("n", 1),))
    with pytest.raises(AttributeError):
        flush.operations = ()  # type: ignore[misc]
    assert flush == Flush([Set("a", 1)], unapplied=[Remove("n", 1)])  # type: ignore[arg-type]
    assert hash(flush) == hash(Flush((Set("a", 1),), unapplied=(Remove("n", 1),)))
    assert flush != Flush((Set("a", 2),))
    assert eval(repr(flush)) == flush
    bodies = flush.bodies
    bodies[0]["operations"].clear()
    assert flush.bodies[0]["operations"] == [{"type": "set", "key": "a", "value": 1}]
    with pytest.raises(InvalidValueError, match="not an operation"):
        Flush(({"type": "set"},))  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="tuple of operations"):
        Flush("set")  # type: ignore[arg-type]


@pytest.mark.parametrize("body_bytes", [MAX_REQUEST_BYTES, 120])
def test_bodies_do_not_alias_the_metadata(body_bytes: int) -> None:
    """A host mutating what ``bodies`` hands out changes neither the buffer nor the flush.

    With one body and split into several: the values inside are fresh, not the store's.
    """
    md = RunMetadata({"user": {"tags": ["t"]}}, max_request_bytes=body_bytes)
    md.set("logs", ["a"]).set("progress", {"step": 1}).set("copy", md.get("user"))
    before = md.current().to_dict()
    flush = md.drain()
    assert (len(flush.bodies) > 1) is (body_bytes < MAX_REQUEST_BYTES)
    texts = flush.texts()
    for body in flush.bodies:
        for wire in body["operations"]:
            value: Any = wire["value"]
            if isinstance(value, list):
                value.append("X")
            else:
                value["injected"] = True
                value.get("tags", []).append("X")
    assert same_json(md.current().to_dict(), before)
    assert md.size == json_size(before)
    assert flush.texts() == texts
    assert [json.loads(text) for text in texts] == list(flush.bodies)
    assert [wire for body in flush.bodies for wire in body["operations"]] == [
        op.to_wire() for op in flush.operations
    ]
    md.restore(flush)
    server = Server({"user": {"tags": ["t"]}})
    server.flush(md)
    assert same_json(server.own, before)


def test_refresh_with_an_empty_flush() -> None:
    """accept(Flush(), metadata) with nothing in flight adopts the server's metadata under the queue."""
    md = RunMetadata({"n": 1})
    md.increment("n")
    md.accept(Flush(), {"n": 5, "x": 1})
    assert md.current() == {"n": 6, "x": 1}
    assert md.drain().operations == (Increment("n", 1),)


def test_repr_names_the_state() -> None:
    """The reprs say what the objects hold."""
    md = RunMetadata({"a": 1}, is_root=False, limit=100)
    assert repr(md) == "RunMetadata({'a': 1}, is_root=False, limit=100)"
    assert repr(md.parent) == "MetadataUpdater(target='parent')"
    assert isinstance(md.root, MetadataUpdater)
    assert md.is_root is False


# --------------------------------------------------------------------------- the model-based test


def _body_alone(op: Operation) -> int:
    """The JSON size of a request body carrying only ``op``."""
    return json_size({"operations": [op.to_wire()], "parentOperations": [], "rootOperations": []})


def _call(target: RunMetadata | MetadataUpdater, op: Operation, via_decrement: bool) -> None:
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


class BufferMachine(RuleBasedStateMachine):
    """RunMetadata against a plain dict oracle, with a simulated platform receiving its flushes.

    ``model`` is what the run's metadata should be after every call; the platform's
    dicts (``server.own``, ``.parent``, ``.root``) must reach the oracle's once
    everything is delivered, through failures, partial deliveries and calls made
    while a flush is in flight. Numbers are ints, so every result is exact
    (:class:`FloatBufferMachine` adds floats).
    """

    # Whether every number is an int, so that buffer, platform and oracle agree exactly.
    exact: ClassVar[bool] = True

    def same(self, a: object, b: object) -> bool:
        """Equal as JSON; with floats, equal up to the reassociation of merged increments."""
        return same_json(a, b) if self.exact else close_json(a, b)

    @initialize(
        initial=metadata(integers_only=True),
        limit=st.sampled_from([None, 150, 400]),
        is_root=st.sampled_from([False, False, True]),
        body_bytes=st.sampled_from([MAX_REQUEST_BYTES, 260, 160]),
    )
    def start(self, initial: Metadata, limit: int | None, is_root: bool, body_bytes: int) -> None:
        """A run starting from random metadata with a random limit and body size."""
        if limit is not None:
            limit = max(limit, json_size(initial))
        self.md = RunMetadata(initial, is_root=is_root, limit=limit, max_request_bytes=body_bytes)
        self.limit = self.md.limit
        self.body_bytes = body_bytes
        self.is_root = is_root
        self.model: Metadata = copy.deepcopy(initial)
        self.parent_model: Metadata = {}
        self.root_model: Metadata = {}
        self.server = Server(initial)
        self.flight: Flush | None = None
        self.unapplied: list[Operation] = []

    def _expect_local(self, op: Operation) -> type[Exception] | None:
        """What a call on the run itself should do, updating the oracle when it is applied."""
        if not isinstance(op, Update) and not is_safe_key(op.key):
            return InvalidOperationError
        # With floats, the buffer's metadata is the model's only up to rounding (after an
        # accept, it holds the platform's merged sums), and whether a call changes
        # anything or grows past the limit depends on the exact numbers: the buffer's
        # own metadata decides. The model still takes every applied call, in order.
        basis = self.model if self.exact else self.md.current().to_dict()
        new, unapplied = oracle_apply(basis, [op])
        if unapplied:
            self.unapplied.append(op)
            return None
        if same_json(new, basis):
            return None
        grows_past_the_limit = json_size(new) > max(self.limit, json_size(basis))
        if grows_past_the_limit or _body_alone(op) > self.body_bytes:
            return MetadataTooLargeError
        self.model = new if self.exact else oracle_apply(self.model, [op])[0]
        return None

    def _expect_remote(self, op: Operation, target: str) -> type[Exception] | None:
        """What a parent/root call should do on a child run: queued unless it could never succeed."""
        if not isinstance(op, Update) and not is_safe_key(op.key):
            return InvalidOperationError
        if isinstance(op, (Set, Append, Update)) and json_size(op.value) > self.limit:
            return MetadataTooLargeError
        if _body_alone(op) > self.body_bytes:
            return MetadataTooLargeError
        if target == "parent":
            self.parent_model = oracle_apply(self.parent_model, [op])[0]
        else:
            self.root_model = oracle_apply(self.root_model, [op])[0]
        return None

    @rule(
        op=operations(integers_only=True),
        who=st.sampled_from(["self", "self", "parent", "root"]),
        via_decrement=st.booleans(),
    )
    def call(self, op: Operation, who: str, via_decrement: bool) -> None:
        """One documented call on the run, its parent or its root."""
        before = snapshot(self.md)
        if who == "self" or self.is_root:
            expected = self._expect_local(op)
            updater: RunMetadata | MetadataUpdater = self.md
            if who != "self":
                updater = self.md.parent if who == "parent" else self.md.root
        else:
            expected = self._expect_remote(op, who)
            updater = self.md.parent if who == "parent" else self.md.root
        if expected is None:
            _call(updater, op, via_decrement)
        else:
            with pytest.raises(expected):
                _call(updater, op, via_decrement)
            assert same_json(snapshot(self.md), before)

    @rule(
        op=st.one_of(
            st.builds(Append, st.just("logs"), st.integers(0, 3)),
            st.builds(Remove, st.just("logs"), st.integers(0, 3)),
            st.builds(Increment, st.sampled_from(["n", "$.logs.0"]), st.integers(-2, 2)),
            st.builds(Set, st.sampled_from(["logs", "n"]), st.lists(st.integers(0, 3), max_size=3)),
            st.builds(Delete, st.sampled_from(["logs", "n"])),
        ),
        who=st.sampled_from(["self", "parent", "root"]),
    )
    def busy_call(self, op: Operation, who: str) -> None:
        """Calls crowding two keys, so that removes find lists and increments find numbers."""
        self.call(op, who, via_decrement=False)

    @rule(ops=st.lists(operations(integers_only=True, unsafe=False, update=False), min_size=2, max_size=4))
    def chain(self, ops: list[Operation]) -> None:
        """Several calls chained in one expression, stopping at the first that raises."""
        target: Any = self.md
        for op in ops:
            expected = self._expect_local(op)
            if expected is not None:
                with pytest.raises(expected):
                    _call(target, op, False)
                return
            if isinstance(op, Set):
                target = target.set(op.key, op.value)
            elif isinstance(op, Delete):
                target = target.delete(op.key)
            elif isinstance(op, Append):
                target = target.append(op.key, op.value)
            elif isinstance(op, Remove):
                target = target.remove(op.key, op.value)
            else:
                assert isinstance(op, Increment)
                target = target.increment(op.key, op.value)
            assert target is self.md

    @precondition(lambda self: self.flight is None)
    @rule()
    def drain(self) -> None:
        """Take a flush; its bodies are well formed and within the request limit."""
        flush = self.md.drain()
        assert flush.unapplied == tuple(self.unapplied)
        self.unapplied = []
        bodies = flush.bodies
        assert len(bodies) == len(flush.texts())
        for body in bodies:
            assert json_size(body) <= self.body_bytes
        for section, ops in (
            ("operations", flush.operations),
            ("parentOperations", flush.parent_operations),
            ("rootOperations", flush.root_operations),
        ):
            sent = [wire for body in bodies for wire in body[section]]
            assert same_json(sent, [op.to_wire() for op in ops])
        if flush:
            assert self.md.in_flight is flush
            self.flight = flush
        else:
            assert self.md.in_flight is None

    @precondition(lambda self: self.flight is not None)
    @rule()
    def succeed(self) -> None:
        """The platform takes every body and answers with the run's metadata."""
        assert self.flight is not None
        self.server.deliver(self.md, self.flight)
        self.flight = None

    @precondition(lambda self: self.flight is not None)
    @rule(delivered=st.integers(min_value=0, max_value=3))
    def fail(self, delivered: int) -> None:
        """The first ``delivered`` bodies get through, then the request fails: the rest is restored."""
        assert self.flight is not None
        texts = self.flight.texts()
        delivered = min(delivered, len(texts))
        for text in texts[:delivered]:
            self.server.take(text)
        self.md.restore(self.flight, delivered=delivered)
        self.flight = None

    @precondition(lambda self: self.flight is None)
    @rule()
    def refresh(self) -> None:
        """Adopting the platform's metadata with nothing in flight keeps the local view."""
        self.md.accept(Flush(), copy.deepcopy(self.server.own))

    @precondition(lambda self: self.flight is None and not self.md.pending)
    @rule(size=st.integers(min_value=0, max_value=500))
    def another_writer(self, size: int) -> None:
        """Another writer grows the platform's metadata, maybe past the limit, and a refresh adopts it."""
        self.server.own = apply(self.server.own, Set("other", "x" * size)).metadata
        # apply shares one value among the places a wildcard wrote it, and deepcopy keeps
        # that sharing; the oracle mutates in place, so its state must share nothing.
        self.model = json.loads(json.dumps(self.server.own))
        self.md.accept(Flush(), copy.deepcopy(self.server.own))

    @invariant()
    def local_state_matches_the_oracle(self) -> None:
        """current(), get() and the tracked size agree with the oracle at every step."""
        current = self.md.current().to_dict()
        assert self.same(current, self.model)
        assert self.md.size == json_size(current)
        if self.exact:
            assert self.md.size == json_size(self.model)
        for key in LITERAL_KEYS:
            value = self.md.get(key)
            if key in self.model:
                assert self.same(plain(value), self.model[key])
            else:
                assert value is None

    @invariant()
    def delivered_state_matches_the_oracle(self) -> None:
        """Once nothing is queued or in flight, the platform holds what the oracle says."""
        if self.flight is None and not self.md.pending:
            assert self.same(self.server.own, self.model)
            assert self.same(self.server.parent, self.parent_model)
            assert self.same(self.server.root, self.root_model)

    def teardown(self) -> None:
        """Deliver everything: the platform ends where the oracle does."""
        if not hasattr(self, "md"):
            return
        if self.flight is not None:
            self.md.restore(self.flight)
        self.server.flush(self.md)
        assert not self.md.pending
        assert self.same(self.server.own, self.model)
        assert self.same(self.server.parent, self.parent_model)
        assert self.same(self.server.root, self.root_model)


# The profile's example count (tests/conftest.py), with runs long enough for flushes to
# interleave with calls.
BufferMachine.TestCase.settings = settings(settings.default, stateful_step_count=50)
TestBufferMachine = BufferMachine.TestCase

# Floats for the float model: bounded, so that the rounding a reassociated sum can
# differ by stays far below close_json's tolerance, and a few that round visibly.
_FLOATS = st.one_of(
    st.sampled_from([0.1, 0.2, 0.3, -0.3, 0.7, 1e-7, -0.0]),
    st.floats(min_value=-1000, max_value=1000, allow_nan=False),
)
_NUMBERS = st.one_of(st.integers(min_value=-1000, max_value=1000), _FLOATS)
_WORDS = st.sampled_from(["", "a", "x", "日本語", "\ud800"])


def _float_values(*, numbers: bool = True) -> st.SearchStrategy[Any]:
    """JSON values with bounded ints and floats (or with no numbers at all)."""
    return json_values(numbers=_NUMBERS if numbers else st.nothing(), max_leaves=4)


_FLOAT_METADATA = metadata(numbers=_NUMBERS, max_leaves=4)


def _float_operations(*, unsafe: bool = True, update: bool = True) -> st.SearchStrategy[Operation]:
    """Operations writing and adding floats.

    A remove's value holds no number: a number rounded differently in the buffer and
    in the oracle would be removed from one and not the other, and they would differ
    by more than rounding from then on.
    """
    key = keys(unsafe=unsafe)
    options: list[st.SearchStrategy[Any]] = [
        st.builds(Set, key, _float_values()),
        st.builds(Delete, key),
        st.builds(Append, key, _float_values()),
        st.builds(Remove, key, _float_values(numbers=False)),
        st.builds(Increment, key, _NUMBERS),
    ]
    if update:
        options.append(st.builds(Update, _FLOAT_METADATA))
    return st.one_of(*options)


class FloatBufferMachine(BufferMachine):
    """:class:`BufferMachine` with float values and float increments, numbers compared with isclose.

    Each call is applied locally as it comes, but the platform receives collapsed
    batches, where float increments are merged: buffer, platform and oracle then agree
    up to reassociation. The buffer's tracked size must still equal the JSON size of
    its metadata exactly.
    """

    exact = False

    @initialize(
        initial=_FLOAT_METADATA,
        limit=st.sampled_from([None, 150, 400]),
        is_root=st.sampled_from([False, False, True]),
        body_bytes=st.sampled_from([MAX_REQUEST_BYTES, 260, 160]),
    )
    def start(self, initial: Metadata, limit: int | None, is_root: bool, body_bytes: int) -> None:
        """A run starting from metadata holding floats."""
        super().start(initial, limit, is_root, body_bytes)

    @rule(
        op=_float_operations(),
        who=st.sampled_from(["self", "self", "parent", "root"]),
        via_decrement=st.booleans(),
    )
    def call(self, op: Operation, who: str, via_decrement: bool) -> None:
        """One documented call, with floats, on the run, its parent or its root."""
        super().call(op, who, via_decrement)

    @rule(
        op=st.one_of(
            st.builds(Append, st.just("logs"), st.one_of(_WORDS, _NUMBERS)),
            st.builds(Remove, st.just("logs"), _WORDS),
            st.builds(Increment, st.sampled_from(["n", "$.logs.0", "$.*"]), _NUMBERS),
            st.builds(Set, st.sampled_from(["logs", "n"]), st.lists(_NUMBERS, max_size=3)),
            st.builds(Delete, st.sampled_from(["logs", "n"])),
        ),
        who=st.sampled_from(["self", "parent", "root"]),
    )
    def busy_call(self, op: Operation, who: str) -> None:
        """Float increments crowding two keys, merged by collapse across flushes."""
        self.call(op, who, via_decrement=False)

    @rule(ops=st.lists(_float_operations(unsafe=False, update=False), min_size=2, max_size=4))
    def chain(self, ops: list[Operation]) -> None:
        """Several calls with floats chained in one expression."""
        super().chain(ops)

    @rule(
        key=st.sampled_from(["n", "$.logs.0", "$.*"]),
        amounts=st.lists(_FLOATS, min_size=2, max_size=4),
        who=st.sampled_from(["self", "self", "parent"]),
    )
    def progress(self, key: str, amounts: list[float], who: str) -> None:
        """A run of float increments on one key, as a progress counter makes: collapse merges them."""
        for amount in amounts:
            self.call(Increment(key, amount), who, via_decrement=amount < 0)


FloatBufferMachine.TestCase.settings = settings(settings.default, stateful_step_count=50)
TestFloatBufferMachine = FloatBufferMachine.TestCase


@given(initial=metadata(), ops=st.lists(operations(unsafe=False), max_size=15))
def test_tracked_size_is_the_json_size_with_floats_too(initial: Metadata, ops: list[Operation]) -> None:
    """With floats, the size kept call by call still equals json_size of current()."""
    md = RunMetadata(initial, limit=10**7)
    for op in ops:
        _call(md, op, False)
        assert md.size == json_size(md.current().to_dict())


@given(value=json_values())
def test_any_json_value_round_trips_through_set_and_get(value: Any) -> None:
    """get returns what set stored, and the wire text carries it back unchanged."""
    md = RunMetadata(limit=10**7)
    md.set("v", value)
    got = md.get("v")
    if isinstance(got, DictView):
        got = got.to_dict()
    elif isinstance(got, ListView):
        got = got.to_list()
    assert same_json(got, value)
    (text,) = md.drain().texts()
    assert same_json(json.loads(text.encode("utf-8"))["operations"][0]["value"], value)


# --------------------------------------------------------------------------- threads


def test_threads_lose_nothing() -> None:
    """8 threads x 1,000 calls while a flusher drains, fails and retries: every call arrives once."""
    md = RunMetadata(is_root=False, max_request_bytes=4_000)
    server = Server()
    threads_count, calls = 8, 1_000
    start = threading.Barrier(threads_count + 1)
    done = threading.Event()
    progress = threading.Condition()
    rounds = [0]
    errors: list[BaseException] = []

    def next_round(seen: int) -> Callable[[], bool]:
        return lambda: rounds[0] > seen or done.is_set()

    def worker(index: int) -> None:
        try:
            start.wait()
            for j in range(calls):
                if j % 100 == 99:
                    # Every 100 calls, wait for the flusher to finish one more round: flushes
                    # (and their failures) keep interleaving with the calls of all threads.
                    with progress:
                        progress.wait_for(next_round(rounds[0]), timeout=10)
                kind = j % 10
                if kind < 6:
                    md.increment(f"t{index}")
                elif kind == 6:
                    md.append("log", f"{index}:{j}")
                elif kind == 7:
                    md.parent.increment("rows")
                    md.root.append("seen", index)
                elif kind == 8:
                    md.increment("total", 2).decrement("total")
                else:
                    md.set(f"last{index}", j)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def flusher() -> None:
        chance = random.Random(20261122)
        try:
            start.wait()
            while not done.is_set():
                with progress:
                    rounds[0] += 1
                    progress.notify_all()
                flush = md.drain()
                if not flush:
                    continue
                outcome = chance.random()
                if outcome < 0.3:
                    md.restore(flush)
                elif outcome < 0.5:
                    texts = flush.texts()
                    delivered = chance.randrange(len(texts) + 1)
                    for text in texts[:delivered]:
                        server.take(text)
                    md.restore(flush, delivered=delivered)
                else:
                    server.deliver(md, flush)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads_count)]
        background = threading.Thread(target=flusher)
        for thread in [*workers, background]:
            thread.start()
        for thread in workers:
            thread.join()
        done.set()
        background.join()
    finally:
        sys.setswitchinterval(previous)
    assert errors == []
    flush = md.drain() if md.in_flight is None else md.in_flight
    if flush:
        server.deliver(md, flush)
    assert not md.pending
    assert md.in_flight is None
    for i in range(threads_count):
        assert server.own[f"t{i}"] == 600
        assert server.own[f"last{i}"] == 999
    assert server.own["total"] == threads_count * 100
    assert sorted(server.own["log"]) == sorted(
        f"{i}:{j}" for i in range(threads_count) for j in range(calls) if j % 10 == 6
    )
    assert server.parent == {"rows": threads_count * 100}
    assert sorted(server.root["seen"]) == sorted(i for i in range(threads_count) for _ in range(100))
    assert same_json(md.current().to_dict(), server.own)
    assert md.size == json_size(server.own)
