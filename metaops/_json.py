"""The JSON value model: what a JSON value is, how two compare, and normalization.

Metadata and operation values are plain Python JSON (``None``, ``bool``, ``int``,
``float``, ``str``, ``list``, ``dict`` with ``str`` keys). Three rules differ from
plain Python and follow JavaScript, where the reference runs, whose numbers are
IEEE doubles: ``bool`` is never a number (``True != 1``); an int past 2**53 in
magnitude is held as the double JavaScript holds (a ``float``), whether it was
given or computed; and ints beyond the range of a double are not JSON numbers
(JavaScript would read them as ``Infinity``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeAlias, Union

from metaops._errors import InvalidValueError

__all__ = [
    "INDEX_DIGITS",
    "JSON",
    "MAX_ARRAY_INDEX",
    "MAX_DEPTH",
    "MAX_EXACT_INT",
    "MAX_METADATA_DEPTH",
    "MIN_EXACT_INT",
    "MISSING",
    "JSONInput",
    "add_numbers",
    "as_js_number",
    "describe",
    "describe_json",
    "fits_double",
    "is_number",
    "js_iso_string",
    "js_key_order",
    "json_equal",
    "json_hash",
    "json_identical",
    "nests_within",
    "normalize",
    "shown_key",
    "to_double",
]

# Union, not "|": the recursive forward references are strings at runtime.
JSON: TypeAlias = Union[bool, int, float, str, "list[JSON]", "dict[str, JSON]", None]
"""A JSON value as Python holds it."""

JSONInput: TypeAlias = Union[
    bool, int, float, str, datetime, "list[Any]", "tuple[Any, ...]", "dict[str, Any]", None
]
"""What an operation accepts as a value: JSON, plus tuples and aware datetimes (normalized)."""


class _Missing:
    """The absence of a value (JavaScript's ``undefined``), distinct from ``None``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING = _Missing()

# JavaScript orders an object's integer-like keys ("array indices", 0 .. 2**32 - 2)
# before its other keys; wildcards enumerate in that order.
MAX_ARRAY_INDEX = 2**32 - 2
# The longest array index, in digits: a longer digit string is none (and is never
# converted, which would cost the square of its length).
INDEX_DIGITS = len(str(MAX_ARRAY_INDEX))


def is_number(value: object) -> bool:
    """Whether ``value`` is a JSON number: an ``int`` or ``float`` but not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


MAX_EXACT_INT = 2**53
"""Ints up to this magnitude are held exactly by a double, as JavaScript holds numbers.

metaops keeps such ints as ints; a larger one (given, or the result of arithmetic)
becomes the double JavaScript would hold, a Python ``float``, so that what is stored
reads back as the value JavaScript reads and is as long as the size check measured.
"""


MIN_EXACT_INT = -MAX_EXACT_INT
"""The most negative int a double holds exactly (negated once here, not on every
comparison of a hot path)."""


def to_double(value: int | float) -> float:
    """``value`` as the IEEE double JavaScript would hold (``±inf`` past the range)."""
    try:
        return float(value)
    except OverflowError:
        # Only an int can overflow here; copysign would convert it (and overflow) again.
        return math.inf if value > 0 else -math.inf


def as_js_number(value: int | float) -> int | float:
    """``value`` as JavaScript holds it: an int up to 2**53 in magnitude, else a double.

    >>> as_js_number(2**53), as_js_number(2**53 + 1), as_js_number(3 * 2**1023)
    (9007199254740992, 9007199254740992.0, inf)
    """
    if type(value) is int and not MIN_EXACT_INT <= value <= MAX_EXACT_INT:
        return to_double(value)
    return value


def fits_double(value: int | float) -> bool:
    """Whether ``value`` is a finite IEEE double, as every number on the wire must be."""
    return math.isfinite(to_double(value))


def add_numbers(a: int | float, b: int | float) -> int | float:
    """``a + b`` as JavaScript adds them: IEEE doubles, except that ints stay ints while exact.

    Two ints of at most 2**53 give their exact sum while it stays within 2**53, and the
    double nearest to it past that (what adding the two doubles gives). Anything else
    is added as doubles: an overflow is ``±inf``; nothing raises.

    >>> add_numbers(2, 3), add_numbers(2**53, 1), add_numbers(1e308, 1e308)
    (5, 9007199254740992.0, inf)
    """
    if (
        type(a) is int
        and type(b) is int
        and MIN_EXACT_INT <= a <= MAX_EXACT_INT
        and MIN_EXACT_INT <= b <= MAX_EXACT_INT
    ):
        total = a + b
        if MIN_EXACT_INT <= total <= MAX_EXACT_INT:
            return total
        return float(total)  # at most 2**54: exact operands, so one rounding, as JavaScript's
    return to_double(a) + to_double(b)


def json_equal(a: object, b: object) -> bool:
    """JSON equality, as the reference's ``dequal`` decides it.

    Numbers compare by value (``1 == 1.0``, ``0 == -0.0``) and never equal a bool;
    lists compare element-wise in order; dicts by key set and values, key order
    ignored.

    >>> from metaops import json_equal
    >>> json_equal({"a": 1, "b": [1.0]}, {"b": [1], "a": 1.0}), json_equal(True, 1)
    (True, False)
    """
    if a is b:
        return True
    try:
        if a != b:
            return False
        # Python's == already agrees everywhere except where a bool meets a number.
        return _no_bool_confusion(a, b, ordered=False)
    except RecursionError:
        # Not from anything apply produces (metadata nests at most MAX_DEPTH + 2 levels).
        msg = "json_equal: the values are nested too deeply to compare (or contain themselves)"
        raise InvalidValueError(msg, "value") from None


def json_identical(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` serialize to the same JSON text, key order included.

    Stricter than :func:`json_equal`: ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}``
    are equal but not identical, because wildcards read key order.
    """
    if a is b:
        return True
    if a != b:
        return False
    return _no_bool_confusion(a, b, ordered=True)


def _no_bool_confusion(a: object, b: object, *, ordered: bool) -> bool:
    """Given ``a == b`` in Python, whether they are also equal as JSON."""
    if a is b:
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b)
    if isinstance(a, dict):
        assert isinstance(b, dict)
        if ordered and list(a) != list(b):
            return False
        return all(_no_bool_confusion(v, b[k], ordered=ordered) for k, v in a.items())
    if isinstance(a, list):
        assert isinstance(b, list)
        return all(_no_bool_confusion(x, y, ordered=ordered) for x, y in zip(a, b, strict=True))
    return True


def json_hash(value: object) -> int:
    """A hash consistent with :func:`json_equal` (equal values hash alike)."""
    if isinstance(value, dict):
        return hash(frozenset((k, json_hash(v)) for k, v in value.items()))
    if isinstance(value, list):
        return hash(tuple(json_hash(v) for v in value))
    return hash(value)


def _is_array_index(key: str) -> bool:
    return (
        len(key) <= INDEX_DIGITS
        and key.isdigit()
        and key.isascii()
        and (key == "0" or key[0] != "0")
        and int(key) <= MAX_ARRAY_INDEX
    )


def js_key_order(obj: dict[str, JSON]) -> list[str]:
    """The keys of ``obj`` in JavaScript property order.

    Array-index keys (``"0"``, ``"10"``, up to 2**32 - 2) come first in ascending
    numeric order, then the other keys in insertion order.
    """
    keys = list(obj)
    indices = [k for k in keys if k[:1].isdigit() and _is_array_index(k)]
    if not indices:
        return keys
    indices.sort(key=int)
    return indices + [k for k in keys if not (k[:1].isdigit() and _is_array_index(k))]


def js_iso_string(moment: datetime) -> str:
    """The text JavaScript's ``Date.prototype.toJSON`` writes for an aware datetime.

    UTC, millisecond precision (microseconds are truncated, as a JS ``Date`` holds
    none), and a ``Z`` suffix: ``2026-11-22T09:30:00.123Z``.
    """
    # Milliseconds since the epoch, by subtraction: astimezone() would overflow for
    # instants whose UTC date falls outside years 1..9999, which JavaScript writes.
    millis = (moment - _EPOCH) // _MILLISECOND
    days, millis = divmod(millis, 86_400_000)
    year, month, day = _civil_from_days(days)
    seconds, millis = divmod(millis, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    # JavaScript writes years 0..9999 with four digits, others signed with six.
    year_text = f"{year:04d}" if 0 <= year <= 9999 else f"{year:+07d}"
    return f"{year_text}-{month:02d}-{day:02d}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """The proleptic Gregorian (year, month, day) ``days`` after 1970-01-01 (any year)."""
    # Howard Hinnant's days-to-civil algorithm, over 400-year eras.
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def describe(value: object) -> str:
    """A short description of a Python value that came where it should not, for error messages.

    >>> describe(None), describe(True), describe({}), describe("x"), describe(2.5)
    ('None', 'True', 'a dict', "the string 'x'", '2.5')
    """
    if value is None or value is True or value is False:
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a dict"
    return _describe_other(value)


def describe_json(value: object) -> str:
    """A short description of a value read from JSON text, in JSON's words (``null``, ``an object``).

    For errors about what a JSON document or the platform's wire held.

    >>> describe_json(None), describe_json(True), describe_json({}), describe_json([])
    ('null', 'true', 'an object', 'a list')
    """
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return _describe_other(value)


# Past this many digits an int is described by its length (and never converted to
# text, which CPython refuses past 4,300 digits).
_SHOWN_DIGITS = 40


def _describe_other(value: object) -> str:
    if isinstance(value, str):
        text = value if len(value) <= _SHOWN_DIGITS else value[: _SHOWN_DIGITS - 3] + "..."
        return f"the string {str.__repr__(text)}"
    if isinstance(value, int) and not -(10**_SHOWN_DIGITS) < value < 10**_SHOWN_DIGITS:
        try:
            return f"an int of {len(str(abs(int(value)))):,} digits"
        except ValueError:  # too long for CPython to write in decimal
            return f"an int of about {int(abs(int(value)).bit_length() * 0.30103) + 1:,} digits"
    if isinstance(value, (int, float)):
        return repr(value)
    if type(value) is object:
        return "a bare object()"
    kind = type(value)
    module = kind.__module__
    if module.startswith("metaops.") and module.split(".")[1].startswith("_"):
        module = "metaops"  # a private module's class is public under metaops
    name = f"{module}.{kind.__qualname__}".removeprefix("builtins.")
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


# Where a part of a value is, while normalize walks it: the argument's name, then
# (the place of the container, the key or index) pairs. Spelled out only for an
# error, so that the walk costs no string building per item, and the text stays
# short however long the keys.
_Place: TypeAlias = Union[str, tuple["_Place", Union[str, int]]]  # noqa: UP007

_SHOWN_KEY = 40


def shown_key(key: str) -> str:
    """``key`` as an error message shows it: quoted, and cut short past 60 characters.

    A key can be as long as a request body; a message quoting it whole would be too.

    >>> shown_key("progress"), shown_key("$." + "a." * 100 + "b")
    ("'progress'", "'$.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.'...'.a.a.a.a.a.b'")
    """
    return repr(key) if len(key) <= 60 else f"{key[:40]!r}...{key[-12:]!r}"


def _place_text(place: _Place) -> str:
    steps: list[str] = []
    while not isinstance(place, str):
        place, step = place
        if isinstance(step, str) and len(step) > _SHOWN_KEY:
            step = step[: _SHOWN_KEY - 3] + "..."
        steps.append(f"[{step!r}]")
    steps.append(place)
    steps.reverse()
    return "".join(steps)


MAX_DEPTH = 256
"""How deeply a value's containers may nest (``[[1]]`` is 2 deep).

Comparing, hashing, measuring and serializing values recurse; past a few hundred
levels Python runs out of stack (its own ``json`` module fails near 1,000). A
bound checked once, when a value enters, keeps every later step from failing.
Real metadata nests a handful of levels; serde_json's default bound is 128.

Metadata itself nests at most ``MAX_DEPTH + 2`` = 258 levels: the top-level
object, a list that an append wraps around a value that was not a list, and a value
of ``MAX_DEPTH`` levels. ``apply`` keeps it so: every write at a top-level key of a
value within this bound lands, as it always did (appending to a dict that path
writes already made deeper than ``MAX_DEPTH`` excepted), and a write whose place
depth plus its value's depth would pass 258 is reported unapplied, as a write past
the padding limit is. A whole metadata object (a replacement, a starting state) may
nest as deeply as metadata does.
"""

MAX_METADATA_DEPTH = MAX_DEPTH + 2
"""How deeply metadata nests, its top-level object counted (see ``MAX_DEPTH``)."""

_CONTAINERS = (dict, list)


def nests_within(value: object, levels: int) -> bool:
    """Whether the containers of ``value`` nest at most ``levels`` deep (``[[1]]`` is 2).

    In time linear in the distinct containers met (a container shared by several
    places is walked once), without recursion, and never past ``levels + 1`` deep:
    a cycle or a value nested a million deep is answered as quickly as a flat one.

    >>> nests_within([[1]], 2), nests_within([[1]], 1), nests_within(5, 0)
    (True, False, True)
    """
    if not isinstance(value, _CONTAINERS):
        return True
    if levels < 1:
        return False
    # Post-order over the containers: heights[id] is a container's own height, known
    # once all its children are; a path longer than ``levels`` answers at once.
    heights: dict[int, int] = {}
    path: list[tuple[object, Iterator[object]]] = [(value, _children(value))]
    tallest_below = [0]
    while path:
        node, children = path[-1]
        for child in children:
            if not isinstance(child, _CONTAINERS):
                continue
            known = heights.get(id(child))
            if known is None:
                if len(path) == levels:
                    return False
                path.append((child, _children(child)))
                tallest_below.append(0)
                break
            if known + len(path) > levels:
                return False
            tallest_below[-1] = max(tallest_below[-1], known)
        else:
            path.pop()
            height = tallest_below.pop() + 1
            heights[id(node)] = height
            if tallest_below:
                tallest_below[-1] = max(tallest_below[-1], height)
    return True


def _children(node: object) -> Iterator[object]:
    return iter(node.values()) if isinstance(node, dict) else iter(node)  # type: ignore[call-overload]


def normalize(value: object, where: str = "value", *, wire: bool = False, metadata: bool = False) -> JSON:
    """A fresh JSON copy of ``value``, or :class:`InvalidValueError` saying where it is not JSON.

    Tuples become lists; ``dict``/``list`` subclasses become plain ones; an aware
    ``datetime`` becomes the string JavaScript's ``Date.toJSON()`` writes; an int past
    2**53 becomes the double JavaScript holds. With ``wire=True`` (values that arrived
    as JSON text), a ``datetime`` is refused. Containers nested deeper than
    :data:`MAX_DEPTH` are refused; with ``metadata=True`` (a whole metadata object, as
    a replacement or a starting state) deeper than :data:`MAX_METADATA_DEPTH`, so that
    whatever ``apply`` produces can be given back.
    """
    return _normalize(value, where, wire, set(), 0, MAX_METADATA_DEPTH if metadata else MAX_DEPTH)


def _normalize(value: object, place: _Place, wire: bool, active: set[int], depth: int, levels: int) -> JSON:
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return value  # type: ignore[return-value]
    if kind is int:
        return _checked_int(value, place)  # type: ignore[arg-type]
    if kind is float:
        return _checked_float(value, place)  # type: ignore[arg-type]
    if isinstance(value, (dict, list, tuple)):
        marker = id(value)
        if marker in active:
            where = _place_text(place)
            msg = f"{where} contains itself (a circular reference), which JSON cannot hold"
            raise InvalidValueError(msg, where)
        if depth == levels:
            where = _place_text(place)
            shown = where if len(where) <= 60 else f"{where[:40]}...{where[-12:]}"
            what = "values" if levels == MAX_DEPTH else "metadata"
            msg = (
                f"{shown} is a container nested {levels + 1} levels deep; "
                f"metaops takes {what} nested at most {levels} levels"
            )
            raise InvalidValueError(msg, where)
        active.add(marker)
        depth += 1
        try:
            if isinstance(value, dict):
                out: dict[str, JSON] = {}
                for key, item in value.items():
                    if not isinstance(key, str):
                        where = _place_text(place)
                        msg = (
                            f"{where} has a key that is {describe(key)}, not a str; "
                            "JSON object keys must be str"
                        )
                        raise InvalidValueError(msg, where)
                    key = str.__str__(key)
                    out[key] = _normalize(item, (place, key), wire, active, depth, levels)
                return out
            return [_normalize(item, (place, i), wire, active, depth, levels) for i, item in enumerate(value)]
        finally:
            active.discard(marker)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return _checked_int(int(value), place)
    if isinstance(value, float):
        return _checked_float(float(value), place)
    if isinstance(value, datetime) and not wire:
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            where = _place_text(place)
            msg = (
                f"{where} is a naive datetime ({value.isoformat()}): it names no instant, "
                "so it cannot become a JSON date string; give it a tzinfo "
                "(e.g. datetime.now(timezone.utc))"
            )
            raise InvalidValueError(msg, where)
        return js_iso_string(value)
    where = _place_text(place)
    if isinstance(value, (datetime, date, timedelta)):
        msg = f"{where} is {describe(value)}, not a JSON value"
        if isinstance(value, date) and not isinstance(value, datetime):
            msg += "; pass value.isoformat() for a date"
        raise InvalidValueError(msg, where)
    if isinstance(value, Mapping):
        msg = f"{where} is {describe(value)}, not a JSON value; pass dict(...) of it"
        raise InvalidValueError(msg, where)
    msg = f"{where} is {describe(value)}, not a JSON value"
    raise InvalidValueError(msg, where)


def _checked_int(value: int, place: _Place) -> int | float:
    if MIN_EXACT_INT <= value <= MAX_EXACT_INT:
        return value
    double = to_double(value)
    if math.isfinite(double):
        return double
    where = _place_text(place)
    msg = f"{where} is an int too large for a JSON number (JavaScript would read Infinity)"
    raise InvalidValueError(msg, where)


def _checked_float(value: float, place: _Place) -> float:
    if math.isfinite(value):
        return value
    where = _place_text(place)
    msg = f"{where} is {value!r}, which JSON cannot hold (JSON numbers are finite)"
    raise InvalidValueError(msg, where)
