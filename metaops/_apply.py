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

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from metaops._errors import InvalidValueError
from metaops._json import (
    JSON,
    MAX_METADATA_DEPTH,
    MISSING,
    add_numbers,
    describe,
    is_number,
    json_equal,
    json_identical,
    nests_within,
)
from metaops._paths import DEAD, FAR, Match, Step, first, key_facts, match
from metaops._size import json_size, value_size
from metaops._values import (
    Append,
    Delete,
    Increment,
    Operation,
    Remove,
    Set,
    Update,
    iterate_operations,
    not_an_operation,
    per_operation,
)

__all__ = ["ApplyResult", "apply", "apply_sized"]


class ApplyResult(NamedTuple):
    """What :func:`apply` returns.

    ``metadata`` is the new metadata: the input object itself when nothing changed,
    otherwise a new top-level dict that shares unchanged subtrees with the input
    (treat nested values as read-only). ``unapplied`` holds the operations that were
    not applied, in order.

    >>> from metaops import Remove, Set, apply
    >>> metadata, unapplied = apply({"a": 1}, [Set("b", 2), Remove("a", 1)])
    >>> metadata, unapplied
    ({'a': 1, 'b': 2}, (Remove(key='a', value=1),))
    """

    metadata: dict[str, JSON]
    unapplied: tuple[Operation, ...]


class _Tree:
    """The metadata being built, and which of its containers this call owns."""

    __slots__ = ("owned", "replaced", "root", "size", "writes")

    def __init__(self, root: dict[str, JSON], size: int | None = None) -> None:
        self.root = root
        self.owned: dict[int, object] = {}  # id -> container; holding it keeps the id unique
        self.writes = 0
        self.replaced = False
        # The JSON size of root, kept up to date by every write when not None.
        self.size = size

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
        root = self.root
        old = root.get(key, MISSING)
        if old is MISSING or not json_identical(old, value):
            if self.size is not None:
                self.size += _entry_delta(root, key, old, value_size(value))
            self.own_root()[key] = value
            self.writes += 1

    def write_all(
        self,
        matches: list[Match],
        value: JSON,
        *,
        fresh: bool = False,
        appended_to: object = MISSING,
        nested: JSON = None,
        below: int = 0,
    ) -> bool:
        """Write ``value`` at every match; False (nothing written) if a match is out of reach.

        Out of reach: an index too far past a list's end, or a place so deep that
        ``nested``, ``below`` levels under it, would take the metadata past
        MAX_METADATA_DEPTH (``nested`` is the value written, or the item an append
        adds one level down; every match of a path is equally deep).
        ``fresh`` says ``value`` was built by this call from the metadata's own
        containers (an append or remove result): written at one place only, it is
        owned from then on, so later writes of the call change it in place.
        ``appended_to`` is the list that ``value`` extends by one item, if it does:
        where that list is replaced, the size grows by the item alone, without
        measuring the list.
        """
        live = []
        for steps, old, _ in matches:
            last = steps[-1]
            if last is FAR:
                return False
            if last is not DEAD:
                live.append((steps, old))
        if live and isinstance(nested, (dict, list)) and not _fits(nested, len(live[0][0]) + below):
            return False
        if fresh and len(live) > 1:
            self._disown_within(value)
        written = 0
        for steps, old in live:
            if old is not MISSING and json_identical(old, value):
                continue
            node = self.container(steps)
            key = steps[-1]
            if self.size is not None:
                self.size += self._write_delta(node, key, old, value, appended_to)
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
            written += 1
        if fresh and written == 1 and len(live) == 1:
            self.owned[id(value)] = value
        return True

    @staticmethod
    def _write_delta(node: Any, key: Step, old: object, value: JSON, appended_to: object) -> int:
        """How the JSON size changes when ``node[key]`` (now ``old``) becomes ``value``."""
        if old is appended_to and isinstance(old, list):
            # value is old + [item]: the item and, unless old was empty, a comma
            return value_size(value[-1]) + (1 if old else 0)  # type: ignore[index]
        if old is not MISSING:
            return value_size(value) - value_size(old)
        if isinstance(node, dict):
            return _entry_delta(node, key, MISSING, value_size(value))  # type: ignore[arg-type]
        padding = key - len(node)  # type: ignore[operator]
        # the nulls and the value, each after a comma unless the list was empty
        return 4 * padding + value_size(value) + padding + (1 if node else 0)

    def release(self, value: JSON) -> None:
        """Give up ownership of ``value`` and everything inside it (it is being handed out)."""
        if self.owned.pop(id(value), None) is not None:
            self._disown_within(value)

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


def _fits(value: JSON, place: int) -> bool:
    """Whether ``value`` can sit ``place`` levels below the top (1: at a top-level key).

    At a top-level key, whatever an operation may hold fits (values nest at most
    MAX_DEPTH levels, MAX_METADATA_DEPTH - 1 for one an append made): the hot path
    measures nothing.
    """
    return place <= 1 or nests_within(value, MAX_METADATA_DEPTH - place)


def _entry_delta(obj: dict[str, JSON], key: str, old: object, new_size: int) -> int:
    """How the size of ``obj`` changes when ``obj[key]`` becomes a value of ``new_size`` bytes."""
    if old is MISSING:
        # '"key":value', after a comma unless the object was empty
        return value_size(key) + 1 + new_size + (1 if obj else 0)
    return new_size - value_size(old)


def _apply_set(tree: _Tree, op: Set) -> bool:
    key = op.key
    if not key.startswith("$."):
        if key == "__proto__":
            return False
        tree.put_top(key, op.value)
        return True
    parsed = key_facts(key)
    if not parsed.safe:
        return False
    assert parsed.components is not None
    return tree.write_all(match(tree.root, parsed.components), op.value, nested=op.value)


def _apply_delete(tree: _Tree, op: Delete) -> bool:
    key = op.key
    # The guard reads "$." keys as paths even though delete then uses its key literally.
    if not key_facts(key).safe:
        return False
    root = tree.root
    if key in root:
        if tree.size is not None:
            # '"key":value' and, unless it was the only entry, a comma
            tree.size -= value_size(key) + 1 + value_size(root[key]) + (1 if len(root) > 1 else 0)
        del tree.own_root()[key]
        tree.writes += 1
    return True


def _apply_append(tree: _Tree, op: Append) -> bool:
    key = op.key
    value = op.value
    if not key.startswith("$."):
        if key == "__proto__":
            return False
        root = tree.root
        existing = root.get(key, MISSING)
        into_list = isinstance(existing, list)
        # The item goes one level down, into a list; a dict is wrapped in one.
        if isinstance(value, (dict, list)) and not _fits(value, 2):
            return False
        if not into_list and isinstance(existing, dict) and not _fits(existing, 2):
            return False
        if tree.size is not None:
            if into_list:
                tree.size += value_size(value) + (1 if existing else 0)
            elif existing is MISSING:
                tree.size += _entry_delta(root, key, MISSING, 2 + value_size(value))
            else:
                tree.size += 3 + value_size(value)  # "[", ",", "]" around the old value
        if into_list and id(existing) in tree.owned:
            existing.append(value)  # type: ignore[union-attr]
            tree.writes += 1
            return True
        if into_list:
            grown = [*existing, value]  # type: ignore[misc]
        elif existing is MISSING:
            grown = [value]
        else:
            grown = [existing, value]
        tree.owned[id(grown)] = grown
        tree.own_root()[key] = grown
        tree.writes += 1
        return True
    parsed = key_facts(key)
    if not parsed.safe:
        return False
    assert parsed.components is not None
    matches = match(tree.root, parsed.components)
    if not matches:
        return True
    current = first(matches)
    below = len(matches[0][0]) + 1  # where the item lands, and where a wrapped dict would
    if isinstance(current, dict) and not _fits(current, below):
        return False
    if len(matches) == 1 and isinstance(current, list) and id(current) in tree.owned:
        if isinstance(value, (dict, list)) and not _fits(value, below):
            return False
        # A list this call made, at its one place (first() of a single plain path
        # returns the list itself): it grows in place, as a top-level one does, so
        # appends to one path cost one copy of the list per call, not one each.
        if tree.size is not None:
            tree.size += value_size(value) + (1 if current else 0)
        current.append(value)
        tree.writes += 1
        return True
    if current is MISSING:
        grown = [value]
    elif isinstance(current, list):
        grown = [*current, value]
    else:
        grown = [current, value]
    return tree.write_all(matches, grown, fresh=True, appended_to=current, nested=value, below=1)


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
                if tree.size is not None:
                    # Items JSON-equal to value write the same text as value does.
                    removed = len(existing) - len(kept)
                    commas = len(existing) - 1 - max(len(kept) - 1, 0)
                    tree.size -= removed * value_size(value) + commas
                tree.owned[id(kept)] = kept
                tree.own_root()[key] = kept
                tree.writes += 1
        return True
    parsed = key_facts(key)
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
    parsed = key_facts(key)
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
    if tree.size is not None:
        tree.size = json_size(op.value)
    tree.owned = {}
    tree.writes += 1
    tree.replaced = True
    return True


# How each operation is applied: ``_HANDLERS[type(op)]`` (None for anything else).
_HANDLERS: dict[type, Callable[[_Tree, Any], bool]] = per_operation(
    set=_apply_set,
    delete=_apply_delete,
    append=_apply_append,
    remove=_apply_remove,
    increment=_apply_increment,
    update=_apply_update,
)


def apply(metadata: dict[str, Any], ops: Iterable[Operation] | Operation) -> ApplyResult:
    """Apply ``ops`` (or one operation) to ``metadata`` in order, as one batch.

    Never mutates ``metadata`` or any operation's value, and never raises for an
    operation: one the reference would not apply (an unsafe key, ``remove`` on a
    non-list, a write padding a list by over a million nulls) is returned in
    ``unapplied``, and so is a write that would nest the metadata deeper than
    ``MAX_DEPTH + 2`` levels (see :data:`metaops.MAX_DEPTH`). When nothing changed,
    ``result.metadata is metadata``. Numbers are added as JavaScript adds them: ints
    stay exact up to 2**53 in magnitude, and past it become the double JavaScript holds.

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
    return _run(_Tree(metadata), metadata, ops)[0]


def apply_sized(
    metadata: dict[str, Any], ops: Iterable[Operation] | Operation, size: int
) -> tuple[ApplyResult, int]:
    """:func:`apply`, also keeping ``size`` (``json_size(metadata)``) up to date.

    Each write adds what it adds and subtracts what it replaces, so the cost stays
    with what the operations touch.
    """
    return _run(_Tree(metadata, size), metadata, ops)


def _run_batch(tree: _Tree, ops: Iterable[Operation]) -> list[Operation]:
    """Apply each of ``ops`` to ``tree``; the ones not applied."""
    unapplied: list[Operation] = []
    for index, op in enumerate(iterate_operations(ops, "apply", one=True)):
        handler = _HANDLERS.get(type(op))
        if handler is None:
            raise not_an_operation("apply", index, op)
        if not handler(tree, op):
            unapplied.append(op)
    return unapplied


def _run(
    tree: _Tree, metadata: dict[str, Any], ops: Iterable[Operation] | Operation
) -> tuple[ApplyResult, int]:
    if not isinstance(metadata, dict):
        msg = f"apply: metadata must be a dict (a JSON object), got {describe(metadata)}"
        raise InvalidValueError(msg, "metadata")
    handler = _HANDLERS.get(type(ops))
    unapplied: Sequence[Operation]
    if handler is None:
        unapplied = _run_batch(tree, ops)  # type: ignore[arg-type]
    elif handler(tree, ops):  # one operation (every SDK call): no batch to iterate
        unapplied = ()
    else:
        unapplied = (ops,)  # type: ignore[assignment]
    size = -1 if tree.size is None else tree.size
    if not tree.writes:
        return ApplyResult(metadata, tuple(unapplied)), size
    root = tree.own_root()
    # One write that changed its place changed the metadata; after several writes
    # or a replacement, the result may still equal the input (set a 2; set a 1).
    if (tree.writes > 1 or tree.replaced) and json_identical(root, metadata):
        root = metadata
    return ApplyResult(root, tuple(unapplied)), size
