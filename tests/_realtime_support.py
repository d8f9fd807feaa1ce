"""What the Realtime, streams and token suites share: a server with a long secret, HTTP clients,
and a driver for the official SDK's Realtime client under node."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from metaops.service import MetadataService, RunningServer, ServiceConfig, open_storage, running_server

from .node_reference import SCRIPTS, node_env

# 32 bytes or more: the HMAC key of public tokens (PyJWT warns below that).
SECRET = "realtime-test-secret-0123456789abcdef"


@contextmanager
def live_server(database_url: str, **config: Any) -> Iterator[RunningServer]:
    """``metaops serve``'s app on ``database_url``, in a thread, with :data:`SECRET` as its token."""
    service = MetadataService(open_storage(database_url), ServiceConfig(**config))
    with running_server(service, SECRET) as server:
        yield server


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
