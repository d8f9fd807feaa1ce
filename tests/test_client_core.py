"""The client's transport core, step by step: which request it makes, with which key, and when.

The core is sans-I/O (it yields ``Send`` and ``Wait`` effects), so its decisions can
be checked one by one, fed answers written here. The same decisions are tested
end to end against the real service over HTTP, with faults, in
``test_client_delivery.py``; here each rule gets a small, exact case.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from metaops import Increment, RunMetadata, Set
from metaops.client import RequestRefusedError, RetryPolicy, ServiceUnavailableError
from metaops.client._core import (
    FENCE_BODY,
    Answer,
    Core,
    Failure,
    RoundResult,
    Send,
    Steps,
    Wait,
)
from metaops.client._retry import retry_after

Reply = Callable[[Send], "Answer | Failure"]


@dataclass
class Script:
    """Drives core steps: answers each Send with ``reply``, records every effect."""

    reply: Reply
    sends: list[Send] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    def run(self, steps: Steps[Any]) -> Any:
        answer: object = None
        try:
            while True:
                effect = steps.send(answer)
                if isinstance(effect, Send):
                    self.sends.append(effect)
                    answer = self.reply(effect)
                else:
                    assert isinstance(effect, Wait)
                    self.waits.append(effect.seconds)
                    answer = False
        except StopIteration as stop:
            return stop.value


def ok(metadata: dict[str, Any], *, replayed: bool = False, original: str | None = None) -> Answer:
    headers = {"idempotent-replayed": "true"} if replayed else {}
    if original is not None:
        headers["idempotent-original"] = original
    return Answer(200, headers, json.dumps({"metadata": metadata}).encode())


def error(status: int, message: str = "no", **headers: str) -> Answer:
    return Answer(status, headers, json.dumps({"error": message}).encode())


LOST = Failure("RemoteProtocolError: Server disconnected without sending a response", reached=True)
REFUSED = Failure("ConnectError: [Errno 111] Connection refused", reached=False)


class Service:
    """A tiny model of the idempotency contract, to answer the core as the service would.

    A repeat says what the request that used the key carried (``Idempotent-Original``),
    unless ``says_original`` is false (a service that does not).
    """

    def __init__(self, *, says_original: bool = True) -> None:
        self.metadata: dict[str, Any] = {}
        self.keys: dict[str, str] = {}  # key -> "operations" or "empty"
        self.applied: list[dict[str, Any]] = []
        self.says_original = says_original

    def apply(self, request: Send) -> Answer:
        key = dict(request.headers)["idempotency-key"]
        if key in self.keys:
            return ok(self.metadata, replayed=True, original=self.keys[key] if self.says_original else None)
        body = json.loads(request.content or b"{}")
        sections = ("operations", "parentOperations", "rootOperations")
        self.keys[key] = "operations" if any(body.get(name) for name in sections) else "empty"
        for op in body.get("operations", []):
            assert op["type"] == "increment"
            self.metadata[op["key"]] = self.metadata.get(op["key"], 0) + op["value"]
        self.applied.append(body)
        return ok(self.metadata)


def applied_but_lost(service: Service) -> Reply:
    """The service applies each request, and its answer is lost."""

    def reply(request: Send) -> Failure:
        service.apply(request)
        return LOST

    return reply


def in_turn(*replies: Reply) -> Reply:
    """Each of ``replies`` for one request, in order; the last for every request after."""
    queue = list(replies)

    def reply(request: Send) -> Answer | Failure:
        return (queue.pop(0) if len(queue) > 1 else queue[0])(request)

    return reply


def key_of(request: Send) -> str:
    return dict(request.headers)["idempotency-key"]


def make_core(buffer: RunMetadata, *, attempts: int = 3, **options: Any) -> Core:
    keys: Iterator[str] = (f"key-{i}" for i in range(1000))
    return Core(
        "run_1",
        buffer,
        access_token="t",
        policy=RetryPolicy(attempts=attempts, initial_delay=0.1, max_delay=1.0),
        timeout=5.0,
        random=lambda: 0.5,
        new_key=lambda: next(keys),
        **options,
    )


def held_with_newer_calls(applied_by: Service | None = None) -> tuple[RunMetadata, Core]:
    """The start of every fence test: ``n += 1`` flushed under ``key-0`` and held, every answer
    lost (after ``applied_by`` applied it, if given: else it never arrived), and ``n += 10``
    queued behind it."""
    buffer = RunMetadata()
    buffer.increment("n")
    core = make_core(buffer)
    Script(applied_but_lost(applied_by) if applied_by is not None else lambda request: LOST).run(core.flush())
    assert buffer.in_flight is not None
    buffer.increment("n", 10)
    return buffer, core


# --------------------------------------------------------------------------- requests and retries


def test_a_flush_is_one_put_with_a_key_and_the_buffer_adopts_the_answer() -> None:
    """The body is the drained flush's text; the answer (with another writer's key) becomes current()."""
    buffer = RunMetadata()
    buffer.increment("n", 2)
    script = Script(lambda request: ok({"n": 2, "other": True}))
    result = script.run(make_core(buffer).flush())
    assert result == RoundResult()
    (request,) = script.sends
    assert (request.method, request.path) == ("PUT", "/api/v1/runs/run_1/metadata")
    assert json.loads(request.content or b"") == {
        "operations": [{"type": "increment", "key": "n", "value": 2}],
        "parentOperations": [],
        "rootOperations": [],
    }
    headers = dict(request.headers)
    assert headers["authorization"] == "Bearer t"
    assert headers["idempotency-key"] == "key-0"
    assert buffer.current() == {"n": 2, "other": True}
    assert buffer.in_flight is None


def test_retries_keep_the_key_and_the_body_and_back_off_with_full_jitter() -> None:
    """503, then a dropped connection, then 200: three sends, one key, one body, jittered waits."""
    buffer = RunMetadata()
    buffer.increment("n")
    answers: Iterator[Answer | Failure] = iter([error(503), LOST, ok({"n": 1})])
    script = Script(lambda request: next(answers))
    assert script.run(make_core(buffer).flush()).failure is None
    assert len({key_of(request) for request in script.sends}) == 1
    assert len({request.content for request in script.sends}) == 1
    # random() = 0.5 of min(max_delay, initial_delay * 2**k)
    assert script.waits == [0.05, 0.1]


def test_retry_after_is_honoured_up_to_its_cap() -> None:
    """A 429 asking for 7 s waits 7 s; one asking for an hour waits max_retry_after."""
    buffer = RunMetadata()
    buffer.increment("n")
    answers = iter([error(429, **{"retry-after": "7"}), error(503, **{"retry-after": "3600"}), ok({"n": 1})])
    script = Script(lambda request: next(answers))
    core = Core("r", buffer, access_token="t", policy=RetryPolicy(max_retry_after=60.0), timeout=1.0)
    script.run(core.flush())
    assert script.waits == [7.0, 60.0]


def test_retry_after_reads_an_http_date() -> None:
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=lambda: 1445412470.0) == 10.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_a_refusal_is_not_retried_and_is_set_aside_with_the_reason(status: int) -> None:
    """One request; the flush leaves flight unrequeued; rejected and the round's result say why."""
    buffer = RunMetadata()
    buffer.set("a", 1)
    core = make_core(buffer)
    script = Script(lambda request: error(status, "Task Run not found"))
    result = script.run(core.flush())
    assert len(script.sends) == 1
    assert [r.flush.operations for r in result.rejected] == [(Set("a", 1),)]
    assert result.status == status
    assert "Task Run not found" in result.rejected[0].reason
    assert str(status) in result.rejected[0].reason
    assert result.rejected == list(core.rejected)
    assert buffer.in_flight is None
    assert not buffer.pending
    assert core.idle


def test_a_2xx_with_an_unreadable_body_counts_as_unknown_and_is_retried_with_the_same_key() -> None:
    buffer = RunMetadata()
    buffer.increment("n")
    answers = iter([Answer(200, {}, b"<html>"), ok({"n": 1})])
    script = Script(lambda request: next(answers))
    assert script.run(make_core(buffer).flush()).failure is None
    assert [key_of(request) for request in script.sends] == ["key-0", "key-0"]


def test_an_answer_the_buffer_cannot_adopt_still_resolves_the_applied_flush() -> None:
    """1e400 parses as infinity, which metaops refuses: the flush was applied, so it is not resent."""
    buffer = RunMetadata()
    buffer.increment("n")
    core = make_core(buffer)
    script = Script(lambda request: Answer(200, {}, b'{"metadata":{"n":1,"huge":1e400}}'))
    assert script.run(core.flush()).failure is None
    assert core.idle
    assert buffer.in_flight is None
    assert buffer.current() == {"n": 1}
    buffer.increment("n")
    script.run(core.flush())
    assert [json.loads(r.content or b"")["operations"][0]["value"] for r in script.sends] == [1, 1]


def test_no_attempt_starts_past_the_deadline_and_each_request_is_bounded_by_it() -> None:
    buffer = RunMetadata()
    buffer.increment("n")
    now = [100.0]
    core = Core(
        "r",
        buffer,
        access_token="t",
        policy=RetryPolicy(attempts=10, initial_delay=1.0, max_delay=1.0),
        timeout=30.0,
        clock=lambda: now[0],
        random=lambda: 1.0,
    )

    def reply(request: Send) -> Answer:
        now[0] += 1.0
        return error(503)

    script = Script(reply)
    steps = core.flush(deadline=103.5)
    answer: object = None
    timeouts = []
    try:
        while True:
            effect = steps.send(answer)
            if isinstance(effect, Send):
                timeouts.append(effect.timeout)
                answer = reply(effect)
            else:
                now[0] += effect.seconds
                answer = False
    except StopIteration as stop:
        result = stop.value
    assert timeouts == [3.5, 1.5]
    assert isinstance(result.failure, ServiceUnavailableError)
    assert script.sends == []


# --------------------------------------------------------------------------- exactly once


@pytest.mark.parametrize("says_original", [True, False])
def test_a_lost_answer_is_resent_under_the_same_key_and_applied_once(says_original: bool) -> None:
    """All attempts' answers lost after the service applied the first: held, then resent, replayed
    (no fence was sent, so the replay is the body's own, whether or not the service says so)."""
    buffer = RunMetadata()
    buffer.increment("n")
    service = Service(says_original=says_original)
    core = make_core(buffer)

    def lose(request: Send) -> Failure:
        service.apply(request)
        return LOST

    first = Script(lose)
    result = first.run(core.flush())
    assert isinstance(result.failure, ServiceUnavailableError)
    assert "held" in str(result.failure)
    assert buffer.in_flight is not None  # held: not restored, not re-collapsible
    second = Script(service.apply)
    assert second.run(core.flush()).failure is None
    assert {key_of(r) for r in first.sends + second.sends} == {"key-0"}
    assert second.sends[0].content == first.sends[0].content
    assert service.metadata == {"n": 1}
    assert len(service.applied) == 1
    assert buffer.current() == {"n": 1}


def test_newer_calls_fence_the_held_key_first_and_a_replay_means_it_was_applied() -> None:
    """Held (applied, answers lost) + newer calls: a fence with the old key, then the newer alone, new key."""
    service = Service()
    buffer, core = held_with_newer_calls(applied_by=service)
    script = Script(service.apply)
    assert script.run(core.flush()).failure is None
    fence, newer = script.sends
    assert (key_of(fence), fence.content) == ("key-0", FENCE_BODY)
    assert key_of(newer) != "key-0"
    assert json.loads(newer.content or b"")["operations"] == [{"type": "increment", "key": "n", "value": 10}]
    assert service.metadata == {"n": 11}
    assert buffer.current() == {"n": 11}


def test_newer_calls_fence_the_held_key_and_without_a_replay_the_flush_merges_under_a_new_key() -> None:
    """Held (never applied) + newer calls: the fence spends the key, the merge goes under a new one."""
    service = Service()
    _, core = held_with_newer_calls()
    script = Script(service.apply)
    assert script.run(core.flush()).failure is None
    fence, merged = script.sends
    assert (key_of(fence), fence.content) == ("key-0", FENCE_BODY)
    assert key_of(merged) == "key-1"
    assert json.loads(merged.content or b"")["operations"] == [{"type": "increment", "key": "n", "value": 11}]
    # The old request arriving late is a no-op: its key is spent.
    late = Send(
        "PUT",
        "/",
        (("idempotency-key", "key-0"),),
        b'{"operations":[{"type":"increment","key":"n","value":1}]}',
        1,
    )
    assert service.apply(late).headers.get("idempotent-replayed") == "true"
    assert service.metadata == {"n": 11}


def test_a_fence_retried_after_its_own_answer_was_lost_is_not_taken_for_the_held_body() -> None:
    """Held (never applied) + newer calls: the fence spends the key but its answer is lost; the
    retried fence is replayed, and says the key's request was empty: the flush merges."""
    service = Service()
    buffer, core = held_with_newer_calls()
    script = Script(in_turn(applied_but_lost(service), service.apply))
    assert script.run(core.flush()).failure is None
    lost_fence, replayed_fence, merged = script.sends
    assert [(key_of(r), r.content) for r in (lost_fence, replayed_fence)] == [("key-0", FENCE_BODY)] * 2
    assert key_of(merged) == "key-1"
    assert json.loads(merged.content or b"")["operations"] == [{"type": "increment", "key": "n", "value": 11}]
    assert service.metadata == {"n": 11}
    assert buffer.current() == {"n": 11}


def test_a_fence_whose_attempts_were_all_lost_is_settled_by_the_next_rounds_fence() -> None:
    """The first fence round spends the key and every answer is lost; the next round's fence is
    replayed as the fence's own record: the body was not applied, and merges."""
    service = Service()
    buffer, core = held_with_newer_calls()
    first = Script(applied_but_lost(service))
    assert isinstance(first.run(core.flush()).failure, ServiceUnavailableError)
    assert core.held is not None
    second = Script(service.apply)
    assert second.run(core.flush()).failure is None
    assert [(key_of(r), r.content) for r in second.sends[:1]] == [("key-0", FENCE_BODY)]
    assert service.metadata == {"n": 11}
    assert buffer.current() == {"n": 11}


def test_a_fence_replayed_as_the_bodys_record_accepts_the_body_even_after_a_lost_fence() -> None:
    """The body was applied (its answers lost); a fence's answer is lost too; the retried fence
    is replayed with the key's request carrying operations: accepted, never sent again."""
    service = Service()
    buffer, core = held_with_newer_calls(applied_by=service)
    script = Script(in_turn(applied_but_lost(service), service.apply))
    assert script.run(core.flush()).failure is None
    newer = script.sends[-1]
    assert json.loads(newer.content or b"")["operations"] == [{"type": "increment", "key": "n", "value": 10}]
    assert service.metadata == {"n": 11}
    assert buffer.current() == {"n": 11}


def test_a_body_replayed_as_an_empty_requests_record_was_not_applied_and_goes_back_to_the_buffer() -> None:
    buffer = RunMetadata()
    buffer.increment("n")
    core = make_core(buffer)
    result = Script(lambda request: ok({}, replayed=True, original="empty")).run(core.flush())
    assert (result.failure, result.rejected) == (None, [])
    assert (core.held, buffer.pending) == (None, True)
    service = Service()
    Script(service.apply).run(core.flush())
    assert service.metadata == {"n": 1}


def test_a_fenced_key_replayed_by_a_service_that_does_not_say_what_used_it_is_set_aside() -> None:
    """Without ``Idempotent-Original``, a replay after a fence may have reached the service proves
    nothing: the flush is set aside with the reason (never dropped silently, never sent twice)."""
    service = Service(says_original=False)
    _, core = held_with_newer_calls()
    result = Script(in_turn(applied_but_lost(service), service.apply)).run(core.flush())
    (rejected,) = result.rejected
    assert "outcome unknown" in rejected.reason
    assert rejected.flush.operations == (Increment("n", 1),)
    assert service.metadata == {"n": 10}


def test_a_fence_that_fails_keeps_the_flush_held_and_sends_nothing_newer() -> None:
    buffer, core = held_with_newer_calls()
    script = Script(lambda request: error(503))
    result = script.run(core.flush())
    assert isinstance(result.failure, ServiceUnavailableError)
    assert {(key_of(r), r.content) for r in script.sends} == {("key-0", FENCE_BODY)}
    assert buffer.in_flight is not None
    assert buffer.pending  # the newer call waits behind the held flush


def test_a_flush_that_never_reached_the_service_is_restored_at_once_and_merges_without_a_fence() -> None:
    """Connection refused on every attempt: nothing was sent, so nothing is held."""
    buffer = RunMetadata()
    buffer.increment("n")
    core = make_core(buffer)
    result = Script(lambda request: REFUSED).run(core.flush())
    assert result.failure is not None
    assert "held" not in str(result.failure)
    assert buffer.in_flight is None
    buffer.increment("n", 10)
    service = Service()
    script = Script(service.apply)
    script.run(core.flush())
    (merged,) = script.sends
    assert key_of(merged) == "key-1"
    assert json.loads(merged.content or b"")["operations"] == [{"type": "increment", "key": "n", "value": 11}]


def test_one_attempt_that_may_have_arrived_holds_the_flush_even_if_later_ones_were_refused() -> None:
    buffer = RunMetadata()
    buffer.increment("n")
    core = make_core(buffer)
    answers = iter([LOST, REFUSED, REFUSED])
    Script(lambda request: next(answers)).run(core.flush())
    assert buffer.in_flight is not None


def test_a_round_abandoned_mid_request_leaves_the_body_held() -> None:
    """A cancelled task or an exiting interpreter stops a round at a Send: the body may have gone."""
    buffer = RunMetadata()
    buffer.increment("n")
    core = make_core(buffer)
    steps = core.flush()
    assert isinstance(next(steps), Send)
    steps.close()
    assert core.held is not None
    buffer.increment("n")
    script = Script(Service().apply)
    script.run(core.flush())
    assert script.sends[0].content == FENCE_BODY


def test_every_body_of_a_large_flush_has_its_own_key_and_the_last_answer_is_adopted() -> None:
    buffer = RunMetadata(max_request_bytes=200)
    for i in range(12):
        buffer.set(f"key{i:02d}", "x" * 20)
    service_metadata: dict[str, Any] = {}

    def apply(request: Send) -> Answer:
        for op in json.loads(request.content or b"")["operations"]:
            service_metadata[op["key"]] = op["value"]
        return ok(dict(service_metadata))

    script = Script(apply)
    script.run(make_core(buffer).flush())
    assert len(script.sends) > 1
    assert len({key_of(r) for r in script.sends}) == len(script.sends)
    assert buffer.current() == service_metadata == {f"key{i:02d}": "x" * 20 for i in range(12)}


def test_a_refusal_after_some_bodies_went_through_sets_aside_only_what_was_not_applied() -> None:
    """Body 0 lands, body 1 is refused: body 0's operations are never in a RejectedFlush."""
    buffer = RunMetadata(max_request_bytes=200)
    for i in range(12):
        buffer.set(f"key{i:02d}", "x" * 20)
    applied: list[str] = []

    def reply(request: Send) -> Answer:
        if applied:
            return error(413, "too large")
        applied.extend(op["key"] for op in json.loads(request.content or b"")["operations"])
        return ok({})

    core = make_core(buffer)
    result = Script(reply).run(core.flush())
    assert applied
    (rejected,) = result.rejected
    keys = [op.key for op in rejected.flush.operations if isinstance(op, Set)]
    assert not set(keys) & set(applied)
    assert sorted(keys + applied) == [f"key{i:02d}" for i in range(12)]
    assert core.idle


def test_retrieve_reads_the_metadata_and_raises_what_it_came_to() -> None:
    core = make_core(RunMetadata({"local": 1}))
    script = Script(lambda request: ok({"n": 5}))
    assert script.run(core.retrieve()) == {"n": 5}
    assert script.sends[0].method == "GET"
    assert "idempotency-key" not in dict(script.sends[0].headers)
    with pytest.raises(ServiceUnavailableError):
        Script(lambda request: error(503)).run(core.retrieve())
    with pytest.raises(RequestRefusedError) as refused:
        Script(lambda request: error(404, "Task Run not found")).run(core.retrieve())
    assert refused.value.status == 404
    assert "Task Run not found" in str(refused.value)


def test_a_refusal_whose_body_nests_too_deeply_for_json_is_still_a_typed_refusal() -> None:
    """The stream writer and the Realtime reader retry through send_retried: a refusal whose body
    is nested too deeply to parse is reported with its status, not as a RecursionError."""
    from metaops.client._core import Answer, Send
    from metaops.client._streams import send_retried

    steps = send_retried(Send("POST", "/s", (), b"", 1.0), RetryPolicy(attempts=1), "stream /s", (200,))
    assert isinstance(next(steps), Send)
    with pytest.raises(RequestRefusedError) as refused:
        steps.send(Answer(400, {}, b"[" * 100_000))
    assert refused.value.status == 400
    assert "stream /s: HTTP 400: [[[" in str(refused.value)
