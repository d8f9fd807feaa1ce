"""``apply`` per operation, and its copy-on-write contract.

Expected results come from running the reference (``@trigger.dev/core`` 4.8.3,
``applyMetadataOperations``) on the same input, or from the README's table of divergences where metaops
differs on purpose (such cases say so); expected sizes are node's
``Buffer.byteLength(JSON.stringify(result))``.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import pytest

from metaops import (
    MAX_DEPTH,
    Append,
    Delete,
    Increment,
    InvalidValueError,
    Operation,
    Remove,
    Set,
    Update,
    apply,
    collapse,
    compose,
    json_equal,
    json_size,
    json_text,
)
from metaops._apply import apply_sized


def _untyped(value: object) -> Any:
    # For arguments of the wrong type on purpose, without a cast at each call.
    return value


def _text(value: Any) -> str:
    # JSON text keeps what == blurs: True vs 1, key order.
    return json.dumps(value)


def _unapplied_indices(ops: list[Operation], unapplied: tuple[Operation, ...]) -> list[int]:
    return [i for i, op in enumerate(ops) if any(u is op for u in unapplied)]


def _check(
    state: dict[str, Any], ops: list[Operation], expected: dict[str, Any], unapplied: list[int]
) -> None:
    before = _text(state)
    result = apply(state, ops)
    assert result.metadata == expected
    assert _text(result.metadata) == _text(expected)
    assert _unapplied_indices(ops, result.unapplied) == unapplied
    assert len(result.unapplied) == len(unapplied)
    assert _text(state) == before


# ---------------------------------------------------------------- set


@pytest.mark.parametrize(
    ("state", "ops", "expected"),
    [
        ({"a": 1}, [Set("b", [1])], {"a": 1, "b": [1]}),
        ({"a": 1}, [Set("a", None)], {"a": None}),
        ({"a": {"b": 1}}, [Set("$.a.c", 2)], {"a": {"b": 1, "c": 2}}),
        # overwriting keeps the key where it was
        ({"a": 1, "b": 2}, [Set("a", 3)], {"a": 3, "b": 2}),
        ({}, [Set("a", 1), Set("a", 2)], {"a": 2}),
    ],
)
def test_set(state: dict[str, Any], ops: list[Operation], expected: dict[str, Any]) -> None:
    """set writes a top-level key, or every match of a path."""
    _check(state, ops, expected, [])


# ---------------------------------------------------------------- delete


@pytest.mark.parametrize(
    ("state", "ops", "expected"),
    [
        ({"a": 1, "b": 2}, [Delete("a")], {"b": 2}),
        ({"a": 1}, [Delete("b")], {"a": 1}),
        # '$.'-keys are deleted literally, never as paths
        ({"$.a.b": 1, "a": {"b": 2}}, [Delete("$.a.b")], {"a": {"b": 2}}),
        ({"a": 1}, [Delete("$.a")], {"a": 1}),
        # delete then set moves the key to the end
        ({"a": 1, "b": 2}, [Delete("a"), Set("a", 1)], {"b": 2, "a": 1}),
    ],
)
def test_delete(state: dict[str, Any], ops: list[Operation], expected: dict[str, Any]) -> None:
    """delete removes a top-level key if present; an absent key is applied, changing nothing."""
    _check(state, ops, expected, [])


def test_delete_then_set_changes_key_order() -> None:
    """Key order is part of the result (wildcards read it): delete; set is not a no-op."""
    state: dict[str, Any] = {"a": 1, "b": 2}
    result = apply(state, [Delete("a"), Set("a", 1)])
    assert list(result.metadata) == ["b", "a"]
    assert result.metadata is not state


# ---------------------------------------------------------------- append


@pytest.mark.parametrize(
    ("state", "ops", "expected"),
    [
        ({"l": [1]}, [Append("l", 2)], {"l": [1, 2]}),
        ({}, [Append("l", 2)], {"l": [2]}),
        ({"l": 5}, [Append("l", 2)], {"l": [5, 2]}),
        ({"l": None}, [Append("l", 2)], {"l": [None, 2]}),
        ({"l": {"x": 1}}, [Append("l", 2)], {"l": [{"x": 1}, 2]}),
        ({"l": "s"}, [Append("l", "t")], {"l": ["s", "t"]}),
        ({"l": [1]}, [Append("l", [2, 3])], {"l": [1, [2, 3]]}),
        ({}, [Append("l", 1), Append("l", 2)], {"l": [1, 2]}),
        ({"a": {}}, [Append("$.a.l", 1)], {"a": {"l": [1]}}),
        ({"a": {"n": 5}}, [Append("$.a.n", 1)], {"a": {"n": [5, 1]}}),
        ({"a": {"l": []}}, [Append("$.a.l", 1)], {"a": {"l": [1]}}),
    ],
)
def test_append(state: dict[str, Any], ops: list[Operation], expected: dict[str, Any]) -> None:
    """append grows a list; a missing key becomes [v]; any other value, null included, [old, v]."""
    _check(state, ops, expected, [])


# ---------------------------------------------------------------- remove


@pytest.mark.parametrize(
    ("state", "op", "expected"),
    [
        (
            {"l": [{"a": 1, "b": 2}, {"b": 2.0, "a": 1}, {"a": 1, "b": True}, [1, 2], [2, 1]]},
            Remove("l", {"a": 1, "b": 2}),
            {"l": [{"a": 1, "b": True}, [1, 2], [2, 1]]},
        ),
        ({"l": [[1, 2], [2, 1], [1, 2, 3]]}, Remove("l", [1, 2.0]), {"l": [[2, 1], [1, 2, 3]]}),
        ({"l": [0, -0.0, 0.0, False, None]}, Remove("l", 0), {"l": [False, None]}),
        ({"l": [0, False, None, "", []]}, Remove("l", None), {"l": [0, False, "", []]}),
        ({"l": ["a", "a"]}, Remove("l", "a"), {"l": []}),
        ({"a": {"l": [1, 2, 1]}}, Remove("$.a.l", 1), {"a": {"l": [2]}}),
        ({"l": [1, 2]}, Remove("l", 3), {"l": [1, 2]}),
    ],
)
def test_remove_uses_deep_equality(state: dict[str, Any], op: Operation, expected: dict[str, Any]) -> None:
    """remove drops every item deep-equal to the value (1 == 1.0, key order ignored, True != 1)."""
    _check(state, [op], expected, [])


def test_remove_on_a_non_list_is_unapplied() -> None:
    """Reference: remove on anything but a list is reported unapplied and changes nothing."""
    state: dict[str, Any] = {"n": 5, "d": {"x": 1}, "z": None, "s": "abc"}
    ops: list[Operation] = [
        Remove("missing", 1),
        Remove("n", 5),
        Remove("d", {"x": 1}),
        Remove("z", None),
        Remove("s", "a"),
        Remove("$.missing", 1),
        Remove("$.d", 1),
    ]
    result = apply(state, ops)
    assert result.unapplied == tuple(ops)
    assert result.metadata is state


# ---------------------------------------------------------------- increment


@pytest.mark.parametrize(
    ("state", "op", "expected"),
    [
        ({}, Increment("n", 3), {"n": 3}),
        ({"n": 0.1}, Increment("n", 0.2), {"n": 0.30000000000000004}),
        ({"n": 1}, Increment("n", 0.5), {"n": 1.5}),
        ({"n": 1}, Increment("n", -3), {"n": -2}),
        ({"n": 1.5}, Increment("n", -1.5), {"n": 0.0}),
        ({"a": [{"n": 1}]}, Increment("$.a.0.n", 2), {"a": [{"n": 3}]}),
    ],
)
def test_increment(state: dict[str, Any], op: Operation, expected: dict[str, Any]) -> None:
    """increment adds to a number; a missing key counts as 0."""
    _check(state, [op], expected, [])


@pytest.mark.parametrize(
    ("start", "amount", "expected"),
    [
        (2**53 - 1, 1, 9007199254740992),
        (2**53, 1, 9007199254740992),  # the double sum is 2**53 again: nothing changes
        (2**53, 2, 9007199254740994.0),
        (2**53 + 1, 2**53 + 1, 18014398509481984.0),
        (10**30, 1, 1e30),
        (-(2**53), -3, -9007199254740996.0),  # node: -(2**53) - 3
    ],
)
def test_int_increments_past_2_to_the_53_give_the_double_javascript_holds(
    start: int, amount: int, expected: int | float
) -> None:
    """Ints stay exact up to 2**53; past it, a sum is the double JavaScript computes (a float)."""
    result = apply({"n": start}, [Increment("n", amount)])
    assert type(result.metadata["n"]) is type(expected)
    assert result.metadata["n"] == expected


def test_stored_text_is_what_the_size_check_measured() -> None:
    """Big ints cannot slip past the size check: they are held, measured and written as doubles."""
    overflow = apply({}, [Increment("n", 3 * 2**1022)] * 2).metadata
    assert overflow == {"n": math.inf}
    assert json_text(overflow) == '{"n":null}'
    assert json_size(overflow) == 10
    assert Set("a", 2**1023).value == 8.98846567431158e307
    big = apply({}, Set("a", 2**1023)).metadata
    assert json_text(big) == '{"a":8.98846567431158e+307}'
    assert json_size(big) == 27  # node: '{"a":8.98846567431158e+307}'
    # Given past 2**53 but exact: the value is JavaScript's, a few bytes spelled otherwise.
    sixty = apply({}, [Set("a", 2**60), Increment("b", 2**60)]).metadata
    assert json_text(sixty) == '{"a":1.152921504606847e+18,"b":1.152921504606847e+18}'
    assert json_size(sixty) == len('{"a":1152921504606847000,"b":1152921504606847000}')  # node's text


def test_float_increment_overflows_to_infinity() -> None:
    """A float increment past the largest double gives inf (JS: Infinity), never an error."""
    largest = 1.7976931348623157e308
    result = apply({"n": largest}, [Increment("n", largest)])
    assert result.metadata["n"] == math.inf
    result = apply({"n": -largest}, [Increment("n", -largest)])
    assert result.metadata["n"] == -math.inf


def test_float_increment_of_an_int_beyond_the_double_range() -> None:
    """An int too large for a double is Infinity to JavaScript; adding a float gives inf, not an error."""
    result = apply({"n": 10**400}, [Increment("n", 1.0)])
    assert result.metadata["n"] == math.inf
    result = apply({"n": -(10**400)}, [Increment("n", 0.5)])
    assert result.metadata["n"] == -math.inf


# ---------------------------------------------------------------- update


def test_update_replaces_the_whole_metadata() -> None:
    """update: the metadata becomes the value."""
    _check({"a": 1}, [Update({"b": 2})], {"b": 2}, [])
    _check({"a": 1}, [Update({})], {}, [])


def test_operations_after_update_act_on_the_new_value_without_changing_it() -> None:
    """Reference: {"l": [9, 2]}; the update's own value stays as built."""
    update = Update({"l": [1], "d": {"k": 0}})
    ops: list[Operation] = [update, Append("l", 2), Set("$.l.0", 9), Increment("$.d.k")]
    _check({"a": 1}, ops, {"l": [9, 2], "d": {"k": 1}}, [])
    assert update.value == {"l": [1], "d": {"k": 0}}


# ---------------------------------------------------------------- copy-on-write


def test_the_input_is_never_mutated() -> None:
    """A batch touching every kind of place leaves the input exactly as it was."""
    state: dict[str, Any] = {
        "n": 1,
        "l": [1, 2, [3]],
        "d": {"x": {"y": [1, {"z": 0}]}, "w": None},
        "rows": [{"n": 1}, {"n": 2}],
    }
    before = _text(state)
    ops: list[Operation] = [
        Increment("n"),
        Append("l", 4),
        Remove("l", 1),
        Append("$.l.2", 4),
        Set("$.d.x.y.1.z", 5),
        Increment("$.rows.*.n"),
        Set("$.d.x.y.5", "pad"),
        Delete("n"),
        Set("$.rows.[0:1]", {"new": True}),
    ]
    apply(state, ops)
    apply_sized(state, ops, json_size(state))
    assert _text(state) == before


def test_operation_values_are_never_mutated() -> None:
    """Writes after an operation placed its value go to copies, never into the operation."""
    ops: list[Operation] = [
        Set("a", {"n": [1]}),
        Append("$.a.n", 2),
        Increment("$.a.n.0"),
        Set("b", [1]),
        Append("b", 2),
        Remove("b", 1),
        Set("$.a.m", {"k": []}),
        Append("$.a.m.k", 1),
        Update({"u": [0]}),
        Append("u", 1),
        Set("$.u.0", 5),
    ]
    before = [_text(op.to_wire()) for op in ops]
    apply({}, ops)
    assert [_text(op.to_wire()) for op in ops] == before


def test_append_to_a_list_a_set_placed_earlier_in_the_batch() -> None:
    """A divergence (README): the reference pushes into the set's own value; metaops copies."""
    placed = Set("l", [1])
    result = apply({}, [placed, Append("l", 2)])
    assert result.metadata == {"l": [1, 2]}
    assert placed.value == [1]


def test_untouched_subtrees_are_shared_by_identity() -> None:
    """Only the containers on a written path are new; the rest is the input's own objects."""
    state: dict[str, Any] = {
        "rows": [[i, str(i)] for i in range(100)],
        "meta": {"n": 1},
        "deep": {"x": {"y": [1]}, "z": {"w": 2}},
    }
    new = _untyped(apply(state, [Increment("$.meta.n")]).metadata)
    assert new is not state
    assert new["rows"] is state["rows"]
    assert new["deep"] is state["deep"]
    assert new["meta"] is not state["meta"]

    new = _untyped(apply(state, [Set("$.deep.x.y.0", 5)]).metadata)
    assert new["rows"] is state["rows"]
    assert new["meta"] is state["meta"]
    assert new["deep"]["z"] is state["deep"]["z"]
    assert new["deep"] is not state["deep"]
    assert new["deep"]["x"] is not state["deep"]["x"]
    assert new["deep"]["x"]["y"] is not state["deep"]["x"]["y"]

    new = _untyped(apply(state, [Set("flag", True), Delete("meta")]).metadata)
    assert new["rows"] is state["rows"]
    assert new["deep"] is state["deep"]


def _peak_bytes_during(work: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["dict", "list"])
def test_each_container_is_copied_at_most_once_per_call(kind: str) -> None:
    """Fifty writes into one big container cost one copy of it, not fifty.

    Were a container copied again for a later write, the previous copy would still
    be in the result while the next is made: the peak would be two copies or more.
    """
    size = 100_000
    big: Any = {f"k{i}": i for i in range(size)} if kind == "dict" else list(range(size))
    state: dict[str, Any] = {"big": big, "other": [1]}
    keys = [f"k{i}" for i in range(0, size, size // 50)] if kind == "dict" else range(0, size, size // 50)
    ops: list[Operation] = [Set(f"$.big.{k}", -1) for k in keys]

    one_copy = _peak_bytes_during(lambda: dict(big) if kind == "dict" else list(big))
    peak = _peak_bytes_during(lambda: apply(state, ops))
    assert peak < 1.5 * one_copy, (peak, one_copy)

    result = _untyped(apply(state, ops).metadata)
    assert result["big"] is not big
    assert all(result["big"][k] == -1 for k in keys)
    assert result["other"] is state["other"]


@pytest.mark.parametrize("key", ["logs", "$.logs", "$.nested.logs"])
def test_appends_to_one_list_copy_it_at_most_once_per_call(key: str) -> None:
    """Fifty appends to a big list, literal or through a path, cost one copy of it, not fifty."""
    size = 100_000
    big = list(range(size))
    state: dict[str, Any] = {"logs": big, "nested": {"logs": big}}
    ops: list[Operation] = [Append(key, -i) for i in range(50)]

    one_copy = _peak_bytes_during(lambda: list(big))
    peak = _peak_bytes_during(lambda: apply(state, ops))
    assert peak < 1.5 * one_copy, (peak, one_copy)

    result = _untyped(apply(state, ops).metadata)
    grown = result["nested"]["logs"] if key == "$.nested.logs" else result["logs"]
    assert grown == [*big, *(-i for i in range(50))]
    assert big == list(range(size))  # the input list itself is untouched


@pytest.mark.parametrize(
    ("state", "ops"),
    [
        ({"a": 1}, []),
        ({"a": 1}, [Delete("absent")]),
        ({"a": 1}, [Set("a", 1)]),
        ({"a": 1}, [Set("a", 1.0)]),
        ({"a": 1}, [Set("a", 2), Set("a", 1)]),
        ({"a": {"b": [1]}}, [Set("$.a.b.0", 2), Set("$.a.b.0", 1)]),
        ({"a": 1}, [Delete("a"), Set("a", 1)]),
        ({"n": 1}, [Increment("n", 0)]),
        ({"l": [1, 2]}, [Remove("l", 3)]),
        ({"l": []}, [Append("l", 1), Remove("l", 1)]),
        ({"l": [1, 1]}, [Set("$.l.*", 1)]),
        ({"a": {}}, [Set("$.x.y", 1)]),
        ({"a": [1]}, [Append("$.a.x", 1)]),
        ({"a": 1}, [Remove("missing", 1)]),
        ({"a": 1}, [Set("__proto__", 1)]),
        ({"a": {"b": [1, None]}}, [Update({"a": {"b": [1, None]}})]),
        ({"a": 1, "b": 2}, [Update({"b": 3}), Update({"a": 1, "b": 2})]),
    ],
)
def test_the_input_itself_comes_back_when_nothing_changed(
    state: dict[str, Any], ops: list[Operation]
) -> None:
    """No change, including a change undone later in the batch, returns the very input object."""
    assert apply(state, ops).metadata is state
    assert apply_sized(state, ops, json_size(state))[0].metadata is state


@pytest.mark.parametrize(
    ("state", "ops"),
    [
        ({"a": 1}, [Set("a", True)]),
        ({"a": 1, "b": 2}, [Update({"b": 2, "a": 1})]),
        ({"a": 1, "b": 2}, [Delete("a"), Set("a", 1)]),
        ({"a": [1]}, [Append("a", 2), Remove("a", 2), Set("$.a.0", 2)]),
    ],
)
def test_a_changed_result_is_a_new_dict(state: dict[str, Any], ops: list[Operation]) -> None:
    """A bool for a number, or another key order, is a change: a new top-level dict."""
    before = _text(state)
    result = apply(state, ops)
    assert result.metadata is not state
    assert _text(result.metadata) != before


def test_a_value_written_at_several_matches_is_not_shared_mutably() -> None:
    """A divergence (README): each match gets its own copy, so a later write shows in one place only."""
    state: dict[str, Any] = {"a": [{"x": 0}, {"x": 0}]}
    result = apply(state, [Set("$.a.*", {"n": []}), Append("$.a.0.n", 1)])
    assert result.metadata == {"a": [{"n": [1]}, {"n": []}]}

    result = apply(state, [Set("$.a.*.x", [1]), Append("$.a.0.x", 2), Set("$.a.1.x.0", 7)])
    assert result.metadata == {"a": [{"x": [1, 2]}, {"x": [7]}]}

    result = apply({"x": 0, "y": 0}, [Set("$.*", {"k": 1}), Increment("$.x.k")])
    assert result.metadata == {"x": {"k": 2}, "y": {"k": 1}}

    result = apply({"x": 0, "y": 0}, [Set("$.*", [1]), Append("x", 2)])
    assert result.metadata == {"x": [1, 2], "y": [1]}


def test_a_list_grown_through_a_wildcard_is_not_shared_mutably() -> None:
    """Reference: {"a": [[0, 2, 3], [7, 2]]}: later writes to one match leave the other alone."""
    ops: list[Operation] = [Append("$.a.*", 2), Append("$.a.0", 3), Set("$.a.1.0", 7)]
    _check({"a": [[0], [1]]}, ops, {"a": [[0, 2, 3], [7, 2]]}, [])
    ops = [Append("$.a.*", 1), Append("$.a.0", 2)]
    _check({"a": [[0], [5]]}, ops, {"a": [[0, 1, 2], [0, 1]]}, [])


def test_results_of_separate_calls_stay_independent() -> None:
    """Applying to a result leaves that earlier result as it was."""
    first = apply({}, [Set("k", [1]), Set("d", {"n": 1})])
    second = apply(first.metadata, [Append("k", 2), Increment("$.d.n")])
    assert first.metadata == {"k": [1], "d": {"n": 1}}
    assert second.metadata == {"k": [1, 2], "d": {"n": 2}}


# ---------------------------------------------------------------- the ops argument


def test_a_single_operation_is_accepted() -> None:
    """apply(state, op) is apply(state, [op])."""
    assert apply({"n": 1}, Increment("n")).metadata == {"n": 2}
    removal = Remove("n", 1)
    assert apply({"n": 1}, removal).unapplied == (removal,)


def test_ops_may_be_any_iterable() -> None:
    """A tuple or a generator of operations is a batch."""
    assert apply({}, (Set("a", 1), Set("b", 2))).metadata == {"a": 1, "b": 2}
    assert apply({}, (Set(k, 1) for k in "ab")).metadata == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    ("ops", "index"),
    [
        ([Set("a", 1), {"type": "set", "key": "a", "value": 1}], 1),
        ([("set", "a", 1)], 0),
        ([Set("a", 1), Delete("a"), None], 2),
    ],
)
def test_non_operations_raise_type_error_naming_the_index(ops: list[Any], index: int) -> None:
    """A wire dict or anything else in the batch is an InvalidValueError (a TypeError) naming its place."""
    state: dict[str, Any] = {"a": 0}
    with pytest.raises(InvalidValueError, match=f"operation {index}") as caught:
        apply(state, ops)
    assert "parse_operations" in str(caught.value)
    assert state == {"a": 0}


def test_a_wire_dict_as_ops_is_a_type_error() -> None:
    """A single wire dict is not an operation (and not a batch of its keys)."""
    with pytest.raises(InvalidValueError, match="parse_operations"):
        apply({}, _untyped({"type": "set", "key": "a", "value": 1}))


@pytest.mark.parametrize("ops", [None, 3, Increment, "ab", b"ab"])
def test_ops_that_are_not_iterable_are_a_type_error_saying_what_came(ops: Any) -> None:
    """None, a number, a class or a string as ops is refused naming what apply takes."""
    expected = r"^apply: ops must be an operation or an iterable of operations"
    with pytest.raises(InvalidValueError, match=expected):
        apply({}, ops)


@pytest.mark.parametrize("metadata", [[], None, "{}", 1])
def test_metadata_must_be_a_dict(metadata: Any) -> None:
    """Metadata is a JSON object; anything else is an InvalidValueError (a TypeError)."""
    with pytest.raises(InvalidValueError, match="dict"):
        apply(metadata, [Set("a", 1)])


# ---------------------------------------------------------------- apply_sized


SIZED_CASES: list[tuple[str, dict[str, Any], list[Operation], int]] = [
    ("set new key", {"a": 1}, [Set("b", [1])], 15),
    ("set into empty", {}, [Set("k", "v")], 9),
    ("overwrite", {"a": 1}, [Set("a", None)], 10),
    ("delete one of two", {"a": 1, "b": 2}, [Delete("a")], 7),
    ("delete the only key", {"only": [1, 2]}, [Delete("only")], 2),
    ("delete, delete, set", {"a": 1, "b": "日本"}, [Delete("b"), Delete("a"), Set("c", 1e21)], 11),
    ("append to list", {"l": [1]}, [Append("l", 2)], 11),
    ("append to missing", {}, [Append("l", 2)], 9),
    ("append to scalar", {"l": 5}, [Append("l", 2)], 11),
    ("append to null", {"l": None}, [Append("l", 2)], 14),
    ("append twice", {}, [Append("l", 1), Append("l", 2)], 11),
    ("append to empty list", {"l": []}, [Append("l", "é"), Append("l", 5.0)], 14),
    (
        "append through paths",
        {"a": {"l": [1, 2]}},
        [Append("$.a.l", 3), Append("$.a.e", 4), Append("$.a.l", 5)],
        29,
    ),
    (
        "remove some",
        {"l": [1, {"a": 1}, 1.0, 2], "m": [3]},
        [Remove("l", 1), Remove("m", 3), Remove("l", {"a": 1})],
        16,
    ),
    ("remove all", {"l": ["a", "a"]}, [Remove("l", "a")], 8),
    ("remove through a wildcard", {"a": [[1, 2, 1], [1]]}, [Remove("$.a.*", 1)], 15),
    ("increment", {"n": 0.1}, [Increment("n", 0.2)], 25),
    ("increment to 1e16", {"n": 1e16}, [Increment("n", 1e16)], 23),
    ("pad a list", {"a": [1]}, [Set("$.a.3", "x")], 23),
    ("pad an empty list", {"a": []}, [Set("$.a.2", True)], 22),
    ("wildcard", {"a": [{"n": 1}, {"n": 2}, {"m": 0}]}, [Set("$.a.*.n", "xy")], 46),
    ("wildcard, new keys", {"a": [{}, {"n": 1}]}, [Set("$.a.*.k", [1, 2])], 37),
    ("slice", {"a": [1, 2, 3, 4]}, [Set("$.a.[1:3]", [])], 17),
    (
        "nested",
        {"a": {"b": {"c": "old"}}},
        [Set("$.a.b.c", "newer"), Set("$.a.b.d", None), Set("$.a.x", {})],
        41,
    ),
    ("escapes and surrogates", {"s": "x"}, [Set("s", "\u2028\ud800"), Append("s", None)], 24),
    ("keys needing escapes", {"日本": [1.0]}, [Append("日本", 2.5), Set('k"ey', "v\n"), Delete("日本")], 15),
    ("shared matches", {"a": [[0], [1]]}, [Append("$.a.*", 2), Append("$.a.0", 3), Set("$.a.1.0", 7)], 21),
    ("unapplied", {"a": 1}, [Set("__proto__", 1), Remove("a", 1), Set("$.constructor", 1)], 7),
    (
        "update among others",
        {"n": 9, "s": "x"},
        [
            Increment("n"),
            Increment("n", 0.5),
            Increment("new", 1e-7),
            Set("s", "\u2028\ud800"),
            Append("s", None),
            Update({"z": [1, {"y": 2}]}),
            Increment("$.z.1.y", -2.5),
            Delete("absent"),
        ],
        20,
    ),
    # JavaScript would hold Infinity and write null: {"n":null}
    ("overflow to infinity", {"n": 1.7976931348623157e308}, [Increment("n", 1.7976931348623157e308)], 10),
    # 2**53 + 1 is the double 2**53, as in JavaScript: nothing changes
    ("int sum beyond 2**53", {"n": 2**53}, [Increment("n")], 22),
    ("int sums beyond 2**53", {"n": 2**53 - 1}, [Increment("n", 2), Increment("n", 2**60)], 25),
]


@pytest.mark.parametrize(
    ("state", "ops", "expected_size"), [c[1:] for c in SIZED_CASES], ids=[c[0] for c in SIZED_CASES]
)
def test_apply_sized_keeps_the_size_exact(
    state: dict[str, Any], ops: list[Operation], expected_size: int
) -> None:
    """The incrementally kept size equals node's byte length of the result, and the result is apply's."""
    before = _text(state)
    result, size = apply_sized(state, ops, json_size(state))
    assert size == expected_size
    assert _text(result.metadata) == _text(apply(state, ops).metadata)
    assert result.unapplied == apply(state, ops).unapplied
    assert _text(state) == before


# ------------------------------------------------------------------ the depth bound


def _tower(levels: int, container: type = dict) -> Any:
    """Containers nested ``levels`` deep: {"a": {"a": ... 1}} or [[... 1]]."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value} if container is dict else [value]
    return value


def _depth(value: Any) -> int:
    """How deeply containers nest, walked without recursion ([[1]] is 2)."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            level += 1
            deepest = max(deepest, level)
            stack.extend((child, level) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


BOUND = MAX_DEPTH + 2  # the top-level object, a list an append wraps, a value of MAX_DEPTH


def _path(levels: int) -> str:
    """The path of the place ``levels`` below the top along "a" keys: $.a.a...a."""
    return "$." + ".".join(["a"] * levels)


def test_what_a_top_level_key_accepted_is_still_accepted() -> None:
    """Values of MAX_DEPTH levels at a top-level key: set, appended to anything, wrapping a dict."""
    value = _tower(MAX_DEPTH)
    for container in (dict, list):
        full = _tower(MAX_DEPTH, container)
        cases: list[tuple[dict[str, Any], Operation]] = [
            ({}, Set("k", full)),
            ({}, Append("k", full)),
            ({"k": [1]}, Append("k", full)),
            ({"k": "x"}, Append("k", full)),
            ({"k": full}, Append("k", 1)),
            ({"k": value}, Append("k", full)),
            ({"k": [value]}, Append("k", full)),
        ]
        for state, op in cases:
            result = apply(state, op)
            assert result.unapplied == ()
            assert result.metadata is not state
            assert _depth(result.metadata) <= BOUND


@pytest.mark.parametrize("place", [1, 2, 100, BOUND - 1])
def test_a_path_write_lands_exactly_when_the_metadata_stays_within_the_bound(place: int) -> None:
    """A write's place depth plus its value's depth may reach the bound, not pass it.

    Place 1 is a top-level key; an appended item sits one place below its list.
    """
    state = {"a": _tower(BOUND - 2)}  # "a" keys down to place BOUND - 1
    new_key = "$." + "a." * (place - 1) + "new"
    landing: list[Operation] = [Set(_path(place), _tower(min(BOUND - place, MAX_DEPTH)))]
    refused: list[Operation] = []
    if BOUND - place < MAX_DEPTH:
        refused.append(Set(_path(place), _tower(BOUND - place + 1)))
    landing.append(Append(new_key, _tower(min(BOUND - place - 1, MAX_DEPTH))))
    if BOUND - place - 1 < MAX_DEPTH:
        refused.append(Append(new_key, _tower(BOUND - place)))
    for op in landing:
        result = apply(state, op)
        assert result.unapplied == ()
        assert isinstance(op, (Set, Append))
        reached = place + _depth(op.value) + (1 if isinstance(op, Append) else 0)
        assert _depth(result.metadata) == max(reached, _depth(state)) <= BOUND
    for op in refused:
        result = apply(state, [Set("other", 1), op, Increment("n")])
        assert result.unapplied == (op,)
        assert result.metadata == {**state, "other": 1, "n": 1}


def test_deep_path_writes_no_longer_stack_past_the_bound() -> None:
    """The audit's case: writing a 255-level value at the leaf of the last one built 1,275 levels."""
    value = _tower(MAX_DEPTH - 1)
    metadata = apply({}, Set("a", value)).metadata
    leaf = _path(MAX_DEPTH)  # where the value's innermost 1 sits
    stacked = Set(leaf, value)
    result = apply(metadata, stacked)
    assert result.unapplied == (stacked,)
    assert result.metadata is metadata
    # What still fits under that leaf lands, up to the bound and no further.
    fits = apply(metadata, Set(leaf, _tower(BOUND - MAX_DEPTH)))
    assert fits.unapplied == ()
    assert _depth(fits.metadata) == BOUND


def test_appends_cannot_stack_wraps_past_the_bound() -> None:
    """Wrapping a dict in a list (an append onto it) counts: at a top-level key and on a path."""
    # A top-level dict as deep as path writes can make it: wrapping it would pass the bound.
    tall = apply({"k": {}}, Set("$.k.a", _tower(MAX_DEPTH))).metadata
    assert _depth(tall) == BOUND
    for op in (Append("k", 1), Append("$.k", 1)):
        assert apply(tall, op).unapplied == (op,)
    # The same append onto a dict one level shorter lands.
    short = {"k": _tower(MAX_DEPTH)}
    for op in (Append("k", 1), Append("$.k", 1)):
        assert apply(short, op).unapplied == ()
    # Appending the metadata's own list to itself (RunMetadata shares what its views
    # show, without copying) stops at the bound.
    state: dict[str, Any] = {"k": [_tower(MAX_DEPTH - 1, list)]}
    for _ in range(5):
        state = apply(state, [Append._trusted("k", state["k"])]).metadata
    assert _depth(state) == BOUND


def test_a_wildcard_write_too_deep_is_refused_at_every_match() -> None:
    """Every match of a path is as deep as the others: a refusal leaves every place as it was."""
    state = {"x": {"a": {"b": 1}}, "y": {"a": {"b": 2}}}
    op = Set("$.*.a.b", _tower(BOUND - 2))  # place 3
    result = apply(state, op)
    assert (result.unapplied, result.metadata) == ((op,), state)
    fits = Set("$.*.a.b", _tower(BOUND - 3))
    assert apply(state, fits).unapplied == ()
    assert _depth(apply(state, fits).metadata) == BOUND


def test_a_shared_value_is_measured_once() -> None:
    """A value holding one container at many places is walked once per container, not per path.

    (RunMetadata shares what its views show without copying; wildcard writes leave
    one value at many places.)
    """
    shared: Any = [1]
    for _ in range(60):
        shared = [shared, shared]  # 61 containers, 2**60 paths
    # (Compared by identity: a failure message would write out every path.)
    deep = {"a": _tower(BOUND - 61)}  # places down to BOUND - 60
    too_deep = Set._trusted(_path(BOUND - 60), shared)
    assert [op is too_deep for op in apply(deep, too_deep).unapplied] == [True]
    assert len(apply(deep, Set._trusted(_path(BOUND - 61), shared)).unapplied) == 0


def test_nothing_raises_recursion_error_on_the_deepest_metadata() -> None:
    """At the bound, every public function answers: sizes, texts, equality, collapse, compose."""
    deepest = apply({"k": {}}, [Set("$.k.a", _tower(MAX_DEPTH, list)), Append("other", _tower(MAX_DEPTH))])
    metadata = deepest.metadata
    assert _depth(metadata) == BOUND
    assert json_size(metadata) == len(json_text(metadata).encode())
    assert json_equal(metadata, json.loads(json_text(metadata)))
    assert collapse([Update(metadata), Set("x", 1)]) == (Update({**metadata, "x": 1}),)
    assert compose([Update(metadata)], [Delete("k")]) == (Update({"other": metadata["other"]}),)
    assert apply(metadata, Set("k", 1)).metadata["k"] == 1
