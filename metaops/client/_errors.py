"""The exceptions :mod:`metaops.client` raises; each also inherits the matching built-in."""

from __future__ import annotations

from metaops._errors import MetaopsError

__all__ = [
    "ClientClosedError",
    "MissingCredentialsError",
    "RequestRefusedError",
    "ServiceUnavailableError",
    "WrongEventLoopError",
]


class MissingCredentialsError(MetaopsError, ValueError):
    """A client was made without the service's URL or without an access token.

    ``missing`` names what is missing: the arguments and their environment variables.

    >>> from metaops.client import MissingCredentialsError
    >>> issubclass(MissingCredentialsError, ValueError)
    True
    """

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing

    def __reduce__(self) -> tuple[type[MissingCredentialsError], tuple[str, tuple[str, ...]]]:
        return (type(self), (str(self), self.missing))


class ClientClosedError(MetaopsError, RuntimeError):
    """An update was made on a client that is closed: it would never be sent, so it is refused."""


class WrongEventLoopError(MetaopsError, RuntimeError):
    """An :class:`~metaops.client.AsyncMetadataClient` was awaited on an event loop other than
    its own (the one it started flushing on): its connections and its flushing task live
    there. Make a client for each event loop (each ``asyncio.run``)."""


class RequestRefusedError(MetaopsError, ValueError):
    """The service refused a request for good (400, 401, 403, 404, 413, ...): nothing was applied.

    ``status`` is the HTTP status and ``message`` the service's ``error``. When
    :meth:`~metaops.client.MetadataClient.flush` raises it, ``rejected`` holds the
    flushes it set aside (they are also in the client's ``rejected``).
    """

    def __init__(self, message: str, status: int, rejected: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.rejected = rejected

    def __reduce__(self) -> tuple[type[RequestRefusedError], tuple[str, int, tuple[object, ...]]]:
        return (type(self), (str(self), self.status, self.rejected))


class ServiceUnavailableError(MetaopsError, ConnectionError):
    """A request's retries were spent without an answer the client could use.

    Connection errors, timeouts, 408, 429 and 5xx answers are retried; this is
    raised after the last attempt. Nothing is lost: a flush that failed stays
    queued (or held, when it may have been applied) and is sent again later.
    ``attempts`` is how many requests were made, ``last`` describes the last failure.
    """

    def __init__(self, message: str, attempts: int = 0, last: str = "") -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last = last

    def __reduce__(self) -> tuple[type[ServiceUnavailableError], tuple[str, int, str]]:
        return (type(self), (str(self), self.attempts, self.last))


for _error in (
    MissingCredentialsError,
    ClientClosedError,
    RequestRefusedError,
    ServiceUnavailableError,
    WrongEventLoopError,
):
    _error.__module__ = "metaops.client"
