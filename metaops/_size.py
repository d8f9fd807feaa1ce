"""Exact JSON size: the UTF-8 byte length of JavaScript's ``JSON.stringify``.

The C ``json`` encoder does the walk; what JavaScript writes differently is then
found in the encoded bytes and corrected, so no Python code visits the value:

* numbers: Python writes ``5.0``, ``1e-05``, ``1e+16``, ``-0.0``, ``Infinity``
  and exact ints past 2**53 where JavaScript writes ``5``, ``0.00001``,
  ``10000000000000000``, ``0``, ``null`` and the nearest double;
* lone surrogates: JavaScript escapes them (``\\udXXX``, six bytes).

To tell a number from digits inside a string without tracking quotes, the encoder
writes a NUL after every ``,`` and ``:`` separator. A raw NUL never occurs inside
an encoded string (it is written ``\\u0000``), so a token right after a NUL is
structural; the NULs are subtracted from the length afterwards.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime

from metaops._errors import InvalidLimitError, InvalidValueError, MetadataTooLargeError
from metaops._json import MAX_EXACT_INT, MIN_EXACT_INT, as_js_number, describe, js_iso_string, to_double

__all__ = [
    "DEFAULT_LIMIT",
    "LIMIT_ENV",
    "check_size",
    "js_number",
    "json_size",
    "json_text",
    "metadata_limit",
    "value_size",
]

DEFAULT_LIMIT = 262_144
"""The documented metadata limit: 256 KB."""
LIMIT_ENV = "TASK_RUN_METADATA_MAXIMUM_SIZE"
"""The environment variable a self-hosted platform sets its limit with (bytes)."""


class _NotJSON(Exception):
    """Raised by the encoder's ``default`` hook: the caller names its function in the error."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value


def _default(value: object) -> object:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return js_iso_string(value)
    raise _NotJSON(value)


def _encoder(*, allow_nan: bool, ascii: bool = False) -> json.JSONEncoder:
    return json.JSONEncoder(
        ensure_ascii=ascii,
        check_circular=False,
        allow_nan=allow_nan,
        separators=(",\x00", ":\x00"),
        default=_default,
    )


_FINITE = _encoder(allow_nan=False)
_ANY = _encoder(allow_nan=True)
_FINITE_ASCII = _encoder(allow_nan=False, ascii=True)
_ANY_ASCII = _encoder(allow_nan=True, ascii=True)

# Byte classes for the candidate search: digits become "0", the characters that can
# end a number token become "]", "e" becomes "e", signs become "+".
_CLASSES = bytearray(b"x" * 256)
for _digit in b"0123456789":
    _CLASSES[_digit] = ord("0")
for _end in b",]}\x00":
    _CLASSES[_end] = ord("]")
_CLASSES[ord(".")] = ord(".")
_CLASSES[ord("e")] = ord("e")
_CLASSES[ord("+")] = _CLASSES[ord("-")] = ord("+")
_CLASS_TABLE = bytes(_CLASSES)
# Every number token whose JavaScript text can differ in length contains one of:
# an integral float's ".0" before its end, an exponent sign ("1e-05"), or a run of
# 16 digits (an int past 2**53, which JavaScript holds as a double, or a float's digits).
_INTEGRAL = re.compile(rb"\.0[,\]}]")  # a regex with a literal prefix outruns bytes.find here
_SIGN = b"+"
_EXPONENT_SIGN = b"0e+"
_LONG_RUN = b"0" * 16
# A sign is usually a dash inside a string; past this many such hits, search for the
# longer "digit, e, sign" needle instead of stopping at every dash.
_SIGN_MISSES = 64
# Bytes a number token is made of become "0", every other byte "x": the run around a
# candidate is then found by bytes.rfind and bytes.find, in C.
_RUN_TABLE = bytes(0x30 if byte in b"0123456789.eE+-" else 0x78 for byte in range(256))
_NUMBER_STARTS = frozenset(b"-0123456789")
_SPECIALS = re.compile(rb"-?Infinity|NaN")
_SURROGATES = re.compile("[\ud800-\udbff][\udc00-\udfff]|[\ud800-\udfff]")


def js_number(value: int | float) -> str:
    """The text JavaScript's ``Number.prototype.toString`` writes for ``value``.

    Ints are first rounded to the nearest double, as JavaScript holds them.

    >>> js_number(5.0), js_number(1e21), js_number(1e-7), js_number(0.000001), js_number(-0.0)
    ('5', '1e+21', '1e-7', '0.000001', '0')
    """
    number = to_double(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    # repr gives the shortest round-trip digits, which is what ECMAScript prints too.
    text = repr(abs(number))
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # n: the position of the decimal point relative to the digits (value = 0.digits * 10**n).
    n = len(whole) + int(exponent or 0) if whole != "0" else -(len(fraction) - len(fraction.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * -n + digits
    else:
        e = n - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + out


def _structural(data: bytes, start: int) -> bool:
    """Whether a token starting at ``start`` is outside every string.

    It is when it starts the text or follows a NUL-marked separator, possibly with
    ``[`` characters in between (anything else there means a string opened).
    """
    i = start - 1
    while i >= 0 and data[i] == 0x5B:  # "["
        i -= 1
    return i < 0 or data[i] == 0


class _Tokens:
    """The structural number tokens found around candidate positions of ``data``.

    Each candidate is looked at through the run of number bytes around it; a search
    resumes past the run it last looked at, so no byte is walked twice by one search
    and the cost stays linear in ``data`` however the candidates cluster.
    """

    __slots__ = ("data", "found", "runs")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.runs: bytes | None = None  # translated on the first candidate
        self.found: dict[int, int] = {}  # start -> end of every structural token seen

    def around(self, position: int) -> int:
        """Record the token whose run holds ``position`` if it is structural; the run's end."""
        runs = self.runs
        if runs is None:
            runs = self.runs = self.data.translate(_RUN_TABLE)
        start = runs.rfind(b"x", 0, position) + 1
        end = runs.find(b"x", position)
        if end == -1:
            end = len(runs)
        if self.data[start] in _NUMBER_STARTS and _structural(self.data, start):
            self.found[start] = end
        return max(end, position + 1)

    def long_runs(self, classes: bytes) -> None:
        """Look at every run of 16 digits or more (an int past 2**53, or a float's digits)."""
        position = classes.find(_LONG_RUN)
        while position != -1:
            position = classes.find(_LONG_RUN, self.around(position))


def _number_tokens(data: bytes, special: bool) -> list[tuple[int, int]]:
    """``(start, end)`` of every number token whose JavaScript text may differ, in order."""
    classes = data.translate(_CLASS_TABLE)
    tokens = _Tokens(data)
    # Single-byte and long needles are the fast ones for bytes.find; each hit is
    # first checked on a byte or two before the token is looked at.
    done = 0
    for found in _INTEGRAL.finditer(data):
        if found.start() >= done:
            done = tokens.around(found.start())
    done = misses = 0
    position = classes.find(_SIGN)
    while position != -1:
        if position < done:
            pass
        elif position > 1 and classes[position - 1] == 0x65 and classes[position - 2] == 0x30:
            done = tokens.around(position)
        else:
            misses += 1
            if misses > _SIGN_MISSES:
                position = classes.find(_EXPONENT_SIGN, max(position, done))
                while position != -1:
                    done = tokens.around(position + 2)
                    position = classes.find(_EXPONENT_SIGN, done)
                break
        position = classes.find(_SIGN, max(position + 1, done))
    tokens.long_runs(classes)
    spans = sorted(tokens.found.items())
    if special:
        spans.extend(
            (found.start(), found.end())
            for found in _SPECIALS.finditer(data)
            if _structural(data, found.start())
        )
        spans.sort()
    return spans


def _js_token(token: bytes) -> bytes:
    """What JavaScript writes for the number Python wrote as ``token`` (``null`` if not finite)."""
    text = token.decode("ascii")
    if text in ("NaN", "Infinity", "-Infinity"):
        return b"null"
    number: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    written = js_number(number)
    return b"null" if written in ("NaN", "Infinity", "-Infinity") else written.encode("ascii")


def _double_token(token: bytes) -> bytes | None:
    """For an int token past 2**53, the double JavaScript holds, as Python spells it."""
    if any(c in token for c in b".eE"):
        return None  # a float: already a double, spelled exactly
    number = int(token)
    if -MAX_EXACT_INT <= number <= MAX_EXACT_INT:
        return None
    double = to_double(number)
    return repr(double).encode("ascii") if math.isfinite(double) else b"null"


def _as_doubles(value: object) -> object:
    """``value`` with every int past 2**53 replaced by the double JavaScript holds."""
    if isinstance(value, int) and not isinstance(value, bool):
        return as_js_number(int(value))
    if isinstance(value, dict):
        return {key: _as_doubles(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_doubles(item) for item in value]
    return value


def _encode(value: object, *, ascii: bool = False) -> tuple[str, bool]:
    """The C encoder's text with NUL-marked separators, and whether it may hold NaN/Infinity.

    What is not JSON raises :class:`InvalidValueError`. (json_size and json_text share
    this: the message names the value, and neither function.)
    """
    finite, anything = (_FINITE_ASCII, _ANY_ASCII) if ascii else (_FINITE, _ANY)
    try:
        try:
            return finite.encode(value), False
        except ValueError:
            pass  # a non-finite float, or an int too long to write
        try:
            return anything.encode(value), True
        except ValueError:
            # An int of thousands of digits, which CPython will not write in decimal;
            # JavaScript holds it as a double (or Infinity), and so is it measured.
            return anything.encode(_as_doubles(value)), True
    except RecursionError:
        msg = "the value is nested too deeply to write as JSON (or contains itself)"
        raise InvalidValueError(msg, "value") from None
    except _NotJSON as error:
        msg = f"the value holds {describe(error.value)}, which is not a JSON value"
        raise InvalidValueError(msg, "value") from None
    except (TypeError, ValueError) as error:
        msg = f"the value is not JSON: {error}"
        raise InvalidValueError(msg, "value") from None


def json_size(value: object) -> int:
    """The UTF-8 byte length of JavaScript's ``JSON.stringify(value)``.

    Compact separators, non-ASCII written raw, lone surrogates escaped, numbers
    as JavaScript writes them (an int past 2**53 as the double it holds), non-finite
    numbers as ``null``. What is not JSON raises :class:`InvalidValueError`.

    >>> from metaops import json_size
    >>> json_size({"progress": 1.0, "note": "日本語"})
    33
    >>> json_size(2**1023)  # JavaScript writes 8.98846567431158e+307
    21
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A bare number has no separator after it; measure it directly.
        written = js_number(value)
        return 4 if written in ("NaN", "Infinity", "-Infinity") else len(written)  # null
    text, special = _encode(value)
    try:
        data = text.encode("utf-8")
        delta = 0
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
        delta = _surrogate_corrections(text)
    separators = text.count("\x00")
    for start, end in _number_tokens(data, special):
        delta += len(_js_token(data[start:end])) - (end - start)
    return len(data) - separators + delta


def json_text(value: object, *, ascii: bool = False) -> str:
    """Compact JSON text of ``value`` that every JSON parser reads back as the value JavaScript reads.

    Numbers keep Python's spelling, which is exact for JavaScript and Python alike
    (JavaScript's own spelling of ``5.311084116861613e+16``, ``53110841168616130``,
    reads back in Python as a different int). An int past 2**53 is written as the
    double JavaScript holds (``2**1023`` as ``8.98846567431158e+307``, not its 308
    digits). As ``JSON.stringify`` does, non-finite numbers are written ``null`` and
    lone surrogates as ``\\udXXX`` escapes, so the text always encodes as UTF-8.
    ``ascii=True`` escapes every non-ASCII character. Its byte length can differ
    from :func:`json_size` only in how numbers are spelled (``1.0`` for ``1``,
    ``1e+16`` for ``10000000000000000``): a few bytes a number. What is not JSON
    raises :class:`InvalidValueError`.

    >>> json_text({"progress": 1.5, "n": float("inf"), "s": "\\ud800", "big": 2**60})
    '{"progress":1.5,"n":null,"s":"\\\\ud800","big":1.152921504606847e+18}'
    """
    text, special = _encode(value, ascii=ascii)
    try:
        data = text.encode("utf-8")
        surrogates = False
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
        surrogates = True
    classes = data.translate(_CLASS_TABLE)
    replaced: list[tuple[int, int, bytes]] = []
    if classes.find(_LONG_RUN) != -1:
        tokens = _Tokens(data)
        tokens.long_runs(classes)
        for start, end in tokens.found.items():
            double = _double_token(data[start:end])
            if double is not None:
                replaced.append((start, end, double))
    if special:
        replaced.extend(
            (found.start(), found.end(), b"null")
            for found in _SPECIALS.finditer(data)
            if _structural(data, found.start())
        )
    if replaced:
        replaced.sort()
        pieces = []
        done = 0
        for start, end, written in replaced:
            pieces.append(data[done:start])
            pieces.append(written)
            done = end
        pieces.append(data[done:])
        text = b"".join(pieces).decode("utf-8", "surrogatepass")
    text = text.replace("\x00", "")
    if surrogates:
        text = _SURROGATES.sub(_js_surrogate, text)
    return text


def _js_surrogate(found: re.Match[str]) -> str:
    text = found.group()
    if len(text) == 2:  # a pair held as two code points: JavaScript reads one character
        return chr(0x10000 + ((ord(text[0]) - 0xD800) << 10) + (ord(text[1]) - 0xDC00))
    return f"\\u{ord(text):04x}"


def _surrogate_corrections(text: str) -> int:
    """Bytes JavaScript writes beyond what UTF-8 with ``surrogatepass`` gives."""
    delta = 0
    for found in _SURROGATES.finditer(text):
        # A pair is one astral character (4 bytes, not 3 + 3); a lone one is "\\udXXX".
        delta += -2 if len(found.group()) == 2 else 3
    return delta


_encode_string = json.encoder.encode_basestring  # the C version where available


# Containers up to this many items are measured item by item in Python; larger ones
# go to the C encoder, which wins once its fixed cost is spread over enough items.
_SMALL_CONTAINER = 12


def value_size(value: object) -> int:
    """:func:`json_size`, with fast paths for what an update usually writes.

    Scalars and small containers (a progress object, a short list) are measured
    without a round trip through the encoder.

    >>> value_size({"step": 3, "total": 10, "percentage": 30.0}), value_size(["a", None])
    (37, 10)
    """
    kind = type(value)
    if kind is str:
        if value.isascii():  # type: ignore[attr-defined]
            return len(_encode_string(value))  # type: ignore[arg-type]
        return json_size(value)
    if kind is int:
        return len(str(value)) if MIN_EXACT_INT <= value <= MAX_EXACT_INT else json_size(value)  # type: ignore[operator]
    if kind is bool:
        return 4 if value else 5
    if value is None:
        return 4
    if kind is float:
        text = repr(value)
        if "e" in text or "n" in text or value == 0:  # exponent, inf, nan, -0.0: JavaScript differs
            return json_size(value)
        # Fixed notation: the same digits in both languages, without Python's ".0".
        return len(text) - 2 if text.endswith(".0") else len(text)
    if kind is dict:
        entries: dict[object, object] = value  # type: ignore[assignment]
        if len(entries) <= _SMALL_CONTAINER:
            if not entries:
                return 2
            size = 1 + len(entries)  # the braces, and a colon per entry less the commas
            for key, item in entries.items():
                if type(key) is not str:
                    return json_size(value)
                # (The str case of value_size, inline: keys are measured on every write.)
                size += len(_encode_string(key)) if key.isascii() else json_size(key)
                size += value_size(item) + 1
            return size
    if kind is list:
        items: list[object] = value  # type: ignore[assignment]
        if len(items) <= _SMALL_CONTAINER:
            if not items:
                return 2
            return 1 + len(items) + sum(value_size(item) for item in items)
    return json_size(value)


def metadata_limit(limit: int | None = None) -> int:
    """The metadata size limit in bytes: ``limit``, else the environment, else 256 KB.

    A malformed ``TASK_RUN_METADATA_MAXIMUM_SIZE`` raises :class:`InvalidLimitError`
    instead of falling back silently.

    >>> from metaops import metadata_limit
    >>> metadata_limit(1_000)
    1000
    >>> metadata_limit(-1)
    Traceback (most recent call last):
    ...
    metaops.InvalidLimitError: limit must be a non-negative int of bytes, got -1
    """
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            msg = f"limit must be a non-negative int of bytes, got {describe(limit)}"
            raise InvalidLimitError(msg)
        return limit
    raw = os.environ.get(LIMIT_ENV)
    if raw is None:
        return DEFAULT_LIMIT
    text = raw.strip()
    if not text.isascii() or not text.isdigit():
        msg = f"{LIMIT_ENV}={raw!r} is not a whole number of bytes (e.g. {LIMIT_ENV}=262144)"
        raise InvalidLimitError(msg)
    return int(text)


def check_size(metadata: object, limit: int | None = None) -> int:
    """The JSON size of ``metadata``; :class:`MetadataTooLargeError` when it is over the limit.

    >>> from metaops import check_size
    >>> check_size({"a": 1})
    7
    >>> check_size({"a": "x" * 100}, limit=64)
    Traceback (most recent call last):
    ...
    metaops.MetadataTooLargeError: metadata is 108 bytes of JSON, over the limit of 64 bytes
    """
    allowed = metadata_limit(limit)
    size = json_size(metadata)
    if size > allowed:
        raise MetadataTooLargeError(size, allowed)
    return size
