"""Laws of apply, checked by hypothesis over arbitrary states and batches."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from metaops import Operation, apply, json_size
from metaops._apply import apply_sized
from metaops._json import json_identical
from metaops.strategies import batches, metadata, operations

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
