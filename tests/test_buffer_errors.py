"""RunMetadata refuses bad input at the call, with a typed error naming the call, and changes nothing."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given

from metaops import (
    MAX_DEPTH,
    Append,
    Increment,
    InvalidArgumentError,
    InvalidLimitError,
    InvalidOperationError,
    InvalidValueError,
    MetadataTooLargeError,
    MetaopsError,
    Set,
    apply,
    json_size,
)
from metaops._arguments import _copies_exactly
from metaops._json import MAX_METADATA_DEPTH, nests_within, normalize
from metaops.buffer import DictView, Flush, ListView, RunMetadata
from metaops.strategies import metadata
from tests.buffer_support import Metadata, budget, snapshot
from tests.oracle import same_json

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
        (lambda md: md.parent.delete(7), InvalidValueError, "parent.delete: key must be a str"),
        (lambda md: md.root.delete("__proto__"), InvalidOperationError, "root.delete: the key"),
        (lambda md: md.parent.decrement("n", []), InvalidValueError, "parent.decrement: n must be a number"),
        (lambda md: md.root.remove("$.prototype", 1), InvalidOperationError, "root.remove: the key"),
        (lambda md: md.root.remove("a", math.nan), InvalidValueError, "root.remove: value is nan"),
        (lambda md: md.parent.append("a", b"x"), InvalidValueError, "parent.append: value is a bytes"),
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


# A key of 48 KB, as long as a 48 KB request body makes it (unsafe: it reaches "constructor").
_LONG_KEY = "$." + "a." * 24_000 + "constructor"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda md: md.set(_LONG_KEY, 1), InvalidOperationError),
        (lambda md: md.parent.increment(_LONG_KEY), InvalidOperationError),
        (lambda md: md.get(_LONG_KEY), InvalidOperationError),
        # (safe and long: too large for the limit, or for any request body)
        (lambda md: md.set("k" * 48_000, 1), MetadataTooLargeError),
        (lambda md: md.parent.delete("k" * 48_000), MetadataTooLargeError),
    ],
)
def test_errors_show_a_long_key_cut_short(call: Any, error: type[Exception]) -> None:
    """An error about a 48 KB key quotes its start and end, not all of it: the message stays short.

    (The unsafe-key error and the size errors quoted the whole key: a 48 KB message.)
    """
    md = RunMetadata(is_root=False, limit=40_000, max_request_bytes=40_000)
    with pytest.raises(error) as caught:
        call(md)
    message = str(caught.value)
    assert len(message) < 300, message[:300]
    assert "..." in message


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


# --------------------------------------------------------------------------- deep values


def _nested(depth: int) -> Any:
    """A list ``depth`` levels deep: ``[[...[]...]]``."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# The list in {"a": [...]} may nest one level less than the metadata object.
_WHOLE = (MAX_METADATA_DEPTH - 1, MAX_METADATA_DEPTH)
_WRAPPED = (MAX_DEPTH - 1, MAX_DEPTH)


@pytest.mark.parametrize("beyond", [1, 1_000, 5_000])
@pytest.mark.parametrize(
    ("call", "where", "bound", "limit"),
    [
        (lambda md, deep: md.set("a", deep), "set: value", MAX_DEPTH, MAX_DEPTH),
        (lambda md, deep: md.append("a", deep), "append: value", MAX_DEPTH, MAX_DEPTH),
        (lambda md, deep: md.remove("a", deep), "remove: value", MAX_DEPTH, MAX_DEPTH),
        (lambda md, deep: md.parent.set("a", deep), "parent.set: value", MAX_DEPTH, MAX_DEPTH),
        # {"k": ...} around the list is one more level of the value.
        (lambda md, deep: md.root.append("a", {"k": deep}), "root.append: value['k']", *_WRAPPED),
        (lambda md, deep: md.parent.remove("a", deep), "parent.remove: value", MAX_DEPTH, MAX_DEPTH),
        # A whole metadata object counts its top level, and may nest as deeply as metadata does.
        (lambda md, deep: md.replace({"a": deep}), "replace: metadata['a']", *_WHOLE),
        (lambda md, deep: md.root.replace({"a": deep}), "root.replace: metadata['a']", *_WHOLE),
        (lambda md, deep: md.accept(Flush(), {"a": deep}), "accept: metadata['a']", *_WHOLE),
        (lambda md, deep: RunMetadata({"a": deep}), "RunMetadata: metadata['a']", *_WHOLE),
    ],
)
def test_values_nested_too_deeply_are_refused_with_a_typed_error(
    call: Any, where: str, bound: int, limit: int, beyond: int
) -> None:
    """A value past its bound is an InvalidValueError naming the call and the place, never a RecursionError.

    ``bound`` is how deep the list given may nest, ``limit`` the bound the error names:
    MAX_DEPTH for a value, MAX_METADATA_DEPTH for a whole metadata object (whose top
    level counts). (A list nested 1,200 deep used to raise RecursionError from set,
    append, remove, replace and the constructor, and one 500 deep was taken by the
    constructor.)
    """
    md = RunMetadata({"a": [1]}, is_root=False)
    before = snapshot(md)
    with pytest.raises(InvalidValueError, match=f"nested {limit + 1} levels deep") as caught:
        call(md, _nested(bound + beyond))
    assert str(caught.value).startswith(where)
    assert same_json(snapshot(md), before)
    call(md, _nested(bound))  # one level less is taken


def test_metadata_as_deep_as_apply_makes_is_taken() -> None:
    """Metadata nested MAX_METADATA_DEPTH levels (the top dict counts), as apply can leave it,
    is taken by every way in: the constructor, ``replace`` and ``accept``.

    (They refused it past MAX_DEPTH, so accepting such a server answer failed.)
    """
    value: Any = {}
    for _ in range(MAX_DEPTH - 1):
        value = {"k": value}
    made = apply({}, [Set("a", value), Append("a", 1)]).metadata  # the append wraps the dict in a list
    assert nests_within(made, MAX_METADATA_DEPTH)
    assert not nests_within(made, MAX_METADATA_DEPTH - 1)
    md = RunMetadata(made, is_root=False)
    assert md.current() == made
    flush = md.set("b", 1).drain()
    md.accept(flush, made)
    assert md.current() == made
    md.replace({"b": 2}).replace(made)
    md.parent.replace(made)
    assert md.current() == made
    assert _copies_exactly(json.dumps(made, separators=(",", ":")))
    with pytest.raises(InvalidValueError, match=f"nested {MAX_METADATA_DEPTH + 1} levels deep"):
        RunMetadata({"a": made})


@pytest.mark.parametrize("decoy", ["][", "}{", '"][', '\\"][', "\\", "]]]]]]", "[[[[[["])
def test_brackets_and_quotes_inside_strings_cannot_hide_depth(decoy: str) -> None:
    """Strings full of brackets, quotes and backslashes neither hide nor fake the nesting depth."""
    deep: Any = []
    for level in range(MAX_DEPTH + 40):
        deep = [decoy, deep] if level % 2 else {"k": decoy, "v": deep}
    with pytest.raises(InvalidValueError, match="nested"):
        RunMetadata({"a": deep})
    shallow = {"a": [decoy, {"k": decoy * 50, decoy: [decoy]}]}
    assert same_json(RunMetadata(shallow).current(), shallow)
    # (and such metadata still takes the fast copy, not normalize's walk)
    assert _copies_exactly(json.dumps(shallow, separators=(",", ":")))
    assert not _copies_exactly(json.dumps({"a": deep}, separators=(",", ":")))


# --------------------------------------------------------------------------- whole metadata in


@pytest.mark.parametrize(
    "given",
    [
        {"s": 'a "quoted" [[[ {{ ]] \\ \\" string', "t": ["\\", '"', "[", "]"]},
        {"digits": "12345678901234567890", "n": 12345678901234567890, "m": -12345678901234567890},
        {"f": 0.30000000000000004, "big": 1.2345678901234567e300, "small": -5e-324, "z": -0.0},
        {"exact": 2**53, "past": 2**53 + 1, "neg": -(2**53) - 1},
        {"nested": [[[[["x"]]]], {"k": {"k": [1]}}], "text": "日本語 \ud800 \udfff 🎉"},
    ],
)
def test_the_fast_copy_of_whole_metadata_agrees_with_normalize(given: Metadata) -> None:
    """Constructor, accept and replace copy metadata through the C codec; the result is normalize's."""
    expected = normalize(given)
    md = RunMetadata(given, limit=10**6)
    assert same_json(md.current(), expected)
    md.replace(given)
    assert same_json(md.current(), expected)
    md.accept(md.drain(), given)
    assert same_json(md.current(), expected)
    assert md.size == json_size(expected)


@budget(3)
@given(initial=metadata())
def test_any_metadata_is_copied_as_normalize_copies_it(initial: Metadata) -> None:
    """For any metadata, the constructor holds what normalize makes of it, and shares nothing with it."""
    md = RunMetadata(initial, limit=10**7)
    assert same_json(md.current(), normalize(initial))
    assert md.current()._data is not initial


# --------------------------------------------------------------------------- error types and words


def test_every_refusal_is_a_metaops_error_and_the_matching_builtin() -> None:
    """Wrong flushes and out-of-range arguments are InvalidArgumentError, a ValueError (they were bare)."""
    md = RunMetadata()
    md.set("a", 1)
    with pytest.raises(InvalidArgumentError, match="no flush is in flight"):
        md.restore(Flush((Set("a", 1),)))
    flush = md.drain()
    with pytest.raises(InvalidArgumentError, match="delivered must be between 0 and 1"):
        md.restore(flush, delivered=2)
    with pytest.raises(InvalidArgumentError, match="not the one in flight"):
        md.accept(Flush((Set("z", 1),)), {})
    with pytest.raises(InvalidArgumentError, match="not the one in flight"):
        md.reject(Flush((Set("z", 1),)), "400")
    with pytest.raises(InvalidValueError, match="reject: reason must be a str"):
        md.reject(flush, 400)  # type: ignore[arg-type]
    for error in (InvalidArgumentError, InvalidValueError):
        assert issubclass(error, MetaopsError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert md.in_flight is flush


@pytest.mark.parametrize(
    "call",
    [
        lambda md: md.replace([1]),
        lambda md: md.parent.replace("x"),
        lambda md: RunMetadata(["a"]),  # type: ignore[arg-type]
        lambda md: md.accept(Flush(), [1]),
        lambda md: md.increment("n", "1"),
        lambda md: md.set(3, 1),
        lambda md: DictView([1]),  # type: ignore[arg-type]
        lambda md: ListView("ab"),
        lambda md: md.current().clear(),
        lambda md: md.restore(Flush(), delivered="1"),
    ],
)
def test_messages_speak_python(call: Any) -> None:
    """The buffer's own words for what it expected are Python's (dict, list, str), not JSON's."""
    md = RunMetadata(is_root=False)
    with pytest.raises(MetaopsError) as caught:
        call(md)
    words = set(re.findall(r"[a-z]+", str(caught.value)))
    assert not words & {"object", "array", "null", "true", "false", "undefined"}, caught.value
