"""RunMetadata: the documented examples, chaining, parent and root, and what a call reports."""

from __future__ import annotations

import json

import pytest

from metaops import (
    Append,
    Delete,
    Increment,
    InvalidValueError,
    Remove,
    Set,
    Update,
    apply,
)
from metaops.buffer import DictView, Flush, ListView, MetadataUpdater, RunMetadata
from metaops.server import parse_update_request
from tests.buffer_support import UPDATE_METHODS, Server
from tests.oracle import same_json

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
        *(getattr(RunMetadata, name) for name in UPDATE_METHODS),
        *(
            getattr(RunMetadata, name)
            for name in ("current", "get", "drain", "restore", "accept", "reject", "unapplied")
        ),
        MetadataUpdater,
        Flush,
        Flush.texts,
        Flush.packet,
        Flush.bodies,
        DictView,
        ListView,
        DictView.to_dict,
        ListView.to_list,
    ],
    ids=lambda member: getattr(member, "__qualname__", None) or "property",
)
def test_public_methods_show_an_example(member: object) -> None:
    """Each public method's docstring carries a doctest example, which --doctest-modules runs."""
    doc = getattr(member, "__doc__", None) or ""
    assert ">>> " in doc


def test_the_update_methods_are_written_once_for_a_run_and_its_parent_and_root() -> None:
    """md.set and md.parent.set are one function: checks, fast paths and errors cannot drift apart."""
    for name in UPDATE_METHODS:
        assert getattr(RunMetadata, name) is getattr(MetadataUpdater, name), name


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
