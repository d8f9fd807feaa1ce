"""metaops: the operation algebra behind run metadata.

Operations (``set``, ``delete``, ``append``, ``remove``, ``increment`` and
``update``/replace) as immutable values; ``apply`` with copy-on-write; exact JSON
size as JavaScript measures it; the wire form the platform speaks.
"""

from metaops._apply import ApplyResult, apply
from metaops._collapse import MAX_REQUEST_BYTES, chunk, collapse, compose
from metaops._errors import (
    FlushInFlightError,
    InvalidArgumentError,
    InvalidLimitError,
    InvalidOperationError,
    InvalidRequestError,
    InvalidValueError,
    MetadataTooLargeError,
    MetaopsError,
    ReadOnlyError,
)
from metaops._json import JSON, MAX_DEPTH, json_equal
from metaops._paths import is_safe_key
from metaops._size import DEFAULT_LIMIT, check_size, json_size, json_text, metadata_limit
from metaops._values import (
    WIRE_TYPES,
    Append,
    Delete,
    Increment,
    Operation,
    Remove,
    Set,
    Update,
    decrement,
    parse_operation,
    parse_operations,
)
from metaops.buffer import Flush, RejectedFlush, RunMetadata

__all__ = [
    "DEFAULT_LIMIT",
    "JSON",
    "MAX_DEPTH",
    "MAX_REQUEST_BYTES",
    "WIRE_TYPES",
    "Append",
    "ApplyResult",
    "Delete",
    "Flush",
    "FlushInFlightError",
    "Increment",
    "InvalidArgumentError",
    "InvalidLimitError",
    "InvalidOperationError",
    "InvalidRequestError",
    "InvalidValueError",
    "MetadataTooLargeError",
    "MetaopsError",
    "Operation",
    "ReadOnlyError",
    "RejectedFlush",
    "Remove",
    "RunMetadata",
    "Set",
    "Update",
    "apply",
    "check_size",
    "chunk",
    "collapse",
    "compose",
    "decrement",
    "is_safe_key",
    "json_equal",
    "json_size",
    "json_text",
    "metadata_limit",
    "parse_operation",
    "parse_operations",
]

__version__ = "0.1.0"
