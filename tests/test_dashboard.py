"""The dashboard page over HTTP: who gets it, what it holds, what it allows the browser to do.

What the page's script does in a browser is in ``tests/test_dashboard_browser.py``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import html
import re
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from metaops._cli import main as cli
from metaops.service import RunningServer
from metaops.service._auth import mint_public_token
from metaops.service._dashboard import dashboard_url

from ._realtime_support import SECRET, http, live_server

ROOT = Path(__file__).resolve().parent.parent
ODD_RUN = 'run_<img src=x onerror=alert(1)>"it\'s"&amp;'
RUNS = ("run_mine", "run_other", ODD_RUN)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with live_server(f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'runs.sqlite3'}") as running:
        with http(running) as client:
            for run_id in RUNS:
                created = client.post(
                    "/admin/runs", json={"id": run_id, "metadata": {"hidden": "in-metadata"}}
                )
                assert created.status_code == 201
        yield running


def page(server: RunningServer, run_id: str, token: str | None = None, **headers: str) -> httpx.Response:
    url = f"{server.url}/runs/{quote(run_id, safe='')}"
    params = {} if token is None else {"token": token}
    return httpx.get(url, params=params, headers=headers)


def _body_data(text: str, name: str) -> str:
    match = re.search(r'<body data-run-id="([^"]*)" data-token="([^"]*)">', text)
    assert match is not None, text[:500]
    return html.unescape(match[1 if name == "run" else 2])


def test_a_public_token_gets_the_page_and_its_script_gets_the_token(server: RunningServer) -> None:
    token = mint_public_token(SECRET, ["run_mine"])
    answer = page(server, "run_mine", token)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert _body_data(answer.text, "run") == "run_mine"
    assert _body_data(answer.text, "token") == token
    # The metadata is not in the page: the script reads it through Realtime with the token.
    assert "in-metadata" not in answer.text
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"


def test_the_content_security_policy_allows_exactly_the_inline_script_and_style(
    server: RunningServer,
) -> None:
    answer = page(server, "run_mine", mint_public_token(SECRET, ["run_mine"]))
    policy = dict(part.split(" ", 1) for part in answer.headers["content-security-policy"].split("; "))
    scripts = re.findall(r"<script>(.*?)</script>", answer.text, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", answer.text, re.DOTALL)
    assert len(scripts) == len(styles) == 1
    assert "<script src" not in answer.text
    assert '<link rel="stylesheet"' not in answer.text

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    assert policy["script-src"] == digest(scripts[0])
    assert policy["style-src"] == digest(styles[0])
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"  # requests go to this service only
    assert policy["frame-ancestors"] == "'none'"


def test_without_a_valid_token_the_page_is_a_401_page(server: RunningServer) -> None:
    expired = mint_public_token(SECRET, ["run_mine"], expiration="1m", now=time.time() - 3600)
    forged = mint_public_token("another-secret-of-enough-length-0123", ["run_mine"])
    for why, token in (
        ("none", None),
        ("empty", ""),
        ("expired", expired),
        ("forged", forged),
        ("junk", "a.b"),
        ("not ASCII", "€ÿ"),
    ):
        answer = page(server, "run_mine", token)
        assert answer.status_code == 401, why
        assert answer.headers["content-type"] == "text/html; charset=utf-8", why
        assert '<h1><span class="status">401</span> Unauthorized</h1>' in answer.text, why
        # How to get a link to this page, from this host:
        assert f"metaops token run_mine --url {server.url}</pre>" in answer.text, why
        assert "data-token" not in answer.text, why


def test_another_runs_token_is_a_403_page(server: RunningServer) -> None:
    answer = page(server, "run_mine", mint_public_token(SECRET, ["run_other"]))
    assert answer.status_code == 403
    assert "cannot read run &#x27;run_mine&#x27;" in answer.text
    assert "data-token" not in answer.text


def test_the_secret_token_in_a_link_is_refused_and_never_echoed(server: RunningServer) -> None:
    answer = page(server, "run_mine", SECRET)
    assert answer.status_code == 403
    assert "must not be put in a link" in answer.text
    assert SECRET not in answer.text


def test_the_secret_in_the_header_gets_a_page_with_a_run_scoped_token(server: RunningServer) -> None:
    answer = page(server, "run_mine", Authorization=f"Bearer {SECRET}")
    assert answer.status_code == 200
    assert SECRET not in answer.text
    token = _body_data(answer.text, "token")
    with http(server, token) as public:
        assert public.get("/realtime/v1/runs/run_mine", params={"offset": "-1"}).status_code == 200
        assert public.get("/realtime/v1/runs/run_other", params={"offset": "-1"}).status_code == 403
        assert public.put("/api/v1/runs/run_mine/metadata", json={"operations": []}).status_code == 403


def test_a_run_that_does_not_exist_is_a_404_page(server: RunningServer) -> None:
    for token in (mint_public_token(SECRET, ["run_gone"]), mint_public_token(SECRET, scopes=["read:runs"])):
        answer = page(server, "run_gone", token)
        assert answer.status_code == 404
        assert "There is no run &#x27;run_gone&#x27;" in answer.text


def test_an_odd_run_id_is_escaped_into_the_page(server: RunningServer) -> None:
    token = mint_public_token(SECRET, [ODD_RUN])
    answer = page(server, ODD_RUN, token)
    assert answer.status_code == 200
    assert ODD_RUN not in answer.text
    assert "<img" not in answer.text
    assert _body_data(answer.text, "run") == ODD_RUN
    refused = page(server, ODD_RUN)
    assert refused.status_code == 401
    assert "<img" not in refused.text
    assert "metaops token 'run_<img src=x onerror=alert(1)>\"it'\"'\"'s\"&amp;' --url" in html.unescape(
        refused.text
    )


def test_head_answers_as_get_without_a_body(server: RunningServer) -> None:
    url = f"{server.url}/runs/run_mine"
    ok = httpx.head(url, params={"token": mint_public_token(SECRET, ["run_mine"])})
    refused = httpx.head(url)
    assert (ok.status_code, ok.content) == (200, b"")
    assert (refused.status_code, refused.content) == (401, b"")


def test_other_methods_on_the_page_go_through_the_api_guard(server: RunningServer) -> None:
    answer = httpx.post(
        f"{server.url}/runs/run_mine", params={"token": mint_public_token(SECRET, ["run_mine"])}
    )
    assert answer.status_code == 401
    assert answer.json() == {"error": "Invalid or Missing API key"}


def test_links_made_by_dashboard_url_and_metaops_token_open_the_page(
    server: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = dashboard_url(server.url, ODD_RUN, mint_public_token(SECRET, [ODD_RUN]))
    assert httpx.get(url).status_code == 200
    monkeypatch.setenv("METAOPS_SERVER_TOKEN", SECRET)
    assert cli(["token", ODD_RUN, "--url", server.url]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith(f"{server.url}/runs/")
    answer = httpx.get(link)
    assert answer.status_code == 200
    assert _body_data(answer.text, "run") == ODD_RUN


def test_the_script_never_writes_html() -> None:
    """Keys, values and chunks are untrusted: the script makes nodes and sets text; nothing parses HTML."""
    script = (files("metaops.service") / "static" / "dashboard.js").read_text(encoding="utf-8")
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
        "srcdoc",
    ):
        assert sink not in script, sink
    assert "textContent" in script


def test_the_static_files_ship_in_the_package() -> None:
    """pyproject's package-data covers every file the page is built from."""
    # (tomllib is Python 3.11+: the one line is read by hand.)
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    line = re.search(r"^\[tool\.setuptools\.package-data\]\nmetaops = \[(.*)\]$", config, re.MULTILINE)
    assert line is not None
    globs = re.findall(r'"([^"]+)"', line[1])
    static = sorted(path.name for path in (ROOT / "metaops" / "service" / "static").iterdir())
    assert static == ["dashboard.css", "dashboard.html", "dashboard.js", "error.html"]
    for name in static:
        assert any(fnmatch.fnmatch(f"service/static/{name}", glob) for glob in globs), name
