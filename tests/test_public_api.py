"""The public surface: what ``import metaops`` gives, and nothing else."""

from __future__ import annotations

import ast
import importlib
import importlib.resources
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import metaops

ROOT = Path(__file__).resolve().parent.parent

# The public API. A change here is an API change: deliberate.
PUBLIC_API = [
    "DEFAULT_LIMIT",
    "JSON",
    "MAX_DEPTH",
    "MAX_REQUEST_BYTES",
    "WIRE_TYPES",
    "Append",
    "ApplyResult",
    "Delete",
    "Flush",
    "FlushInFlightError",
    "Increment",
    "InvalidArgumentError",
    "InvalidLimitError",
    "InvalidOperationError",
    "InvalidRequestError",
    "InvalidValueError",
    "MetadataTooLargeError",
    "MetaopsError",
    "Operation",
    "ReadOnlyError",
    "RejectedFlush",
    "Remove",
    "RunMetadata",
    "Set",
    "Update",
    "apply",
    "check_size",
    "chunk",
    "collapse",
    "compose",
    "decrement",
    "is_safe_key",
    "json_equal",
    "json_size",
    "json_text",
    "metadata_limit",
    "parse_operation",
    "parse_operations",
]


def _isort_style_key(name: str) -> tuple[int, list[str | int]]:
    # ruff's RUF022 order: SCREAMING_CASE constants, then CamelCase classes, then the
    # rest; within each group a natural sort (digit runs compare as numbers).
    if name.isupper() and len(name) > 1:
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural: list[str | int] = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return group, natural


def test_all_is_pinned() -> None:
    """__all__ is exactly the public API, with no duplicates."""
    assert metaops.__all__ == PUBLIC_API
    assert len(set(metaops.__all__)) == len(metaops.__all__)


def test_all_is_sorted() -> None:
    """__all__ is sorted: constants, then classes, then functions, each alphabetically."""
    assert metaops.__all__ == sorted(metaops.__all__, key=_isort_style_key)


def test_all_is_exactly_the_public_names() -> None:
    """Every public, non-module name of the package is in __all__, and nothing else is."""
    public = {
        name
        for name, value in vars(metaops).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(metaops.__all__)


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_name_is_importable(name: str) -> None:
    """`from metaops import <name>` works for every name in __all__."""
    module = importlib.import_module("metaops")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from metaops import {name}", namespace)
    assert namespace[name] is getattr(metaops, name)


def test_star_import_gives_exactly_all() -> None:
    """`from metaops import *` binds exactly the names in __all__."""
    namespace: dict[str, object] = {}
    exec("from metaops import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(metaops.__all__)


def _modules_imported_by_import_metaops() -> list[str]:
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import metaops\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # -S: no site, so nothing a .pth file imports at startup is counted.
    done = subprocess.run(
        [sys.executable, "-S", "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    return done.stdout.split()


def test_import_metaops_does_not_import_hypothesis() -> None:
    """hypothesis is a test dependency: the strategies module is never imported by the package."""
    imported = _modules_imported_by_import_metaops()
    assert "metaops" in imported
    assert not [name for name in imported if name.split(".")[0] == "hypothesis"]
    assert "metaops.strategies" not in imported


def test_import_metaops_imports_only_the_standard_library() -> None:
    """No runtime dependencies: everything `import metaops` loads is metaops or the stdlib."""
    imported = _modules_imported_by_import_metaops()
    foreign = [
        name
        for name in imported
        if name.split(".")[0] != "metaops" and name.split(".")[0] not in sys.stdlib_module_names
    ]
    assert foreign == []


def _self_calling_closures(source: str) -> list[str]:
    """The nested functions in ``source`` that name themselves (a call, or a reference to pass on)."""
    found: list[str] = []
    _find_self_calling(ast.parse(source), False, found)
    return found


def _find_self_calling(node: ast.AST, nested: bool, found: list[str]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if nested and any(
                isinstance(name, ast.Name) and name.id == child.name for name in ast.walk(child)
            ):
                found.append(f"{child.name} (line {child.lineno})")
            _find_self_calling(child, True, found)
        else:
            # A method is no closure: a class body starts over.
            _find_self_calling(child, nested and not isinstance(child, ast.ClassDef), found)


def test_no_closure_calls_itself() -> None:
    """No nested function in the package refers to itself: such a closure is a reference cycle,
    which keeps everything it reaches alive until a full garbage-collector pass (one in the
    service's text cache held about 100 MB). Recursion goes in module-level functions."""
    assert _self_calling_closures("def f():\n    def g(n):\n        return g(n - 1)\n") == ["g (line 2)"]
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "metaops").rglob("*.py"))
        if (found := _self_calling_closures(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_py_typed_is_in_the_package() -> None:
    """The PEP 561 marker sits next to the package's modules."""
    marker = Path(metaops.__file__).parent / "py.typed"
    assert marker.is_file()
    assert importlib.resources.files("metaops").joinpath("py.typed").is_file()


def test_py_typed_is_declared_as_package_data() -> None:
    """The build ships py.typed: pyproject.toml lists it as package data of metaops."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) is needed to read pyproject.toml")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_data = config["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["metaops"]


@pytest.mark.parametrize(
    "error",
    [
        metaops.MetadataTooLargeError(300_000, 262_144, "metadata of run 'r'"),
        metaops.InvalidOperationError("operation 3: field 'key': ...", index=3, field="key"),
        metaops.InvalidRequestError("operations: ...", section="operations", index=1, field="value"),
        metaops.InvalidValueError("value['a'] is a set, not a JSON value", "value['a']"),
        metaops.InvalidLimitError("limit must be a non-negative int of bytes, got -1"),
        metaops.InvalidArgumentError("attempts must be an int >= 1, got 0"),
        metaops.FlushInFlightError("a flush is out"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_pickle_and_show_their_public_home(error: metaops.MetaopsError) -> None:
    """Errors cross process boundaries intact and name themselves metaops.X in tracebacks."""
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
    assert type(error).__module__ == "metaops"
