"""The update methods' arguments: checked, and copied when they must be, quickly when they can be.

The buffer builds operations with the operation classes' ``_trusted`` constructors
from parts checked here. The common arguments take a fast path with no walk: a str
key already found safe, a scalar, a small flat dict or list of scalars, a view the
buffer handed out (its container never changes, so it is shared). Anything else
goes through :func:`metaops._json.normalize`, which copies it and says what is
wrong, so the fast paths decide only what normalize would keep exactly as it is.

Each error names the call (``set``, ``parent.append``, ...) and the argument.
"""

from __future__ import annotations

import json

from metaops._errors import InvalidOperationError, InvalidValueError
from metaops._json import (
    JSON,
    MAX_EXACT_INT,
    MAX_METADATA_DEPTH,
    MIN_EXACT_INT,
    describe,
    normalize,
    shown_key,
)
from metaops._paths import is_safe_key
from metaops._views import DictView, ListView

__all__ = [
    "checked_amount",
    "checked_key",
    "checked_metadata",
    "checked_value",
]


def _is_plain_scalar(value: object) -> bool:
    """Whether ``value`` is JSON as it is: a str, bool, None, exactly held int or finite float."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return MIN_EXACT_INT <= value <= MAX_EXACT_INT  # type: ignore[operator]
    # inf - inf and nan - nan are nan, never 0.0
    return kind is float and value - value == 0.0  # type: ignore[operator]


def _normalized(value: object, where: str, method: str, *, metadata: bool = False) -> JSON:
    """:func:`normalize`, its error naming the call."""
    try:
        return normalize(value, where, metadata=metadata)
    except InvalidValueError as error:
        msg = f"{method}: {error}"
        raise InvalidValueError(msg, error.where) from None


def checked_key(key: object, method: str) -> str:
    """``key`` if it is a safe str key; the error naming ``method`` otherwise.

    Callers first test ``type(key) is str and key in SAFE_KEYS`` themselves (a safe key
    met before, see :data:`metaops._paths.SAFE_KEYS`); checking a key keeps it there.
    """
    if not isinstance(key, str):
        msg = f"{method}: key must be a str, got {describe(key)}"
        raise InvalidValueError(msg, "key")
    key = str.__str__(key)
    if not is_safe_key(key):
        msg = (
            f"{method}: the key {shown_key(key)} is unsafe: a key may not reference __proto__, "
            "constructor or prototype, and a '$.' path must name something below '$'"
        )
        raise InvalidOperationError(msg, field="key")
    return key


def checked_value(value: object, method: str) -> JSON:
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
        # What a view shows is the buffer's, and never changes: the operation shares it.
        return value._data  # type: ignore[attr-defined,no-any-return]
    return _normalized(value, "value", method)


def checked_amount(value: object, method: str) -> int | float:
    """``value``, the argument ``n``, as an increment amount: a JSON number, not a bool."""
    kind = type(value)
    if kind is int:
        if MIN_EXACT_INT <= value <= MAX_EXACT_INT:  # type: ignore[operator]
            return value  # type: ignore[return-value]
    elif kind is float and value - value == 0.0:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{method}: n must be a number (int or float, not bool), got {describe(value)}"
        raise InvalidValueError(msg, "n")
    return _normalized(value, "n", method)  # type: ignore[return-value]


def checked_metadata(value: object, method: str) -> dict[str, JSON]:
    """``value`` as a whole metadata object (a replacement, a start, a server's answer).

    A view is shared; anything else is copied into fresh JSON. The copy goes through
    the C JSON codec, about twice as fast as normalize's walk. Whatever JSON would
    change (a non-str key, a tuple) makes the copy differ, and whatever it refuses
    (NaN, a datetime, a cycle) raises: normalize then converts or explains. So do
    metadata nested deeper than metadata may nest (``MAX_METADATA_DEPTH``, the depth
    ``apply`` keeps, so that whatever it produced can be given back) and ints a double
    does not hold exactly, which the codec would take.
    """
    if isinstance(value, DictView):
        return value._data
    if not isinstance(value, dict):
        msg = f"{method}: metadata must be a dict (the whole metadata), got {describe(value)}"
        raise InvalidValueError(msg, "metadata")
    try:
        text = _COPY_ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        return _normalized(value, "metadata", method, metadata=True)  # type: ignore[return-value]
    if not _copies_exactly(text):
        return _normalized(value, "metadata", method, metadata=True)  # type: ignore[return-value]
    copy = json.loads(text)
    if copy != value:
        return _normalized(value, "metadata", method, metadata=True)  # type: ignore[return-value]
    return copy  # type: ignore[no-any-return]


# ensure_ascii (the default) keeps the text ASCII, lone surrogates included.
_COPY_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))

# For the int check: digits become "0", the bytes before a value ("[", ":", ",") "(".
# An int token past 15 digits may be past 2**53; a float's digits run into "." or "e".
_NUMBER_CLASSES = bytes(
    ord("0") if byte in b"0123456789" else ord("(") if byte in b"[:," else byte if byte == ord("-") else 0
    for byte in range(256)
)
_LONG_INTS = (b"(" + b"0" * 16, b"(-" + b"0" * 16)
# For the depth check: quotes and brackets kept ("{" and "}" as "[" and "]"), the rest dropped.
_AS_SHAPE = bytes.maketrans(b"{}", b"[]")
_NOT_SHAPE = bytes(set(range(256)) - set(b'[]{}"'))


def _copies_exactly(text: str) -> bool:
    """Whether the C codec's ``text`` of metadata holds no long int and nests at most MAX_METADATA_DEPTH deep.

    Linear in the text, and all in C but for a loop over (rare) int tokens of 16 digits.
    """
    data = text.encode("ascii")
    classes = data.translate(_NUMBER_CLASSES)
    for needle in _LONG_INTS:
        found = classes.find(needle)
        while found != -1:
            end = found + len(needle)
            while classes[end] == 0x30:  # "0", a digit
                end += 1
            if data[end] in b"]},":  # the token ends: an int (a string's digits may pass too)
                return False
            found = classes.find(needle, end)
    if b'\\"' in data:
        # An escape is a backslash and one character: with the escaped backslashes gone,
        # each backslash-quote left is an escaped quote, which ends no string.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Strings are cut out of the shape. Two adjacent quotes enclose no bracket (a string
    # without any, or the separator between two strings): dropping them keeps every
    # other quote paired with its partner, and drops no bracket outside a string.
    shape = data.translate(_AS_SHAPE, _NOT_SHAPE).replace(b'""', b"")
    if b'"' in shape:
        shape = b"".join(shape.split(b'"')[::2])
    # Each pass removes the innermost pairs: one level of nesting.
    for _ in range(MAX_METADATA_DEPTH):
        if not shape:
            return True
        shape = shape.replace(b"[]", b"")
    return not shape
