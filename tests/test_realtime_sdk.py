"""The official SDK's Realtime client against ``metaops serve``.

``tests/node/realtime_sdk.cjs`` runs ``@trigger.dev/sdk`` 4.8.3 with ``configure({
baseURL, accessToken })``: ``runs.subscribeToRun``, ``.withStreams()``, and
``auth.createPublicToken`` then a subscription with the minted token. The SDK stops
silently on any 4xx, so every test waits for the script's end marker ("done": the
iterator ended because the run completed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ._realtime_support import SECRET, SDKDriver, http, live_server
from .node_reference import ensure_reference

pytestmark = pytest.mark.reference


@pytest.fixture
def reference() -> Path:
    target = ensure_reference()
    if isinstance(target, str):
        pytest.skip(target)
    return target


def _increment(client: object, run_id: str, amount: int = 1) -> None:
    import httpx

    assert isinstance(client, httpx.Client)
    answer = client.put(
        f"/api/v1/runs/{run_id}/metadata",
        json={"operations": [{"type": "increment", "key": "n", "value": amount}]},
    )
    assert answer.status_code == 200, answer.text


def test_subscribe_to_run_sees_the_updates_in_order_and_ends_on_the_final_metadata(
    database_url: str, reference: Path
) -> None:
    with live_server(database_url) as server, http(server) as client:
        assert client.post("/admin/runs", json={"id": "run_sdk", "metadata": {"n": 0}}).status_code == 201
        config = {"baseUrl": server.url, "token": SECRET, "runId": "run_sdk", "mode": "subscribe"}
        with SDKDriver(reference, config) as sdk:
            first = sdk.next()
            assert first["metadata"] == {"n": 0}
            assert (first["id"], first["status"], first["finished"], first["created"]) == (
                "run_sdk",
                "EXECUTING",
                None,
                True,
            )
            # Lockstep: each update is seen before the next is sent, so none may be folded away.
            for n in range(1, 6):
                _increment(client, "run_sdk")
                assert sdk.next()["metadata"] == {"n": n}
            # A burst: the subscriber may see any subsequence of it, in order.
            for _ in range(30):
                _increment(client, "run_sdk")
            client.put(
                "/api/v1/runs/run_sdk/metadata",
                json={"operations": [{"type": "set", "key": "done", "value": True}]},
            )
            final = client.get("/api/v1/runs/run_sdk/metadata").json()["metadata"]
            assert client.post("/admin/runs/run_sdk/complete").status_code == 200
            events = sdk.rest()
    assert events[-1] == {"type": "end", "how": "done"}
    runs = [event for event in sdk.events if event["type"] == "run"]
    # Every state the server wrote, in order; the SDK yields a subsequence of them, each at
    # most once, except that completing the run yields the last state again, finished.
    written = [{"n": n} for n in range(36)] + [{"n": 35, "done": True}]
    seen = [(written.index(event["metadata"]), event["finished"] is not None) for event in runs]
    assert seen == sorted(set(seen)), f"not in order, or repeated: {seen}"
    assert [index for index, _ in seen[:6]] == [0, 1, 2, 3, 4, 5]
    last = runs[-1]
    assert last["metadata"] == final == {"n": 35, "done": True}
    assert last["finished"] is not None
    assert (last["status"], last["isCompleted"]) == ("COMPLETED", True)


def test_with_streams_delivers_every_chunk_of_every_stream_the_run_lists(
    database_url: str, reference: Path
) -> None:
    with live_server(database_url) as server, http(server) as client:
        assert client.post("/admin/runs", json={"id": "run_streams"}).status_code == 201
        config = {
            "baseUrl": server.url,
            "token": SECRET,
            "runId": "run_streams",
            "mode": "withStreams",
            "streams": {"tokens": 6, "progress": 2},
        }
        with SDKDriver(reference, config) as sdk:
            assert sdk.next()["type"] == "run"
            write = "/realtime/v1/streams/run_streams/"
            assert client.post(write + "tokens", content=b'"Hel"\n"lo"\n').status_code == 200
            assert client.post(write + "progress", content=b'{"done": 1, "total": 2}\n').status_code == 200
            assert (
                client.post(write + "tokens", content=b'", "\n"wor"\n', params={"index": "2"}).status_code
                == 200
            )
            # A retry of a write that landed: skipped by index, never delivered twice.
            assert client.post(
                write + "tokens", content=b'"wor"\n"ld"\n"!"\n', params={"index": "3", "end": "true"}
            ).json() == {
                "length": 6,
                "accepted": 2,
                "finished": True,
            }
            assert client.post(write + "progress", content=b'{"done": 2, "total": 2}\n').status_code == 200
            assert client.post("/admin/runs/run_streams/complete").status_code == 200
            events = sdk.rest()
    assert events[-1] == {"type": "end", "how": "done"}
    chunks: dict[str, list[object]] = {}
    for event in sdk.events:
        if event["type"] == "chunk":
            chunks.setdefault(event["key"], []).append(event["chunk"])
    assert chunks == {
        "tokens": ["Hel", "lo", ", ", "wor", "ld", "!"],
        "progress": [{"done": 1, "total": 2}, {"done": 2, "total": 2}],
    }
    last_run = [event for event in sdk.events if event["type"] == "run"][-1]
    assert last_run["realtimeStreams"] == ["tokens", "progress"]


# The SDK signs a token itself with a secret of any other shape (after asking the server's
# /api/v1/auth/jwt/claims); with a key shaped like the platform's extra API keys it asks the
# server to mint one (POST /api/v1/auth/public-tokens). Both are served.
SDK_SECRETS = {"self-signed": SECRET, "server-minted": "tr_dev_sk_" + "a1B2c3D4e5F6g7H8i9J0k1L2"}


@pytest.mark.parametrize("secret", SDK_SECRETS.values(), ids=SDK_SECRETS.keys())
def test_a_token_minted_by_create_public_token_reads_its_run_and_nothing_else(
    database_url: str, reference: Path, secret: str
) -> None:
    with live_server(database_url, secret) as server, http(server, secret) as client:
        for run_id in ("run_public", "run_private"):
            assert client.post("/admin/runs", json={"id": run_id, "metadata": {"n": 0}}).status_code == 201
        config = {"baseUrl": server.url, "token": secret, "runId": "run_public", "mode": "token"}
        with SDKDriver(reference, config) as sdk:
            token = sdk.next()["token"]
            assert sdk.next()["metadata"] == {"n": 0}  # subscribed with the minted token
            _increment(client, "run_public", 2)
            assert sdk.next()["metadata"] == {"n": 2}
            with http(server, token) as public:
                assert public.get("/api/v1/runs/run_public/metadata").json() == {"metadata": {"n": 2}}
                assert public.get("/api/v1/runs/run_private/metadata").status_code == 403
                assert public.get("/realtime/v1/runs/run_private", params={"offset": "-1"}).status_code == 403
                refused = public.put("/api/v1/runs/run_public/metadata", json={"operations": []})
                assert refused.status_code == 403
            assert client.post("/admin/runs/run_public/complete").status_code == 200
            events = sdk.rest()
    assert events[-1] == {"type": "end", "how": "done"}
    assert events[-2]["finished"] is not None
