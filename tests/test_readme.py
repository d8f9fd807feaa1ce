"""The README's examples run: a newcomer copying them gets what the README says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_python_examples() -> None:
    """The tour is there to run (a README without examples would pass the next test vacuously)."""
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_python_example_runs_and_its_asserts_hold(block: str) -> None:
    """Each ```python block runs on its own; its asserts state the results the README promises."""
    exec(compile(block, str(README), "exec"), {})


def test_the_quickstarts_demo_ending_has_the_lines_the_demo_prints() -> None:
    """The Quickstart shows how the demo ends: its headline, and its table row by row, with
    the labels the demo prints (a newcomer found a row missing). The numbers depend on the
    number of rows and, for the parent's writes, on timing: only the labels are compared."""
    from tests.test_cli import run

    shown = re.search(r"the demo ends with what metaops saved[^`]*```\n(.*?)```", README.read_text(), re.S)
    assert shown is not None
    ran = run("demo", "--rows", "10")
    assert ran.code == 0, ran.err

    def labels(lines: list[str]) -> list[str]:
        return [re.split(r"\s*\d", line, maxsplit=1)[0].strip() for line in lines if line.strip()]

    printed = ran.out.splitlines()
    table = printed.index("What metaops saved           with metaops     one by one")
    headline = printed[printed.index("") + 1]
    readme = shown.group(1).splitlines()
    assert labels([readme[0]]) == labels([headline]) == [""]  # both start with the count of calls
    assert re.sub(r"[\d,]+", "N", readme[0]) == re.sub(r"[\d,]+", "N", headline)
    expected = labels(printed[table : table + len(readme) - 2])
    assert labels(readme[2:]) == expected
    assert printed[table + len(readme) - 2].lstrip().startswith("(")  # the table ends there
