"""Keys and paths, one feature at a time, through ``apply``.

Expected results come from running the reference (``@trigger.dev/core`` 4.8.3,
``applyMetadataOperations``) on the same state and operations, except where the README's table of divergences
says metaops differs on purpose (each such case says so).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from metaops import Append, Delete, Increment, Operation, Remove, Set, apply, collapse, is_safe_key
from metaops._paths import (
    _CACHED_CHARACTERS,
    _CACHED_KEYS,
    CACHED_KEY_LENGTH,
    MAX_PADDING,
    SAFE_KEYS,
    Key,
    Slice,
    Wildcard,
    key_facts,
)
from metaops.buffer import RunMetadata


def _text(value: Any) -> str:
    # JSON text keeps what == blurs: True vs 1, key order.
    return json.dumps(value)


def _check(
    state: dict[str, Any], ops: list[Operation], expected: dict[str, Any], unapplied: list[int]
) -> None:
    before = _text(state)
    result = apply(state, ops)
    assert result.metadata == expected
    assert _text(result.metadata) == _text(expected)
    assert [i for i, op in enumerate(ops) if any(u is op for u in result.unapplied)] == unapplied
    assert len(result.unapplied) == len(unapplied)
    assert _text(state) == before


# ---------------------------------------------------------------- literal keys


@pytest.mark.parametrize("key", ["$", "$x", "a.b", "", "日本", "$a.b", " $.a", "a[0]", "*"])
def test_keys_not_starting_with_dollar_dot_are_literal(key: str) -> None:
    """Only a '$.' prefix makes a path; anything else names one top-level key."""
    assert key_facts(key).components is None
    _check({"a": {"b": 0}}, [Set(key, 1)], {"a": {"b": 0}, key: 1}, [])


def test_literal_keys_through_every_operation() -> None:
    """Reference: {"$": 1, "$x": 2, "a.b": 3, "": 4, "日本": 5} from five literal sets."""
    ops: list[Operation] = [Set("$", 1), Set("$x", 2), Set("a.b", 3), Set("", 4), Set("日本", 5)]
    _check({}, ops, {"$": 1, "$x": 2, "a.b": 3, "": 4, "日本": 5}, [])


def test_a_literal_dollar_key_is_not_the_root() -> None:
    """Reference: increment "$" on {"$": {"a": 1}} treats "$" as a key holding a non-number."""
    _check({"$": {"a": 1}}, [Increment("$")], {"$": 1}, [])


def test_literal_dotted_key_does_not_reach_into_objects() -> None:
    """Reference: set "a.b" next to {"a": {"b": 0}} adds a key "a.b"."""
    _check({"a": {"b": 0}}, [Set("a.b", 1), Append("a.b", 2)], {"a": {"b": 0}, "a.b": [1, 2]}, [])


# ---------------------------------------------------------------- nested paths


@pytest.mark.parametrize(
    ("state", "ops", "expected"),
    [
        ({"a": {}}, [Set("$.a.b", 1)], {"a": {"b": 1}}),
        ({"a": {"b": {"c": 1}}}, [Set("$.a.b.c", 2), Set("$.a.b.d", 3)], {"a": {"b": {"c": 2, "d": 3}}}),
        ({}, [Set("$.a", 1)], {"a": 1}),
        # A missing container is not created: the path has no match.
        ({}, [Set("$.a.b", 1)], {}),
        ({"a": 5}, [Set("$.a.b", 1)], {"a": 5}),
        ({"a": "text"}, [Increment("$.a.b")], {"a": "text"}),
        # Empty segments vanish: "$.a..b" is "$.a.b".
        ({"a": {"b": 1}}, [Increment("$.a..b")], {"a": {"b": 2}}),
    ],
)
def test_nested_paths(state: dict[str, Any], ops: list[Operation], expected: dict[str, Any]) -> None:
    """A '$.' path walks objects; a missing or scalar container leaves the state as it is."""
    _check(state, ops, expected, [])


def test_parse_key_components() -> None:
    """A path parses into its components after '$'."""
    assert key_facts("$.a.0.*.[1:-2]").components == (Key("a", None), Key("0", 0), Wildcard(), Slice(1, -2))
    assert key_facts("$.a..b").components == (Key("a", None), Key("b", None))


# ---------------------------------------------------------------- indices and padding


@pytest.mark.parametrize(
    ("state", "op", "expected"),
    [
        ({"a": [0, 1, 2]}, Set("$.a.1", "x"), {"a": [0, "x", 2]}),
        ({"a": [0, 1, 2]}, Increment("$.a.2", 5), {"a": [0, 1, 7]}),
        ({"a": [[1], 2]}, Append("$.a.0", 3), {"a": [[1, 3], 2]}),
        ({"a": [{"b": [1, 2, 1]}]}, Remove("$.a.0.b", 1), {"a": [{"b": [2]}]}),
        ({"a": [1]}, Set("$.a.1", 9), {"a": [1, 9]}),
        ({"a": [1]}, Set("$.a.4", 9), {"a": [1, None, None, None, 9]}),
        ({"a": []}, Set("$.a.2", 9), {"a": [None, None, 9]}),
        ({"a": [1]}, Increment("$.a.3", 5), {"a": [1, None, None, 5]}),
        ({"a": [1]}, Append("$.a.2", "x"), {"a": [1, None, ["x"]]}),
    ],
)
def test_canonical_indices_and_padding(
    state: dict[str, Any], op: Operation, expected: dict[str, Any]
) -> None:
    """A canonical index names an element; past the end the list is padded with null."""
    _check(state, [op], expected, [])


def test_padding_up_to_the_limit_is_applied() -> None:
    """A write MAX_PADDING nulls past the end is still applied."""
    result = apply({"a": []}, [Set(f"$.a.{MAX_PADDING}", 1)])
    assert result.unapplied == ()
    assert len(result.metadata["a"]) == MAX_PADDING + 1  # type: ignore[arg-type]
    assert result.metadata["a"][-1] == 1  # type: ignore[index]
    assert result.metadata["a"][0] is None  # type: ignore[index]


@pytest.mark.parametrize(
    "op",
    [
        Set(f"$.a.{MAX_PADDING + 2}", 1),
        Increment(f"$.a.{MAX_PADDING + 2}"),
        Append(f"$.a.{10 * MAX_PADDING}", 1),
        Set("$.a.4294967294", 1),
    ],
)
def test_padding_past_the_limit_is_unapplied(op: Operation) -> None:
    """metaops differs on purpose: a write past MAX_PADDING nulls is reported, not allocated."""
    state: dict[str, Any] = {"a": [0]}
    result = apply(state, [op])
    assert result.unapplied == (op,)
    assert result.metadata is state


@pytest.mark.parametrize("key", ["01", "-1", "length", "x", "+1", " 1", "4294967295"])
def test_non_canonical_keys_on_lists_read_as_missing_and_write_nothing(key: str) -> None:
    """Reference: on a list, a non-index key reads as missing and a write there changes nothing.

    (For "length" the reference truncates the list; metaops writes nothing: a divergence.)
    """
    state: dict[str, Any] = {"a": [1, 2]}
    for op in (Set(f"$.a.{key}", 0), Append(f"$.a.{key}", 5), Increment(f"$.a.{key}", 5)):
        result = apply(state, [op])
        assert result.unapplied == ()
        assert result.metadata is state
    # remove reads the missing value, which is not a list
    removal = Remove(f"$.a.{key}", 1)
    assert apply(state, [removal]).unapplied == (removal,)


def test_non_canonical_keys_on_objects_are_ordinary_keys() -> None:
    """Reference: "01" on an object is just a key."""
    _check({"a": {"01": 5, "-1": 1}}, [Increment("$.a.01"), Set("$.a.-1", 2)], {"a": {"01": 6, "-1": 2}}, [])


# ---------------------------------------------------------------- wildcards and flattening


def test_wildcard_on_an_object_reads_js_property_order() -> None:
    """Reference: integer-like keys first ascending ("2" before "10"), then insertion order.

    append through '*' reads the first match ("2": 2) and writes [2, 0] at every match.
    """
    state = {"a": {"b": 1, "10": 3, "2": 2, "x": 4}}
    expected = {"a": {"b": [2, 0], "10": [2, 0], "2": [2, 0], "x": [2, 0]}}
    _check(state, [Append("$.a.*", 0)], expected, [])


def test_wildcard_order_counts_only_canonical_array_indices() -> None:
    """ "01", "-1" and 2**32 - 1 are not array indices; they keep insertion order after "7"."""
    state = {"a": {"01": 1, "4294967295": 2, "-1": 3, "7": 4}}
    expected = {"a": {"01": [4, 0], "4294967295": [4, 0], "-1": [4, 0], "7": [4, 0]}}
    _check(state, [Append("$.a.*", 0)], expected, [])


@pytest.mark.parametrize(
    ("state", "op", "expected"),
    [
        ({"a": [1, 2, 3]}, Set("$.a.*", 0), {"a": [0, 0, 0]}),
        # increment reads the first match and writes first + 1 everywhere
        ({"items": [{"n": 1}, {"n": 5}]}, Increment("$.items.*.n"), {"items": [{"n": 2}, {"n": 2}]}),
        # a wildcard keeps null children when it is last
        ({"a": [None, 1]}, Set("$.a.*", 0), {"a": [0, 0]}),
        ({"a": {"x": None}}, Set("$.a.*", 0), {"a": {"x": 0}}),
        # no children, no match
        ({"a": []}, Set("$.a.*", 0), {"a": []}),
        ({"a": 5}, Set("$.a.*", 0), {"a": 5}),
    ],
)
def test_wildcards(state: dict[str, Any], op: Operation, expected: dict[str, Any]) -> None:
    """'*' matches every child of an object or list."""
    _check(state, [op], expected, [])


def test_wildcard_skips_null_children_when_a_key_follows() -> None:
    """A divergence (the reference throws here): a null reached by '*' has no children to follow."""
    _check({"a": [None, {"n": 1}]}, [Set("$.a.*.n", 7)], {"a": [None, {"n": 7}]}, [])
    _check({"a": {"p": None, "q": {"n": 1}}}, [Increment("$.a.*.n")], {"a": {"p": None, "q": {"n": 2}}}, [])


@pytest.mark.parametrize(
    ("state", "op", "expected"),
    [
        # first = [[1], [2]] flattened one level = [1, 2]
        ({"a": [[[1], [2]], [3]]}, Append("$.a.*", 9), {"a": [[1, 2, 9], [1, 2, 9]]}),
        # two wildcards: first = [[1]] flattened two levels = [1]
        ({"a": [[[[1]], 2]]}, Append("$.a.*.*", 9), {"a": [[[1, 9], [1, 9]]]}),
        # remove reads the flattened first ([1, 2]) and writes [2] at every match
        ({"a": [[[1, 2]], [1]]}, Remove("$.a.*", 1), {"a": [[2], [2]]}),
    ],
)
def test_first_is_flattened_by_the_wildcard_depth(
    state: dict[str, Any], op: Operation, expected: dict[str, Any]
) -> None:
    """Reference: the first match is flattened like JS .flat(depth) before it is read."""
    _check(state, [op], expected, [])


# ---------------------------------------------------------------- slices


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("$.a.[1:3]", [1, 0, 0, 4]),
        ("$.a.[1:-1]", [1, 0, 0, 4]),
        ("$.a.[0:-3]", [0, 2, 3, 4]),
        ("$.a.[2:]", [1, 2, 0, 0]),
        ("$.a.[:2]", [0, 0, 3, 4]),
        ("$.a.[2:10]", [1, 2, 0, 0]),
        ("$.a.[3:1]", [1, 2, 3, 4]),
        ("$.a.[0:-9]", [1, 2, 3, 4]),
        # parseInt("-") is NaN, which slice() reads as 0
        ("$.a.[2:-]", [1, 2, 3, 4]),
        # not a slice: "[1]" and "[-1:]" are plain keys, not indices
        ("$.a.[1]", [1, 2, 3, 4]),
        ("$.a.[-1:]", [1, 2, 3, 4]),
    ],
)
def test_slices_follow_js_slice_bounds(key: str, expected: list[Any]) -> None:
    """Reference: '[s:e]' matches list elements s..e-1 with JS Array.prototype.slice bounds."""
    _check({"a": [1, 2, 3, 4]}, [Set(key, 0)], {"a": expected}, [])


def test_slices_match_only_lists() -> None:
    """Reference: a slice on an object matches nothing."""
    _check({"a": {"0": 1}}, [Set("$.a.[0:1]", 0)], {"a": {"0": 1}}, [])


def test_first_through_a_slice_is_flattened() -> None:
    """Reference: append through '[0:1]' reads a[0] flattened one level."""
    _check({"a": [[1], [2]]}, [Append("$.a.[0:1]", 5)], {"a": [[1, 5], [2]]}, [])


def test_slice_components_parse() -> None:
    """Slice bounds: a missing start is 0, a missing end is the end, '-' is 0."""
    assert key_facts("$.[:]").components == (Slice(0, None),)
    assert key_facts("$.[2:]").components == (Slice(2, None),)
    assert key_facts("$.[2:-]").components == (Slice(2, 0),)
    assert key_facts("$.[1:-1]").components == (Slice(1, -1),)


# ---------------------------------------------------------------- escapes


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("$.a\\.b", "a.b"),
        ("$.a\\\\b", "a\\b"),
        ("$.\\.", "."),
        ("$.a\\b", "a\\b"),
        # the reference's quirk: "~1" becomes "/", the first occurrence only
        ("$.a~1b~1c", "a/b~1c"),
        ("$.~0", "~0"),
    ],
)
def test_escapes_in_a_component(key: str, name: str) -> None:
    """'\\.' is a dot, '\\\\' a backslash, and the first '~1' a slash."""
    assert key_facts(key).components == (Key(name, None),)


def test_an_escaped_backslash_before_a_dot_ends_the_component() -> None:
    """'\\\\.' is an escaped backslash, then a separator."""
    assert key_facts("$.a\\\\.b").components == (Key("a\\", None), Key("b", None))


@pytest.mark.parametrize(
    ("state", "op", "expected"),
    [
        # metaops: writes land on key "a.b" (the reference re-parses the path: throws, or writes a.b nested)
        ({"a.b": 1}, Increment("$.a\\.b"), {"a.b": 2}),
        ({"a": {"b": 1}}, Set("$.a\\.b", 0), {"a": {"b": 1}, "a.b": 0}),
        # reference: {"a\\b": 2}
        ({"a\\b": 1}, Increment("$.a\\\\b"), {"a\\b": 2}),
        # the reference reads "a/b~1c" but writes "a/b/c"; metaops writes what it read
        ({"a/b~1c": 1}, Increment("$.a~1b~1c"), {"a/b~1c": 2}),
    ],
)
def test_escaped_paths_write_where_they_read(
    state: dict[str, Any], op: Operation, expected: dict[str, Any]
) -> None:
    """An escaped component names one key, for reading and for writing."""
    _check(state, [op], expected, [])


# ---------------------------------------------------------------- unsafe keys


UNSAFE = [
    "__proto__",
    "$.__proto__",
    "$.__proto__.x",
    "$.a.constructor",
    "$.prototype",
    "$.a[constructor]",
    "$.a['prototype']",
    '$.a["__proto__"]',
    "$.a\\constructor",
    "$.a\\.__proto__",
    "$.",
    "$..",
]
SAFE = ["constructor", "prototype", "a.__proto__", "$.__proto__x", "$.a.constructors", "$", "$.a", "__proto"]


@pytest.mark.parametrize("key", UNSAFE)
def test_unsafe_keys_are_recognised(key: str) -> None:
    """The reference's guard: literal __proto__; a path segment __proto__, constructor or prototype; '$.'."""
    assert not is_safe_key(key)
    assert not key_facts(key).safe


@pytest.mark.parametrize("key", SAFE)
def test_safe_keys_are_recognised(key: str) -> None:
    """Only the literal __proto__ is refused among literal keys; other segments are fine."""
    assert is_safe_key(key)


@pytest.mark.parametrize("key", UNSAFE)
def test_operations_with_unsafe_keys_are_unapplied(key: str) -> None:
    """Reference: every operation type, delete included, is reported unapplied and changes nothing."""
    state: dict[str, Any] = {"a": {"b": 1}, key: [1]}
    ops: list[Operation] = [Set(key, 1), Delete(key), Append(key, 1), Remove(key, 1), Increment(key)]
    result = apply(state, ops)
    assert result.unapplied == tuple(ops)
    assert result.metadata is state


def test_safe_lookalikes_are_applied() -> None:
    """Reference: {"constructor": 1, "prototype": 2, "a.__proto__": 3, "__proto__x": 4}."""
    ops: list[Operation] = [
        Set("constructor", 1),
        Set("prototype", 2),
        Set("a.__proto__", 3),
        Set("$.__proto__x", 4),
        Set("$.a.constructorx", 5),
    ]
    _check({}, ops, {"constructor": 1, "prototype": 2, "a.__proto__": 3, "__proto__x": 4}, [])


# ---------------------------------------------------------------- null leaves


@pytest.mark.parametrize(
    ("state", "op", "unapplied"),
    [
        ({"a": None}, Set("$.a", 1), []),
        ({"a": None}, Increment("$.a"), []),
        ({"a": None}, Append("$.a", 1), []),
        ({"a": None}, Remove("$.a", 1), [0]),
        ({"a": {"b": None}}, Set("$.a.b", 1), []),
        ({"a": [None]}, Set("$.a.0", 1), []),
        ({"a": None}, Set("$.a.b", 1), []),
    ],
)
def test_null_leaves_cannot_be_reached_by_paths(
    state: dict[str, Any], op: Operation, unapplied: list[int]
) -> None:
    """Reference: a null reached by a plain key is dropped, so a path there changes nothing."""
    _check(state, [op], state, unapplied)


def test_null_leaves_are_reachable_by_literal_keys() -> None:
    """Reference: literal append to a null gives [null, value]; literal set replaces it."""
    _check({"a": None, "b": None}, [Append("a", 1), Set("b", 2)], {"a": [None, 1], "b": 2}, [])


# ---------------------------------------------------------------- bool vs number


@pytest.mark.parametrize(
    ("state", "op", "expected"),
    [
        ({"n": True}, Increment("n"), {"n": 1}),
        ({"n": False}, Increment("n", 2), {"n": 2}),
        ({"a": {"n": False}}, Increment("$.a.n", 2), {"a": {"n": 2}}),
        ({"a": [True]}, Increment("$.a.0", 3), {"a": [3]}),
        ({"n": "5"}, Increment("n"), {"n": 1}),
        ({"n": [5]}, Increment("n"), {"n": 1}),
        ({"n": 1}, Increment("n", 0.5), {"n": 1.5}),
    ],
)
def test_booleans_are_not_numbers(state: dict[str, Any], op: Operation, expected: dict[str, Any]) -> None:
    """Reference: increment treats true/false (and any non-number) as 0 and writes a number."""
    result = apply(state, [op])
    assert _text(result.metadata) == _text(expected)


def test_a_boolean_is_not_removed_by_a_number() -> None:
    """Reference (dequal): remove 1 keeps true; remove true keeps 1."""
    _check({"a": [1, True, 1.0]}, [Remove("$.a", 1)], {"a": [True]}, [])
    _check({"a": [1, True, 0]}, [Remove("a", True)], {"a": [1, 0]}, [])


# ---------------------------------------------------------------- the cache of key facts


def test_one_cache_serves_the_buffer_apply_and_collapse() -> None:
    """The facts the buffer's key check, apply and collapse use are one object per key, kept in
    SAFE_KEYS; collapse keeps its routes on them."""
    key = "$.cache.shared.one"
    md = RunMetadata()
    md.set(key, 1)
    facts = SAFE_KEYS[key]
    assert key_facts(key) is facts
    assert apply({"cache": {"shared": {}}}, [Set(key, 2)]).metadata == {"cache": {"shared": {"one": 2}}}
    assert SAFE_KEYS[key] is facts
    collapse([Increment(key), Delete(key)])
    assert facts.route is not None
    assert facts.route.kind == "path"
    assert facts.literal_route is not None
    assert facts.literal_route.kind == "literal"
    assert SAFE_KEYS[key] is facts


@pytest.mark.parametrize("key", ["k" * (CACHED_KEY_LENGTH + 1), "$." + "a." * 30_000 + "b"])
def test_long_keys_are_not_cached(key: str) -> None:
    """A key longer than CACHED_KEY_LENGTH is checked and parsed each time, never kept: a 60 KB
    key must not stay in memory. (The buffer's set of checked keys kept keys of any length.)"""
    md = RunMetadata()
    md.set(key, 1).increment(key)
    collapse([Set(key, 1), Increment(key)])
    assert key_facts(key).safe
    assert key not in SAFE_KEYS


def test_unsafe_keys_are_not_cached() -> None:
    """Only safe keys are kept: ``key in SAFE_KEYS`` is how the buffer knows a key is safe."""
    for key in ("__proto__", "$.a.constructor", "$."):
        assert not key_facts(key).safe
        assert apply({}, [Set(key, 1)]).unapplied == (Set(key, 1),)
        assert key not in SAFE_KEYS


def test_the_cache_is_bounded() -> None:
    """However many distinct keys arrive, the cache holds at most its bound of entries, and goes on
    working."""
    md = RunMetadata(limit=10**8)
    for i in range(_CACHED_KEYS + 100):
        key = f"$.k{i}" if i % 2 else f"k{i}"
        md.set(key, i)
        assert len(SAFE_KEYS) <= _CACHED_KEYS
    assert md.get("$.k8291") == 8291
    assert is_safe_key("$.k8291")
    assert "$.k8291" in SAFE_KEYS


def test_the_cache_is_bounded_in_characters() -> None:
    """Keys just short enough to be cached, arriving by the thousand, fill at most its bound of
    characters: parsed paths of such keys would otherwise hold over 100 MB."""
    for i in range(3_000):
        key = f"$.{i}." + ".".join(["abc"] * 250)
        assert len(key) <= CACHED_KEY_LENGTH
        collapse([Set(key, 1), Increment(key)])
        if i % 100 == 0:
            assert sum(map(len, SAFE_KEYS)) <= _CACHED_CHARACTERS
    assert sum(map(len, SAFE_KEYS)) <= _CACHED_CHARACTERS
