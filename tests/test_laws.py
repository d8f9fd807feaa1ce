"""Laws of apply, checked by hypothesis over arbitrary states and batches."""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaops import (
    MAX_DEPTH,
    MAX_REQUEST_BYTES,
    Append,
    InvalidOperationError,
    InvalidValueError,
    MetaopsError,
    Operation,
    Remove,
    RunMetadata,
    Set,
    apply,
    chunk,
    collapse,
    compose,
    json_equal,
    json_size,
    json_text,
    parse_operation,
)
from metaops._apply import apply_sized
from metaops._json import MAX_EXACT_INT, MAX_METADATA_DEPTH, json_identical
from metaops.strategies import (
    adversarial_keys,
    adversarial_operations,
    batches,
    deep_values,
    extreme_numbers,
    json_values,
    metadata,
    operations,
)

from .oracle import oracle_apply


def _snapshot(value: Any) -> str:
    # A JSON text keeps what == blurs: bool vs int, key order.
    return json.dumps(value, sort_keys=False)


@given(metadata(), batches())
def test_apply_never_mutates_its_inputs(state: dict[str, Any], ops: list[Operation]) -> None:
    """Neither the metadata nor any operation's value changes, however they alias."""
    before_state = _snapshot(state)
    before_ops = _snapshot([op.to_wire() for op in ops])
    apply(state, ops)
    assert _snapshot(state) == before_state
    assert _snapshot([op.to_wire() for op in ops]) == before_ops


@given(metadata(), batches())
def test_apply_matches_the_naive_model(state: dict[str, Any], ops: list[Operation]) -> None:
    """Copy-on-write gives what deep-copy-and-mutate gives, key order included.

    Compared as JavaScript would see them: apply leaves ``0`` where adding ``0.0``
    changes nothing, the model writes ``0.0``; both are the JSON text ``0``.
    """
    expected, unapplied = oracle_apply(state, ops)
    result = apply(state, ops)
    assert json_identical(result.metadata, expected), (result.metadata, expected)
    assert [i for i, op in enumerate(ops) if any(op is u for u in result.unapplied)] == unapplied


@given(metadata(), batches())
def test_batch_equals_one_by_one(state: dict[str, Any], ops: list[Operation]) -> None:
    """Applying a batch equals applying its operations one at a time."""
    batch = apply(state, ops)
    current = state
    unapplied: list[Operation] = []
    for op in ops:
        step = apply(current, [op])
        current = step.metadata
        unapplied.extend(step.unapplied)
    assert _snapshot(batch.metadata) == _snapshot(current)
    assert list(batch.unapplied) == unapplied


@given(metadata(), batches())
def test_same_object_exactly_when_nothing_changed(state: dict[str, Any], ops: list[Operation]) -> None:
    """The input comes back as itself iff the result is identical to it (key order too)."""
    result = apply(state, ops)
    assert (result.metadata is state) == json_identical(result.metadata, state)
    if result.metadata is not state:
        # A changed result is a new top-level dict: writing to it cannot touch the input.
        result.metadata["__probe__"] = 1
        assert "__probe__" not in state


@given(metadata(), st.lists(operations(), max_size=30))
def test_apply_never_raises(state: dict[str, Any], ops: list[Operation]) -> None:
    """Any operation on any state is applied or reported, never an exception."""
    result = apply(state, ops)
    assert isinstance(result.metadata, dict)
    assert all(any(u is op for op in ops) for u in result.unapplied)


@given(metadata(), batches(), batches())
def test_results_stay_independent(
    state: dict[str, Any], first: list[Operation], second: list[Operation]
) -> None:
    """Applying more to a result never changes the earlier result (shared subtrees stay put)."""
    one = apply(state, first)
    frozen = _snapshot(one.metadata)
    apply(one.metadata, second)
    assert _snapshot(one.metadata) == frozen
    assert copy.deepcopy(one.metadata) == one.metadata


@given(metadata(), batches())
def test_tracked_size_is_exact(state: dict[str, Any], ops: list[Operation]) -> None:
    """apply_sized keeps the JSON size exactly, write by write, without re-measuring."""
    result, size = apply_sized(state, ops, json_size(state))
    assert size == json_size(result.metadata)
    assert _snapshot(result.metadata) == _snapshot(apply(state, ops).metadata)


# ------------------------------------------------------------------ adversarial inputs
#
# Long paths, escapes and brackets, values at and past the depth bound, ints past 2**53
# and floats near overflow: what found the defects these laws now pin down. Each case is
# dearer than a plain one, so these run a third of the profile's examples.

_ROBUSTNESS = settings(max_examples=max(10, settings().max_examples // 3))


def _tower(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _deep_states(deepest: int = MAX_METADATA_DEPTH) -> st.SearchStrategy[dict[str, Any]]:
    """Metadata with "a" keys nested up to ``deepest`` levels (the top object counted),
    besides the ordinary states."""
    towers = st.integers(min_value=MAX_DEPTH - 4, max_value=deepest - 1).map(
        lambda levels: {"a": _tower(levels), "l": [1, [2]]}
    )
    return st.one_of(metadata(), towers)


def _deep_operations() -> st.SearchStrategy[Operation]:
    """Adversarial operations, and writes at every depth of the "a" tower."""
    deep_path = st.integers(min_value=1, max_value=MAX_METADATA_DEPTH).map(
        lambda n: "$." + ".".join(["a"] * n)
    )
    near_the_bound = st.one_of(deep_values(min_levels=0, max_levels=8), deep_values())
    return st.one_of(
        adversarial_operations(),
        st.builds(Set, deep_path, near_the_bound),
        st.builds(Append, deep_path, near_the_bound),
    )


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _numbers_in(value: Any) -> list[int | float]:
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            found.append(item)
    return found


def _refusal(call: Callable[[], object]) -> MetaopsError | None:
    """The MetaopsError ``call`` raised, if any (any other exception fails the test)."""
    try:
        call()
    except MetaopsError as error:
        return error
    return None


def _shape(value: Any) -> Any:
    """``value`` with every number the same: what collapse keeps exactly whatever the rounding."""
    if isinstance(value, dict):
        return [[key, _shape(item)] for key, item in value.items()]
    if isinstance(value, list):
        return [_shape(item) for item in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0
    return value


@_ROBUSTNESS
@given(_deep_states(), st.lists(_deep_operations(), max_size=8))
def test_apply_takes_anything_and_keeps_its_invariants(state: dict[str, Any], ops: list[Operation]) -> None:
    """Applied or reported, never an exception; never deeper than the bound; numbers as JavaScript holds them;
    the text written is what was measured, and the tracked size is exact."""
    result, size = apply_sized(state, ops, json_size(state))
    metadata = result.metadata
    assert _depth(metadata) <= MAX_METADATA_DEPTH
    assert all(
        type(n) is not int or abs(n) <= MAX_EXACT_INT
        for n in _numbers_in(metadata)
        if n not in _numbers_in(state)
    )
    assert size == json_size(metadata)
    text = json_text(metadata)
    assert json_size(json.loads(text)) == size  # what is stored is what was measured
    assert json_equal(apply(state, ops).metadata, metadata)


@_ROBUSTNESS
@given(_deep_states(), st.lists(_deep_operations(), max_size=8), st.lists(_deep_operations(), max_size=4))
def test_collapse_and_compose_take_anything_and_keep_the_shape_of_the_result(
    state: dict[str, Any], ops: list[Operation], more: list[Operation]
) -> None:
    """collapse and compose never raise, never lengthen a batch, and change no key, list or
    string of the result (numbers may round differently where merged sums pass 2**53 or overflow)."""
    collapsed = collapse(ops)
    assert len(collapsed) <= len(ops)
    assert _shape(apply(state, collapsed).metadata) == _shape(apply(state, ops).metadata)
    composed = compose(collapsed, more)
    assert composed == collapse([*ops, *more])
    assert _shape(apply(state, composed).metadata) == _shape(apply(state, [*ops, *more]).metadata)
    for part in chunk(composed):
        assert json_size({"operations": [op.to_wire() for op in part]}) <= MAX_REQUEST_BYTES


@_ROBUSTNESS
@given(
    st.one_of(
        deep_values(min_levels=MAX_DEPTH + 1, max_levels=MAX_DEPTH + 40),
        st.integers(min_value=1_000, max_value=20_000).map(lambda levels: _tower(levels)),
        st.integers(min_value=2**1024, max_value=2**1100).flatmap(
            lambda n: st.sampled_from([n, [n], {"a": -n}])
        ),
        st.sampled_from([math.inf, -math.inf, math.nan, {1, 2}, object(), {"a": b"x"}, {(1,): 1}]),
    )
)
def test_what_is_not_a_value_raises_only_typed_errors(value: Any) -> None:
    """Too deep, too large, not JSON: every public function refuses it with a MetaopsError
    that is also the built-in a caller would catch, or answers; never RecursionError."""
    for build in (Set, Append, Remove):
        with pytest.raises(InvalidValueError):
            build("a", value)
    with pytest.raises(InvalidOperationError):
        parse_operation({"type": "set", "key": "a", "value": value})
    for call in (
        lambda: json_size(value),
        lambda: json_text(value),
        lambda: json_equal(value, copy.copy(value)),
    ):
        refusal = _refusal(call)
        assert refusal is None or isinstance(refusal, TypeError)


_CALLS = ("set", "append", "remove", "increment", "decrement", "delete")


@_ROBUSTNESS
@given(
    _deep_states(MAX_DEPTH),  # RunMetadata takes starting metadata nested at most MAX_DEPTH levels
    st.lists(
        st.tuples(
            st.sampled_from(_CALLS),
            adversarial_keys(),
            st.one_of(
                extreme_numbers(), deep_values(min_levels=0, max_levels=MAX_DEPTH), json_values(max_leaves=4)
            ),
        ),
        max_size=10,
    ),
)
def test_run_metadata_tracks_exactly_the_size_it_stores(
    state: dict[str, Any], calls: list[tuple[str, str, Any]]
) -> None:
    """Whatever the calls (typed errors allowed), RunMetadata's size is json_size of its metadata,
    and its flush bodies hold text that reads back as the operations it drained."""
    md = RunMetadata(state)
    for name, key, value in calls:
        arguments = (key,) if name == "delete" else (key, value)
        refusal = _refusal(functools.partial(getattr(md, name), *arguments))
        assert refusal is None or isinstance(refusal, (TypeError, ValueError))
        assert md.size == json_size(md.current().to_dict())
        assert _depth(md.current().to_dict()) <= MAX_METADATA_DEPTH
    flush = md.drain()
    for text in flush.texts():
        assert json_size(json.loads(text)) <= flush.max_bytes


def test_run_metadata_tracks_big_numbers_as_javascript_stores_them() -> None:
    """The audit's case through the SDK: sums past the double range and an int of 308 digits."""
    md = RunMetadata()
    md.increment("n", 3 * 2**1022).increment("n", 3 * 2**1022).set("a", 2**1023)
    stored = md.current().to_dict()
    assert json_text(stored) == '{"n":null,"a":8.98846567431158e+307}'  # JSON.stringify's text
    assert md.size == json_size(stored) == 36
