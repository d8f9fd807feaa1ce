"""Keys and paths: classification, the unsafe-key guard, parsing and matching.

A key that starts with ``$.`` is a path (for every operation but ``delete``);
any other key names a top-level entry literally. What metaops knows about a key
string (:class:`KeyFacts`: literal or path, safe or not, its components, and where
an operation with it acts, for ``collapse``) is worked out once and kept in one
bounded cache, :data:`SAFE_KEYS`: a batch that touches the same path a thousand
times parses it once, and a task's handful of keys are checked once.

Matching follows the reference's JSONHeroPath where that is well defined. Where
the reference crashes or writes to the wrong place, metaops follows the path as
written: every match carries the concrete steps from the root to its container,
so a write lands where the path says, whatever the keys contain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias, Union

from metaops._errors import InvalidValueError
from metaops._json import INDEX_DIGITS, JSON, MAX_ARRAY_INDEX, MISSING, _Missing, describe, js_key_order

__all__ = [
    "CACHED_KEY_LENGTH",
    "DEAD",
    "FAR",
    "SAFE_KEYS",
    "Key",
    "KeyFacts",
    "Match",
    "Route",
    "Slice",
    "Wildcard",
    "first",
    "is_safe_key",
    "key_facts",
    "match",
]

# The reference's component pattern: runs of non-dots where a backslash escapes the
# next character. JavaScript's "." skips line terminators, so the escape does too.
_COMPONENTS = re.compile(r"(?:[^.\\]|\\[^\n\r\u2028\u2029])+")
# The reference's unsafe-segment split (schemas/common.js in @trigger.dev/core 4.8.3):
# backslashes separate segments too, not only dots, brackets and quotes.
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


class KeyFacts:
    """What metaops knows about one key string, worked out once (see :func:`key_facts`).

    ``components`` is ``None`` for a literal key; for a path it holds the components
    after ``$``. ``safe`` is the reference's prototype-pollution guard. ``route``
    and ``literal_route`` say where an operation with this key acts, as ``collapse``
    reasons about it: read as a path where it is one, and read literally (as
    ``delete`` reads every key). They are worked out on first use (:func:`routes`).
    """

    __slots__ = ("components", "key", "literal_route", "route", "safe")

    def __init__(self, key: str, components: tuple[Component, ...] | None, safe: bool) -> None:
        self.key = key
        self.components = components
        self.safe = safe
        self.route: Route | None = None
        self.literal_route: Route | None = None

    def __repr__(self) -> str:
        return f"KeyFacts(components={self.components!r}, safe={self.safe})"


class Route:
    """Where an operation acts, as ``collapse`` reasons about it.

    ``kind``: ``"inert"`` (an unsafe key: never applied), ``"noop"`` (a top-level
    slice matches nothing), ``"barrier"`` (a top-level wildcard reads every key),
    ``"literal"`` (the top-level key ``top``), ``"path"`` (below the top-level key
    ``top``, along ``path``), ``"update"`` (the whole metadata). ``complex``: the path
    crosses a wildcard, a slice or an index past the padding limit, so it is not
    tracked place by place. ``leaf_plain``: its last component is a plain key.
    ``mergeable_increments``: two increments on it add up (unless a first match
    can be a non-index key on a list, which reads as missing while other matches
    are written).
    """

    __slots__ = ("complex", "kind", "leaf_plain", "mergeable_increments", "path", "top")

    def __init__(self, kind: str, top: str = "") -> None:
        self.kind = kind
        self.top = top
        self.path: tuple[str, ...] = ()
        self.complex = False
        self.leaf_plain = True
        self.mergeable_increments = True


def routes(facts: KeyFacts) -> KeyFacts:
    """``facts`` with its two routes worked out (once: they are kept on it)."""
    if not facts.safe:
        facts.route = facts.literal_route = Route("inert")
        return facts
    facts.literal_route = literal = Route("literal", facts.key)
    components = facts.components
    if components is None:
        facts.route = literal
        return facts
    head = components[0]
    names = [c.name for c in components if isinstance(c, Key)]
    crossed = len(names) != len(components)
    last = components[-1]
    if not isinstance(head, Key):
        route = Route("noop" if isinstance(head, Slice) else "barrier")
        route.complex = True
    else:
        route = Route("path", head.name)
        route.path = tuple(names[1:])
        # Only a list can be padded, and the top level is a dict: its keys are never far.
        far = any(c.index is not None and c.index > MAX_PADDING for c in components[1:] if isinstance(c, Key))
        # Wildcards, slices and indices past the padding limit are not tracked path
        # by path: they conflict with everything else on their key.
        route.complex = crossed or far
    route.leaf_plain = isinstance(last, Key)
    route.mergeable_increments = not (crossed and isinstance(last, Key) and last.index is None)
    facts.route = route
    return facts


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
    return key_facts(key).safe


SAFE_KEYS: dict[str, KeyFacts] = {}
"""The one cache of what metaops knows about keys: each safe key it met, with its facts.

``key in SAFE_KEYS`` is the buffer's inline test for a key already checked. Bounded:
no key longer than :data:`CACHED_KEY_LENGTH`, at most ``_CACHED_KEYS`` entries and
``_CACHED_CHARACTERS`` characters of keys (then it starts over). Unsafe keys are not
kept (nothing applies them, the SDK refuses them): they are worked out again each
time, in time linear in their length."""

CACHED_KEY_LENGTH = 1024
"""Keys up to this many characters have their facts cached; longer ones, which a real
task does not write over and over, are parsed each time, in time linear in their
length, so that the cache stays small whatever arrives."""

_CACHED_KEYS = 8192
# A parsed path takes about 16 bytes per character of its key: this bounds the cache
# near 16 MB, where entries alone would let keys of 1,024 characters fill 135 MB.
_CACHED_CHARACTERS = 2**20
_cached_characters = 0


def key_facts(key: str) -> KeyFacts:
    """What metaops knows about the str ``key``: from :data:`SAFE_KEYS`, or worked out (and kept there).

    >>> key_facts("$.a.0").components, key_facts("$.constructor").safe
    ((Key(name='a', index=None), Key(name='0', index=0)), False)
    """
    facts = SAFE_KEYS.get(key)
    if facts is None:
        facts = _parse_key(key)
        if facts.safe and len(key) <= CACHED_KEY_LENGTH:
            _keep(key, facts)
    return facts


def _keep(key: str, facts: KeyFacts) -> None:
    global _cached_characters
    if len(SAFE_KEYS) >= _CACHED_KEYS or _cached_characters + len(key) > _CACHED_CHARACTERS:
        # Starting over is rare (a task uses a handful of keys) and costs each key one
        # parse again; it bounds the cache without bookkeeping per lookup.
        SAFE_KEYS.clear()
        _cached_characters = 0
    SAFE_KEYS[key] = facts
    _cached_characters += len(key)


def _parse_key(key: str) -> KeyFacts:
    if not key.startswith("$."):
        return KeyFacts(key, None, key != "__proto__")
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
    return KeyFacts(key, tuple(components), safe)


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
