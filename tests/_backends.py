"""The storage backends every storage, service and HTTP suite runs against.

``database_url`` is a fixture parametrized over :data:`BACKENDS`: each test gets the
URL of a fresh, empty database of that kind (``sqlite:///...`` in the test's
temporary directory; ``postgresql://...``, a fresh schema in a throwaway cluster).
A backend that cannot run here skips its tests with the reason printed, unless the
environment requires it (``METAOPS_REQUIRE_POSTGRES=1``).

To add a backend: add its name to :data:`BACKENDS` and a branch to :func:`fresh_database`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported by pytest as a plugin (tests/conftest.py), not here
    from tests._postgres import PostgresCluster

BACKENDS: tuple[str, ...] = ("sqlite", "postgresql")


def fresh_database(kind: str, directory: Path, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database of ``kind`` (removed with ``directory`` or the session)."""
    if kind == "sqlite":
        return f"sqlite:///{directory / 'runs.sqlite3'}"
    if kind == "postgresql":
        # A fresh schema in the session's throwaway cluster (tests/_postgres.py), which
        # skips, or fails under METAOPS_REQUIRE_POSTGRES=1, where it cannot start. The
        # cluster is session-scoped, so module-scoped fixtures may ask for it too.
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        return cluster.create_schema()
    msg = f"unknown storage backend {kind!r}"
    raise AssertionError(msg)
