"""The service in process, on every backend: the cache of hot runs, the log and its snapshots, the outbox.

Two services on one database stand for two processes: each keeps its own cache,
which must never answer from a stale version.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

import metaops.service._service as service_module
from metaops import MetadataTooLargeError, json_size, json_text
from metaops.service import (
    MetadataService,
    RunTransaction,
    ServiceConfig,
    SQLiteStorage,
    Storage,
    StorageError,
    open_storage,
    running_server,
)
from tests._service_support import OPS_INCREMENT, TOKEN, Client

INCREMENT = {"operations": OPS_INCREMENT}
QUIET: dict[str, Any] = {"flush_interval": 0.0}


@pytest.fixture
def service(database_url: str) -> Iterator[MetadataService]:
    opened = MetadataService(open_storage(database_url), ServiceConfig(**QUIET))
    yield opened
    opened.close()


def _other(database_url: str, **config: Any) -> MetadataService:
    return MetadataService(open_storage(database_url), ServiceConfig(**{**QUIET, **config}))


def _text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def test_another_process_sees_every_write_and_catches_up_from_the_log(
    service: MetadataService, database_url: str
) -> None:
    """A service holding a run at an old version answers (and writes) from the stored version,
    replaying only the entries written since."""
    other = _other(database_url)
    service.create_run("r", metadata={"log": []})
    assert other.get("r").metadata == {"log": []}
    for step in range(5):
        service.update("r", {"operations": [{"type": "append", "key": "log", "value": step}]})
    state = other.get("r")
    assert (state.version, state.metadata) == (5, {"log": [0, 1, 2, 3, 4]})
    assert state.text == json_text(state.metadata).encode()
    other.update("r", {"operations": [{"type": "append", "key": "log", "value": "other"}]})
    assert service.get("r").metadata == {"log": [0, 1, 2, 3, 4, "other"]}
    outcome = service.update("r", {"operations": [{"type": "append", "key": "log", "value": "again"}]})
    log: Any = outcome.state.metadata["log"]
    assert (outcome.state.version, log[-2:]) == (7, ["other", "again"])
    other.close()


def test_snapshots_fold_the_log_and_a_process_behind_them_reloads(database_url: str) -> None:
    """Every ``snapshot_every`` versions the metadata is written whole and the log before it goes;
    a process whose cache is older than the snapshot rebuilds from it."""
    writer = _other(database_url, snapshot_every=3)
    reader = _other(database_url, snapshot_every=3)
    writer.create_run("r")
    assert reader.get("r").version == 0
    for _ in range(7):
        writer.update("r", INCREMENT)
    record = writer.storage.get_run("r")
    assert record is not None
    assert (record.version, record.snapshot_version) == (7, 6)
    history = writer.storage.history("r", None)
    assert history is not None
    assert (history.snapshot, [e.version for e in history.entries]) == ('{"n":6}', [7])
    state = reader.get("r")
    assert (state.version, state.metadata) == (7, {"n": 7})
    fresh = _other(database_url)
    assert fresh.get("r").metadata == {"n": 7}
    for opened in (writer, reader, fresh):
        opened.close()


def test_a_warm_update_never_measures_parses_or_encodes_the_whole_metadata(
    service: MetadataService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-update cost follows what changed: on a cached run, an increment neither measures the
    metadata (json_size), nor parses stored text, nor writes the whole metadata's JSON; the answer
    is still exactly json_text of the result."""
    rows = [{"id": f"row_{i}", "ok": i % 2 == 0, "labels": ["a", "b"]} for i in range(2000)]
    service.create_run("big", metadata={"rows": rows, "counters": {"c": 0}})
    service.update("big", {"operations": [{"type": "increment", "key": "$.counters.c", "value": 1}]})
    calls: list[str] = []

    def forbidden(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} on the hot path")

        return call

    import metaops.service._codec as codec

    small_texts = json_text

    def json_text_of_small_values(value: object, **kwargs: Any) -> str:
        # Leaves that changed (a dict of counters, a row) are written whole; nothing bigger.
        if isinstance(value, (dict, list)) and len(value) > 10:
            calls.append(f"json_text of {len(value)} items")
        return small_texts(value, **kwargs)

    monkeypatch.setattr(service_module, "json_size", forbidden("json_size"))
    monkeypatch.setattr(service_module, "_loaded", forbidden("_loaded"))
    monkeypatch.setattr("metaops.server._measure", forbidden("_measure"), raising=False)
    monkeypatch.setattr("metaops.server.json_size", forbidden("json_size"), raising=False)
    monkeypatch.setattr(codec, "json_text", json_text_of_small_values)
    for _ in range(3):
        outcome = service.update(
            "big",
            {
                "operations": [
                    {"type": "increment", "key": "$.counters.c", "value": 1},
                    {"type": "set", "key": "$.rows.7.ok", "value": "changed"},
                ]
            },
        )
    monkeypatch.undo()
    assert calls == []
    assert outcome.state.metadata["counters"] == {"c": 4}
    assert outcome.state.text == json_text(outcome.state.metadata).encode()
    assert outcome.state.size == json_size(outcome.state.metadata)


def test_an_update_over_the_limit_writes_nothing(database_url: str) -> None:
    service = _other(database_url, limit=200)
    service.create_run("r", metadata={"a": "x" * 100})
    with pytest.raises(MetadataTooLargeError):
        service.update("r", {"operations": [{"type": "set", "key": "b", "value": "y" * 100}]})
    record = service.storage.get_run("r")
    assert record is not None
    assert record.version == 0
    assert service.get("r").metadata == {"a": "x" * 100}
    with pytest.raises(MetadataTooLargeError):
        service.create_run("too-big", metadata={"a": "x" * 300})
    assert service.storage.get_run("too-big") is None
    service.close()


def test_queued_operations_survive_a_restart_and_keep_their_order(database_url: str) -> None:
    """Without draining, parent operations wait in the outbox; a new service on the same database
    writes them all, in the order they arrived."""
    first = _other(database_url, inline_flush=False)
    first.create_run("parent")
    first.create_run("child", parent_id="parent")
    for step in range(4):
        first.update("child", {"parentOperations": [{"type": "append", "key": "log", "value": step}]})
    assert first.get("parent").metadata == {}
    first.close()
    second = _other(database_url)
    assert second.storage.outbox_size() == 4
    assert second.flush_all() == 0
    assert second.get("parent").metadata == {"log": [0, 1, 2, 3]}
    assert second.storage.get_run("parent").version == 1  # type: ignore[union-attr]
    second.close()


class _Broken:
    """A storage whose writes to one run fail while ``broken`` is set (a full disk, say)."""

    def __init__(self, inner: Storage, run_id: str) -> None:
        self._inner = inner
        self._run_id = run_id
        self.broken = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def write(self, run_id: str, *, wait: bool = True) -> AbstractContextManager[RunTransaction | None]:
        if self.broken and run_id == self._run_id:
            raise StorageError("disk I/O error (injected)")
        return self._inner.write(run_id, wait=wait)


FAMILY_UPDATE = {**INCREMENT, "parentOperations": [{"type": "append", "key": "log", "value": "child ran"}]}


def test_a_failing_drain_does_not_fail_the_committed_request(database_url: str) -> None:
    """Once the run's write and its queued parent operations committed, a failing drain of the
    parent is logged, not answered as an error (a client would retry and apply it twice); a later
    drain writes the queued operations once."""
    storage = _Broken(open_storage(database_url), "parent")
    service = MetadataService(storage, ServiceConfig(**QUIET))
    service.create_run("parent")
    service.create_run("child", parent_id="parent")
    assert service.update("child", FAMILY_UPDATE).state.metadata == {"n": 1}
    assert service.get("parent").metadata == {}
    assert storage.outbox_size() == 1
    storage.broken = False
    assert service.flush_all() == 0
    assert service.get("parent").metadata == {"log": ["child ran"]}
    service.close()


def test_a_request_whose_write_fails_changes_nothing(database_url: str) -> None:
    """The run's own write, its outbox entries and its key commit together or not at all."""
    storage = _Broken(open_storage(database_url), "child")
    service = MetadataService(storage, ServiceConfig(**QUIET))
    service.create_run("parent")
    service.create_run("child", parent_id="parent")
    with pytest.raises(StorageError, match="injected"):
        service.update("child", FAMILY_UPDATE, key="k")
    assert storage.outbox_size() == 0
    storage.broken = False
    outcome = service.update("child", FAMILY_UPDATE, key="k")
    assert (outcome.replayed, outcome.state.metadata) == (False, {"n": 1})
    assert service.get("parent").metadata == {"log": ["child ran"]}
    service.close()


def _break_outbox_for(path: Path, run_id: str) -> None:
    """Make every SQLite outbox insert for ``run_id`` fail inside the transaction, as a full disk would."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TRIGGER broken_outbox BEFORE INSERT ON outbox "
            f"WHEN NEW.run_id = '{run_id}' BEGIN SELECT RAISE(ABORT, 'disk full (injected)'); END"
        )


def test_sqlite_a_failure_inside_the_transaction_rolls_the_own_write_back(tmp_path: Path) -> None:
    """The own write is rolled back when queuing the parent operations fails mid-transaction."""
    path = tmp_path / "runs.sqlite3"
    service = MetadataService(SQLiteStorage(path), ServiceConfig(**QUIET))
    service.create_run("parent")
    service.create_run("child", parent_id="parent")
    _break_outbox_for(path, "parent")
    with pytest.raises(StorageError, match="injected"):
        service.update("child", FAMILY_UPDATE)
    record = service.storage.get_run("child")
    assert record is not None
    assert record.version == 0
    assert service.get("child").metadata == {}
    service.close()


class _Gated:
    """A storage whose writes to run ``slow`` wait for ``gate``; ``events`` records what happened."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.events: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @contextmanager
    def write(self, run_id: str, *, wait: bool = True) -> Iterator[RunTransaction | None]:
        if run_id == "slow":
            self.entered.set()
            self.gate.wait(timeout=30)
        with self._inner.write(run_id, wait=wait) as tx:
            yield tx
        self.events.append(f"wrote {run_id}")

    def close(self) -> None:
        self.events.append("closed")
        self._inner.close()


def test_shutdown_lets_requests_in_flight_finish_before_closing_the_storage(database_url: str) -> None:
    """Stopping the server while a request is half way through waits for it: it is answered 200
    with its update written, and only then is the storage closed."""
    storage = _Gated(open_storage(database_url))
    service = MetadataService(storage, ServiceConfig(**QUIET))
    service.create_run("slow")
    answers: queue.Queue[tuple[int, Any]] = queue.Queue()
    with running_server(service, TOKEN) as server:

        def slow_request() -> None:
            client = Client(server.port)
            answers.put(client.put_metadata("slow", INCREMENT))
            client.close()

        threading.Thread(target=slow_request, daemon=True).start()
        assert storage.entered.wait(timeout=10)
        threading.Timer(0.5, storage.gate.set).start()
    assert answers.get(timeout=10) == (200, {"metadata": {"n": 1}})
    assert storage.events == ["wrote slow", "closed"]
    reopened = open_storage(database_url)
    assert reopened.get_run("slow").version == 1  # type: ignore[union-attr]
    reopened.close()


def test_the_cache_stays_within_its_budget(database_url: str) -> None:
    """Hot runs are evicted, least recently used first, past ``cache_bytes``; evicted runs are
    rebuilt from the database when asked for again."""
    service = _other(database_url, cache_bytes=5_000)
    for index in range(10):
        service.create_run(f"r{index}", metadata={"pad": "x" * 900, "i": index})
    assert service._cached_bytes <= 5_000
    assert service._cached("r0") is None
    assert service._cached("r9") is not None
    assert service.get("r0").metadata["i"] == 0
    service.close()
