"""What the Realtime, streams and token suites share: a server with a long secret, HTTP clients,
and a driver for the official SDK's Realtime client under node."""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from metaops.service import RunningServer

from ._service_support import per_backend_server, threaded_server
from .node_reference import SCRIPTS, node_env

# 32 bytes or more: the HMAC key of public tokens (PyJWT warns below that).
SECRET = "realtime-test-secret-0123456789abcdef"


def live_server(
    database_url: str, secret: str = SECRET, **config: Any
) -> AbstractContextManager[RunningServer]:
    """:func:`~tests._service_support.threaded_server` with ``secret`` (long enough to sign public
    tokens) as its token."""
    return threaded_server(database_url, secret, **config)


# Fixtures the Realtime, streams, token and dashboard suites share: a module takes the ones it
# needs by name (``server = support.backend_server``, ``client = support.client``, ...).


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module, on SQLite (for what does not depend on the storage)."""
    with live_server(f"sqlite:///{tmp_path_factory.mktemp('server') / 'runs.sqlite3'}") as running:
        yield running


backend_server = per_backend_server(SECRET)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    """A plain HTTP client of the module's ``server``, with the secret."""
    with http(server) as opened:
        yield opened


@pytest.fixture
def run_id(client: httpx.Client) -> str:
    """A new run without metadata on the module's server."""
    run = "run_" + secrets.token_hex(4)
    assert client.post("/admin/runs", json={"id": run}).status_code == 201
    return run


def http(server: RunningServer, token: str | None = SECRET, timeout: float = 60.0) -> httpx.Client:
    """A plain HTTP client of ``server`` sending ``token`` (none: no Authorization header)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=timeout)


def shape_url(run_id: str) -> str:
    return f"/realtime/v1/runs/{run_id}"


class SDKDriver:
    """``tests/node/realtime_sdk.cjs`` in a subprocess; its JSON lines come through :meth:`next`."""

    def __init__(self, reference: Path, config: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            ["node", str(SCRIPTS / "realtime_sdk.cjs"), json.dumps(config)],
            env=node_env(reference),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def next(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next event the script printed; AssertionError if none came in ``timeout`` seconds."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"the SDK printed nothing for {timeout} s; events so far: {self.events}"
            ) from None
        if line is None:
            raise AssertionError(f"the SDK script exited early; stderr: {''.join(self._stderr)[-2000:]}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    def rest(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Every event up to and including the end marker."""
        events = []
        while True:
            event = self.next(timeout)
            events.append(event)
            if event["type"] == "end":
                return events

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> SDKDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def realtime_of(server: RunningServer) -> Any:
    """The app's :class:`~metaops.service._realtime.RunHub` (found through its route)."""
    from starlette.applications import Starlette

    from metaops.service._realtime import RealtimeEndpoint

    starlette = server.app._app
    assert isinstance(starlette, Starlette)
    for route in starlette.routes:
        endpoint = getattr(route, "endpoint", None)
        if isinstance(endpoint, RealtimeEndpoint):
            return endpoint.hub
    raise AssertionError("no Realtime route")


def stream_hub_of(server: RunningServer) -> Any:
    """The app's :class:`~metaops.service._streams.StreamHub` (found through its route)."""
    from starlette.applications import Starlette

    from metaops.service._streams import StreamReader

    starlette = server.app._app
    assert isinstance(starlette, Starlette)
    for route in starlette.routes:
        owner = getattr(getattr(route, "endpoint", None), "__self__", None)
        if isinstance(owner, StreamReader):
            return owner.hub
    raise AssertionError("no stream route")


class CuttingProxy:
    """A TCP proxy that streams bytes both ways and can cut connections, as a network does.

    ``cut_after[i]`` (when given) closes the ``i``-th connection once that many bytes of
    answer went through; :meth:`cut` closes every open connection now. ``requests``
    records the head of every request (its first line and headers).
    """

    def __init__(self, upstream_port: int, cut_after: list[int | None] | None = None) -> None:
        import socket

        self.upstream_port = upstream_port
        self.cut_after = list(cut_after or [])
        self.requests: list[str] = []
        self.connections = 0
        self._open: list[Any] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                index = self.connections
                self.connections += 1
                limit = self.cut_after[index] if index < len(self.cut_after) else None
                self._open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, None, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit, False), daemon=True).start()

    def _pipe(self, source: Any, target: Any, limit: int | None, requests: bool) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if requests and data[:4] in (b"GET ", b"POST", b"PUT "):
                    with self._lock:
                        self.requests.append(data.split(b"\r\n\r\n")[0].decode("latin-1"))
                if limit is not None and sent + len(data) >= limit:
                    target.sendall(data[: max(0, limit - sent)])
                    break
                target.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, target):
            self._close(sock)

    @staticmethod
    def _close(sock: Any) -> None:
        import socket

        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> None:
        """Close every connection open now (the client sees them drop)."""
        with self._lock:
            opened, self._open = self._open, []
        for sock in opened:
            self._close(sock)

    def close(self) -> None:
        self._listener.close()
        self.cut()
