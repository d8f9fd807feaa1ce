"""Everything live the app mounts: Realtime, streams, public-token routes, and the hubs' lifetime.

:class:`Realtime` is built once per app (per process): it opens the stream store
beside the service's storage, and while the app runs, its two hubs listen to the
storage's change feed and the stream store's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import BaseRoute, Route

from metaops.service import _realtime
from metaops.service._auth import Authority, auth_routes
from metaops.service._realtime import RealtimeEndpoint, RunHub, build_reader
from metaops.service._service import MetadataService
from metaops.service._streams import StreamHub, StreamReader, write_stream_route
from metaops.service._streams_store import StreamStore, open_stream_store

__all__ = ["Realtime"]


class Realtime:
    """The live routes of one app, over ``service``; blocking work goes through ``run`` (worker threads).

    ``streams``: the stream store (default: the one beside the service's storage);
    ``hold``: seconds a live poll waits (default :data:`~metaops.service._realtime.HOLD`).
    """

    def __init__(
        self,
        service: MetadataService,
        authority: Authority,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        *,
        streams: StreamStore | None = None,
        hold: float | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self.service = service
        self.streams = open_stream_store(service.storage) if streams is None else streams
        hold = _realtime.HOLD if hold is None else hold
        self.runs = RunHub(build_reader(service, self.streams), run, hold=hold)
        self.stream_hub = StreamHub()
        self.routes: list[BaseRoute] = [
            Route("/realtime/v1/runs/{run_id}", RealtimeEndpoint(self.runs), methods=["GET"]),
            Route(
                "/realtime/v1/streams/{run_id}/{key}",
                StreamReader(service, self.streams, self.stream_hub, run).endpoint,
                methods=["GET"],
            ),
            Route(
                "/realtime/v1/streams/{run_id}/{key}",
                write_stream_route(self.streams, run, request_timeout=request_timeout),
                methods=["POST"],
            ),
            *auth_routes(authority, request_timeout=request_timeout),
        ]
        self._unsubscribe: list[Callable[[], None]] = []

    def start(self) -> None:
        """Start listening (call from the event loop, in the app's lifespan)."""
        self.runs.start()
        self.stream_hub.start()
        self._unsubscribe = [
            self.service.storage.subscribe(self.runs.heard),
            self.streams.subscribe(self._stream_changed),
        ]

    def _stream_changed(self, run_id: str, key: str, length: int) -> None:
        self.stream_hub.heard(run_id, key, length)
        self.runs.heard_stream(run_id, key)  # a new key changes the run's row (realtimeStreams)

    def stop(self) -> None:
        """Stop listening and close the stream store."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.streams.close()
