"""Request-body planning: :class:`Flush`, the bodies it sends, split under the request limit.

A flush holds the collapsed operations for the run, its parent and its root. Its
bodies are the platform's ``{"operations", "parentOperations", "rootOperations"}``
objects, each at most ``max_bytes`` of JSON, and the three lists keep their order
across them. The byte counts below are what the buffer uses to refuse, at the call,
an operation that no body could ever carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from metaops._collapse import MAX_REQUEST_BYTES, chunk
from metaops._errors import InvalidLimitError, InvalidValueError
from metaops._json import JSON, describe
from metaops._size import json_size, json_text
from metaops._values import OPERATION_CLASSES, Operation

__all__ = [
    "KEY_CHAR_MAX_BYTES",
    "NUMBER_TEXT_MAX_BYTES",
    "OPERATION_FRAME_BYTES",
    "WRAPPER_BYTES",
    "Flush",
]

_SECTIONS = ("operations", "parentOperations", "rootOperations")
WRAPPER_BYTES = len('{"operations":[],"parentOperations":[],"rootOperations":[]}')
"""The JSON of a body with its three lists empty; the operations go inside the brackets."""
# chunk() measures bodies of one list: '{"operations":[' ... ']}'.
_CHUNK_WRAPPER_BYTES = len('{"operations":[]}')
OPERATION_FRAME_BYTES = 38
"""An operation's JSON around its key's characters and its value.

``'{"type":"increment","key":"' '","value":' '}'``: increment is the longest type name.
"""
NUMBER_TEXT_MAX_BYTES = 25
"""The longest JSON text of a number, in bytes (``"-1.2345678901234567e-308"``)."""
KEY_CHAR_MAX_BYTES = 6
"""The most JSON bytes one key character takes (a control character: ``"\\u001f"``)."""


@dataclass(frozen=True, slots=True)
class Flush:
    """What one drain took out of a :class:`~metaops.buffer.RunMetadata`: the operations to send, collapsed.

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
    >>> from metaops.buffer import Flush
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
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= WRAPPER_BYTES:
            msg = f"Flush: max_bytes must be an int over {WRAPPER_BYTES}, got {max_bytes!r}"
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
        >>> from metaops.buffer import Flush
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

        >>> from metaops import Delete
        >>> from metaops.buffer import Flush
        >>> Flush((Delete("a"),)).texts()
        ('{"operations":[{"type":"delete","key":"a"}],"parentOperations":[],"rootOperations":[]}',)
        """
        return self._texts

    def packet(self) -> dict[str, str]:
        """The completion packet: ``{"data": <JSON text>, "dataType": "application/json"}``.

        ``data`` holds the three lists in one body (the completion is not split).
        A flush with nothing to send gives ``{"dataType": "application/json"}``.

        >>> import json
        >>> from metaops import Delete
        >>> from metaops.buffer import Flush
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
        if type(op) not in OPERATION_CLASSES:
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
    room = max_bytes - (WRAPPER_BYTES - _CHUNK_WRAPPER_BYTES)
    bodies: list[_Counts] = []
    counts = [0, 0, 0]
    used = WRAPPER_BYTES
    for section, ops in enumerate(lists):
        start = 0
        for part in chunk(ops, room):
            # The part's list without its brackets, which the wrapper already counts.
            inner = json_size(wires[section][start : start + len(part)]) - 2
            start += len(part)
            if any(counts) and (counts[section] or used + inner > max_bytes):
                bodies.append((counts[0], counts[1], counts[2]))
                counts = [0, 0, 0]
                used = WRAPPER_BYTES
            counts[section] = len(part)
            used += inner
    bodies.append((counts[0], counts[1], counts[2]))
    return tuple(bodies)


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))
