"""RunMetadata flushes: drain, accept, restore, reject, and the request bodies a Flush plans."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from metaops import (
    MAX_REQUEST_BYTES,
    Increment,
    InvalidArgumentError,
    InvalidValueError,
    RejectedFlush,
    Remove,
    Set,
    apply,
    buffer,
    collapse,
    json_size,
)
from metaops.buffer import Flush, FlushInFlightError, MetadataUpdater, RunMetadata
from metaops.server import parse_update_request
from tests.buffer_support import Server, snapshot
from tests.oracle import same_json

# --------------------------------------------------------------------------- drain, accept, restore


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


def test_an_interrupted_drain_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt while a drain collapses puts everything back, reports included."""
    md = RunMetadata({"n": 1}, is_root=False)
    md.increment("n").remove("n", 1)
    md.parent.set("p", 1)
    before = snapshot(md)

    def interrupted(ops: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(buffer, "collapse", interrupted)
    with pytest.raises(KeyboardInterrupt):
        md.drain()
    monkeypatch.undo()
    assert same_json(snapshot(md), before)
    flush = md.drain()
    assert (flush.operations, flush.parent_operations) == ((Increment("n", 1),), (Set("p", 1),))
    assert flush.unapplied == (Remove("n", 1),)


def test_a_flush_being_drained_cannot_be_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a drain's start and its Flush, accept, restore and reject are refused (another thread's)."""
    md = RunMetadata()
    md.set("a", 1)
    refusals: list[str] = []
    real_collapse = buffer.collapse  # type: ignore[attr-defined]

    def collapse_meanwhile(ops: Any) -> Any:
        resolutions: list[Callable[[], None]] = [
            lambda: md.accept(Flush(), {}),
            lambda: md.restore(Flush()),
            lambda: md.reject(Flush(), "400"),
        ]
        for resolve in resolutions:
            with pytest.raises(InvalidArgumentError, match="a flush is being drained") as caught:
                resolve()
            refusals.append(str(caught.value).split(":")[0])
        return real_collapse(ops)

    monkeypatch.setattr(buffer, "collapse", collapse_meanwhile)
    flush = md.drain()
    assert refusals == ["accept", "restore", "reject"] * 3  # once per list collapsed
    assert md.in_flight is flush


def test_a_refresh_racing_a_drain_and_restore_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh whose queue was drained and restored meanwhile re-applies the queue as it is now."""
    md = RunMetadata({"n": 0})
    md.increment("n").append("log", "a")
    real_apply = buffer.apply_sized  # type: ignore[attr-defined]
    raced: list[bool] = []

    def apply_meanwhile(metadata: Any, ops: Any, size: int) -> Any:
        if not raced:
            raced.append(True)
            md.restore(md.drain())  # another thread's failed flush: a new queue list
        return real_apply(metadata, ops, size)

    monkeypatch.setattr(buffer, "apply_sized", apply_meanwhile)
    md.accept(Flush(), {"n": 5, "x": True})
    monkeypatch.undo()
    assert raced == [True]
    assert md.current() == {"n": 6, "x": True, "log": ["a"]}
    assert md.size == json_size(md.current())


# --------------------------------------------------------------------------- reject


def test_reject_sets_a_refused_flush_aside_and_calls_go_on() -> None:
    """reject: the flush leaves flight, nothing is requeued, (flush, reason) is kept, the metadata stays."""
    md = RunMetadata({"n": 0}, is_root=False)
    md.set("status", "x" * 20).increment("n")
    md.parent.append("runs", "run_1")
    refused = md.drain()
    md.increment("n", 10)  # made while the refused flush was out
    shown = md.current()
    size = md.size
    md.reject(refused, "413: metadata too large")
    assert md.in_flight is None
    assert md.rejected == (RejectedFlush(refused, "413: metadata too large"),)
    assert md.rejected[0].flush is refused
    assert md.current() is shown
    assert md.current() == {"n": 11, "status": "x" * 20}
    assert md.size == size
    # Only what came after the drain is still queued; calls and drains go on.
    assert md.set("later", True).drain().operations == (Increment("n", 10), Set("later", True))
    assert md.in_flight is not None
    assert md.rejected == (RejectedFlush(refused, "413: metadata too large"),)


def test_the_next_accept_heals_what_a_rejected_flush_left_behind() -> None:
    """The refused calls show locally until the next accept adopts the platform's metadata."""
    md = RunMetadata()
    server = Server()
    md.set("a", 1).append("log", "refused")
    md.reject(md.drain(), "400: invalid body")
    md.set("b", 2)
    assert md.current() == {"a": 1, "log": ["refused"], "b": 2}
    server.flush(md)
    assert server.own == {"b": 2}
    assert md.current() == {"b": 2}
    assert md.size == json_size({"b": 2})
    md.set("a", 1)  # the same call again is a change now, and is sent
    server.flush(md)
    assert server.own == md.current() == {"b": 2, "a": 1}


def test_a_split_flush_is_rejected_whole() -> None:
    """A flush of several bodies is set aside as one: none of its bodies is sent again."""
    md = RunMetadata(max_request_bytes=120, limit=10_000)
    for i in range(6):
        md.set(f"key{i}", "v" * 20)
    refused = md.drain()
    assert len(refused.texts()) > 1
    md.reject(refused, "400: refused")
    assert not md.pending
    assert not md.drain()
    assert md.rejected[0].flush.operations == refused.operations


def test_reject_needs_the_flush_in_flight_and_a_reason() -> None:
    """Rejecting a flush that is not out, or without a str reason, raises and changes nothing."""
    md = RunMetadata()
    md.set("a", 1)
    with pytest.raises(InvalidArgumentError, match="reject: no flush is in flight"):
        md.reject(Flush((Set("a", 1),)), "400")
    flush = md.drain()
    before = snapshot(md)
    with pytest.raises(InvalidArgumentError, match="reject: this flush is not the one in flight"):
        md.reject(Flush((Set("z", 1),)), "400")
    with pytest.raises(InvalidValueError, match="reject: expected the Flush that drain"):
        md.reject("flush", "400")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="reject: reason must be a str, got 413"):
        md.reject(flush, 413)  # type: ignore[arg-type]
    assert same_json(snapshot(md), before)
    md.reject(Flush((Set("a", 1),)), "an equal flush is the same flush")
    with pytest.raises(InvalidArgumentError, match="no flush is in flight"):
        md.reject(flush, "twice")
    assert [rejected.reason for rejected in md.rejected] == ["an equal flush is the same flush"]


def test_rejected_flush_is_a_frozen_pair() -> None:
    """RejectedFlush is the pair (flush, reason): it compares by value and cannot be changed."""
    flush = Flush((Set("a", 1),))
    rejected = RejectedFlush(flush, "400")
    assert rejected == RejectedFlush(Flush((Set("a", 1),)), "400") == (flush, "400")
    assert tuple(rejected) == (rejected.flush, rejected.reason) == (flush, "400")
    assert rejected != RejectedFlush(flush, "413")
    with pytest.raises(AttributeError):
        rejected.reason = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- request bodies


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


def test_the_packet_of_a_split_flush_holds_every_body() -> None:
    """The completion is not split: its packet carries all three lists whole, however many bodies."""
    md = RunMetadata(is_root=False, max_request_bytes=150, limit=10_000)
    for i in range(5):
        md.set(f"key{i}", "v" * 20)
        md.root.increment(f"r{i}")
    flush = md.drain()
    assert len(flush.texts()) > 1
    data = json.loads(flush.packet()["data"])
    assert data == {
        "operations": [op.to_wire() for op in flush.operations],
        "parentOperations": [],
        "rootOperations": [op.to_wire() for op in flush.root_operations],
    }


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
    small = RunMetadata(limit=100, max_request_bytes=500)
    assert repr(small) == "RunMetadata({}, is_root=True, limit=100, max_request_bytes=500)"
    assert repr(md.parent) == "MetadataUpdater(target='parent')"
    assert isinstance(md.root, MetadataUpdater)
    assert md.is_root is False


class _SetLookalike(Set):
    """A subclass of an operation class: no operation, as apply, collapse and chunk say."""

    __slots__ = ()


def test_a_flush_takes_only_operations_as_apply_and_collapse_do() -> None:
    """An instance of a subclass of Set is refused by Flush, naming Flush and the place, as apply,
    collapse and chunk refuse it. (Flush took it whenever its bodies fit without splitting.)"""
    lookalike = _SetLookalike("a", 1)
    with pytest.raises(InvalidValueError, match=r"^Flush: parent_operations\[1\] is .*not an operation"):
        Flush(parent_operations=(Set("a", 1), lookalike))
    with pytest.raises(InvalidValueError, match="not an operation"):
        apply({}, [lookalike])
    with pytest.raises(InvalidValueError, match="not an operation"):
        collapse([lookalike])
