"""The seven documented update methods, written once for a run and for its parent and root.

``metadata.set``, ``delete``, ``append``, ``remove``, ``increment``, ``decrement``
and ``replace`` check their arguments (an error names the call: ``set``,
``parent.set``), build the operation, and hand it to the object's ``_enqueue``.
:class:`metaops.buffer.RunMetadata` applies it to the run's metadata and queues it;
:class:`metaops.buffer.MetadataUpdater` queues it for the parent or the root run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from metaops._arguments import checked_amount, checked_key, checked_metadata, checked_value
from metaops._paths import SAFE_KEYS
from metaops._values import Append, Delete, Increment, Operation, Remove, Set, Update

__all__ = ["CallNames", "UpdateMethods"]

_Updater = TypeVar("_Updater", bound="UpdateMethods")


@dataclass(frozen=True, slots=True)
class CallNames:
    """How errors name each update method: ``set`` on the run itself, ``parent.set`` on its parent."""

    set: str
    delete: str
    append: str
    remove: str
    increment: str
    decrement: str
    replace: str

    @classmethod
    def prefixed(cls, prefix: str) -> CallNames:
        methods = ("set", "delete", "append", "remove", "increment", "decrement", "replace")
        return cls(*(prefix + method for method in methods))


class UpdateMethods:
    """The seven documented update methods, written once for a run and for its parent and root.

    Each checks its arguments (an error names the call), builds the operation and
    hands it to ``_enqueue``: ``RunMetadata`` applies it to the run's metadata
    and queues it, ``MetadataUpdater`` queues it for the other run. Every method
    returns the object it was called on, so calls chain.
    """

    __slots__ = ()
    _names: CallNames
    _enqueue: Callable[[Operation], None]

    def set(self: _Updater, key: str, value: object) -> _Updater:
        """Set ``key`` (a top-level key, or every match of a ``$.`` path) to ``value``.

        >>> from metaops.buffer import RunMetadata
        >>> md = RunMetadata({"progress": {"done": 0}}, is_root=False)
        >>> md.set("status", "processing").set("$.progress.done", 3).current()
        DictView({'progress': {'done': 3}, 'status': 'processing'})
        >>> md.parent.set("childStatus", "processing").set("step", 3) is md.parent
        True
        >>> md.drain().parent_operations
        (Set(key='childStatus', value='processing'), Set(key='step', value=3))
        """
        names = self._names
        if type(key) is not str or key not in SAFE_KEYS:
            key = checked_key(key, names.set)
        self._enqueue(Set._trusted(key, checked_value(value, names.set)))
        return self

    def delete(self: _Updater, key: str) -> _Updater:
        """Delete the top-level ``key`` (the documented ``del``; always literal).

        >>> from metaops.buffer import RunMetadata
        >>> md = RunMetadata({"a": 1, "b": 2}, is_root=False)
        >>> md.delete("a").current()
        DictView({'b': 2})
        >>> md.root.delete("draft") is md.root
        True
        >>> md.drain().root_operations
        (Delete(key='draft'),)
        """
        names = self._names
        if type(key) is not str or key not in SAFE_KEYS:
            key = checked_key(key, names.delete)
        self._enqueue(Delete._trusted(key))
        return self

    def append(self: _Updater, key: str, value: object) -> _Updater:
        """Append ``value`` to the list at ``key`` (a missing key becomes ``[value]``).

        >>> from metaops.buffer import RunMetadata
        >>> md = RunMetadata(is_root=False)
        >>> md.append("logs", "one").append("logs", "two").get("logs")
        ListView(['one', 'two'])
        >>> md.parent.append("rowRuns", "run_1") is md.parent
        True
        >>> md.drain().parent_operations
        (Append(key='rowRuns', value='run_1'),)
        """
        names = self._names
        if type(key) is not str or key not in SAFE_KEYS:
            key = checked_key(key, names.append)
        self._enqueue(Append._trusted(key, checked_value(value, names.append)))
        return self

    def remove(self: _Updater, key: str, value: object) -> _Updater:
        """Remove every item equal to ``value`` from the list at ``key`` (unapplied if not a list).

        >>> from metaops.buffer import RunMetadata
        >>> md = RunMetadata({"tags": ["a", "b", "a"], "n": 1}, is_root=False)
        >>> md.remove("tags", "a").remove("n", 1).get("tags")
        ListView(['b'])
        >>> md.unapplied
        (Remove(key='n', value=1),)
        >>> md.parent.remove("waiting", "run_1") is md.parent
        True
        >>> md.drain().parent_operations
        (Remove(key='waiting', value='run_1'),)
        """
        names = self._names
        if type(key) is not str or key not in SAFE_KEYS:
            key = checked_key(key, names.remove)
        self._enqueue(Remove._trusted(key, checked_value(value, names.remove)))
        return self

    def increment(self: _Updater, key: str, n: int | float = 1) -> _Updater:
        """Add ``n`` to the number at ``key`` (anything else counts as 0).

        >>> from metaops.buffer import RunMetadata
        >>> md = RunMetadata({"rows": 1}, is_root=False)
        >>> md.increment("rows").increment("rows", n=2).get("rows")
        4
        >>> md.parent.increment("processedRows", n=2) is md.parent
        True
        >>> md.drain().parent_operations
        (Increment(key='processedRows', value=2),)
        """
        names = self._names
        if type(key) is not str or key not in SAFE_KEYS:
            key = checked_key(key, names.increment)
        self._enqueue(Increment._trusted(key, checked_amount(n, names.increment)))
        return self

    def decrement(self: _Updater, key: str, n: int | float = 1) -> _Updater:
        """Subtract ``n`` from the number at ``key``: sent as an increment by ``-n``.

        On the parent and root too (the reference sends ``-abs(n)`` there).

        >>> from metaops.buffer import RunMetadata
        >>> md = RunMetadata({"stock": 5}, is_root=False)
        >>> md.decrement("stock", 2).get("stock")
        3
        >>> md.root.decrement("left", -3)
        MetadataUpdater(target='root')
        >>> flush = md.drain()
        >>> flush.operations, flush.root_operations
        ((Increment(key='stock', value=-2),), (Increment(key='left', value=3),))
        """
        names = self._names
        if type(key) is not str or key not in SAFE_KEYS:
            key = checked_key(key, names.decrement)
        self._enqueue(Increment._trusted(key, -checked_amount(n, names.decrement)))
        return self

    def replace(self: _Updater, metadata: Mapping[str, object]) -> _Updater:
        """Replace the whole metadata with ``metadata`` (wire type ``update``).

        >>> from metaops.buffer import RunMetadata
        >>> md = RunMetadata({"old": 1}, is_root=False)
        >>> md.replace({"user": "Eric"}).current()
        DictView({'user': 'Eric'})
        >>> md.parent.replace({"status": "reset"}) is md.parent
        True
        >>> md.drain().parent_operations
        (Update(value={'status': 'reset'}),)
        """
        self._enqueue(Update._trusted(checked_metadata(metadata, self._names.replace)))
        return self
