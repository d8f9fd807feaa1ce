"""The conformance vectors computed by running the reference, one parametrized test per file.

The vectors ship inside the package, in ``metaops/conformance/`` (what each file
holds: its ``README.md``), so that ``python -m metaops vectors DIR`` can hand them
to other implementations. Every case must pass: none is skipped.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from metaops import InvalidOperationError, apply, json_equal, json_size, parse_operation, parse_operations

from .conftest import read_vectors

APPLY = list(read_vectors("apply.jsonl"))
DIVERGENCES = list(read_vectors("divergences.jsonl"))
WIRE = list(read_vectors("wire.jsonl"))
SIZE = list(read_vectors("size.jsonl"))


def test_vector_counts() -> None:
    """The vector files are complete (a truncated copy would silently test less)."""
    assert (len(APPLY), len(DIVERGENCES), len(WIRE), len(SIZE)) == (2304, 14, 1500, 1500)


def _check_apply(case: dict[str, Any]) -> None:
    # Unsafe keys are part of apply's contract, so the harness skips only that check.
    ops = parse_operations(case["ops"], safe_keys=False)
    state = case["state"]
    before = copy.deepcopy(state)
    values_before = [copy.deepcopy(op.to_wire()) for op in ops]
    result = apply(state, ops)
    unapplied = [i for i, op in enumerate(ops) if any(op is u for u in result.unapplied)]
    assert json_equal(result.metadata, case["metadata"]), json.dumps(result.metadata)
    assert unapplied == case["unapplied"]
    assert state == before, "apply mutated its input metadata"
    assert [op.to_wire() for op in ops] == values_before, "apply mutated an operation's value"


@pytest.mark.parametrize("case", APPLY, ids=[f"apply-{i}" for i in range(len(APPLY))])
def test_apply_vector(case: dict[str, Any]) -> None:
    """apply gives the reference's metadata and unapplied indices."""
    _check_apply(case)


@pytest.mark.parametrize("case", DIVERGENCES, ids=[case["why"] for case in DIVERGENCES])
def test_divergence_vector(case: dict[str, Any]) -> None:
    """Where the reference crashes or corrupts data, apply gives the specified result."""
    _check_apply(case)


@pytest.mark.parametrize("case", WIRE, ids=[f"wire-{i}" for i in range(len(WIRE))])
def test_wire_vector(case: dict[str, Any]) -> None:
    """parse_operation accepts exactly what the reference schema accepts."""
    if case["valid"]:
        op = parse_operation(case["op"])
        # What was accepted goes back to the wire and parses to an equal operation.
        assert parse_operation(op.to_wire()) == op
    else:
        with pytest.raises(InvalidOperationError):
            parse_operation(case["op"])


@pytest.mark.parametrize("case", SIZE, ids=[f"size-{i}" for i in range(len(SIZE))])
def test_size_vector(case: dict[str, Any]) -> None:
    """json_size is the byte length of JavaScript's JSON.stringify."""
    assert json_size(json.loads(case["json"])) == case["size"]
