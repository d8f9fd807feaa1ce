"""Idempotency-Key over HTTP, on every backend: at most once per run and key, whatever the body.

What the exactly-once client relies on: a repeat answers 200 with the run's current
metadata and ``Idempotent-Replayed: true`` and applies nothing; the key is recorded
in the write's transaction, also when nothing changed, so that an empty PUT with a
key whose outcome is unknown fences it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metaops.service import MetadataService, ServiceConfig, open_storage
from tests._service_support import OPS_INCREMENT, Client, in_threads, threaded_server

INCREMENT = {"operations": OPS_INCREMENT}


@pytest.fixture
def client(database_url: str) -> Iterator[Client]:
    with threaded_server(database_url) as server:
        connection = Client(server.port)
        yield connection
        connection.close()


def test_a_repeat_applies_nothing_whatever_its_body(client: Client) -> None:
    client.create_run("r")
    assert client.put_metadata("r", INCREMENT, key="k1") == (200, {"metadata": {"n": 1}})
    assert "idempotent-replayed" not in client.last_headers
    assert client.put_metadata("r", INCREMENT, key="k2") == (200, {"metadata": {"n": 2}})
    other_body = {"operations": [{"type": "set", "key": "x", "value": 1}]}
    assert client.put_metadata("r", other_body, key="k1") == (200, {"metadata": {"n": 2}})
    assert client.last_headers["idempotent-replayed"] == "true"
    assert client.get_metadata("r") == {"n": 2}
    assert client.run("r")["version"] == 2


def test_a_repeat_answers_the_current_metadata_not_the_first_answer(client: Client) -> None:
    client.create_run("r")
    client.put_metadata("r", INCREMENT, key="first")
    client.put_metadata("r", {"operations": [{"type": "set", "key": "later", "value": True}]})
    assert client.put_metadata("r", INCREMENT, key="first") == (200, {"metadata": {"n": 1, "later": True}})


def test_an_empty_put_fences_a_key_whose_outcome_is_unknown(client: Client) -> None:
    """The client's fence: ``{"operations": []}`` with the old key records it, applying nothing;
    the original request, arriving later, is then a no-op."""
    client.create_run("r", metadata={"n": 0})
    assert client.put_metadata("r", {"operations": []}, key="lost") == (200, {"metadata": {"n": 0}})
    assert "idempotent-replayed" not in client.last_headers
    assert client.put_metadata("r", INCREMENT, key="lost") == (200, {"metadata": {"n": 0}})
    assert client.last_headers["idempotent-replayed"] == "true"
    assert client.run("r")["version"] == 0


def test_a_key_is_recorded_when_the_body_changed_nothing(client: Client) -> None:
    client.create_run("r", metadata={"tags": []})
    unchanged = {"operations": [{"type": "remove", "key": "tags", "value": "absent"}]}
    assert client.put_metadata("r", unchanged, key="noop") == (200, {"metadata": {"tags": []}})
    assert client.put_metadata(
        "r", {"operations": [{"type": "append", "key": "tags", "value": "a"}]}, key="noop"
    ) == (
        200,
        {"metadata": {"tags": []}},
    )
    assert client.last_headers["idempotent-replayed"] == "true"


def test_a_key_guards_the_parent_operations_too(client: Client) -> None:
    client.create_run("parent")
    client.create_run("child", parentId="parent")
    body = {**INCREMENT, "parentOperations": [{"type": "increment", "key": "done", "value": 1}]}
    for _ in range(3):
        assert client.put_metadata("child", body, key="once")[0] == 200
    client.flush()
    assert client.get_metadata("parent") == {"done": 1}
    assert client.get_metadata("child") == {"n": 1}


def test_keys_are_per_run(client: Client) -> None:
    client.create_run("a")
    client.create_run("b")
    assert client.put_metadata("a", INCREMENT, key="shared") == (200, {"metadata": {"n": 1}})
    assert client.put_metadata("b", INCREMENT, key="shared") == (200, {"metadata": {"n": 1}})
    assert "idempotent-replayed" not in client.last_headers


def test_a_refused_request_does_not_use_its_key(client: Client) -> None:
    """Nothing is committed for a 4xx: the key stays free, and a corrected retry applies."""
    client.create_run("r")
    too_big = {"operations": [{"type": "set", "key": "big", "value": "x" * 300_000}]}
    assert client.put_metadata("r", too_big, key="k")[0] == 413
    assert client.put_metadata("r", INCREMENT, key="k") == (200, {"metadata": {"n": 1}})
    assert "idempotent-replayed" not in client.last_headers


def test_concurrent_requests_with_one_key_apply_once(client: Client) -> None:
    client.create_run("r")
    port = client.port

    def send(index: int) -> tuple[int, bool]:
        own = Client(port)
        status, _ = own.put_metadata("r", INCREMENT, key="race")
        replayed = own.last_headers.get("idempotent-replayed") == "true"
        own.close()
        return status, replayed

    answers = in_threads(8, send)
    assert [status for status, _ in answers] == [200] * 8
    assert sorted(replayed for _, replayed in answers) == [False] + [True] * 7
    assert client.get_metadata("r") == {"n": 1}


def test_keys_survive_a_restart_and_expire_after_the_retention(database_url: str) -> None:
    """A key is kept in the database (a new service on it still knows it) for ``key_retention``
    seconds (24 hours by default), then forgotten."""
    now = [1_000_000.0]
    first = MetadataService(open_storage(database_url), ServiceConfig(), clock=lambda: now[0])
    first.create_run("r")
    assert first.update("r", INCREMENT, key="k").replayed is False
    first.close()
    second = MetadataService(open_storage(database_url), ServiceConfig(), clock=lambda: now[0])
    assert second.update("r", INCREMENT, key="k").replayed is True
    now[0] += 24 * 3600 - 1
    assert second.expire_keys() == 0
    assert second.update("r", INCREMENT, key="k").replayed is True
    now[0] += 2
    assert second.expire_keys() == 1
    outcome = second.update("r", INCREMENT, key="k")
    assert (outcome.replayed, outcome.state.metadata) == (False, {"n": 2})
    second.close()


def test_the_replayed_answer_reports_a_run_changed_by_another_process(database_url: str) -> None:
    """Two services on one database (two processes): a repeat answered by the other one still
    says the key was used, and answers the metadata as it is now."""
    one = MetadataService(open_storage(database_url), ServiceConfig())
    two = MetadataService(open_storage(database_url), ServiceConfig())
    one.create_run("r")
    one.update("r", INCREMENT, key="k")
    two.update("r", {"operations": [{"type": "set", "key": "by", "value": "two"}]})
    outcome = one.update("r", INCREMENT, key="k")
    assert (outcome.replayed, outcome.state.metadata) == (True, {"n": 1, "by": "two"})
    one.close()
    two.close()
