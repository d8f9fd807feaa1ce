"""The command line: the oracle commands against the reference's vectors, and every bad input.

Most tests call ``main(argv)`` in the test process (fast); a few run
``python -m metaops`` as a subprocess to check the real entry point, its exit
status and standard input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import math
import os
import re
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
from metaops._json import MAX_METADATA_DEPTH
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


def run(*argv: str, stdin: bytes | str | io.TextIOBase = b"", stdout: io.StringIO | None = None) -> Ran:
    """``main(argv)`` with ``stdin`` as standard input, capturing standard output and error.

    ``stdin`` is the bytes (or text) standard input holds, or a stream to use as it;
    ``stdout``, a stream to use as standard output instead of a fresh one.
    """
    if isinstance(stdin, io.TextIOBase):
        stream = stdin
    else:
        data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
        stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    out, err = stdout or io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = stream
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    except KeyboardInterrupt:  # left to escape, it would stop the whole test session
        pytest.fail("KeyboardInterrupt escaped main()")
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


def big_state(tmp_path: Path, size: int) -> str:
    """A file holding metadata of exactly ``size`` bytes of JSON: {"a":"xx...x"}, 8 bytes and the x's."""
    return write(tmp_path, "state.json", {"a": "x" * (size - len('{"a":""}'))})


@pytest.mark.parametrize(
    ("env", "argv", "limit", "origin"),
    [
        (None, [], 262_144, "(the default; --limit or TASK_RUN_METADATA_MAXIMUM_SIZE sets another)"),
        ("1000", [], 1000, "(TASK_RUN_METADATA_MAXIMUM_SIZE)"),
        ("1000", ["--limit", "500"], 500, "(--limit)"),
        (None, ["--limit", "0"], 0, "(--limit)"),
    ],
    ids=["default", "environment", "option over environment", "zero"],
)
def test_apply_warns_when_the_metadata_passes_the_limit(
    env: str | None,
    argv: list[str],
    limit: int,
    origin: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over the limit: the metadata is printed (exit 0) and one warning line names the size, the limit
    and where the limit came from."""
    if env is None:
        monkeypatch.delenv("TASK_RUN_METADATA_MAXIMUM_SIZE", raising=False)
    else:
        monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", env)
    size = 300_000 if limit > 100_000 else max(limit + 1, 8)
    ran = run("apply", *argv, big_state(tmp_path, size), write(tmp_path, "ops.json", []))
    assert ran.code == 0
    assert ran.json()["metadata"] == {"a": "x" * (size - 8)}
    assert ran.err == (
        f"metaops apply: warning: the new metadata is {size:,} bytes of JSON, over the {limit:,}-byte "
        f"limit {origin}; the platform would refuse this update\n"
    )


def test_apply_measures_the_new_metadata_not_the_old(tmp_path: Path) -> None:
    """The warning is about the result: operations that take the metadata past the limit warn, and
    operations that bring it back under do not."""
    state = big_state(tmp_path, 100)
    grow = write(tmp_path, "grow.json", [{"type": "set", "key": "b", "value": 1}])
    shrink = write(tmp_path, "shrink.json", [{"type": "delete", "key": "a"}])
    assert "warning" in run("apply", "--limit", "100", state, grow).err
    assert run("apply", "--limit", "99", state, shrink).err == ""


@pytest.mark.parametrize("size", [262_143, 262_144])
def test_apply_at_the_limit_says_nothing(size: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Metadata of exactly the limit is allowed, as the platform allows it: no warning."""
    monkeypatch.delenv("TASK_RUN_METADATA_MAXIMUM_SIZE", raising=False)
    ran = run("apply", big_state(tmp_path, size), write(tmp_path, "ops.json", []))
    assert (ran.code, ran.err) == (0, "")


def test_apply_with_a_malformed_limit_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TASK_RUN_METADATA_MAXIMUM_SIZE that is not a number of bytes: exit 2, naming it, not ignored."""
    monkeypatch.setenv("TASK_RUN_METADATA_MAXIMUM_SIZE", "256kb")
    ran = run("apply", write(tmp_path, "state.json", {}), write(tmp_path, "ops.json", []))
    assert_bad_input(ran, "apply", "TASK_RUN_METADATA_MAXIMUM_SIZE='256kb'", "not a whole number of bytes")


@pytest.mark.parametrize("value", ["-5", "1.5", "lots", ""])
def test_apply_with_a_malformed_limit_option(value: str, tmp_path: Path) -> None:
    """--limit takes a whole number of bytes; anything else is a usage error (exit 2, one line)."""
    ran = run("apply", "--limit", value, write(tmp_path, "s.json", {}), write(tmp_path, "o.json", []))
    assert ran.code == 2
    assert ran.err.count("\n") == 1, ran.err
    assert f"argument --limit: expected a whole number of bytes, got {value!r}" in ran.err


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


def test_validate_says_so_when_all_are_valid() -> None:
    """All valid: exit 0 and one line that says how many operations were checked."""
    ops = [case["op"] for case in WIRE if case["valid"]]
    assert len(ops) > 100
    ran = run("validate", "-", stdin=json.dumps(ops))
    assert (ran.code, ran.out, ran.err) == (0, f"{len(ops):,} operations, all valid\n", "")


@pytest.mark.parametrize(
    ("ops", "line"),
    [
        ([], "0 operations, all valid\n"),
        ([{"type": "delete", "key": "a"}], "1 operation, valid\n"),
        ([{"type": "delete", "key": "a"}] * 2, "2 operations, all valid\n"),
    ],
)
def test_validate_counts_in_words(ops: list[Any], line: str) -> None:
    """The summary reads as English for none, one and many operations."""
    ran = run("validate", "-", stdin=json.dumps(ops))
    assert (ran.code, ran.out, ran.err) == (0, line, "")


def test_validate_counts_the_invalid_on_standard_error() -> None:
    """Some invalid: the JSON lines on standard output stay machine-readable; the count goes to stderr."""
    ops = [{"type": "delete", "key": "a"}, {"type": "nope"}, {"type": "set"}]
    ran = run("validate", "-", stdin=json.dumps(ops))
    assert ran.code == 1
    assert [json.loads(line)["index"] for line in ran.out.splitlines()] == [1, 2]
    assert ran.err == "metaops validate: 2 of 3 operations invalid\n"


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


@pytest.mark.parametrize("text", ["", "\n"], ids=["empty", "a newline"])
def test_an_empty_file_is_named_as_empty(text: str, tmp_path: Path) -> None:
    """An empty file (or one blank line): exit 2, saying it is empty, naming the argument and the file."""
    path = tmp_path / "state.json"
    path.write_text(text, encoding="utf-8")
    ran = run("apply", str(path), write(tmp_path, "ops.json", []))
    assert_bad_input(ran, "apply", f"STATE ({path}): ", "no JSON in it")
    assert "malformed" not in ran.err


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["apply", "{dir}", "{ops}"], "STATE"),
        (["apply", "{state}", "{dir}"], "OPS"),
        (["collapse", "{dir}"], "OPS"),
        (["compose", "{ops}", "{dir}"], "B"),
        (["size", "{dir}"], "JSON"),
        (["validate", "{dir}"], "OPS"),
    ],
)
def test_a_directory_is_not_a_file(argv: list[str], name: str, tmp_path: Path) -> None:
    """Given a directory where a file is expected: exit 2, saying it cannot be read."""
    paths = {
        "dir": str(tmp_path),
        "ops": write(tmp_path, "ops.json", []),
        "state": write(tmp_path, "s.json", {}),
    }
    ran = run(*(arg.format(**paths) for arg in argv))
    assert_bad_input(ran, argv[0], f"{name} ({tmp_path}): cannot read the file: Is a directory")


@pytest.mark.parametrize(
    ("argv", "name"),
    [(["apply", "", "{ops}"], "STATE"), (["compose", "{ops}", ""], "B"), (["size", ""], "JSON")],
)
def test_an_empty_path_is_named(argv: list[str], name: str, tmp_path: Path) -> None:
    """An empty path (an unset shell variable: metaops size "$FILE"): exit 2, saying the path is empty,
    not "Is a directory" (the working directory) nor "No such file"."""
    ran = run(*(arg.format(ops=write(tmp_path, "ops.json", [])) for arg in argv))
    assert_bad_input(ran, argv[0], f"{name}: the path is empty (give a file, or - for standard input)")


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2]", '"x"', "null", ' {"a": 1}'])
def test_json_given_where_a_path_belongs_gets_a_hint(text: str) -> None:
    """`metaops size '{"a": 1}'`: no such file, and a hint that JSON itself is piped in with -."""
    ran = run("size", text)
    assert_bad_input(ran, "size", f"JSON ({text}): cannot read the file: No such file or directory")
    assert ran.err.endswith(
        "; to give JSON itself rather than a file, pipe it in and pass - (echo '...' | metaops ...)\n"
    )


def test_a_missing_file_that_is_not_json_gets_no_hint(tmp_path: Path) -> None:
    """The hint is for text that looks like JSON; a plain missing path is only named."""
    missing = tmp_path / "value.json"
    ran = run("size", str(missing))
    assert ran.err == f"metaops size: JSON ({missing}): cannot read the file: No such file or directory\n"


def test_a_utf8_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    """A file a Windows editor saved with a UTF-8 byte order mark reads as the JSON after it."""
    state = tmp_path / "state.json"
    state.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')
    ops = tmp_path / "ops.json"
    ops.write_bytes(b"\xef\xbb\xbf" + b'[{"type": "increment", "key": "a", "value": 2}]')
    assert run("apply", str(state), str(ops)).json() == {"metadata": {"a": 3}, "unapplied": []}
    assert run("size", "-", stdin=b"\xef\xbb\xbf" + b'{"a": 1}').out == "7\n"


def test_a_byte_that_is_not_utf8_is_counted_from_the_start_of_the_input() -> None:
    """After a byte order mark, the offset named is still the byte's place in the input as given."""
    ran = run("size", "-", stdin=b"\xef\xbb\xbf[\xff]")
    assert_bad_input(ran, "size", "not UTF-8 text (byte 4: invalid start byte)")


def test_a_closed_standard_input_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started with standard input closed (`<&-`, which Python shows as None): exit 2, saying so."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", None)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["collapse", "-"]) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == "metaops collapse: OPS (standard input): standard input is closed\n"


class FailingBytes(io.BytesIO):
    """Bytes whose read fails as a broken device's does."""

    def read(self, size: int | None = -1) -> bytes:
        """An input/output error."""
        raise OSError(errno.EIO, "Input/output error")


def test_standard_input_that_cannot_be_read_is_named() -> None:
    """A read of standard input that fails: exit 2 with the reason, not a traceback."""
    ran = run("size", "-", stdin=io.TextIOWrapper(FailingBytes(), encoding="utf-8"))
    assert_bad_input(ran, "size", "JSON (standard input): cannot read standard input: Input/output error")


@pytest.mark.parametrize("excess", [0, 1])
def test_input_past_the_size_bound_is_refused(excess: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input larger than MAX_INPUT: exit 2, naming the bound; exactly MAX_INPUT bytes is read."""
    monkeypatch.setattr("metaops._cli.MAX_INPUT", 100)
    text = '"' + "x" * (98 + excess) + '"'
    ran = run("size", "-", stdin=text)
    if excess:
        assert_bad_input(ran, "size", "JSON (standard input): more than 100 bytes, the most metaops reads")
    else:
        assert (ran.code, ran.out) == (0, "100\n")


def test_the_size_bound_is_64_mib_and_stops_an_endless_input() -> None:
    """`metaops size /dev/zero` ends (exit 2) after 64 MiB instead of filling memory."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero on this system to stand for an endless input")
    ran = run("size", "/dev/zero")
    assert_bad_input(ran, "size", "JSON (/dev/zero): more than 64 MiB, the most metaops reads from one input")


@pytest.mark.parametrize(
    ("argument", "fragment"),
    [
        ("", "DIR: the path is empty; name a directory (. for the working directory)"),
        ("-", "DIR (-): the vectors are files for a directory, not standard output"),
    ],
)
def test_vectors_refuses_a_path_that_would_surprise(
    argument: str, fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vectors ""` would fill the working directory and `vectors -` make a directory called -:
    exit 2, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    assert_bad_input(run("vectors", argument), "vectors", fragment)
    assert list(tmp_path.iterdir()) == []


def test_vectors_into_a_file(tmp_path: Path) -> None:
    """`vectors FILE`: exit 2, saying it is a file, not a directory."""
    path = write(tmp_path, "ops.json", [])
    assert_bad_input(run("vectors", path), "vectors", f"DIR ({path}): a file, not a directory")


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
        ("", ": empty, no JSON in it"),
        ("\n", ": only whitespace, no JSON in it"),
        (" \r\n\t\n", ": only whitespace, no JSON in it"),
        ('{"a": 1}\n[', "malformed JSON at line 2, column 1: Extra data"),
        ("[NaN]", "malformed JSON: NaN is not JSON"),
        ('{"x": -Infinity}', "malformed JSON: -Infinity is not JSON"),
        (b"[\xff]", "not UTF-8 text (byte 1: invalid start byte)"),
        (b"\x89PNG\r\n\x1a\n\x00", "not UTF-8 text (byte 0"),
        ('[1, "\ufeff"]'.encode("utf-16"), "UTF-16 or UTF-32 text (it starts with their byte order mark)"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=[
        "truncated",
        "empty",
        "a newline",
        "whitespace",
        "extra data",
        "NaN",
        "Infinity",
        "not utf-8",
        "binary",
        "utf-16",
        "deep",
    ],
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
        (["apply", "-", "{ops}"], "[]", ["STATE (standard input)", "expected a JSON object", "got an array"]),
        (["apply", "-", "{ops}"], '"x"', ["STATE", "expected a JSON object", 'got the string "x"']),
        (["apply", "-", "{ops}"], "true", ["STATE", "expected a JSON object", "got true"]),
        (["apply", "-", "{ops}"], '"\\u00e9t\\u00e9"', ["STATE", 'got the string "\u00e9t\u00e9"']),
        (["apply", "{state}", "-"], "{}", ["OPS (standard input)", "expected a JSON array", "got an object"]),
        (["collapse", "-"], "7", ["OPS", "expected a JSON array of operations, got the number 7"]),
        (["collapse", "-"], "-2.5e-3", ["OPS", "got the number -0.0025"]),
        (["collapse", "-"], "1" * 50, ["OPS", "got a number of 50 digits"]),
        (["collapse", "-"], '"' + "y" * 50 + '"', ["OPS", 'got the string "' + "y" * 37 + '..."']),
        (["compose", "-", "{ops}"], "null", ["A (standard input)", "expected a JSON array", "got null"]),
        (["compose", "{ops}", "-"], "false", ["B (standard input)", "expected a JSON array", "got false"]),
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


@pytest.mark.parametrize(
    ("argv", "stdin", "name", "shown"),
    [
        (["apply", "-", "{ops}"], '{"a": 1e400}', "STATE", "1e400"),
        (["apply", "-", "{ops}"], '{"a": [-1.5E+999]}', "STATE", "-1.5E+999"),
        (["apply", "-", "{ops}"], '{"a": ' + "1" * 5000 + "}", "STATE", "1" * 20 + "... (5,000 characters)"),
        (["apply", "{state}", "-"], '[{"type": "increment", "key": "n", "value": 1e400}]', "OPS", "1e400"),
        (["collapse", "-"], '[{"type": "set", "key": "n", "value": ' + "9" * 5000 + "}]", "OPS", "9" * 20),
        (["compose", "{ops}", "-"], '[{"type": "update", "value": {"x": 2e308}}]', "B", "2e308"),
    ],
    ids=["1e400", "in a list", "5,000 digits", "increment", "set of 5,000 digits", "update"],
)
def test_a_number_past_the_doubles_is_named_as_written(
    argv: list[str], stdin: str, name: str, shown: str, tmp_path: Path
) -> None:
    """A number JavaScript reads as Infinity: exit 2, quoting the number as the input spells it
    (not Python's inf, nor its advice about int_max_str_digits)."""
    paths = {"state": write(tmp_path, "state.json", {}), "ops": write(tmp_path, "ops.json", [])}
    ran = run(*(arg.format(**paths) for arg in argv), stdin=stdin)
    assert_bad_input(
        ran, argv[0], f"{name} (standard input): the number {shown}", "past the range of a double"
    )
    assert " inf" not in ran.err
    assert "int_max_str_digits" not in ran.err


@pytest.mark.parametrize(
    ("text", "size"),
    [("1e400", 4), ("[-1e400]", 6), ("1" * 5000, 4), ('{"n": -' + "1" * 5000 + "}", 10)],
    ids=["1e400", "-1e400 in a list", "5,000 digits", "-5,000 digits in an object"],
)
def test_size_reads_numbers_past_the_doubles_as_javascript_does(text: str, size: int) -> None:
    """`size` measures what JSON.stringify(JSON.parse(text)) writes: a number past the doubles is
    Infinity, written null (4 bytes), however many digits it has."""
    ran = run("size", "-", stdin=text)
    assert (ran.code, ran.out, ran.err) == (0, f"{size}\n", "")


def test_validate_judges_a_long_number_as_it_judges_1e400() -> None:
    """A 5,000-digit increment is the same number to the schema as 1e400: the same verdict (invalid),
    not bad input about Python's digit limit."""
    long, short = (
        run("validate", "-", stdin='[{"type": "increment", "key": "n", "value": ' + number + "}]")
        for number in ("1" * 5000, "1e400")
    )
    assert (long.code, long.out) == (short.code, short.out)
    assert long.code == 1


def test_metadata_holding_an_int_beyond_javascript_is_refused(tmp_path: Path) -> None:
    """STATE with an integer no double can hold (JavaScript would read Infinity): exit 2, saying where."""
    ops = write(tmp_path, "ops.json", [])
    ran = run("apply", "-", ops, stdin='{"big": ' + "9" * 400 + "}")
    assert_bad_input(ran, "apply", "STATE (standard input): the number 99999", "past the range of a double")


@pytest.mark.parametrize(
    "number",
    [
        # The largest double and the last integers that still round to it, written in full;
        # 2**1024 - 2**970 is the first that rounds to Infinity.
        str(int(sys.float_info.max)),
        str(2**1024 - 2**970 - 1),
        str(-(2**1024 - 2**970 - 1)),
    ],
    ids=["the largest double", "just below the rounding point", "negative"],
)
def test_the_largest_integers_a_double_holds_are_taken(number: str, tmp_path: Path) -> None:
    """Integers of 309 digits that a double still holds are not refused as past its range."""
    ran = run("apply", "-", write(tmp_path, "ops.json", []), stdin='{"big": ' + number + "}")
    assert "past the range of a double" not in ran.err, ran.err


def test_the_first_integer_past_the_doubles_is_refused(tmp_path: Path) -> None:
    """2**1024 - 2**970, where JavaScript's reading rounds to Infinity: refused, as 1e400 is."""
    ran = run("apply", "-", write(tmp_path, "ops.json", []), stdin='{"big": ' + str(2**1024 - 2**970) + "}")
    assert_bad_input(
        ran, "apply", "STATE (standard input): the number 17976931348623158079", "past the range"
    )


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
    ],
    ids=["apply", "collapse", "compose", "output", "size"],
)
def test_running_out_of_stack_anywhere_is_bad_input(
    argv: list[str], target: str, names: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever step recurses past the stack (processing, writing): exit 2, one line naming the inputs.

    Nothing does: reading refuses JSON too deep for json, checking refuses values past
    metaops's bound on nesting, and what apply makes stays within it. This is the one
    last resort behind all of them.
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
    too_deep = f"nested more than {MAX_DEPTH} levels deep"
    assert_bad_input(ran, "validate", "operation 0: field 'value'", too_deep)


def test_apply_takes_metadata_as_deep_as_apply_leaves_it(tmp_path: Path) -> None:
    """STATE may nest MAX_METADATA_DEPTH levels (the top object counts), as apply's own output
    may, so `apply` can take back what it wrote; one level more is bad input naming STATE.
    (It was refused past MAX_DEPTH.)"""
    state = '{"a": ' + nested(MAX_METADATA_DEPTH - 1) + "}"
    ops = write(tmp_path, "ops.json", [{"type": "set", "key": "n", "value": 1}])
    ran = run("apply", "-", ops, stdin=state)
    assert (ran.code, ran.err) == (0, "")
    assert json.loads(ran.out)["metadata"] == {**json.loads(state), "n": 1}
    too_deep = run("apply", "-", ops, stdin='{"a": ' + nested(MAX_METADATA_DEPTH) + "}")
    assert_bad_input(too_deep, "apply", "STATE (standard input)", f"nested {MAX_METADATA_DEPTH + 1} levels")


def test_validate_checks_an_update_up_to_the_metadata_bound() -> None:
    """An update's value is a whole metadata object, which may nest MAX_METADATA_DEPTH levels (the
    parser takes it so): validate judges it; one level more is bad input. (Values of every type
    were cut at MAX_DEPTH, so a valid update was called input too deep to judge.)"""
    deepest = "{" + '"a": {' * (MAX_METADATA_DEPTH - 1) + "}" * MAX_METADATA_DEPTH
    ops = '[{"type": "update", "value": ' + deepest + "}]"
    ran = run("validate", "-", stdin=ops)
    assert (ran.code, ran.out, ran.err) == (0, "1 operation, valid\n", "")
    too_deep = run("validate", "-", stdin='[{"type": "update", "value": {"b": ' + deepest + "}}]")
    assert_bad_input(too_deep, "validate", "operation 0", f"nested more than {MAX_METADATA_DEPTH} levels")


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
    if command in ("apply", "collapse", "compose"):
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


# --------------------------------------------------------------------------- exit statuses


def documented_statuses(command: str) -> set[int]:
    """The exit statuses ``COMMAND --help`` lists (its "exit status:" section, one a row)."""
    help_text = run(command, "--help").out
    assert "\nexit status:\n" in help_text, command
    section = help_text.split("\nexit status:\n", 1)[1]
    return {int(status) for status in re.findall(r"^  (\d+) +\S", section, flags=re.MULTILINE)}


def parser_commands() -> list[str]:
    """Every subcommand the parser knows (read from --help, so that a new one shows up here)."""
    return re.findall(r"^    ([a-z]+) ", run("--help").out, flags=re.MULTILINE)


def inconsistent_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the demo's check fail: its report says the stored metadata differs."""
    import metaops._demo

    real = metaops._demo.run_demo

    def differs(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(real(*args, **kwargs), consistent=False)

    monkeypatch.setattr(metaops._demo, "run_demo", differs)


# For each command, a command line that ends with each status it documents, other than 3
# and 130 (output that cannot be written, Ctrl-C), which every command shares and which are
# run below from its status-0 command line. Arguments in braces are files made by the test.
EXITS: dict[str, dict[int, tuple[list[str], str]]] = {
    "apply": {0: (["apply", "{state}", "{ops}"], ""), 2: (["apply", "{state}", "-"], "[{")},
    "collapse": {0: (["collapse", "{ops}"], ""), 2: (["collapse", "-"], '[{"type": "nope"}]')},
    "compose": {0: (["compose", "{ops}", "-"], "[]"), 2: (["compose", "{ops}", "{missing}"], "")},
    "size": {0: (["size", "-"], '{"a": [1, 2]}'), 2: (["size", "-"], "NaN")},
    "validate": {
        0: (["validate", "{ops}"], ""),
        1: (["validate", "-"], '[{"type": "nope"}]'),
        2: (["validate", "-"], '{"type": "nope"}'),
    },
    "vectors": {0: (["vectors", "{dir}"], ""), 2: (["vectors", "{state}/under-a-file"], "")},
    "demo": {
        0: (["demo", "--rows", "8", "--json"], ""),
        1: (["demo", "--rows", "8", "--json"], ""),
        2: (["demo", "--rows", "-1"], ""),
    },
}
SHARED = {3, 130}


def exit_case(command: str, status: int, tmp_path: Path) -> tuple[list[str], str]:
    """The command line and standard input of ``EXITS[command][status]``, with its files made."""
    argv, stdin = EXITS[command][status]
    paths = {
        "state": write(tmp_path, "state.json", {"a": 1}),
        "ops": write(tmp_path, "ops.json", [{"type": "increment", "key": "a", "value": 1}]),
        "missing": str(tmp_path / "missing.json"),
        "dir": str(tmp_path / "vectors"),
    }
    return [arg.format(**paths) for arg in argv], stdin


# Commands that run until stopped, or that need the server extra: their --help lists what
# their own suites run (tests/test_service_cli.py for serve: a stop by SIGTERM is 0, a
# startup error 2; tests/test_tokens.py for token: printed 0, bad input 2).
SERVING = {"serve": {0, 2}, "token": {0, 2}}


def test_every_command_documents_the_statuses_tested_here() -> None:
    """Each command the parser has lists its exit statuses in --help, and this file (or, for a
    command that serves until stopped, its own suite) runs each one."""
    commands = parser_commands()
    assert sorted(commands) == sorted([*COMMANDS, *SERVING])
    for command in COMMANDS:
        assert documented_statuses(command) == set(EXITS[command]) | SHARED, command
    for command, statuses in SERVING.items():
        assert documented_statuses(command) == statuses, command


@pytest.mark.parametrize(
    ("command", "status"), [(command, status) for command in COMMANDS for status in EXITS[command]]
)
def test_each_documented_status_happens(
    command: str, status: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line listed for a status ends with that status: --help says what really happens."""
    if (command, status) == ("demo", 1):
        inconsistent_demo(monkeypatch)
    argv, stdin = exit_case(command, status, tmp_path)
    ran = run(*argv, stdin=stdin)
    assert ran.code == status, (ran.out, ran.err)
    if status == 2:
        assert_bad_input(ran, command)


def test_validate_help_says_an_invalid_operation_is_status_1() -> None:
    """validate's --help does not list an invalid operation as bad input (it is status 1)."""
    text = " ".join(run("validate", "--help").out.split())
    assert "1 some invalid" in text
    bad_input = text.split(" 2 bad input: ", 1)[1].split(" 3 ", 1)[0]
    assert "an invalid operation;" not in bad_input
    assert "an operation that is not valid is status 1, not bad input" in bad_input


class BrokenStdout(io.StringIO):
    """Standard output whose writes fail with ``failure``, at the write or at the flush."""

    def __init__(self, failure: BaseException, *, at: str = "write") -> None:
        super().__init__()
        self.failure = failure
        self.at = at

    def write(self, text: str) -> int:
        """Fail, or keep ``text`` when the failure is due at the flush."""
        if self.at == "write":
            raise self.failure
        return super().write(text)

    def flush(self) -> None:
        """Fail, when the failure is due at the flush."""
        if self.at == "flush":
            raise self.failure


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("at", ["write", "flush"])
def test_output_that_cannot_be_written_is_status_3(command: str, at: str, tmp_path: Path) -> None:
    """A full disk under standard output: exit 3 and one line saying so, for every command."""
    argv, stdin = exit_case(command, 0, tmp_path)
    full = BrokenStdout(OSError(errno.ENOSPC, "No space left on device"), at=at)
    ran = run(*argv, stdin=stdin, stdout=full)
    assert ran.code == 3
    assert ran.err == f"metaops {command}: cannot write to standard output: No space left on device\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_reader_that_stopped_reading_ends_quietly_with_status_3(command: str, tmp_path: Path) -> None:
    """Standard output's reader left (`| head -1`): exit 3 without a word, as other tools end."""
    argv, stdin = exit_case(command, 0, tmp_path)
    ran = run(*argv, stdin=stdin, stdout=BrokenStdout(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert (ran.code, ran.err) == (3, "")


def test_a_closed_standard_output_is_status_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started with standard output closed (`>&-`, which Python shows as None): exit 3, saying so."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["size", str(ROOT / "pyproject.toml")]) == 3
    assert err.getvalue() == "metaops size: standard output is closed: there is nowhere to write the answer\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_is_status_130(command: str, tmp_path: Path) -> None:
    """Ctrl-C while a command runs: exit 130 and one line, no traceback."""
    argv, stdin = exit_case(command, 0, tmp_path)
    ran = run(*argv, stdin=stdin, stdout=BrokenStdout(KeyboardInterrupt()))
    assert (ran.code, ran.err) == (130, f"metaops {command}: interrupted\n")


class WaitingStdin(io.TextIOWrapper):
    """Standard input the user interrupts (Ctrl-C) while the command waits to read it."""

    def __init__(self) -> None:
        super().__init__(Interrupted(), encoding="utf-8")


class Interrupted(io.BytesIO):
    """Bytes whose read is interrupted."""

    def read(self, size: int | None = -1) -> bytes:
        """Ctrl-C, as the user presses it while the read waits."""
        raise KeyboardInterrupt


class Trickle(io.RawIOBase):
    """An unbuffered file that takes at most ``step`` bytes a write, then, once ``room`` is used, none."""

    def __init__(self, step: int, room: int) -> None:
        self.taken = bytearray()
        self.step = step
        self.room = room

    def writable(self) -> bool:
        """Yes."""
        return True

    def write(self, data: Any) -> int:
        """Take the first ``step`` bytes; a broken pipe once ``room`` bytes are taken."""
        if len(self.taken) >= self.room:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        part = bytes(data[: min(self.step, self.room - len(self.taken))])
        self.taken += part
        return len(part)


@pytest.mark.parametrize(("room", "status"), [(10**9, 0), (40, 3)], ids=["all taken", "reader left"])
def test_short_writes_to_unbuffered_output_are_written_in_full_or_reported(
    room: int, status: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Standard output over an unbuffered file (as under python -u) that takes a few bytes a write:
    every byte arrives, or, when its reader leaves part way, the status says it did not."""
    raw = Trickle(step=7, room=room)
    err = io.StringIO()
    # TextIOWrapper over a raw file, as Python builds standard output under -u.
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8", write_through=True))  # type: ignore[type-var]
    monkeypatch.setattr(sys, "stderr", err)
    state = write(tmp_path, "state.json", {"log": "x" * 1000})
    assert main(["apply", state, write(tmp_path, "ops.json", [])]) == status
    expected = b'{"metadata":{"log":"' + b"x" * 1000 + b'"},"unapplied":[]}\n'
    assert bytes(raw.taken) == expected[: min(room, len(expected))]
    assert err.getvalue() == ""


def test_ctrl_c_while_waiting_for_standard_input_is_status_130() -> None:
    """Ctrl-C at a terminal where `metaops size -` waits for input: exit 130, one line."""
    ran = run("size", "-", stdin=WaitingStdin())
    assert (ran.code, ran.out, ran.err) == (130, "", "metaops size: interrupted\n")


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


def test_python_m_metaops_stops_quietly_when_its_reader_does(tmp_path: Path) -> None:
    """`metaops apply ... | head -c 10`: exit 3 and nothing on stderr, not even at the interpreter's exit.

    With unbuffered output (PYTHONUNBUFFERED=1), where Python's text layer would take the short
    write the reader's leaving causes for a complete one; buffered output is the case of
    test_python_m_metaops_into_a_pipe_nobody_reads.
    """
    state = write(tmp_path, "state.json", {"log": "x" * 4_000_000})  # far more than a pipe buffers
    ops = write(tmp_path, "ops.json", [])
    with subprocess.Popen(
        [sys.executable, "-m", "metaops", "apply", state, ops],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**without_unbuffered(), "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(10) == b'{"metadata'
        process.stdout.close()
        err = process.stderr.read()
        assert process.wait(timeout=120) == 3
    assert err == b""


def without_unbuffered() -> dict[str, str]:
    """The environment for ``python -m metaops`` from this checkout, with output buffered as by default."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize(
    ("argv", "status"),
    [(["apply", "--help"], 0), (["size", "-"], 3)],
)
def test_python_m_metaops_into_a_pipe_nobody_reads(argv: list[str], status: int) -> None:
    """Output into a pipe whose reader has already gone (`| head -0`): no traceback, no report at exit.

    Help was written; a command's answer was not, which its status says."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "metaops", *argv],
            input="[1, 2]",
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            env=without_unbuffered(),
            cwd=ROOT,
            timeout=120,
            check=False,
        )
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (status, "")


def test_python_m_metaops_onto_a_full_disk(tmp_path: Path) -> None:
    """Standard output onto /dev/full: exit 3 with one line, no traceback."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system to stand for a full disk")
    ops = write(tmp_path, "ops.json", [{"type": "set", "key": "a", "value": 1}])
    with open("/dev/full", "w", encoding="utf-8") as full:
        done = subprocess.run(
            [sys.executable, "-m", "metaops", "collapse", ops],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            timeout=120,
            check=False,
        )
    assert (done.returncode, done.stderr) == (
        3,
        "metaops collapse: cannot write to standard output: No space left on device\n",
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
