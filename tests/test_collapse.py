"""Laws of collapse, compose and chunk, checked by hypothesis and on the conformance vectors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaops import (
    Append,
    Delete,
    Increment,
    InvalidLimitError,
    InvalidValueError,
    MetadataTooLargeError,
    Operation,
    Remove,
    Set,
    Update,
    apply,
    chunk,
    collapse,
    compose,
    json_size,
    parse_operations,
)
from metaops._collapse import reference_rule
from metaops._paths import MAX_PADDING
from metaops.strategies import batches, metadata

from .conftest import read_vectors


def _snapshot(value: Any) -> str:
    return json.dumps(value)


def _same_result(state: dict[str, Any], expected: dict[str, Any], got: dict[str, Any]) -> None:
    """Equal metadata, key order included; floats equal up to reassociation."""
    assert list(expected) == list(got), f"key order {list(expected)} != {list(got)}"
    _close(expected, got)


def _close(a: Any, b: Any) -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float))
        assert isinstance(b, (int, float))
        assert not isinstance(a, bool)
        assert not isinstance(b, bool)
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or a == b
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert list(a) == list(b)
        for key in a:
            _close(a[key], b[key])
    elif isinstance(a, list):
        assert isinstance(b, list)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y)
    else:
        assert type(a) is type(b)
        assert a == b


@given(metadata(integers_only=True), batches(integers_only=True, max_size=24))
def test_collapse_is_exact_on_integers(state: dict[str, Any], ops: list[Operation]) -> None:
    """With ints only, the collapsed batch gives byte-identical metadata, key order included."""
    collapsed = collapse(ops)
    assert _snapshot(apply(state, collapsed).metadata) == _snapshot(apply(state, ops).metadata)


@given(metadata(), batches(max_size=24))
def test_collapse_is_equivalent_with_floats(state: dict[str, Any], ops: list[Operation]) -> None:
    """With floats, results agree up to the reassociation of merged increments."""
    expected = apply(state, ops).metadata
    got = apply(state, collapse(ops)).metadata
    _same_result(state, expected, got)


@given(batches(max_size=24))
def test_collapse_is_idempotent(ops: list[Operation]) -> None:
    """Collapsing a collapsed batch changes nothing."""
    once = collapse(ops)
    assert collapse(once) == once


@given(batches(max_size=24))
def test_collapse_is_never_longer_than_the_reference_rule(ops: list[Operation]) -> None:
    """The result is never longer than the reference's consecutive-run rule (and never longer than ops)."""
    collapsed = collapse(ops)
    assert len(collapsed) <= len(reference_rule(ops, sound=True)) <= len(ops)


@given(batches(max_size=24))
def test_collapse_never_mutates_its_input(ops: list[Operation]) -> None:
    """The operations and their values are unchanged after collapsing."""
    before = _snapshot([op.to_wire() for op in ops])
    collapse(ops)
    assert _snapshot([op.to_wire() for op in ops]) == before


@given(batches(integers_only=True, max_size=12), batches(integers_only=True, max_size=12))
def test_compose_equals_collapse_of_the_concatenation(
    first: list[Operation], second: list[Operation]
) -> None:
    """compose(a, b) is collapse(a + b), from a plain batch and from a collapsed one."""
    expected = collapse([*first, *second])
    assert compose(first, second) == expected
    assert compose(collapse(first), second) == collapse([*collapse(first), *second])


@given(
    metadata(integers_only=True),
    batches(integers_only=True, max_size=10),
    batches(integers_only=True, max_size=10),
    batches(integers_only=True, max_size=10),
)
def test_compose_is_associative_with_identity(
    state: dict[str, Any], a: list[Operation], b: list[Operation], c: list[Operation]
) -> None:
    """(a.b).c and a.(b.c) have the same effect; the empty batch is an identity."""
    left = compose(compose(a, b), c)
    right = compose(a, compose(b, c))
    assert _snapshot(apply(state, left).metadata) == _snapshot(apply(state, right).metadata)
    assert compose((), a) == collapse(a) == compose(a, ())


@given(metadata(integers_only=True), st.lists(batches(integers_only=True, max_size=8), max_size=8))
def test_folding_arrivals_matches_the_concatenated_model(
    state: dict[str, Any], arrivals: list[list[Operation]]
) -> None:
    """A server folding batches one at a time ends where applying them all in order ends."""
    buffer: tuple[Operation, ...] = ()
    model: list[Operation] = []
    snapshots = []
    for batch in arrivals:
        buffer = compose(buffer, batch)
        model.extend(batch)
        snapshots.append(buffer)
        assert _snapshot(apply(state, buffer).metadata) == _snapshot(apply(state, model).metadata)
    assert buffer == collapse(model)
    # Each earlier buffer is still intact, and composing from it again is still exact.
    for i, earlier in enumerate(snapshots):
        assert compose(earlier, ()) == collapse([op for batch in arrivals[: i + 1] for op in batch])


def test_collapse_on_the_conformance_vectors() -> None:
    """On every vector: equivalent on its state, and never longer than the reference's own output."""
    for case in read_vectors("apply.jsonl"):
        ops = parse_operations(case["ops"], safe_keys=False)
        collapsed = collapse(ops)
        assert len(collapsed) <= len(case["ref_collapsed"])
        _same_result(
            case["state"], apply(case["state"], ops).metadata, apply(case["state"], collapsed).metadata
        )


def test_collapse_examples() -> None:
    """Hand-worked cases for each folding rule."""
    assert collapse([Increment("n", 1), Set("s", "a"), Increment("n", 2)]) == (
        Increment("n", 3),
        Set("s", "a"),
    )
    # After a set the value is known: later operations fold into it.
    assert collapse([Set("logs", ["a"]), Append("logs", "b"), Remove("logs", "a")]) == (Set("logs", ["b"]),)
    # A delete then a re-creation moves the key to the end: both are needed.
    assert collapse([Delete("a"), Set("b", 1), Set("a", 2)]) == (Set("b", 1), Delete("a"), Set("a", 2))
    # After an update everything is known.
    assert collapse([Set("x", 1), Update({"a": 1}), Increment("a", 2), Append("l", 0)]) == (
        Update({"a": 3, "l": [0]}),
    )
    # Paths that only diverge merge across each other; a path and its parent do not.
    assert collapse([Increment("$.c.a"), Increment("$.c.b"), Increment("$.c.a"), Increment("$.c.b", 2)]) == (
        Increment("$.c.a", 2),
        Increment("$.c.b", 3),
    )
    assert len(collapse([Increment("$.c.a"), Set("$.c", {}), Increment("$.c.a")])) == 3
    # A null written through a path cannot be reached by it again.
    assert collapse([Set("$.p.x", None), Set("$.p.x", 5)]) == (Set("$.p.x", None),)
    # Unsafe operations are never applied and never dropped.
    assert collapse([Set("__proto__", 1), Increment("n")]) == (Increment("n"), Set("__proto__", 1))


def _exact(state: dict[str, Any], ops: list[Operation], collapsed: tuple[Operation, ...]) -> None:
    assert _snapshot(apply(state, collapsed).metadata) == _snapshot(apply(state, ops).metadata)


@pytest.mark.parametrize("state", [{}, {"a": {"b": [0]}}, {"$.a.b": None, "x": 1}])
def test_a_top_level_key_that_reads_as_a_path_is_never_written_as_one(state: dict[str, Any]) -> None:
    """A key like "$.a.b", reached by an escaped path after a delete, is not sent back as a set of "$.a.b"."""
    cases: list[list[Operation]] = [
        [Delete("$.a.b"), Set("$.$\\.a\\.b", 5)],
        [Delete("$.a.b"), Append("$.$\\.a\\.b", 1), Append("$.$\\.a\\.b", 2)],
        [Append("$.$\\.a\\.b", 0), Delete("$.a.b"), Delete("$.a.b"), Increment("$.$\\.a\\.b")],
    ]
    for ops in cases:
        collapsed = collapse(ops)
        _exact(state, ops, collapsed)
        assert len(collapsed) <= len(reference_rule(ops))


def test_merged_increments_never_overflow_into_an_unsendable_number() -> None:
    """Increments whose sum would not be a finite double stay apart: the wire has no infinity."""
    for key in ("n", "$.a.n"):
        ops = [Increment(key, 1e308), Increment(key, 1e308)]
        assert collapse(ops) == tuple(ops)
    big = [Increment("n", 2**1023), Increment("n", 2**1023)]
    assert collapse(big) == tuple(big)
    for op in collapse([Increment("n", 1e308), Increment("n", 1e308), Increment("n", -1e308)]):
        assert parse_operations([op.to_wire()]) == (op,)  # every operation can be sent
    # Sums that fit still merge.
    assert collapse([Increment("n", 1e308), Increment("n", -1e308)]) == (Increment("n", 0.0),)


def test_a_set_after_a_write_on_the_same_path_replaces_it() -> None:
    """A set right after a set of the same path merges even when the path's chain began with a remove."""
    ops: list[Operation] = [Remove("$.a.x", 0), Increment("$.a.y"), Set("$.a.x", 1), Set("$.a.x", 2)]
    collapsed = collapse(ops)
    assert collapsed == (Remove("$.a.x", 0), Increment("$.a.y"), Set("$.a.x", 2))
    states: list[dict[str, Any]] = [{}, {"a": {"x": [0, 1]}}, {"a": []}, {"a": {"x": None}}]
    for state in states:
        _exact(state, ops, collapsed)


def test_compose_depends_only_on_its_arguments() -> None:
    """The same compose twice gives the same batch, and the batch a collapse from scratch gives."""
    first = collapse([Delete("n"), Delete("m"), Increment("n")])
    second = [Delete("n")]
    once = compose(first, second)
    assert compose(first, second) == once == collapse([*first, *second])


def test_a_huge_index_at_the_top_is_an_ordinary_key() -> None:
    """A path "$.5000000" names a top-level key (the top is a dict, never padded): key order is kept."""
    ops: list[Operation] = [Remove("5000000", 1), Set("b", 1), Set("$.5000000", 2)]
    collapsed = collapse(ops)
    assert list(apply({}, collapsed).metadata) == ["b", "5000000"]
    _exact({}, ops, collapsed)


def test_writes_past_the_padding_limit_collapse_without_changing_results() -> None:
    """Writes to a list index too far to pad are unapplied; collapsing keeps every result.

    (Not drawn by the strategies: the reference allocates such lists, two million nulls
    a case, which would make the differential test crawl.)
    """
    far = f"$.a.{MAX_PADDING + 1}"
    cases: list[list[Operation]] = [
        [Set(far, 1), Set(far, 2)],
        [Increment(far), Increment(far), Set("$.a.0", 5)],
        [Append(far, 1), Set("a", []), Append(far, 2)],
        [Set("$.b.x", 1), Remove(far, 1), Set(far, None), Increment("$.b.x")],
    ]
    states: list[dict[str, Any]] = [{}, {"a": []}, {"a": [1], "b": {}}, {"a": {"x": 1}}]
    for ops in cases:
        collapsed = collapse(ops)
        assert len(collapsed) <= len(reference_rule(ops))
        for state in states:
            _exact(state, ops, collapsed)


def test_compose_with_a_lazy_second_that_composes_onto_first() -> None:
    """A generator for second that itself composes onto first does not deadlock."""
    first = collapse([Increment("n")])
    results: list[tuple[Operation, ...]] = []

    def arriving() -> Iterator[Operation]:
        yield Increment("n", 2)
        results.append(compose(first, [Increment("n", 5)]))

    # In a thread, so that a deadlock fails the test instead of hanging the suite.
    worker = threading.Thread(target=lambda: results.append(compose(first, arriving())), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "compose deadlocked"
    assert results == [(Increment("n", 6),), (Increment("n", 3),)]


def test_unsound_reference_merge_is_not_made() -> None:
    """Two increments through a wildcard ending in a key stay apart: merging changes the result."""
    ops = [Increment("$.*.x", 1), Increment("$.*.x", 2)]
    state: dict[str, Any] = {"a": [1, 2], "b": {"x": 5}}
    assert apply(state, ops).metadata == {"a": [1, 2], "b": {"x": 2}}
    assert apply(state, [Increment("$.*.x", 3)]).metadata == {"a": [1, 2], "b": {"x": 3}}
    assert collapse(ops) == tuple(ops)


def test_collapse_is_deterministic_across_hash_seeds() -> None:
    """The same batch collapses to the same bytes in processes with different PYTHONHASHSEED."""
    program = textwrap.dedent(
        """
        import json, random
        from metaops import collapse
        from metaops.strategies import LITERAL_KEYS
        from metaops import Set, Delete, Append, Remove, Increment
        r = random.Random(7)
        keys = list(LITERAL_KEYS) + ["$.a.b", "$.a.c", "$.n.0", "$.*.x", "$.a.*"]
        kinds = [Set, Delete, Append, Remove, Increment]
        ops = []
        for i in range(3000):
            kind = r.choice(kinds)
            key = r.choice(keys)
            if kind is Delete:
                ops.append(Delete(key))
            elif kind is Increment:
                ops.append(Increment(key, r.choice([1, 2, -3])))
            else:
                ops.append(kind(key, r.choice([1, 2, "x", None, [1], {"k": i}])))
        print(json.dumps([op.to_wire() for op in collapse(ops)]))
        """
    )
    outputs = set()
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, env=env, check=True
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1


@given(batches(max_size=12), batches(max_size=12))
def test_compose_never_mutates_its_inputs(first: list[Operation], second: list[Operation]) -> None:
    """Neither batch, nor a collapsed buffer composed onto, nor their values change."""
    buffer = collapse(first)
    before = _snapshot([[op.to_wire() for op in batch] for batch in (first, buffer, second)])
    compose(buffer, second)
    compose(first, second)
    assert _snapshot([[op.to_wire() for op in batch] for batch in (first, buffer, second)]) == before


def test_compose_onto_one_buffer_from_many_threads() -> None:
    """Eight threads composing onto the same buffer each get collapse(buffer + their batch)."""
    buffer = collapse([Set("logs", []), Increment("n"), Append("$.tags", "t")])
    seconds: list[list[Operation]] = [
        [Append("logs", i), Increment("n", i), Set("$.tags.0", i)] for i in range(8)
    ]
    results: dict[int, tuple[Operation, ...]] = {}
    start = threading.Barrier(len(seconds))

    def work(index: int) -> None:
        start.wait()
        for _ in range(200):
            results[index] = compose(buffer, seconds[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(seconds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    for index, second in enumerate(seconds):
        assert results[index] == collapse([*buffer, *second])


def test_compose_does_not_disturb_an_earlier_buffer() -> None:
    """Composing twice from the same buffer gives two independent, exact results."""
    buffer = compose((), [Set("logs", []), Append("logs", "a")])
    left = compose(buffer, [Append("logs", "b")])
    right = compose(buffer, [Append("logs", "c")])
    assert buffer == (Set("logs", ["a"]),)
    assert left == (Set("logs", ["a", "b"]),)
    assert right == (Set("logs", ["a", "c"]),)


def test_collapse_refuses_wire_dicts() -> None:
    """A wire dict is not an operation: the error says to parse it first."""
    with pytest.raises(TypeError, match="parse_operations"):
        collapse([{"type": "set", "key": "a", "value": 1}])  # type: ignore[list-item]


@given(batches(max_size=30), st.integers(min_value=200, max_value=2_000))
def test_chunk_keeps_order_and_bounds(ops: list[Operation], limit: int) -> None:
    """Chunks concatenate back to the batch and each body fits the limit."""
    if any(json_size({"operations": [op.to_wire()]}) > limit for op in ops):
        with pytest.raises(MetadataTooLargeError) as refused:
            chunk(ops, max_bytes=limit)
        assert refused.value.limit == limit
        return
    parts = chunk(ops, max_bytes=limit)
    assert [op for part in parts for op in part] == list(ops)
    for part in parts:
        assert part
        assert json_size({"operations": [op.to_wire() for op in part]}) <= limit


def test_chunk_refuses_an_operation_larger_than_a_body() -> None:
    """One operation over the limit is an error naming its index, not a silent drop."""
    with pytest.raises(MetadataTooLargeError, match="operation 1"):
        chunk([Set("a", 1), Set("b", "x" * 500)], max_bytes=300)
    with pytest.raises(InvalidLimitError):
        chunk([Set("a", 1)], max_bytes=10)
    assert chunk([]) == []


def _odd(value: object) -> Any:
    """``value`` typed as anything: the calls below pass what the signatures forbid."""
    return value


def _deep_list(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: collapse(_odd([_deep_list(5_000)])), "^collapse: operation 0 is a list, not an operation"),
        (lambda: collapse(_odd([Set("a", 1), 2.5])), "^collapse: operation 1 is 2.5, not an operation"),
        (lambda: collapse(_odd(5)), "^collapse: ops must be an iterable of operations, got 5"),
        (lambda: collapse(_odd("ab")), "^collapse: ops must be an iterable of operations, got the string"),
        (
            lambda: collapse(_odd(Set("a", 1))),
            "^collapse: ops must be an iterable of operations, got a",
        ),
        (lambda: compose(_odd(5), []), "^compose: ops must be an iterable"),
        (lambda: compose(collapse([Increment("n")]), _odd(5)), "^compose: ops must be an iterable"),
        (lambda: compose([], _odd([Set("a", 1), "x"])), "^compose: operation 1 is the string 'x'"),
        (lambda: chunk(_odd("ab")), "^chunk: ops must be an iterable of operations, got the string 'ab'"),
        (lambda: chunk(_odd(["ab"])), "^chunk: operation 0 is the string 'ab', not an operation"),
        (lambda: chunk(_odd(5)), "^chunk: ops must be an iterable"),
        (lambda: chunk(_odd({"type": "set"})), "^chunk: ops must be operations, got a dict; parse"),
    ],
    ids=[
        "collapse deep",
        "collapse float",
        "collapse int",
        "collapse str",
        "collapse one",
        "compose int first",
        "compose int second",
        "compose str item",
        "chunk str",
        "chunk str item",
        "chunk int",
        "chunk dict",
    ],
)
def test_a_batch_of_anything_but_operations_is_an_invalid_value_error(call: Any, words: str) -> None:
    """collapse, compose and chunk refuse what is not a batch of operations with a typed error.

    (A 5,000-deep list once made collapse raise RecursionError, writing its repr; a
    string made chunk raise AttributeError.)
    """
    with pytest.raises(InvalidValueError, match=words) as caught:
        call()
    assert isinstance(caught.value, TypeError)
