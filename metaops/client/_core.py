"""The transport core shared by the sync and async clients: written once, with no I/O.

Everything a flush decides lives here: the requests it builds, which failures it
retries and how long it waits, the ``Idempotency-Key`` of every request, and what
happens to a flush that failed. The steps are generators that *yield* effects
(:class:`Send` a request, :class:`Wait` some seconds) and receive their results
(:class:`Answer` or :class:`Failure`; for a wait, whether it was cut short). The
sync client drives them with ``httpx.Client`` and ``threading.Event.wait``, the
async one with ``httpx.AsyncClient`` and ``asyncio``; neither decides anything.

Exactly once
============

Every PUT carries an ``Idempotency-Key``, and the service applies a key at most
once per run (a repeat, whatever its body, applies nothing and answers the run's
current metadata with ``Idempotent-Replayed: true``). A body keeps its key across
every retry. The hazard is a body whose outcome is unknown: a timeout after
sending, a dropped connection, a 5xx or 429 (a proxy's answer cannot be told from
the service's), a lost response. Such a body may have been applied, so its
operations must never go out again under another key. The flush holding it stays
out of the buffer (it is *held*, not restored) until its outcome is known:

* nothing queued since: the same body is sent again with the same key, as a retry;
  either it is applied now, or it was before and the service replays;
* newer calls are queued (re-collapsing would change the content): the key is
  *fenced* first, with a PUT of that key and ``{"operations": []}``. Replayed: the
  body was applied, and the flush is accepted (its answer is the run's current
  metadata). Not replayed: the key is now spent with nothing applied (the old
  request, if it still arrives, is a no-op), so the flush goes back to the buffer
  (:meth:`~metaops.RunMetadata.restore`), collapses with the newer calls, and
  leaves under a new key.

A flush whose attempts all failed before anything could reach the service (the
connection was refused, no connection came free) is restored at once.

A service that ignores the key (the Trigger.dev platform does) still gets every
operation (nothing is dropped), but a body whose response was lost may then be
applied twice: at least once, not exactly once.

A refusal (400, 401, 403, 404, 413, any other 4xx) means nothing was applied. The
flush is set aside (:meth:`~metaops.RunMetadata.reject`) with the service's reason,
logged on the ``metaops.client`` logger, handed to the client's ``on_reject``
callback once the round is over, and kept in the client's ``rejected``.
"""

from __future__ import annotations

import json
import logging
import random as _random
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from metaops import __version__
from metaops._errors import MetaopsError
from metaops._json import JSON, describe
from metaops.buffer import Flush, RejectedFlush, RunMetadata
from metaops.client._errors import RequestRefusedError, ServiceUnavailableError
from metaops.client._retry import RetryPolicy, is_retryable, retry_after

__all__ = [
    "FENCE_BODY",
    "Answer",
    "Core",
    "Failure",
    "RoundResult",
    "Send",
    "Steps",
    "Wait",
    "error_message",
]

log = logging.getLogger("metaops.client")

FENCE_BODY = b'{"operations":[]}'
"""What a fence sends: applies nothing, and spends the key it carries."""

_T = TypeVar("_T")


# --------------------------------------------------------------------------- effects and results


@dataclass(frozen=True, slots=True)
class Send:
    """Make this request; answer with an :class:`Answer` or a :class:`Failure`."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    content: bytes | None
    timeout: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait this many seconds; answer whether the wait was cut short (the client is closing)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: its status, headers (names in lower case) and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(frozen=True, slots=True)
class Failure:
    """No answer came. ``reached`` is whether the request may have reached the service.

    False only when no connection was made (refused, connect timeout, no free
    connection in the pool): then nothing was sent.
    """

    error: str
    reached: bool


Steps = Generator["Send | Wait", Any, _T]


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class _Taken:
    metadata: dict[str, JSON]
    replayed: bool


@dataclass(frozen=True, slots=True)
class _Refused:
    status: int
    message: str

    @property
    def reason(self) -> str:
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Refused"
        return f"{self.status} {phrase}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Spent:
    attempts: int
    last: str
    interrupted: bool


@dataclass(slots=True)
class RoundResult:
    """What one flush round did: the flushes set aside, and the failure that ended it, if any."""

    rejected: list[RejectedFlush] = field(default_factory=list)
    # The status of the first refusal (what RequestRefusedError reports).
    status: int = 0
    failure: ServiceUnavailableError | None = None

    def raise_for_outcome(self) -> None:
        """Raise the failure, else a :class:`RequestRefusedError` for what was set aside."""
        if self.failure is not None:
            raise self.failure
        if self.rejected:
            first = self.rejected[0].reason
            message = f"the service refused {len(self.rejected)} flush(es), set aside; the first: {first}"
            raise RequestRefusedError(message, self.status, tuple(self.rejected))


@dataclass(slots=True)
class _Flight:
    """The flush out for delivery, one body at a time (each body has its own key)."""

    flush: Flush
    bodies: tuple[bytes, ...]
    key: str
    delivered: int = 0
    # Whether an attempt with ``key`` may have reached the service (then the body is
    # never re-collapsed under another key until a fence settles it).
    reached: bool = False
    metadata: dict[str, JSON] | None = None


def _new_key() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- the core


class Core:
    """One run's transport: the buffer, the flight out, and the steps that move them.

    Rounds must not overlap: each wrapper runs one at a time (a lock), and only
    rounds drain the buffer.
    """

    def __init__(
        self,
        run_id: str,
        buffer: RunMetadata,
        *,
        access_token: str,
        policy: RetryPolicy,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] | None = None,
        new_key: Callable[[], str] = _new_key,
    ) -> None:
        self.run_id = run_id
        self.buffer = buffer
        self.policy = policy
        self.timeout = timeout
        self.path = f"/api/v1/runs/{quote(run_id, safe='')}/metadata"
        self._headers = (
            ("authorization", f"Bearer {access_token}"),
            ("accept", "application/json"),
            ("user-agent", f"metaops/{__version__}"),
        )
        self._clock = clock
        self._random = random or _random.random
        self._new_key = new_key
        self._flight: _Flight | None = None
        self.requests = 0

    # ----------------------------------------------------------------- state

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing held: a round would send nothing."""
        return self._flight is None and not self.buffer.pending

    @property
    def held(self) -> Flush | None:
        """The flush kept out of the buffer because a body of it may have been applied."""
        flight = self._flight
        return flight.flush if flight is not None else None

    @property
    def rejected(self) -> tuple[RejectedFlush, ...]:
        return self.buffer.rejected

    # ----------------------------------------------------------------- steps

    def flush(self, deadline: float | None = None) -> Steps[RoundResult]:
        """One round: settle a held flush, then drain once and deliver what was drained.

        Everything queued before the round began is delivered, set aside, or (after
        the attempts are spent) back in the buffer or held, by the time it returns.
        """
        result = RoundResult()
        if self._flight is not None and self.buffer.pending:
            spent = yield from self._fence(deadline, result)
            if spent is not None:
                result.failure = self._failure(spent)
                return result
        drain = True
        while True:
            if self._flight is None:
                if not drain:
                    break
                drain = False
                flush = self.buffer.drain()
                if flush.unapplied:
                    log.warning(
                        "run %s: %d call(s) changed nothing and were not sent: %s",
                        self.run_id,
                        len(flush.unapplied),
                        ", ".join(repr(op) for op in flush.unapplied[:5]),
                    )
                if not flush:
                    break
                self._flight = _Flight(flush, tuple(t.encode() for t in flush.texts()), self._new_key())
            outcome = yield from self._deliver(deadline, result)
            if isinstance(outcome, _Spent):
                result.failure = self._failure(outcome)
                break
            if outcome == "requeued":
                # A refusal after some bodies went through: the rest is back in the
                # buffer. Bodies were delivered, so draining again makes progress.
                drain = True
        return result

    def retrieve(self, deadline: float | None = None) -> Steps[dict[str, JSON]]:
        """GET the run's metadata; raises what the request came to."""
        outcome = yield from self._request("GET", None, None, deadline)
        if isinstance(outcome, _Taken):
            return outcome.metadata
        if isinstance(outcome, _Refused):
            raise RequestRefusedError(f"GET {self.path}: {outcome.reason}", outcome.status)
        raise self._failure(outcome, what="retrieve")

    # ----------------------------------------------------------------- flight

    def _deliver(
        self, deadline: float | None, result: RoundResult
    ) -> Steps[_Spent | Literal["rejected", "requeued"] | None]:
        """Send the flight's bodies in order; resolve the flush with the buffer."""
        flight = self._flight
        assert flight is not None
        while flight.delivered < len(flight.bodies):
            outcome = yield from self._request(
                "PUT", flight.bodies[flight.delivered], flight.key, deadline, flight
            )
            if isinstance(outcome, _Taken):
                self._delivered_one(flight, outcome)
                continue
            if isinstance(outcome, _Refused):
                if flight.delivered == 0:
                    self._reject(flight, outcome.reason, outcome.status, result)
                    return "rejected"
                self.buffer.restore(flight.flush, delivered=flight.delivered)
                self._flight = None
                return "requeued"
            if not flight.reached:
                # Nothing of this body reached the service: it can be re-collapsed freely.
                self.buffer.restore(flight.flush, delivered=flight.delivered)
                self._flight = None
            return outcome
        assert flight.metadata is not None
        self._accept(flight, flight.metadata)
        return None

    def _accept(self, flight: _Flight, metadata: dict[str, JSON]) -> None:
        """The flush was applied: adopt the answer, or keep the local copy if it cannot be adopted."""
        try:
            self.buffer.accept(flight.flush, metadata)
        except (MetaopsError, TypeError, ValueError) as error:
            # Metadata metaops refuses (a number JSON overflowed to infinity, say): the
            # flush was applied all the same, so it leaves flight and is not requeued.
            log.warning(
                "run %s: the service's answer could not be adopted (%s); kept the local copy",
                self.run_id,
                error,
            )
            self.buffer.restore(flight.flush, delivered=len(flight.bodies))
        self._flight = None

    def _delivered_one(self, flight: _Flight, taken: _Taken) -> None:
        flight.delivered += 1
        flight.metadata = taken.metadata
        flight.key = self._new_key()
        flight.reached = False

    def _fence(self, deadline: float | None, result: RoundResult) -> Steps[_Spent | None]:
        """Settle the held body before newer calls are collapsed with it (see the module)."""
        flight = self._flight
        assert flight is not None
        if not flight.reached:
            self.buffer.restore(flight.flush, delivered=flight.delivered)
            self._flight = None
            return None
        outcome = yield from self._request("PUT", FENCE_BODY, flight.key, deadline, flight)
        if isinstance(outcome, _Spent):
            return outcome
        if isinstance(outcome, _Refused):
            # The service will not say; setting the flush aside (reported, inspectable)
            # is the one move that can neither lose it silently nor apply it twice.
            reason = f"outcome unknown: the fence of its key was refused: {outcome.reason}"
            self._reject(flight, reason, outcome.status, result)
            return None
        if outcome.replayed:
            log.info("run %s: fenced key %s: the held body had been applied", self.run_id, flight.key)
            self._delivered_one(flight, outcome)
            if flight.delivered == len(flight.bodies):
                self._accept(flight, outcome.metadata)
                return None
        else:
            log.info("run %s: fenced key %s: nothing had been applied", self.run_id, flight.key)
        self.buffer.restore(flight.flush, delivered=flight.delivered)
        self._flight = None
        return None

    def _reject(self, flight: _Flight, reason: str, status: int, result: RoundResult) -> None:
        self.buffer.reject(flight.flush, reason)
        rejected = self.buffer.rejected[-1]
        self._flight = None
        if not result.rejected:
            result.status = status
        result.rejected.append(rejected)
        flush = flight.flush
        count = len(flush.operations) + len(flush.parent_operations) + len(flush.root_operations)
        log.error(
            "run %s: the service refused a flush of %d operation(s); set aside: %s",
            self.run_id,
            count,
            reason,
        )

    # ----------------------------------------------------------------- one request, retried

    def _request(
        self,
        method: str,
        content: bytes | None,
        key: str | None,
        deadline: float | None,
        flight: _Flight | None = None,
    ) -> Steps[_Taken | _Refused | _Spent]:
        """Make the request, retrying what may succeed later, within the policy and ``deadline``."""
        headers: tuple[tuple[str, str], ...] = self._headers
        if content is not None:
            headers = (*headers, ("content-type", "application/json"))
        if key is not None:
            headers = (*headers, ("idempotency-key", key))
        last = "no attempt was made before the deadline"
        attempts = 0
        for attempt in range(self.policy.attempts):
            timeout = self.timeout
            if deadline is not None:
                timeout = min(timeout, deadline - self._clock())
                if timeout <= 0:
                    break
            reached_before = flight.reached if flight is not None else False
            if flight is not None:
                # Marked before the request goes: a round abandoned mid-request (a
                # cancelled task, an interpreter exiting) leaves the body held.
                flight.reached = True
            attempts += 1
            self.requests += 1
            reply = yield Send(method, self.path, headers, content, timeout)
            wait_at_least: float | None = None
            if isinstance(reply, Failure):
                if flight is not None and not reply.reached:
                    flight.reached = reached_before
                last = reply.error
            elif 200 <= reply.status < 300:
                taken = _taken(reply)
                if isinstance(taken, _Taken):
                    return taken
                last = f"{reply.status} with an unreadable body: {taken}"
            elif is_retryable(reply.status):
                last = f"{reply.status}: {error_message(reply)}"
                wait_at_least = retry_after(reply.headers)
            else:
                if flight is not None:
                    # The service refuses before applying anything.
                    flight.reached = reached_before
                return _Refused(reply.status, error_message(reply))
            if attempt + 1 == self.policy.attempts:
                break
            delay = self.policy.delay(attempt, self._random, wait_at_least)
            if deadline is not None and self._clock() + delay >= deadline:
                break
            if delay > 0:
                interrupted = yield Wait(delay)
                if interrupted:
                    return _Spent(attempts, last, interrupted=True)
        return _Spent(attempts, last, interrupted=False)

    def _failure(self, spent: _Spent, what: str = "flush") -> ServiceUnavailableError:
        held = " (held: it may have been applied; its key is settled before anything newer is sent)"
        state = held if what == "flush" and self._flight is not None else ""
        ending = "interrupted by close" if spent.interrupted else "retries spent"
        message = (
            f"run {self.run_id}: {what} failed after {spent.attempts} attempt(s), {ending}; "
            f"last: {spent.last}{state}"
        )
        return ServiceUnavailableError(message, spent.attempts, spent.last)


def _taken(answer: Answer) -> _Taken | str:
    """The metadata of a 2xx answer, or why it could not be read."""
    try:
        payload = json.loads(answer.content)
    except (ValueError, RecursionError) as error:
        return f"not JSON ({error})"
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    if not isinstance(metadata, dict):
        return f"expected {{'metadata': {{...}}}}, got {describe(payload)}"
    replayed = answer.headers.get("idempotent-replayed", "").strip().lower() == "true"
    return _Taken(metadata, replayed)


def error_message(answer: Answer) -> str:
    """The service's ``error`` message, or the start of the body."""
    try:
        payload = json.loads(answer.content)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return str(payload["error"])
    text = answer.content[:200].decode("utf-8", "replace").strip()
    return text or "(no body)"


def drive(steps: Steps[_T], send: Callable[[Send], Answer | Failure], wait: Callable[[float], bool]) -> _T:
    """Run ``steps`` to the end with blocking I/O (the sync client, and exit-time flushes)."""
    reply: object = None
    try:
        while True:
            effect = steps.send(reply)
            reply = send(effect) if isinstance(effect, Send) else wait(effect.seconds)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def drive_async(
    steps: Steps[_T],
    send: Callable[[Send], Awaitable[Answer | Failure]],
    wait: Callable[[float], Awaitable[bool]],
) -> _T:
    """Run ``steps`` to the end on the event loop: :func:`drive`, awaiting each effect."""
    reply: object = None
    try:
        while True:
            effect = steps.send(reply)
            reply = await (send(effect) if isinstance(effect, Send) else wait(effect.seconds))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
