"""The service the client tests talk to: ``metaops serve``, over real HTTP on loopback.

:func:`threaded_service` serves it from a thread of the test process (quick to
start); :class:`Service` runs ``python -m metaops serve`` as a subprocess, which a
test can kill with SIGKILL and start again on the same database. Both give the
same access for checking what was stored, straight from the service (one request
each, through httpx: unlike the service suites' keep-alive ``Client``, safe to use
from the many threads of the delivery tests).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from metaops.client import RetryPolicy
from tests._serve import ROOT, ServeProcess
from tests._service_support import threaded_server

TOKEN = "client-test-token-5f1c"
FAST = RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05)
"""Retries that keep a test quick: three attempts, waits of at most 50 ms."""
_ids = itertools.count()


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


# Fixtures the client suites share (a module takes them by name: ``service = client_service.service``).


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedService]:
    """One service for the module, on SQLite (the client's logic does not depend on the storage)."""
    with threaded_service(f"sqlite:///{tmp_path_factory.mktemp('client') / 'runs.sqlite3'}") as running:
        yield running


def new_run_name() -> str:
    """A run id not used before in this test process."""
    return f"run_{next(_ids)}"


@pytest.fixture
def run_id(service: ThreadedService) -> str:
    """A fresh run on the module's service."""
    name = new_run_name()
    service.create_run(name)
    return name


class Service(_Access, ServeProcess):
    """The service in a subprocess (:class:`tests._serve.ServeProcess`), with this module's token."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url, token=TOKEN, env={"PYTHONPATH": str(ROOT)})
