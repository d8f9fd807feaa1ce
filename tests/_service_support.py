"""What the service's test suites share: a server in a thread or a subprocess, and a plain HTTP client.

The HTTP tests talk to the service over real HTTP on loopback (port 0). Most run it
in a thread of the test process (:func:`threaded_server`: quick to start); the
command-line, kill and multi-process tests run ``python -m metaops serve`` as a
subprocess (:class:`ServeProcess`, from ``tests/_serve.py``), which can be killed
with SIGKILL and restarted on the same database.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from metaops.service import MetadataService, RunningServer, ServiceConfig, open_storage, running_server
from tests import _serve
from tests._backends import BACKENDS, fresh_database

TOKEN = "test-token-d41d8cd9"
OPS_INCREMENT = [{"type": "increment", "key": "n", "value": 1}]
IDLE_SECONDS = 3.0
_T = TypeVar("_T")


@contextmanager
def threaded_server(database_url: str, token: str = TOKEN, **config: Any) -> Iterator[RunningServer]:
    """The service on ``database_url`` with ``token`` as its secret, served by uvicorn in a thread on
    a free loopback port. ``request_timeout`` is the server's; the rest goes to :class:`ServiceConfig`.

    Every suite that serves in a thread starts its server here (the client's, Realtime's, the
    service's own), each with its own token.
    """
    serving = {"request_timeout": config.pop("request_timeout")} if "request_timeout" in config else {}
    service = MetadataService(open_storage(database_url), ServiceConfig(**config))
    with running_server(service, token, **serving) as server:
        yield server


def per_backend_server(token: str = TOKEN, **config: Any) -> Any:
    """A module-scoped fixture: :func:`threaded_server` on a fresh database of each backend in turn.

    One server per backend serves the whole module (starting one costs more than most
    tests); a module takes it by name: ``server = per_backend_server(limit=LIMIT)``.
    """

    @pytest.fixture(scope="module", params=BACKENDS)
    def server(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[RunningServer]:
        url = fresh_database(request.param, tmp_path_factory.mktemp("server"), request)
        with threaded_server(url, token, **config) as running:
            yield running

    return server


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    """A keep-alive connection to the module's ``server``, with :data:`TOKEN`."""
    connection = Client(server.port)
    yield connection
    connection.close()


class ServeProcess(_serve.ServeProcess):
    """:class:`tests._serve.ServeProcess` with this module's :data:`TOKEN`; :meth:`client` connects."""

    def __init__(self, database_url: str, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(database_url, *args, token=TOKEN, env=env)

    def client(self, token: str | None = TOKEN) -> Client:
        """A keep-alive connection to this server."""
        return Client(self.port, token)


class Client:
    """JSON over one HTTP/1.1 connection, with the bearer token unless told otherwise."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.last_headers: dict[str, str] = {}
        self.last_used = time.monotonic()

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        raw: bytes | None = None,
        auth: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if auth is not None:
            sent["Authorization"] = auth
        elif self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if time.monotonic() - self.last_used > IDLE_SECONDS:
            # The server closes connections idle for 5 s; one about to be closed is not reused.
            self.connection.close()
        self.connection.request(method, path, body=data, headers=sent)
        response = self.connection.getresponse()
        payload = response.read()
        self.last_headers = {name.lower(): value for name, value in response.getheaders()}
        if response.will_close:
            self.connection.close()
        self.last_used = time.monotonic()
        return response.status, json.loads(payload)

    def put_metadata(self, run_id: str, body: object, *, key: str | None = None) -> tuple[int, Any]:
        headers = {"Idempotency-Key": key} if key is not None else None
        return self.request("PUT", f"/api/v1/runs/{run_id}/metadata", body, headers=headers)

    def get_metadata(self, run_id: str) -> Any:
        status, payload = self.request("GET", f"/api/v1/runs/{run_id}/metadata")
        assert status == 200, payload
        return payload["metadata"]

    def create_run(self, run_id: str, **spec: Any) -> Any:
        status, payload = self.request("POST", "/admin/runs", {"id": run_id, **spec})
        assert status == 201, payload
        return payload

    def run(self, run_id: str) -> Any:
        status, payload = self.request("GET", f"/admin/runs/{run_id}")
        assert status == 200, payload
        return payload

    def flush(self) -> None:
        status, payload = self.request("POST", "/admin/flush", {"timeout": 30})
        assert (status, payload) == (200, {"pending": 0})

    def close(self) -> None:
        self.connection.close()


def in_threads(count: int, work: Callable[[int], _T]) -> list[_T]:
    """``work(0)`` … ``work(count - 1)`` in threads at once; their results; the first error re-raised."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as error:  # reported below; a thread cannot fail the test itself
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]
    return results
