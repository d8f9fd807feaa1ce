"""Read-only views of a buffer's metadata: a ``dict`` and a ``list`` that cannot change.

:meth:`metaops.buffer.RunMetadata.current` and ``get`` hand these out. They are
real ``dict`` and ``list`` subclasses, so ``json.dumps``, :func:`metaops.json_size`,
:func:`metaops.json_text`, ``isinstance(x, dict)``, ``==``, ``dict(view)`` and
``{**view}`` all work as on plain containers; every method that would change one
raises :class:`~metaops.ReadOnlyError`, and a nested container comes out as a view
too, so nothing reached through a view can change the buffer's state.

A view's own storage is a shallow copy of the container it shows (so it costs the
container's width to make, not its size): C code that reads a dict's or list's
storage directly, such as the ``json`` module's encoder or orjson, sees the true
items. The copy holds the buffer's nested containers as they are: reaching them by
calling ``dict``'s or ``list``'s methods unbound on a view (``dict.get(view, k)``)
goes around the view, and is not supported. Everything else (``view.get``,
iteration, ``items()``, ``dict(view)``, ``view.copy()``, ``view | other``) hands
out views.

Copies: ``copy.copy`` and ``copy.deepcopy`` return the view itself (it never
changes, as for a tuple); ``view.copy()`` is a plain ``dict`` (or ``list``) whose
nested containers are views; ``to_dict()`` and ``to_list()`` are deep, mutable
copies. A view pickles as its JSON and unpickles as an equal view.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from typing import Any, NoReturn, SupportsIndex, overload

from metaops._errors import InvalidValueError, ReadOnlyError
from metaops._json import JSON, describe, normalize

__all__ = ["DictView", "ListView", "thaw", "view"]


def _read_only(kind: str, method: str, copy: str) -> NoReturn:
    msg = f"{kind} is read-only: {method}() cannot change it; {copy}() gives a mutable copy"
    raise ReadOnlyError(msg)


class DictView(dict[str, Any]):
    """A read-only view of a JSON object in the metadata; nested containers are views too.

    Equal to a dict with the same items, and a dict itself (``json.dumps`` takes it).
    Nothing can change it, and it never changes: the buffer replaces what it stores,
    never mutates it, so a view is a consistent snapshot. ``DictView(mapping)`` makes
    one of a fresh JSON copy of ``mapping``.

    >>> import json
    >>> from metaops.buffer import DictView
    >>> view = DictView({"user": {"tags": ["a"]}})
    >>> view["user"]["tags"], json.dumps(view), view == {"user": {"tags": ["a"]}}
    (ListView(['a']), '{"user": {"tags": ["a"]}}', True)
    """

    __slots__ = ("_data",)
    _data: dict[str, JSON]

    def __new__(cls, data: Mapping[str, object] | None = None) -> DictView:
        if data is None:
            data = {}
        elif not isinstance(data, dict):
            msg = f"DictView must be given a dict, got {describe(data)}"
            raise InvalidValueError(msg, "DictView")
        return _dict_view(normalize(data, "DictView"))  # type: ignore[arg-type]

    def __init__(self, data: Mapping[str, object] | None = None) -> None:
        """Made by ``__new__``: calling ``__init__`` again changes nothing."""

    def __getitem__(self, key: str) -> Any:
        return view(self._data[key])

    def get(self, key: str, default: Any = None) -> Any:
        """The value at ``key`` (a view for a container), else ``default``."""
        data = self._data
        return view(data[key]) if key in data else default

    def __iter__(self) -> Iterator[str]:
        # Defined here (not inherited) so that dict(view) and {**view} build their
        # copies through __getitem__, which hands out views of nested containers.
        return iter(self._data)

    def values(self) -> ValuesView[Any]:  # type: ignore[override]
        """The values, nested containers as views."""
        return ValuesView(self)

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        """The ``(key, value)`` pairs, nested containers as views (``json.dumps`` reads these)."""
        return ItemsView(self)

    def copy(self) -> dict[str, Any]:
        """A plain, mutable ``dict`` of the same items; nested containers stay views."""
        return dict(self)

    def to_dict(self) -> dict[str, JSON]:
        """A deep, mutable copy as plain dicts and lists.

        >>> from metaops.buffer import DictView
        >>> plain = DictView({"a": [1]}).to_dict()
        >>> plain["a"].append(2)
        >>> plain
        {'a': [1, 2]}
        """
        return thaw(self._data)  # type: ignore[no-any-return]

    def __or__(self, other: object) -> dict[str, Any]:  # type: ignore[override]
        if not isinstance(other, dict):
            return NotImplemented
        merged = dict(self)
        merged.update(other)
        return merged

    def __ror__(self, other: object) -> dict[str, Any]:  # type: ignore[override]
        if not isinstance(other, dict):
            return NotImplemented
        merged = dict(other)
        merged.update(self)
        return merged

    def __copy__(self) -> DictView:
        return self

    def __deepcopy__(self, memo: object) -> DictView:
        return self

    def __reduce__(self) -> tuple[type[DictView], tuple[dict[str, JSON]]]:
        return (DictView, (self._data,))

    def __repr__(self) -> str:
        return f"DictView({self._data!r})"

    # Everything that would change it.

    def __setitem__(self, key: object, value: object) -> NoReturn:
        _read_only("DictView", "__setitem__", "to_dict")

    def __delitem__(self, key: object) -> NoReturn:
        _read_only("DictView", "__delitem__", "to_dict")

    def __ior__(self, other: object) -> NoReturn:
        _read_only("DictView", "__ior__", "to_dict")

    def clear(self) -> NoReturn:
        _read_only("DictView", "clear", "to_dict")

    def pop(self, *args: object) -> NoReturn:
        _read_only("DictView", "pop", "to_dict")

    def popitem(self) -> NoReturn:
        _read_only("DictView", "popitem", "to_dict")

    def setdefault(self, *args: object) -> NoReturn:
        _read_only("DictView", "setdefault", "to_dict")

    def update(self, *args: object, **kwargs: object) -> NoReturn:
        _read_only("DictView", "update", "to_dict")

    def __setattr__(self, name: str, value: object) -> NoReturn:
        _read_only("DictView", "__setattr__", "to_dict")

    def __delattr__(self, name: str) -> NoReturn:
        _read_only("DictView", "__delattr__", "to_dict")


class ListView(list[Any]):
    """A read-only view of a JSON list in the metadata; nested containers are views too.

    Equal to a list with the same items, and a list itself (``json.dumps`` takes it).
    Concatenating or repeating one gives a plain list (of views).

    >>> from metaops.buffer import ListView
    >>> logs = ListView(["a", {"b": 1}])
    >>> logs[1], logs + ["c"], logs == ["a", {"b": 1}]
    (DictView({'b': 1}), ['a', DictView({'b': 1}), 'c'], True)
    """

    __slots__ = ("_data",)
    _data: list[JSON]

    def __new__(cls, data: object = ()) -> ListView:
        if not isinstance(data, (list, tuple)):
            msg = f"ListView must be given a list, got {describe(data)}"
            raise InvalidValueError(msg, "ListView")
        return _list_view(normalize(data, "ListView"))  # type: ignore[arg-type]

    def __init__(self, data: object = ()) -> None:
        """Made by ``__new__``: calling ``__init__`` again changes nothing."""

    @overload
    def __getitem__(self, index: SupportsIndex) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> ListView: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        if isinstance(index, slice):
            return _list_view(self._data[index])
        return view(self._data[index])

    def __iter__(self) -> Iterator[Any]:
        return map(view, self._data)

    def __reversed__(self) -> Iterator[Any]:
        return map(view, reversed(self._data))

    def copy(self) -> list[Any]:
        """A plain, mutable ``list`` of the same items; nested containers stay views."""
        return list(self)

    def to_list(self) -> list[JSON]:
        """A deep, mutable copy as plain lists and dicts.

        >>> from metaops.buffer import ListView
        >>> plain = ListView([[1]]).to_list()
        >>> plain[0].append(2)
        >>> plain
        [[1, 2]]
        """
        return thaw(self._data)  # type: ignore[no-any-return]

    def __add__(self, other: object) -> list[Any]:
        if not isinstance(other, list):
            return NotImplemented
        return [*self, *other]

    def __radd__(self, other: object) -> list[Any]:
        if not isinstance(other, list):
            return NotImplemented
        return [*other, *self]

    def __mul__(self, count: SupportsIndex) -> list[Any]:
        return list(self) * count

    __rmul__ = __mul__

    def __copy__(self) -> ListView:
        return self

    def __deepcopy__(self, memo: object) -> ListView:
        return self

    def __reduce__(self) -> tuple[type[ListView], tuple[list[JSON]]]:
        return (ListView, (self._data,))

    def __repr__(self) -> str:
        return f"ListView({self._data!r})"

    # Everything that would change it.

    def __setitem__(self, index: object, value: object) -> NoReturn:
        _read_only("ListView", "__setitem__", "to_list")

    def __delitem__(self, index: object) -> NoReturn:
        _read_only("ListView", "__delitem__", "to_list")

    def __iadd__(self, other: object) -> NoReturn:
        _read_only("ListView", "__iadd__", "to_list")

    def __imul__(self, count: object) -> NoReturn:
        _read_only("ListView", "__imul__", "to_list")

    def append(self, value: object) -> NoReturn:
        _read_only("ListView", "append", "to_list")

    def extend(self, values: object) -> NoReturn:
        _read_only("ListView", "extend", "to_list")

    def insert(self, index: object, value: object) -> NoReturn:
        _read_only("ListView", "insert", "to_list")

    def pop(self, *args: object) -> NoReturn:
        _read_only("ListView", "pop", "to_list")

    def remove(self, value: object) -> NoReturn:
        _read_only("ListView", "remove", "to_list")

    def clear(self) -> NoReturn:
        _read_only("ListView", "clear", "to_list")

    def sort(self, *args: object, **kwargs: object) -> NoReturn:
        _read_only("ListView", "sort", "to_list")

    def reverse(self) -> NoReturn:
        _read_only("ListView", "reverse", "to_list")

    def __setattr__(self, name: str, value: object) -> NoReturn:
        _read_only("ListView", "__setattr__", "to_list")

    def __delattr__(self, name: str) -> NoReturn:
        _read_only("ListView", "__delattr__", "to_list")


# Built around __new__ and __setattr__, which are the public, checking ways in.
_new_dict = dict.__new__
_fill_dict = dict.update
_set_dict_data = DictView._data.__set__  # type: ignore[attr-defined]
_new_list = list.__new__
_fill_list = list.extend
_set_list_data = ListView._data.__set__  # type: ignore[attr-defined]


def _dict_view(data: dict[str, JSON]) -> DictView:
    made = _new_dict(DictView)
    _fill_dict(made, data)
    _set_dict_data(made, data)
    return made


def _list_view(data: list[JSON]) -> ListView:
    made = _new_list(ListView)
    _fill_list(made, data)
    _set_list_data(made, data)
    return made


def view(value: JSON) -> Any:
    """``value``, a JSON value the buffer holds, with a container wrapped in its view."""
    kind = type(value)
    if kind is dict:
        return _dict_view(value)  # type: ignore[arg-type]
    if kind is list:
        return _list_view(value)  # type: ignore[arg-type]
    return value


def thaw(value: dict[str, JSON] | list[JSON]) -> Any:
    """A deep, mutable copy of a JSON container, made without recursion (so at any depth)."""
    pending: list[tuple[Any, Any]] = []
    top = _shell(value, pending)
    while pending:
        source, target = pending.pop()
        if type(source) is dict:
            for key, item in source.items():
                target[key] = _shell(item, pending)
        else:
            target.extend([_shell(item, pending) for item in source])
    return top


def _shell(value: Any, pending: list[tuple[Any, Any]]) -> Any:
    """An empty container standing for ``value``, filled later from ``pending``; a scalar as it is."""
    kind = type(value)
    if kind is dict:
        shell: Any = {}
    elif kind is list:
        shell = []
    else:
        return value
    pending.append((value, shell))
    return shell
