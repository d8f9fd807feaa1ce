"""``apply``: run a batch of operations over metadata with copy-on-write.

The input metadata and the operations' values are never mutated. A call copies
only the containers on the paths it writes, each at most once, and shares every
other subtree with the input, so its cost follows what the operations touch, not
the size of the metadata.

Ownership invariant: a container is in ``_Tree.owned`` only if this call created
it, it sits at exactly one place in the result, and every container above it is
owned too. Owned containers may be changed in place; any other must be copied
first. A value written at several places is therefore never owned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from metaops._json import (
    JSON,
    MISSING,
    add_numbers,
    describe,
    is_number,
    json_equal,
    json_identical,
)
from metaops._paths import DEAD, FAR, Match, Step, first, match, parse_key
from metaops._values import (
    OPERATION_TYPES,
    Append,
    Delete,
    Increment,
    Operation,
    Remove,
    Set,
    Update,
)

__all__ = ["ApplyResult", "apply"]


class ApplyResult(NamedTuple):
    """What :func:`apply` returns.

    ``metadata`` is the new metadata: the input object itself when nothing changed,
    otherwise a new top-level dict that shares unchanged subtrees with the input
    (treat nested values as read-only). ``unapplied`` holds the operations that were
    not applied, in order.
    """

    metadata: dict[str, JSON]
    unapplied: tuple[Operation, ...]


class _Tree:
    """The metadata being built, and which of its containers this call owns."""

    __slots__ = ("owned", "replaced", "root", "writes")

    def __init__(self, root: dict[str, JSON]) -> None:
        self.root = root
        self.owned: dict[int, object] = {}  # id -> container; holding it keeps the id unique
        self.writes = 0
        self.replaced = False

    def own_root(self) -> dict[str, JSON]:
        root = self.root
        if id(root) not in self.owned:
            root = dict(root)
            self.owned[id(root)] = root
            self.root = root
        return root

    def container(self, steps: tuple[Step, ...]) -> Any:
        """The owned container at ``steps[:-1]``, copying unowned ones on the way."""
        owned = self.owned
        node: Any = self.own_root()
        for i in range(len(steps) - 1):
            step = steps[i]
            child = node[step]
            if id(child) not in owned:
                child = dict(child) if isinstance(child, dict) else list(child)
                owned[id(child)] = child
                node[step] = child
            node = child
        return node

    def put_top(self, key: str, value: JSON) -> None:
        old = self.root.get(key, MISSING)
        if old is MISSING or not json_identical(old, value):
            self.own_root()[key] = value
            self.writes += 1

    def write_all(self, matches: list[Match], value: JSON, *, fresh: bool = False) -> bool:
        """Write ``value`` at every match; False (nothing written) if a match is out of reach.

        ``fresh`` says ``value`` was built by this call from the metadata's own
        containers (an append or remove result).
        """
        live = []
        for steps, old, _ in matches:
            last = steps[-1]
            if last is FAR:
                return False
            if last is not DEAD:
                live.append((steps, old))
        if fresh and len(live) > 1:
            self._disown_within(value)
        for steps, old in live:
            if old is not MISSING and json_identical(old, value):
                continue
            node = self.container(steps)
            key = steps[-1]
            if isinstance(node, list):
                assert isinstance(key, int)
                if key < len(node):
                    node[key] = value
                else:
                    node.extend([None] * (key - len(node)))
                    node.append(value)
            else:
                node[key] = value
            self.writes += 1
        return True

    def _disown_within(self, value: JSON) -> None:
        """Give up ownership of every owned container inside ``value`` (about to be shared)."""
        owned = self.owned
        stack = [value]
        while stack:
            node = stack.pop()
            children = node.values() if isinstance(node, dict) else node
            for child in children:  # type: ignore[union-attr]
                if id(child) in owned:
                    del owned[id(child)]
                    stack.append(child)


def _apply_set(tree: _Tree, op: Set) -> bool:
    key = op.key
    if not key.startswith("$."):
        if key == "__proto__":
            return False
        tree.put_top(key, op.value)
        return True
    parsed = parse_key(key)
    if not parsed.safe:
        return False
    assert parsed.components is not None
    return tree.write_all(match(tree.root, parsed.components), op.value)


def _apply_delete(tree: _Tree, op: Delete) -> bool:
    key = op.key
    # The guard reads "$." keys as paths even though delete then uses its key literally.
    if not parse_key(key).safe:
        return False
    if key in tree.root:
        del tree.own_root()[key]
        tree.writes += 1
    return True


def _apply_append(tree: _Tree, op: Append) -> bool:
    key = op.key
    value = op.value
    if not key.startswith("$."):
        if key == "__proto__":
            return False
        existing = tree.root.get(key, MISSING)
        if isinstance(existing, list) and id(existing) in tree.owned:
            existing.append(value)
            tree.writes += 1
            return True
        if isinstance(existing, list):
            grown = [*existing, value]
        elif existing is MISSING:
            grown = [value]
        else:
            grown = [existing, value]  # type: ignore[list-item]
        tree.owned[id(grown)] = grown
        tree.own_root()[key] = grown
        tree.writes += 1
        return True
    parsed = parse_key(key)
    if not parsed.safe:
        return False
    assert parsed.components is not None
    matches = match(tree.root, parsed.components)
    if not matches:
        return True
    current = first(matches)
    if current is MISSING:
        grown = [value]
    elif isinstance(current, list):
        grown = [*current, value]
    else:
        grown = [current, value]  # type: ignore[list-item]
    return tree.write_all(matches, grown, fresh=True)


def _without(items: list[JSON], value: JSON) -> list[JSON]:
    return [item for item in items if not json_equal(item, value)]


def _apply_remove(tree: _Tree, op: Remove) -> bool:
    key = op.key
    value = op.value
    if not key.startswith("$."):
        if key == "__proto__":
            return False
        existing = tree.root.get(key, MISSING)
        if not isinstance(existing, list):
            return False
        # ``in`` runs in C; JSON equality implies Python equality, so no hit means no removal.
        if value in existing:
            kept = _without(existing, value)
            if len(kept) != len(existing):
                tree.owned[id(kept)] = kept
                tree.own_root()[key] = kept
                tree.writes += 1
        return True
    parsed = parse_key(key)
    if not parsed.safe:
        return False
    assert parsed.components is not None
    matches = match(tree.root, parsed.components)
    current = first(matches)
    if not isinstance(current, list):
        return False
    return tree.write_all(matches, _without(current, value), fresh=True)


def _apply_increment(tree: _Tree, op: Increment) -> bool:
    key = op.key
    if not key.startswith("$."):
        if key == "__proto__":
            return False
        tree.put_top(key, _incremented(tree.root.get(key, MISSING), op.value))
        return True
    parsed = parse_key(key)
    if not parsed.safe:
        return False
    assert parsed.components is not None
    matches = match(tree.root, parsed.components)
    if not matches:
        return True
    return tree.write_all(matches, _incremented(first(matches), op.value))


def _incremented(current: object, amount: int | float) -> int | float:
    """What an increment writes: the current number plus ``amount`` (anything else is 0)."""
    return add_numbers(current, amount) if is_number(current) else add_numbers(0, amount)  # type: ignore[arg-type]


def _apply_update(tree: _Tree, op: Update) -> bool:
    # Shared, not copied: nothing here writes into a container it does not own.
    tree.root = op.value
    tree.owned = {}
    tree.writes += 1
    tree.replaced = True
    return True


_HANDLERS: dict[type, Callable[[_Tree, object], bool]] = {
    Set: _apply_set,  # type: ignore[dict-item]
    Delete: _apply_delete,  # type: ignore[dict-item]
    Append: _apply_append,  # type: ignore[dict-item]
    Remove: _apply_remove,  # type: ignore[dict-item]
    Increment: _apply_increment,  # type: ignore[dict-item]
    Update: _apply_update,  # type: ignore[dict-item]
}


def apply(metadata: dict[str, JSON], ops: Iterable[Operation] | Operation) -> ApplyResult:
    """Apply ``ops`` (or one operation) to ``metadata`` in order, as one batch.

    Never mutates ``metadata`` or any operation's value, and never raises for an
    operation: one the reference would not apply (an unsafe key, ``remove`` on a
    non-list, a write padding a list by over a million nulls) is returned in
    ``unapplied``. When nothing changed, ``result.metadata is metadata``.

    >>> from metaops import Append, Increment, Remove, apply
    >>> state = {"n": 1, "tags": ["a"]}
    >>> result = apply(state, [Increment("n", 2), Append("tags", "b"), Remove("n", 3)])
    >>> result.metadata
    {'n': 3, 'tags': ['a', 'b']}
    >>> result.unapplied
    (Remove(key='n', value=3),)
    >>> state
    {'n': 1, 'tags': ['a']}
    """
    if not isinstance(metadata, dict):
        msg = f"apply: metadata must be a dict (a JSON object), got {describe(metadata)}"
        raise TypeError(msg)
    if isinstance(ops, OPERATION_TYPES):
        ops = (ops,)  # type: ignore[assignment]
    elif isinstance(ops, dict):
        msg = "apply: ops must be operations, got a dict; parse wire dicts with parse_operations"
        raise TypeError(msg)
    tree = _Tree(metadata)
    unapplied: list[Operation] = []
    for index, op in enumerate(ops):  # type: ignore[arg-type]
        handler = _HANDLERS.get(type(op))
        if handler is None:
            msg = (
                f"apply: operation {index} is {describe(op)}, not an operation "
                "(Set, Delete, Append, Remove, Increment, Update); "
                "parse wire dicts with parse_operations"
            )
            raise TypeError(msg)
        if not handler(tree, op):
            unapplied.append(op)
    if not tree.writes:
        return ApplyResult(metadata, tuple(unapplied))
    root = tree.own_root()
    # One write that changed its place changed the metadata; after several writes
    # or a replacement, the result may still equal the input (set a 2; set a 1).
    if (tree.writes > 1 or tree.replaced) and json_identical(root, metadata):
        root = metadata
    return ApplyResult(root, tuple(unapplied))
