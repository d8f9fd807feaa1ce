"""A deliberately naive model of apply, and the comparisons tests judge results with.

The model deep-copies the state, then mutates it in place. It shares the path matcher
with metaops (the conformance vectors pin that down) but none of apply's
copy-on-write: every write stores a private deep copy, the way the semantics read on
paper. Property tests run batches through both and compare with :func:`same_json`
(or :func:`close_json` where floats were summed in another order).
"""

from __future__ import annotations

import math
from typing import Any

from metaops import Append, Delete, Increment, Operation, Remove, Set, Update, is_safe_key, json_equal
from metaops._json import MISSING, add_numbers, is_number, json_identical
from metaops._paths import DEAD, FAR, NOTHING, first, key_facts, match


def _fresh(value: Any) -> Any:
    """A copy sharing nothing, not even between places that shared one object.

    (``copy.deepcopy`` keeps such sharing, and apply legitimately writes one value at
    several places: mutating the oracle's copy in place would then change them all.)
    """
    if isinstance(value, dict):
        return {key: _fresh(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_fresh(item) for item in value]
    return value


def oracle_apply(state: dict[str, Any], ops: list[Operation]) -> tuple[dict[str, Any], list[int]]:
    """The metadata and the unapplied indices, computed the slow, obvious way."""
    m = _fresh(state)
    unapplied: list[int] = []
    for i, op in enumerate(ops):
        if isinstance(op, Update):
            m = _fresh(op.value)
            continue
        if not is_safe_key(op.key):
            unapplied.append(i)
            continue
        if isinstance(op, Delete):
            m.pop(op.key, None)
            continue
        components = key_facts(op.key).components
        if components is None:
            if not _literal(m, op):
                unapplied.append(i)
        elif not _path(m, op, components):
            unapplied.append(i)
    return m, unapplied


def _literal(m: dict[str, Any], op: Operation) -> bool:
    assert not isinstance(op, (Update, Delete))
    key, value = op.key, _fresh(op.value)
    current = m.get(key, MISSING)
    if isinstance(op, Set):
        m[key] = value
    elif isinstance(op, Append):
        m[key] = (
            [*current, value]
            if isinstance(current, list)
            else [value]
            if current is MISSING
            else [current, value]
        )
    elif isinstance(op, Remove):
        if not isinstance(current, list):
            return False
        m[key] = [x for x in current if not json_equal(x, value)]
    else:
        assert isinstance(op, Increment)
        m[key] = _incremented(current, value)
    return True


def _appended(current: object, value: Any) -> list[Any]:
    if current is MISSING:
        return [value]
    if isinstance(current, list):
        return [*current, value]
    return [current, value]


def _incremented(current: object, amount: Any) -> Any:
    return add_numbers(current, amount) if is_number(current) else add_numbers(0, amount)  # type: ignore[arg-type]


def _path(m: dict[str, Any], op: Operation, components: Any) -> bool:
    assert not isinstance(op, (Update, Delete))
    matches = match(m, components)
    current = first(matches)
    if isinstance(op, Set):
        new: Any = op.value
    elif isinstance(op, Append):
        if current is NOTHING:
            return True
        new = (
            [op.value]
            if current is MISSING
            else [*current, op.value]
            if isinstance(current, list)
            else [current, op.value]
        )
    elif isinstance(op, Remove):
        if not isinstance(current, list):
            return False
        new = [x for x in current if not json_equal(x, op.value)]
    else:
        assert isinstance(op, Increment)
        new = _incremented(current, op.value)
    if any(steps[-1] is FAR for steps, _, _ in matches):
        return False
    for steps, _, _ in matches:
        if steps[-1] is DEAD:
            continue
        node: Any = m
        for step in steps[:-1]:
            node = node[step]
        key: Any = steps[-1]
        if isinstance(node, list):
            while len(node) < key:
                node.append(None)
            if key == len(node):
                node.append(None)
        node[key] = _fresh(new)
    return True


def same_json(a: object, b: object) -> bool:
    """Equal as JSON text: same types (a bool is not a number), same key order."""
    return json_identical(a, b)


def close_json(a: object, b: object) -> bool:
    """Equal as JSON, except that two numbers of which one is a float need only be close.

    Collapsing merges float increments, and a merged sum equals the calls' one by one
    only up to reassociation ((x + a) + b against x + (a + b)). Ints stay exact.
    """
    if is_number(a) and is_number(b):
        if type(a) is int and type(b) is int:
            return a == b
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)  # type: ignore[arg-type]
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(close_json(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close_json(x, y) for x, y in zip(a, b, strict=True))
    return same_json(a, b)
