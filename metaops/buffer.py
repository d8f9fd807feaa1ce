"""The SDK side of run metadata: a buffer that applies each call locally and queues it.

:class:`RunMetadata` is what a Python task SDK embeds behind its ``metadata``
object. It holds the run's metadata, applies every call at once (so ``current()``
and ``get()`` see it), enforces the size limit on every call, and queues the
operations for the host to send: there is no network code here. The host drains a
:class:`Flush`, sends its bodies, and then either hands back the server's answer
(:meth:`RunMetadata.accept`) or the failed flush (:meth:`RunMetadata.restore`).

>>> from metaops.buffer import RunMetadata
>>> md = RunMetadata({"status": "queued"})
>>> md.set("status", "processing").increment("rows", 2).append("logs", "started")
RunMetadata({'status': 'processing', 'rows': 2, 'logs': ['started']}, is_root=True, limit=262144)
>>> md.get("logs")
ListView(['started'])
>>> flush = md.drain()
>>> flush.bodies[0]["operations"][1]
{'type': 'increment', 'key': 'rows', 'value': 2}
>>> md.accept(flush, {"status": "processing", "rows": 2, "logs": ["started"]})

Every call costs what it touches: :func:`metaops._apply.apply_sized` copies only
the containers on the written path and keeps the JSON size up to date from what
each write adds and removes, so nothing re-serializes the whole metadata.

The store is never mutated in place: every call builds a new top-level dict that
shares the untouched subtrees with the previous one. That is what makes
:meth:`RunMetadata.current` an O(1), consistent, read-only snapshot.

Where this differs from the reference SDK (``StandardMetadataManager`` in
``@trigger.dev/core`` 4.8.3), on purpose:

* a call with a non-JSON value, a wrong argument type or an unsafe key raises at
  once, and one that would take the metadata past the size limit raises
  :class:`~metaops.MetadataTooLargeError`; the reference's manager checks neither
  at the call (the platform refuses the flush);
* an unapplied call is reported (:attr:`RunMetadata.unapplied`, ``Flush.unapplied``)
  where the reference drops it silently;
* ``decrement(key, n)`` sends ``increment(key, -n)`` on the parent and root too
  (the reference sends ``-abs(n)`` there);
* a failed flush is put back (:meth:`RunMetadata.restore`) and a successful one
  keeps what was queued meanwhile (:meth:`RunMetadata.accept`); the reference
  logs the failure and drops the operations, and overwrites its store with the
  response, losing the calls made during the request;
* bodies are split under the request limit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from metaops._apply import apply_sized
from metaops._collapse import MAX_REQUEST_BYTES, chunk, collapse
from metaops._errors import (
    FlushInFlightError,
    InvalidLimitError,
    InvalidOperationError,
    InvalidValueError,
    MetadataTooLargeError,
)
from metaops._json import JSON, describe, normalize
from metaops._paths import is_safe_key
from metaops._size import json_size, json_text, metadata_limit, value_size
from metaops._values import (
    OPERATION_TYPES,
    Append,
    Delete,
    Increment,
    Operation,
    Remove,
    Set,
    Update,
    decrement,
)

__all__ = ["DictView", "Flush", "FlushInFlightError", "ListView", "MetadataUpdater", "RunMetadata"]

_SECTIONS = ("operations", "parentOperations", "rootOperations")
# The JSON of a body with its three lists empty; the operations go inside the brackets.
_WRAPPER_BYTES = len('{"operations":[],"parentOperations":[],"rootOperations":[]}')
# chunk() measures bodies of one list: '{"operations":[' ... ']}'.
_CHUNK_WRAPPER_BYTES = len('{"operations":[]}')
# An operation's JSON around its key's characters and its value:
# '{"type":"increment","key":"' '","value":' '}' (increment is the longest type name).
_OPERATION_FRAME_BYTES = 38
# A JSON number is at most this many bytes ("-1.2345678901234567e-308").
_NUMBER_BYTES = 25
# A key character is at most this many bytes of JSON (a control character: "\u001f").
_KEY_CHAR_BYTES = 6

_Target = Literal["parent", "root"]


# --------------------------------------------------------------------------- read-only views


class DictView(Mapping[str, Any]):
    """A read-only view of a JSON object in the metadata; nested containers are views too.

    Made in O(1): nothing is copied until :meth:`to_dict`. The object it shows never
    changes (the buffer replaces, never mutates, what it stores), so a view is a
    consistent snapshot. Equal to a dict (or view) with the same items.
    """

    __slots__ = ("_data",)
    _data: dict[str, JSON]

    def __init__(self, data: Mapping[str, object] | None = None) -> None:
        object.__setattr__(self, "_data", {} if data is None else _plain_metadata(data, "DictView"))

    def __setattr__(self, name: str, value: object) -> None:
        msg = "DictView is read-only"
        raise AttributeError(msg)

    def __getitem__(self, key: str) -> Any:
        return _view(self._data[key])

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key`` (a view for a container), else ``default``."""
        data = self._data
        return _view(data[key]) if key in data else default

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (DictView, ListView)):
            return self._data == other._data
        if isinstance(other, dict):
            return self._data == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DictView({self._data!r})"

    def __reduce__(self) -> tuple[type[DictView], tuple[dict[str, JSON]]]:
        return (DictView, (self._data,))

    def to_dict(self) -> dict[str, JSON]:
        """A deep, mutable copy as plain dicts and lists (e.g. for ``json.dumps``)."""
        return _thaw(self._data)  # type: ignore[return-value]


class ListView(Sequence[Any]):
    """A read-only view of a JSON list in the metadata; nested containers are views too.

    Made in O(1), like :class:`DictView`. Equal to a list (or view) with the same items.
    """

    __slots__ = ("_data",)
    _data: list[JSON]

    def __init__(self, data: Sequence[object] = ()) -> None:
        object.__setattr__(self, "_data", _plain_list(data))

    def __setattr__(self, name: str, value: object) -> None:
        msg = "ListView is read-only"
        raise AttributeError(msg)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> ListView: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return ListView(self._data[index])
        return _view(self._data[index])

    def __contains__(self, value: object) -> bool:
        if isinstance(value, (DictView, ListView)):
            value = value._data
        return value in self._data

    def __iter__(self) -> Iterator[Any]:
        return map(_view, self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (DictView, ListView)):
            return self._data == other._data
        if isinstance(other, list):
            return self._data == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ListView({self._data!r})"

    def __reduce__(self) -> tuple[type[ListView], tuple[list[JSON]]]:
        return (ListView, (self._data,))

    def to_list(self) -> list[JSON]:
        """A deep, mutable copy as plain lists and dicts."""
        return _thaw(self._data)  # type: ignore[return-value]


def _view(value: JSON) -> Any:
    kind = type(value)
    if kind is dict:
        mapping = object.__new__(DictView)
        object.__setattr__(mapping, "_data", value)
        return mapping
    if kind is list:
        sequence = object.__new__(ListView)
        object.__setattr__(sequence, "_data", value)
        return sequence
    return value


def _thaw(value: JSON) -> JSON:
    if isinstance(value, dict):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_thaw(item) for item in value]
    return value


def _unwrap(value: object, active: frozenset[int] = frozenset()) -> object:
    """``value`` with every view inside replaced by what it shows (the same object if none).

    A container met again inside itself is left as it is: normalize then reports the cycle.
    """
    if isinstance(value, (DictView, ListView)):
        return value._data
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            return value
        inner = active | {id(value)}
        if isinstance(value, dict):
            items = {key: _unwrap(item, inner) for key, item in value.items()}
            return items if any(items[key] is not item for key, item in value.items()) else value
        unwrapped = [_unwrap(item, inner) for item in value]
        return unwrapped if any(a is not b for a, b in zip(unwrapped, value, strict=True)) else value
    return value


def _normalized(value: object, where: str, method: str = "") -> JSON:
    """:func:`normalize`, also taking the views this module hands out, as the JSON they show."""
    try:
        return normalize(value, where)
    except InvalidValueError as error:
        plain = _unwrap(value)
        if plain is value:
            if not method:
                raise
            raise InvalidValueError(f"{method}: {error}", error.where) from None
    return _normalized(plain, where, method)


def _plain_metadata(value: object, what: str) -> dict[str, JSON]:
    """A fresh JSON copy of ``value``, which must be a JSON object (a dict or a view of one)."""
    if isinstance(value, DictView):
        value = value._data
    if not isinstance(value, dict):
        msg = f"{what} must be a dict (a JSON object), got {describe(value)}"
        raise InvalidValueError(msg, what)
    # A whole metadata object is copied through the C JSON codec, about twice as fast as
    # normalize's walk. Whatever JSON would change (a non-str key, a tuple) makes the copy
    # differ, and whatever it refuses (NaN, a datetime, a cycle) raises: normalize then
    # explains or converts. Ints long enough to leave the double range go there too.
    try:
        text = _COPY_ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        return _normalized(value, what)  # type: ignore[return-value]
    copy = json.loads(text)
    if copy != value or text.encode("ascii").translate(_DIGITS_AS_ZERO).find(_LONG_NUMBER) != -1:
        return _normalized(value, what)  # type: ignore[return-value]
    return copy  # type: ignore[no-any-return]


# ensure_ascii (the default) keeps the text ASCII, lone surrogates included.
_COPY_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
# normalize refuses ints of 2**1023 and more (308 digits); shorter digit runs are always fine.
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_NUMBER = b"0" * 300


def _plain_list(value: object) -> list[JSON]:
    if isinstance(value, ListView):
        value = value._data
    if not isinstance(value, (list, tuple)):
        msg = f"ListView must be given a list, got {describe(value)}"
        raise InvalidValueError(msg, "ListView")
    return _normalized(value, "ListView")  # type: ignore[return-value]


# --------------------------------------------------------------------------- building operations
#
# The update methods build operations from validated parts with the classes'
# ``_trusted`` constructors: the common arguments (a str key, a scalar, a small
# flat dict or list) are checked here without normalize's recursive walk, and
# everything else goes through normalize, which copies and explains what is wrong.

# Ints JavaScript holds exactly; larger ones go through normalize's range check.
_SAFE_INT = 2**53


def _is_plain_scalar(value: object) -> bool:
    """Whether ``value`` is JSON as it is: a str, bool, None, exactly held int or finite float."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_SAFE_INT <= value <= _SAFE_INT  # type: ignore[operator]
    # inf - inf and nan - nan are nan, never 0.0
    return kind is float and value - value == 0.0  # type: ignore[operator]


def _key(key: object, method: str) -> str:
    """``key`` if it is a safe str key; the error naming ``method`` otherwise."""
    if type(key) is str and key in _SAFE_KEYS:
        return key
    if not isinstance(key, str):
        msg = f"{method}: key must be a str, got {describe(key)}"
        raise InvalidValueError(msg, "key")
    key = str.__str__(key)
    if not is_safe_key(key):
        msg = (
            f"{method}: the key {key!r} is unsafe: a key may not reference __proto__, "
            "constructor or prototype, and a '$.' path must name something below '$'"
        )
        raise InvalidOperationError(msg, field="key")
    if len(_SAFE_KEYS) < _SAFE_KEYS_MAX:
        _SAFE_KEYS.add(key)
    return key


# Keys already found safe: a task uses a handful of keys again and again.
_SAFE_KEYS: set[str] = set()
_SAFE_KEYS_MAX = 4096


def _value(value: object, method: str) -> JSON:
    """``value`` as an operation's JSON value: a fresh copy, or a value nothing can change."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value  # type: ignore[return-value]
    if kind is int or kind is float:
        if _is_plain_scalar(value):
            return value  # type: ignore[return-value]
    elif kind is dict:
        for name, item in value.items():  # type: ignore[attr-defined]
            if type(name) is not str or not _is_plain_scalar(item):
                break
        else:
            return value.copy()  # type: ignore[attr-defined,no-any-return]
    elif kind is list:
        for item in value:  # type: ignore[attr-defined]
            if not _is_plain_scalar(item):
                break
        else:
            return value.copy()  # type: ignore[attr-defined,no-any-return]
    elif kind is DictView or kind is ListView:
        # The store's containers are never mutated, so the operation can share them.
        return value._data  # type: ignore[attr-defined,no-any-return]
    return _normalized(value, "value", method)


def _amount(value: object, method: str) -> int | float:
    """``value``, the argument ``n``, as an increment amount: a JSON number, not a bool."""
    kind = type(value)
    if kind is int:
        if -_SAFE_INT <= value <= _SAFE_INT:  # type: ignore[operator]
            return value  # type: ignore[return-value]
    elif kind is float and value - value == 0.0:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{method}: n must be a number (int or float, not bool), got {describe(value)}"
        raise InvalidValueError(msg, "n")
    return _normalized(value, "n", method)  # type: ignore[return-value]


def _replacement(metadata: object, method: str) -> dict[str, JSON]:
    """``metadata`` as the value of an ``update``: a JSON object."""
    if isinstance(metadata, DictView):
        return metadata._data
    if not isinstance(metadata, dict):
        msg = f"{method}: metadata must be a dict (the whole metadata object), got {describe(metadata)}"
        raise InvalidValueError(msg, "metadata")
    return _normalized(metadata, "metadata", method)  # type: ignore[return-value]


def _call_text(op: Operation) -> str:
    """How the user's call reads in an error message (without its value, which may be large)."""
    if type(op) is Update:
        return "replace(...)"
    name = op.wire_type if type(op) is not Delete else "delete"
    return f"{name}({op.key!r})"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- flushes


@dataclass(frozen=True, slots=True)
class Flush:
    """What one drain took out of a :class:`RunMetadata`: the operations to send, collapsed.

    ``operations``, ``parent_operations`` and ``root_operations`` are the collapsed
    batches for the run itself, its parent and its root. ``unapplied`` reports the
    run's own calls that were not applied since the previous drain (a ``remove``
    from something that is not a list, a path write refused for padding a list
    too far): they change nothing and are not sent.

    The operations are frozen values, and (as everywhere in metaops) their JSON
    values are not copied again once built: a value here may be the very list or
    dict the buffer's metadata holds. Treat ``op.value`` (and ``op.to_wire()``) as
    read-only; mutating it would change the metadata behind the buffer's back and
    put its tracked size out of step. :attr:`bodies` are fresh copies to change freely.

    :attr:`bodies` are the platform's request bodies and :meth:`texts` their JSON
    text, in sending order. Every body carries the three lists, and each list keeps
    its order across the bodies. A body is at most ``max_bytes`` of JSON both as
    :func:`metaops.json_size` measures it (JavaScript's text) and as sent (its text
    in UTF-8), unless a single operation alone is larger in the sent text (Python
    writes ``5.0`` where JavaScript writes ``5``). A flush with nothing to send is
    falsy and has no bodies.

    >>> from metaops import Increment, Set
    >>> flush = Flush((Set("status", "done"),), parent_operations=(Increment("rows", 1),))
    >>> flush.bodies
    ({'operations': [{'type': 'set', 'key': 'status', 'value': 'done'}], \
'parentOperations': [{'type': 'increment', 'key': 'rows', 'value': 1}], 'rootOperations': []},)
    >>> flush.texts()[0][:60]
    '{"operations":[{"type":"set","key":"status","value":"done"}]'
    >>> flush.packet()["dataType"], Flush().packet()
    ('application/json', {'dataType': 'application/json'})
    """

    operations: tuple[Operation, ...] = ()
    parent_operations: tuple[Operation, ...] = ()
    root_operations: tuple[Operation, ...] = ()
    unapplied: tuple[Operation, ...] = ()
    max_bytes: int = MAX_REQUEST_BYTES
    # Per body, how many operations of each list it carries, and the body's JSON text.
    _counts: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)
    _texts: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("operations", "parent_operations", "root_operations", "unapplied"):
            object.__setattr__(self, name, _operations_tuple(getattr(self, name), name))
        max_bytes = self.max_bytes
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= _WRAPPER_BYTES:
            msg = f"Flush: max_bytes must be an int over {_WRAPPER_BYTES}, got {max_bytes!r}"
            raise InvalidLimitError(msg)
        counts, texts = _plan((self.operations, self.parent_operations, self.root_operations), max_bytes)
        object.__setattr__(self, "_counts", counts)
        object.__setattr__(self, "_texts", texts)

    def __bool__(self) -> bool:
        return bool(self._counts)

    @property
    def bodies(self) -> tuple[dict[str, list[dict[str, JSON]]], ...]:
        """The request bodies ``{"operations", "parentOperations", "rootOperations"}``, in sending order.

        Read back from :meth:`texts` on each access, so they are exactly what is sent
        and entirely the caller's: changing one changes neither the flush nor the
        buffer's metadata (the operations' own values may be the metadata's containers).

        >>> from metaops import Append
        >>> flush = Flush((Append("logs", "a"),))
        >>> flush.bodies[0]["operations"][0]["value"] = "changed"
        >>> flush.bodies[0]["operations"]
        [{'type': 'append', 'key': 'logs', 'value': 'a'}]
        """
        # Built from the text the flush holds anyway: the C parser makes fresh containers
        # in O(flush size), where copying the operations' values would walk them in Python.
        return tuple(json.loads(text) for text in self._texts)

    def texts(self) -> tuple[str, ...]:
        """Each body as compact JSON text, ready to encode as UTF-8 and send (computed once).

        >>> Flush((Delete("a"),)).texts()
        ('{"operations":[{"type":"delete","key":"a"}],"parentOperations":[],"rootOperations":[]}',)
        """
        return self._texts

    def packet(self) -> dict[str, str]:
        """The completion packet: ``{"data": <JSON text>, "dataType": "application/json"}``.

        ``data`` holds the three lists in one body (the completion is not split).
        A flush with nothing to send gives ``{"dataType": "application/json"}``.

        >>> packet = Flush((Delete("a"),)).packet()
        >>> packet["dataType"], json.loads(packet["data"])["operations"]
        ('application/json', [{'type': 'delete', 'key': 'a'}])
        """
        if not self:
            return {"dataType": "application/json"}
        if len(self._texts) == 1:
            return {"data": self._texts[0], "dataType": "application/json"}
        body = {
            "operations": [op.to_wire() for op in self.operations],
            "parentOperations": [op.to_wire() for op in self.parent_operations],
            "rootOperations": [op.to_wire() for op in self.root_operations],
        }
        return {"data": json_text(body), "dataType": "application/json"}

    def _after(self, delivered: int) -> tuple[tuple[Operation, ...], ...]:
        """Each list's operations in the bodies from index ``delivered`` on."""
        skipped = [sum(counts[i] for counts in self._counts[:delivered]) for i in range(3)]
        lists = (self.operations, self.parent_operations, self.root_operations)
        return tuple(ops[skip:] for ops, skip in zip(lists, skipped, strict=True))


def _operations_tuple(ops: object, name: str) -> tuple[Operation, ...]:
    if isinstance(ops, (str, bytes, dict)) or not isinstance(ops, (tuple, list)):
        msg = f"Flush: {name} must be a tuple of operations, got {describe(ops)}"
        raise InvalidValueError(msg, name)
    for index, op in enumerate(ops):
        if not isinstance(op, OPERATION_TYPES):
            msg = f"Flush: {name}[{index}] is {describe(op)}, not an operation"
            raise InvalidValueError(msg, f"{name}[{index}]")
    return tuple(ops)


# JavaScript's text of a number is at most 4.2 times as long as Python's ("1e+20" is
# "100000000000000000000"); everything else is written alike. So a body whose Python
# text is a fifth of the limit fits without measuring it the JavaScript way.
_JS_GROWTH = 5

_Counts = tuple[int, int, int]


def _plan(
    lists: tuple[tuple[Operation, ...], ...], max_bytes: int
) -> tuple[tuple[_Counts, ...], tuple[str, ...]]:
    """The bodies (how many operations of each list each carries) and their JSON texts."""
    if not any(lists):
        return (), ()
    wires = tuple([op.to_wire() for op in ops] for ops in lists)
    whole = dict(zip(_SECTIONS, wires, strict=True))
    text = json_text(whole)
    sent = _utf8_length(text)
    if sent <= max_bytes and (sent * _JS_GROWTH <= max_bytes or json_size(whole) <= max_bytes):
        return ((len(lists[0]), len(lists[1]), len(lists[2])),), (text,)
    planned: list[_Counts] = []
    texts: list[str] = []
    starts = (0, 0, 0)
    for counts in _split(lists, wires, max_bytes):
        _add_body(wires, starts, counts, max_bytes, planned, texts)
        starts = (starts[0] + counts[0], starts[1] + counts[1], starts[2] + counts[2])
    return tuple(planned), tuple(texts)


def _add_body(
    wires: tuple[list[dict[str, JSON]], ...],
    starts: _Counts,
    counts: _Counts,
    max_bytes: int,
    planned: list[_Counts],
    texts: list[str],
) -> None:
    """Add the body of ``counts`` operations from ``starts``, halved while its text is too long."""
    body = {
        name: wire[start : start + count]
        for name, wire, start, count in zip(_SECTIONS, wires, starts, counts, strict=True)
    }
    text = json_text(body)
    total = sum(counts)
    if total == 1 or _utf8_length(text) <= max_bytes:
        planned.append(counts)
        texts.append(text)
        return
    # Python's text ran longer than JavaScript's (it writes 5.0 for 5): send it in two.
    left = total // 2
    first = []
    for count in counts:
        first.append(min(count, left))
        left -= first[-1]
    head = (first[0], first[1], first[2])
    tail = (counts[0] - head[0], counts[1] - head[1], counts[2] - head[2])
    _add_body(wires, starts, head, max_bytes, planned, texts)
    _add_body(
        wires,
        (starts[0] + head[0], starts[1] + head[1], starts[2] + head[2]),
        tail,
        max_bytes,
        planned,
        texts,
    )


def _split(
    lists: tuple[tuple[Operation, ...], ...], wires: tuple[list[dict[str, JSON]], ...], max_bytes: int
) -> tuple[_Counts, ...]:
    """How many operations of each list go in each body, every body at most ``max_bytes`` of json_size.

    Each list is chunked so that any one of its parts fits a body alone, and
    consecutive parts (the last of one list, the first of the next) share a body
    while they fit.
    """
    room = max_bytes - (_WRAPPER_BYTES - _CHUNK_WRAPPER_BYTES)
    bodies: list[_Counts] = []
    counts = [0, 0, 0]
    used = _WRAPPER_BYTES
    for section, ops in enumerate(lists):
        start = 0
        for part in chunk(ops, room):
            # The part's list without its brackets, which the wrapper already counts.
            inner = json_size(wires[section][start : start + len(part)]) - 2
            start += len(part)
            if any(counts) and (counts[section] or used + inner > max_bytes):
                bodies.append((counts[0], counts[1], counts[2]))
                counts = [0, 0, 0]
                used = _WRAPPER_BYTES
            counts[section] = len(part)
            used += inner
    bodies.append((counts[0], counts[1], counts[2]))
    return tuple(bodies)


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


# --------------------------------------------------------------------------- the buffer


class RunMetadata:
    """A run's metadata as the task sees it, and the operations queued for the platform.

    ``metadata`` is the run's metadata when it starts (a dict, copied). ``is_root``
    says the run has no parent; then :attr:`parent` and :attr:`root` act on the run
    itself, as in the reference SDK. ``limit`` is the size limit in bytes (else
    ``TASK_RUN_METADATA_MAXIMUM_SIZE``, else 262,144); ``max_request_bytes`` bounds
    each request body of a :class:`Flush`.

    Every update method returns the object, so calls chain. A call is *applied*
    (changes the metadata, and is queued), *changes nothing* (not queued), is
    *unapplied* (a ``remove`` from something that is not a list; not queued, and
    reported in :attr:`unapplied` and the next :class:`Flush`), or is *refused* with
    an error before anything changes: :class:`~metaops.InvalidValueError` (a
    ``TypeError``) for a value that is not JSON or an argument of the wrong type,
    :class:`~metaops.InvalidOperationError` for an unsafe key,
    :class:`~metaops.MetadataTooLargeError` for a call that would take the
    metadata past the limit, that is, leave it over the limit and larger than it
    was (or for an operation too large for any request body).

    Safe to call from several threads.

    >>> md = RunMetadata({"progress": 0.1}, is_root=False)
    >>> md.increment("progress", 0.4).get("progress")
    0.5
    >>> md.parent.increment("processedRows").append("rowRuns", "run_1")
    MetadataUpdater(target='parent')
    >>> md.current()
    DictView({'progress': 0.5})
    >>> md.drain().parent_operations
    (Increment(key='processedRows', value=1), Append(key='rowRuns', value='run_1'))
    """

    __slots__ = (
        "_body_room",
        "_flight",
        "_is_root",
        "_limit",
        "_lock",
        "_max_request_bytes",
        "_parent",
        "_parent_queue",
        "_queue",
        "_root",
        "_root_queue",
        "_state",
        "_unapplied",
    )

    def __init__(
        self,
        metadata: Mapping[str, object] | None = None,
        *,
        is_root: bool = True,
        limit: int | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        if not isinstance(is_root, bool):
            msg = f"RunMetadata: is_root must be a bool, got {describe(is_root)}"
            raise InvalidValueError(msg, "is_root")
        allowed = metadata_limit(limit)
        store = {} if metadata is None else _plain_metadata(metadata, "metadata")
        size = json_size(store)
        if size > allowed:
            raise MetadataTooLargeError(size, allowed)
        # Validated by the constructor every Flush goes through.
        Flush(max_bytes=max_request_bytes)
        self._limit = allowed
        self._max_request_bytes = max_request_bytes
        self._body_room = max_request_bytes - _WRAPPER_BYTES - _OPERATION_FRAME_BYTES - _NUMBER_BYTES
        self._is_root = is_root
        self._lock = threading.Lock()
        # (metadata, its JSON size): replaced as one value, so a reader never sees a torn pair.
        self._state: tuple[dict[str, JSON], int] = (store, size)
        self._queue: list[Operation] = []
        self._parent_queue: list[Operation] = []
        self._root_queue: list[Operation] = []
        self._unapplied: list[Operation] = []
        # The flush out for delivery; _DRAINING while drain() builds it.
        self._flight: Flush | object | None = None
        self._parent = MetadataUpdater(self, "parent")
        self._root = MetadataUpdater(self, "root")

    # ----------------------------------------------------------------- reading

    def current(self) -> DictView:
        """The metadata now, as a read-only view (O(1); a snapshot later calls do not change).

        >>> md = RunMetadata({"n": 1})
        >>> before = md.current()
        >>> md.increment("n").current(), before
        (DictView({'n': 2}), DictView({'n': 1}))
        """
        return _view(self._state[0])  # type: ignore[no-any-return]

    def get(self, key: str) -> Any:
        """The value at the top-level ``key`` (read-only views for containers); ``None`` when absent.

        >>> md = RunMetadata({"n": 1, "logs": ["a"]})
        >>> md.get("n"), md.get("logs"), md.get("absent")
        (1, ListView(['a']), None)
        """
        if not isinstance(key, str):
            msg = f"get: key must be a str, got {describe(key)}"
            raise InvalidValueError(msg, "key")
        return _view(self._state[0].get(key))

    @property
    def size(self) -> int:
        """The JSON size of :meth:`current` in bytes, kept up to date call by call."""
        return self._state[1]

    @property
    def limit(self) -> int:
        """The size limit in bytes."""
        return self._limit

    @property
    def is_root(self) -> bool:
        """Whether the run has no parent (then :attr:`parent` and :attr:`root` act on it)."""
        return self._is_root

    @property
    def parent(self) -> MetadataUpdater:
        """Updates to the parent run's metadata (this run's own when it is the root)."""
        return self._parent

    @property
    def root(self) -> MetadataUpdater:
        """Updates to the root run's metadata (this run's own when it is the root)."""
        return self._root

    @property
    def pending(self) -> bool:
        """Whether operations are queued (not counting a flush in flight)."""
        return bool(self._queue or self._parent_queue or self._root_queue)

    @property
    def in_flight(self) -> Flush | None:
        """The flush drained and not yet accepted or restored, if any."""
        flight = self._flight
        return flight if isinstance(flight, Flush) else None

    @property
    def unapplied(self) -> tuple[Operation, ...]:
        """The run's own calls reported unapplied since the last drain, in order.

        Their values are shared, not copied (see :class:`Flush`): read-only.

        >>> RunMetadata({"n": 1}).remove("n", 1).unapplied
        (Remove(key='n', value=1),)
        """
        with self._lock:
            return tuple(self._unapplied)

    # ----------------------------------------------------------------- updating

    def set(self, key: str, value: object) -> RunMetadata:
        """Set ``key`` (a top-level key, or every match of a ``$.`` path) to ``value``.

        >>> md = RunMetadata({"progress": {"done": 0}})
        >>> md.set("status", "processing").set("$.progress.done", 3).current()
        DictView({'progress': {'done': 3}, 'status': 'processing'})
        """
        if type(key) is not str or key not in _SAFE_KEYS:
            key = _key(key, "set")
        self._local(Set._trusted(key, _value(value, "set")))
        return self

    def delete(self, key: str) -> RunMetadata:
        """Delete the top-level ``key`` (the documented ``del``; always literal).

        >>> RunMetadata({"a": 1, "b": 2}).delete("a").current()
        DictView({'b': 2})
        """
        self._local(Delete._trusted(_key(key, "delete")))
        return self

    def append(self, key: str, value: object) -> RunMetadata:
        """Append ``value`` to the list at ``key`` (a missing key becomes ``[value]``).

        >>> RunMetadata().append("logs", "one").append("logs", "two").get("logs")
        ListView(['one', 'two'])
        """
        if type(key) is not str or key not in _SAFE_KEYS:
            key = _key(key, "append")
        self._local(Append._trusted(key, _value(value, "append")))
        return self

    def remove(self, key: str, value: object) -> RunMetadata:
        """Remove every item equal to ``value`` from the list at ``key`` (unapplied if not a list).

        >>> md = RunMetadata({"tags": ["a", "b", "a"], "n": 1})
        >>> md.remove("tags", "a").remove("n", 1).get("tags")
        ListView(['b'])
        >>> md.unapplied
        (Remove(key='n', value=1),)
        """
        if type(key) is not str or key not in _SAFE_KEYS:
            key = _key(key, "remove")
        self._local(Remove._trusted(key, _value(value, "remove")))
        return self

    def increment(self, key: str, n: int | float = 1) -> RunMetadata:
        """Add ``n`` to the number at ``key`` (anything else counts as 0).

        >>> RunMetadata({"rows": 1}).increment("rows").increment("rows", n=2).get("rows")
        4
        """
        if type(key) is not str or key not in _SAFE_KEYS:
            key = _key(key, "increment")
        self._local(Increment._trusted(key, _amount(n, "increment")))
        return self

    def decrement(self, key: str, n: int | float = 1) -> RunMetadata:
        """Subtract ``n`` from the number at ``key`` (sent as an increment by ``-n``).

        >>> md = RunMetadata({"stock": 5})
        >>> md.decrement("stock", 2).get("stock")
        3
        >>> md.drain().operations
        (Increment(key='stock', value=-2),)
        """
        self._local(decrement(_key(key, "decrement"), _amount(n, "decrement")))
        return self

    def replace(self, metadata: Mapping[str, object]) -> RunMetadata:
        """Replace the whole metadata with ``metadata`` (wire type ``update``).

        >>> RunMetadata({"old": 1}).replace({"user": "Eric"}).current()
        DictView({'user': 'Eric'})
        """
        self._local(Update._trusted(_replacement(metadata, "replace")))
        return self

    def _local(self, op: Operation) -> None:
        """Apply ``op`` to the metadata and queue it, unless it changes nothing or is refused."""
        state = self._state
        # Applied outside the lock; redone inside only if another call got in between.
        result, size = apply_sized(state[0], op, state[1])
        # A remove's value need not be in the metadata (a wildcard can apply it where no
        # item equals it), so the metadata's size does not bound it: it is measured.
        value_bytes = value_size(op.value) if type(op) is Remove else 0
        with self._lock:
            if self._state is not state:
                state = self._state
                result, size = apply_sized(state[0], op, state[1])
            metadata, unapplied = result
            if unapplied:
                self._unapplied.append(op)
                return
            if metadata is state[0]:
                return
            # Past the limit means ending over it and larger than before: metadata already
            # over it (an adopted server answer) can still shrink, or change in place.
            if size > self._limit and size > state[1]:
                raise MetadataTooLargeError(size, self._limit, what=f"metadata after {_call_text(op)}")
            # Every queued operation must fit a request body alone, or no drain could send
            # it. Its JSON is at most its key and its value: a set's, an append's or a
            # replacement's value is now in the metadata (so within ``size``), an amount
            # is a number (within the body room), a remove's was measured above. Only
            # when that bound could overflow a body is the operation itself measured.
            kind = type(op)
            if kind is Update:
                bound = size
            else:
                bound = len(op.key) * _KEY_CHAR_BYTES  # type: ignore[union-attr]
                if kind is Set or kind is Append:
                    bound += size
                elif kind is Remove:
                    bound += value_bytes
            if bound > self._body_room:
                self._check_body(op)
            self._state = (metadata, size)
            self._queue.append(op)

    def _remote(self, target: _Target, op: Operation) -> None:
        """Queue ``op`` for the parent or the root run (this run itself when it is the root)."""
        if self._is_root:
            self._local(op)
            return
        # The other run's metadata is not here: refuse only what could never succeed.
        kind = type(op)
        value_bytes = 0
        if kind is not Delete:
            value = op.value  # type: ignore[union-attr]
            value_bytes = json_size(value) if kind is Update else value_size(value)
            if value_bytes > self._limit and (kind is Set or kind is Append or kind is Update):
                raise MetadataTooLargeError(
                    value_bytes, self._limit, what=f"the value of {target}.{_call_text(op)}"
                )
        key_bytes = 0 if kind is Update else len(op.key) * _KEY_CHAR_BYTES  # type: ignore[union-attr]
        if _WRAPPER_BYTES + _OPERATION_FRAME_BYTES + key_bytes + value_bytes > self._max_request_bytes:
            self._check_body(op)
        with self._lock:
            if target == "parent":
                self._parent_queue.append(op)
            else:
                self._root_queue.append(op)

    def _check_body(self, op: Operation) -> None:
        """Refuse ``op`` if its JSON cannot fit in a request body even alone."""
        size = _WRAPPER_BYTES + json_size(op.to_wire())
        if size > self._max_request_bytes:
            raise MetadataTooLargeError(
                size, self._max_request_bytes, what=f"a request body holding only {_call_text(op)}"
            )

    # ----------------------------------------------------------------- flushing

    def drain(self) -> Flush:
        """Take everything queued as one :class:`Flush`, which is then in flight.

        Resolve it with :meth:`accept` (the platform took it) or :meth:`restore` (it
        failed) before draining again: :class:`FlushInFlightError` otherwise. A flush
        with nothing to send is not in flight (it may still report ``unapplied``).
        The run's final flush is a drain too; send ``flush.packet()`` with the completion.

        >>> md = RunMetadata()
        >>> flush = md.set("a", 1).increment("n").increment("n").drain()
        >>> flush.operations
        (Set(key='a', value=1), Increment(key='n', value=2))
        >>> md.in_flight is flush
        True
        """
        with self._lock:
            if self._flight is not None:
                msg = "drain: a flush is in flight; accept() or restore() it first"
                raise FlushInFlightError(msg)
            taken = (self._queue, self._parent_queue, self._root_queue)
            unapplied = tuple(self._unapplied)
            self._unapplied = []
            if not any(taken):
                return Flush(unapplied=unapplied, max_bytes=self._max_request_bytes)
            self._queue, self._parent_queue, self._root_queue = [], [], []
            self._flight = _DRAINING
        try:
            try:
                flush = Flush(
                    collapse(taken[0]),
                    collapse(taken[1]),
                    collapse(taken[2]),
                    unapplied,
                    max_bytes=self._max_request_bytes,
                )
            except MetadataTooLargeError:
                # Collapsing merged operations into one too large for a body (a replacement
                # absorbing the writes after it). Each queued operation was checked to fit
                # alone, so the batches as queued can always be sent.
                flush = Flush(
                    tuple(taken[0]),
                    tuple(taken[1]),
                    tuple(taken[2]),
                    unapplied,
                    max_bytes=self._max_request_bytes,
                )
        except BaseException:
            with self._lock:
                self._requeue(taken)
                self._unapplied[:0] = unapplied
                self._flight = None
            raise
        with self._lock:
            # Collapsing can leave nothing to send (operations no metadata can match): a
            # host sends nothing then, and must not be left owing an accept or restore.
            self._flight = flush if flush else None
        return flush

    def restore(self, flush: Flush, *, delivered: int = 0) -> None:
        """Put back a flush that failed, ahead of everything queued since; the next drain resends it.

        ``delivered`` is how many of its bodies the platform did take (they were sent
        in order and the later ones failed): only the rest is put back. The local
        metadata stays as it is; it already shows every queued call. The flush's
        ``unapplied`` reports are not put back: they were handed out with it.

        >>> md = RunMetadata()
        >>> failed = md.set("status", "a").drain()
        >>> md.append("logs", "meanwhile").restore(failed)
        >>> md.drain().operations
        (Set(key='status', value='a'), Append(key='logs', value='meanwhile'))
        """
        if isinstance(delivered, bool) or not isinstance(delivered, int):
            msg = f"restore: delivered must be an int, got {describe(delivered)}"
            raise InvalidValueError(msg, "delivered")
        with self._lock:
            self._check_flight(flush, "restore")
            if not 0 <= delivered <= len(flush._counts):
                bodies = len(flush._counts)
                msg = f"restore: delivered must be between 0 and {bodies} (the bodies), got {delivered}"
                raise ValueError(msg)
            self._requeue(flush._after(delivered))
            self._flight = None

    def _requeue(self, ops: Sequence[Sequence[Operation]]) -> None:
        """Put ``ops`` (self, parent, root) ahead of the queues, in new lists.

        Queues only ever grow in place by appending: accept() relies on that to
        re-apply the part of a queue it has not seen yet.
        """
        self._queue = [*ops[0], *self._queue]
        self._parent_queue = [*ops[1], *self._parent_queue]
        self._root_queue = [*ops[2], *self._root_queue]

    def accept(self, flush: Flush, metadata: Mapping[str, object]) -> None:
        """The platform took ``flush`` and answered with the run's ``metadata``: adopt it.

        What was queued while the flush was in flight is applied again on top, so
        the local metadata keeps showing it (it is still queued for the next drain).
        The size is measured once; the limit is not enforced here (the server's
        metadata is what it is). While the metadata is over the limit, a call that
        does not make it larger is allowed, and one that does is refused.
        With an empty ``Flush()`` and nothing in flight, this is a refresh.

        >>> md = RunMetadata()
        >>> flush = md.increment("n").drain()
        >>> md.append("logs", "meanwhile").accept(flush, {"n": 1, "fromChild": True})
        >>> md.current()
        DictView({'n': 1, 'fromChild': True, 'logs': ['meanwhile']})
        """
        store = _plain_metadata(metadata, "accept: metadata")
        size = json_size(store)
        queue = self._queue
        seen = len(queue)
        result, size = apply_sized(store, queue[:seen], size)
        with self._lock:
            self._check_flight(flush, "accept")
            if self._queue is queue:
                result, size = apply_sized(result.metadata, queue[seen:], size)
            else:  # drained and restored in between (a refresh raced a drain): start over
                result, size = apply_sized(store, self._queue, json_size(store))
            self._state = (result.metadata, size)
            self._flight = None

    def _check_flight(self, flush: Flush, method: str) -> None:
        if not isinstance(flush, Flush):
            msg = f"{method}: expected the Flush that drain() returned, got {describe(flush)}"
            raise InvalidValueError(msg, "flush")
        flight = self._flight
        if flight is None and not flush:
            return
        if not isinstance(flight, Flush) or (flush is not flight and flush != flight):
            if isinstance(flight, Flush):
                msg = f"{method}: this flush is not the one in flight"
            elif flight is _DRAINING:
                msg = f"{method}: a flush is being drained; only that one can be {method}ed next"
            else:
                msg = f"{method}: no flush is in flight (only an empty one can be {method}ed now)"
            raise ValueError(msg)

    def __repr__(self) -> str:
        body = (
            ""
            if self._max_request_bytes == MAX_REQUEST_BYTES
            else f", max_request_bytes={self._max_request_bytes}"
        )
        return f"RunMetadata({self._state[0]!r}, is_root={self._is_root}, limit={self._limit}{body})"


_DRAINING = object()


class MetadataUpdater:
    """The update methods for the parent or the root run, queued to their own list.

    The other run's metadata is not here, so nothing is applied locally; a call is
    validated (JSON values, safe keys) and refused only when it could never
    succeed (a value larger than the limit, an operation too large for a request
    body). When this run is the root, the calls act on the run itself.

    >>> md = RunMetadata(is_root=False)
    >>> md.parent.increment("processedRows").append("runs", "run_1") is md.parent
    True
    >>> md.current(), md.drain().parent_operations
    (DictView({}), (Increment(key='processedRows', value=1), Append(key='runs', value='run_1')))
    >>> own = RunMetadata()  # a root run: its parent and root are itself
    >>> own.root.increment("n", 2) is own.root, own.get("n")
    (True, 2)
    """

    __slots__ = ("_owner", "_target")

    def __init__(self, owner: RunMetadata, target: Literal["parent", "root"]) -> None:
        self._owner = owner
        self._target: _Target = target

    def set(self, key: str, value: object) -> MetadataUpdater:
        """Queue ``set(key, value)`` for the target run.

        >>> md = RunMetadata(is_root=False)
        >>> md.parent.set("status", "done").set("step", 3) is md.parent
        True
        >>> md.drain().parent_operations
        (Set(key='status', value='done'), Set(key='step', value=3))
        """
        method = f"{self._target}.set"
        self._owner._remote(self._target, Set._trusted(_key(key, method), _value(value, method)))
        return self

    def delete(self, key: str) -> MetadataUpdater:
        """Queue ``delete(key)`` for the target run.

        >>> md = RunMetadata(is_root=False)
        >>> md.root.delete("draft")
        MetadataUpdater(target='root')
        >>> md.drain().root_operations
        (Delete(key='draft'),)
        """
        self._owner._remote(self._target, Delete._trusted(_key(key, f"{self._target}.delete")))
        return self

    def append(self, key: str, value: object) -> MetadataUpdater:
        """Queue ``append(key, value)`` for the target run.

        >>> md = RunMetadata(is_root=False)
        >>> md.parent.append("rowRuns", "run_1")
        MetadataUpdater(target='parent')
        >>> md.drain().parent_operations
        (Append(key='rowRuns', value='run_1'),)
        """
        method = f"{self._target}.append"
        self._owner._remote(self._target, Append._trusted(_key(key, method), _value(value, method)))
        return self

    def remove(self, key: str, value: object) -> MetadataUpdater:
        """Queue ``remove(key, value)`` for the target run.

        >>> md = RunMetadata(is_root=False)
        >>> md.parent.remove("waiting", "run_1")
        MetadataUpdater(target='parent')
        >>> md.drain().parent_operations
        (Remove(key='waiting', value='run_1'),)
        """
        method = f"{self._target}.remove"
        self._owner._remote(self._target, Remove._trusted(_key(key, method), _value(value, method)))
        return self

    def increment(self, key: str, n: int | float = 1) -> MetadataUpdater:
        """Queue ``increment(key, n)`` for the target run.

        >>> md = RunMetadata(is_root=False)
        >>> md.parent.increment("processedRows", n=2)
        MetadataUpdater(target='parent')
        >>> md.drain().parent_operations
        (Increment(key='processedRows', value=2),)
        """
        method = f"{self._target}.increment"
        self._owner._remote(self._target, Increment._trusted(_key(key, method), _amount(n, method)))
        return self

    def decrement(self, key: str, n: int | float = 1) -> MetadataUpdater:
        """Queue an increment by ``-n`` for the target run (not ``-abs(n)`` as the reference).

        >>> md = RunMetadata(is_root=False)
        >>> md.root.decrement("left", -3)
        MetadataUpdater(target='root')
        >>> md.drain().root_operations
        (Increment(key='left', value=3),)
        """
        method = f"{self._target}.decrement"
        self._owner._remote(self._target, decrement(_key(key, method), _amount(n, method)))
        return self

    def replace(self, metadata: Mapping[str, object]) -> MetadataUpdater:
        """Queue the replacement of the target run's whole metadata.

        >>> md = RunMetadata(is_root=False)
        >>> md.parent.replace({"status": "reset"})
        MetadataUpdater(target='parent')
        >>> md.drain().parent_operations
        (Update(value={'status': 'reset'}),)
        """
        method = f"{self._target}.replace"
        self._owner._remote(self._target, Update._trusted(_replacement(metadata, method)))
        return self

    def __repr__(self) -> str:
        return f"MetadataUpdater(target={self._target!r})"
