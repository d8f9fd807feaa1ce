"""Hypothesis strategies for run metadata, operations and batches.

For this project's property tests and for other implementations that want to fuzz
themselves with the same shapes. Importing this module imports hypothesis (install
``metaops[test]``); importing :mod:`metaops` never does.

The strategies draw from a small vocabulary of keys on purpose, so that generated
operations keep hitting the same places (collisions are where bugs live)::

    from hypothesis import given
    from metaops import apply
    from metaops.strategies import batches, metadata

    @given(metadata(), batches())
    def test_apply_never_raises(state, ops):
        apply(state, ops)

``integers_only=True`` keeps every number an int, where results are exact (float
increments merged by the reducer are equal only up to reassociation).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from metaops._json import JSON
from metaops._values import Append, Delete, Increment, Operation, Remove, Set, Update

__all__ = [
    "LITERAL_KEYS",
    "batches",
    "json_values",
    "keys",
    "metadata",
    "operations",
    "paths",
    "unsafe_keys",
]

LITERAL_KEYS: tuple[str, ...] = (
    "a",
    "b",
    "n",
    "logs",
    "tags",
    "10",
    "5000000",
    "a.b",
    "$",
    "$x",
    "",
    "ключ",
    "emoji🎉",
)
"""Literal keys the strategies draw from: plain, numeric (one past any list padding),
dotted, dollar, empty, non-ASCII."""

_PATH_NAMED_KEYS: tuple[str, ...] = ("$.a",)
# A top-level key that reads as a path when an operation names it: only a delete
# (always literal) or an escaped path ("$.$\.a") reaches it, as in the metadata.
_TOP_KEYS = LITERAL_KEYS + _PATH_NAMED_KEYS

_SEGMENTS: tuple[str, ...] = ("a", "b", "x", "n", "0", "1", "2", "10", "tags", "logs", "a.b")
_UNSAFE: tuple[str, ...] = (
    "__proto__",
    "$.__proto__",
    "$.constructor",
    "$.a.prototype",
    "$.a['__proto__']",
    "$.a\\constructor",
    "$.",
    "$..",
)


def _numbers(integers_only: bool) -> st.SearchStrategy[int | float]:
    ints = st.integers(min_value=-(2**53), max_value=2**53)
    if integers_only:
        return ints
    floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
    return st.one_of(ints, floats, st.sampled_from([0.5, -0.0, 1.0, 1e21, 1e-7, 0.1]))


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["", "a", "x", 'quote"back\\slash', "line\nbreak", "日本語", "🎉", "\ud800"]),
        st.text(max_size=8),
    )


def json_values(
    *,
    integers_only: bool = False,
    max_leaves: int = 12,
    numbers: st.SearchStrategy[int | float] | None = None,
) -> st.SearchStrategy[JSON]:
    """Any JSON value: null, bools, numbers, strings, and nested lists and objects.

    ``numbers`` replaces the numbers drawn (by default ints within ±2**53 and any
    finite double; ints only with ``integers_only``): ``st.nothing()`` for values
    without numbers, a bounded range where results are compared up to rounding.

    >>> from hypothesis import given, settings
    >>> from metaops import json_size
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(json_values())
    ... def test_every_value_has_a_size(value):
    ...     assert json_size(value) >= 1
    >>> test_every_value_has_a_size()
    """
    if numbers is None:
        numbers = _numbers(integers_only)
    scalars: st.SearchStrategy[JSON] = st.one_of(st.none(), st.booleans(), numbers, _strings())
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.sampled_from(_SEGMENTS + _TOP_KEYS), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def metadata(
    *,
    integers_only: bool = False,
    max_leaves: int = 16,
    numbers: st.SearchStrategy[int | float] | None = None,
) -> st.SearchStrategy[dict[str, JSON]]:
    """A metadata object (a dict at the top), keyed from :data:`LITERAL_KEYS` (and ``"$.a"``).

    Its values are :func:`json_values`, with the same ``numbers`` option.

    >>> from hypothesis import given, settings
    >>> from metaops import apply
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(metadata())
    ... def test_no_operations_change_nothing(state):
    ...     assert apply(state, []).metadata is state
    >>> test_no_operations_change_nothing()
    """
    return st.dictionaries(
        st.sampled_from(_TOP_KEYS),
        json_values(integers_only=integers_only, max_leaves=max_leaves, numbers=numbers),
        max_size=6,
    )


def _component() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(_SEGMENTS).map(lambda s: s.replace(".", "\\.")),
        st.just("*"),
        st.sampled_from(["[0:2]", "[1:]", "[:1]", "[0:-1]", "[2:1]"]),
        st.sampled_from(["01", "-1", "length", "a\\\\b", "x~1y"]),
    )


def paths(*, wildcards: bool = True) -> st.SearchStrategy[str]:
    """``$.`` path keys: nested keys, list indices, wildcards, slices and escapes.

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(paths(wildcards=False))
    ... def test_a_path_starts_at_the_root(key):
    ...     assert key.startswith("$.") and "*" not in key
    >>> test_a_path_starts_at_the_root()
    """
    component = _component()
    if not wildcards:
        component = component.filter(lambda c: c != "*" and not c.startswith("["))
    first = st.sampled_from(_TOP_KEYS).filter(bool).map(lambda k: k.replace(".", "\\."))
    # A wildcard or a slice at the top reads every key (a slice of a dict matches nothing).
    heads = st.one_of(first, st.just("*"), st.sampled_from(["[0:1]", "[:]"])) if wildcards else first
    return st.builds(
        lambda head, rest: "$." + ".".join([head, *rest]),
        heads,
        st.lists(component, max_size=3),
    )


def unsafe_keys() -> st.SearchStrategy[str]:
    """Keys the reference refuses (prototype pollution, or naming nothing below ``$``).

    >>> from hypothesis import given, settings
    >>> from metaops import Set, apply
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(unsafe_keys())
    ... def test_an_unsafe_key_is_not_applied(key):
    ...     assert apply({}, [Set(key, 1)]).unapplied == (Set(key, 1),)
    >>> test_an_unsafe_key_is_not_applied()
    """
    return st.sampled_from(_UNSAFE)


def keys(*, unsafe: bool = True, wildcards: bool = True) -> st.SearchStrategy[str]:
    """Operation keys: mostly literal keys and paths, sometimes unsafe ones.

    >>> from hypothesis import given, settings
    >>> from metaops import Delete, is_safe_key
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(keys(unsafe=False))
    ... def test_a_safe_key_can_be_deleted(key):
    ...     assert is_safe_key(key) and Delete(key).key == key
    >>> test_a_safe_key_can_be_deleted()
    """
    options = [st.sampled_from(LITERAL_KEYS), paths(wildcards=wildcards)]
    if unsafe:
        options.append(unsafe_keys())
    return st.one_of(*options)


def operations(
    *, integers_only: bool = False, unsafe: bool = True, paths: bool = True, update: bool = True
) -> st.SearchStrategy[Operation]:
    """One operation of any type, over :func:`keys` and :func:`json_values`.

    >>> from hypothesis import given, settings
    >>> from metaops import apply
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(operations())
    ... def test_one_operation_never_raises(op):
    ...     apply({"n": 1}, [op])
    >>> test_one_operation_never_raises()
    """
    key = keys(unsafe=unsafe) if paths else st.sampled_from(LITERAL_KEYS)
    value = json_values(integers_only=integers_only, max_leaves=4)
    options: list[st.SearchStrategy[Any]] = [
        st.builds(Set, key, value),
        st.builds(Delete, key),
        st.builds(Append, key, value),
        st.builds(Remove, key, value),
        st.builds(Increment, key, _numbers(integers_only)),
    ]
    if update:
        options.append(st.builds(Update, metadata(integers_only=integers_only, max_leaves=6)))
    return st.one_of(*options)


def batches(
    *,
    integers_only: bool = False,
    unsafe: bool = True,
    paths: bool = True,
    update: bool = True,
    max_size: int = 12,
) -> st.SearchStrategy[list[Operation]]:
    """A batch of operations, as an SDK would queue them.

    >>> from hypothesis import given, settings
    >>> from metaops import apply, collapse, json_equal
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(metadata(integers_only=True), batches(integers_only=True))
    ... def test_collapsing_keeps_the_result(state, ops):
    ...     assert json_equal(apply(state, collapse(ops)).metadata, apply(state, ops).metadata)
    >>> test_collapsing_keeps_the_result()
    """
    return st.lists(
        operations(integers_only=integers_only, unsafe=unsafe, paths=paths, update=update),
        max_size=max_size,
    )
