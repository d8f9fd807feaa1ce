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

``integers_only=True`` keeps every number an int small enough (within 2**46) that a
batch's sums stay exact, where results are exact (float increments merged by the
reducer are equal only up to reassociation, and so are ints past 2**53, which are
added as JavaScript's doubles).

The adversarial strategies (:func:`adversarial_keys`, :func:`deep_values`,
:func:`extreme_numbers`, :func:`adversarial_operations`) draw what broke
implementations before: paths of thousands of segments, escapes and brackets that
confuse a parser, values nested at and past :data:`metaops.MAX_DEPTH`, ints past
2**53 and floats whose sums overflow. They are for laws about robustness (nothing
but typed errors, invariants kept), not for comparing results with a model.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from metaops._json import JSON, MAX_DEPTH
from metaops._values import Append, Delete, Increment, Operation, Remove, Set, Update

__all__ = [
    "LITERAL_KEYS",
    "adversarial_keys",
    "adversarial_operations",
    "batches",
    "deep_values",
    "extreme_numbers",
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


# A dozen increments of ints within this bound never leave 2**53, where sums are exact.
_EXACT_INTS = 2**46


def _numbers(integers_only: bool) -> st.SearchStrategy[int | float]:
    if integers_only:
        return st.integers(min_value=-_EXACT_INTS, max_value=_EXACT_INTS)
    ints = st.integers(min_value=-(2**53), max_value=2**53)
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


# ------------------------------------------------------------------------ adversarial

_LARGEST = 1.7976931348623157e308


def extreme_numbers() -> st.SearchStrategy[int | float]:
    """Numbers at the edges of a double: ints around and far past 2**53, floats near overflow.

    Ints past 2**53 become the doubles JavaScript holds; two large floats added
    overflow to infinity (written ``null``).

    >>> from hypothesis import given, settings
    >>> from metaops import Set, json_size
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(extreme_numbers())
    ... def test_every_number_is_held_as_javascript_holds_it(n):
    ...     assert json_size(Set("n", n).value) <= 24
    >>> test_every_number_is_held_as_javascript_holds_it()
    """
    exact = 2**53
    return st.one_of(
        st.integers(min_value=exact - 4, max_value=exact + 4).flatmap(lambda n: st.sampled_from([n, -n])),
        st.integers(min_value=exact, max_value=2**1024 - 2**970 - 1).flatmap(
            lambda n: st.sampled_from([n, -n])
        ),
        st.sampled_from([3 * 2**1022, 2**1023, _LARGEST, -_LARGEST, 1e308, -1e308, 5e-324, 2.0**53, 1e21]),
        st.floats(min_value=1e300, max_value=_LARGEST).flatmap(lambda f: st.sampled_from([f, -f])),
    )


_KEY_PIECES: tuple[str, ...] = (
    "a",
    "a\\.b",
    "a\\\\",
    "\\",
    "x~1y",
    "~1",
    "*",
    "[0:2]",
    "[:]",
    "[-1:]",
    "[0:-]",
    "[",
    "]",
    "['a']",
    '["a"]',
    "[99999999999999999999999:]",
    "0",
    "01",
    "4294967294",
    "4294967295",
    "1048577",
    "",
    " ",
    "日本",
    "\ud800",
    "length",
    "__proto__",
    "prototype",
)


def adversarial_keys() -> st.SearchStrategy[str]:
    """Keys that stress the key parser and matcher: long paths, escapes, brackets, wildcards.

    Paths of up to a few thousand segments (one segment repeated, or a run of
    wildcards), digit runs of thousands of digits, empty segments, lone escapes,
    unbalanced brackets, slices with bounds past any list, and the unsafe words.

    >>> from hypothesis import given, settings
    >>> from metaops import Set, apply
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(adversarial_keys())
    ... def test_apply_takes_any_key(key):
    ...     apply({"a": {"b": [1]}}, [Set(key, 1)])
    >>> test_apply_takes_any_key()
    """
    piece = st.sampled_from(_KEY_PIECES)
    short_path = st.lists(piece, min_size=1, max_size=6).map(lambda parts: "$." + ".".join(parts))
    long_path = st.tuples(piece, st.integers(min_value=100, max_value=3_000), piece).map(
        lambda drawn: "$." + ".".join([drawn[0]] * drawn[1] + [drawn[2]])
    )
    digits = st.integers(min_value=11, max_value=5_000).map(lambda n: "$.a." + "1" * n)
    literal = st.one_of(piece, st.text(max_size=6), st.integers(1, 5_000).map(lambda n: "a" * n))
    return st.one_of(short_path, short_path, long_path, digits, literal, keys())


def _tower(levels: int, dict_levels: list[bool]) -> JSON:
    value: JSON = 1
    for level in range(levels):
        value = {"a": value} if dict_levels[level % len(dict_levels)] else [value]
    return value


def deep_values(*, min_levels: int = MAX_DEPTH - 3, max_levels: int = MAX_DEPTH) -> st.SearchStrategy[JSON]:
    """Values whose containers nest between ``min_levels`` and ``max_levels`` deep.

    Dicts keyed ``"a"`` and lists, mixed. By default at the edge of what an
    operation's value may hold; ``max_levels`` past :data:`metaops.MAX_DEPTH` draws
    values that construction must refuse.

    >>> from hypothesis import given, settings
    >>> from metaops import Set
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(deep_values())
    ... def test_values_up_to_the_bound_are_taken(value):
    ...     assert Set("a", value).value == value
    >>> test_values_up_to_the_bound_are_taken()
    """
    return st.builds(
        _tower,
        st.integers(min_value=min_levels, max_value=max_levels),
        st.lists(st.booleans(), min_size=1, max_size=4),
    )


def adversarial_operations() -> st.SearchStrategy[Operation]:
    """One operation over :func:`adversarial_keys`, with deep values and extreme numbers.

    >>> from hypothesis import given, settings
    >>> from metaops import apply
    >>> @settings(max_examples=5, derandomize=True)
    ... @given(adversarial_operations())
    ... def test_one_operation_never_raises(op):
    ...     apply({"a": [1]}, [op])
    >>> test_one_operation_never_raises()
    """
    key = adversarial_keys()
    value = st.one_of(
        json_values(max_leaves=4), deep_values(), extreme_numbers(), json_values(numbers=extreme_numbers())
    )
    return st.one_of(
        st.builds(Set, key, value),
        st.builds(Delete, key),
        st.builds(Append, key, value),
        st.builds(Remove, key, value),
        st.builds(Increment, key, st.one_of(extreme_numbers(), _numbers(False))),
        st.builds(Update, st.dictionaries(st.sampled_from(_TOP_KEYS), value, max_size=3)),
    )
