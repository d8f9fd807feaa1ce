"""A throwaway PostgreSQL cluster for tests and benchmarks, and the pytest fixtures on it.

A pytest plugin (registered in ``tests/conftest.py``) with two fixtures:

* ``postgres_cluster`` (session): one cluster in a temporary directory, started on
  first use and removed, directory and all, when the session ends;
* ``postgres_url`` (per test): a ``postgresql://`` URL whose connections see a fresh,
  empty schema first on their ``search_path``, so every test starts from an empty
  database without paying ``CREATE DATABASE`` (about 250 ms here) per test.

:class:`PostgresCluster` works without pytest too (the benchmarks use it)::

    with PostgresCluster.start() as cluster:
        url = cluster.create_database("bench")

Why a harness of our own rather than pytest-postgresql: the tests run as root and
PostgreSQL refuses to run as root, so ``initdb`` and ``pg_ctl`` must run as the
``postgres`` user (``runuser``), with the data directory owned by it; and the
benchmarks and the multi-process suites need the same cluster outside pytest. Both
take about a hundred lines here.

Where PostgreSQL cannot start (no binaries, no ``postgres`` user, ``initdb`` failing)
a test using these fixtures is skipped, the reason printed by ``-ra``; with
``METAOPS_REQUIRE_POSTGRES=1`` in the environment (CI sets it) it fails instead.

The test cluster runs with ``fsync=off``: it is thrown away, and no test kills
PostgreSQL itself (the fault tests kill the service's workers; a killed client
process loses nothing a committed transaction wrote, fsync or not). Benchmarks start
it with ``durable=True``: PostgreSQL's defaults.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import pytest

__all__ = ["PostgresCluster", "PostgresUnavailableError", "find_binaries"]

REQUIRE_ENV = "METAOPS_REQUIRE_POSTGRES"
_SYSTEM_USER = "postgres"  # Debian's package creates it; PostgreSQL refuses to run as root
_START_ATTEMPTS = 3  # a free port found by binding can be taken before postgres binds it


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL cannot be started here; the message says why."""


def find_binaries(installed: Path = Path("/usr/lib/postgresql")) -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``pg_ctl`` on ``PATH`` first, else the newest ``/usr/lib/postgresql/*/bin``
    (Debian installs them there and puts only the client tools on ``PATH``).
    """
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versions = installed.glob("*/bin")
    candidates += sorted(versions, key=lambda p: _version_key(p.parent.name), reverse=True)
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    msg = "PostgreSQL not found: no pg_ctl on PATH nor under /usr/lib/postgresql/*/bin"
    raise PostgresUnavailableError(msg)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresCluster:
    """A running throwaway cluster: superuser ``postgres``, trust authentication, 127.0.0.1."""

    directory: Path
    port: int
    binaries: Path
    _as_user: list[str]
    _stopped: bool = field(default=False, init=False)

    @classmethod
    def start(cls, *, durable: bool = False, max_connections: int = 200) -> PostgresCluster:
        """initdb a new cluster in a temporary directory and start it.

        ``durable=False`` (tests) turns ``fsync`` off; ``True`` keeps PostgreSQL's
        defaults. Raises :class:`PostgresUnavailableError` with the reason (and the
        server log's tail) when it cannot.
        """
        binaries = find_binaries()
        as_user, owner = _unprivileged_user()
        directory = Path(tempfile.mkdtemp(prefix="metaops-pg-"))
        try:
            if owner is not None:
                os.chown(directory, *owner)
            data = str(directory / "data")
            # -N: no fsync of the new files; the cluster is thrown away.
            initdb = [str(binaries / "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "-N"]
            _run([*as_user, *initdb, "--no-instructions", "-E", "UTF8", "--locale", "C"])
            settings = [
                f"-k {directory}",
                "-c listen_addresses=127.0.0.1",
                f"-c max_connections={max_connections}",
            ]
            if not durable:
                settings += ["-c fsync=off", "-c full_page_writes=off"]
            for attempt in range(_START_ATTEMPTS):
                port = _free_port()
                options = " ".join([f"-p {port}", *settings])
                pg_ctl = [str(binaries / "pg_ctl"), "-D", data, "-l", str(directory / "server.log")]
                started = subprocess.run(
                    [*as_user, *pg_ctl, "-w", "-t", "60", "-s", "-o", options, "start"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if started.returncode == 0:
                    break
                if attempt == _START_ATTEMPTS - 1:
                    log = _tail(directory / "server.log")
                    msg = f"pg_ctl start failed ({started.returncode}): {started.stderr.strip()} {log}"
                    raise PostgresUnavailableError(msg)
        except BaseException:
            # A start that timed out may have left a server running in the directory.
            stop = [str(binaries / "pg_ctl"), "-D", str(directory / "data"), "-m", "immediate", "-s", "stop"]
            subprocess.run([*as_user, *stop], capture_output=True, check=False)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        cluster = cls(directory, port, binaries, as_user)
        atexit.register(cluster.stop)  # also when the session ends without running finalizers
        return cluster

    def url(self, database: str = "postgres", *, schema: str | None = None) -> str:
        """A connection URL; with ``schema``, its connections put it first on ``search_path``."""
        url = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        if schema is not None:
            url += "?options=" + quote(f"-c search_path={schema}", safe="")
        return url

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run ``sql`` in autocommit mode (``CREATE DATABASE`` cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as connection:
            connection.execute(sql.encode())

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        name = name or "db_" + secrets.token_hex(6)
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_schema(self, database: str = "postgres") -> str:
        """A new empty schema; returns a URL whose connections use it."""
        name = "test_" + secrets.token_hex(6)
        self.execute(f'CREATE SCHEMA "{name}"', database)
        return self.url(database, schema=name)

    def stop(self) -> None:
        """Stop the server at once and delete its directory; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        pg_ctl = [str(self.binaries / "pg_ctl"), "-D", str(self.directory / "data")]
        subprocess.run(
            [*self._as_user, *pg_ctl, "-m", "immediate", "-s", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _unprivileged_user() -> tuple[list[str], tuple[int, int] | None]:
    """The command prefix that runs PostgreSQL's programs, and the uid/gid to own its directory.

    Nothing and ``None`` unless we are root, which PostgreSQL refuses to run as.
    """
    if os.geteuid() != 0:
        return [], None
    runuser = shutil.which("runuser")
    if runuser is None:
        msg = "running as root, and runuser (to run PostgreSQL as another user) is missing"
        raise PostgresUnavailableError(msg)
    import pwd

    try:
        account = pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        msg = f"running as root, and there is no {_SYSTEM_USER!r} user to run PostgreSQL as"
        raise PostgresUnavailableError(msg) from None
    return [runuser, "-u", _SYSTEM_USER, "--"], (account.pw_uid, account.pw_gid)


def _run(command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        msg = f"{' '.join(command)}: {error}"
        raise PostgresUnavailableError(msg) from None
    if done.returncode != 0:
        msg = f"{' '.join(command)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-600:]}"
        raise PostgresUnavailableError(msg)


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return "log: " + log.read_text(errors="replace")[-600:].strip()
    return ""


def unavailable(reason: str) -> None:
    """Skip the test with ``reason``, or fail it when PostgreSQL is required here."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV}=1) but cannot start: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL cannot start: {reason}")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the session (skipped, with the reason, where it cannot start)."""
    try:
        cluster = PostgresCluster.start()
    except PostgresUnavailableError as error:
        unavailable(str(error))
        raise  # unreachable: unavailable() always raises
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A URL on a fresh empty schema of the session's cluster."""
    return postgres_cluster.create_schema()
