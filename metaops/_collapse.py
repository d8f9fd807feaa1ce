"""The algebra over batches: ``collapse``, ``compose`` and ``chunk``.

PROVISIONAL: collapse and compose are identity-style placeholders while the
reducer is being written; chunk is final.
"""

from __future__ import annotations

from collections.abc import Iterable

from metaops._errors import InvalidLimitError, MetadataTooLargeError
from metaops._size import json_size
from metaops._values import Operation

__all__ = ["MAX_REQUEST_BYTES", "chunk", "collapse", "compose"]

MAX_REQUEST_BYTES = 1_048_576
"""1 MiB: under the platform's request body limit on the metadata route (1 MB, now 2 MB)."""

# '{"operations":[' and ']}' around the comma-separated operations.
_BODY_OVERHEAD = len('{"operations":[]}')


def collapse(ops: Iterable[Operation]) -> tuple[Operation, ...]:
    """A shorter batch with the same effect as ``ops`` from every state."""
    return tuple(ops)


def compose(first: Iterable[Operation], second: Iterable[Operation]) -> tuple[Operation, ...]:
    """``collapse(first + second)``."""
    return collapse((*first, *second))


def chunk(ops: Iterable[Operation], max_bytes: int = MAX_REQUEST_BYTES) -> list[tuple[Operation, ...]]:
    """Split ``ops`` into consecutive request bodies of at most ``max_bytes`` each.

    Each body is ``{"operations": [...]}``, measured with :func:`json_size`; order
    is kept. An operation too large for a body of its own raises
    :class:`MetadataTooLargeError` naming its index.

    >>> from metaops import Set, chunk
    >>> [len(part) for part in chunk([Set("k", "x" * 40)] * 5, max_bytes=200)]
    [2, 2, 1]
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= _BODY_OVERHEAD:
        msg = f"chunk: max_bytes must be an int over {_BODY_OVERHEAD}, got {max_bytes!r}"
        raise InvalidLimitError(msg)
    batch = tuple(ops)
    if not batch:
        return []
    wires = [op.to_wire() for op in batch]
    if json_size({"operations": wires}) <= max_bytes:
        return [batch]
    parts: list[tuple[Operation, ...]] = []
    start = 0
    used = _BODY_OVERHEAD
    for index, wire in enumerate(wires):
        size = json_size(wire)
        if _BODY_OVERHEAD + size > max_bytes:
            raise MetadataTooLargeError(_BODY_OVERHEAD + size, max_bytes, what=f"operation {index}")
        extra = size + (1 if index > start else 0)  # a comma before every operation but the first
        if used + extra > max_bytes:
            parts.append(batch[start:index])
            start = index
            used = _BODY_OVERHEAD + size
        else:
            used += extra
    parts.append(batch[start:])
    return parts
