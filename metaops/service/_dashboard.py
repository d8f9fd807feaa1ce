"""The dashboard: ``GET /runs/{runId}``, a page that follows one run live in a browser.

The page shows the run's metadata as a tree, draws numeric progress as progress bars,
and shows the run's streams as their chunks arrive. It is plain HTML, CSS and
JavaScript shipped in this package (``metaops/service/static/``), served inline with
the page: no build step, nothing fetched from anywhere but the service itself. Its
script follows the run through the service's public read routes, with the page's
token: ``GET /realtime/v1/runs/{runId}`` (the shape protocol the official SDK's
``runs.subscribeToRun`` speaks: a snapshot, then long-polls answered as the run
changes) and ``GET /realtime/v1/streams/{runId}/{key}`` (server-sent events, resumed
with ``Last-Event-ID`` after a drop).

**What is drawn as progress.** A bar, in the tree beside the value and in the
"Progress" summary at the top, for:

1. a number in ``[0, 1]`` under a key named ``progress``, or ending in ``Progress``,
   ``_progress`` or ``-progress`` (``uploadProgress``): that fraction;
2. an object holding a number ``total`` over 0 and a number under ``done``,
   ``processed``, ``completed``, ``current`` or ``count`` (the first of them it has):
   that count over the total, e.g. ``{"progress": {"done": 3, "total": 10}}``;
3. a number under ``processedX``, ``doneX`` or ``completedX`` (or ``processed_x``,
   ...) beside a number ``totalX`` (``total_x``) over 0 in the same object: that
   count over it, e.g. the CSV example's ``processedRows`` of ``totalRows``.

A count past its total fills the bar and says so in its label (``120 / 100``); a
``progress`` outside ``[0, 1]`` is shown as the number it is.

**Access.** The browser never holds the service's secret token. The page takes a
*public access token* (read-only, for this run, expiring; see
:mod:`metaops.service._auth`) from its URL, ``/runs/RUN_ID?token=JWT``
(:func:`dashboard_url` builds one), and its script sends that same token on the
Realtime and stream routes. The answers, as HTML pages:

* no token, or a bad or expired one: 401, saying how to get a link;
* a token for other runs: 403; the secret token in the URL: 403 (a URL is kept in
  the browser's history, and the page would hand the secret to its script);
* a token that may read the run, for a run that does not exist: 404.

A request carrying the secret in its ``Authorization`` header (a reverse proxy that
authenticates its users, say) gets the page with a public token minted for the run,
valid for :data:`MINTED_EXPIRATION`. The page is sent with a Content-Security-Policy
that allows only its own inline script and style (by hash) and requests to this
origin, ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``.

**Untrusted content.** Keys, values and stream chunks are put on the page as text
(``textContent``, attribute values), never as HTML. The run id and the token are
HTML-escaped into the page.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import re
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.types import Receive, Scope, Send

from metaops.service._auth import Authority
from metaops.service._errors import ServiceClosingError, StorageError
from metaops.service._service import MetadataService

__all__ = ["MINTED_EXPIRATION", "PAGE_PATH", "Dashboard", "dashboard_url"]

PAGE_PATH = re.compile(r"/runs/(?P<run>[^/]+)")
"""The page's path; group ``run`` is the run it shows."""
MINTED_EXPIRATION = "1h"
"""How long the token minted for a request authenticated with the secret lives."""

Run = Callable[[Callable[[], Any]], Awaitable[Any]]

_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 503: "Service Unavailable"}
_MINT_HINT = "Ask whoever runs the service for a link to this run's page; with the secret token:"


def dashboard_url(base_url: str, run_id: str, token: str) -> str:
    """The dashboard page of ``run_id`` on the service at ``base_url``, with a public ``token``.

    >>> dashboard_url("http://127.0.0.1:8030/", "run 1/2", "a.b.c")
    'http://127.0.0.1:8030/runs/run%201%2F2?token=a.b.c'
    """
    return f"{base_url.rstrip('/')}/runs/{quote(run_id, safe='')}?token={quote(token, safe='')}"


def _asset(name: str) -> str:
    return (files("metaops.service") / "static" / name).read_text(encoding="utf-8")


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{{name}}`` replaced, in one pass: a value is never read as a template."""
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match[1]], template)


class Dashboard:
    """The page's endpoint, an ASGI app for the requests :meth:`owns`.

    It authenticates its own requests (the token is in the query, and refusals are
    pages, not JSON), so the app hands them over before its own guard.
    ``run`` runs blocking work on a worker thread.
    """

    def __init__(self, service: MetadataService, authority: Authority, run: Run) -> None:
        self._service = service
        self._authority = authority
        self._run = run
        style, script = _asset("dashboard.css"), _asset("dashboard.js")
        for name, text, closing in (("style", style, "</style"), ("script", script, "</script")):
            if closing in text.lower():  # pragma: no cover - a property of the shipped files
                msg = f"the dashboard's {name} must not contain {closing}>"
                raise AssertionError(msg)
        self._assets = {"style": style, "script": script}
        self._page = _asset("dashboard.html")
        self._error = _asset("error.html")
        self._policy = (
            "default-src 'none'; "
            f"script-src {_digest(script)}; style-src {_digest(style)}; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )

    def owns(self, scope: Scope) -> bool:
        """Whether this is a request for the page (``GET``/``HEAD /runs/{runId}``)."""
        return scope["method"] in ("GET", "HEAD") and PAGE_PATH.fullmatch(scope["path"]) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = PAGE_PATH.fullmatch(scope["path"])
        assert match is not None
        run_id = match["run"]
        status, body = await self._answer(scope, run_id)
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"content-security-policy", self._policy.encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    async def _answer(self, scope: Scope, run_id: str) -> tuple[int, bytes]:
        host = next((value for name, value in scope["headers"] if name == b"host"), b"").decode("latin-1")
        base = f"{scope.get('scheme', 'http')}://{host}" if host else "http://HOST:PORT"
        refuse = functools.partial(self._refusal, run_id=run_id, base=base)
        # Bytes in, bytes out: a token is ASCII, and whatever else comes is refused by the Authority.
        query = parse_qs(
            scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True, encoding="latin-1"
        )
        given = query.get("token", [""])[-1]
        header = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        if not given and header is None:
            return refuse(401, "This page needs an access token in its link (…?token=…).")
        authorization = b"Bearer " + given.encode("latin-1") if given else header
        assert authorization is not None
        # The Authority decides as for any read route (the page's path is one of them).
        probe: dict[str, Any] = {
            **scope,
            "method": "GET",
            "headers": [(b"authorization", authorization)],
            "state": {},
        }
        refusal = self._authority.check(probe)
        if refusal is not None:
            status, message = refusal
            return refuse(status, f"{message}.")
        access = probe["state"]["access"]
        if access.secret and given:
            message = (
                "The service's secret token must not be put in a link: a browser keeps links, "
                "and this page would hand the token to its script."
            )
            return refuse(403, message)
        try:
            record = await self._run(lambda: self._service.storage.get_run(run_id))
        except (StorageError, ServiceClosingError) as error:
            return refuse(503, f"The run cannot be read now: {error}", hint=False)
        if record is None:
            return refuse(404, f"There is no run {run_id!r} on this service.", hint=False)
        token = self._authority.mint([run_id], expiration=MINTED_EXPIRATION) if access.secret else given
        page = _fill(self._page, {**self._assets, "run_id": html.escape(run_id), "token": html.escape(token)})
        return 200, page.encode()

    def _refusal(
        self, status: int, message: str, run_id: str, *, base: str = "http://HOST:PORT", hint: bool = True
    ) -> tuple[int, bytes]:
        values = {
            **self._assets,
            "status": str(status),
            "reason": _REASONS[status],
            "message": html.escape(message),
            "hint": html.escape(_MINT_HINT) if hint else "",
            "command": html.escape(f"metaops token {_shell_word(run_id)} --url {_shell_word(base)}")
            if hint
            else "",
        }
        return status, _fill(self._error, values).encode()


def _shell_word(text: str) -> str:
    """``text`` as one word for a POSIX shell (quoted when it needs to be)."""
    if re.fullmatch(r"[A-Za-z0-9_.,:@%+=/-]+", text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"
