"""Operations as values: construction, normalization, equality, repr, wire form and parsing."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import re
from collections import OrderedDict, UserDict
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

import metaops
from metaops import (
    Append,
    Delete,
    Increment,
    InvalidOperationError,
    InvalidValueError,
    Operation,
    Remove,
    Set,
    Update,
    decrement,
    parse_operation,
    parse_operations,
)
from metaops._values import per_operation

KEY_VALUE_CLASSES = [Set, Append, Remove]

EXAMPLES: list[Operation] = [
    Set("progress", 0.5),
    Set("$.a.b", {"x": [1, None, True, "é"]}),
    Delete("temp"),
    Append("logs", "line"),
    Remove("tags", {"k": [1, 2]}),
    Increment("n", 2),
    Increment("n", -0.25),
    Update({"a": 1, "b": {"c": [None]}}),
]


def _untyped(value: object) -> Any:
    # The constructors take more than their JSON annotation says (tuples, datetimes,
    # subclasses) and normalize it; this hands such values over without a cast at each call.
    return value


def _tz(hours: int, minutes: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("cls", KEY_VALUE_CLASSES)
def test_key_value_operations_keep_key_and_value(cls: Any) -> None:
    """set, append and remove carry the key and value they were given."""
    op = cls("items", [1, "two", None])
    assert op.key == "items"
    assert op.value == [1, "two", None]


def test_delete_carries_only_a_key() -> None:
    """delete has a key and no value."""
    op = Delete("temp")
    assert op.key == "temp"
    assert not hasattr(op, "value")


def test_increment_defaults_to_one() -> None:
    """increment(key) adds 1, like the SDK's metadata.increment(key)."""
    assert Increment("n").value == 1
    assert Increment("n", 2.5).value == 2.5


def test_update_carries_only_a_value() -> None:
    """update (the documented replace) carries the whole new metadata and no key."""
    op = Update({"a": 1})
    assert op.value == {"a": 1}
    assert not hasattr(op, "key")


@pytest.mark.parametrize(
    "build",
    [
        lambda: Set(1, "v"),  # type: ignore[arg-type]
        lambda: Append(None, "v"),  # type: ignore[arg-type]
        lambda: Remove(b"k", "v"),  # type: ignore[arg-type]
        lambda: Increment(("k",), 1),  # type: ignore[arg-type]
        lambda: Delete(2.0),  # type: ignore[arg-type]
    ],
)
def test_key_must_be_a_str(build: Any) -> None:
    """A key that is not a str is refused, the message naming the key."""
    with pytest.raises(InvalidValueError, match="key") as caught:
        build()
    assert isinstance(caught.value, TypeError)
    assert caught.value.where == "key"


def test_a_str_subclass_key_becomes_a_plain_str() -> None:
    """A str subclass key is kept as its plain str value."""

    class Name(str):
        pass

    op = Set(Name("a"), 1)
    assert type(op.key) is str
    assert op.key == "a"


@pytest.mark.parametrize("amount", [True, False, "1", None, [1], float("nan"), float("inf"), -math.inf])
def test_increment_amount_must_be_a_finite_number(amount: Any) -> None:
    """An increment amount that is a bool, not a number, or not finite is refused."""
    with pytest.raises(InvalidValueError, match="value"):
        Increment("n", amount)


@pytest.mark.parametrize("value", [[1], None, "x", 1, (("a", 1),)])
def test_update_value_must_be_a_dict(value: Any) -> None:
    """update replaces the whole metadata, so its value must be an object."""
    with pytest.raises(InvalidValueError, match="dict"):
        Update(value)


# ---------------------------------------------------------------- normalization


def test_tuples_become_lists() -> None:
    """Tuples, at any depth, become lists (JSON has arrays only)."""
    op = Set("a", _untyped((1, {"b": (2, (3,))})))
    value: Any = op.value
    assert value == [1, {"b": [2, [3]]}]
    assert type(value) is list
    assert type(value[1]["b"]) is list
    assert type(value[1]["b"][1]) is list


def test_dict_and_list_subclasses_become_plain() -> None:
    """dict and list subclasses become plain dict and list, contents kept."""

    class Tags(list[Any]):
        pass

    value: Any = Set("a", _untyped(OrderedDict([("x", Tags([1, 2])), ("y", {"z": Tags()})]))).value
    assert type(value) is dict
    assert type(value["x"]) is list
    assert type(value["y"]["z"]) is list
    assert value == {"x": [1, 2], "y": {"z": []}}
    assert list(value) == ["x", "y"]


def test_a_non_dict_mapping_is_refused_with_a_hint() -> None:
    """A Mapping that is not a dict is not JSON; the message suggests dict(...)."""
    with pytest.raises(InvalidValueError, match=r"dict\(") as caught:
        Set("a", _untyped({"m": UserDict({"x": 1})}))
    assert caught.value.where == "value['m']"


# Expected strings: node, new Date("<the same instant>").toJSON().
@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 11, 22, 9, 30, 0, 123000, tzinfo=timezone.utc), "2026-11-22T09:30:00.123Z"),
        (datetime(2026, 1, 1, 3, 0, tzinfo=_tz(5, 30)), "2025-12-31T21:30:00.000Z"),
        (datetime(2026, 3, 1, 20, 15, tzinfo=_tz(-8)), "2026-03-02T04:15:00.000Z"),
        (datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=timezone.utc), "2024-02-29T23:59:59.999Z"),
        (datetime(50, 6, 15, 12, 34, 56, 789000, tzinfo=_tz(1)), "0050-06-15T11:34:56.789Z"),
        (datetime(999, 1, 1, tzinfo=timezone.utc), "0999-01-01T00:00:00.000Z"),
        (datetime(1, 1, 1, tzinfo=timezone.utc), "0001-01-01T00:00:00.000Z"),
    ],
)
def test_aware_datetime_becomes_the_js_date_string(moment: datetime, expected: str) -> None:
    """An aware datetime becomes what JS Date.toJSON() writes: UTC, milliseconds, 'Z'."""
    assert Set("at", _untyped(moment)).value == expected
    assert Set("at", _untyped({"when": [moment]})).value == {"when": [expected]}


@pytest.mark.parametrize(
    ("microsecond", "millis"), [(0, "000"), (999, "000"), (1000, "001"), (123999, "123"), (999999, "999")]
)
def test_datetime_microseconds_are_truncated_to_milliseconds(microsecond: int, millis: str) -> None:
    """A JS Date holds whole milliseconds: microseconds are dropped, never rounded up."""
    moment = datetime(2026, 5, 4, 3, 2, 1, microsecond, tzinfo=timezone.utc)
    assert Set("at", _untyped(moment)).value == f"2026-05-04T03:02:01.{millis}Z"


# Expected strings: node, new Date("0001-01-01T00:00:00.000+05:00").toJSON() and
# new Date("9999-12-31T23:00:00.000-05:00").toJSON(): instants Python can hold whose
# UTC year falls outside 1..9999.
@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(1, 1, 1, tzinfo=_tz(5)), "0000-12-31T19:00:00.000Z"),
        (datetime(9999, 12, 31, 23, tzinfo=_tz(-5)), "+010000-01-01T04:00:00.000Z"),
    ],
)
def test_datetime_whose_utc_year_leaves_python_range(moment: datetime, expected: str) -> None:
    """An aware datetime near the ends of Python's range still becomes JS's string."""
    assert Set("at", _untyped(moment)).value == expected


def test_naive_datetime_is_refused_saying_why() -> None:
    """A naive datetime names no instant; the message says so and how to fix it."""
    with pytest.raises(InvalidValueError) as caught:
        Set("at", _untyped({"when": datetime(2026, 1, 1, 12, 0)}))
    message = str(caught.value)
    assert "naive" in message
    assert "tzinfo" in message
    assert "value['when']" in message


def test_date_is_refused() -> None:
    """A date (no time, no zone) is not JSON; the message points at isoformat()."""
    with pytest.raises(InvalidValueError, match="isoformat") as caught:
        Set("day", _untyped([date(2026, 1, 1)]))
    assert caught.value.where == "value[0]"


# ---------------------------------------------------------------- non-JSON values


class _Opaque:
    pass


def _circular_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


def _circular_dict() -> dict[str, Any]:
    outer: dict[str, Any] = {"a": {}}
    outer["a"]["back"] = outer
    return outer


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({1, 2}, "value"),
        ({"a": [0, 1, {1, 2}]}, "value['a'][2]"),
        ([_Opaque()], "value[0]"),
        ({"a": {1: "x"}}, "value['a']"),
        ({"a": {("t",): "x"}}, "value['a']"),
        ({"a": [float("nan")]}, "value['a'][0]"),
        (float("inf"), "value"),
        ({"b": -math.inf}, "value['b']"),
        ([2**1024], "value[0]"),
        ({"n": -(2**1024)}, "value['n']"),
        # The smallest int JavaScript reads as Infinity (node: Number(2n**1024n - 2n**970n)).
        ([0, 2**1024 - 2**970], "value[1]"),
        (_circular_list(), "value[1]"),
        (_circular_dict(), "value['a']['back']"),
        (frozenset(), "value"),
        (b"bytes", "value"),
        (1 + 2j, "value"),
    ],
)
def test_non_json_values_are_refused_naming_where(value: Any, where: str) -> None:
    """A non-JSON value raises InvalidValueError (a TypeError) naming its place."""
    for cls in KEY_VALUE_CLASSES:
        with pytest.raises(InvalidValueError) as caught:
            cls("k", value)
        assert isinstance(caught.value, TypeError)
        assert caught.value.where == where
        assert where in str(caught.value)


def _nested(depth: int, container: type) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value] if container is list else {"k": value}
    return value


@pytest.mark.parametrize("container", [list, dict])
def test_values_nested_to_the_depth_limit_work_everywhere(container: type) -> None:
    """A value MAX_DEPTH levels deep is built, compared, hashed, measured, applied and parsed."""
    depth = metaops.MAX_DEPTH
    op = Set("a", _nested(depth, container))
    twin = Set("a", _nested(depth, container))
    assert op == twin
    assert hash(op) == hash(twin)
    assert parse_operation(op.to_wire()) == op
    state = {"a": _nested(depth, container), "l": [_nested(depth - 1, container)]}
    assert metaops.apply(state, [twin]).metadata is state
    removed = metaops.apply(state, [Remove("l", _nested(depth - 1, container))]).metadata
    assert removed["l"] == []
    assert metaops.json_size(op.value) == len(metaops.json_text(op.value).encode())
    assert metaops.collapse([op, twin]) == (twin,)


@pytest.mark.parametrize("container", [list, dict])
def test_values_nested_past_the_depth_limit_are_refused_saying_so(container: type) -> None:
    """One level more than MAX_DEPTH is refused at construction and by the parser, not by a RecursionError."""
    too_deep = _nested(metaops.MAX_DEPTH + 1, container)
    with pytest.raises(InvalidValueError, match=f"nested {metaops.MAX_DEPTH + 1} levels deep") as caught:
        Append("a", too_deep)
    assert str(caught.value).startswith("append: value")
    assert len(str(caught.value)) < 200  # the place is abbreviated, not 257 indices long
    with pytest.raises(InvalidOperationError, match="at most 256 levels") as parsed:
        parse_operation({"type": "set", "key": "a", "value": _nested(900, container)})
    assert parsed.value.field == "value"


def test_a_replacement_is_metadata_and_may_nest_as_deeply_as_metadata() -> None:
    """An update's value is a whole metadata object: MAX_DEPTH + 2 levels, as apply can leave it."""
    bound = metaops.MAX_DEPTH + 2
    deepest = {"k": _nested(bound - 1, dict)}
    assert Update(deepest).value == deepest
    assert parse_operation({"type": "update", "value": deepest}) == Update(deepest)
    too_deep = {"k": _nested(bound, dict)}
    with pytest.raises(InvalidValueError, match=f"nested {bound + 1} levels deep; metaops takes metadata"):
        Update(too_deep)
    with pytest.raises(InvalidOperationError, match=f"metadata nested at most {bound} levels"):
        parse_operation({"type": "update", "value": too_deep})
    # A value under a key is still bounded by MAX_DEPTH.
    with pytest.raises(InvalidValueError, match="values nested at most"):
        Set("k", deepest["k"])


@pytest.mark.parametrize(
    ("build", "prefix"),
    [
        (lambda: Set("a", _untyped({1, 2})), "set: value is a set"),
        (lambda: Append("a", [object()]), "append: value[0] is a bare object()"),
        (lambda: Remove("a", {"k": float("inf")}), "remove: value['k'] is inf"),
        (lambda: Increment("a", float("nan")), "increment: value is nan"),
        (lambda: Update({"a": {"b": {1}}}), "update: value['a']['b'] is a set"),
    ],
)
def test_value_errors_name_the_operation(build: Any, prefix: str) -> None:
    """A refused value's message starts with the operation it was given to, then where it is."""
    with pytest.raises(InvalidValueError) as caught:
        build()
    assert str(caught.value).startswith(prefix), str(caught.value)


@pytest.mark.parametrize("cls", KEY_VALUE_CLASSES)
def test_a_missing_value_names_the_class_called(cls: Any) -> None:
    """Set("a") says Set.__init__ is missing its value, not a private base class."""
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\.__init__\(\) missing 1 required positional"):
        cls("a")


def test_the_largest_finite_int_is_accepted() -> None:
    """An int just below the point where JavaScript overflows is a JSON number: the largest double."""
    largest = 2**1024 - 2**970 - 1  # node: Number(2n**1024n - 2n**970n - 1n) is finite
    assert Set("n", largest).value == 1.7976931348623157e308
    assert Set("n", -largest).value == -1.7976931348623157e308


@pytest.mark.parametrize(
    ("given", "held"),
    [
        (2**53, 9007199254740992),
        (-(2**53), -9007199254740992),
        (2**53 + 1, 9007199254740992.0),
        (-(2**53) - 3, -9007199254740996.0),
        (2**1023, 8.98846567431158e307),
    ],
)
def test_an_int_past_2_to_the_53_is_held_as_the_double_javascript_holds(
    given: int, held: int | float
) -> None:
    """Values, amounts and wire values alike: exact up to 2**53, a double (a float) past it."""
    for value in (Set("n", given).value, Increment("n", given).value, decrement("n", -given).value):
        assert type(value) is type(held)
        assert value == held
    wire = parse_operation({"type": "set", "key": "n", "value": [given]})
    assert isinstance(wire, Set)
    assert wire.value == [held]
    assert Set("n", {"a": [given]}).value == {"a": [held]}


def test_a_shared_but_not_circular_value_is_accepted() -> None:
    """The same list twice in one value is not a cycle."""
    shared = [1, 2]
    assert Set("a", _untyped({"x": shared, "y": [shared, shared]})).value == {
        "x": [1, 2],
        "y": [[1, 2], [1, 2]],
    }


def test_update_names_where_too() -> None:
    """update's value is checked as deeply as any other."""
    with pytest.raises(InvalidValueError) as caught:
        Update({"a": [{"b": {1}}]})
    assert caught.value.where == "value['a'][0]['b']"


def test_later_mutation_of_the_callers_value_does_not_change_the_operation() -> None:
    """The operation holds its own copy: changing what was passed in changes nothing."""
    value: dict[str, Any] = {"a": [1, {"b": 2}]}
    ops: list[Set | Append | Remove | Update] = [
        Set("k", value),
        Append("k", value),
        Remove("k", value),
        Update(value),
    ]
    value["a"].append(3)
    value["a"][1]["b"] = 99
    value["c"] = 4
    for op in ops:
        assert op.value == {"a": [1, {"b": 2}]}


# ---------------------------------------------------------------- frozen, slotted


@pytest.mark.parametrize("op", EXAMPLES, ids=repr)
def test_operations_are_frozen(op: Operation) -> None:
    """No field can be assigned or deleted after construction."""
    for name in ("key", "value"):
        if hasattr(op, name):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(op, name, "changed")
            with pytest.raises(dataclasses.FrozenInstanceError):
                delattr(op, name)


@pytest.mark.parametrize("op", EXAMPLES, ids=repr)
def test_no_attribute_can_be_added(op: Operation) -> None:
    """Assigning an attribute that is not a field raises FrozenInstanceError, as in any frozen dataclass."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.extra = 1  # type: ignore[union-attr]
    assert not hasattr(op, "extra")


@pytest.mark.parametrize("op", EXAMPLES, ids=repr)
def test_operations_are_slotted(op: Operation) -> None:
    """No per-instance __dict__: no stray attributes, small instances."""
    assert not hasattr(op, "__dict__")
    assert "__slots__" in type(op).__dict__


# ---------------------------------------------------------------- equality and hashing


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Set("a", 1), Set("a", 1.0)),
        (Set("a", {"x": 1, "y": [2, 3]}), Set("a", {"y": [2.0, 3], "x": 1})),
        (Set("a", 0), Set("a", -0.0)),
        (Set("a", [0.0]), Set("a", [-0])),
        (Increment("n", 2), Increment("n", 2.0)),
        (Remove("t", {"k": None}), Remove("t", {"k": None})),
        (Update({"a": 1, "b": 2}), Update({"b": 2.0, "a": 1})),
        (Delete("a"), Delete("a")),
        (Set("a", _untyped((1, 2))), Set("a", [1, 2])),
    ],
)
def test_json_equal_operations_are_equal_and_hash_alike(a: Operation, b: Operation) -> None:
    """Equality is JSON equality (numbers by value, key order ignored); hashes follow."""
    assert a == b
    assert b == a
    assert not a != b  # noqa: SIM202 - != is its own method
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Set("a", True), Set("a", 1)),
        (Set("a", False), Set("a", 0)),
        (Set("a", [1, True]), Set("a", [1, 1])),
        (Set("a", {"x": 1.0}), Set("a", {"x": True})),
        (Set("a", None), Set("a", False)),
        (Set("a", [1, 2]), Set("a", [2, 1])),
        (Set("a", {"x": 1}), Set("a", {"x": 1, "y": None})),
        (Set("a", 1), Set("b", 1)),
        (Set("a", 1), Append("a", 1)),
        (Append("a", 1), Remove("a", 1)),
        (Increment("a", 1), Set("a", 1)),
        (Update({"a": 1}), Set("a", {"a": 1})),
        (Delete("a"), Delete("b")),
        (Set("a", "1"), Set("a", 1)),
    ],
)
def test_different_operations_are_unequal(a: Operation, b: Operation) -> None:
    """True is not 1, order matters in lists, the type and the key matter."""
    assert a != b
    assert b != a
    assert not a == b  # noqa: SIM201 - == is its own method


@pytest.mark.parametrize("op", EXAMPLES, ids=repr)
def test_eq_returns_not_implemented_for_foreign_types(op: Operation) -> None:
    """Comparing with anything that is not the same operation type defers to the other side."""
    assert op.__eq__(op.to_wire()) is NotImplemented
    assert op.__eq__(("set", "a", 1)) is NotImplemented
    assert op.__eq__(None) is NotImplemented
    assert op != op.to_wire()


# ---------------------------------------------------------------- repr, pickle, copy


@pytest.mark.parametrize(
    ("op", "text"),
    [
        (Set("progress", 0.5), "Set(key='progress', value=0.5)"),
        (Set("a", {"b": [None, True, "x"]}), "Set(key='a', value={'b': [None, True, 'x']})"),
        (Delete("temp"), "Delete(key='temp')"),
        (Append("logs", "line"), "Append(key='logs', value='line')"),
        (Remove("tags", 3), "Remove(key='tags', value=3)"),
        (Increment("n"), "Increment(key='n', value=1)"),
        (Update({"a": 1}), "Update(value={'a': 1})"),
    ],
)
def test_repr_reads_like_the_constructor_call(op: Operation, text: str) -> None:
    """The repr is the keyword constructor call."""
    assert repr(op) == text


@pytest.mark.parametrize("op", EXAMPLES, ids=repr)
def test_eval_of_repr_gives_an_equal_operation(op: Operation) -> None:
    """eval(repr(op)) rebuilds the same operation."""
    namespace = {name: getattr(metaops, name) for name in metaops.__all__}
    rebuilt = eval(repr(op), namespace)
    assert type(rebuilt) is type(op)
    assert rebuilt == op


@pytest.mark.parametrize("op", EXAMPLES, ids=repr)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trips(op: Operation, protocol: int) -> None:
    """An operation survives pickling with every protocol."""
    back = pickle.loads(pickle.dumps(op, protocol=protocol))
    assert type(back) is type(op)
    assert back == op
    assert repr(back) == repr(op)


@pytest.mark.parametrize("op", EXAMPLES, ids=repr)
def test_copy_and_deepcopy_round_trip(op: Operation) -> None:
    """copy.copy and copy.deepcopy give equal operations of the same type."""
    for duplicate in (copy.copy(op), copy.deepcopy(op)):
        assert type(duplicate) is type(op)
        assert duplicate == op


# ---------------------------------------------------------------- decrement


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("stock",), Increment("stock", -1)),
        (("stock", 2), Increment("stock", -2)),
        (("stock", 2.5), Increment("stock", -2.5)),
        (("stock", -3), Increment("stock", 3)),
    ],
)
def test_decrement_is_an_increment_by_the_negative_amount(args: tuple[Any, ...], expected: Increment) -> None:
    """decrement(key, n) builds increment(key, -n); the wire has no decrement."""
    op = decrement(*args)
    assert type(op) is Increment
    assert op == expected
    assert op.to_wire() == {"type": "increment", "key": expected.key, "value": expected.value}


@pytest.mark.parametrize("amount", [True, "2", None, float("nan")])
def test_decrement_refuses_non_numbers(amount: Any) -> None:
    """decrement refuses a bool, a string, None and NaN like increment does, naming its n."""
    with pytest.raises(InvalidValueError, match=r"^decrement: n ") as caught:
        decrement("stock", amount)
    assert caught.value.where == "n"


# ---------------------------------------------------------------- wire form


@pytest.mark.parametrize(
    ("op", "wire"),
    [
        (Set("a", [1, {"b": None}]), {"type": "set", "key": "a", "value": [1, {"b": None}]}),
        (Delete("a"), {"type": "delete", "key": "a"}),
        (Append("$.logs", "x"), {"type": "append", "key": "$.logs", "value": "x"}),
        (Remove("tags", "x"), {"type": "remove", "key": "tags", "value": "x"}),
        (Increment("n", -2), {"type": "increment", "key": "n", "value": -2}),
        (Update({"a": 1}), {"type": "update", "value": {"a": 1}}),
    ],
)
def test_to_wire(op: Operation, wire: dict[str, Any]) -> None:
    """to_wire gives the platform's JSON, and parsing it gives the operation back."""
    assert op.to_wire() == wire
    assert parse_operation(wire) == op
    assert type(parse_operation(wire)) is type(op)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ({"type": "set", "key": "a", "value": None}, Set("a", None)),
        ({"type": "delete", "key": "a", "value": 5}, Delete("a")),
        ({"type": "update", "key": "ignored", "value": {}}, Update({})),
        ({"type": "set", "key": "a", "value": 1, "extra": True}, Set("a", 1)),
        ({"type": "increment", "key": "n", "value": 2**60}, Increment("n", 2**60)),
        ({"type": "append", "key": "", "value": []}, Append("", [])),
    ],
)
def test_parse_accepts_what_the_schema_accepts(wire: dict[str, Any], expected: Operation) -> None:
    """null values, ignored fields (delete's value, update's key) and unknown fields pass."""
    assert parse_operation(wire) == expected


def test_parse_operations_returns_a_tuple_in_order() -> None:
    """A batch parses to a tuple of operations in order; any iterable will do."""
    wires = [{"type": "set", "key": "a", "value": 1}, {"type": "delete", "key": "a"}]
    assert parse_operations(wires) == (Set("a", 1), Delete("a"))
    assert parse_operations(iter(wires)) == (Set("a", 1), Delete("a"))
    assert parse_operations([]) == ()


_GOOD = {"type": "set", "key": "a", "value": 1}


@pytest.mark.parametrize(
    ("bad", "field", "expected_words", "got_words"),
    [
        ({"key": "a", "value": 1}, "type", ["'set'", "'update'"], ["missing"]),
        ({"type": "frobnicate", "key": "a", "value": 1}, "type", ["'increment'"], ["'frobnicate'"]),
        ({"type": "decrement", "key": "a", "value": 1}, "type", ["increment", "negative"], ["'decrement'"]),
        ({"type": "replace", "value": {}}, "type", ["'update'"], ["'replace'"]),
        ({"type": 5, "key": "a", "value": 1}, "type", ["'set'"], ["5"]),
        ({"type": "set", "key": 5, "value": 1}, "key", ["string"], ["5"]),
        ({"type": "set", "value": 1}, "key", ["string"], ["missing"]),
        ({"type": "delete", "key": None}, "key", ["string"], ["null"]),
        ({"type": "set", "key": "__proto__", "value": 1}, "key", ["safe"], ["'__proto__'"]),
        ({"type": "append", "key": "$.a.constructor", "value": 1}, "key", ["safe"], ["'$.a.constructor'"]),
        ({"type": "delete", "key": "$.prototype"}, "key", ["safe"], ["'$.prototype'"]),
        ({"type": "set", "key": "$.", "value": 1}, "key", ["safe"], ["'$.'"]),
        ({"type": "set", "key": "a"}, "value", ["JSON value"], ["missing"]),
        ({"type": "remove", "key": "a"}, "value", ["JSON value"], ["missing"]),
        ({"type": "increment", "key": "n", "value": True}, "value", ["number"], ["true"]),
        ({"type": "increment", "key": "n", "value": "1"}, "value", ["number"], ["'1'"]),
        ({"type": "increment", "key": "n", "value": None}, "value", ["number"], ["null"]),
        ({"type": "increment", "key": "n"}, "value", ["number"], ["missing"]),
        ({"type": "increment", "key": "n", "value": float("inf")}, "value", ["finite"], ["inf"]),
        ({"type": "increment", "key": "n", "value": float("nan")}, "value", ["finite"], ["nan"]),
        ({"type": "increment", "key": "n", "value": 10**400}, "value", ["finite"], ["an int of 401 digits"]),
        ({"type": "update", "value": [1]}, "value", ["object"], ["list"]),
        ({"type": "update", "value": None}, "value", ["object"], ["null"]),
        ({"type": "update"}, "value", ["object"], ["missing"]),
        ({"type": "set", "key": "a", "value": {1, 2}}, "value", ["JSON"], ["set"]),
        ({"type": "set", "key": "a", "value": [float("nan")]}, "value", ["JSON"], ["value[0]"]),
        (
            {"type": "set", "key": "a", "value": datetime(2026, 1, 1, tzinfo=timezone.utc)},
            "value",
            ["JSON"],
            ["datetime"],
        ),
    ],
)
def test_parse_errors_name_index_field_expected_and_got(
    bad: dict[str, Any], field: str, expected_words: list[str], got_words: list[str]
) -> None:
    """Each refusal names the operation's index, the field, what was expected and what came."""
    with pytest.raises(InvalidOperationError) as caught:
        parse_operations([_GOOD, _GOOD, bad])
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.index == 2
    assert error.field == field
    message = str(error)
    assert "operation 2" in message
    assert repr(field) in message
    assert "expected" in message
    for word in [*expected_words, *got_words]:
        assert word in message, (word, message)


def test_a_single_operation_error_has_no_index() -> None:
    """parse_operation (one operation) names the field but no index."""
    with pytest.raises(InvalidOperationError) as caught:
        parse_operation({"type": "set", "key": 1, "value": 1})
    assert caught.value.index is None
    assert caught.value.field == "key"
    assert str(caught.value).startswith("operation: ")


@pytest.mark.parametrize("bad", [5, "set", None, ["set", "a", 1]])
def test_an_operation_must_be_an_object(bad: Any) -> None:
    """A non-object in a batch is refused with its index and no field."""
    with pytest.raises(InvalidOperationError, match="operation 1") as caught:
        parse_operations([_GOOD, bad])
    assert caught.value.index == 1
    assert caught.value.field is None


@pytest.mark.parametrize("batch", [_GOOD, "set", b"[]", 5, None])
def test_a_batch_must_be_a_list(batch: Any) -> None:
    """parse_operations refuses a single object, a string or a non-iterable, saying a list was expected."""
    with pytest.raises(InvalidOperationError, match="list") as caught:
        parse_operations(batch)
    assert caught.value.index is None


@pytest.mark.parametrize(
    ("key", "cls"),
    [
        ("__proto__", Set),
        ("$.__proto__.x", Append),
        ("$.a.constructor", Remove),
        ("$.prototype", Set),
        ("$.", Set),
        ("$..", Set),
        ("$.a\\constructor", Set),
    ],
)
def test_safe_keys_false_accepts_unsafe_keys(key: str, cls: Any) -> None:
    """With safe_keys=False an unsafe key parses (apply will report it unapplied)."""
    wire = {"type": cls.wire_type, "key": key, "value": 1}
    with pytest.raises(InvalidOperationError):
        parse_operation(wire)
    assert parse_operation(wire, safe_keys=False) == cls(key, 1)
    assert parse_operations([wire], safe_keys=False) == (cls(key, 1),)


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "set", "key": "__proto__"},
        {"type": "set", "key": 5, "value": 1},
        {"type": "decrement", "key": "__proto__", "value": 1},
        {"type": "increment", "key": "$.constructor", "value": True},
        {"type": "update", "value": []},
    ],
)
def test_safe_keys_false_skips_only_the_key_check(bad: dict[str, Any]) -> None:
    """Every other check still applies with safe_keys=False."""
    with pytest.raises(InvalidOperationError):
        parse_operation(bad, safe_keys=False)


def test_parsed_values_are_copies() -> None:
    """A parsed operation does not alias the wire value it came from."""
    wire: dict[str, Any] = {"type": "set", "key": "a", "value": {"b": [1]}}
    op = parse_operation(wire)
    wire["value"]["b"].append(2)
    assert op == Set("a", {"b": [1]})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Set(_untyped(None), 1), "set: key must be a str, got None"),
        (lambda: Delete(_untyped(True)), "delete: key must be a str, got True"),
        (
            lambda: Increment("n", _untyped(False)),
            "increment: value must be a number (int or float, not bool), got False",
        ),
        (
            lambda: Increment("n", _untyped({})),
            "increment: value must be a number (int or float, not bool), got a dict",
        ),
        (
            lambda: Update(_untyped([1])),
            "update: value must be a dict (the whole metadata object), got a list",
        ),
        (
            lambda: Update(_untyped(None)),
            "update: value must be a dict (the whole metadata object), got None",
        ),
        (
            lambda: decrement("n", _untyped(True)),
            "decrement: n must be a number (int or float, not bool), got True",
        ),
        (lambda: Set(_untyped(10**5000), 1), "set: key must be a str, got an int of about 5,001 digits"),
        (lambda: Set(_untyped(10**50), 1), "set: key must be a str, got an int of 51 digits"),
        (
            lambda: metaops.apply(_untyped(None), []),
            "apply: metadata must be a dict (a JSON object), got None",
        ),
        (
            lambda: metaops.apply({}, _untyped([Set("a", 1), True])),
            "apply: operation 1 is True, not an operation",
        ),
        (lambda: metaops.collapse(_untyped([{}])), "collapse: operation 0 is a dict, not an operation"),
        (
            lambda: metaops.json_size({"a": Set("a", 1)}),
            "the value holds a metaops.Set, which is not",
        ),
    ],
)
def test_errors_about_python_values_use_python_words(build: Any, message: str) -> None:
    """A Python value is described as Python writes it: None, True, a dict, a list, metaops.Set."""
    with pytest.raises(InvalidValueError) as caught:
        build()
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (None, "operation: expected an object with a 'type' field, got null"),
        (
            {"type": "increment", "key": "n", "value": True},
            "field 'value': expected a finite number (not a boolean), got true",
        ),
        (
            {"type": "update", "value": None},
            "field 'value': expected an object (the whole metadata), got null",
        ),
        ({"type": False}, "field 'type': expected one of"),
    ],
)
def test_errors_about_wire_json_keep_json_words(wire: Any, words: str) -> None:
    """What the platform sent is JSON, and is described in JSON's words: null, true, an object."""
    with pytest.raises(InvalidOperationError, match=re.escape(words)):
        parse_operation(wire)
    with pytest.raises(
        InvalidOperationError, match="operations: expected a list of operations, got an object"
    ):
        parse_operations(_untyped({"type": "set"}))


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr")


def _deep_list(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (
            lambda: metaops.is_safe_key(_untyped(None)),
            InvalidValueError,
            "is_safe_key: key must be a str, got None",
        ),
        (lambda: metaops.is_safe_key(_untyped(["$.a"])), InvalidValueError, "got a list"),
        (
            lambda: metaops.json_equal(_deep_list(5_000), _deep_list(5_000)),
            InvalidValueError,
            "nested too deeply",
        ),
        (lambda: metaops.chunk([], _untyped(_deep_list(5_000))), metaops.InvalidLimitError, "got a list"),
        (lambda: metaops.chunk([], _untyped(_Unprintable())), metaops.InvalidLimitError, "got a tests."),
        (
            lambda: metaops.metadata_limit(_untyped(_deep_list(5_000))),
            metaops.InvalidLimitError,
            "got a list",
        ),
        (lambda: metaops.check_size({}, _untyped(_Unprintable())), metaops.InvalidLimitError, "got a tests."),
    ],
    ids=[
        "key None",
        "key list",
        "equal deep",
        "chunk deep",
        "chunk unprintable",
        "limit deep",
        "check unprintable",
    ],
)
def test_odd_arguments_raise_typed_errors_describing_them(call: Any, error: type, words: str) -> None:
    """Found by fuzzing the public functions: each odd argument is named, never repr'd into a crash."""
    with pytest.raises(error, match=re.escape(words)):
        call()


def test_error_places_stay_short_and_cheap_whatever_the_keys() -> None:
    """A value's place in an error cuts long keys short, and is built only for the error.

    (It was spelled out for every item while walking: 256 levels of 8 KB keys copied
    a quarter of a gigabyte.)
    """
    value: Any = {"bad": {1, 2}}
    for level in range(256 - 1):
        value = {f"{level}{'k' * 8_000}": value}
    with pytest.raises(InvalidValueError) as caught:
        Set("a", value)
    assert len(str(caught.value)) < 60 * 256
    assert str(caught.value).endswith("['bad'] is a set, not a JSON value")
    long_unsafe = "$.constructor." + "a" * 1_000_000
    with pytest.raises(InvalidOperationError) as refused:
        parse_operation({"type": "set", "key": long_unsafe, "value": 1})
    assert len(str(refused.value)) < 400


def test_a_table_per_operation_must_cover_every_operation() -> None:
    """per_operation builds a table keyed by class from wire names, and refuses one that leaves an
    operation out (or names one that does not exist): a new operation cannot be forgotten."""
    table = per_operation(set=1, delete=2, append=3, remove=4, increment=5, update=6)
    assert [table[type(op)] for op in (Update({}), Increment("n"), Set("a", 1))] == [6, 5, 1]
    with pytest.raises(TypeError, match=r"missing \['update'\], unknown \[\]"):
        per_operation(set=1, delete=2, append=3, remove=4, increment=5)
    with pytest.raises(TypeError, match=r"missing \[\], unknown \['replace'\]"):
        per_operation(set=1, delete=2, append=3, remove=4, increment=5, update=6, replace=7)
