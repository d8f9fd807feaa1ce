"""RunMetadata against a dict oracle and a simulated platform: state machines, properties, threads."""

from __future__ import annotations

import copy
import json
import random
import sys
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from metaops import (
    MAX_REQUEST_BYTES,
    Append,
    Delete,
    Increment,
    InvalidOperationError,
    MetadataTooLargeError,
    Operation,
    RejectedFlush,
    Remove,
    Set,
    Update,
    apply,
    is_safe_key,
    json_size,
)
from metaops.buffer import Flush, MetadataUpdater, RunMetadata
from metaops.server import parse_update_request
from metaops.strategies import LITERAL_KEYS, json_values, keys, metadata, operations
from tests.buffer_support import Metadata, Server, body_alone, budget, make_call, snapshot
from tests.oracle import close_json, oracle_apply, same_json

# --------------------------------------------------------------------------- the model-based test


def _sent_after(flush: Flush, delivered: int) -> tuple[list[Operation], list[Operation], list[Operation]]:
    """The operations of the bodies ``flush`` sends from index ``delivered`` on, per list, as sent."""
    sections: tuple[list[Operation], list[Operation], list[Operation]] = ([], [], [])
    for text in flush.texts()[delivered:]:
        request = parse_update_request(json.loads(text))
        assert request.operations is not None
        sections[0].extend(request.operations)
        sections[1].extend(request.parent_operations)
        sections[2].extend(request.root_operations)
    return sections


class BufferMachine(RuleBasedStateMachine):
    """RunMetadata against a plain dict oracle, with a simulated platform receiving its flushes.

    ``model`` is what the run's metadata should show after every call. The platform's
    dicts (``server.own``, ``.parent``, ``.root``) must reach ``platform_model``,
    ``parent_model`` and ``root_model`` once everything is delivered, through
    failures, partial deliveries, refusals and calls made while a flush is in flight.
    Without a refusal, ``platform_model`` is ``model``. A refused flush's operations
    never arrive: the platform's models start again from what it holds, plus what is
    still queued, and the run's own metadata heals to that at the next accept.
    Numbers are ints, so every result is exact (:class:`FloatBufferMachine` adds floats).
    """

    # Whether every number is an int, so that buffer, platform and oracle agree exactly.
    exact: ClassVar[bool] = True

    def same(self, a: object, b: object) -> bool:
        """Equal as JSON; with floats, equal up to the reassociation of merged increments."""
        return same_json(a, b) if self.exact else close_json(a, b)

    @initialize(
        initial=metadata(integers_only=True),
        limit=st.sampled_from([None, 150, 400]),
        is_root=st.sampled_from([False, False, True]),
        body_bytes=st.sampled_from([MAX_REQUEST_BYTES, 260, 160]),
    )
    def start(self, initial: Metadata, limit: int | None, is_root: bool, body_bytes: int) -> None:
        """A run starting from random metadata with a random limit and body size."""
        if limit is not None:
            limit = max(limit, json_size(initial))
        self.md = RunMetadata(initial, is_root=is_root, limit=limit, max_request_bytes=body_bytes)
        self.limit = self.md.limit
        self.body_bytes = body_bytes
        self.is_root = is_root
        self.model: Metadata = copy.deepcopy(initial)
        self.platform_model: Metadata = copy.deepcopy(initial)
        self.parent_model: Metadata = {}
        self.root_model: Metadata = {}
        self.server = Server(initial)
        self.flight: Flush | None = None
        self.unapplied: list[Operation] = []
        self.rejected: list[RejectedFlush] = []
        # What the buffer holds queued for each list (own, parent, root), not yet drained.
        self.queued: tuple[list[Operation], list[Operation], list[Operation]] = ([], [], [])
        # Whether a refusal left the run's metadata showing calls the platform never got.
        self.healing = False

    def _expect_local(self, op: Operation) -> type[Exception] | None:
        """What a call on the run itself should do, updating the oracle when it is applied."""
        if not isinstance(op, Update) and not is_safe_key(op.key):
            return InvalidOperationError
        # With floats, the buffer's metadata is the model's only up to rounding (after an
        # accept, it holds the platform's merged sums), and whether a call changes
        # anything or grows past the limit depends on the exact numbers: the buffer's
        # own metadata decides. The model still takes every applied call, in order.
        basis = self.model if self.exact else self.md.current().to_dict()
        new, unapplied = oracle_apply(basis, [op])
        if unapplied:
            self.unapplied.append(op)
            return None
        if same_json(new, basis):
            return None
        grows_past_the_limit = json_size(new) > max(self.limit, json_size(basis))
        if grows_past_the_limit or body_alone(op) > self.body_bytes:
            return MetadataTooLargeError
        self.model = new if self.exact else oracle_apply(self.model, [op])[0]
        self.platform_model = oracle_apply(self.platform_model, [op])[0]
        self.queued[0].append(op)
        return None

    def _expect_remote(self, op: Operation, target: str) -> type[Exception] | None:
        """What a parent/root call should do on a child run: queued unless it could never succeed."""
        if not isinstance(op, Update) and not is_safe_key(op.key):
            return InvalidOperationError
        if isinstance(op, (Set, Append, Update)) and json_size(op.value) > self.limit:
            return MetadataTooLargeError
        if body_alone(op) > self.body_bytes:
            return MetadataTooLargeError
        if target == "parent":
            self.parent_model = oracle_apply(self.parent_model, [op])[0]
            self.queued[1].append(op)
        else:
            self.root_model = oracle_apply(self.root_model, [op])[0]
            self.queued[2].append(op)
        return None

    def _heal(self) -> None:
        """After an accept: a refusal's difference is gone, the run shows the platform plus its queue."""
        if self.healing:
            self.model = oracle_apply(self.server.own, self.queued[0])[0]
            self.healing = False

    @rule(
        op=operations(integers_only=True),
        who=st.sampled_from(["self", "self", "parent", "root"]),
        via_decrement=st.booleans(),
    )
    def call(self, op: Operation, who: str, via_decrement: bool) -> None:
        """One documented call on the run, its parent or its root."""
        if who == "self" or self.is_root:
            expected = self._expect_local(op)
            updater: RunMetadata | MetadataUpdater = self.md
            if who != "self":
                updater = self.md.parent if who == "parent" else self.md.root
        else:
            expected = self._expect_remote(op, who)
            updater = self.md.parent if who == "parent" else self.md.root
        if expected is None:
            make_call(updater, op, via_decrement)
        else:
            before = snapshot(self.md)
            with pytest.raises(expected):
                make_call(updater, op, via_decrement)
            assert same_json(snapshot(self.md), before)

    @rule(
        op=st.one_of(
            st.builds(Append, st.just("logs"), st.integers(0, 3)),
            st.builds(Remove, st.just("logs"), st.integers(0, 3)),
            st.builds(Increment, st.sampled_from(["n", "$.logs.0"]), st.integers(-2, 2)),
            st.builds(Set, st.sampled_from(["logs", "n"]), st.lists(st.integers(0, 3), max_size=3)),
            st.builds(Delete, st.sampled_from(["logs", "n"])),
        ),
        who=st.sampled_from(["self", "parent", "root"]),
    )
    def busy_call(self, op: Operation, who: str) -> None:
        """Calls crowding two keys, so that removes find lists and increments find numbers."""
        self.call(op, who, via_decrement=False)

    @rule(ops=st.lists(operations(integers_only=True, unsafe=False, update=False), min_size=2, max_size=4))
    def chain(self, ops: list[Operation]) -> None:
        """Several calls chained in one expression, stopping at the first that raises."""
        target: Any = self.md
        for op in ops:
            expected = self._expect_local(op)
            if expected is not None:
                with pytest.raises(expected):
                    make_call(target, op)
                return
            if isinstance(op, Set):
                target = target.set(op.key, op.value)
            elif isinstance(op, Delete):
                target = target.delete(op.key)
            elif isinstance(op, Append):
                target = target.append(op.key, op.value)
            elif isinstance(op, Remove):
                target = target.remove(op.key, op.value)
            else:
                assert isinstance(op, Increment)
                target = target.increment(op.key, op.value)
            assert target is self.md

    @precondition(lambda self: self.flight is None)
    @rule()
    def drain(self) -> None:
        """Take a flush; its bodies are well formed and within the request limit."""
        flush = self.md.drain()
        assert flush.unapplied == tuple(self.unapplied)
        self.unapplied = []
        bodies = flush.bodies
        assert len(bodies) == len(flush.texts())
        for body in bodies:
            assert json_size(body) <= self.body_bytes
        for section, ops in (
            ("operations", flush.operations),
            ("parentOperations", flush.parent_operations),
            ("rootOperations", flush.root_operations),
        ):
            sent = [wire for body in bodies for wire in body[section]]
            assert same_json(sent, [op.to_wire() for op in ops])
        for queued in self.queued:
            queued.clear()
        if flush:
            assert self.md.in_flight is flush
            self.flight = flush
        else:
            assert self.md.in_flight is None

    @precondition(lambda self: self.flight is not None)
    @rule()
    def succeed(self) -> None:
        """The platform takes every body and answers with the run's metadata."""
        assert self.flight is not None
        self.server.deliver(self.md, self.flight)
        self.flight = None
        self._heal()

    @precondition(lambda self: self.flight is not None)
    @rule(delivered=st.integers(min_value=0, max_value=3))
    def fail(self, delivered: int) -> None:
        """The first ``delivered`` bodies get through, then the request fails: the rest is restored."""
        assert self.flight is not None
        texts = self.flight.texts()
        delivered = min(delivered, len(texts))
        for text in texts[:delivered]:
            self.server.take(text)
        self.md.restore(self.flight, delivered=delivered)
        for queued, rest in zip(self.queued, _sent_after(self.flight, delivered), strict=True):
            queued[:0] = rest
        self.flight = None

    @precondition(lambda self: self.flight is not None)
    @rule(reason=st.sampled_from(["400: invalid body", "413: metadata too large"]))
    def reject(self, reason: str) -> None:
        """The platform refuses the flush for good: it is set aside, nothing else changes."""
        assert self.flight is not None
        before = snapshot(self.md)
        self.md.reject(self.flight, reason)
        self.rejected.append(RejectedFlush(self.flight, reason))
        assert self.md.rejected == tuple(self.rejected)
        assert self.md.in_flight is None
        after = snapshot(self.md)
        assert same_json(
            {**after, "rejected": None, "in_flight": None}, {**before, "rejected": None, "in_flight": None}
        )
        self.flight = None
        # The refused operations never arrive: what the platform ends with is what it
        # holds now, plus what is queued.
        self.platform_model = oracle_apply(self.server.own, self.queued[0])[0]
        self.parent_model = oracle_apply(self.server.parent, self.queued[1])[0]
        self.root_model = oracle_apply(self.server.root, self.queued[2])[0]
        self.healing = True

    @precondition(lambda self: self.flight is None)
    @rule()
    def refresh(self) -> None:
        """Adopting the platform's metadata with nothing in flight keeps the local view (or heals it)."""
        self.md.accept(Flush(), copy.deepcopy(self.server.own))
        self._heal()

    @precondition(lambda self: self.flight is None and not self.md.pending)
    @rule(size=st.integers(min_value=0, max_value=500))
    def another_writer(self, size: int) -> None:
        """Another writer grows the platform's metadata, maybe past the limit, and a refresh adopts it."""
        self.server.own = apply(self.server.own, Set("other", "x" * size)).metadata
        # apply shares one value among the places a wildcard wrote it, and deepcopy keeps
        # that sharing; the oracle mutates in place, so its state must share nothing.
        self.model = json.loads(json.dumps(self.server.own))
        self.platform_model = json.loads(json.dumps(self.server.own))
        self.md.accept(Flush(), copy.deepcopy(self.server.own))
        self.healing = False

    @invariant()
    def local_state_matches_the_oracle(self) -> None:
        """current(), get() and the tracked size agree with the oracle at every step."""
        current = self.md.current().to_dict()
        assert self.same(current, self.model)
        assert self.md.size == json_size(current)
        if self.exact:
            assert self.md.size == json_size(self.model)
        for key in LITERAL_KEYS:
            value = self.md.get(key)
            if key in self.model:
                assert self.same(value, self.model[key])
            else:
                assert value is None

    @invariant()
    def delivered_state_matches_the_oracle(self) -> None:
        """Once nothing is queued or in flight, the platform holds what the oracle says."""
        if self.flight is None and not self.md.pending:
            assert self.same(self.server.own, self.platform_model)
            assert self.same(self.server.parent, self.parent_model)
            assert self.same(self.server.root, self.root_model)

    def teardown(self) -> None:
        """Deliver everything: the platform ends where the oracle does."""
        if not hasattr(self, "md"):
            return
        if self.flight is not None:
            self.md.restore(self.flight)
        self.server.flush(self.md)
        self.md.accept(Flush(), copy.deepcopy(self.server.own))
        assert not self.md.pending
        assert self.same(self.server.own, self.platform_model)
        assert self.same(self.server.parent, self.parent_model)
        assert self.same(self.server.root, self.root_model)
        assert same_json(self.md.current(), self.server.own)


# One example is fifty steps: calls, drains, deliveries, failures and refusals interleaved.
BufferMachine.TestCase.settings = budget(5, stateful_step_count=50)
TestBufferMachine = BufferMachine.TestCase

# Floats for the float model: bounded, so that the rounding a reassociated sum can
# differ by stays far below close_json's tolerance, and a few that round visibly.
_FLOATS = st.one_of(
    st.sampled_from([0.1, 0.2, 0.3, -0.3, 0.7, 1e-7, -0.0]),
    st.floats(min_value=-1000, max_value=1000, allow_nan=False),
)
_NUMBERS = st.one_of(st.integers(min_value=-1000, max_value=1000), _FLOATS)
_WORDS = st.sampled_from(["", "a", "x", "日本語", "\ud800"])


def _float_values(*, numbers: bool = True) -> st.SearchStrategy[Any]:
    """JSON values with bounded ints and floats (or with no numbers at all)."""
    return json_values(numbers=_NUMBERS if numbers else st.nothing(), max_leaves=4)


_FLOAT_METADATA = metadata(numbers=_NUMBERS, max_leaves=4)


def _float_operations(*, unsafe: bool = True, update: bool = True) -> st.SearchStrategy[Operation]:
    """Operations writing and adding floats.

    A remove's value holds no number: a number rounded differently in the buffer and
    in the oracle would be removed from one and not the other, and they would differ
    by more than rounding from then on.
    """
    key = keys(unsafe=unsafe)
    options: list[st.SearchStrategy[Any]] = [
        st.builds(Set, key, _float_values()),
        st.builds(Delete, key),
        st.builds(Append, key, _float_values()),
        st.builds(Remove, key, _float_values(numbers=False)),
        st.builds(Increment, key, _NUMBERS),
    ]
    if update:
        options.append(st.builds(Update, _FLOAT_METADATA))
    return st.one_of(*options)


class FloatBufferMachine(BufferMachine):
    """:class:`BufferMachine` with float values and float increments, numbers compared with isclose.

    Each call is applied locally as it comes, but the platform receives collapsed
    batches, where float increments are merged: buffer, platform and oracle then agree
    up to reassociation. The buffer's tracked size must still equal the JSON size of
    its metadata exactly.
    """

    exact = False

    @initialize(
        initial=_FLOAT_METADATA,
        limit=st.sampled_from([None, 150, 400]),
        is_root=st.sampled_from([False, False, True]),
        body_bytes=st.sampled_from([MAX_REQUEST_BYTES, 260, 160]),
    )
    def start(self, initial: Metadata, limit: int | None, is_root: bool, body_bytes: int) -> None:
        """A run starting from metadata holding floats."""
        super().start(initial, limit, is_root, body_bytes)

    @rule(
        op=_float_operations(),
        who=st.sampled_from(["self", "self", "parent", "root"]),
        via_decrement=st.booleans(),
    )
    def call(self, op: Operation, who: str, via_decrement: bool) -> None:
        """One documented call, with floats, on the run, its parent or its root."""
        super().call(op, who, via_decrement)

    @rule(
        op=st.one_of(
            st.builds(Append, st.just("logs"), st.one_of(_WORDS, _NUMBERS)),
            st.builds(Remove, st.just("logs"), _WORDS),
            st.builds(Increment, st.sampled_from(["n", "$.logs.0", "$.*"]), _NUMBERS),
            st.builds(Set, st.sampled_from(["logs", "n"]), st.lists(_NUMBERS, max_size=3)),
            st.builds(Delete, st.sampled_from(["logs", "n"])),
        ),
        who=st.sampled_from(["self", "parent", "root"]),
    )
    def busy_call(self, op: Operation, who: str) -> None:
        """Float increments crowding two keys, merged by collapse across flushes."""
        self.call(op, who, via_decrement=False)

    @rule(ops=st.lists(_float_operations(unsafe=False, update=False), min_size=2, max_size=4))
    def chain(self, ops: list[Operation]) -> None:
        """Several calls with floats chained in one expression."""
        super().chain(ops)

    @rule(
        key=st.sampled_from(["n", "$.logs.0", "$.*"]),
        amounts=st.lists(_FLOATS, min_size=2, max_size=4),
        who=st.sampled_from(["self", "self", "parent"]),
    )
    def progress(self, key: str, amounts: list[float], who: str) -> None:
        """A run of float increments on one key, as a progress counter makes: collapse merges them."""
        for amount in amounts:
            self.call(Increment(key, amount), who, via_decrement=amount < 0)


FloatBufferMachine.TestCase.settings = budget(5, stateful_step_count=50)
TestFloatBufferMachine = FloatBufferMachine.TestCase


@budget(3)
@given(initial=metadata(), ops=st.lists(operations(unsafe=False), max_size=15))
def test_tracked_size_is_the_json_size_with_floats_too(initial: Metadata, ops: list[Operation]) -> None:
    """With floats, the size kept call by call still equals json_size of current()."""
    md = RunMetadata(initial, limit=10**7)
    for op in ops:
        make_call(md, op)
        assert md.size == json_size(md.current().to_dict())


@given(value=json_values())
def test_any_json_value_round_trips_through_set_and_get(value: Any) -> None:
    """get returns what set stored, and the wire text carries it back unchanged."""
    md = RunMetadata(limit=10**7)
    md.set("v", value)
    assert same_json(md.get("v"), value)
    assert same_json(md.get("$.v"), value)
    (text,) = md.drain().texts()
    assert same_json(json.loads(text.encode("utf-8"))["operations"][0]["value"], value)


# --------------------------------------------------------------------------- threads


def test_threads_lose_nothing() -> None:
    """8 threads x 1,000 calls while a flusher drains, fails and retries: every call arrives once."""
    md = RunMetadata(is_root=False, max_request_bytes=4_000)
    server = Server()
    threads_count, calls = 8, 1_000
    start = threading.Barrier(threads_count + 1)
    done = threading.Event()
    progress = threading.Condition()
    rounds = [0]
    errors: list[BaseException] = []

    def next_round(seen: int) -> Callable[[], bool]:
        return lambda: rounds[0] > seen or done.is_set()

    def worker(index: int) -> None:
        try:
            start.wait()
            for j in range(calls):
                if j % 100 == 99:
                    # Every 100 calls, wait for the flusher to finish one more round: flushes
                    # (and their failures) keep interleaving with the calls of all threads.
                    with progress:
                        progress.wait_for(next_round(rounds[0]), timeout=10)
                kind = j % 10
                if kind < 6:
                    md.increment(f"t{index}")
                elif kind == 6:
                    md.append("log", f"{index}:{j}")
                elif kind == 7:
                    md.parent.increment("rows")
                    md.root.append("seen", index)
                elif kind == 8:
                    md.increment("total", 2).decrement("total")
                else:
                    md.set(f"last{index}", j)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def flusher() -> None:
        chance = random.Random(20261122)
        try:
            start.wait()
            while not done.is_set():
                with progress:
                    rounds[0] += 1
                    progress.notify_all()
                flush = md.drain()
                if not flush:
                    continue
                outcome = chance.random()
                if outcome < 0.3:
                    md.restore(flush)
                elif outcome < 0.5:
                    texts = flush.texts()
                    delivered = chance.randrange(len(texts) + 1)
                    for text in texts[:delivered]:
                        server.take(text)
                    md.restore(flush, delivered=delivered)
                else:
                    server.deliver(md, flush)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads_count)]
        background = threading.Thread(target=flusher)
        for thread in [*workers, background]:
            thread.start()
        for thread in workers:
            thread.join()
        done.set()
        background.join()
    finally:
        sys.setswitchinterval(previous)
    assert errors == []
    flush = md.drain() if md.in_flight is None else md.in_flight
    if flush:
        server.deliver(md, flush)
    assert not md.pending
    assert md.in_flight is None
    for i in range(threads_count):
        assert server.own[f"t{i}"] == 600
        assert server.own[f"last{i}"] == 999
    assert server.own["total"] == threads_count * 100
    assert sorted(server.own["log"]) == sorted(
        f"{i}:{j}" for i in range(threads_count) for j in range(calls) if j % 10 == 6
    )
    assert server.parent == {"rows": threads_count * 100}
    assert sorted(server.root["seen"]) == sorted(i for i in range(threads_count) for _ in range(100))
    assert same_json(md.current().to_dict(), server.own)
    assert md.size == json_size(server.own)
