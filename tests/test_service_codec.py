"""The service's JSON text, reused per unchanged subtree, against json_text: differential fuzzing.

The text the service stores and answers is built from the cached texts of the
containers an update left alone, leaves written by ``orjson`` where it spells them
as ``json_text`` does. Whatever the metadata and the updates, it must be exactly
``json_text`` of the result, with orjson and without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import metaops.service._codec as codec
from metaops import Append, Delete, Increment, Operation, Remove, Set, apply, json_text
from metaops.service._codec import TextCache, loads
from metaops.strategies import batches, json_values, metadata

ENCODERS = ["orjson", "stdlib"] if codec._orjson_dumps is not None else ["stdlib"]

AWKWARD: list[Any] = [
    1e-05,
    1e16,
    -0.0,
    1e21,
    5e-324,
    1.7976931348623157e308,
    2**53,
    2**53 + 1,
    -(2**63),
    2**64,
    2**70,
    "\ud800",
    "a\udfffb",
    "\ud83c\udf89",  # a pair held as two code points
    "\x00\x1f\x7f\u2028\u2029",
    'quote"back\\slash/',
    "日本語 🎉",
    {"\ud800key": 1, "k\u00e9y": [True, None]},
    [],
    {},
]


@contextmanager
def _leaves_written_by(encoder: str) -> Iterator[None]:
    """Leaves written by orjson (when installed), or by the standard library only."""
    saved = codec._orjson_dumps
    if encoder == "stdlib":
        codec._orjson_dumps = None
    try:
        yield
    finally:
        codec._orjson_dumps = saved


def _expected(value: object) -> bytes:
    return json_text(value).encode()


@pytest.mark.parametrize("encoder", ENCODERS)
@settings(max_examples=40)  # each example is a chain of updates; drawing them is what takes the time
@given(state=metadata(), updates=st.lists(batches(max_size=5), min_size=1, max_size=4))
def test_text_after_each_update_is_json_text(
    encoder: str, state: dict[str, Any], updates: list[list[Operation]]
) -> None:
    """Copy-on-write updates one after another, each encoded with the texts of the one before."""
    with _leaves_written_by(encoder):
        cache = TextCache()
        assert cache.encode(state) == _expected(state)
        for ops in updates:
            state = apply(state, ops).metadata
            assert cache.encode(state) == _expected(state)


@pytest.mark.parametrize("encoder", ENCODERS)
@settings(max_examples=40)
@given(value=json_values(max_leaves=30), awkward=st.lists(st.sampled_from(AWKWARD), max_size=6))
def test_awkward_values_are_written_as_json_text_writes_them(
    encoder: str, value: Any, awkward: list[Any]
) -> None:
    """Exponents, -0.0, ints past 2**53 and 2**64, lone surrogates, control characters: each
    where orjson would spell it otherwise, or refuse it."""
    candidates: list[Any] = [{"v": value, "odd": awkward}, [awkward, value], {"leaf": awkward}, awkward]
    with _leaves_written_by(encoder):
        for candidate in candidates:
            assert TextCache().encode(candidate) == _expected(candidate)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_non_finite_numbers_from_increments_are_written_null(encoder: str) -> None:
    state: dict[str, Any] = {"n": 1.7976931348623157e308, "rows": [{"a": 1}]}
    with _leaves_written_by(encoder):
        cache = TextCache()
        cache.encode(state)
        state = apply(state, [Increment("n", 1.7976931348623157e308)]).metadata
        assert cache.encode(state) == _expected(state) == b'{"n":null,"rows":[{"a":1}]}'


def test_texts_of_containers_gone_from_the_metadata_are_dropped() -> None:
    """The cache does not grow with the number of updates, only with the metadata."""
    state: dict[str, Any] = {"rows": [{"i": i} for i in range(50)], "n": 0}
    cache = TextCache()
    cache.encode(state)
    for step in range(2000):
        state = apply(state, [Increment(f"$.rows.{step % 50}.i")]).metadata
        assert cache.encode(state) == _expected(state)
    assert len(cache) <= 2 * 52 + 256 + 3


def test_the_cache_of_a_large_run_holds_a_few_copies_of_its_text_not_one_per_update() -> None:
    """Each update writes a large run's top-level text anew: the cache prunes by bytes too, and
    an encode leaves no reference cycle behind (a cycle kept every text it reached alive until
    the collector's next full pass, ~100 MB per 1,000 updates of a 100 KB run)."""
    import gc
    import tracemalloc

    state: dict[str, Any] = {"blob": "x" * 100_000, "n": 0, "rows": [{"i": i} for i in range(10)]}
    cache = TextCache()
    gc.disable()
    tracemalloc.start()
    try:
        for _ in range(300):
            state = apply(state, [Increment("n")]).metadata
            cache.encode(state)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    # The live text is 100 KB; the bound is twice that plus a mebibyte of slack, and one update's
    # writing on top. 300 updates kept alive would be 30 MB.
    assert held < 2 * 100_000 + 2**20 + 4 * 100_000, held


def test_an_update_drops_the_texts_it_replaced_without_walking_the_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each update replaces the containers on its path: their texts go at once, so the cache
    stays near the live texts without the pruning walk, whose cost follows the metadata's
    size (walking every few updates of a 250 KB run tripled the CPU of an update)."""
    walks = []
    real = codec._reachable

    def counted(value: Any, texts: codec.Texts) -> tuple[codec.Texts, int, int]:
        walks.append(len(texts))
        return real(value, texts)

    monkeypatch.setattr(codec, "_reachable", counted)
    state: dict[str, Any] = {"rows": [{"i": i, "pad": "x" * 2_000} for i in range(200)], "n": 0}
    cache = TextCache()
    for step in range(300):
        state = apply(state, [Increment("n"), Increment(f"$.rows.{step % 200}.i")]).metadata
        assert cache.encode(state) == _expected(state)
    assert len(walks) <= 1, walks
    assert len(cache) <= 202  # the top object, the list, its 200 rows


def test_loads_refuses_what_is_not_json() -> None:
    assert loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    for text in ("NaN", "[Infinity]", "-Infinity", '{"a": '):
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the json module's
            loads(text)


def _row_operations() -> st.SearchStrategy[Operation]:
    index = st.integers(0, 45)
    value = st.one_of(
        st.integers(-3, 3), st.sampled_from(["x", "é", "\ud800", 1e-05]), st.just({"deep": [1]})
    )
    return st.one_of(
        st.builds(lambda i, v: Set(f"$.rows.{i}.i", v), index, value),
        st.builds(lambda i, v: Set(f"$.rows.{i}", {"i": v}), index, value),
        st.builds(lambda i: Append(f"$.rows.{i}.tags", "t"), index),
        st.builds(lambda v: Append("rows", {"i": v}), value),
        st.builds(lambda i: Remove("rows", {"i": i, "tags": []}), index),
        st.builds(lambda i: Delete(f"$.rows.{i}"), index),
        st.just(Set("other", [[1], [2]])),
    )


@pytest.mark.parametrize("encoder", ENCODERS)
@settings(max_examples=40)
@given(steps=st.lists(st.lists(_row_operations(), min_size=1, max_size=3), min_size=1, max_size=6))
def test_long_lists_patched_by_position_stay_exact(encoder: str, steps: list[list[Operation]]) -> None:
    """A list of 40 rows keeps its items' texts; a copy with rows changed, appended, removed or
    deleted (which shifts the rest) is written by patching the items that are not the same objects."""
    state: dict[str, Any] = {"rows": [{"i": i, "tags": []} for i in range(40)]}
    with _leaves_written_by(encoder):
        cache = TextCache()
        assert cache.encode(state) == _expected(state)
        for ops in steps:
            state = apply(state, ops).metadata
            assert cache.encode(state) == _expected(state)
