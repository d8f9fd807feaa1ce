"""Exact JSON size: ``json_size`` against what node measures, and the size limit.

Every expected size is node's ``Buffer.byteLength(JSON.stringify(V))`` for the same
value (numbers, lone surrogates and NaN/Infinity written as JS source), and every
expected number text is node's ``String(x)``.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import pytest
from hypothesis import given

from metaops import (
    DEFAULT_LIMIT,
    InvalidLimitError,
    InvalidValueError,
    MetadataTooLargeError,
    check_size,
    json_size,
    json_text,
    metadata_limit,
)
from metaops._json import json_identical
from metaops._size import LIMIT_ENV, js_number, value_size
from metaops.strategies import json_values

INF = math.inf
NAN = math.nan

NUMBERS: list[tuple[Any, int]] = [
    (5.0, 1),
    (100.0, 3),
    (1e21, 5),
    (1e22, 5),
    (1e-7, 4),
    (-1e-7, 5),
    (1e-06, 8),
    (1.5e-06, 9),
    (1e-05, 7),
    (1.5e-07, 6),
    (-0.0, 1),
    (0.0, 1),
    (0, 1),
    (0.1, 3),
    (1.5, 3),
    (12345678.9, 10),
    (1e16, 17),
    (1e17, 18),
    (1e18, 19),
    (1e19, 20),
    (1e20, 21),
    (123456789012345680000.0, 21),
    (1e300, 6),
    (1.7976931348623157e308, 23),
    (5e-324, 6),
    (2**53, 16),
    (2**53 + 1, 16),
    (-(2**53 + 1), 17),
    (9999999999999999, 17),
    (99999999999999999, 18),
    (10**21, 5),
    (10**21 - 1, 5),
    (10**22, 5),
    (-(10**21), 6),
    (2**64, 20),
    (123456789012345678901234567890, 22),
    (INF, 4),
    (-INF, 4),
    (NAN, 4),
    ([INF, -INF, NAN], 16),
    ({"a": NAN}, 10),
    ([1e21, 1e-7, 10**21, 2**53 + 1], 35),
]

STRINGS: list[tuple[Any, int]] = [
    ("", 2),
    ("abc", 5),
    ('"', 4),
    ("\\", 4),
    ("\n\t\r\b\f", 12),
    ("\x00", 8),
    ("\x1f", 8),
    ("\x7f", 3),
    ("/", 3),
    ("\u2028", 5),
    ("\u2029", 5),
    ("é", 4),
    ("日本語", 11),
    ("😀", 6),
    ("\ud800", 8),
    ("\udfff", 8),
    ("a\udc00b", 10),
    # a surrogate pair built from two code points is one astral character to JS
    ("\ud83d\ude00", 6),
    # in the wrong order they are two lone surrogates
    ("\ude00\ud83d", 14),
    ("\ud83d\ud83d\ude00", 12),
    (["\ud800", {"\udc00": 1}], 23),
    (["ééé", "\ud83d\ude00x"], 18),
    ({"日本": 1.0}, 12),
]

# Text that looks like a number but sits inside a string must be left alone.
NUMBER_LOOKALIKES: list[tuple[Any, int]] = [
    ("[5.0]", 7),
    (":1e-05,", 9),
    ("1e+16", 7),
    (",1.0]", 7),
    ("[9999999999999999]", 20),
    ("-0.0", 6),
    ("NaN", 5),
    ("Infinity", 10),
    ({"5.0": 5.0}, 9),
    ({"1e-05": "x"}, 13),
    ([INF, "Infinity", "-Infinity", "NaN"], 35),
    (["a", "[1.0]"], 13),
    ({"k": "x,1.0]"}, 14),
    ({"k": ",\x00 1.0]"}, 20),
    (["-" * 100, 1.0, "e-5 " * 70, 1e-05], 397),
]

NESTING: list[tuple[Any, int]] = [
    ([[[[1.0]]]], 9),
    ({"a": {"b": [1.0, {"c": 1e-7}]}}, 26),
    ({}, 2),
    ([], 2),
    (True, 4),
    (False, 5),
    (None, 4),
    ([True, None, False], 17),
    ({"a": [1e16, "1e16", 1e-06, "x"], "b": {"1.0": [2.0, -0.0]}}, 63),
]

ALL_CASES = NUMBERS + STRINGS + NUMBER_LOOKALIKES + NESTING


def _id(case: tuple[Any, int]) -> str:
    return ascii(case[0])[:60]


@pytest.mark.parametrize(("value", "expected"), NUMBERS, ids=[_id(c) for c in NUMBERS])
def test_numbers_are_measured_as_javascript_writes_them(value: Any, expected: int) -> None:
    """5.0 is 5, 1e21 is 1e+21, 1e-6 is 0.000001, big ints round to doubles, NaN/inf are null."""
    assert json_size(value) == expected
    # the same number inside containers: '[x]' and '{"k":x}' around it
    assert json_size([value]) == expected + 2
    assert json_size({"k": value}) == expected + 6
    assert json_size([value, value]) == 2 * expected + 3


@pytest.mark.parametrize(("value", "expected"), STRINGS, ids=[_id(c) for c in STRINGS])
def test_strings_are_measured_as_javascript_writes_them(value: Any, expected: int) -> None:
    """Escapes, control characters, raw U+2028, UTF-8 bytes, lone surrogates as \\udXXX."""
    assert json_size(value) == expected


@pytest.mark.parametrize(("value", "expected"), NUMBER_LOOKALIKES, ids=[_id(c) for c in NUMBER_LOOKALIKES])
def test_digits_inside_strings_are_not_corrected(value: Any, expected: int) -> None:
    """Only real numbers are rewritten; the same characters inside a string are counted as they are."""
    assert json_size(value) == expected


@pytest.mark.parametrize(("value", "expected"), NESTING, ids=[_id(c) for c in NESTING])
def test_nesting(value: Any, expected: int) -> None:
    """Compact separators at every depth."""
    assert json_size(value) == expected


def test_deep_nesting() -> None:
    """A value nested 200 deep: '[' * 200 + '1' + ']' * 200."""
    value: Any = 1.0
    for _ in range(200):
        value = [value]
    assert json_size(value) == 401


def test_aware_datetimes_are_measured_as_their_js_string() -> None:
    """A datetime is written as Date.toJSON() writes it: '"2026-11-22T09:30:00.123Z"' (26 bytes)."""
    from datetime import datetime, timezone

    assert json_size([datetime(2026, 11, 22, 9, 30, 0, 123456, tzinfo=timezone.utc)]) == 28


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def _circular() -> Any:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({1, 2}, "holds a set, which is not a JSON value"),
        (object(), "holds a bare object(), which is not a JSON value"),
        ({"a": b"x"}, "holds a bytes, which is not a JSON value"),
        ({(1,): 1}, "keys must be str"),
        (_deep(100_000), "nested too deeply"),
        (_circular(), "contains itself"),
    ],
    ids=["set", "object", "bytes", "tuple key", "deep", "circular"],
)
def test_non_json_values_are_refused(value: Any, words: str) -> None:
    """Something JSON cannot hold is an InvalidValueError (a TypeError) saying what it holds."""
    for function in (json_size, json_text):
        with pytest.raises(InvalidValueError, match=re.escape(words)) as caught:
            function(value)
        assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize(
    ("value", "text", "node_size"),
    [
        (2**53, "9007199254740992", 16),
        (2**53 + 1, "9007199254740992.0", 16),
        (-(2**60), "-1.152921504606847e+18", 20),
        ([2**1023], "[8.98846567431158e+307]", 23),
        ({"n": 3 * 2**1023}, '{"n":null}', 10),
        ([10**5000, -(10**5000)], "[null,null]", 11),
        (10**5000, "null", 4),
        (["1234567890123456789", 1234567890123456789], '["1234567890123456789",1.2345678901234568e+18]', 43),
    ],
    ids=["2**53", "2**53+1", "-2**60", "2**1023", "overflow", "5,000 digits", "bare", "in a string"],
)
def test_ints_past_2_to_the_53_are_written_as_the_doubles_javascript_holds(
    value: Any, text: str, node_size: int
) -> None:
    """json_text writes what JavaScript reads, never hundreds of digits; json_size measures node's text.

    (Digits inside strings stay as they are.)
    """
    assert json_text(value) == text
    assert json_size(value) == node_size


def _best(run: Any, times: int) -> float:
    best = math.inf
    for _ in range(times):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("piece", ["1e+", "1e-", "1.0,", "1.0]", "0" * 17 + ",", "[1.0"])
def test_text_that_looks_like_numbers_is_measured_in_linear_time(piece: str) -> None:
    """A string of 32,000 number-like pieces costs far less than 32**2 times one of 1,000.

    (Each exponent sign once sent json_size back over the whole run before it: a 30 KB
    string took a minute.) A ratio, never an absolute time: linear gives about 32.
    """
    short, long = [piece * 1_000], [piece * 32_000]
    assert json_size(long) == len(json.dumps(long, separators=(",", ":")))
    ratio = _best(lambda: json_size(long), 2) / _best(lambda: json_size(short), 5)
    assert ratio < 32 * 4, f"{piece!r}: {ratio:.0f}x"


# ---------------------------------------------------------------- js_number


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (5.0, "5"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (123.456, "123.456"),
        (1e20, "100000000000000000000"),
        (1.5e300, "1.5e+300"),
        (5e-324, "5e-324"),
        (-1.5e-10, "-1.5e-10"),
        (0.000001234, "0.000001234"),
        (1.2345e-7, "1.2345e-7"),
        (100, "100"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (0.1 + 0.2, "0.30000000000000004"),
        (2**53 + 1, "9007199254740992"),
        (10**21, "1e+21"),
        (INF, "Infinity"),
        (-INF, "-Infinity"),
        (NAN, "NaN"),
        (2**1024, "Infinity"),
        (-(2**1024), "-Infinity"),
    ],
)
def test_js_number(number: int | float, text: str) -> None:
    """js_number writes what JavaScript's String(x) writes."""
    assert js_number(number) == text


# ---------------------------------------------------------------- value_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *ALL_CASES,
        ("plain ascii", 13),
        (2**53 - 1, 16),
        (-(2**53), 17),
        (2**53 + 2, 16),
        (10**21 + 1, 5),
    ],
    ids=lambda v: ascii(v)[:40],
)
def test_value_size_agrees_with_node(value: Any, expected: int) -> None:
    """value_size (json_size with fast paths) gives node's size too, and agrees with json_size."""
    assert value_size(value) == expected
    assert value_size(value) == json_size(value)


# ---------------------------------------------------------------- check_size and the limit


def test_check_size_returns_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the limit, check_size is json_size: '{"a":"x...x"}' with 100 x's is 108 bytes."""
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    metadata = {"a": "x" * 100}
    assert check_size(metadata) == 108
    assert check_size(metadata, limit=108) == 108


def test_check_size_raises_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the limit: MetadataTooLargeError (a ValueError) with .size, .limit and both in the message."""
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    with pytest.raises(MetadataTooLargeError) as caught:
        check_size({"a": "x" * 100}, limit=107)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.size == 108
    assert error.limit == 107
    assert "108" in str(error)
    assert "107" in str(error)


def test_check_size_uses_the_default_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an argument or the variable, 262,144 bytes: one byte more is refused."""
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    # '{"a":"' + x * n + '"}' is n + 8 bytes
    assert check_size({"a": "x" * (262_144 - 8)}) == 262_144
    with pytest.raises(MetadataTooLargeError) as caught:
        check_size({"a": "x" * (262_144 - 7)})
    assert caught.value.size == 262_145
    assert caught.value.limit == 262_144
    assert "262,144" in str(caught.value) or "262144" in str(caught.value)


def test_check_size_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TASK_RUN_METADATA_MAXIMUM_SIZE sets the limit check_size applies."""
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", "10")
    assert check_size({"a": "x"}) == 9
    with pytest.raises(MetadataTooLargeError) as caught:
        check_size({"a": "xyz"})
    assert caught.value.limit == 10
    assert caught.value.size == 11


def test_default_limit_is_256_kb(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented limit: 256 KB = 262,144 bytes."""
    monkeypatch.delenv("TASK_RUN_METADATA_MAXIMUM_SIZE", raising=False)
    assert DEFAULT_LIMIT == 262_144
    assert metadata_limit() == 262_144
    assert metadata_limit(None) == 262_144


def test_an_argument_is_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit limit wins over the environment, even a malformed one."""
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", "not a number")
    assert metadata_limit(1000) == 1000
    assert metadata_limit(0) == 0


@pytest.mark.parametrize(("raw", "limit"), [("1000", 1000), ("1048576", 1_048_576), ("0", 0)])
def test_the_environment_sets_the_limit(monkeypatch: pytest.MonkeyPatch, raw: str, limit: int) -> None:
    """A whole number of bytes in TASK_RUN_METADATA_MAXIMUM_SIZE is the limit."""
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", raw)
    assert metadata_limit() == limit


@pytest.mark.parametrize("raw", ["", "abc", "1.5", "-5", "256KB", "1e6", "0x100", "１０", "²", "1 000"])
def test_a_malformed_environment_value_is_an_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """Never a silent default: InvalidLimitError (a ValueError) naming the variable."""
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", raw)
    with pytest.raises(InvalidLimitError, match="TASK_RUN_METADATA_MAXIMUM_SIZE") as caught:
        metadata_limit()
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidLimitError, match="TASK_RUN_METADATA_MAXIMUM_SIZE"):
        check_size({})


@pytest.mark.parametrize("limit", [-1, True, 1.5, "100"])
def test_a_malformed_limit_argument_is_an_error(limit: Any) -> None:
    """A limit argument must be a non-negative int of bytes."""
    with pytest.raises(InvalidLimitError, match="limit"):
        metadata_limit(limit)


@given(json_values())
def test_value_size_agrees_with_json_size(value: Any) -> None:
    """The fast paths for scalars and small containers measure what json_size measures."""
    assert value_size(value) == json_size(value)


@given(json_values())
def test_json_text_reads_back_as_the_same_value(value: Any) -> None:
    """json_text is UTF-8 safe, exact on a round trip, and ASCII-only on request."""
    text = json_text(value)
    text.encode("utf-8")  # lone surrogates are escaped, so this never fails
    assert json_identical(json.loads(text), value)
    ascii_text = json_text(value, ascii=True)
    assert ascii_text.isascii()
    assert json_identical(json.loads(ascii_text), value)


def test_json_text_writes_non_finite_numbers_as_null() -> None:
    """Only structural Infinity/NaN become null; the same letters inside strings stay."""
    value = [math.inf, {"n": -math.inf, "s": "Infinity NaN"}, math.nan, 5.311084116861613e16]
    assert json_text(value) == '[null,{"n":null,"s":"Infinity NaN"},null,5.311084116861613e+16]'
    assert json_text(math.inf) == "null"
    assert json_text("\ud800x") == '"\\ud800x"'
