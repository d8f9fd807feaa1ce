"""Shared test configuration: hypothesis profiles, the conformance vectors, the storage backends."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests._backends import BACKENDS, fresh_database

# postgres_cluster and postgres_url: a throwaway PostgreSQL cluster, a fresh schema per test.
pytest_plugins = ("tests._postgres",)

# The vectors ship inside the package (``python -m metaops vectors DIR`` writes them out).
DATA = files("metaops") / "conformance"

# Hypothesis profiles, chosen by $HYPOTHESIS_PROFILE (or --hypothesis-profile=NAME):
# "default" keeps the plain `python -m pytest` within its budget (about 90 s on a 2-core
# machine, the whole suite); "ci", three times its examples, is what .ci/run runs the
# property suites with, as a step of its own. Both are derandomized: whether a run passes
# must not depend on the examples drawn. "thorough" explores, randomly and long.
settings.register_profile(
    "default", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "thorough", max_examples=5_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def read_vectors(name: str) -> Iterator[dict[str, Any]]:
    """The cases of one conformance file, one dict per line."""
    with (DATA / name).open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend (see ``tests/_backends.py``)."""
    return fresh_database(request.param, tmp_path, request)
