"""metaops.server without I/O: request parsing, the compare-and-swap loop, the buffer and its flush.

Storage is a plain dict here; races are injected (a compare-and-swap told to fail),
so every interleaving a test names happens exactly as written.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaops import (
    Append,
    Delete,
    Increment,
    InvalidArgumentError,
    InvalidOperationError,
    InvalidValueError,
    MetadataTooLargeError,
    Operation,
    Remove,
    Set,
    Update,
    apply,
    json_size,
)
from metaops._json import MAX_METADATA_DEPTH
from metaops.server import (
    BufferedEntry,
    FlushPlan,
    InvalidRequestError,
    OperationBuffer,
    PendingBatch,
    RetryPolicy,
    compute_update,
    flush_run,
    parse_update_request,
    plan_flush,
    related_targets,
    update_run,
)
from metaops.strategies import batches, metadata

from .node_reference import ReferenceRunner, ensure_reference


def _text(value: Any) -> str:
    # A JSON text keeps what == blurs: bool vs int, key order.
    return json.dumps(value)


def _sequential(state: dict[str, Any], batches_: list[tuple[Operation, ...]]) -> dict[str, Any]:
    for ops in batches_:
        state = apply(state, ops).metadata
    return state


class FakeStore:
    """A run table in a dict; ``fail`` says which compare-and-swap calls lose their race."""

    def __init__(
        self, runs: dict[str, dict[str, Any]], fail: Callable[[int], bool] = lambda n: False
    ) -> None:
        self.runs = {run_id: (copy.deepcopy(m), 0) for run_id, m in runs.items()}
        self.fail = fail
        self.calls = 0
        self.reads = 0

    def read(self, run_id: str) -> tuple[dict[str, Any], int]:
        self.reads += 1
        return self.runs[run_id]

    def compare_and_swap(self, run_id: str, expected: int, new: dict[str, Any]) -> bool:
        self.calls += 1
        if self.fail(self.calls) or self.runs[run_id][1] != expected:
            return False
        self.runs[run_id] = (new, expected + 1)
        return True

    def commit(self, run_id: str, expected: int, plan: FlushPlan) -> bool:
        self.calls += 1
        if self.fail(self.calls) or self.runs[run_id][1] != expected:
            return False
        if plan.changed:
            self.runs[run_id] = (plan.metadata, expected + 1)
        return True


# ------------------------------------------------------------------- parsing


def test_operations_list_wins_over_metadata_even_when_empty() -> None:
    """An operations list, even an empty one, is what applies; metadata is then ignored."""
    request = parse_update_request({"operations": [], "metadata": {"a": 1}})
    assert request.operations == ()
    assert request.own_operations == ()


def test_metadata_alone_replaces() -> None:
    """Without an operations list, the metadata replaces the run's metadata as one Update."""
    request = parse_update_request({"metadata": {"a": [1, {"b": None}]}})
    assert request.operations is None
    assert request.own_operations == (Update({"a": [1, {"b": None}]}),)
    assert apply({"old": 1}, request.own_operations).metadata == {"a": [1, {"b": None}]}


def test_metadata_as_deep_as_apply_leaves_it_is_accepted() -> None:
    """A body's whole metadata may nest MAX_METADATA_DEPTH levels (the top object counts), as
    deep as apply leaves metadata, so a client can send back what it was answered; one more is a
    400 naming the field. (It was refused past MAX_DEPTH.)"""
    deepest = _nested(MAX_METADATA_DEPTH)
    request = parse_update_request({"metadata": deepest})
    assert request.own_operations == (Update(deepest),)
    with pytest.raises(InvalidRequestError, match=f"nested {MAX_METADATA_DEPTH + 1} levels") as caught:
        parse_update_request({"metadata": {"a": deepest}})
    assert (caught.value.section, caught.value.field) == ("metadata", "metadata")


def test_all_sections_parse_to_operations() -> None:
    """parentOperations and rootOperations parse like operations; unknown fields are ignored."""
    body = {
        "operations": [{"type": "increment", "key": "n", "value": 2}],
        "parentOperations": [{"type": "append", "key": "log", "value": "x"}],
        "rootOperations": [{"type": "delete", "key": "gone"}],
        "metadataType": "application/json",
    }
    request = parse_update_request(body)
    assert request.operations == (Increment("n", 2),)
    assert request.parent_operations == (Append("log", "x"),)
    assert request.root_operations == (Delete("gone"),)


def test_parsing_does_not_mutate_the_body() -> None:
    """The parsed request owns its values: changing the body afterwards changes nothing parsed."""
    body: dict[str, Any] = {"operations": [{"type": "set", "key": "a", "value": [1]}], "metadata": {"m": [2]}}
    snapshot = copy.deepcopy(body)
    request = parse_update_request(body)
    assert body == snapshot
    body["operations"][0]["value"].append(99)
    body["metadata"]["m"].append(99)
    assert request.operations == (Set("a", [1]),)
    assert request.metadata == {"m": [2]}


BAD_BODIES: list[tuple[object, str | None, int | None, str | None, str]] = [
    # body, section, index, field, words the message must contain
    ([], None, None, None, "request body: expected a JSON object"),
    ("operations", None, None, None, "got the string"),
    ({}, None, None, None, "got none of them"),
    ({"unknown": []}, None, None, None, "got none of them"),
    ({"operations": None}, "operations", None, None, "operations: expected a list of operations, got null"),
    ({"operations": {"type": "set"}}, "operations", None, None, "got an object"),
    ({"metadata": None}, "metadata", None, "metadata", "metadata: expected an object"),
    ({"metadata": [1]}, "metadata", None, "metadata", "got a list"),
    ({"metadata": {"a": float("inf")}}, "metadata", None, "metadata", "metadata['a']"),
    ({"operations": [], "metadata": 3}, "metadata", None, "metadata", "got 3"),
    ({"operations": [{"type": "decrement", "key": "n", "value": 1}]}, "operations", 0, "type", "increment"),
    (
        {
            "operations": [
                {"type": "set", "key": "a", "value": 1},
                {"type": "set", "key": "__proto__", "value": 1},
            ]
        },
        "operations",
        1,
        "key",
        "operation 1: field 'key': expected a safe key",
    ),
    ({"operations": [{"type": "increment", "key": "n", "value": "1"}]}, "operations", 0, "value", "number"),
    ({"operations": [{"type": "set", "key": "n"}]}, "operations", 0, "value", "missing"),
    (
        {"operations": [], "parentOperations": [{"type": "set", "key": "$.a.constructor", "value": 1}]},
        "parentOperations",
        0,
        "key",
        "parentOperations: operation 0",
    ),
    (
        {"operations": [], "rootOperations": "x"},
        "rootOperations",
        None,
        None,
        "rootOperations: expected a list",
    ),
    (
        {"operations": [], "rootOperations": [{"type": "update", "value": []}]},
        "rootOperations",
        0,
        "value",
        "rootOperations: operation 0: field 'value'",
    ),
]


@pytest.mark.parametrize(("body", "section", "index", "field", "words"), BAD_BODIES)
def test_bad_bodies_are_refused_naming_the_place(
    body: object, section: str | None, index: int | None, field: str | None, words: str
) -> None:
    """Each malformed body raises InvalidRequestError naming its section, index and field."""
    with pytest.raises(InvalidRequestError) as caught:
        parse_update_request(body)
    error = caught.value
    assert (error.section, error.index, error.field) == (section, index, field)
    assert words in str(error)
    assert isinstance(error, InvalidOperationError)
    assert isinstance(error, ValueError)


_BODY_SAMPLES: list[object] = [
    body for body, *_ in BAD_BODIES if body != {"metadata": {"a": float("inf")}}
] + [
    {"operations": []},
    {"metadata": {}},
    {"metadata": {"a": 1}, "operations": [{"type": "update", "value": {"b": 2}}]},
    {"operations": [{"type": "remove", "key": "$.a[0:1]", "value": None}], "extra": True},
    {"operations": [], "parentOperations": [], "rootOperations": []},
    {"metadata": {"__proto__": 1}},
    {"operations": [{"type": "set", "key": "$.", "value": 1}]},
    {"operations": [{"type": "delete", "key": "$.x.prototype"}]},
    {"operations": [{"type": "increment", "key": "n", "value": True}]},
    {"operations": [{"type": "delete"}]},
]


@pytest.fixture(scope="module")
def reference() -> Iterator[ReferenceRunner]:
    """The reference package under node, or a skip saying why it is unavailable."""
    target = ensure_reference()
    if isinstance(target, str):
        pytest.skip(target)
    with ReferenceRunner(target) as runner:
        yield runner


@pytest.mark.reference
def test_parsing_accepts_what_the_reference_schema_accepts(reference: ReferenceRunner) -> None:
    """parse_update_request accepts a body iff UpdateMetadataRequestBody does (plus: one of
    operations/metadata is required, where the platform fails after parsing)."""
    for body in _BODY_SAMPLES:
        schema_ok = reference.ask({"validateBody": body})["valid"]
        required_ok = isinstance(body, dict) and ("operations" in body or "metadata" in body)
        try:
            parse_update_request(body)
            ours = True
        except InvalidRequestError:
            ours = False
        assert ours == (schema_ok and required_ok), body


# ------------------------------------------------------------------- compute


@pytest.mark.parametrize(
    "body",
    [
        {"parentOperations": [{"type": "increment", "key": "done", "value": 1}]},
        {"rootOperations": [{"type": "append", "key": "log", "value": "x"}]},
        {"parentOperations": [], "rootOperations": []},
    ],
)
def test_a_body_with_only_parent_or_root_operations_is_accepted(body: dict[str, Any]) -> None:
    """As the platform's schema accepts it: the run's own metadata is left alone (no own operations)."""
    request = parse_update_request(body)
    assert request.own_operations == ()
    assert (request.operations, request.metadata) == (None, None)
    assert len(request.parent_operations) == len(body.get("parentOperations", []))
    assert len(request.root_operations) == len(body.get("rootOperations", []))


def test_parent_and_root_operations_of_a_run_without_them_go_to_the_run_itself() -> None:
    """The platform applies them to the run itself when it has no parent (or is its own root)."""
    request = parse_update_request(
        {
            "parentOperations": [{"type": "increment", "key": "p", "value": 1}],
            "rootOperations": [{"type": "increment", "key": "r", "value": 1}],
        }
    )
    parent_ops, root_ops = request.parent_operations, request.root_operations
    assert related_targets("c", "p", "r", request) == (("p", parent_ops), ("r", root_ops))
    assert related_targets("c", "p", None, request) == (("p", parent_ops), ("c", root_ops))
    assert related_targets("c", None, None, request) == (("c", parent_ops), ("c", root_ops))
    only_root = parse_update_request({"rootOperations": [{"type": "increment", "key": "r", "value": 1}]})
    assert related_targets("c", "p", "r", only_root) == (("r", root_ops),)


@given(metadata(integers_only=True), batches(integers_only=True, max_size=8))
def test_compute_with_a_known_size_keeps_it_exact_without_measuring(
    state: dict[str, Any], ops: list[Operation]
) -> None:
    """Given the current size, the new size is kept up to date as the operations write, and equals
    what measuring the result gives; the result is the one apply gives."""
    size = json_size(state)
    computed = compute_update(state, ops, limit=10**9, size=size)
    assert _text(computed.metadata) == _text(apply(state, ops).metadata)
    assert computed.size == json_size(computed.metadata)


def test_compute_with_a_known_size_never_measures_the_whole_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost of an update with a known size follows what it touches: nothing measures the result."""
    import metaops.server as server

    def refuse(value: object) -> Any:
        raise AssertionError("measured the whole metadata")

    # Whichever measures the whole result (json_size, or the depth-aware walk while it exists).
    monkeypatch.setattr(server, "_measure", refuse, raising=False)
    monkeypatch.setattr(server, "json_size", refuse, raising=False)
    state: dict[str, Any] = {"rows": [{"id": i} for i in range(1000)], "n": 1}
    computed = compute_update(state, [Increment("n")], size=json_size(state))
    assert computed.size == json_size(state)
    with pytest.raises(AssertionError, match="measured"):
        compute_update(state, [Increment("n")])


@given(
    metadata(integers_only=True),
    st.lists(batches(integers_only=True, unsafe=False, max_size=4), min_size=1, max_size=6),
    st.integers(2, 400),
)
def test_a_flush_plan_says_which_operations_give_its_metadata_and_its_size(
    state: dict[str, Any], draws: list[list[Operation]], limit: int
) -> None:
    """A store that logs operations instead of metadata can write plan.operations: applied to the
    input, they give plan.metadata; with a known starting size, plan.size is the result's size."""
    batch = _entries(draws)
    plan = plan_flush(state, batch, limit=limit, size=json_size(state))
    unsized = plan_flush(state, batch, limit=limit)
    assert _text(plan.metadata) == _text(unsized.metadata)
    assert [r.entry.seq for r in plan.rejected] == [r.entry.seq for r in unsized.rejected]
    assert _text(apply(state, plan.operations).metadata) == _text(plan.metadata)
    assert plan.size == json_size(plan.metadata)
    if not plan.changed:
        assert plan.operations == ()


def test_compute_reports_unchanged_as_the_same_object() -> None:
    """Nothing applied (or nothing different) means changed=False and the input itself back."""
    current: dict[str, Any] = {"n": 1, "tags": ["a"]}
    cases: list[list[Operation]] = [[], [Remove("n", 1)], [Set("n", 1)], [Remove("x", 0), Set("tags", ["a"])]]
    for ops in cases:
        computed = compute_update(current, ops)
        assert computed.changed is False
        assert computed.metadata is current
        assert computed.size is None


def test_compute_measures_and_limits_a_change() -> None:
    """A change is measured as JSON; past the limit it raises and the input stays untouched."""
    current: dict[str, Any] = {"a": "x"}
    computed = compute_update(current, [Append("log", "y")], limit=100)
    assert computed.changed is True
    assert computed.size == len('{"a":"x","log":["y"]}')
    with pytest.raises(MetadataTooLargeError) as caught:
        compute_update(current, [Set("a", "x" * 100)], limit=100)
    assert (caught.value.size, caught.value.limit) == (len('{"a":""}') + 100, 100)
    assert current == {"a": "x"}


def test_compute_lets_oversized_metadata_take_no_op_updates() -> None:
    """Metadata already over a lowered limit is not refused for updates that change nothing."""
    current: dict[str, Any] = {"big": "x" * 200}
    assert compute_update(current, [Set("big", "x" * 200)], limit=10).changed is False
    with pytest.raises(MetadataTooLargeError):
        compute_update(current, [Set("other", 1)], limit=10)


def test_compute_uses_the_environment_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a limit argument, TASK_RUN_METADATA_MAXIMUM_SIZE decides."""
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", "20")
    with pytest.raises(MetadataTooLargeError):
        compute_update({}, [Set("k", "x" * 20)])


# ------------------------------------------------------------------- retry policy


@given(st.integers(0, 30), st.floats(0, 1))
def test_retry_delays_are_bounded_and_jittered(retry: int, draw: float) -> None:
    """Every wait lies in [cap/2, cap] with cap = min(max_delay, base * factor**retry)."""
    policy = RetryPolicy(attempts=3, base_delay=0.01, factor=2.0, max_delay=0.5)
    cap = min(0.5, 0.01 * 2.0**retry)
    delay = policy.delay(retry, lambda: draw)
    assert cap / 2 <= delay <= cap


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"attempts": True}, {"base_delay": -1.0}, {"max_delay": float("nan")}]
)
def test_retry_policy_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    """A policy that could never try, or wait a negative time, is refused at construction."""
    with pytest.raises(InvalidArgumentError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


# ------------------------------------------------------------------- update_run


def _run_update(
    store: FakeStore, ops: list[Operation], buffer: OperationBuffer, policy: RetryPolicy, sleeps: list[float]
) -> Any:
    return update_run(
        "r",
        ops,
        read=store.read,
        compare_and_swap=store.compare_and_swap,
        buffer=buffer,
        policy=policy,
        random=lambda: 0.5,
        sleep=sleeps.append,
    )


def test_update_retries_lost_races_with_the_policy_delays() -> None:
    """Two lost races, then a win: three attempts, two waits of exactly the policy's delays."""
    store = FakeStore({"r": {"n": 1}}, fail=lambda call: call <= 2)
    policy = RetryPolicy(attempts=5, base_delay=0.1, factor=3.0, max_delay=10.0)
    sleeps: list[float] = []
    result = _run_update(store, [Increment("n", 2)], OperationBuffer(), policy, sleeps)
    assert (result.status, result.attempts, result.version) == ("written", 3, 1)
    assert store.runs["r"] == ({"n": 3}, 1)
    assert sleeps == [policy.delay(0, lambda: 0.5), policy.delay(1, lambda: 0.5)]
    assert store.reads == 3


def test_update_hands_operations_to_the_buffer_after_the_last_attempt() -> None:
    """Every race lost: nothing written, the operations are in the buffer, the answer is optimistic."""
    store = FakeStore({"r": {"n": 1}}, fail=lambda call: True)
    buffer = OperationBuffer()
    sleeps: list[float] = []
    result = _run_update(store, [Increment("n", 2)], buffer, RetryPolicy(attempts=4), sleeps)
    assert (result.status, result.attempts, result.metadata) == ("buffered", 4, {"n": 3})
    assert len(sleeps) == 3
    assert store.runs["r"] == ({"n": 1}, 0)
    assert buffer.pending("r") == (BufferedEntry(result.seq, "r", (Increment("n", 2),)),)


def test_update_queues_behind_buffered_operations_without_writing() -> None:
    """While the run has buffered operations, a new update joins them (the writer's order holds)."""
    store = FakeStore({"r": {"log": []}})
    buffer = OperationBuffer()
    first = buffer.add("r", [Append("log", 1)])
    result = _run_update(store, [Append("log", 2)], buffer, RetryPolicy(), [])
    assert result.status == "buffered"
    assert store.calls == 0
    assert [e.seq for e in buffer.pending("r")] == [first, result.seq]
    flushed = flush_run(buffer, "r", read=store.read, commit=store.commit)
    assert flushed.status == "committed"
    assert store.runs["r"][0] == {"log": [1, 2]}


def test_update_changing_nothing_writes_nothing() -> None:
    """An update that changes nothing never calls compare-and-swap."""
    store = FakeStore({"r": {"n": 1}})
    result = _run_update(store, [Set("n", 1), Remove("n", 0)], OperationBuffer(), RetryPolicy(), [])
    assert (result.status, result.version, store.calls) == ("unchanged", 0, 0)
    assert len(result.unapplied) == 1


def test_update_too_large_raises_before_writing_or_buffering() -> None:
    """Past the limit: MetadataTooLargeError, store and buffer untouched, even when queueing."""
    store = FakeStore({"r": {}})
    buffer = OperationBuffer()
    with pytest.raises(MetadataTooLargeError):
        update_run(
            "r",
            [Set("k", "x" * 50)],
            read=store.read,
            compare_and_swap=store.compare_and_swap,
            buffer=buffer,
            limit=20,
        )
    buffer.add("r", [Set("a", 1)])
    with pytest.raises(MetadataTooLargeError):
        update_run(
            "r",
            [Set("k", "x" * 50)],
            read=store.read,
            compare_and_swap=store.compare_and_swap,
            buffer=buffer,
            limit=20,
        )
    assert (store.runs["r"], store.calls, len(buffer)) == (({}, 0), 0, 1)


def _nested(depth: int) -> dict[str, Any]:
    """``{"a": {"a": ... 1}}`` with ``depth`` objects."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


def _deep_write(depth: int) -> Set:
    """A Set whose value is nested 200 levels, at the end of a path ``depth`` keys into ``_nested``."""
    return Set("$." + ".".join(["a"] * depth), _nested(200))


DEEP: dict[str, Any] = {"a": _nested(250), "n": 0}
"""Metadata nested 251 levels: a write 250 keys into it of a 200-level value would pass the bound."""


def test_a_write_that_would_nest_past_the_depth_bound_is_unapplied_not_an_error() -> None:
    """apply leaves such a write unapplied: the update changes nothing and says so; nothing is
    written, nothing raises."""
    store = FakeStore({"r": DEEP})
    deep = _deep_write(250)
    computed = compute_update(DEEP, [deep, Increment("n")])
    assert (computed.metadata["n"], computed.unapplied) == (1, (deep,))
    buffer = OperationBuffer()
    outcome = update_run("r", [deep], read=store.read, compare_and_swap=store.compare_and_swap, buffer=buffer)
    assert (outcome.status, outcome.metadata) == ("unchanged", DEEP)
    assert (store.runs["r"], store.calls, len(buffer)) == ((DEEP, 0), 0, 0)


def test_a_flush_leaves_unapplied_only_the_entry_that_would_nest_past_the_bound() -> None:
    """Of three writers, the one whose write would nest the metadata past the depth bound has its
    operation unapplied; the others land; nothing is rejected or retried."""
    deep = _deep_write(250)
    batch = _entries([[Increment("n")], [deep], [Append("log", "ok")]])
    plan = plan_flush(DEEP, batch)
    assert (plan.metadata["n"], plan.metadata["log"], plan.metadata["a"]) == (1, ["ok"], DEEP["a"])
    assert [e.seq for e in plan.applied] == [1, 2, 3]
    assert (plan.rejected, plan.unapplied) == ((), (deep,))


@given(
    st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=4), min_size=1, max_size=6),
    st.lists(st.booleans(), max_size=60),
    st.integers(1, 4),
)
def test_concurrent_writers_lose_nothing_model(
    writers: list[list[int]], losses: list[bool], attempts: int
) -> None:
    """Model: interleaved writers, injected lost races, periodic flushes; the result equals a
    dict oracle: the counter is the sum of all increments and each writer's appends keep its order."""
    store = FakeStore({"r": {}}, fail=lambda call: call <= len(losses) and losses[call - 1])
    buffer = OperationBuffer()
    policy = RetryPolicy(attempts=attempts, base_delay=0.0, max_delay=0.0)
    queues = [list(enumerate(amounts)) for amounts in writers]
    turn = 0
    while any(queues):
        writer = turn % len(queues)
        turn += 1
        if not queues[writer]:
            continue
        step, amount = queues[writer].pop(0)
        ops: list[Operation] = [Increment("n", amount), Append("log", [writer, step])]
        update_run(
            "r",
            ops,
            read=store.read,
            compare_and_swap=store.compare_and_swap,
            buffer=buffer,
            policy=policy,
            sleep=lambda s: None,
        )
        if turn % 3 == 0:
            flush_run(buffer, "r", read=store.read, commit=store.commit, policy=policy, sleep=lambda s: None)
    while len(buffer):
        flush_run(buffer, "r", read=store.read, commit=store.commit, policy=policy, sleep=lambda s: None)
    final = store.runs["r"][0]
    assert final["n"] == sum(map(sum, writers))
    assert sorted(map(tuple, final["log"])) == sorted(
        (w, s) for w, amounts in enumerate(writers) for s in range(len(amounts))
    )
    for writer in range(len(writers)):
        steps = [s for w, s in final["log"] if w == writer]
        assert steps == sorted(steps)


# ------------------------------------------------------------------- buffer


def test_buffer_orders_by_sequence_number_not_arrival() -> None:
    """Entries numbered from outside come out in number order whatever order they were added in."""
    ops = {seq: (Append("log", seq),) for seq in (3, 1, 7, 5)}
    results = []
    for order in ([3, 1, 7, 5], [7, 5, 3, 1], [1, 3, 5, 7]):
        buffer = OperationBuffer()
        for seq in order:
            buffer.add("r", ops[seq], seq=seq)
        batch = buffer.take("r")
        assert batch is not None
        results.append((batch.seqs, plan_flush({}, batch).metadata))
    assert results == [((1, 3, 5, 7), {"log": [1, 3, 5, 7]})] * 3
    buffer = OperationBuffer()
    buffer.add("r", [], seq=7)
    assert buffer.add("r", []) == 8


def test_buffer_take_settle_and_give_back() -> None:
    """A run's batch is out once at a time; given back, it goes before entries that came meanwhile."""
    buffer = OperationBuffer()
    buffer.add("r", [Append("log", "a")])
    buffer.add("s", [Increment("n")])
    assert buffer.runs() == ("r", "s")
    batch = buffer.take("r")
    assert batch is not None
    assert buffer.take("r") is None
    assert buffer.runs() == ("s",)
    assert buffer.busy("r")
    buffer.add("r", [Append("log", "b")])
    buffer.give_back(batch)
    again = buffer.take("r")
    assert again is not None
    assert plan_flush({}, again).metadata == {"log": ["a", "b"]}
    buffer.settle(again)
    assert not buffer.busy("r")
    assert len(buffer) == 1
    with pytest.raises(InvalidArgumentError, match="not the one taken out"):
        buffer.settle(again)


def test_buffer_refuses_bad_sequence_numbers() -> None:
    """A sequence number is a positive int, used once."""
    buffer = OperationBuffer()
    buffer.add("r", [], seq=4)
    for seq in (4, 0, -1, True):
        with pytest.raises(InvalidArgumentError, match="seq"):
            buffer.add("r", [], seq=seq)
    with pytest.raises(InvalidValueError, match="run_id must be a str"):
        buffer.add(7, [])  # type: ignore[arg-type]


def test_buffer_numbers_entries_uniquely_across_threads() -> None:
    """Eight threads adding at once: every entry kept, numbers unique and dense."""
    buffer = OperationBuffer()
    seqs: list[int] = []
    lock = threading.Lock()

    def writer(name: int) -> None:
        for i in range(250):
            seq = buffer.add(f"run{name % 3}", [Append("log", [name, i])])
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seqs) == list(range(1, 2001))
    assert len(buffer) == 2000
    for run in ("run0", "run1", "run2"):
        batch = buffer.take(run)
        assert batch is not None
        log: Any = plan_flush({}, batch).metadata["log"]
        for name in range(8):
            steps = [i for n, i in log if n == name]
            assert steps == sorted(steps)


# ------------------------------------------------------------------- plan_flush


def _entries(draws: list[list[Operation]], run: str = "r") -> PendingBatch:
    buffer = OperationBuffer()
    for ops in draws:
        buffer.add(run, ops)
    batch = buffer.take(run)
    assert batch is not None
    return batch


@given(
    metadata(integers_only=True), st.lists(batches(integers_only=True, unsafe=False, max_size=5), max_size=5)
)
def test_flush_equals_applying_entries_in_order(state: dict[str, Any], draws: list[list[Operation]]) -> None:
    """Within the limit, the one folded batch gives exactly what the entries give one after another."""
    batch = _entries(draws) if draws else PendingBatch("r", (), ())
    before = _text(state)
    plan = plan_flush(state, batch, limit=10**9)
    assert _text(plan.metadata) == _text(_sequential(state, [tuple(ops) for ops in draws]))
    assert plan.seqs == batch.seqs
    assert plan.rejected == ()
    assert plan.changed == (_text(plan.metadata) != before)
    assert _text(state) == before


@given(
    metadata(integers_only=True),
    st.lists(batches(integers_only=True, unsafe=False, max_size=4), min_size=1, max_size=6),
    st.integers(2, 200),
)
def test_flush_never_exceeds_the_limit_and_drops_nothing(
    state: dict[str, Any], draws: list[list[Operation]], limit: int
) -> None:
    """Every entry is either applied or rejected with a reason; what is written is within the limit
    (or is the untouched input) and equals the applied entries one after another."""
    batch = _entries(draws)
    plan = plan_flush(state, batch, limit=limit)
    assert plan.seqs == batch.seqs
    if plan.changed:
        assert json_size(plan.metadata) <= limit
    else:
        assert plan.metadata is state
    if plan.rejected:
        assert _text(plan.metadata) == _text(_sequential(state, [e.operations for e in plan.applied]))
    for rejection in plan.rejected:
        assert rejection.size > rejection.limit == limit
        assert f"{limit:,} bytes" in rejection.reason
        assert f"#{rejection.entry.seq}" in rejection.reason


def test_flush_rejects_only_the_entry_that_overflows() -> None:
    """Of three writers, the one whose value would overflow is rejected; the others land."""
    batch = _entries([[Increment("n")], [Set("blob", "x" * 100)], [Append("log", "ok")]])
    plan = plan_flush({"n": 0}, batch, limit=60)
    assert plan.metadata == {"n": 1, "log": ["ok"]}
    assert [e.seq for e in plan.applied] == [1, 3]
    assert [r.entry.seq for r in plan.rejected] == [2]
    assert plan.rejected[0].size == json_size({"n": 1, "blob": "x" * 100})


# ------------------------------------------------------------------- flush_run


def test_flush_run_commits_one_batch_per_run() -> None:
    """Many writers' entries for a run go in one commit, at one version."""
    store = FakeStore({"p": {"done": 0}, "q": {}})
    buffer = OperationBuffer()
    for child in range(5):
        buffer.add("p", [Increment("done"), Append("children", child)])
    buffer.add("q", [Set("x", 1)])
    result = flush_run(buffer, "p", read=store.read, commit=store.commit)
    assert (result.status, result.version, result.attempts, store.calls) == ("committed", 1, 1, 1)
    assert store.runs["p"] == ({"done": 5, "children": [0, 1, 2, 3, 4]}, 1)
    assert store.runs["q"] == ({}, 0)
    assert buffer.runs() == ("q",)
    assert flush_run(buffer, "p", read=store.read, commit=store.commit).status == "idle"


def test_flush_run_defers_after_losing_every_race() -> None:
    """Every attempt lost: the entries are back in the buffer, in order, for the next flush."""
    store = FakeStore({"p": {}}, fail=lambda call: call <= 3)
    buffer = OperationBuffer()
    buffer.add("p", [Append("log", 1)])
    buffer.add("p", [Append("log", 2)])
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=3)
    deferred = flush_run(
        buffer, "p", read=store.read, commit=store.commit, policy=policy, sleep=sleeps.append
    )
    assert (deferred.status, deferred.attempts, len(sleeps)) == ("deferred", 3, 2)
    assert [e.seq for e in buffer.pending("p")] == [1, 2]
    done = flush_run(buffer, "p", read=store.read, commit=store.commit, policy=policy, sleep=sleeps.append)
    assert done.status == "committed"
    assert store.runs["p"][0] == {"log": [1, 2]}


def test_flush_run_gives_back_on_errors_and_reports_busy() -> None:
    """A failing read gives the entries back and raises; a run whose batch is out reports busy."""
    buffer = OperationBuffer()
    buffer.add("p", [Increment("n")])

    def broken(run_id: str) -> tuple[dict[str, Any], int]:
        raise ConnectionError("database went away")

    with pytest.raises(ConnectionError):
        flush_run(buffer, "p", read=broken, commit=lambda *a: True)
    assert [e.seq for e in buffer.pending("p")] == [1]
    out = buffer.take("p")
    assert out is not None
    assert flush_run(buffer, "p", read=broken, commit=lambda *a: True).status == "busy"


def test_flush_run_reports_rejections_and_settles_them() -> None:
    """Rejected entries come back in the result and leave the buffer: never retried forever."""
    store = FakeStore({"p": {}})
    buffer = OperationBuffer()
    buffer.add("p", [Set("blob", "x" * 500)])
    buffer.add("p", [Set("ok", True)])
    result = flush_run(buffer, "p", read=store.read, commit=store.commit, limit=100)
    assert [r.entry.seq for r in result.rejected] == [1]
    assert store.runs["p"][0] == {"ok": True}
    assert len(buffer) == 0


def test_random_schedules_are_reproducible() -> None:
    """With the random source and sleep injected, two runs of the same schedule wait the same."""

    def waits(seed: int) -> list[float]:
        rng = random.Random(seed)
        store = FakeStore({"r": {}}, fail=lambda call: call % 4 != 0)
        sleeps: list[float] = []
        for _ in range(5):
            update_run(
                "r",
                [Increment("n")],
                read=store.read,
                compare_and_swap=store.compare_and_swap,
                buffer=OperationBuffer(),
                random=rng.random,
                sleep=sleeps.append,
            )
        return sleeps

    assert waits(7) == waits(7)
    assert waits(7) != waits(8)
