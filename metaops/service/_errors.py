"""The errors the service raises: each a :class:`metaops.MetaopsError` and the matching built-in."""

from __future__ import annotations

from metaops._errors import MetaopsError

__all__ = [
    "RunCompletedError",
    "RunExistsError",
    "RunNotFoundError",
    "ServiceClosingError",
    "StorageError",
]


class RunNotFoundError(MetaopsError, LookupError):
    """No run has this id (answered 404 ``Task Run not found``). ``run_id`` is the id looked for."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class RunExistsError(MetaopsError, ValueError):
    """A run with this id already exists (answered 400)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} already exists")
        self.run_id = run_id


class RunCompletedError(MetaopsError, ValueError):
    """The run completed longer ago than the window in which it takes updates (answered 400)."""


class ServiceClosingError(MetaopsError, RuntimeError):
    """The service is shutting down and takes no new work (answered 503, nothing done)."""


class StorageError(MetaopsError, RuntimeError):
    """The database failed or stayed busy: what it was part of did not commit, or may not have.

    Answered 503: the client retries with the same idempotency key.
    """


for _error in (RunCompletedError, RunExistsError, RunNotFoundError, ServiceClosingError, StorageError):
    _error.__module__ = "metaops.service"
