"""Keys and paths: classification, the unsafe-key guard, parsing and matching.

A key that starts with ``$.`` is a path (for every operation but ``delete``);
any other key names a top-level entry literally. Parsed paths are cached by key
string, so a batch that touches the same path a thousand times parses it once.

Matching follows the reference's JSONHeroPath where that is well defined and the
path grammar below where the reference crashes or writes to the wrong place:
every match carries the concrete steps from the root to its container, so a
write lands where the path says, whatever the keys contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeAlias, Union

from metaops._errors import InvalidValueError
from metaops._json import INDEX_DIGITS, JSON, MAX_ARRAY_INDEX, MISSING, _Missing, describe, js_key_order

__all__ = [
    "DEAD",
    "FAR",
    "Key",
    "Match",
    "ParsedKey",
    "Slice",
    "Wildcard",
    "first",
    "is_safe_key",
    "match",
    "parse_key",
]

# The reference's component pattern: runs of non-dots where a backslash escapes the
# next character. JavaScript's "." skips line terminators, so the escape does too.
_COMPONENTS = re.compile(r"(?:[^.\\]|\\[^\n\r\u2028\u2029])+")
# The reference's unsafe-segment split (schemas/common.js in @trigger.dev/core 4.8.3):
# backslashes separate segments too (the written specification's prose leaves that out).
_SEGMENT_SPLIT = re.compile(r"[.\[\]'\"\\]+")
_DANGEROUS_SEGMENTS = frozenset({"__proto__", "constructor", "prototype"})
_SLICE = re.compile(r"\[([0-9]*):(-?[0-9]*)?\]")
_CANONICAL_INDEX = re.compile(r"0|[1-9][0-9]*")
# A slice bound of more digits than this is past any list's end.
_BOUND_DIGITS = 18
_FAR_BOUND: int = 10**_BOUND_DIGITS
# A write past the end of a list pads it with nulls. Past this many, the list alone
# would be megabytes of JSON, beyond any metadata limit: the operation is reported
# unapplied instead of allocating it (the reference makes a sparse array that no
# size check can then serialize).
MAX_PADDING = 2**20


@dataclass(frozen=True, slots=True)
class Key:
    """A plain key component; ``index`` is set when it is a canonical list index."""

    name: str
    index: int | None


@dataclass(frozen=True, slots=True)
class Wildcard:
    """The ``*`` component: every child of a dict or list."""


@dataclass(frozen=True, slots=True)
class Slice:
    """A ``[start:end]`` component: JavaScript ``Array.prototype.slice`` bounds."""

    start: int
    end: int | None


Component = Key | Wildcard | Slice


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """What an operation key means.

    ``components`` is ``None`` for a literal key; for a path it holds the components
    after ``$``. ``safe`` is the reference's prototype-pollution guard.
    """

    components: tuple[Component, ...] | None
    safe: bool


class _Step:
    """A marker in a match's steps for a write that cannot land."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


DEAD = _Step("DEAD")
"""A plain non-index key on a list: readable (as missing); a write changes nothing."""
FAR = _Step("FAR")
"""An index so far past a list's end that padding to it is refused."""

Step = str | int | _Step
Value: TypeAlias = Union[JSON, _Missing]  # noqa: UP007
Match = tuple[tuple[Step, ...], Value, int]
"""``(steps from the root to the matched place, its value or MISSING, wildcard depth)``."""


def is_safe_key(key: str) -> bool:
    """Whether the reference would apply an operation with this key at all.

    Refused: the literal ``__proto__``; a ``$.`` key with a segment ``__proto__``,
    ``constructor`` or ``prototype``; a ``$.`` key naming nothing below ``$``.

    >>> is_safe_key("progress"), is_safe_key("$.a.b"), is_safe_key("$.constructor")
    (True, True, False)
    """
    if not isinstance(key, str):
        msg = f"is_safe_key: key must be a str, got {describe(key)}"
        raise InvalidValueError(msg, "key")
    return parse_key(key).safe


def parse_key(key: str) -> ParsedKey:
    """Classify and parse ``key`` (cached, unless it is long)."""
    if len(key) <= CACHED_KEY_LENGTH:
        return _parse_cached(key)
    return _parse_key(key)


CACHED_KEY_LENGTH = 1024
"""Keys up to this many characters have their parse (and route) cached; longer ones,
which a real task does not write over and over, are parsed each time, in time linear
in their length, so that a cache of recent keys stays small whatever arrives."""


def _parse_key(key: str) -> ParsedKey:
    if not key.startswith("$."):
        return ParsedKey(None, key != "__proto__")
    texts = _COMPONENTS.findall(key)
    safe = len(texts) > 1 and _DANGEROUS_SEGMENTS.isdisjoint(_SEGMENT_SPLIT.split(key))
    # The first component of a "$." key is always "$" itself. Components repeat (and
    # are immutable): each distinct text is parsed once per key.
    seen: dict[str, Component] = {}
    components = []
    for text in texts[1:]:
        component = seen.get(text)
        if component is None:
            component = seen[text] = _parse_component(text)
        components.append(component)
    return ParsedKey(tuple(components), safe)


_parse_cached = lru_cache(maxsize=8192)(_parse_key)


def _parse_component(text: str) -> Component:
    if text == "*":
        return Wildcard()
    sliced = _SLICE.fullmatch(text) if text[0] == "[" else None
    if sliced is not None:
        start_text, end_text = sliced.groups()
        start = _bound(start_text) if start_text else 0
        if not end_text:
            end = None  # "[2:]" reads to the end
        elif end_text == "-":
            end = 0  # parseInt("-") is NaN, which slice() reads as 0
        else:
            end = _bound(end_text)
        return Slice(start, end)
    # The reference's unescaping, in its order: "\." then "\\", then the first "~1".
    name = text.replace("\\.", ".") if "\\" in text else text
    if "\\\\" in name:
        name = name.replace("\\\\", "\\")
    if "~1" in name:
        name = name.replace("~1", "/", 1)
    index = (
        int(name)
        if name[:1].isdigit()
        and len(name) <= INDEX_DIGITS
        and _CANONICAL_INDEX.fullmatch(name)
        and int(name) <= MAX_ARRAY_INDEX
        else None
    )
    return Key(name, index)


def _bound(text: str) -> int:
    """A slice bound's signed digits as an int; past any list's length, a stand-in.

    Converting thousands of digits would cost their square (and CPython refuses past
    4,300); every bound past a list's end slices alike.
    """
    negative = text.startswith("-")
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > _BOUND_DIGITS:
        return -_FAR_BOUND if negative else _FAR_BOUND
    value = int(digits) if digits else 0
    return -value if negative else value


def match(root: dict[str, JSON], components: tuple[Component, ...]) -> list[Match]:
    """Every place ``components`` names in ``root``, in the reference's order.

    A ``None`` reached by a plain key is dropped (a null leaf cannot be reached);
    a missing child is kept as a missing match (it can be written). Wildcards and
    slices keep ``None`` children but nothing can be reached through them.
    """
    # While walking, a match's steps are a chain of (step, previous link) pairs that
    # share their prefix: copying a tuple of steps at every level would cost the
    # square of the depth. Each match that survives is spelled out once at the end.
    results: list[tuple[_Link, Value, int]] = [(None, root, 0)]
    for component in components:
        found: list[tuple[_Link, Value, int]] = []
        if type(component) is Key:
            name = component.name
            index = component.index
            for link, node, depth in results:
                if isinstance(node, dict):
                    child = node.get(name, MISSING)
                    if child is not None:
                        found.append(((name, link), child, depth))
                elif isinstance(node, list):
                    if index is None:
                        found.append(((DEAD, link), MISSING, depth))
                    elif index < len(node):
                        child = node[index]
                        if child is not None:
                            found.append(((index, link), child, depth))
                    elif index - len(node) > MAX_PADDING:
                        found.append(((FAR, link), MISSING, depth))
                    else:
                        found.append(((index, link), MISSING, depth))
        elif type(component) is Wildcard:
            for link, node, depth in results:
                if isinstance(node, dict):
                    found.extend(((k, link), node[k], depth + 1) for k in js_key_order(node))
                elif isinstance(node, list):
                    found.extend(((i, link), child, depth + 1) for i, child in enumerate(node))
        else:
            assert isinstance(component, Slice)
            for link, node, depth in results:
                if isinstance(node, list):
                    lo, hi, _ = slice(component.start, component.end).indices(len(node))
                    found.extend(((i, link), node[i], depth + 1) for i in range(lo, hi))
        if not found:
            return []
        results = found
    return [(_steps(link), value, depth) for link, value, depth in results]


# A match's steps while walking: the last step and the link of the steps before it.
_Link: TypeAlias = Union[tuple[Step, "_Link"], None]  # noqa: UP007


def _steps(link: _Link) -> tuple[Step, ...]:
    steps: list[Step] = []
    while link is not None:
        step, link = link
        steps.append(step)
    steps.reverse()
    return tuple(steps)


class _Nothing:
    """No match at all (the reference's ``first`` returning ``null``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOTHING"


NOTHING = _Nothing()


def first(matches: list[Match]) -> Value | _Nothing:
    """The value the reference's ``first`` reads: the first match, flattened.

    When wildcards or slices were crossed (depth d > 0) and the value is a list, it
    is flattened d levels, like JavaScript's ``Array.prototype.flat(d)``.
    """
    if not matches:
        return NOTHING
    _, value, depth = matches[0]
    if depth and isinstance(value, list):
        return _flat(value, depth)
    return value


def _flat(items: list[JSON], depth: int) -> list[JSON]:
    out: list[JSON] = []
    for item in items:
        if depth and isinstance(item, list):
            out.extend(_flat(item, depth - 1))
        else:
            out.append(item)
    return out
