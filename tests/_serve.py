"""``metaops serve`` as a subprocess, and writers that count what it acknowledged.

For every suite and benchmark that runs the server as a process of its own:

* :class:`ServeProcess` starts ``python -m metaops serve --port 0 ...``, reads the port
  from its first line, can be killed with SIGKILL and started again on the same
  database, finds its worker processes (children of the server process, from
  ``/proc``), and stops. The service suites, the client's kill tests and the
  benchmarks start their servers with it.
* :class:`Served` is one in its own process group with ``--workers N``, for the
  multi-process suites: it kills a worker, and stops the lot.
* :class:`Writer` sends ``PUT`` requests the way the client library does: each with
  an ``Idempotency-Key``, retried with the same body and key after any failure whose
  outcome is unknown (connection errors, 5xx), until it is answered 200. It counts
  how many it saw acknowledged and how many answers were replays.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "multi-process-test-token"
START_TIMEOUT = 60.0

__all__ = ["ROOT", "TOKEN", "ServeProcess", "Served", "Writer", "WriterCounts"]


class ServeProcess:
    """``python -m metaops serve --database DATABASE --port 0 ARGS...`` in a subprocess, with ``token``.

    The port is read from its first line. What it writes after that (stdout, and stderr,
    which goes to a file: a pipe nobody reads would block a server that logs much) is
    kept across restarts (:meth:`log`). :meth:`kill` then :meth:`start` restarts it on
    the same database, on a new port. With ``group=True`` it runs in a process group of
    its own, and :meth:`stop` ends the whole group (the workers of ``--workers N`` too).
    """

    def __init__(
        self,
        database: str,
        *args: str,
        token: str,
        env: Mapping[str, str] | None = None,
        group: bool = False,
    ) -> None:
        self.database = database
        self._command = [
            sys.executable,
            "-m",
            "metaops",
            "serve",
            "--database",
            database,
            "--port",
            "0",
            *args,
        ]
        self._environment = {**os.environ, "METAOPS_SERVER_TOKEN": token, **(env or {})}
        self._group = group
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._output: list[str] = []
        self.start()

    def start(self) -> None:
        """Start the server, and return once it listens (:class:`RuntimeError` if it does not)."""
        self.process = subprocess.Popen(
            self._command,
            cwd=ROOT,
            env=self._environment,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=self._group,
        )
        stdout = self.process.stdout
        assert stdout is not None
        first: queue.Queue[str] = queue.Queue()

        def read() -> None:
            first.put(stdout.readline())
            with contextlib.suppress(ValueError, OSError):  # the pipe closed by kill() or stop()
                for line in stdout:  # drained, so that a full pipe never blocks the server
                    self._output.append(line)

        threading.Thread(target=read, daemon=True).start()
        try:
            line = first.get(timeout=START_TIMEOUT)
        except queue.Empty:
            line = ""
        found = re.fullmatch(r"listening on http://(127\.0\.0\.1):(\d+)\n", line)
        if found is None:
            self._end()
            msg = f"metaops serve did not start: first line {line!r}; then: {self.log()[-2000:]}"
            self._stderr.close()
            raise RuntimeError(msg)
        self.host, self.port = found.group(1), int(found.group(2))
        self.url = f"http://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return self.host, self.port

    def log(self) -> str:
        """What the server wrote after its first line, across its restarts: stdout, then stderr."""
        if self._stderr.closed:
            return "".join(self._output)
        self._stderr.seek(0)
        return "".join(self._output) + self._stderr.read().decode("utf-8", "replace")

    def worker_pids(self) -> list[int]:
        """The server's worker processes: its live children, but multiprocessing's resource tracker."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            state = stat.rpartition(")")[2].split()[0]
            if parent == self.process.pid and state != "Z" and b"resource_tracker" not in cmdline:
                pids.append(int(entry.name))
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL to the server process: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._close_stdout()

    def stop(self) -> int:
        """SIGTERM (a graceful stop), then SIGKILL if it lingers (with ``group=True``, to the whole
        group: workers left behind too); the server's exit status. Its log is gone after this."""
        status = self._end()
        self._stderr.close()
        return status

    def _end(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        if self._group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        elif self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._close_stdout()
        return self.process.returncode

    def _close_stdout(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()


class Served(ServeProcess):
    """A running ``metaops serve --workers N`` in its own process group, with this module's
    :data:`TOKEN` (stopped with :meth:`stop`, or on leaving a ``with``)."""

    def __init__(self, database: str, *, workers: int = 1, extra: tuple[str, ...] = ()) -> None:
        super().__init__(
            database,
            "--workers",
            str(workers),
            *extra,
            token=TOKEN,
            env={"PYTHONPATH": str(ROOT)},
            group=True,
        )
        self.workers = workers

    def stderr(self) -> str:
        """What the server printed after its first line (both streams)."""
        return self.log()

    def wait_for_workers(
        self, count: int, *, exclude: frozenset[int] = frozenset(), timeout: float = 60
    ) -> list[int]:
        """Wait until ``count`` workers run (none of them in ``exclude``); return their pids."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [pid for pid in self.worker_pids() if pid not in exclude]
            if len(pids) >= count or time.monotonic() > deadline:
                return pids
            time.sleep(0.05)

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker: no cleanup, no goodbye; its requests in flight die with it."""
        os.kill(pid, signal.SIGKILL)

    def client(self) -> Client:
        """A new keep-alive connection to the server."""
        return Client(self.host, self.port)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Client:
    """One HTTP/1.1 connection with the bearer token; reconnects after a failure."""

    def __init__(self, host: str, port: int, timeout: float = 60) -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def call(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """One request: ``(status, decoded JSON body, headers)``; connection errors propagate."""
        if self._connection is None:
            self._connection = http.client.HTTPConnection(*self._address, timeout=self._timeout)
        data = None if body is None else json.dumps(body).encode()
        sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **(headers or {})}
        try:
            self._connection.request(method, path, body=data, headers=sent)
            response = self._connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        answer = json.loads(raw) if raw else None
        return response.status, answer, {k.lower(): v for k, v in response.getheaders()}

    def abandon(self, method: str, path: str, body: object, headers: dict[str, str]) -> None:
        """Send a request whole, then close the connection without reading the answer."""
        self.close()
        connection = http.client.HTTPConnection(*self._address, timeout=self._timeout)
        sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **headers}
        try:
            connection.request(method, path, body=json.dumps(body).encode(), headers=sent)
        finally:
            connection.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass
class WriterCounts:
    """What one writer saw: requests acknowledged (200), of which replays; attempts that failed."""

    acknowledged: int = 0
    replayed: int = 0
    failed_attempts: int = 0
    errors: list[str] = field(default_factory=list)


class Writer:
    """Sends bodies to one run, each retried with its key until acknowledged."""

    def __init__(self, served: Served, run_id: str, *, retry_for: float = 120.0) -> None:
        self._client = served.client()
        self._path = f"/api/v1/runs/{run_id}/metadata"
        self._retry_for = retry_for
        self.counts = WriterCounts()

    def put(
        self, body: dict[str, Any], *, key: str | None = None, abandon_first: bool = False
    ) -> dict[str, Any]:
        """PUT ``body`` until it is answered 200 (same key on every attempt); return the answer.

        ``abandon_first`` sends the first attempt and hangs up without reading the
        answer: a lost response, whose outcome the writer cannot know.
        """
        key = key or secrets.token_hex(12)
        if abandon_first:
            self._client.abandon("PUT", self._path, body, {"Idempotency-Key": key})
            self.counts.failed_attempts += 1
        deadline = time.monotonic() + self._retry_for
        delay = 0.01
        while True:
            try:
                status, answer, headers = self._client.call("PUT", self._path, body, {"Idempotency-Key": key})
            except (OSError, http.client.HTTPException) as error:
                status, answer, headers = 0, {"error": repr(error)}, {}
            if status == 200:
                self.counts.acknowledged += 1
                if headers.get("idempotent-replayed") == "true":
                    self.counts.replayed += 1
                result: dict[str, Any] = answer
                return result
            if status not in (0, 408, 429) and status < 500:
                msg = f"PUT {self._path} refused: {status} {answer}"
                raise AssertionError(msg)
            self.counts.failed_attempts += 1
            if time.monotonic() > deadline:
                msg = f"PUT {self._path}: no answer for {self._retry_for:.0f} s (last: {status} {answer})"
                raise AssertionError(msg)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def close(self) -> None:
        self._client.close()
