"""A fault-injecting HTTP proxy: between a client and the service, it breaks what a network breaks.

Each request it reads is either forwarded untouched or meets one fault:

* ``drop``: the connection is closed before the request is forwarded (nothing applied);
* ``503`` / ``429``: answered by the proxy (``Retry-After: 0``), not forwarded;
* ``delay``: held ``delay`` seconds, then forwarded;
* ``lose``: forwarded, and the connection closed instead of the answer (applied, answer lost);
* ``502-after``: forwarded, and a 502 sent instead of the answer (applied; the client
  cannot tell it from a 502 that applied nothing);
* ``stall``: forwarded, and the answer held ``stall`` seconds before the connection is
  closed (applied; the client times out first);
* ``corrupt``: forwarded with its body replaced by one the service must refuse (400).

:meth:`FaultProxy.pause` stops listening and closes every connection (the client's
connections are refused: nothing can reach the service); :meth:`FaultProxy.resume`
listens on the same port again.

Faults are drawn at ``rate`` from ``weights`` with a seeded generator, or chosen by
``decide(exchange)``, which sees the request and returns a fault or ``None``.
Every exchange is recorded (method, path, ``Idempotency-Key``, body, fault, the
upstream's status and ``Idempotent-Replayed``), so tests can count what went where.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

__all__ = ["FAULTS", "Exchange", "FaultProxy", "fault_proxy"]

FAULTS = ("drop", "503", "429", "delay", "lose", "502-after", "stall")
CORRUPT_BODY = b'{"operations": "not a list"}'
# Fault kinds after which the service has (or may have) applied the request.
FORWARDED = frozenset({None, "delay", "lose", "502-after", "stall", "corrupt"})
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
)


@dataclass
class Exchange:
    """One request through the proxy, and what became of it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    fault: str | None = None
    status: int | None = None  # the upstream's answer, when forwarded and answered
    replayed: bool = False
    upstream_error: str | None = None

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class FaultProxy:
    """The proxy's state: where it forwards, how it decides, and what it saw."""

    upstream: tuple[str, int]
    rate: float = 0.0
    weights: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(FAULTS, 1.0))
    seed: int = 0
    decide: Callable[[Exchange], str | None] | None = None
    delay: float = 0.05
    stall: float = 1.0
    exchanges: list[Exchange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._port = self._listener.getsockname()[1]
        self._connections: set[socket.socket] = set()
        self._closing = False
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def faults(self) -> Counter[str]:
        """How many requests met each fault."""
        with self._lock:
            return Counter(exchange.fault for exchange in self.exchanges if exchange.fault is not None)

    def counts(self) -> dict[str, int]:
        """Requests seen, faults injected, and forwarded requests the service applied (a 2xx)."""
        with self._lock:
            exchanges = list(self.exchanges)
        return {
            "requests": len(exchanges),
            "faulted": sum(1 for e in exchanges if e.fault is not None),
            "forwarded": sum(1 for e in exchanges if e.fault in FORWARDED and e.upstream_error is None),
            "answered_2xx_lost": sum(
                1 for e in exchanges if e.fault in ("lose", "502-after", "stall") and e.status == 200
            ),
        }

    # ----------------------------------------------------------------- serving

    def start(self) -> None:
        thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        self._closing = True
        self._disconnect()
        for thread in self._threads:
            thread.join(timeout=5)

    def pause(self) -> None:
        """Refuse connections (nothing listens) and cut the open ones."""
        self._disconnect()

    def resume(self) -> None:
        """Listen again, on the same port."""
        self._listener = socket.create_server(("127.0.0.1", self._port))
        self.start()

    def _disconnect(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone does not on Linux.
        _close(self._listener)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _close(connection)

    def _accept(self) -> None:
        listener = self._listener
        while not self._closing:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.add(connection)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _choose(self, exchange: Exchange) -> str | None:
        if self.decide is not None:
            return self.decide(exchange)
        with self._lock:
            if self._random.random() >= self.rate:
                return None
            kinds = list(self.weights)
            return self._random.choices(kinds, [self.weights[k] for k in kinds])[0]

    def _serve(self, connection: socket.socket) -> None:
        upstream: http.client.HTTPConnection | None = None
        reader = connection.makefile("rb")
        try:
            while True:
                exchange = _read_request(reader)
                if exchange is None:
                    return
                exchange.fault = self._choose(exchange)
                with self._lock:
                    self.exchanges.append(exchange)
                fault = exchange.fault
                if fault == "drop":
                    return
                if fault in ("503", "429"):
                    _answer(connection, int(fault), {"retry-after": "0"}, b'{"error":"injected"}')
                    continue
                if fault == "delay":
                    time.sleep(self.delay)
                if upstream is None:
                    upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
                try:
                    sent = CORRUPT_BODY if fault == "corrupt" else exchange.body
                    status, headers, body = _forward(upstream, exchange, sent)
                except (OSError, http.client.HTTPException) as error:
                    # The service is down (killed, restarting): a gateway says so.
                    upstream.close()
                    upstream = None
                    exchange.upstream_error = repr(error)
                    _answer(connection, 502, {}, b'{"error":"upstream unavailable"}')
                    continue
                exchange.status = status
                exchange.replayed = headers.get("idempotent-replayed", "").lower() == "true"
                if fault == "lose":
                    return
                if fault == "stall":
                    time.sleep(self.stall)
                    return
                if fault == "502-after":
                    _answer(connection, 502, {}, b'{"error":"injected after forwarding"}')
                    continue
                _answer(connection, status, headers, body)
        except OSError:
            return
        finally:
            if upstream is not None:
                upstream.close()
            reader.close()
            _close(connection)
            with self._lock:
                self._connections.discard(connection)


def _read_request(reader: object) -> Exchange | None:
    readline = reader.readline  # type: ignore[attr-defined]
    line = readline(65537)
    if not line or not line.strip():
        return None
    method, target, _version = line.decode("latin-1").split()
    headers: dict[str, str] = {}
    while True:
        header = readline(65537)
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = reader.read(length) if length else b""  # type: ignore[attr-defined]
    return Exchange(method, target, headers, body)


def _forward(
    upstream: http.client.HTTPConnection, exchange: Exchange, body: bytes
) -> tuple[int, dict[str, str], bytes]:
    headers = {name: value for name, value in exchange.headers.items() if name not in _HOP_BY_HOP}
    upstream.request(exchange.method, exchange.path, body=body or None, headers=headers)
    response = upstream.getresponse()
    answer = response.read()
    return response.status, {name.lower(): value for name, value in response.getheaders()}, answer


def _answer(connection: socket.socket, status: int, headers: Mapping[str, str], body: bytes) -> None:
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name not in _HOP_BY_HOP]
    lines += [f"content-length: {len(body)}", "", ""]
    connection.sendall("\r\n".join(lines).encode("latin-1") + body)


def _close(connection: socket.socket) -> None:
    with suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()


@contextmanager
def fault_proxy(upstream_url: str, **options: object) -> Iterator[FaultProxy]:
    """A started :class:`FaultProxy` in front of ``upstream_url`` for the ``with`` block."""
    hostport = upstream_url.split("://", 1)[1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    proxy = FaultProxy((host, int(port)), **options)  # type: ignore[arg-type]
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
