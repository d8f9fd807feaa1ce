"""The service the client tests talk to: ``metaops serve``, over real HTTP on loopback.

:func:`threaded_service` serves it from a thread of the test process (quick to
start); :class:`Service` runs ``python -m metaops serve`` as a subprocess, which a
test can kill with SIGKILL and start again on the same database. Both give the
same access for checking what was stored, straight from the service.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests._service_support import threaded_server

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "client-test-token-5f1c"


def _command(database: str) -> list[str]:
    return [sys.executable, "-m", "metaops", "serve", "--database", database, "--port", "0", "--token", TOKEN]


class _Access:
    """Reading and preparing runs straight from the service (never through the client under test)."""

    url: str

    def _request(self, method: str, path: str, body: object = None) -> Any:
        response = httpx.request(
            method,
            self.url + path,
            content=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code in (200, 201), (method, path, response.status_code, response.text)
        return response.json()

    def create_run(self, run_id: str, **spec: Any) -> None:
        self._request("POST", "/admin/runs", {"id": run_id, **spec})

    def metadata(self, run_id: str) -> Any:
        """The run's stored metadata, read straight from the service."""
        return self._request("GET", f"/api/v1/runs/{run_id}/metadata")["metadata"]

    def settle(self) -> None:
        """Wait until the service has applied every queued parent/root operation."""
        assert self._request("POST", "/admin/flush", {"timeout": 30}) == {"pending": 0}


class ThreadedService(_Access):
    """The service on uvicorn in a thread of this process."""

    def __init__(self, url: str) -> None:
        self.url = url


@contextmanager
def threaded_service(database_url: str) -> Iterator[ThreadedService]:
    with threaded_server(database_url, TOKEN) as server:
        yield ThreadedService(server.url)


class Service(_Access):
    """The service in a subprocess; the URL is read from its first line on stdout."""

    def __init__(self, database: str) -> None:
        """``database``: a file path (SQLite) or a database URL."""
        self.database = database if "://" in database else f"sqlite:///{database}"
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self.start()

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            _command(self.database),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            # A file, not a pipe: a service that logs much must never block on a full pipe.
            stderr=self._log,
            text=True,
        )
        self.process = process
        lines: queue.Queue[str] = queue.Queue()
        stdout = process.stdout
        assert stdout is not None

        def read() -> None:
            lines.put(stdout.readline())
            stdout.read()  # keep draining, so that a full pipe never blocks the service

        threading.Thread(target=read, daemon=True).start()
        try:
            first = lines.get(timeout=30)
        except queue.Empty:
            self.stop()
            raise RuntimeError("the service did not start within 30 s") from None
        found = re.search(r"http://127\.0\.0\.1:\d+", first)
        if found is None:
            self.stop()
            raise RuntimeError(f"the service did not start: {first!r} {self.log()}")
        self.url = found.group(0)

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.url.split("://", 1)[1].rpartition(":")
        return host, int(port)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close_pipes()

    def stop(self) -> None:
        """SIGTERM, then wait; the end of this service (its log is gone too)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process is not None:
            self._close_pipes()
        self._log.close()

    def _close_pipes(self) -> None:
        assert self.process is not None
        if self.process.stdout is not None:
            self.process.stdout.close()

    def log(self) -> str:
        """What the service wrote to stderr, across its restarts."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")
