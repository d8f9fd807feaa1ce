"""Operations as immutable values, and their wire form.

One frozen, slotted dataclass per operation. Construction validates and
normalizes: a value is copied into fresh JSON (so nothing the caller holds can
change an operation later), a key must be a ``str``. Equality and hashing follow
JSON equality, so ``Set("a", 1) == Set("a", 1.0)`` but ``Set("a", True) != Set("a", 1)``.

Unsafe keys (see :func:`metaops.is_safe_key`) are allowed in values: ``apply``
reports such operations unapplied, as the reference does. The wire parser refuses
them by default, as the reference's schema does.

Every fact about an operation that does not depend on its key or value lives on its
class, and :data:`WIRE_TYPES` (wire name to class) is the one list of them; what
other modules do per operation (``apply``'s handlers) is a table built from it by
:func:`per_operation`, which refuses to leave one out. The facts, besides
``wire_type``:

``_method``: the update method that makes it (how an error names the call:
``replace`` for an ``Update``). ``_keyed``: it carries a key (else it acts on the
whole metadata, which its value is). ``_value_role``: what its value is:
``"stored"`` (written into the metadata as given), ``"matched"`` (compared with a
list's items, never stored), ``"amount"`` (a number added), ``None`` (it has
none). ``_writes``: it writes at every place it matches, creating a missing one.
``_paths``: it reads a ``$.`` key as a path (``delete`` reads every key literally).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeVar

from metaops._errors import InvalidOperationError, InvalidValueError
from metaops._json import (
    JSON,
    JSONInput,
    describe,
    describe_json,
    is_number,
    json_equal,
    json_hash,
    normalize,
    shown_key,
    to_double,
)
from metaops._paths import is_safe_key

__all__ = [
    "OPERATION_CLASSES",
    "WIRE_TYPES",
    "Append",
    "Delete",
    "Increment",
    "Operation",
    "Remove",
    "Set",
    "Update",
    "ValueRole",
    "call_text",
    "decrement",
    "iterate_operations",
    "not_an_operation",
    "parse_operation",
    "parse_operations",
    "per_operation",
]

_setattr = object.__setattr__


def _check_key(key: object, op: str) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    msg = f"{op}: key must be a str, got {describe(key)}"
    raise InvalidValueError(msg, "key")


def _check_value(value: object, op: str, where: str = "value", *, metadata: bool = False) -> JSON:
    try:
        return normalize(value, where, metadata=metadata)
    except InvalidValueError as error:
        raise InvalidValueError(f"{op}: {error}", error.where) from None


def _check_amount(value: object, op: str) -> int | float:
    if not is_number(value):
        msg = f"{op}: value must be a number (int or float, not bool), got {describe(value)}"
        raise InvalidValueError(msg, "value")
    return _check_value(value, op)  # type: ignore[return-value]


def _check_object(value: object, op: str) -> dict[str, JSON]:
    if not isinstance(value, dict):
        msg = f"{op}: value must be a dict (the whole metadata object), got {describe(value)}"
        raise InvalidValueError(msg, "value")
    return _check_value(value, op, metadata=True)  # type: ignore[return-value]


ValueRole = Literal["stored", "matched", "amount"]
"""What an operation's value is (see the module's docstring)."""


class _KeyValueOperation:
    """Shared behaviour of the operations that carry a key and a value."""

    __slots__ = ()
    wire_type: ClassVar[str]
    _method: ClassVar[str]
    _keyed: ClassVar[bool] = True
    _value_role: ClassVar[ValueRole | None]
    _writes: ClassVar[bool]
    _paths: ClassVar[bool] = True
    key: str
    value: JSON

    def _init(self, key: str, value: JSONInput) -> None:
        # Each class has its own __init__ calling this, so that a missing argument's
        # TypeError names the class the caller wrote.
        _setattr(self, "key", _check_key(key, self.wire_type))
        _setattr(self, "value", _check_value(value, self.wire_type))

    @classmethod
    def _trusted(cls, key: str, value: JSON) -> Any:
        """Build without validation, for values metaops itself produced."""
        self = object.__new__(cls)
        _setattr(self, "key", key)
        _setattr(self, "value", value)
        return self

    def to_wire(self) -> dict[str, JSON]:
        """The operation as the platform's JSON (the value is shared, not copied).

        >>> from metaops import Increment
        >>> Increment("n", 2).to_wire()
        {'type': 'increment', 'key': 'n', 'value': 2}
        """
        return {"type": self.wire_type, "key": self.key, "value": self.value}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _KeyValueOperation)
        return self.key == other.key and json_equal(self.value, other.value)

    def __hash__(self) -> int:
        return hash((self.wire_type, self.key, json_hash(self.value)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, value={self.value!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.value))


@dataclass(frozen=True, eq=False, repr=False, init=False)
class Set(_KeyValueOperation):
    """Write ``value`` at ``key`` (a top-level key, or every match of a ``$.`` path).

    >>> from metaops import Set, apply
    >>> apply({"progress": 0.1}, [Set("progress", 0.5)]).metadata
    {'progress': 0.5}
    """

    # Slots by hand: dataclass(slots=True) with frozen=True breaks the frozen error
    # message on setting an unknown attribute (CPython gh-105936).
    __slots__ = ("key", "value")
    wire_type: ClassVar[str] = "set"
    _method: ClassVar[str] = "set"
    _value_role: ClassVar[ValueRole | None] = "stored"
    _writes: ClassVar[bool] = True
    key: str
    value: JSON

    def __init__(self, key: str, value: JSONInput) -> None:
        self._init(key, value)


@dataclass(frozen=True, eq=False, repr=False, init=False)
class Append(_KeyValueOperation):
    """Append ``value`` to the list at ``key`` (a missing key becomes ``[value]``).

    >>> from metaops import Append, apply
    >>> apply({"logs": ["a"]}, [Append("logs", "b")]).metadata
    {'logs': ['a', 'b']}
    """

    __slots__ = ("key", "value")
    wire_type: ClassVar[str] = "append"
    _method: ClassVar[str] = "append"
    _value_role: ClassVar[ValueRole | None] = "stored"
    _writes: ClassVar[bool] = True
    key: str
    value: JSON

    def __init__(self, key: str, value: JSONInput) -> None:
        self._init(key, value)


@dataclass(frozen=True, eq=False, repr=False, init=False)
class Remove(_KeyValueOperation):
    """Remove every item JSON-equal to ``value`` from the list at ``key``.

    Unapplied when ``key`` does not hold a list.

    >>> from metaops import Remove, apply
    >>> apply({"tags": ["a", "b", "a"]}, [Remove("tags", "a")]).metadata
    {'tags': ['b']}
    """

    __slots__ = ("key", "value")
    wire_type: ClassVar[str] = "remove"
    _method: ClassVar[str] = "remove"
    _value_role: ClassVar[ValueRole | None] = "matched"
    _writes: ClassVar[bool] = False
    key: str
    value: JSON

    def __init__(self, key: str, value: JSONInput) -> None:
        self._init(key, value)


@dataclass(frozen=True, eq=False, repr=False, init=False)
class Increment(_KeyValueOperation):
    """Add ``value`` to the number at ``key`` (anything else counts as 0).

    >>> from metaops import Increment, apply
    >>> apply({"n": 1}, [Increment("n", 2)]).metadata
    {'n': 3}
    """

    __slots__ = ("key", "value")
    wire_type: ClassVar[str] = "increment"
    _method: ClassVar[str] = "increment"
    _value_role: ClassVar[ValueRole | None] = "amount"
    _writes: ClassVar[bool] = True
    key: str
    value: int | float

    def __init__(self, key: str, value: int | float = 1) -> None:
        _setattr(self, "key", _check_key(key, "increment"))
        _setattr(self, "value", _check_amount(value, "increment"))


@dataclass(frozen=True, eq=False, repr=False, init=False)
class Delete:
    """Remove the top-level key ``key`` (always literal, even when it starts with ``$.``).

    >>> from metaops import Delete, apply
    >>> apply({"a": 1, "b": 2}, [Delete("a")]).metadata
    {'b': 2}
    """

    __slots__ = ("key",)
    wire_type: ClassVar[str] = "delete"
    _method: ClassVar[str] = "delete"
    _keyed: ClassVar[bool] = True
    _value_role: ClassVar[ValueRole | None] = None
    _writes: ClassVar[bool] = False
    _paths: ClassVar[bool] = False
    key: str

    def __init__(self, key: str) -> None:
        _setattr(self, "key", _check_key(key, "delete"))

    @classmethod
    def _trusted(cls, key: str) -> Delete:
        self = object.__new__(cls)
        _setattr(self, "key", key)
        return self

    def to_wire(self) -> dict[str, JSON]:
        """The operation as the platform's JSON.

        >>> from metaops import Delete
        >>> Delete("x").to_wire()
        {'type': 'delete', 'key': 'x'}
        """
        return {"type": Delete.wire_type, "key": self.key}

    def __eq__(self, other: object) -> bool:
        if type(other) is not Delete:
            return NotImplemented
        assert isinstance(other, Delete)
        return self.key == other.key

    def __hash__(self) -> int:
        return hash((Delete.wire_type, self.key))

    def __repr__(self) -> str:
        return f"Delete(key={self.key!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Delete, (self.key,))


@dataclass(frozen=True, eq=False, repr=False, init=False)
class Update:
    """Replace the whole metadata with ``value`` (the documented ``replace``; wire type ``update``).

    >>> from metaops import Update, apply
    >>> apply({"a": 1}, [Update({"b": 2})]).metadata
    {'b': 2}
    """

    __slots__ = ("value",)
    wire_type: ClassVar[str] = "update"
    _method: ClassVar[str] = "replace"
    _keyed: ClassVar[bool] = False
    _value_role: ClassVar[ValueRole | None] = "stored"
    _writes: ClassVar[bool] = False
    _paths: ClassVar[bool] = False
    value: dict[str, JSON]

    def __init__(self, value: dict[str, Any]) -> None:
        _setattr(self, "value", _check_object(value, "update"))

    @classmethod
    def _trusted(cls, value: dict[str, JSON]) -> Update:
        self = object.__new__(cls)
        _setattr(self, "value", value)
        return self

    def to_wire(self) -> dict[str, JSON]:
        """The operation as the platform's JSON (the value is shared, not copied).

        >>> from metaops import Update
        >>> Update({"a": [1]}).to_wire()
        {'type': 'update', 'value': {'a': [1]}}
        """
        return {"type": Update.wire_type, "value": self.value}

    def __eq__(self, other: object) -> bool:
        if type(other) is not Update:
            return NotImplemented
        assert isinstance(other, Update)
        return json_equal(self.value, other.value)

    def __hash__(self) -> int:
        return hash((Update.wire_type, json_hash(self.value)))

    def __repr__(self) -> str:
        return f"Update(value={self.value!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Update, (self.value,))


Operation = Set | Delete | Append | Remove | Increment | Update
"""Any one run-metadata operation."""

WIRE_TYPES: Mapping[str, type[Operation]] = MappingProxyType(
    {cls.wire_type: cls for cls in (Set, Delete, Append, Remove, Increment, Update)}
)
"""The read-only table from wire type name to operation class: the one list of operations."""

OPERATION_CLASSES: frozenset[type] = frozenset(WIRE_TYPES.values())
"""The operation classes. Only their own instances are operations, not a subclass's:
``type(op) in OPERATION_CLASSES``."""

_CLASS_NAMES = ", ".join(cls.__name__ for cls in WIRE_TYPES.values())

_Fact = TypeVar("_Fact")


def per_operation(**by_wire_type: _Fact) -> dict[type, _Fact]:
    """A table from each operation class to ``by_wire_type[its wire type]``, for ``table[type(op)]``.

    Every operation must have its entry: a new operation class cannot be left out of
    a table built this way without the module failing to import.
    """
    if by_wire_type.keys() != WIRE_TYPES.keys():
        missing = sorted(WIRE_TYPES.keys() - by_wire_type.keys())
        extra = sorted(by_wire_type.keys() - WIRE_TYPES.keys())
        msg = f"per_operation: missing {missing}, unknown {extra}"
        raise TypeError(msg)
    return {cls: by_wire_type[name] for name, cls in WIRE_TYPES.items()}


def call_text(op: Operation) -> str:
    """How the user's call reads in an error message: ``set('key')``, ``replace(...)``.

    Without the value, which may be large; a long key is cut short.
    """
    if not op._keyed:
        return f"{op._method}(...)"
    return f"{op._method}({shown_key(op.key)})"  # type: ignore[union-attr]


def decrement(key: str, n: int | float = 1) -> Increment:
    """The operation for ``metadata.decrement(key, n)``: an increment by ``-n``.

    >>> from metaops import decrement
    >>> decrement("stock", 2)
    Increment(key='stock', value=-2)
    """
    if not is_number(n):
        msg = f"decrement: n must be a number (int or float, not bool), got {describe(n)}"
        raise InvalidValueError(msg, "n")
    _check_value(n, "decrement", "n")
    return Increment(key, -n)


def iterate_operations(ops: object, function: str, *, one: bool = False) -> Iterator[Any]:
    """An iterator over the batch ``ops``; :class:`InvalidValueError` naming ``function`` when it is none.

    A wire dict, a string or bytes are refused whole (iterating them would give keys
    or characters); each item is then checked by the caller, with
    :func:`not_an_operation` for the error. ``one`` says ``function`` also takes a
    single operation (which the caller handles before).
    """
    if isinstance(ops, dict):
        msg = f"{function}: ops must be operations, got a dict; parse wire dicts with parse_operations"
        raise InvalidValueError(msg, "ops")
    if not isinstance(ops, (str, bytes, bytearray)):
        try:
            return iter(ops)  # type: ignore[call-overload,no-any-return]
        except TypeError:
            pass
    expected = "an operation or an iterable of operations" if one else "an iterable of operations"
    msg = f"{function}: ops must be {expected}, got {describe(ops)}"
    raise InvalidValueError(msg, "ops")


def not_an_operation(function: str, index: int, item: object) -> InvalidValueError:
    """The error for ``item``, at ``index`` of a batch given to ``function``, which is no operation."""
    msg = (
        f"{function}: operation {index} is {describe(item)}, not an operation "
        f"({_CLASS_NAMES}); parse wire dicts with parse_operations"
    )
    return InvalidValueError(msg, f"ops[{index}]")


_WIRE_HINTS = {
    "decrement": " (a decrement travels as an increment by the negative amount)",
    "del": " (the wire name is 'delete')",
    **{
        cls._method: f" ({cls._method} travels as type {cls.wire_type!r})"
        for cls in WIRE_TYPES.values()
        if cls._method != cls.wire_type
    },
}


def _where(index: int | None) -> str:
    return "operation" if index is None else f"operation {index}"


def _invalid(index: int | None, field: str | None, expected: str, got: object) -> InvalidOperationError:
    place = _where(index) if field is None else f"{_where(index)}: field {field!r}"
    got_text = "nothing (the field is missing)" if got is _ABSENT else describe_json(got)
    return InvalidOperationError(f"{place}: expected {expected}, got {got_text}", index=index, field=field)


_ABSENT = object()


def parse_operation(obj: object, *, safe_keys: bool = True) -> Operation:
    """One operation from its wire form, accepting exactly what the reference schema accepts.

    Unknown fields are ignored; ``delete`` ignores ``value`` and ``update`` ignores
    ``key``. Anything else raises :class:`InvalidOperationError` naming the field,
    what was expected and what came. ``safe_keys=False`` skips only the unsafe-key
    check (``apply`` then reports such operations unapplied).

    >>> from metaops import parse_operation
    >>> parse_operation({"type": "increment", "key": "n", "value": 2})
    Increment(key='n', value=2)
    """
    return _parse(obj, safe_keys, None)


def _parse(obj: object, safe_keys: bool, index: int | None) -> Operation:
    if not isinstance(obj, dict):
        raise _invalid(index, None, "an object with a 'type' field", obj)
    kind = obj.get("type", _ABSENT)
    cls = WIRE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        expected = "one of " + ", ".join(repr(name) for name in WIRE_TYPES)
        if isinstance(kind, str):
            expected += _WIRE_HINTS.get(kind, "")
        raise _invalid(index, "type", expected, kind)
    value = obj.get("value", _ABSENT)
    if not cls._keyed:
        # Its value is the whole metadata.
        if not isinstance(value, dict):
            raise _invalid(index, "value", "an object (the whole metadata)", value)
        return Update._trusted(_wire_value(value, index, metadata=True))  # type: ignore[arg-type]
    key = obj.get("key", _ABSENT)
    if not isinstance(key, str):
        raise _invalid(index, "key", "a string", key)
    if safe_keys and not is_safe_key(key):
        msg = (
            f"{_where(index)}: field 'key': expected a safe key, got {shown_key(key)}: a key may not "
            "reference __proto__, constructor or prototype, and a '$.' path must name "
            "something below '$'"
        )
        raise InvalidOperationError(msg, index=index, field="key")
    key = str.__str__(key)
    role = cls._value_role
    if role is None:
        return cls._trusted(key)  # type: ignore[arg-type,call-arg]
    if role == "amount":
        if not is_number(value) or not math.isfinite(to_double(value)):
            raise _invalid(index, "value", "a finite number (not a boolean)", value)
    elif value is _ABSENT:
        raise _invalid(index, "value", "a JSON value (null is allowed)", value)
    return cls._trusted(key, _wire_value(value, index))  # type: ignore[arg-type,call-arg]


def _wire_value(value: object, index: int | None, *, metadata: bool = False) -> JSON:
    try:
        return normalize(value, "value", wire=True, metadata=metadata)
    except InvalidValueError as error:
        msg = f"{_where(index)}: field 'value': expected a JSON value, but {error}"
        raise InvalidOperationError(msg, index=index, field="value") from None


def parse_operations(objs: Iterable[object], *, safe_keys: bool = True) -> tuple[Operation, ...]:
    """A batch of operations from their wire form (a JSON array).

    The first invalid operation raises :class:`InvalidOperationError` with its index.

    >>> from metaops import parse_operations
    >>> parse_operations([{"type": "set", "key": "a", "value": 1}, {"type": "delete", "key": "b"}])
    (Set(key='a', value=1), Delete(key='b'))
    """
    if isinstance(objs, (str, bytes, dict)) or not isinstance(objs, Iterable):
        msg = f"operations: expected a list of operations, got {describe_json(objs)}"
        raise InvalidOperationError(msg)
    return tuple(_parse(obj, safe_keys, i) for i, obj in enumerate(objs))
