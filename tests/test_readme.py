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
