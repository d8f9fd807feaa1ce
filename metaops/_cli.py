"""The command line: ``python -m metaops`` (also installed as the ``metaops`` script).

``demo`` runs the documented CSV example end to end. The other commands are an
oracle that other implementations can test against from any language: JSON in
(a file, or ``-`` for standard input), JSON out.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

from metaops._apply import apply
from metaops._collapse import collapse, compose
from metaops._errors import InvalidOperationError, InvalidValueError, MetaopsError
from metaops._json import JSON, MAX_DEPTH, describe, normalize
from metaops._size import json_size, json_text
from metaops._values import Operation, _parse, parse_operations

__all__ = ["main"]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_BAD_INPUT = 2

_OUTPUT = """\
output: one line of compact JSON (no spaces), newline-terminated, ASCII only
(other characters as \\u escapes), object keys in the order metaops holds them
(not sorted). Numbers are written as Python writes them (1.0, 1e-05), which parse
to the same values; a number that is not finite (a float increment that
overflowed) is written null, as JavaScript's JSON.stringify writes it.

exit status: 0 done, 2 bad input (a file that cannot be read, malformed JSON,
the wrong shape, an invalid operation, JSON nested too deeply): one line on
standard error says what."""

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


_DEEP = "JSON nested too deeply to process"


class _TooDeep(Exception):
    """A value nested too deeply to process or write out (which argument it came from is unknown)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as for every other bad input; --help has the usage.
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- input and output


def _read_text(name: str, source: str) -> str:
    """The text of ``source`` (a path, or ``-`` for standard input) for the argument ``name``."""
    if source == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text stream without bytes underneath (e.g. io.StringIO)
            return sys.stdin.read()
        data: bytes = stream.read()
        where = f"{name} (standard input)"
    else:
        where = f"{name} ({source})"
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            msg = f"{where}: cannot read the file: {error.strerror or error}"
            raise _BadInput(msg) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        msg = f"{where}: not UTF-8 text (byte {error.start}: {error.reason})"
        raise _BadInput(msg) from None


def _refuse_constant(name: str) -> NoReturn:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def _load(name: str, source: str) -> Any:
    """The JSON value in ``source``; :class:`_BadInput` naming the argument when it is not JSON."""
    text = _read_text(name, source)
    where = f"{name} ({'standard input' if source == '-' else source})"
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        msg = f"{where}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        raise _BadInput(msg) from None
    except ValueError as error:  # NaN, Infinity, -Infinity (Python's extensions to JSON)
        msg = f"{where}: malformed JSON: {error}"
        raise _BadInput(msg) from None
    except RecursionError:
        msg = f"{where}: JSON nested too deeply to read"
        raise _BadInput(msg) from None


def _where(name: str, source: str) -> str:
    return f"{name} ({'standard input' if source == '-' else source})"


def _load_operations(name: str, source: str) -> tuple[Operation, ...]:
    value = _load(name, source)
    try:
        return parse_operations(_as_list(value, name, source), safe_keys=False)
    except (InvalidOperationError, InvalidValueError) as error:
        raise _BadInput(f"{_where(name, source)}: {error}") from None
    except RecursionError:
        raise _BadInput(f"{_where(name, source)}: {_DEEP}") from None


def _as_list(value: object, name: str, source: str) -> list[Any]:
    if not isinstance(value, list):
        msg = f"{_where(name, source)}: expected a JSON array of operations, got {describe(value)}"
        raise _BadInput(msg)
    return value


def _load_metadata(name: str, source: str) -> dict[str, JSON]:
    value = _load(name, source)
    if not isinstance(value, dict):
        msg = f"{_where(name, source)}: expected a JSON object (the metadata), got {describe(value)}"
        raise _BadInput(msg)
    try:
        return normalize(value, name, wire=True)  # type: ignore[return-value]
    except InvalidValueError as error:
        raise _BadInput(f"{_where(name, source)}: {error}") from None
    except RecursionError:
        raise _BadInput(f"{_where(name, source)}: {_DEEP}") from None


def _depth(value: object) -> int:
    """How deeply ``value``'s containers nest (``[[1]]`` is 2), without recursing."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _dump(value: object) -> str:
    """``value`` as one line of the documented output format."""
    try:
        return json_text(value, ascii=True) + "\n"
    except (RecursionError, ValueError):
        # json_text fails only on a value nested past what the encoder's stack holds.
        raise _TooDeep from None


def _wire(ops: Sequence[Operation]) -> list[dict[str, JSON]]:
    return [op.to_wire() for op in ops]


# --------------------------------------------------------------------------- commands


def _apply(args: argparse.Namespace) -> int:
    _one_stdin(args.state, args.ops)
    state = _load_metadata("STATE", args.state)
    ops = _load_operations("OPS", args.ops)
    result = apply(state, ops)
    unapplied = {id(op) for op in result.unapplied}
    indices = [index for index, op in enumerate(ops) if id(op) in unapplied]
    sys.stdout.write(_dump({"metadata": result.metadata, "unapplied": indices}))
    return EXIT_OK


def _collapse(args: argparse.Namespace) -> int:
    ops = _load_operations("OPS", args.ops)
    sys.stdout.write(_dump(_wire(collapse(ops))))
    return EXIT_OK


def _compose(args: argparse.Namespace) -> int:
    _one_stdin(args.first, args.second)
    first = _load_operations("A", args.first)
    second = _load_operations("B", args.second)
    sys.stdout.write(_dump(_wire(compose(first, second))))
    return EXIT_OK


def _size(args: argparse.Namespace) -> int:
    value = _load("JSON", args.json)
    try:
        size = json_size(value)
    except (RecursionError, ValueError):
        # Read, but nested past what the encoder's stack holds.
        raise _BadInput(f"{_where('JSON', args.json)}: {_DEEP}") from None
    sys.stdout.write(f"{size}\n")
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    raw = _as_list(_load("OPS", args.ops), "OPS", args.ops)
    lines = []
    for index, obj in enumerate(raw):
        # How deep metaops can look is its own limit, not the platform's schema: a value past
        # it is input this oracle cannot judge (exit 2), not an operation the schema refuses.
        depth = _depth(obj.get("value")) if isinstance(obj, dict) else 0
        if depth > MAX_DEPTH:
            msg = (
                f"{_where('OPS', args.ops)}: operation {index}: field 'value': nested {depth:,} levels "
                f"deep; metaops checks values nested at most {MAX_DEPTH} levels"
            )
            raise _BadInput(msg)
        try:
            _parse(obj, True, index)
        except InvalidOperationError as error:
            lines.append(_dump({"index": index, "field": error.field, "message": str(error)}))
        except (InvalidValueError, RecursionError) as error:
            detail = str(error) if isinstance(error, InvalidValueError) else _DEEP
            raise _BadInput(f"{_where('OPS', args.ops)}: operation {index}: {detail}") from None
    # Written at the end, so that bad input found part way leaves nothing on standard output.
    sys.stdout.write("".join(lines))
    return EXIT_INVALID if lines else EXIT_OK


def _vectors(args: argparse.Namespace) -> int:
    target = Path(args.dir)
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
        sys.stdout.write(f"{path}\n")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    try:
        from metaops._demo import DemoReport, run_demo, summary
    except ImportError as error:
        missing = f" ({error.name} is missing)" if error.name else ""
        sys.stderr.write(
            f"metaops demo: the demo runs metaops serve and metaops.client, which need extras{missing}: "
            "pip install 'metaops[server,client]'\n"
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
        sys.stdout.write(
            f"metaops demo: the CSV import of the run-metadata docs, {args.rows:,} rows,\n"
            "through metaops serve (SQLite in a temporary directory) and metaops.client\n"
        )
        sys.stdout.flush()

    def announce(url: str, opened: threading.Event) -> None:
        sys.stdout.write(f"Watch it live: {url}\n")
        if sys.stdin is not None and sys.stdin.isatty():
            sys.stdout.write("The import starts when the page opens, or press Enter.\n")
            threading.Thread(target=_set_on_enter, args=(opened,), daemon=True).start()
        else:
            sys.stdout.write("The import starts when the page opens.\n")
        sys.stdout.flush()
        while not opened.wait(0.5):
            pass

    def serve_until_stopped(report: DemoReport) -> None:
        sys.stdout.write(summary(report))
        sys.stdout.write("Still serving the page; Ctrl-C to stop.\n")
        sys.stdout.flush()
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
        sys.stdout.write("\n" if tty else "")
        sys.stderr.write("metaops demo: interrupted; the service and its temporary database are gone\n")
        return 130  # what a shell reports for a process Ctrl-C ended
    if not args.serve:
        sys.stdout.write(_dump(report.to_json()) if args.json else summary(report))
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


def _parser() -> _Parser:
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

    def command(name: str, summary: str, description: str, epilog: str = _OUTPUT) -> _Parser:
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
        epilog="exit status: 0 when the parent's metadata equals every accepted call applied one by one,\n"
        "1 when it does not, 2 bad options or a missing extra (one line on standard error says which),\n"
        "130 interrupted (Ctrl-C) before the end; with --serve, Ctrl-C after the end exits 0.",
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
        'Prints {"metadata": <the new metadata>, "unapplied": [<0-based indices into OPS>]}.',
    )
    sub.add_argument("state", metavar="STATE", help="the metadata: a JSON object")
    sub.add_argument("ops", metavar="OPS", help="the operations: a JSON array")
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
    )
    sub.add_argument("json", metavar="JSON", help="any JSON value")
    sub.set_defaults(handler=_size, inputs=[("JSON", "json")])

    sub = command(
        "validate",
        "Check operations against the platform's schema",
        "OPS is a JSON array of wire operations, each checked as the platform's schema checks\n"
        "it (unsafe keys are refused). Prints one line per invalid operation,\n"
        '{"index": <0-based>, "field": <the field at fault, or null>, "message": "..."};\n'
        "nothing when all are valid.",
        epilog=_OUTPUT.replace("exit status: 0 done,", "exit status: 0 all valid, 1 some invalid,"),
    )
    sub.add_argument("ops", metavar="OPS", help="the operations: a JSON array")
    sub.set_defaults(handler=_validate, inputs=[("OPS", "ops")])

    sub = command(
        "vectors",
        "Write the conformance vectors metaops ships into a directory",
        "Writes apply.jsonl, divergences.jsonl, size.jsonl, wire.jsonl and their README.md into\n"
        "DIR (created if missing; files of those names are replaced), for another implementation\n"
        "to run metaops's own cases. Prints the path of each file written, one a line.",
        epilog="exit status: 0 done, 2 DIR cannot be written (one line on standard error says why).",
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
    return serve(list(argv))


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
        return done.code if isinstance(done.code, int) else EXIT_BAD_INPUT
    try:
        code: int = args.handler(args)
    except (_BadInput, MetaopsError) as error:
        sys.stderr.write(f"metaops {args.command}: {error}\n")
        return EXIT_BAD_INPUT
    except (RecursionError, _TooDeep):
        # The last resort, for input that was read but recursed past the stack while being
        # processed or written out; which argument held it is not known here, so name them all.
        inputs: list[tuple[str, str]] = getattr(args, "inputs", [])
        if not inputs:
            raise
        named = " or ".join(_where(name, getattr(args, attr)) for name, attr in inputs)
        sys.stderr.write(f"metaops {args.command}: {named}: {_DEEP}\n")
        return EXIT_BAD_INPUT
    sys.stdout.flush()
    return code
