"""The command line: the oracle commands against the reference's vectors, and every bad input.

Most tests call ``main(argv)`` in the test process (fast); a few run
``python -m metaops`` as a subprocess to check the real entry point, its exit
status and standard input.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from metaops import MAX_DEPTH, Operation, json_equal, parse_operations
from metaops._cli import main
from metaops._collapse import reference_rule
from metaops.strategies import batches, metadata

from .conftest import read_vectors
from .oracle import oracle_apply

ROOT = Path(__file__).resolve().parent.parent
APPLY = list(read_vectors("apply.jsonl"))
DIVERGENCES = list(read_vectors("divergences.jsonl"))
WIRE = list(read_vectors("wire.jsonl"))
SIZE = list(read_vectors("size.jsonl"))
COMMANDS = ["demo", "apply", "collapse", "compose", "size", "validate", "vectors"]


class Ran:
    """What one in-process run of ``main`` did."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def json(self) -> Any:
        """Standard output parsed as JSON, after checking it is exactly one line."""
        assert self.out.endswith("\n"), self.out
        assert self.out.count("\n") == 1, self.out
        return json.loads(self.out)


def run(*argv: str, stdin: bytes | str = b"") -> Ran:
    """``main(argv)`` with ``stdin`` as standard input, capturing standard output and error."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        sys.stdin = saved
    return Ran(code, out.getvalue(), err.getvalue())


def write(directory: Path, name: str, value: object) -> str:
    """``value`` as JSON text in ``directory/name``; return the path."""
    path = directory / name
    path.write_text(json.dumps(value), encoding="utf-8")
    return str(path)


def assert_bad_input(ran: Ran, command: str, *fragments: str) -> None:
    """Exit status 2, nothing on stdout, one line on stderr naming the command and each fragment."""
    assert ran.code == 2, (ran.code, ran.out, ran.err)
    assert ran.out == ""
    assert ran.err.endswith("\n"), ran.err
    assert ran.err.count("\n") == 1, ran.err
    assert ran.err.startswith(f"metaops {command}: "), ran.err
    for fragment in fragments:
        assert fragment in ran.err, (fragment, ran.err)


def js_written(value: Any) -> Any:
    """``value`` as JavaScript's JSON.stringify writes it: a non-finite number becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: js_written(item) for key, item in value.items()}
    if isinstance(value, list):
        return [js_written(item) for item in value]
    return value


def wire(ops: list[Operation] | tuple[Operation, ...]) -> list[dict[str, Any]]:
    """The wire form of ``ops``."""
    return [op.to_wire() for op in ops]


# --------------------------------------------------------------------------- apply


@pytest.mark.parametrize(
    "case",
    APPLY[:200] + DIVERGENCES,
    ids=[f"apply-{i}" for i in range(200)] + [c["why"] for c in DIVERGENCES],
)
def test_apply_answers_the_vectors(case: dict[str, Any], tmp_path: Path) -> None:
    """`apply STATE OPS` prints the metadata and the unapplied indices the vectors record."""
    ran = run("apply", "-", write(tmp_path, "ops.json", case["ops"]), stdin=json.dumps(case["state"]))
    assert ran.code == 0, ran.err
    answer = ran.json()
    assert list(answer) == ["metadata", "unapplied"]
    assert json_equal(answer["metadata"], case["metadata"])
    assert answer["unapplied"] == case["unapplied"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=metadata(), ops=batches())
def test_apply_agrees_with_the_naive_model(
    state: dict[str, Any], ops: list[Operation], tmp_path: Path
) -> None:
    """What `apply` prints, read back as JSON, is the naive model's result written by JSON.stringify."""
    ran = run("apply", write(tmp_path, "state.json", state), "-", stdin=json.dumps(wire(ops)))
    assert ran.code == 0, ran.err
    expected, unapplied = oracle_apply(state, ops)
    answer = ran.json()
    assert json_equal(answer["metadata"], js_written(expected))
    assert answer["unapplied"] == unapplied


def test_output_is_one_compact_ascii_line_in_key_order(tmp_path: Path) -> None:
    """Output: compact JSON, ASCII with \\u escapes, keys in insertion order (not sorted), one line."""
    state = write(tmp_path, "state.json", {"zeta": 1, "alpha": "日本"})
    ops = write(tmp_path, "ops.json", [{"type": "set", "key": "beta", "value": [1.5, None, True]}])
    ran = run("apply", state, ops)
    assert (
        ran.out == '{"metadata":{"zeta":1,"alpha":"\\u65e5\\u672c","beta":[1.5,null,true]},"unapplied":[]}\n'
    )


def test_a_number_that_overflowed_is_written_null(tmp_path: Path) -> None:
    """A float increment past the double range gives a value JSON cannot hold: printed null, as JS does."""
    state = write(tmp_path, "state.json", {"x": 1e308})
    ops = write(tmp_path, "ops.json", [{"type": "increment", "key": "x", "value": 1e308}])
    assert run("apply", state, ops).json() == {"metadata": {"x": None}, "unapplied": []}


def test_unsafe_keys_are_reported_unapplied_not_refused(tmp_path: Path) -> None:
    """apply takes what the reference's applyMetadataOperations takes: an unsafe key is unapplied."""
    ops = [{"type": "set", "key": "__proto__", "value": 1}, {"type": "set", "key": "a", "value": 2}]
    ran = run("apply", write(tmp_path, "state.json", {}), write(tmp_path, "ops.json", ops))
    assert ran.json() == {"metadata": {"a": 2}, "unapplied": [0]}


# --------------------------------------------------------------------------- collapse and compose


@pytest.mark.parametrize("case", APPLY[:150], ids=[f"apply-{i}" for i in range(150)])
def test_collapse_keeps_the_result_of_the_vectors(case: dict[str, Any], tmp_path: Path) -> None:
    """`collapse OPS` prints a batch that, applied to the case's state, gives the case's metadata."""
    ran = run("collapse", "-", stdin=json.dumps(case["ops"]))
    assert ran.code == 0, ran.err
    collapsed = ran.json()
    assert isinstance(collapsed, list)
    again = run("apply", write(tmp_path, "state.json", case["state"]), write(tmp_path, "ops.json", collapsed))
    assert json_equal(again.json()["metadata"], case["metadata"])


def test_collapse_merges_a_queue() -> None:
    """Increments add up and the last set wins, in the order the keys were first written."""
    ops = [
        {"type": "increment", "key": "n", "value": 1},
        {"type": "set", "key": "s", "value": "a"},
        {"type": "increment", "key": "n", "value": 2},
        {"type": "set", "key": "s", "value": "b"},
    ]
    assert run("collapse", "-", stdin=json.dumps(ops)).json() == [
        {"type": "increment", "key": "n", "value": 3},
        {"type": "set", "key": "s", "value": "b"},
    ]


@pytest.mark.parametrize("pair", range(40))
def test_compose_is_a_then_b(pair: int, tmp_path: Path) -> None:
    """`compose A B` applied to a state gives what applying A, then B, gives (vectors' batches)."""
    first, second = APPLY[2 * pair], APPLY[2 * pair + 1]
    a = write(tmp_path, "a.json", first["ops"])
    ran = run("compose", a, "-", stdin=json.dumps(second["ops"]))
    assert ran.code == 0, ran.err
    composed = write(tmp_path, "composed.json", ran.json())
    state = write(tmp_path, "state.json", first["state"])
    after_a = run("apply", state, a).json()["metadata"]
    after_b = run("apply", write(tmp_path, "mid.json", after_a), write(tmp_path, "b.json", second["ops"]))
    assert json_equal(run("apply", state, composed).json()["metadata"], after_b.json()["metadata"])


def test_compose_of_two_queues_merges_across_them(tmp_path: Path) -> None:
    """Increments of A and of B on one key become one increment."""
    a = write(tmp_path, "a.json", [{"type": "increment", "key": "n", "value": 2}])
    b = write(tmp_path, "b.json", [{"type": "increment", "key": "n", "value": 3}])
    assert run("compose", a, b).json() == [{"type": "increment", "key": "n", "value": 5}]


# --------------------------------------------------------------------------- size


@pytest.mark.parametrize("case", SIZE[:300], ids=[f"size-{i}" for i in range(300)])
def test_size_answers_the_vectors(case: dict[str, Any]) -> None:
    """`size JSON` prints the byte length of JavaScript's JSON.stringify, as a decimal line."""
    ran = run("size", "-", stdin=case["json"])
    assert ran.code == 0, ran.err
    assert ran.out == f"{case['size']}\n"


# --------------------------------------------------------------------------- validate


def test_validate_reports_exactly_the_invalid_vectors() -> None:
    """`validate` prints one line per operation the reference's schema refuses, with its index; exit 1."""
    ops = [case["op"] for case in WIRE]
    ran = run("validate", "-", stdin=json.dumps(ops))
    assert ran.code == 1
    lines = [json.loads(line) for line in ran.out.splitlines()]
    assert [line["index"] for line in lines] == [i for i, case in enumerate(WIRE) if not case["valid"]]
    for line in lines:
        assert list(line) == ["index", "field", "message"]
        assert line["message"].startswith(f"operation {line['index']}")


def test_validate_names_the_field() -> None:
    """Each error says which field is at fault (null when the operation is not an object)."""
    ops = [{"type": "increment", "key": "n", "value": True}, "set", {"type": "nope", "key": "k"}]
    lines = [json.loads(line) for line in run("validate", "-", stdin=json.dumps(ops)).out.splitlines()]
    assert [(line["index"], line["field"]) for line in lines] == [(0, "value"), (1, None), (2, "type")]


def test_validate_prints_nothing_when_all_are_valid() -> None:
    """All valid: exit 0, empty output."""
    ops = [case["op"] for case in WIRE if case["valid"]]
    assert ops
    ran = run("validate", "-", stdin=json.dumps(ops))
    assert (ran.code, ran.out, ran.err) == (0, "", "")


def test_validate_refuses_unsafe_keys() -> None:
    """validate checks as the platform's schema does: unsafe keys are invalid there."""
    ran = run("validate", "-", stdin=json.dumps([{"type": "set", "key": "$.a.constructor", "value": 1}]))
    assert ran.code == 1
    assert json.loads(ran.out)["field"] == "key"


# --------------------------------------------------------------------------- vectors


def test_vectors_writes_the_shipped_files(tmp_path: Path) -> None:
    """`vectors DIR` creates DIR and writes every vector file and the README, byte for byte."""
    target = tmp_path / "new" / "vectors"
    ran = run("vectors", str(target))
    assert ran.code == 0, ran.err
    names = ["README.md", "apply.jsonl", "divergences.jsonl", "size.jsonl", "wire.jsonl"]
    assert ran.out.splitlines() == [str(target / name) for name in names]
    shipped = files("metaops") / "conformance"
    for name in names:
        assert (target / name).read_bytes() == (shipped / name).read_bytes()
    counts = {name: (target / name).read_bytes().count(b"\n") for name in names[1:]}
    # The counts the vectors' README states.
    assert counts == {"apply.jsonl": 2304, "divergences.jsonl": 14, "size.jsonl": 1500, "wire.jsonl": 1500}


def test_vectors_replaces_files_of_the_same_name(tmp_path: Path) -> None:
    """An existing directory is fine; a stale vector file in it is replaced."""
    (tmp_path / "size.jsonl").write_text("stale\n", encoding="utf-8")
    assert run("vectors", str(tmp_path)).code == 0
    assert (tmp_path / "size.jsonl").read_bytes() == (
        files("metaops") / "conformance" / "size.jsonl"
    ).read_bytes()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["apply", "{missing}", "{ops}"], "apply"),
        (["apply", "{state}", "{missing}"], "apply"),
        (["collapse", "{missing}"], "collapse"),
        (["compose", "{missing}", "{ops}"], "compose"),
        (["compose", "{ops}", "{missing}"], "compose"),
        (["size", "{missing}"], "size"),
        (["validate", "{missing}"], "validate"),
    ],
)
def test_an_unreadable_file_is_named(argv: list[str], command: str, tmp_path: Path) -> None:
    """A file that cannot be read: exit 2, naming the argument, the path and why."""
    paths = {
        "missing": str(tmp_path / "missing.json"),
        "state": write(tmp_path, "state.json", {}),
        "ops": write(tmp_path, "ops.json", []),
    }
    ran = run(*(arg.format(**paths) for arg in argv))
    assert_bad_input(ran, command, paths["missing"], "cannot read the file", "No such file")


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    """Given a directory where a file is expected: exit 2, saying it cannot be read."""
    assert_bad_input(run("size", str(tmp_path)), "size", f"JSON ({tmp_path})", "cannot read the file")


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["apply", "-", "{ops}"], "STATE"),
        (["apply", "{state}", "-"], "OPS"),
        (["collapse", "-"], "OPS"),
        (["compose", "-", "{ops}"], "A"),
        (["compose", "{ops}", "-"], "B"),
        (["size", "-"], "JSON"),
        (["validate", "-"], "OPS"),
    ],
)
@pytest.mark.parametrize(
    ("text", "what"),
    [
        ('{"a": ', "malformed JSON at line 1, column 7: Expecting value"),
        ("", "malformed JSON at line 1, column 1"),
        ('{"a": 1}\n[', "malformed JSON at line 2, column 1: Extra data"),
        ("[NaN]", "malformed JSON: NaN is not JSON"),
        ('{"x": -Infinity}', "malformed JSON: -Infinity is not JSON"),
        (b"\xff\xfe[]", "not UTF-8 text (byte 0"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=["truncated", "empty", "extra data", "NaN", "Infinity", "not utf-8", "deep"],
)
def test_input_that_is_not_json_is_named(
    argv: list[str], name: str, text: str | bytes, what: str, tmp_path: Path
) -> None:
    """Malformed JSON or text: exit 2, naming the argument, standard input, and where it broke."""
    paths = {"state": write(tmp_path, "state.json", {}), "ops": write(tmp_path, "ops.json", [])}
    ran = run(*(arg.format(**paths) for arg in argv), stdin=text)
    assert_bad_input(ran, argv[0], f"{name} (standard input)", what)


@pytest.mark.parametrize(
    ("argv", "stdin", "fragments"),
    [
        (["apply", "-", "{ops}"], "[]", ["STATE (standard input)", "expected a JSON object", "got a list"]),
        (["apply", "-", "{ops}"], '"x"', ["STATE", "expected a JSON object", "got the string 'x'"]),
        (["apply", "{state}", "-"], "{}", ["OPS (standard input)", "expected a JSON array", "got an object"]),
        (["collapse", "-"], "7", ["OPS", "expected a JSON array of operations, got 7"]),
        (["compose", "-", "{ops}"], "null", ["A (standard input)", "expected a JSON array", "got null"]),
        (["compose", "{ops}", "-"], "{}", ["B (standard input)", "expected a JSON array"]),
        (["validate", "-"], '{"type": "set"}', ["OPS", "expected a JSON array", "got an object"]),
    ],
)
def test_the_wrong_shape_is_named(argv: list[str], stdin: str, fragments: list[str], tmp_path: Path) -> None:
    """A JSON value of the wrong kind: exit 2, naming the argument, what was expected and what came."""
    paths = {"state": write(tmp_path, "state.json", {}), "ops": write(tmp_path, "ops.json", [])}
    assert_bad_input(run(*(arg.format(**paths) for arg in argv), stdin=stdin), argv[0], *fragments)


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["apply", "{state}", "-"], "OPS (standard input)"),
        (["collapse", "-"], "OPS (standard input)"),
        (["compose", "-", "{ops}"], "A (standard input)"),
        (["compose", "{ops}", "-"], "B (standard input)"),
    ],
)
@pytest.mark.parametrize(
    ("ops", "fragments"),
    [
        ([{"type": "set", "key": "a", "value": 1}, {"type": "inc", "key": "n"}], ["operation 1", "'type'"]),
        ([{"type": "increment", "key": "n", "value": True}], ["operation 0", "'value'", "got true"]),
        ([{"type": "set", "value": 1}], ["operation 0", "'key'", "missing"]),
        (["set"], ["operation 0", "expected an object"]),
        ([{"type": "update", "value": [1]}], ["operation 0", "'value'", "got a list"]),
    ],
    ids=["unknown type", "bool increment", "no key", "not an object", "update of a list"],
)
def test_an_invalid_operation_is_named(
    argv: list[str], name: str, ops: list[Any], fragments: list[str], tmp_path: Path
) -> None:
    """An operation the schema refuses: exit 2, naming the argument, the operation's index and field."""
    paths = {"state": write(tmp_path, "state.json", {}), "ops": write(tmp_path, "ops.json", [])}
    ran = run(*(arg.format(**paths) for arg in argv), stdin=json.dumps(ops))
    assert_bad_input(ran, argv[0], name, *fragments)


def test_metadata_holding_an_int_beyond_javascript_is_refused(tmp_path: Path) -> None:
    """STATE with an integer no double can hold (JavaScript would read Infinity): exit 2, saying where."""
    ops = write(tmp_path, "ops.json", [])
    ran = run("apply", "-", ops, stdin='{"big": ' + "9" * 400 + "}")
    assert_bad_input(ran, "apply", "STATE (standard input)", "STATE['big']", "too large")


def test_standard_input_for_two_arguments_is_refused() -> None:
    """`apply - -` and `compose - -` would both read one stream: exit 2, saying so."""
    assert_bad_input(run("apply", "-", "-", stdin="{}"), "apply", "standard input (-)", "one argument")
    assert_bad_input(run("compose", "-", "-", stdin="[]"), "compose", "standard input (-)", "one argument")


def nested(depth: int) -> str:
    """JSON text of ``depth`` lists, one inside the other."""
    return "[" * depth + "]" * depth


def deep_ops(depth: int) -> str:
    """A batch of one set whose value is ``depth`` lists deep."""
    return '[{"type": "set", "key": "a", "value": ' + nested(depth) + "}]"


# 600 levels: read by json, then past what recursing over it in Python holds (or past metaops's
# bound on nesting); 2,000: past what json itself reads.
DEPTHS = [600, 2000]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(
    ("argv", "stdin", "name"),
    [
        (["apply", "-", "{ops}"], lambda d: '{"a": ' + nested(d) + "}", "STATE (standard input)"),
        (["apply", "{state}", "-"], deep_ops, "OPS (standard input)"),
        (["collapse", "-"], deep_ops, "OPS (standard input)"),
        (["compose", "{ops}", "-"], deep_ops, "B (standard input)"),
        (["validate", "-"], deep_ops, "OPS (standard input)"),
    ],
    ids=["apply STATE", "apply OPS", "collapse", "compose", "validate"],
)
def test_deeply_nested_input_is_bad_input(
    argv: list[str], stdin: Any, name: str, depth: int, tmp_path: Path
) -> None:
    """JSON nested hundreds or thousands deep: exit 2 and one line naming the argument, no traceback."""
    paths = {"state": write(tmp_path, "state.json", {}), "ops": write(tmp_path, "ops.json", [])}
    ran = run(*(arg.format(**paths) for arg in argv), stdin=stdin(depth))
    assert_bad_input(ran, argv[0], name, "nested")


def test_size_measures_a_deep_value_json_reads() -> None:
    """`size` never recurses in Python: a value json reads, 600 deep, is measured as JavaScript would."""
    ran = run("size", "-", stdin='{"a": ' + nested(600) + "}")
    assert (ran.code, ran.out, ran.err) == (0, f"{len(nested(600)) + 6}\n", "")


def test_size_of_a_value_json_cannot_read_is_bad_input() -> None:
    """`size` of a value 2,000 deep, past what json reads: exit 2, naming the argument."""
    ran = run("size", "-", stdin=nested(2000))
    assert_bad_input(ran, "size", "JSON (standard input)", "nested too deeply")


@pytest.mark.parametrize(
    ("argv", "target", "names"),
    [
        (["apply", "{state}", "{ops}"], "metaops._cli.apply", ["STATE ({state}) or OPS ({ops})"]),
        (["collapse", "-"], "metaops._cli.collapse", ["OPS (standard input)"]),
        (["compose", "{ops}", "-"], "metaops._cli.compose", ["A ({ops}) or B (standard input)"]),
        (["apply", "{state}", "{ops}"], "metaops._cli.json_text", ["STATE ({state}) or OPS ({ops})"]),
        (["size", "-"], "metaops._cli.json_size", ["JSON (standard input)"]),
        (["apply", "{state}", "{ops}"], "metaops._cli.normalize", ["STATE ({state})"]),
        (["collapse", "-"], "metaops._cli.parse_operations", ["OPS (standard input)"]),
        (["validate", "-"], "metaops._cli._parse", ["OPS (standard input)", "operation 0"]),
    ],
    ids=["apply", "collapse", "compose", "output", "size", "normalize", "parse", "validate"],
)
def test_running_out_of_stack_anywhere_is_bad_input(
    argv: list[str], target: str, names: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever step recurses past the stack (reading, checking, processing, writing): exit 2, one line.

    Input metaops refuses as too deep never gets that far; this is the last resort behind it.
    """

    def too_deep(*args: object, **kwargs: object) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(target, too_deep)
    paths = {
        "state": write(tmp_path, "state.json", {}),
        "ops": write(tmp_path, "ops.json", [{"type": "set", "key": "a", "value": 1}]),
    }
    ran = run(*(arg.format(**paths) for arg in argv), stdin=json.dumps([{"type": "delete", "key": "a"}]))
    assert_bad_input(ran, argv[0], *(name.format(**paths) for name in names), "nested too deeply")


def test_validate_checks_values_up_to_the_nesting_bound() -> None:
    """validate judges a value as deep as metaops takes; one level more is bad input, not "invalid".

    The bound is metaops's own, not the platform's schema's, so the oracle does not claim the
    schema refuses such an operation.
    """
    assert run("validate", "-", stdin=deep_ops(MAX_DEPTH)).code == 0
    ran = run("validate", "-", stdin=deep_ops(MAX_DEPTH + 1))
    assert_bad_input(ran, "validate", "operation 0: field 'value'", f"nested {MAX_DEPTH + 1} levels deep")


def test_validate_reports_nothing_before_bad_input() -> None:
    """A deep operation after an invalid one: exit 2 with nothing on standard output, not a partial report."""
    ops = '[{"type": "nope"}, ' + deep_ops(600)[1:]
    assert_bad_input(run("validate", "-", stdin=ops), "validate", "OPS (standard input)", "operation 1")


def test_vectors_into_a_path_under_a_file(tmp_path: Path) -> None:
    """`vectors DIR` where DIR cannot be a directory: exit 2, naming DIR and why."""
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    ran = run("vectors", str(blocker / "sub"))
    assert_bad_input(ran, "vectors", f"DIR ({blocker / 'sub'})", "cannot write the vectors")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["apply", "state.json"], "the following arguments are required: OPS"),
        (["size"], "the following arguments are required: JSON"),
        (["size", "a", "b"], "unrecognized arguments: b"),
        (["vectors"], "the following arguments are required: DIR"),
        (["demo", "--rows", "many"], "invalid int value: 'many'"),
        (["apply", "--sort-keys", "a", "b"], "unrecognized arguments: --sort-keys"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], fragment: str) -> None:
    """A wrong command line: exit 2, one line on stderr with the problem and where to find help."""
    ran = run(*argv)
    assert ran.code == 2
    assert ran.out == ""
    assert ran.err.count("\n") == 1, ran.err
    assert fragment in ran.err, ran.err
    assert "--help" in ran.err


# --------------------------------------------------------------------------- help and version


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    """`COMMAND --help` prints its usage and what it reads and writes; exit 0."""
    ran = run(command, "--help")
    assert ran.code == 0
    assert ran.out.startswith(f"usage: metaops {command} ")
    assert "exit status:" in ran.out
    if command not in ("demo", "vectors"):
        assert "one line of compact JSON" in ran.out


@pytest.mark.parametrize("command", ["collapse", "compose"])
def test_collapse_help_says_floats_agree_up_to_rounding(command: str) -> None:
    """The promise of the same effect is qualified as the library's is: floats merged agree up to rounding."""
    text = " ".join(run(command, "--help").out.split())
    assert "from every starting metadata." in text
    assert "Exactly so for integers; float increments merged into one are equal up to rounding" in text


def test_top_level_help_lists_every_command() -> None:
    """`--help` names every command."""
    ran = run("--help")
    assert ran.code == 0
    for command in COMMANDS:
        assert f"    {command} " in ran.out


def test_version() -> None:
    """`--version` prints the package version."""
    import metaops

    ran = run("--version")
    assert (ran.code, ran.out) == (0, f"metaops {metaops.__version__}\n")


# --------------------------------------------------------------------------- the reference's collapsing rule


def test_reference_rule_matches_the_reference() -> None:
    """metaops's copy of the reference's collapsing rule gives what collapseOperations gave (vectors)."""
    for case in APPLY:
        ops = parse_operations(case["ops"], safe_keys=False)
        got = wire(reference_rule(ops))
        assert len(got) == len(case["ref_collapsed"])
        assert json_equal(got, case["ref_collapsed"]), (case["ops"], got)


# --------------------------------------------------------------------------- the real entry point


def _python_m(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "metaops", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_python_m_metaops_reads_stdin_and_exits_with_the_status() -> None:
    """`python -m metaops` is the command line: real stdin, stdout and exit status."""
    done = _python_m("size", "-", stdin='{"progress": 1.0}')
    assert (done.returncode, done.stdout, done.stderr) == (0, "14\n", "")
    done = _python_m("collapse", "-", stdin="[{]")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(
        "metaops collapse: OPS (standard input): malformed JSON at line 1, column 3"
    )


# --------------------------------------------------------------------------- benchmarks/plot.py


def test_plot_without_matplotlib_stops_before_measuring(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without matplotlib, plot.py exits 2 at once, saying which extra to install, and measures nothing."""
    from benchmarks import plot

    # None in sys.modules is how Python marks a module that cannot be imported.
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    def measured() -> None:
        raise AssertionError("measured without a way to draw")

    monkeypatch.setattr(plot, "build_states", measured)
    assert plot.main(["--out", str(tmp_path / "plot.png")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "python -m benchmarks.plot: matplotlib is not installed; "
        "install the plot extra: pip install -e '.[plot]'\n"
    )
    assert not (tmp_path / "plot.png").exists()


def test_plot_help_names_the_way_to_run_it() -> None:
    """`python -m benchmarks.plot --help` shows that command in its usage, not the file name."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.plot", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m benchmarks.plot [-h]")
