"""The command line: ``python -m metaops`` (also installed as the ``metaops`` script).

``demo`` runs the documented CSV example end to end. The other commands are an
oracle that other implementations can test against from any language: JSON in
(a file, or ``-`` for standard input), JSON out.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import math
import os
import sys
import textwrap
import threading
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

from metaops._apply import apply
from metaops._collapse import collapse, compose
from metaops._errors import InvalidOperationError, InvalidValueError, MetaopsError
from metaops._json import JSON, MAX_DEPTH, MAX_METADATA_DEPTH, nests_within, normalize
from metaops._size import DEFAULT_LIMIT, LIMIT_ENV, json_size, json_text, metadata_limit
from metaops._values import WIRE_TYPES, Operation, _parse, parse_operations

__all__ = ["main"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_BAD_INPUT = 2
EXIT_OUTPUT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C

MAX_INPUT = 64 * 1024 * 1024
"""The most bytes read from one input: far more than any metadata or request (the service
takes 2 MiB bodies), and a bound on what ``yes |`` or ``/dev/zero`` can make it hold."""

_OUTPUT = """\
output: one line of compact JSON (no spaces), newline-terminated, ASCII only
(other characters as \\u escapes), object keys in the order metaops holds them
(not sorted). Numbers are written as Python writes them (1.0, 1e-05), which parse
to the same values; a number that is not finite (a float increment that
overflowed) is written null, as JavaScript's JSON.stringify writes it."""

# Every command's exit statuses, as --help lists them: (status, what it means). A test runs
# each listed status of each command, so a status added here or in a command needs a case there.
_BAD_JSON = (
    f"a wrong command line, a file that cannot be read, input over {MAX_INPUT // 2**20} MiB, input "
    "that is empty or not JSON (not UTF-8 text, malformed JSON, NaN), JSON nested too deeply"
)
_DONE = (EXIT_OK, "done")
_NOT_WRITTEN = (
    EXIT_OUTPUT,
    "standard output could not be written (a full disk, a closed stream: one line on "
    "standard error says why; nothing is said when a reader such as head stopped reading); "
    "what was written before may be cut short",
)
_STOPPED = (EXIT_INTERRUPTED, "interrupted (Ctrl-C)")


def _bad(what: str) -> tuple[int, str]:
    return (EXIT_BAD_INPUT, f"bad input: {what}; one line on standard error says what and where")


def _exit_statuses(*statuses: tuple[int, str]) -> str:
    rows = (
        textwrap.fill(meaning, width=80, initial_indent=f"  {status:<5}", subsequent_indent=" " * 7)
        for status, meaning in statuses
    )
    return "exit status:\n" + "\n".join(rows)


def _epilog(output: str, *statuses: tuple[int, str]) -> str:
    return f"{output}\n\n{_exit_statuses(*statuses)}" if output else _exit_statuses(*statuses)


_FLOATS = """\
Exactly so for integers; float increments merged into one are equal up to
rounding (reassociation: (a + b) + c and a + (b + c) can differ in the last digit)."""

_OPERATIONS = """\
OPS is a JSON array of operations in the platform's wire form, e.g.
[{"type": "increment", "key": "n", "value": 1}, {"type": "delete", "key": "x"}].
Keys the platform's schema refuses as unsafe (the key __proto__, a $. path through
__proto__, constructor or prototype) are accepted here, as the reference's
applyMetadataOperations accepts them: apply reports them unapplied (validate
refuses them)."""


class _BadInput(Exception):
    """Input the command cannot work on; the message says which argument and what is wrong."""


class _OutputFailed(Exception):
    """Standard output cannot be written; the message says why."""


_DEEP = "JSON nested too deeply to process"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as for every other bad input; --help has the usage.
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- input and output


_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-32's little-endian mark starts like UTF-16's


def _read_text(name: str, source: str) -> str:
    """The text of ``source`` (a path, or ``-`` for standard input) for the argument ``name``."""
    where = _where(name, source)
    if not source:
        msg = f"{name}: the path is empty (give a file, or - for standard input)"
        raise _BadInput(msg)
    try:
        data = _read_bytes(source, where)
    except OSError as error:
        what = "standard input" if source == "-" else "the file"
        msg = f"{where}: cannot read {what}: {error.strerror or error}{_json_not_path(source, error)}"
        raise _BadInput(msg) from None
    if isinstance(data, str):  # standard input as text without bytes underneath (e.g. io.StringIO)
        return data
    if len(data) > MAX_INPUT:
        limit = f"{MAX_INPUT // 2**20} MiB" if MAX_INPUT % 2**20 == 0 else f"{MAX_INPUT:,} bytes"
        msg = f"{where}: more than {limit}, the most metaops reads from one input"
        raise _BadInput(msg)
    if data.startswith(_UTF16_BOMS):
        msg = f"{where}: UTF-16 or UTF-32 text (it starts with their byte order mark); metaops reads UTF-8"
        raise _BadInput(msg)
    # JSON's standard lets a reader skip a UTF-8 byte order mark; Windows editors write one.
    offset = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError as error:
        msg = f"{where}: not UTF-8 text (byte {offset + error.start}: {error.reason})"
        raise _BadInput(msg) from None


def _read_bytes(source: str, where: str) -> bytes | str:
    """Up to ``MAX_INPUT + 1`` bytes of ``source``: one more than allowed tells that there are more."""
    if source != "-":
        with open(source, "rb") as file:
            return file.read(MAX_INPUT + 1)
    if sys.stdin is None:  # started with standard input closed (<&-)
        msg = f"{where}: standard input is closed"
        raise _BadInput(msg)
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        text: str = sys.stdin.read(MAX_INPUT + 1)
        return text
    data: bytes = stream.read(MAX_INPUT + 1)
    return data


def _json_not_path(source: str, error: OSError) -> str:
    """A hint when a missing "file" is JSON text given where a path belongs (metaops size '{"a": 1}')."""
    looks_like_json = source.lstrip()[:1] in ("{", "[", '"') or source in ("true", "false", "null")
    if isinstance(error, FileNotFoundError) and looks_like_json:
        return "; to give JSON itself rather than a file, pipe it in and pass - (echo '...' | metaops ...)"
    return ""


_JSON_WHITESPACE = " \t\n\r"


def _where(name: str, source: str) -> str:
    return f"{name} ({'standard input' if source == '-' else source})"


def _refuse_constant(name: str) -> NoReturn:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


class _PastDoubles(Exception):
    """A number in the input that a double cannot hold (JavaScript reads it as Infinity)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _read_int(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        # Past Python's digit limit (4,300 digits), so far past the doubles that JavaScript
        # reads it as Infinity; so does float().
        return float(text)


def _finite_int(text: str) -> int | float:
    number = _read_int(text)
    if len(text) > 300:  # shorter ones are all well inside the doubles (up to 1.8e308)
        try:
            float(number)  # OverflowError exactly where JavaScript's reading rounds to Infinity
        except OverflowError:
            raise _PastDoubles(text) from None
        if isinstance(number, float):
            raise _PastDoubles(text)
    return number


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # 1e400: no NaN comes here (the constant NaN is refused)
        raise _PastDoubles(text)
    return number


def _load(name: str, source: str, *, finite: bool = False) -> Any:
    """The JSON value in ``source``; :class:`_BadInput` naming the argument when it is not JSON.

    A number past the doubles' range is read as JavaScript reads it, as infinity, unless
    ``finite``: then it is bad input, said in the input's words (not Python's ``inf``).
    """
    text = _read_text(name, source)
    where = _where(name, source)
    if not text.strip(_JSON_WHITESPACE):
        # Said plainly: the parser's "Expecting value at line 2, column 1" reads as a syntax error.
        msg = f"{where}: {'only whitespace' if text else 'empty'}, no JSON in it"
        raise _BadInput(msg)
    try:
        if finite:
            return json.loads(
                text, parse_constant=_refuse_constant, parse_int=_finite_int, parse_float=_finite_float
            )
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_read_int)
    except _PastDoubles as error:
        shown = (
            error.text if len(error.text) <= 24 else f"{error.text[:20]}... ({len(error.text):,} characters)"
        )
        msg = (
            f"{where}: the number {shown} is past the range of a double: JavaScript reads it as "
            "Infinity, which JSON cannot hold"
        )
        raise _BadInput(msg) from None
    except json.JSONDecodeError as error:
        msg = f"{where}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        raise _BadInput(msg) from None
    except ValueError as error:  # NaN, Infinity, -Infinity (Python's extensions to JSON)
        msg = f"{where}: malformed JSON: {error}"
        raise _BadInput(msg) from None
    except RecursionError:
        msg = f"{where}: JSON nested too deeply to read"
        raise _BadInput(msg) from None


def _load_operations(name: str, source: str) -> tuple[Operation, ...]:
    value = _load(name, source, finite=True)
    try:
        return parse_operations(_as_list(value, name, source), safe_keys=False)
    except (InvalidOperationError, InvalidValueError) as error:
        raise _BadInput(f"{_where(name, source)}: {error}") from None


def _as_list(value: object, name: str, source: str) -> list[Any]:
    if not isinstance(value, list):
        msg = f"{_where(name, source)}: expected a JSON array of operations, got {_json_kind(value)}"
        raise _BadInput(msg)
    return value


def _json_kind(value: object) -> str:
    """What ``value``, read from JSON text, is, in JSON's words (the user wrote JSON, not Python)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, float) and math.isinf(value):
        return "a number past the range of a double"
    text = repr(value)
    return f"a number of {len(text.lstrip('-')):,} digits" if len(text) > 40 else f"the number {text}"


def _load_metadata(name: str, source: str) -> dict[str, JSON]:
    value = _load(name, source, finite=True)
    if not isinstance(value, dict):
        msg = f"{_where(name, source)}: expected a JSON object (the metadata), got {_json_kind(value)}"
        raise _BadInput(msg)
    try:
        return normalize(value, name, wire=True, metadata=True)  # type: ignore[return-value]
    except InvalidValueError as error:
        raise _BadInput(f"{_where(name, source)}: {error}") from None


def _dump(value: object) -> str:
    """``value`` as one line of the documented output format."""
    return json_text(value, ascii=True) + "\n"


def _out(text: str) -> None:
    """Write ``text`` to standard output; :class:`_OutputFailed` when it cannot be written."""
    stream = sys.stdout
    binary = getattr(stream, "buffer", None)
    try:
        if binary is None:  # a text stream without bytes underneath (e.g. io.StringIO)
            stream.write(text)
            return
        stream.flush()
        # The bytes, in a loop: over an unbuffered file (python -u, PYTHONUNBUFFERED=1) the
        # text layer ignores a short write, so output cut short by a reader leaving (| head)
        # would pass for complete and end with status 0.
        view = memoryview(_encoded(text, stream))
        while view:
            written = binary.write(view)
            if not written:  # None: a non-blocking stream that cannot take more now
                raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            view = view[written:]
    except BrokenPipeError:
        raise  # the reader left on purpose (| head): main() ends quietly
    except OSError as error:
        msg = f"cannot write to standard output: {error.strerror or error}"
        raise _OutputFailed(msg) from None


def _encoded(text: str, stream: Any) -> bytes:
    """``text`` in ``stream``'s encoding; what it cannot encode (a path's odd bytes) escaped."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, getattr(stream, "errors", None) or "strict")
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace")


def _say(command: str, message: str) -> None:
    """One line on standard error, if there is a standard error to write to."""
    with contextlib.suppress(AttributeError, OSError):  # closed (None) or broken: nobody to tell
        sys.stderr.write(f"metaops {command}: {message}\n")


def _abandon_stdout() -> None:
    """Point the process's standard output at the null device.

    What is still buffered would otherwise fail again when the interpreter flushes it
    on exit, with a second report ("Exception ignored ... BrokenPipeError").
    """
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's StringIO): nothing buffered
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, descriptor)
    finally:
        os.close(null)


def _wire(ops: Sequence[Operation]) -> list[dict[str, JSON]]:
    return [op.to_wire() for op in ops]


# --------------------------------------------------------------------------- commands


def _apply(args: argparse.Namespace) -> int:
    _one_stdin(args.state, args.ops)
    # Before reading anything, so that a malformed TASK_RUN_METADATA_MAXIMUM_SIZE is found at once.
    limit = metadata_limit(args.limit)
    state = _load_metadata("STATE", args.state)
    ops = _load_operations("OPS", args.ops)
    result = apply(state, ops)
    unapplied = {id(op) for op in result.unapplied}
    indices = [index for index, op in enumerate(ops) if id(op) in unapplied]
    _out(_dump({"metadata": result.metadata, "unapplied": indices}))
    # apply() itself has no limit (the service checks it); an oracle that printed 300 KB of
    # metadata without a word would let a user believe the platform takes it.
    size = json_size(result.metadata)
    if size > limit:
        if args.limit is not None:
            origin = "--limit"
        elif LIMIT_ENV in os.environ:
            origin = LIMIT_ENV
        else:
            origin = f"the default; --limit or {LIMIT_ENV} sets another"
        _say(
            "apply",
            f"warning: the new metadata is {size:,} bytes of JSON, over the {limit:,}-byte limit "
            f"({origin}); the platform would refuse this update",
        )
    return EXIT_OK


def _byte_count(text: str) -> int:
    """``--limit``'s value: a whole number of bytes."""
    if not (text.isascii() and text.isdigit()):
        msg = f"expected a whole number of bytes, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def _collapse(args: argparse.Namespace) -> int:
    ops = _load_operations("OPS", args.ops)
    _out(_dump(_wire(collapse(ops))))
    return EXIT_OK


def _compose(args: argparse.Namespace) -> int:
    _one_stdin(args.first, args.second)
    first = _load_operations("A", args.first)
    second = _load_operations("B", args.second)
    _out(_dump(_wire(compose(first, second))))
    return EXIT_OK


def _size(args: argparse.Namespace) -> int:
    # json_size measures whatever json read (its encoder nests as deeply as the decoder).
    _out(f"{json_size(_load('JSON', args.json))}\n")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    raw = _as_list(_load("OPS", args.ops), "OPS", args.ops)
    lines = []
    for index, obj in enumerate(raw):
        # How deep metaops can look is its own limit, not the platform's schema: a value past
        # it is input this oracle cannot judge (exit 2), not an operation the schema refuses.
        levels = _depth_bound(obj)
        if isinstance(obj, dict) and not nests_within(obj.get("value"), levels):
            msg = (
                f"{_where('OPS', args.ops)}: operation {index}: field 'value': nested more than "
                f"{levels} levels deep; metaops checks values nested at most {levels} levels"
            )
            raise _BadInput(msg)
        try:
            _parse(obj, True, index)
        except InvalidOperationError as error:
            lines.append(_dump({"index": index, "field": error.field, "message": str(error)}))
    # Written at the end, so that bad input found part way leaves nothing on standard output.
    checked = _count(len(raw), "operation")
    if lines:
        _out("".join(lines))
        _say("validate", f"{len(lines):,} of {checked} invalid")
        return EXIT_INVALID
    # A line even when there is nothing to report, so that success is seen, not inferred.
    _out(f"{checked}, {'valid' if len(raw) == 1 else 'all valid'}\n")
    return EXIT_OK


def _depth_bound(obj: object) -> int:
    """How deep the value of the wire operation ``obj`` may nest: a whole metadata object's (an
    update's, which has no key) as deep as metadata does, any other as deep as a value."""
    kind = obj.get("type") if isinstance(obj, dict) else None
    cls = WIRE_TYPES.get(kind) if isinstance(kind, str) else None
    return MAX_METADATA_DEPTH if cls is not None and not cls._keyed else MAX_DEPTH


def _count(number: int, noun: str) -> str:
    """``3 operations``, ``1 operation``."""
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _vectors(args: argparse.Namespace) -> int:
    # Path("") is the working directory, and "-" means standard input everywhere else: both
    # would put files where the user did not ask for them.
    if not args.dir:
        msg = "DIR: the path is empty; name a directory (. for the working directory)"
        raise _BadInput(msg)
    if args.dir == "-":
        msg = (
            "DIR (-): the vectors are files for a directory, not standard output; "
            "name a directory (./- for one called -)"
        )
        raise _BadInput(msg)
    target = Path(args.dir)
    if target.exists() and not target.is_dir():
        msg = f"DIR ({args.dir}): a file, not a directory"
        raise _BadInput(msg)
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for source in sorted(files("metaops").joinpath("conformance").iterdir(), key=lambda f: f.name):
            if source.name.endswith((".jsonl", ".md")):
                path = target / source.name
                path.write_bytes(source.read_bytes())
                written.append(path)
    except OSError as error:
        msg = f"DIR ({args.dir}): cannot write the vectors there: {error.strerror or error}"
        raise _BadInput(msg) from None
    for path in written:
        _out(f"{path}\n")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    try:
        from metaops._demo import DemoReport, run_demo, summary
    except ImportError as error:
        missing = f" ({error.name} is missing)" if error.name else ""
        _say(
            "demo",
            f"the demo runs metaops serve and metaops.client, which need extras{missing}: "
            "pip install 'metaops[server,client]'",
        )
        return EXIT_BAD_INPUT
    if args.rows < 0 or not 0 <= args.port <= 65535:
        msg = f"--rows must be >= 0 and --port from 0 to 65535, got {args.rows} and {args.port}"
        raise _BadInput(msg)
    if args.serve and args.json:
        msg = "--serve prints a link and keeps serving; it does not go with --json"
        raise _BadInput(msg)
    tty = bool(getattr(sys.stdout, "isatty", lambda: False)())
    if not args.json:
        _out(
            f"metaops demo: the CSV import of the run-metadata docs, {args.rows:,} rows,\n"
            "through metaops serve (SQLite in a temporary directory) and metaops.client\n"
        )

    def announce(url: str, opened: threading.Event) -> None:
        _out(f"Watch it live: {url}\n")
        if sys.stdin is not None and sys.stdin.isatty():
            _out("The import starts when the page opens, or press Enter.\n")
            threading.Thread(target=_set_on_enter, args=(opened,), daemon=True).start()
        else:
            _out("The import starts when the page opens.\n")
        while not opened.wait(0.5):
            pass

    def serve_until_stopped(report: DemoReport) -> None:
        _out(summary(report) + "Still serving the page; Ctrl-C to stop.\n")
        _wait_for_interrupt()

    try:
        report = run_demo(
            args.rows,
            seed=args.seed,
            progress=None if args.json else sys.stdout,
            tty=tty,
            serve=args.serve,
            port=args.port,
            announce=announce if args.serve else None,
            after=serve_until_stopped if args.serve else None,
        )
    except KeyboardInterrupt:
        if tty:
            _out("\n")  # off the progress bar's line, for the one line main() says
        raise
    if not args.serve:
        _out(_dump(report.to_json()) if args.json else summary(report))
    return EXIT_OK if report.consistent else EXIT_INVALID


def _set_on_enter(event: threading.Event) -> None:
    sys.stdin.readline()
    event.set()


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM."""
    import signal

    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_stdin(*sources: str) -> None:
    if sum(source == "-" for source in sources) > 1:
        msg = "standard input (-) can be given for one argument only"
        raise _BadInput(msg)


# --------------------------------------------------------------------------- the parser


@functools.cache
def _parser() -> _Parser:
    """The command line's parser, built once: building it (argparse's gettext look-ups, the
    help's wrapping) costs more than most commands take to run."""
    from metaops import __version__

    parser = _Parser(
        prog="metaops",
        description="metaops: the operation algebra behind run metadata. "
        "A demo, and oracle commands (JSON in, JSON out) for other implementations to test against.",
        epilog="Every JSON argument is a file path, or - for standard input. Run 'metaops COMMAND --help' "
        "for a command's input and output.",
    )
    parser.add_argument("--version", action="version", version=f"metaops {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    operations_epilog = _epilog(
        _OUTPUT,
        _DONE,
        _bad(_BAD_JSON + ", JSON of the wrong shape, an invalid operation"),
        _NOT_WRITTEN,
        _STOPPED,
    )

    def command(name: str, summary: str, description: str, epilog: str = operations_epilog) -> _Parser:
        sub: _Parser = commands.add_parser(
            name,
            help=summary,
            description=f"{summary}.\n\n{description}",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    demo = command(
        "demo",
        "Run the documented CSV import through metaops serve and metaops.client",
        "A parent run imports a CSV file: it sets its metadata's status and totalRows, and one\n"
        "child run per row reports to it with metadata.parent.increment('processedRows', 1)\n"
        ".append('rowRuns', id). The runs are metaops.client clients of a metaops serve app\n"
        "started on a free port of 127.0.0.1, with SQLite in a temporary directory; the parent\n"
        "also writes a log stream. Shows a progress bar on a terminal (plain lines otherwise),\n"
        "then what happened: the calls made, the requests, bytes and operations sent, how often\n"
        "the parent's metadata was written, against one request and one write per call, and the\n"
        "final metadata. With --serve, prints the link of the run's dashboard page first, takes\n"
        "its time over the rows so that the progress bar can be watched filling, and keeps\n"
        "serving the page until Ctrl-C. Needs the server and client extras:\n"
        "pip install 'metaops[server,client]'.",
        epilog=_epilog(
            "",
            (
                EXIT_OK,
                "the parent's metadata equals every accepted call applied one by one (with "
                "--serve: then stopped by Ctrl-C or SIGTERM)",
            ),
            (EXIT_INVALID, "it does not"),
            _bad("a wrong command line, an option out of range, the server or client extra missing"),
            _NOT_WRITTEN,
            _STOPPED,
        ),
    )
    demo.add_argument("--rows", type=int, default=500, help="rows in the CSV file (default 500)")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the generated file")
    demo.add_argument("--json", action="store_true", help="print the report as one line of JSON instead")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="print the dashboard's link, go slowly enough to watch, and keep serving until Ctrl-C",
    )
    demo.add_argument("--port", type=int, default=0, help="port of the service (default 0: a free one)")
    demo.set_defaults(handler=_demo)

    sub = command(
        "apply",
        "Apply operations to metadata",
        "STATE is a JSON object (the metadata).\n" + _OPERATIONS + "\n\n"
        'Prints {"metadata": <the new metadata>, "unapplied": [<0-based indices into OPS>]}.\n'
        "When the new metadata is larger than the size limit (as JSON.stringify measures it),\n"
        "a warning on standard error says by how much: the platform refuses such an update.\n"
        "The metadata is printed all the same, and the exit status is 0.",
        epilog=_epilog(
            _OUTPUT,
            (EXIT_OK, "done (also when the new metadata is over the size limit)"),
            _bad(_BAD_JSON + f", JSON of the wrong shape, an invalid operation, a malformed {LIMIT_ENV}"),
            _NOT_WRITTEN,
            _STOPPED,
        ),
    )
    sub.add_argument("state", metavar="STATE", help="the metadata: a JSON object")
    sub.add_argument("ops", metavar="OPS", help="the operations: a JSON array")
    sub.add_argument(
        "--limit",
        type=_byte_count,
        metavar="BYTES",
        help=f"the metadata size limit to warn about (default: {LIMIT_ENV}, else {DEFAULT_LIMIT:,})",
    )
    sub.set_defaults(handler=_apply, inputs=[("STATE", "state"), ("OPS", "ops")])

    sub = command(
        "collapse",
        "Collapse a batch of operations",
        _OPERATIONS + "\n\nPrints the collapsed batch, a JSON array of wire operations with the same\n"
        "effect as OPS from every starting metadata.\n" + _FLOATS,
    )
    sub.add_argument("ops", metavar="OPS", help="the operations: a JSON array")
    sub.set_defaults(handler=_collapse, inputs=[("OPS", "ops")])

    sub = command(
        "compose",
        "Compose two batches of operations",
        "A and B are JSON arrays of operations (as OPS below).\n" + _OPERATIONS + "\n\n"
        "Prints the collapsed batch (a JSON array) with the same effect as A followed by B\n"
        "from every starting metadata.\n" + _FLOATS,
    )
    sub.add_argument("first", metavar="A", help="the first batch: a JSON array")
    sub.add_argument("second", metavar="B", help="the batch after it: a JSON array")
    sub.set_defaults(handler=_compose, inputs=[("A", "first"), ("B", "second")])

    sub = command(
        "size",
        "Measure the JSON size of a value",
        "JSON is any JSON value. Prints its size in bytes as JavaScript measures it: the\n"
        "UTF-8 length of JSON.stringify(value), as a decimal integer.",
        epilog=_epilog("", _DONE, _bad(_BAD_JSON), _NOT_WRITTEN, _STOPPED),
    )
    sub.add_argument("json", metavar="JSON", help="any JSON value")
    sub.set_defaults(handler=_size, inputs=[("JSON", "json")])

    sub = command(
        "validate",
        "Check operations against the platform's schema",
        "OPS is a JSON array of wire operations, each checked as the platform's schema checks\n"
        "it (unsafe keys are refused). Prints one line per invalid operation,\n"
        '{"index": <0-based>, "field": <the field at fault, or null>, "message": "..."},\n'
        'and "N of M operations invalid" on standard error. When all are valid it prints one\n'
        'line of text instead, "M operations, all valid" ("1 operation, valid").',
        epilog=_epilog(
            "output: each line for an invalid operation is compact JSON, ASCII only (other\n"
            "characters as \\u escapes).",
            (EXIT_OK, "all valid"),
            (EXIT_INVALID, "some invalid (a line for each on standard output)"),
            _bad(
                _BAD_JSON
                + ", JSON of the wrong shape (an operation that is not valid is status 1, not bad input)"
            ),
            _NOT_WRITTEN,
            _STOPPED,
        ),
    )
    sub.add_argument("ops", metavar="OPS", help="the operations: a JSON array")
    sub.set_defaults(handler=_validate, inputs=[("OPS", "ops")])

    sub = command(
        "vectors",
        "Write the conformance vectors metaops ships into a directory",
        "Writes apply.jsonl, divergences.jsonl, size.jsonl, wire.jsonl and their README.md into\n"
        "DIR (created if missing; files of those names are replaced), for another implementation\n"
        "to run metaops's own cases. Prints the path of each file written, one a line.",
        epilog=_epilog(
            "", _DONE, _bad("a wrong command line, DIR cannot be written"), _NOT_WRITTEN, _STOPPED
        ),
    )
    sub.add_argument("dir", metavar="DIR", help="the directory to write into")
    sub.set_defaults(handler=_vectors)

    # Listed here for the command list; `metaops serve ...` is dispatched in main before
    # parsing, to the service's own parser (which needs the server extra).
    commands.add_parser(
        "serve",
        help="Serve run metadata over HTTP (SQLite or PostgreSQL; needs metaops[server])",
        add_help=False,
    )
    commands.add_parser(
        "token",
        help="Mint a read-only public access token for runs, offline (needs metaops[server])",
        add_help=False,
    )
    return parser


def _token(argv: Sequence[str]) -> int:
    """``metaops token ARGS``: mint a public access token (extra ``server``: PyJWT), imported only now."""
    try:
        from metaops.service._auth_cli import main as token
    except ImportError as error:
        sys.stderr.write(
            f"metaops token: minting needs the server extra ({error.name or error} is missing): "
            "pip install 'metaops[server]'\n"
        )
        return EXIT_BAD_INPUT
    return token(list(argv))


def _serve(argv: Sequence[str]) -> int:
    """``metaops serve ARGS``: the service (extra ``server``), imported only now."""
    try:
        from metaops.service._serve import main as serve
    except ImportError as error:
        sys.stderr.write(
            f"metaops serve: the service needs the server extra ({error.name or error} is missing): "
            "pip install 'metaops[server]'\n"
        )
        return EXIT_BAD_INPUT
    try:
        return serve(list(argv))
    except SystemExit as done:  # --help, or a usage error argparse has already reported
        return done.code if isinstance(done.code, int) else EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as scratch:
    ...     path = pathlib.Path(scratch, "value.json")
    ...     _ = path.write_text('{"progress": 1.0, "note": "日本語"}', encoding="utf-8")
    ...     main(["size", str(path)])
    33
    0
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["serve"]:
        return _serve(arguments[1:])
    if arguments[:1] == ["token"]:
        return _token(arguments[1:])
    try:
        args = _parser().parse_args(arguments)
    except SystemExit as done:  # --help, --version, or a usage error (already reported)
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except OSError:  # the reader of --help left (| head): no second report at exit
            _abandon_stdout()
        return done.code if isinstance(done.code, int) else EXIT_BAD_INPUT
    if sys.stdout is None:  # started with its standard output closed (>&-)
        _say(args.command, "standard output is closed: there is nowhere to write the answer")
        return EXIT_OUTPUT
    try:
        code: int = args.handler(args)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            msg = f"cannot write to standard output: {error.strerror or error}"
            raise _OutputFailed(msg) from None
    except (_BadInput, MetaopsError) as error:
        _say(args.command, str(error))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say(args.command, "interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Its reader stopped reading (| head): as other tools do, end without a word.
        _abandon_stdout()
        return EXIT_OUTPUT
    except _OutputFailed as error:
        _say(args.command, str(error))
        _abandon_stdout()
        return EXIT_OUTPUT
    except RecursionError:
        # The last resort, for input that was read but recursed past the stack while being
        # processed or written out; which argument held it is not known here, so name them all.
        inputs: list[tuple[str, str]] = getattr(args, "inputs", [])
        if not inputs:
            raise
        named = " or ".join(_where(name, getattr(args, attr)) for name, attr in inputs)
        _say(args.command, f"{named}: {_DEEP}")
        return EXIT_BAD_INPUT
    return code
