"""Public access tokens: read-only, run-scoped, expiring."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from metaops import InvalidArgumentError
from metaops._cli import main as cli
from metaops.service import RunningServer
from metaops.service._auth import (
    PUBLIC_TOKEN_AUDIENCE,
    PUBLIC_TOKEN_ISSUER,
    expiration_time,
    mint_public_token,
)

from . import _realtime_support as support
from ._realtime_support import SECRET, http, live_server

RUNS = ("run_mine", "run_other")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # Tokens do not depend on the storage: one backend is enough.
    with live_server(f"sqlite:///{tmp_path_factory.mktemp('tokens') / 'runs.sqlite3'}") as running:
        with http(running) as client:
            for run_id in RUNS:
                assert (
                    client.post("/admin/runs", json={"id": run_id, "metadata": {"n": 1}}).status_code == 201
                )
        yield running


client = support.client


def _reads(server: RunningServer, token: str) -> dict[str, tuple[int, ...]]:
    """What ``token`` gets from each read route of each run, and from the writes of ``run_mine``."""
    with http(server, token) as public:
        seen: dict[str, tuple[int, ...]] = {
            run_id: (
                public.get(f"/api/v1/runs/{run_id}/metadata").status_code,
                public.get(f"/realtime/v1/runs/{run_id}", params={"offset": "-1"}).status_code,
                public.get(
                    f"/realtime/v1/streams/{run_id}/s", headers={"Timeout-Seconds": "0.1"}
                ).status_code,
            )
            for run_id in (*RUNS, "run_missing")
        }
        seen["writes"] = (
            public.put("/api/v1/runs/run_mine/metadata", json={"operations": []}).status_code,
            public.post("/realtime/v1/streams/run_mine/s", content=b"1\n").status_code,
            public.post("/admin/runs", json={"id": "run_new"}).status_code,
            public.post("/admin/runs/run_mine/complete").status_code,
            public.get("/admin/runs/run_mine").status_code,
            public.post("/api/v1/auth/public-tokens", json={"scopes": ["read:runs:run_other"]}).status_code,
            public.post("/api/v1/auth/jwt/claims").status_code,
        )
    return seen


def test_a_minted_token_reads_its_run_and_nothing_else(server: RunningServer, client: httpx.Client) -> None:
    answer = client.post(
        "/api/v1/auth/public-tokens", json={"scopes": ["read:runs:run_mine"], "expirationTime": "1h"}
    )
    assert answer.status_code == 200
    token = answer.json()["token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256"}  # as the official SDK signs them
    assert _reads(server, token) == {
        "run_mine": (200, 200, 200),
        "run_other": (403, 403, 403),
        "run_missing": (403, 403, 403),
        "writes": (403,) * 7,
    }
    assert client.get("/api/v1/runs/run_mine/metadata").json() == {"metadata": {"n": 1}}  # nothing changed


def test_a_token_for_every_run_still_only_reads(server: RunningServer) -> None:
    token = mint_public_token(SECRET, scopes=["read:runs"])
    assert _reads(server, token) == {
        "run_mine": (200, 200, 200),
        "run_other": (200, 200, 200),
        "run_missing": (404, 404, 404),
        "writes": (403,) * 7,
    }


def test_bad_tokens_are_401(server: RunningServer) -> None:
    now = time.time()
    claims = {
        "sub": "x",
        "pub": True,
        "scopes": ["read:runs:run_mine"],
        "iat": int(now),
        "exp": int(now) + 60,
    }
    bad = {
        "expired": mint_public_token(SECRET, ["run_mine"], expiration="1m", now=now - 3600),
        "another secret": mint_public_token("another-secret-of-enough-length-0123", ["run_mine"]),
        "no audience": jwt.encode({**claims, "iss": PUBLIC_TOKEN_ISSUER}, SECRET, algorithm="HS256"),
        "no expiry": jwt.encode(
            {k: v for k, v in claims.items() if k != "exp"}
            | {"iss": PUBLIC_TOKEN_ISSUER, "aud": PUBLIC_TOKEN_AUDIENCE},
            SECRET,
            algorithm="HS256",
        ),
        "not a token": "a.b.c",
        "unsigned": jwt.encode(
            {**claims, "iss": PUBLIC_TOKEN_ISSUER, "aud": PUBLIC_TOKEN_AUDIENCE}, None, algorithm="none"
        ),
    }
    for why, token in bad.items():
        with http(server, token) as public:
            answer = public.get("/api/v1/runs/run_mine/metadata")
        assert answer.status_code == 401, why
        assert answer.json()["error"], why


def test_the_routes_the_sdk_calls_to_mint(client: httpx.Client) -> None:
    assert client.post("/api/v1/auth/jwt/claims").json() == {"sub": "metaops", "pub": True}
    refused = [
        ({}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"scopes": ["write:runs:run_mine"]}, "read-only"),
        ({"scopes": ["read:runs:run_mine"], "expirationTime": "soon"}, "expirationTime"),
        ({"scopes": ["read:runs:run_mine"], "expirationTime": 1000}, "expirationTime"),
    ]
    for body, words in refused:
        answer = client.post("/api/v1/auth/public-tokens", json=body)
        assert answer.status_code == 400, body
        assert words in answer.json()["error"]
    absolute = int(time.time()) + 7200  # a number is absolute, as the SDK sends it
    token = client.post(
        "/api/v1/auth/public-tokens", json={"scopes": ["read:runs:run_mine"], "expirationTime": absolute}
    ).json()["token"]
    assert jwt.decode(token, SECRET, algorithms=["HS256"], audience=PUBLIC_TOKEN_AUDIENCE)["exp"] == absolute


def test_expiration_times_as_the_sdk_writes_them() -> None:
    assert [expiration_time(text, 0) for text in ("90s", "15m", "2 hours", "1.5h", "2 days", "1w")] == [
        90,
        900,
        7200,
        5400,
        172800,
        604800,
    ]
    for refused in ("", "15", "15 fortnights", "-5m", True, [1]):
        with pytest.raises(InvalidArgumentError):
            expiration_time(refused, 0)


def test_the_token_command_mints_offline(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("METAOPS_SERVER_TOKEN", SECRET)
    assert cli(["token", "run_mine", "--expires", "10m"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=PUBLIC_TOKEN_AUDIENCE)
    assert claims["scopes"] == ["read:runs:run_mine"]
    assert 590 <= claims["exp"] - claims["iat"] <= 600
    assert _reads(server, token)["run_mine"] == (200, 200, 200)
    for argv in (
        ["token"],
        ["token", "run_mine", "--expires", "never"],
        ["token", "run_mine", "--all-runs"],
        ["token", "run_mine", "--no-such-option"],
    ):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("metaops token: ")
        assert err.count("\n") == 1
    assert cli(["token", "run 1", "--url", "http://example.test:8030/"]) == 0
    page = capsys.readouterr().out.strip()
    assert page.startswith("http://example.test:8030/runs/run%201?token=")
    claims = jwt.decode(
        page.split("?token=")[1], SECRET, algorithms=["HS256"], audience=PUBLIC_TOKEN_AUDIENCE
    )
    assert claims["scopes"] == ["read:runs:run 1"]
    assert cli(["token", "run_a", "run_b", "--url"]) == 2
    assert "exactly one RUN_ID" in capsys.readouterr().err
    monkeypatch.delenv("METAOPS_SERVER_TOKEN")
    assert cli(["token", "run_mine"]) == 2
    assert "no secret" in capsys.readouterr().err
