"""The exceptions metaops raises.

Each also inherits the built-in exception a caller would catch without knowing
metaops, so ``except ValueError`` and ``except TypeError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "FlushInFlightError",
    "InvalidArgumentError",
    "InvalidLimitError",
    "InvalidOperationError",
    "InvalidRequestError",
    "InvalidValueError",
    "MetadataTooLargeError",
    "MetaopsError",
    "ReadOnlyError",
]


class MetaopsError(Exception):
    """Base class of every error metaops raises on purpose.

    >>> from metaops import MetaopsError, parse_operation
    >>> try:
    ...     parse_operation({"type": "inc"})
    ... except MetaopsError as error:
    ...     print(type(error).__name__, isinstance(error, ValueError))
    InvalidOperationError True
    """


class InvalidValueError(MetaopsError, TypeError):
    """An argument of the wrong type: most often, an operation built from one.

    Raised when a value is not JSON (a ``set``, an arbitrary object, a non-``str``
    dict key, NaN or infinity, a naive ``datetime``, containers nested deeper than
    ``MAX_DEPTH`` = 256 levels), when a key is not a ``str``,
    when an increment is not a number, or when a replacement is not a dict.
    ``where`` names the argument and the place inside it, e.g. ``value["a"][2]``.

    >>> from metaops import InvalidValueError, Set
    >>> try:
    ...     Set("tags", {"a", "b"})
    ... except InvalidValueError as error:
    ...     print(error, "|", error.where, "|", isinstance(error, TypeError))
    set: value is a set, not a JSON value | value | True
    """

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class InvalidArgumentError(MetaopsError, ValueError):
    """An argument of the right type but a value metaops cannot take.

    A count below its minimum, a batch handed back to something that did not give it
    out, a retry policy with a negative delay: the message names the argument and
    what was expected.

    >>> from metaops import InvalidArgumentError
    >>> issubclass(InvalidArgumentError, ValueError)
    True
    """


class InvalidOperationError(MetaopsError, ValueError):
    """A wire operation is not one the reference schema accepts.

    ``index`` is the operation's position in the batch (``None`` for a single
    operation) and ``field`` the field at fault (``None`` when the whole operation
    is malformed). The message names both, what was expected and what came.

    >>> from metaops import InvalidOperationError, parse_operations
    >>> try:
    ...     parse_operations([{"type": "set", "key": "a", "value": 1}, {"type": "increment", "key": "n"}])
    ... except InvalidOperationError as error:
    ...     print(error.index, error.field)
    1 value
    """

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.field = field


class MetadataTooLargeError(MetaopsError, ValueError):
    """Metadata (or a request body) is larger than the limit allows.

    ``size`` is the JSON size in bytes and ``limit`` the largest size allowed.

    >>> from metaops import MetadataTooLargeError, check_size
    >>> try:
    ...     check_size({"log": "x" * 100}, limit=64)
    ... except MetadataTooLargeError as error:
    ...     print(error.size, error.limit)
    110 64
    """

    def __init__(self, size: int, limit: int, what: str = "metadata") -> None:
        super().__init__(f"{what} is {size:,} bytes of JSON, over the limit of {limit:,} bytes")
        self.size = size
        self.limit = limit
        self.what = what

    def __reduce__(self) -> tuple[type[MetadataTooLargeError], tuple[int, int, str]]:
        return (type(self), (self.size, self.limit, self.what))


class InvalidLimitError(MetaopsError, ValueError):
    """A size limit (an argument or ``TASK_RUN_METADATA_MAXIMUM_SIZE``) is malformed.

    >>> from metaops import InvalidLimitError, chunk
    >>> try:
    ...     chunk([], max_bytes=True)
    ... except InvalidLimitError as error:
    ...     print(isinstance(error, ValueError))
    True
    """


class InvalidRequestError(InvalidOperationError):
    """An update request body the platform's schema (``UpdateMetadataRequestBody``) refuses.

    ``section`` names the body field at fault (``"metadata"``, ``"operations"``,
    ``"parentOperations"``, ``"rootOperations"``), or is ``None`` when the body as a
    whole is wrong; ``index`` and ``field`` locate a bad operation inside a section,
    as in :class:`InvalidOperationError`, which this refines.

    >>> from metaops.server import parse_update_request
    >>> try:
    ...     parse_update_request({"operations": "nope"})
    ... except InvalidRequestError as error:
    ...     print(error.section, "/", error)
    operations / operations: expected a list of operations, got the string 'nope'
    """

    def __init__(
        self,
        message: str,
        *,
        section: str | None = None,
        index: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, index=index, field=field)
        self.section = section


class ReadOnlyError(MetaopsError, TypeError):
    """Something read-only was asked to change: a view of a buffer's metadata, most often.

    ``RunMetadata.current()`` and ``RunMetadata.get()`` hand out views that cannot
    change, so that nothing a caller does reaches the buffer's state behind its
    back. Their ``to_dict()`` and ``to_list()`` give mutable copies.

    >>> from metaops import ReadOnlyError, RunMetadata
    >>> logs = RunMetadata({"logs": ["a"]}).get("logs")
    >>> try:
    ...     logs.append("b")
    ... except ReadOnlyError as error:
    ...     print(error, "|", isinstance(error, TypeError))
    ListView is read-only: append() cannot change it; to_list() gives a mutable copy | True
    """


class FlushInFlightError(MetaopsError, RuntimeError):
    """A flush is out: it must be accepted or restored before the next one is drained.

    One flush at a time keeps the server applying batches in the order they were
    queued; two requests in flight at once could arrive in either order.
    """


# Shown, pickled and documented as metaops.X: the public home of every error.
for _error in (
    MetaopsError,
    InvalidValueError,
    InvalidArgumentError,
    InvalidOperationError,
    InvalidRequestError,
    MetadataTooLargeError,
    InvalidLimitError,
    FlushInFlightError,
    ReadOnlyError,
):
    _error.__module__ = "metaops"
