"""The official SDK against the service (``metaops serve``'s app, on uvicorn in this process).

``tests/node/official_client.cjs`` runs ``@trigger.dev/core`` 4.8.3's own
``StandardMetadataManager`` (the queue behind ``metadata.*`` inside a task) with its
``ApiClient`` pointed at the service: set / increment / append / remove /
delete / replace, parent and root updates, ``flush()``. After every flush the
server's stored metadata must equal the SDK's local view, computed by the
reference's own ``applyMetadataOperations``: the server (metaops) and the SDK agree.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metaops.service import MetadataService, RunningServer, SQLiteStorage, running_server

from .node_reference import SCRIPTS, ensure_reference, node_env

TOKEN = "sdk-test-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """The service in this process, on an ephemeral loopback port."""
    with running_server(MetadataService(SQLiteStorage(tmp_path / "runs.sqlite3")), TOKEN) as running:
        yield running


def _run_sdk(target: Path, config: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(SCRIPTS / "official_client.cjs"), json.dumps(config)],
        env=node_env(target),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"the SDK script printed nothing; stderr: {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert "fatal" not in result, result["fatal"]
    return result


def _text(value: Any) -> str:
    # Key order included: the SDK and the server must agree on it too.
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.reference
def test_official_sdk_and_server_agree_after_every_flush(server: RunningServer) -> None:
    """After each flush of the SDK's StandardMetadataManager, what the server stored is what the
    SDK computed locally; the parent and root runs got the parent and root updates."""
    target = ensure_reference()
    if isinstance(target, str):
        pytest.skip(target)
    service = server.service
    service.create_run("run_root")
    service.create_run(
        "run_parent",
        parent_id="run_root",
        metadata={"childrenDone": 0, "pending": 2, "queue": ["run_child", "run_other"]},
    )
    service.create_run("run_child", parent_id="run_parent")
    result = _run_sdk(
        target,
        {
            "baseUrl": server.url,
            "token": TOKEN,
            "runId": "run_child",
            "parentId": "run_parent",
            "rootId": "run_root",
        },
    )
    assert result["errors"] == [], "the SDK reported failed requests"
    assert len(result["rounds"]) == 4
    for round_ in result["rounds"]:
        assert _text(round_["server"]) == _text(round_["local"]), round_["name"]
    last = result["rounds"][-1]["local"]
    assert _text(service.get("run_child").metadata) == _text(last)
    assert last == {"replaced": True, "count": 10.5, "nested": {"list": [1, 2, 3, 4]}, "unicode": "日本語 🎉"}
    # What the script's parent/root calls mean, worked out by hand from the documented semantics.
    assert result["parent"] == {
        "childrenDone": 1,
        "pending": 1,
        "queue": ["run_other"],
        "events": ["child started", "child finished"],
        "lastChild": "run_child",
    }
    assert result["root"] == {"total": 5, "status": "ok"}
    assert service.get("run_parent").metadata == result["parent"]


@pytest.mark.reference
def test_official_sdk_sees_the_servers_errors(server: RunningServer) -> None:
    """Pointed at a run the server does not know, the SDK's flush fails the way it fails against
    the platform (it reports the 404 and keeps its local view), and nothing is created."""
    target = ensure_reference()
    if isinstance(target, str):
        pytest.skip(target)
    done = subprocess.run(
        [
            "node",
            str(SCRIPTS / "official_client.cjs"),
            json.dumps({"baseUrl": server.url, "token": TOKEN, "runId": "run_ghost"}),
        ],
        env=node_env(target),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "fatal" in result
    assert "Task Run not found" in result["fatal"]
    assert server.service.storage.get_run("run_ghost") is None
