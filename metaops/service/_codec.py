"""JSON text of metadata at a cost that follows what changed, not the metadata's size.

``apply`` is copy-on-write: the metadata after an update shares every subtree the
update did not touch with the metadata before it, as the very same objects. So the
JSON text of a container object, once written, stays its text for as long as the
object is alive. :meth:`TextCache.encode` writes a value's text reusing the texts of the
containers it wrote before (a :class:`TextCache` per run): after an increment deep
in a 250 KB run, it writes the few containers on the path to the change and copies
the rest.

The text is exactly :func:`metaops.json_text`'s (compact, keys in order, Python's
spelling of numbers, ``null`` for non-finite numbers, lone surrogates escaped), which
the differential tests check. Containers with no container inside ("leaves") are
written in one call: :func:`metaops.json_text`, or ``orjson`` (the ``fast`` extra)
where its text is known to be the same (no floats, whose exponent it spells
differently, and no ints past 2**53); anything orjson refuses falls back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import compress
from operator import is_not
from typing import Any

from metaops._json import JSON, MAX_EXACT_INT, MIN_EXACT_INT
from metaops._size import json_text

__all__ = ["TextCache", "Texts", "loads"]

Texts = dict[int, tuple[object, bytes, "list[bytes] | None"]]
"""``id(container) -> (container, its JSON text, its items' texts or None)``.

Holding the container keeps its id unique while the entry lives."""

_encode_ascii = json.encoder.encode_basestring  # the C version where available

_orjson_dumps: Callable[[Any], bytes] | None
try:  # the fast extra
    import orjson

    _orjson_dumps = orjson.dumps
    _OrjsonError: type[Exception] = orjson.JSONEncodeError
except ImportError:  # pragma: no cover - depends on the environment
    _orjson_dumps = None
    _OrjsonError = TypeError


def _scalar(value: object) -> bytes:
    kind = type(value)
    if kind is str:
        if value.isascii():  # type: ignore[attr-defined]
            return _encode_ascii(value).encode()  # type: ignore[arg-type]
        return json_text(value).encode()
    if value is None:
        return b"null"
    if kind is bool:
        return b"true" if value else b"false"
    if kind is int and MIN_EXACT_INT <= value <= MAX_EXACT_INT:  # type: ignore[operator]
        return str(value).encode()
    return json_text(value).encode()


def _leaf(container: dict[str, Any] | list[Any], kinds: set[type]) -> bytes:
    """The text of a container holding no container, in one call."""
    if _orjson_dumps is not None and float not in kinds:
        values = container.values() if type(container) is dict else container
        if int not in kinds or all(MIN_EXACT_INT <= v <= MAX_EXACT_INT for v in values if type(v) is int):
            try:
                return _orjson_dumps(container)
            except _OrjsonError:  # a lone surrogate, say: json_text writes it as JavaScript does
                pass
    return json_text(container).encode()


_KEEP_PARTS = 32
"""Lists of containers this long keep their items' texts, so that a copy with a few items
changed is written by patching those, after one C-level pass that finds them."""


def _encode(value: JSON, previous: JSON, texts: Texts) -> tuple[bytes, int]:
    """The text of ``value``; adds the containers it wrote to ``texts`` and drops the ones they
    replaced; returns how many bytes of text the cache gained (negative: lost).

    ``previous`` is the value last written: walked beside ``value``, it says which old list a
    changed list was copied from, whose items' texts the copy can reuse by position.
    """
    if type(value) is dict or type(value) is list:
        written = [0]
        return _text_of(value, previous, texts, written), written[0]
    return _scalar(value), 0


# A module-level function, not a closure: a closure that calls itself is a reference cycle,
# and every cycle kept the texts it reached (megabytes per update of a large run) alive
# until the garbage collector's next full pass, which counts objects, not bytes.
def _text_of(node: Any, old: Any, texts: Texts, written: list[int]) -> bytes:
    """The text of container ``node``; one frame per level of nesting, as deep metadata needs."""
    hit = texts.get(id(node))
    if hit is not None and hit[0] is node:
        return hit[1]
    parts: list[bytes] | None = None
    if type(node) is dict:
        kinds = set(map(type, node.values()))
        if dict not in kinds and list not in kinds:
            text = _leaf(node, kinds)
        else:
            olds = old if type(old) is dict else {}
            # One join per container: every child's text is copied once, into its parent's.
            pieces = []
            for name, item in node.items():
                pieces.append(b",")
                pieces.append(_encode_ascii(name).encode() if name.isascii() else json_text(name).encode())
                pieces.append(b":")
                kind = type(item)
                pieces.append(
                    _text_of(item, olds.get(name), texts, written)
                    if kind is dict or kind is list
                    else _scalar(item)
                )
            pieces[0] = b"{"
            pieces.append(b"}")
            text = b"".join(pieces)
    else:
        kinds = set(map(type, node))
        if dict not in kinds and list not in kinds:
            text = _leaf(node, kinds)
        else:
            before: list[Any] = old if type(old) is list else []
            entry = texts.get(id(before)) if before else None
            if entry is not None and entry[0] is before and entry[2] is not None:
                parts = entry[2][: len(node)]
                common = min(len(node), len(before))
                changed = list(compress(range(common), map(is_not, node, before)))
                changed += range(common, len(node))
                parts.extend([b""] * (len(node) - len(parts)))
            else:
                parts = [b""] * len(node)
                changed = list(range(len(node)))
            # Plain loops, no comprehension: one stack frame per level of nesting.
            for index in changed:
                item = node[index]
                kind = type(item)
                if kind is dict or kind is list:
                    parts[index] = _text_of(
                        item, before[index] if index < len(before) else None, texts, written
                    )
                else:
                    parts[index] = _scalar(item)
            text = b"[" + b",".join(parts) + b"]"
            if len(parts) < _KEEP_PARTS:
                parts = None
    texts[id(node)] = (node, text, parts)
    written[0] += len(text)
    # The container this one replaced at its place (copy-on-write made a new one): its text
    # is stale now, and dropping it here keeps the cache near the live texts without a walk.
    # Were the old container still shared at another place, that place only misses the cache.
    if old is not None and old is not node and (type(old) is dict or type(old) is list):
        stale = texts.get(id(old))
        if stale is not None and stale[0] is old:
            del texts[id(old)]
            written[0] -= len(stale[1])
    return text


class TextCache:
    """The JSON texts of one run's containers, shared by the versions of its metadata.

    :meth:`encode` adds the containers it writes and drops the texts of those they
    replaced at the same places (each update of a large run writes its top-level text
    anew: without that, the cache would gain the whole text per update). Texts of
    containers that left the metadata otherwise (a key deleted) are dropped now and then
    by a walk that keeps what is still reachable: when the cache holds twice the
    containers, or twice the bytes of text (and some slack), that the metadata had at
    the last count.
    Safe to use from several threads: an entry is only ever used for the very object
    it holds.
    """

    __slots__ = ("_held", "_live", "_live_bytes", "_previous", "_texts")

    def __init__(self) -> None:
        self._texts: Texts = {}
        self._live = 0
        self._live_bytes = 0
        self._held = 0  # bytes of text in the cache, live or not
        self._previous: JSON = None

    def __len__(self) -> int:
        return len(self._texts)

    def encode(self, value: JSON) -> bytes:
        """``json_text(value)`` as UTF-8, reusing the texts of containers seen before.

        One frame per level of nesting: metadata nests at most MAX_METADATA_DEPTH levels.

        >>> cache = TextCache()
        >>> rows = [{"id": 1}, {"id": 2}]
        >>> cache.encode({"rows": rows, "n": 1.5})
        b'{"rows":[{"id":1},{"id":2}],"n":1.5}'
        >>> cache.encode({"rows": rows, "n": 2})  # the rows' texts are reused
        b'{"rows":[{"id":1},{"id":2}],"n":2}'
        """
        texts = self._texts
        text, written = _encode(value, self._previous, texts)
        self._previous = value
        self._held += written
        if written > 0 and (
            len(texts) > 2 * self._live + 256 or self._held > 2 * self._live_bytes + _SLACK_BYTES
        ):
            self._texts, self._live, self._live_bytes = _reachable(value, texts)
            self._held = self._live_bytes
        return text


_SLACK_BYTES = 2**20
"""Text the cache may hold beyond twice what is live before it prunes."""


def _reachable(value: JSON, texts: Texts) -> tuple[Texts, int, int]:
    """The entries of ``texts`` for containers in ``value``, how many containers it holds, and
    the bytes of the texts kept."""
    kept: Texts = {}
    count = size = 0
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        count += 1
        hit = texts.get(id(node))
        if hit is not None and hit[0] is node:
            kept[id(node)] = hit
            size += len(hit[1])
        children = node.values() if type(node) is dict else node
        stack.extend(child for child in children if type(child) is dict or type(child) is list)
    return kept, count, size


def _refuse_constant(name: str) -> None:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def loads(data: str | bytes) -> Any:
    """Parse JSON as the standard library does, refusing ``NaN`` and ``Infinity`` (``ValueError``)."""
    return json.loads(data, parse_constant=_refuse_constant)
