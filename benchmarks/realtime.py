"""Realtime figures of ``metaops serve``: fan-out, latency, memory per idle subscriber, slow consumers.

    python -m benchmarks.realtime                          # SQLite in a temp dir, 1,000 subscribers
    python -m benchmarks.realtime --subscribers 200 --updates 100
    python -m benchmarks.realtime --database postgresql://postgres@127.0.0.1:5432/bench --json out.json

Starts ``python -m metaops serve`` (one process; its RSS is read from ``/proc``) and
drives it from this process with a small asyncio HTTP/1.1 client, speaking the shape
protocol the official SDK's ``runs.subscribeToRun`` speaks (a snapshot, then
long-polls). Scenarios, one after the other, each on its own run:

* **latency, 1 subscriber**: the writer PUTs one increment every ``--gap`` seconds;
  for each, the time from the PUT's acknowledgement (its answer received) to the
  subscriber receiving the row of that version. Nearest-rank percentiles.
* **fan-out, N subscribers**: N subscribers poll one run while the writer PUTs
  ``--updates`` increments, then completes the run. Every subscriber must end on the
  completed row holding the final count (checked: a fast wrong server fails the
  run). Latency from acknowledgement to each reception, over every reception (a
  subscriber that falls behind gets the newest row, so it skips versions, never
  queues them). Before the writer starts, with the N subscribers all waiting in a
  long-poll, the server's RSS minus its RSS before they connected, divided by N:
  the memory per idle subscriber.
* **stalled consumers**: S subscribers each send one live poll on a run holding
  ``--metadata-kb`` of metadata and then never read their socket; the writer PUTs
  ``--updates`` increments. The growth of the server's RSS, beside its growth for
  the same updates to a run nobody watches (the control): a consumer that stops
  reading is owed at most one answer, whatever the number of updates.

Both processes share this machine's cores (say how many with the figures); the
client's own work is part of the measured latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests._serve import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "realtime-benchmark-token-0123456789abcdef"
_AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    msg = f"no VmRSS for process {pid}"
    raise RuntimeError(msg)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


class _Server(ServeProcess):
    def __init__(self, database: str, max_connections: int) -> None:
        super().__init__(database, "--max-connections", str(max_connections), token=TOKEN)

    def rss_kib(self) -> int:
        return _rss_kib(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Connection:
    """One keep-alive HTTP/1.1 connection; answers read whole (Content-Length)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * 1024 * 1024)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n".encode()
        if body:
            head += b"Content-Type: application/json\r\n"
        self.writer.write(head + _AUTH + b"\r\n" + body)
        return await self.response()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


@dataclass
class _Subscriber:
    received: dict[int, float] = field(default_factory=dict)  # version -> when its row arrived
    polls: int = 0
    waiting: bool = False
    final: dict[str, Any] | None = None


async def _subscribe(port: int, run_id: str, me: _Subscriber) -> None:
    connection = await _Connection.open(port)
    try:
        status, headers, body = await connection.request(
            "GET", f"/realtime/v1/runs/{run_id}?offset=-1&log=full"
        )
        assert status == 200, body
        handle, offset = headers["electric-handle"], headers["electric-offset"]
        while True:
            path = f"/realtime/v1/runs/{run_id}?cursor=&handle={handle}&live=true&log=full&offset={offset}"
            me.waiting = True
            status, headers, body = await connection.request("GET", path)
            me.waiting = False
            me.polls += 1
            now = time.perf_counter()
            assert status == 200, body
            if headers["electric-offset"] == offset:
                continue  # the hold ended with nothing new
            offset = headers["electric-offset"]
            me.received[int(offset.split("_")[0])] = now
            if b'"completedAt":null' not in body:  # parsed only at the end: the client's CPU is shared
                row = json.loads(body)[0]["value"]
                me.final = {"metadata": json.loads(row["metadata"]), "status": row["status"]}
                return
    finally:
        connection.close()


async def _write(port: int, run_id: str, updates: int, gap: float) -> dict[int, float]:
    """PUT ``updates`` increments, ``gap`` seconds apart; when each version was acknowledged."""
    connection = await _Connection.open(port)
    acknowledged: dict[int, float] = {}
    body = json.dumps({"operations": [{"type": "increment", "key": "n", "value": 1}]}).encode()
    try:
        for version in range(1, updates + 1):
            status, _, answer = await connection.request("PUT", f"/api/v1/runs/{run_id}/metadata", body)
            acknowledged[version] = time.perf_counter()
            assert status == 200, answer
            await asyncio.sleep(gap)
        status, _, answer = await connection.request("POST", f"/admin/runs/{run_id}/complete", b"{}")
        assert status == 200, answer
    finally:
        connection.close()
    return acknowledged


async def _create(port: int, run_id: str, metadata: dict[str, Any]) -> None:
    connection = await _Connection.open(port)
    try:
        status, _, body = await connection.request(
            "POST", "/admin/runs", json.dumps({"id": run_id, "metadata": metadata}).encode()
        )
        assert status == 201, body
    finally:
        connection.close()


def _latencies(subscribers: list[_Subscriber], acknowledged: dict[int, float]) -> list[float]:
    return [
        (when - acknowledged[version]) * 1000
        for me in subscribers
        for version, when in me.received.items()
        if version in acknowledged
    ]


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "receptions": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.5), 2),
        "p90_ms": round(_percentile(latencies, 0.9), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2) if latencies else float("nan"),
    }


async def _fan_out(server: _Server, run_id: str, count: int, updates: int, gap: float) -> dict[str, Any]:
    await _create(server.port, run_id, {"n": 0})
    await asyncio.sleep(0.5)
    before = server.rss_kib()
    subscribers = [_Subscriber() for _ in range(count)]
    tasks = []
    for me in subscribers:  # a few at a time: a burst of 1,000 connects overflows the listen backlog
        tasks.append(asyncio.ensure_future(_subscribe(server.port, run_id, me)))
        if len(tasks) % 50 == 0:
            await asyncio.sleep(0.05)
    while sum(me.waiting for me in subscribers) < count:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    idle = server.rss_kib()
    polls_before = sum(me.polls for me in subscribers)
    cpu_before = server.cpu_seconds()
    started = time.perf_counter()
    acknowledged = await _write(server.port, run_id, updates, gap)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    ended = time.perf_counter()
    cpu = server.cpu_seconds() - cpu_before
    answered = sum(me.polls for me in subscribers) - polls_before
    expected = {"metadata": {"n": updates}, "status": "COMPLETED_SUCCESSFULLY"}
    wrong = sum(me.final != expected for me in subscribers)
    if wrong:
        msg = f"{wrong} of {count} subscribers did not end on the final state"
        raise AssertionError(msg)
    return {
        "subscribers": count,
        "updates": updates,
        "ended_on_final_state": count - wrong,
        "seconds": round(ended - started, 2),
        "polls": sum(me.polls for me in subscribers),
        "server_cpu_us_per_answer": round(cpu / max(1, answered + updates) * 1e6),
        "rss_before_kib": before,
        "rss_idle_kib": idle,
        "kib_per_idle_subscriber": round((idle - before) / count, 1),
        **_summary(_latencies(subscribers, acknowledged)),
    }


async def _rss_growth(server: _Server, run_id: str, updates: int) -> int:
    """KiB the server's RSS grew by while ``updates`` increments were written to ``run_id``."""
    await asyncio.sleep(0.5)
    before = server.rss_kib()
    writer = await _Connection.open(server.port)
    body = json.dumps({"operations": [{"type": "increment", "key": "n", "value": 1}]}).encode()
    try:
        for _ in range(updates):
            status, _, _ = await writer.request("PUT", f"/api/v1/runs/{run_id}/metadata", body)
            assert status == 200
    finally:
        writer.close()
    await asyncio.sleep(1.0)
    return server.rss_kib() - before


async def _stalled(server: _Server, count: int, updates: int, kilobytes: int) -> dict[str, Any]:
    """The same updates to two runs of the same size: one nobody watches (the control), one with
    ``count`` consumers that sent a live poll and never read its answer."""
    metadata = {"n": 0, "pad": "x" * (kilobytes * 1024)}
    await _create(server.port, "run_control", metadata)
    control = await _rss_growth(server, "run_control", updates)
    await _create(server.port, "run_stalled", metadata)
    connections = []
    for _ in range(count):
        connection = await _Connection.open(server.port)
        status, headers, _ = await connection.request("GET", "/realtime/v1/runs/run_stalled?offset=-1")
        assert status == 200
        path = (
            f"/realtime/v1/runs/run_stalled?cursor=&handle={headers['electric-handle']}&live=true&offset=0_0"
        )
        connection.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n".encode() + _AUTH + b"\r\n")
        connections.append(connection)
    stalled = await _rss_growth(server, "run_stalled", updates)
    for connection in connections:
        connection.close()
    return {
        "stalled_subscribers": count,
        "metadata_kib": kilobytes,
        "updates": updates,
        "rss_growth_control_kib": control,
        "rss_growth_stalled_kib": stalled,
    }


async def _main(args: argparse.Namespace, database: str) -> dict[str, Any]:
    server = _Server(database, max_connections=args.subscribers + args.stalled + 100)
    try:
        single = await _fan_out(server, "run_latency", 1, args.updates, args.gap)
        fan_out = await _fan_out(server, "run_fan_out", args.subscribers, args.updates, args.gap)
        stalled = await _stalled(server, args.stalled, args.updates, args.metadata_kb)
    finally:
        server.stop()
    return {
        "cores": os.cpu_count(),
        "database": database.split(":")[0],
        "single": single,
        "fan_out": fan_out,
        "stalled": stalled,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.realtime", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between two PUTs (default 0.05)")
    parser.add_argument("--stalled", type=int, default=200)
    parser.add_argument("--metadata-kb", type=int, default=100)
    parser.add_argument("--database", default=None, help="default: SQLite in a temporary directory")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        database = args.database or f"sqlite:///{Path(scratch) / 'realtime.sqlite3'}"
        figures = asyncio.run(_main(args, database))
    single, fan_out, stalled = figures["single"], figures["fan_out"], figures["stalled"]
    print(f"cores: {figures['cores']}; database: {figures['database']}")
    print("| scenario | subscribers | receptions | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for name, result in (("latency", single), ("fan-out", fan_out)):
        print(
            f"| {name} | {result['subscribers']} | {result['receptions']} | {result['p50_ms']} | "
            f"{result['p90_ms']} | {result['p99_ms']} | {result['max_ms']} |"
        )
    ended = f"{fan_out['ended_on_final_state']}/{fan_out['subscribers']}"
    print(
        f"fan-out: {ended} subscribers ended on the final state; {fan_out['polls']} polls, "
        f"{fan_out['server_cpu_us_per_answer']} us of server CPU per answer; "
        f"{fan_out['kib_per_idle_subscriber']} KiB of server RSS per idle "
        f"subscriber ({fan_out['rss_before_kib']} -> {fan_out['rss_idle_kib']} KiB)"
    )
    print(
        f"stalled: {stalled['stalled_subscribers']} consumers that stopped reading, "
        f"{stalled['metadata_kib']} KiB of metadata, {stalled['updates']} updates: server RSS grew "
        f"{stalled['rss_growth_stalled_kib']} KiB, and {stalled['rss_growth_control_kib']} KiB for the "
        "same updates to a run nobody watches"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
