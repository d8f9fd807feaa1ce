"""The throwaway PostgreSQL harness (tests/_postgres.py): isolation, ownership, skip or fail."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
import pytest

from tests import _postgres
from tests._postgres import PostgresCluster, PostgresUnavailableError


def test_each_test_gets_its_own_empty_schema(postgres_cluster: PostgresCluster, postgres_url: str) -> None:
    other = postgres_cluster.create_schema()
    assert other != postgres_url
    with psycopg.connect(postgres_url, autocommit=True) as first:
        first.execute("CREATE TABLE runs (id text)")
        first.execute("INSERT INTO runs VALUES ('a')")
        (schema,) = first.execute("SELECT current_schema()").fetchone() or (None,)
        assert first.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    with psycopg.connect(other, autocommit=True) as second:
        (other_schema,) = second.execute("SELECT current_schema()").fetchone() or (None,)
        assert other_schema != schema
        tables = second.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()
        assert tables == (0,)


def test_the_server_runs_as_an_unprivileged_user(postgres_cluster: PostgresCluster) -> None:
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as db:
        row = db.execute("SELECT current_setting('data_directory'), pg_backend_pid()").fetchone()
        assert row is not None
        data_directory, backend_pid = row
        # Read while connected: the backend process exits when the connection closes.
        owner = os.stat(f"/proc/{backend_pid}").st_uid
    assert Path(data_directory).is_relative_to(postgres_cluster.directory)
    assert owner != 0


def test_a_cluster_stops_and_leaves_nothing_behind(postgres_cluster: PostgresCluster) -> None:
    # A second cluster, beside the session's: its own port and directory, gone after stop().
    with PostgresCluster.start() as cluster:
        assert cluster.port != postgres_cluster.port
        url = cluster.create_database("scratch")
        with psycopg.connect(url, autocommit=True) as db:
            assert db.execute("SELECT current_database()").fetchone() == ("scratch",)
    assert not cluster.directory.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.url(), connect_timeout=5)


def test_binaries_come_from_path_else_the_newest_installed_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(PostgresUnavailableError, match="no pg_ctl on PATH"):
        _postgres.find_binaries(tmp_path)
    for version in ("9.6", "15", "13"):
        (tmp_path / version / "bin").mkdir(parents=True)
        for name in ("initdb", "pg_ctl", "postgres"):
            (tmp_path / version / "bin" / name).touch()
    assert _postgres.find_binaries(tmp_path) == tmp_path / "15" / "bin"
    on_path = tmp_path / "9.6" / "bin" / "pg_ctl"
    monkeypatch.setattr(shutil, "which", lambda name: str(on_path))
    assert _postgres.find_binaries(tmp_path) == tmp_path / "9.6" / "bin"


def test_unavailable_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_postgres.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="cannot start: no binaries"):
        _postgres.unavailable("no binaries")
    monkeypatch.setenv(_postgres.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"required .* no binaries"):
        _postgres.unavailable("no binaries")
