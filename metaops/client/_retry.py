"""Which answers are retried, and how long to wait before the next attempt (written once)."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from metaops._errors import InvalidArgumentError, InvalidValueError
from metaops._json import describe

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "is_retryable", "retry_after"]

RETRYABLE_STATUSES = frozenset({408, 429})
"""Besides every 5xx: a stalled request and a rate limit. The outcome of each is unknown."""


def is_retryable(status: int) -> bool:
    """Whether an answer with ``status`` is worth another attempt (408, 429, 5xx).

    Every other non-2xx answer is a refusal: the service looked at the request and
    will give the same answer again.

    >>> [is_retryable(status) for status in (400, 408, 413, 429, 500, 503)]
    [False, True, False, True, True, True]
    """
    return status >= 500 or status in RETRYABLE_STATUSES


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a request is tried and how long the client waits between tries.

    ``attempts`` bounds the requests made for one body in one flush (the first
    included). Before retry ``k`` (0-based) the client waits a random time in
    ``[0, min(max_delay, initial_delay * 2**k)]`` ("full jitter": clients that
    failed together spread out), or what the answer's ``Retry-After`` asks, up to
    ``max_retry_after`` seconds.

    >>> policy = RetryPolicy(initial_delay=0.5, max_delay=4.0)
    >>> [policy.delay(k, random=lambda: 1.0) for k in range(5)]
    [0.5, 1.0, 2.0, 4.0, 4.0]
    >>> policy.delay(0, random=lambda: 1.0, retry_after=3.0)
    3.0
    """

    attempts: int = 5
    initial_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        attempts = self.attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            msg = f"RetryPolicy: attempts must be an int, got {describe(attempts)}"
            raise InvalidValueError(msg, "attempts")
        if attempts < 1:
            msg = f"RetryPolicy: attempts must be an int >= 1, got {attempts}"
            raise InvalidArgumentError(msg)
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                msg = f"RetryPolicy: {name} must be a number of seconds, got {describe(value)}"
                raise InvalidValueError(msg, name)
            if not 0 <= value < math.inf:
                msg = f"RetryPolicy: {name} must be a finite number of seconds >= 0, got {value!r}"
                raise InvalidArgumentError(msg)

    def delay(self, retry: int, random: Callable[[], float], retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        # 2**retry overflows a float past about 1,000 retries; the cap is reached long before.
        ceiling = self.max_delay if retry > 60 else min(self.max_delay, self.initial_delay * 2.0**retry)
        return random() * ceiling


def retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds (``None`` if absent or unreadable).

    Both forms are read: delay-seconds and an HTTP date.

    >>> retry_after({"retry-after": "2"}), retry_after({}), retry_after({"retry-after": "soon"})
    (2.0, None, None)
    >>> retry_after({"retry-after": "Thu, 01 Jan 1970 00:00:10 GMT"}, now=lambda: 4.0)
    6.0
    """
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isascii() and raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now())
