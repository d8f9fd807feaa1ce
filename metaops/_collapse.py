"""The algebra over batches: ``collapse``, ``compose`` and ``chunk``.

``collapse`` turns a queued batch into a shorter one with the same effect from
every starting state, key insertion order included. It works per top-level key,
because operations on different top-level keys commute as values:

* after a literal ``set`` or a ``delete`` of a key, its value is *known*, and
  everything that follows on that key is folded into it by actually applying it;
  the key then leaves as one ``set`` (or ``delete``, or ``delete`` + ``set`` when
  the key was deleted and re-created, which moves it to the end);
* after an ``update`` the whole metadata is known: the rest of the batch folds into
  one ``update``;
* while a key's value is unknown, its operations are kept in order, except that an
  operation merges into the latest one on the same path when nothing in between
  touches that path (increments add up, a ``set`` replaces what it overwrites, a
  repeated ``remove`` is dropped). Paths that only diverge (``$.counters.c1`` and
  ``$.counters.c2``) do not get in each other's way.

Keys leave in the order in which they were (re)created, so the result inserts
keys in the same order as the input. A top-level wildcard reads every key (and
their order), so it is a barrier: what comes before it is collapsed on its own.

No merge is made that changes a result. The reference's rule (merge consecutive
operations of one type on one key) merges two increments through a wildcard whose
first match can be a list even though that changes the result; that is the one
case where ``collapse`` keeps two operations where the reference keeps one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from metaops._apply import _HANDLERS, _Tree
from metaops._errors import InvalidLimitError, MetadataTooLargeError
from metaops._json import MAX_EXACT_INT, MIN_EXACT_INT, add_numbers, describe, fits_double, json_equal
from metaops._paths import SAFE_KEYS, Route, key_facts, routes
from metaops._size import json_size
from metaops._values import (
    OPERATION_CLASSES,
    WIRE_TYPES,
    Delete,
    Increment,
    Operation,
    Remove,
    Set,
    Update,
    iterate_operations,
    not_an_operation,
)

__all__ = ["MAX_REQUEST_BYTES", "chunk", "collapse", "compose", "reference_rule"]

MAX_REQUEST_BYTES = 1_048_576
"""1 MiB: under the platform's request body limit on the metadata route (1 MB, now 2 MB)."""

# '{"operations":[' and ']}' around the comma-separated operations.
_BODY_OVERHEAD = len('{"operations":[]}')

# How far back _KeyState.contiguous looks before answering "no".
_CONTIGUITY_SCAN = 32


_UPDATE_ROUTE = Route("update")

# Each operation class's ``_paths``, looked up by class (None: not an operation).
_READS_PATHS: dict[type, bool] = {cls: cls._paths for cls in WIRE_TYPES.values()}


def _route(op: Operation) -> Route:
    """Where ``op`` acts (its key's facts keep it: worked out once per key)."""
    if not op._keyed:
        return _UPDATE_ROUTE
    facts = key_facts(op.key)  # type: ignore[union-attr]
    route = facts.route if op._paths else facts.literal_route
    if route is None:
        routes(facts)
        route = facts.route if op._paths else facts.literal_route
        assert route is not None
    return route


def _leaves_value(op: Operation) -> bool:
    """Whether ``op`` leaves a non-null value at every place it matches.

    An operation that writes does, unless it is a set of null (an append writes a
    list, an increment a number).
    """
    return op._writes and not (type(op) is Set and op.value is None)


def _extend(
    container: list[Any],
    chain: list[int],
    op: Operation,
    route: Route,
    contiguous: Callable[[], bool] | None = None,
) -> None:
    """Add ``op`` to ``container`` after the ``chain`` of operations on the same place.

    ``chain`` holds the positions in ``container`` of the operations on exactly the
    place ``op`` acts on, with nothing in between that touches it. ``op`` merges into
    the chain when that cannot change a result, else it is appended and joins the
    chain. ``contiguous`` tells whether nothing at all stands between the chain's
    operations (None: nothing can); it is asked only when the answer matters.
    """
    literal = route.kind == "literal"
    last = container[chain[-1]]
    assert last is not None
    if not literal and type(last) is Set and last.value is None and route.leaf_plain:
        return  # a null leaf cannot be reached by this path again: op changes nothing
    if type(op) is Set and not literal:
        # A set writes at the places the chain wrote, so it replaces the whole chain
        # (at the chain's start, where the place was created). If the chain may not
        # have written (it starts with a remove), a list written between could have
        # padded the place with a null, which the set would then not reach.
        start = container[chain[0]]
        if _leaves_value(start) or not route.leaf_plain or contiguous is None or contiguous():
            _replace_from(container, chain, 0, op)
            return
        # From the last operation that certainly wrote a value on, the place holds
        # one, whatever stands between: the set can take over from there.
        for position in range(len(chain) - 1, 0, -1):
            if _leaves_value(container[chain[position]]):
                _replace_from(container, chain, position, op)
                return
    elif type(op) is Increment and type(last) is Increment:
        if route.mergeable_increments:
            total = add_numbers(last.value, op.value)
            if fits_double(total):
                container[chain[-1]] = Increment._trusted(op.key, total)
                return
            # An overflowing sum could not be sent (the wire has no infinity): keep both.
    elif (
        type(op) is Remove and type(last) is Remove and not route.complex and json_equal(last.value, op.value)
    ):
        return  # nothing equal to the value is left to remove
    container.append(op)
    chain.append(len(container) - 1)


def _replace_from(container: list[Any], chain: list[int], position: int, op: Operation) -> None:
    """Put ``op`` in place of the chain's operations from ``position`` on."""
    container[chain[position]] = op
    for index in chain[position + 1 :]:
        container[index] = None
    del chain[position + 1 :]


class _Sum:
    """A run of literal increments being added up (an Increment is built once, on output)."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: int | float) -> None:
        self.key = key
        self.value = value

    def add(self, amount: int | float) -> bool:
        """Add ``amount``; False (nothing added) where the sum would overflow a double."""
        total = self.value
        if type(total) is int and type(amount) is int:
            # Increment amounts are JSON numbers: an int is within 2**53, as is this sum
            # while it is an int. While the sum stays within too, it is exact: no rounding.
            total += amount
            if MIN_EXACT_INT <= total <= MAX_EXACT_INT:
                self.value = total
                return True
            total = self.value
        total = add_numbers(total, amount)
        if type(total) is float and not math.isfinite(total):
            return False
        self.value = total
        return True

    def operation(self) -> Increment:
        done: Increment = Increment._trusted(self.key, self.value)
        return done


class _PathNode:
    """One path below a top-level key, in a trie of the paths a key's chains are on.

    A trie, not a table keyed by path tuples: finding a path's ancestors and
    descendants then costs the path's length, not its square.
    """

    __slots__ = ("chain", "children")

    def __init__(self) -> None:
        # The chain of operations on exactly this path (see _extend), if one is open.
        self.chain: list[int] | None = None
        self.children: dict[str, _PathNode] = {}


class _KeyState:
    """One top-level key within a segment."""

    __slots__ = (
        "anchor",
        "complex_entry",
        "deleted",
        "deleted_at",
        "first",
        "known",
        "literal_entry",
        "paths",
        "program",
    )

    def __init__(self, first: int) -> None:
        self.first = first
        # The sequence number of the operation that decides where the key sits if
        # it is (re)created; None while no operation can create it.
        self.anchor: int | None = None
        self.known = False
        self.deleted = False
        # The sequence number of the latest delete: where a key that ends deleted
        # leaves. (Not the first operation on the key: collapsing reorders those, and
        # a later compose must place the delete where a collapse from scratch would.)
        self.deleted_at = 0
        # The key's operations while its value is unknown (None: merged away).
        self.program: list[Operation | _Sum | None] = []
        # The chains of operations on tracked paths, valid while nothing since touched
        # their path (see _extend); None while there is none.
        self.paths: _PathNode | None = None
        self.literal_entry: list[int] | None = None
        self.complex_entry: tuple[str, list[int]] | None = None

    def forget_entries(self) -> None:
        self.paths = None
        self.literal_entry = None
        self.complex_entry = None

    def take_chain(self, path: tuple[str, ...]) -> _PathNode:
        """The node of ``path``, after forgetting every chain a write there may change.

        Those are the chains on its ancestors and its descendants (and the literal
        and complex ones); its own chain is left on the node for the caller.
        """
        self.literal_entry = None
        self.complex_entry = None
        node = self.paths
        if node is None:
            node = self.paths = _PathNode()
        for name in path:
            node.chain = None
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _PathNode()
            node = child
        if node.children:
            # Every chain below goes: the subtree is dropped whole, each of its nodes
            # visited once in its life (when it is freed), so this stays linear.
            node.children = {}
        return node

    def contiguous(self, chain: list[int]) -> bool:
        """Whether only the chain's own operations stand in the program from its start on.

        Past a short stretch the answer is "no" without looking, so that collapse
        stays linear: it only forgoes a merge the reference's rule would not make.
        """
        program = self.program
        if len(program) - chain[0] > _CONTIGUITY_SCAN:
            return False
        members = set(chain)
        return all(program[i] is None or i in members for i in range(chain[0], len(program)))


def _creates(op: Operation, route: Route) -> bool:
    """Whether ``op`` creates its top-level key when the key is absent."""
    if not op._writes:
        return False
    return route.kind == "literal" or (route.kind == "path" and not route.path and not route.complex)


class _Reducer:
    """The state of a collapse in progress; it can keep consuming (``compose``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.version = 0
        # Closed segments and the barriers between them (None: merged away).
        self.emitted: list[Operation | None] = []
        # The run of barriers on one key at the end of emitted, while nothing follows.
        self.barrier_chain: list[int] | None = None
        self.inert: list[Operation] = []
        self.keys: dict[str, _KeyState] = {}
        self.known = _Tree({})  # the values of the keys whose value is known
        self.whole = False  # after an update: known holds the whole metadata
        self.seq = 0

    def feed(self, ops: Iterable[Operation], function: str = "collapse") -> None:
        known_keys = SAFE_KEYS
        keys = self.keys
        before = self.seq
        for op in iterate_operations(ops, function):
            cls = type(op)
            # One lookup both checks that op is an operation and reads the fact the hot path needs.
            paths = _READS_PATHS.get(cls)
            if paths is None:
                raise not_an_operation(function, self.seq - before, op)
            self.seq += 1
            self.version += 1
            # The hot path: a key met before, read as a path where it is one.
            facts = known_keys.get(op.key) if paths else None
            route = None if facts is None else facts.route
            if route is None:
                route = _route(op)
            kind = route.kind
            if kind == "literal" and not self.whole:
                # The hot path: a literal key (most SDK calls).
                state = keys.get(route.top)
                if state is None:
                    state = keys[route.top] = _KeyState(self.seq)
                if state.known:
                    self._fold_known(state, route.top, op)
                elif cls is Set:
                    self._learn(state, op)
                elif cls is Delete:
                    if route.top.startswith("$."):
                        # Such a key cannot become known: its value could leave only as a
                        # set, and a set of such a key is a path. Still, nothing before
                        # the delete matters any more.
                        state.program = [op]
                        state.forget_entries()
                        state.literal_entry = [0]
                        state.anchor = None
                    else:
                        self._learn(state, op)
                else:
                    if state.anchor is None and cls is not Remove:
                        state.anchor = self.seq
                    chain = state.literal_entry
                    if chain is not None and cls is not Remove:
                        # Fast paths of _extend for the commonest calls; no path chain
                        # can be open while a literal chain is.
                        program = state.program
                        last = program[chain[-1]]
                        if isinstance(op, Increment) and isinstance(last, _Sum) and last.add(op.value):
                            pass
                        elif isinstance(op, Increment) and isinstance(last, Increment):
                            total = _Sum(last.key, last.value)
                            if total.add(op.value):
                                program[chain[-1]] = total
                            else:
                                program.append(op)
                                chain.append(len(program) - 1)
                        else:
                            program.append(op)
                            chain.append(len(program) - 1)
                    else:
                        self._add_literal(state, op, route)
                continue
            if kind == "inert":
                self._add_inert(op)
            elif kind == "update":
                self.emitted.clear()
                self.keys.clear()
                self.barrier_chain = None
                self.known = _Tree({})
                self.whole = True
                _HANDLERS[Update](self.known, op)
            elif self.whole:
                _HANDLERS[type(op)](self.known, op)
            elif kind == "noop":
                pass
            elif kind == "barrier":
                self._barrier(op, route)
            else:
                self._on_key(op, route)

    def _add_inert(self, op: Operation) -> None:
        # Never applied, never lost: kept, merged only as the reference would.
        if self.inert:
            merged = _merged_by_reference_rule(self.inert[-1], op)
            # (An overflowing sum could not be sent: the wire has no infinity.)
            if merged is not None and (type(merged) is not Increment or fits_double(merged.value)):
                self.inert[-1] = merged
                return
        self.inert.append(op)

    def _barrier(self, op: Operation, route: Route) -> None:
        if self.keys:
            self._close_segment()
        chain = self.barrier_chain
        if chain is not None and self.emitted[chain[-1]].key == op.key:  # type: ignore[union-attr]
            _extend(self.emitted, chain, op, route)
            return
        self.emitted.append(op)
        self.barrier_chain = [len(self.emitted) - 1]

    def _close_segment(self) -> None:
        self.emitted.extend(self._segment_ops())
        self.keys.clear()  # the same dict: feed() holds it
        self.known = _Tree({})
        self.barrier_chain = None

    def _on_key(self, op: Operation, route: Route) -> None:
        top = route.top
        state = self.keys.get(top)
        if state is None:
            state = self.keys[top] = _KeyState(self.seq)
        if state.known:
            self._fold_known(state, top, op)
            return
        if state.anchor is None and _creates(op, route):
            state.anchor = self.seq
        self._add_to_program(state, op, route)

    def _learn(self, state: _KeyState, op: Operation) -> None:
        """A literal set or delete on a key whose value was unknown: now it is known.

        What came before on the key only decided whether (and where) it was created.
        """
        if type(op) is Delete:
            state.deleted = True
            state.deleted_at = self.seq
            state.anchor = None
        else:
            if state.anchor is None:
                state.anchor = self.seq
            self.known.own_root()[op.key] = op.value  # type: ignore[union-attr]
        state.known = True
        state.program = []
        state.forget_entries()

    def _fold_known(self, state: _KeyState, top: str, op: Operation) -> None:
        known = self.known
        present = top in known.root
        cls = type(op)
        if cls is Delete:
            if present:
                del known.own_root()[top]
            state.deleted = True
            state.deleted_at = self.seq
            state.anchor = None
            return
        if cls is Set and op.key == top:  # type: ignore[union-attr]
            known.own_root()[top] = op.value  # type: ignore[union-attr]
        else:
            _HANDLERS[cls](known, op)
        if not present and top in known.root:
            # Re-created after a delete: this is where it now sits.
            state.anchor = self.seq

    def _add_literal(self, state: _KeyState, op: Operation, route: Route) -> None:
        # A literal operation touches the whole value: every path chain ends here.
        chain = state.literal_entry
        if state.paths is not None or state.complex_entry is not None:
            state.forget_entries()
        if chain is not None:
            _extend(state.program, chain, op, route)
            state.literal_entry = chain
            return
        state.program.append(op)
        state.literal_entry = [len(state.program) - 1]

    def _add_to_program(self, state: _KeyState, op: Operation, route: Route) -> None:
        program = state.program
        if route.complex:
            # Wildcards and slices may reach anything under the key: only a run of
            # operations on the very same path, with nothing between, can merge.
            entry = state.complex_entry
            state.forget_entries()
            if entry is not None and entry[0] == op.key:  # type: ignore[union-attr]
                _extend(program, entry[1], op, route)
                state.complex_entry = entry
                return
            program.append(op)
            state.complex_entry = (op.key, [len(program) - 1])  # type: ignore[union-attr]
            return
        node = state.take_chain(route.path)
        chain = node.chain
        if chain is None:
            program.append(op)
            chain = [len(program) - 1]
        else:
            _extend(program, chain, op, route, lambda: state.contiguous(chain))
        node.chain = chain

    def _segment_ops(self) -> list[Operation]:
        placed: list[tuple[int, list[Operation]]] = []
        ops: list[Operation]
        root = self.known.root
        for top, state in self.keys.items():
            if not state.known:
                ops = [
                    slot.operation() if isinstance(slot, _Sum) else slot
                    for slot in state.program
                    if slot is not None
                ]
                if ops:
                    placed.append((state.anchor or state.first, ops))
                continue
            if top in root:
                value = root[top]
                self.known.release(value)
                ops = [Set._trusted(top, value)]
                if state.deleted:
                    ops.insert(0, Delete._trusted(top))
                placed.append((state.anchor or state.first, ops))
            elif state.deleted:
                placed.append((state.deleted_at, [Delete._trusted(top)]))
        placed.sort(key=lambda item: item[0])
        return [op for _, ops in placed for op in ops]

    def result(self) -> list[Operation]:
        if self.whole:
            root = self.known.own_root()
            self.known.release(root)
            return [Update._trusted(root), *self.inert]
        return [*(op for op in self.emitted if op is not None), *self._segment_ops(), *self.inert]


class _Collapsed(tuple):  # type: ignore[type-arg]
    """A collapsed batch that remembers the reducer state it came from.

    ``compose`` continues from that state instead of re-collapsing, as long as no
    other ``compose`` has moved the state on since.
    """

    _reducer: _Reducer
    _version: int

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple, (tuple(self),))


def _finish(reducer: _Reducer) -> tuple[Operation, ...]:
    out = _Collapsed(reducer.result())
    out._reducer = reducer
    out._version = reducer.version
    return out


def collapse(ops: Iterable[Operation]) -> tuple[Operation, ...]:
    """A batch with the same effect as ``ops`` from every starting state, usually much shorter.

    Same metadata and key order from every state (exactly for ints; float
    increments that were merged are equal up to reassociation), deterministic,
    idempotent, linear in the length of ``ops``.

    >>> from metaops import Append, Increment, Set, collapse
    >>> collapse([Increment("n"), Set("status", "a"), Increment("n"), Set("status", "b")])
    (Increment(key='n', value=2), Set(key='status', value='b'))
    >>> collapse([Set("logs", []), Append("logs", "one"), Append("logs", "two")])
    (Set(key='logs', value=['one', 'two']),)
    """
    reducer = _Reducer()
    reducer.feed(ops)
    return _finish(reducer)


def compose(first: Sequence[Operation], second: Iterable[Operation]) -> tuple[Operation, ...]:
    """``collapse(first + second)``, cheaper when ``first`` came from ``collapse``/``compose``.

    A server that folds arriving batches into a buffer one at a time pays for the
    new operations only. Associative, with the empty batch as identity.

    >>> from metaops import Increment, compose
    >>> buffer = compose((), [Increment("n", 2)])
    >>> compose(buffer, [Increment("n", 3)])
    (Increment(key='n', value=5),)
    """
    if isinstance(first, _Collapsed):
        # Taken before the lock: a lazy ``second`` that composes onto ``first`` itself
        # would otherwise wait for the lock forever.
        second = tuple(iterate_operations(second, "compose"))
        reducer = first._reducer
        with reducer.lock:
            if reducer.version == first._version:
                reducer.feed(second, "compose")
                return _finish(reducer)
    reducer = _Reducer()
    reducer.feed(first, "compose")
    reducer.feed(second, "compose")
    return _finish(reducer)


def reference_rule(ops: Iterable[Operation], *, sound: bool = False) -> list[Operation]:
    """What the reference's ``collapseOperations`` makes of ``ops``, for comparisons.

    Consecutive operations of one type on one key merge: increments are summed,
    of several sets the last is kept, of several deletes one. Nothing else merges.
    ``sound=True`` leaves out the one merge of that rule that changes results: two
    increments through a wildcard or slice whose last component is a plain key.

    >>> from metaops import Append, Increment, Set
    >>> reference_rule([Increment("n"), Increment("n", 2), Set("s", 1), Set("s", 2), Append("l", 1)])
    [Increment(key='n', value=3), Set(key='s', value=2), Append(key='l', value=1)]
    >>> len(reference_rule([Increment("n"), Append("l", 1), Increment("n")]))
    3
    >>> len(reference_rule([Increment("$.*.x"), Increment("$.*.x")], sound=True))
    2
    """
    out: list[Operation] = []
    for op in ops:
        merged = _merged_by_reference_rule(out[-1], op) if out else None
        if merged is None:
            out.append(op)
            continue
        if sound and type(op) is Increment:
            route = _route(op)
            if route.kind != "inert" and not route.mergeable_increments:
                out.append(op)
                continue
        out[-1] = merged
    return out


def _merged_by_reference_rule(last: Operation, op: Operation) -> Operation | None:
    """The one operation the reference's rule makes of ``last`` and then ``op``, or None.

    Only consecutive operations of one type on one key merge: two increments add
    up, of two sets the second stays, of two deletes the first.
    """
    kind = type(op)
    if type(last) is not kind or not op._keyed or last.key != op.key:  # type: ignore[union-attr]
        return None
    if isinstance(op, Increment) and isinstance(last, Increment):
        total: Increment = Increment._trusted(op.key, add_numbers(last.value, op.value))
        return total
    if kind is Set:
        return op
    if kind is Delete:
        return last
    return None


def chunk(ops: Iterable[Operation], max_bytes: int = MAX_REQUEST_BYTES) -> list[tuple[Operation, ...]]:
    """Split ``ops`` into consecutive request bodies of at most ``max_bytes`` each.

    Each body is ``{"operations": [...]}``, measured with :func:`json_size`; order
    is kept. An operation too large for a body of its own raises
    :class:`MetadataTooLargeError` naming its index.

    >>> from metaops import Set, chunk
    >>> [len(part) for part in chunk([Set("k", "x" * 40)] * 5, max_bytes=200)]
    [2, 2, 1]
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= _BODY_OVERHEAD:
        msg = f"chunk: max_bytes must be an int over {_BODY_OVERHEAD}, got {describe(max_bytes)}"
        raise InvalidLimitError(msg)
    batch = tuple(iterate_operations(ops, "chunk"))
    if not batch:
        return []
    for index, op in enumerate(batch):
        if type(op) not in OPERATION_CLASSES:
            raise not_an_operation("chunk", index, op)
    wires = [op.to_wire() for op in batch]
    if json_size({"operations": wires}) <= max_bytes:
        return [batch]
    parts: list[tuple[Operation, ...]] = []
    start = 0
    used = _BODY_OVERHEAD
    for index, wire in enumerate(wires):
        size = json_size(wire)
        if _BODY_OVERHEAD + size > max_bytes:
            raise MetadataTooLargeError(_BODY_OVERHEAD + size, max_bytes, what=f"operation {index}")
        extra = size + (1 if index > start else 0)  # a comma before every operation but the first
        if used + extra > max_bytes:
            parts.append(batch[start:index])
            start = index
            used = _BODY_OVERHEAD + size
        else:
            used += extra
    parts.append(batch[start:])
    return parts
