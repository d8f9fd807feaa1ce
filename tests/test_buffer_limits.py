"""RunMetadata and the size limit: every call is measured, past the limit it is refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from metaops import (
    InvalidLimitError,
    MetadataTooLargeError,
    Remove,
    Set,
    json_size,
)
from metaops.buffer import Flush, RunMetadata
from tests.buffer_support import snapshot
from tests.oracle import same_json

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
